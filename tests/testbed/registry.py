"""A local distribution registry (``docker-registry serve``) for integration tests.

Three flavours:

- ``plain``: HTTP. Clients need ``--tls-verify=false``.
- ``tls``: HTTPS with a certificate from a private CA; ``cert_dir`` holds ``ca.crt`` for
  ``--cert-dir``.
- ``auth``: ``tls`` plus htpasswd basic auth; ``authfile`` (and ``auth_json``) hold the
  credentials for ``--authfile``.

The registry listens on a free port of 127.0.0.1 and keeps all its state in a temporary
directory that ``stop()`` removes.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
import weakref
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Optional

from ._run import CommandFailed, run

FLAVOURS = ("plain", "tls", "auth")
REGISTRY_BINARY = "docker-registry"


def _free_port() -> int:
    # The port is free now; the registry binds it a moment later. Another process may grab
    # it in between, which start() detects and answers with a new port.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _kill_group(pid: int) -> None:
    """Kill a process group led by ``pid`` (used as a last resort at interpreter exit)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


class RegistryError(RuntimeError):
    pass


class Registry:
    """One registry process. Use as a context manager, or call start() and stop()."""

    def __init__(
        self,
        flavour: str = "plain",
        *,
        user: str = "testbed",
        password: Optional[str] = None,
        binary: str = REGISTRY_BINARY,
        start_timeout: float = 30.0,
    ) -> None:
        if flavour not in FLAVOURS:
            raise ValueError(f"flavour must be one of {FLAVOURS}, not {flavour!r}")
        self.flavour = flavour
        self.binary = binary
        self.start_timeout = start_timeout
        self.user = user
        # Random per registry: a test that passes with the wrong registry's credentials
        # would otherwise go unnoticed.
        self.password = password if password is not None else secrets.token_hex(12)
        self.workdir: Optional[Path] = None
        self.port = 0
        self.cert_dir: Optional[Path] = None
        self.authfile: Optional[Path] = None
        self.auth_json: Optional[bytes] = None
        self._proc: Optional[subprocess.Popen[bytes]] = None
        self._finalizer: Optional[weakref.finalize[[int], Registry]] = None

    # --- Addresses and client flags ---------------------------------------------------

    @property
    def tls(self) -> bool:
        return self.flavour in ("tls", "auth")

    @property
    def host(self) -> str:
        """``127.0.0.1:PORT``, the registry part of image references."""
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}"

    @property
    def log_path(self) -> Path:
        return self._require_workdir() / "registry.log"

    def ref(self, repo_tag: str) -> str:
        """The skopeo reference ``docker://127.0.0.1:PORT/REPO:TAG``."""
        return f"docker://{self.host}/{repo_tag}"

    def client_args(self) -> list[str]:
        """Image flags that let a skopeo command (inspect, the proxy) reach this registry.

        Credentials come from the authfile, never from the command line (where every user
        could read them in /proc).
        """
        if not self.tls:
            return ["--tls-verify=false"]
        args = ["--cert-dir", str(self.cert_dir)]
        if self.authfile is not None:
            args += ["--authfile", str(self.authfile)]
        return args

    def dest_args(self) -> list[str]:
        """The same as client_args(), for the destination side of ``skopeo copy``."""
        if not self.tls:
            return ["--dest-tls-verify=false"]
        args = ["--dest-cert-dir", str(self.cert_dir)]
        if self.authfile is not None:
            args += ["--dest-authfile", str(self.authfile)]
        return args

    # --- Life cycle --------------------------------------------------------------------

    def __enter__(self) -> Registry:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> None:
        if self._proc is not None:
            raise RegistryError("registry already started")
        if shutil.which(self.binary) is None:
            raise RegistryError(f"{self.binary} not found (run scripts/setup.sh)")
        self.workdir = Path(tempfile.mkdtemp(prefix=f"cip-registry-{self.flavour}-"))
        try:
            if self.tls:
                self._make_certificates()
            if self.flavour == "auth":
                self._make_credentials_file()
            # A port taken between _free_port() and the bind: try another one.
            for attempt in range(5):
                self.port = _free_port()
                if self.flavour == "auth":
                    self._write_authfile()
                self._spawn()
                try:
                    self._wait_ready()
                    return
                except RegistryError:
                    log = self._log_tail()
                    self._terminate()
                    if "address already in use" in log and attempt < 4:
                        continue
                    raise
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Kill the registry's process group, reap it, remove its directory. Idempotent."""
        self._terminate()
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None

    def _terminate(self) -> None:
        proc, self._proc = self._proc, None
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None
        if proc is None:
            return
        # The registry leads its own process group (start_new_session); signal the group
        # so that nothing it may have spawned survives.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            _kill_group(proc.pid)
            proc.wait()
        _kill_group(proc.pid)

    def _spawn(self) -> None:
        workdir = self._require_workdir()
        config = workdir / "config.yml"
        config.write_text(self._config_text())
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                [self.binary, "serve", str(config)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=workdir,
                start_new_session=True,
            )
        # If the test process dies without stop() (KeyboardInterrupt in a fixture, a
        # crashed session), the registry must not outlive it.
        self._finalizer = weakref.finalize(self, _kill_group, self._proc.pid)

    def _wait_ready(self) -> None:
        context: Optional[ssl.SSLContext] = None
        if self.tls:
            context = ssl.create_default_context(cafile=str(self._require_workdir() / "ca.crt"))
        # No proxy from the environment: the registry is on loopback.
        opener = urllib.request.build_opener(
            urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=context)
        )
        deadline = time.monotonic() + self.start_timeout
        while True:
            assert self._proc is not None
            if self._proc.poll() is not None:
                raise RegistryError(
                    f"registry exited with {self._proc.returncode}:\n{self._log_tail()}"
                )
            try:
                with opener.open(f"{self.url}/v2/", timeout=2):
                    return
            except urllib.error.HTTPError:
                # Any HTTP answer (401 for the auth flavour) means it serves requests.
                return
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                raise RegistryError(
                    f"registry not answering on {self.url} after {self.start_timeout} s:\n"
                    + self._log_tail()
                )
            time.sleep(0.05)

    def _log_tail(self, limit: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-limit:]
        except OSError:
            return ""

    def _require_workdir(self) -> Path:
        if self.workdir is None:
            raise RegistryError("registry not started")
        return self.workdir

    # --- Configuration ------------------------------------------------------------------

    def _config_text(self) -> str:
        workdir = self._require_workdir()
        # JSON is YAML: quoting through json.dumps keeps odd temp paths intact.
        q = json.dumps
        lines = [
            "version: 0.1",
            "log: {level: warn, accesslog: {disabled: true}}",
            "storage:",
            f"  filesystem: {{rootdirectory: {q(str(workdir / 'data'))}}}",
            "  delete: {enabled: true}",
            "http:",
            f"  addr: {q(self.host)}",
            "  secret: test-only",
        ]
        if self.tls:
            lines.append(
                f"  tls: {{certificate: {q(str(workdir / 'server.crt'))}, "
                f"key: {q(str(workdir / 'server.key'))}}}"
            )
        if self.flavour == "auth":
            lines.append(
                f"auth: {{htpasswd: {{realm: testbed, path: {q(str(workdir / 'htpasswd'))}}}}}"
            )
        lines.append("health: {storagedriver: {enabled: false}}")
        return "\n".join(lines) + "\n"

    def _make_certificates(self) -> None:
        workdir = self._require_workdir()
        ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
        run(
            [
                "openssl", "req", "-x509", *ec, "-days", "7",
                "-subj", "/CN=containers-image-proxy test CA",
                "-addext", "basicConstraints=critical,CA:TRUE",
                "-addext", "keyUsage=critical,keyCertSign,cRLSign",
                "-keyout", str(workdir / "ca.key"), "-out", str(workdir / "ca.crt"),
            ]
        )  # fmt: skip
        run(
            [
                "openssl", "req", "-new", *ec, "-subj", "/CN=127.0.0.1",
                "-keyout", str(workdir / "server.key"), "-out", str(workdir / "server.csr"),
            ]
        )  # fmt: skip
        ext = workdir / "server.ext"
        ext.write_text(
            "basicConstraints=CA:FALSE\n"
            "keyUsage=critical,digitalSignature,keyEncipherment\n"
            "extendedKeyUsage=serverAuth\n"
            "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
        )
        run(
            [
                "openssl", "x509", "-req", "-in", str(workdir / "server.csr"), "-days", "7",
                "-CA", str(workdir / "ca.crt"), "-CAkey", str(workdir / "ca.key"),
                "-CAcreateserial", "-extfile", str(ext), "-out", str(workdir / "server.crt"),
            ]
        )  # fmt: skip
        # Only the CA goes into cert_dir: skopeo reads every *.crt there as a CA and pairs
        # *.cert/*.key as client certificates.
        self.cert_dir = workdir / "certs"
        self.cert_dir.mkdir()
        shutil.copy(workdir / "ca.crt", self.cert_dir / "ca.crt")

    def _make_credentials_file(self) -> None:
        workdir = self._require_workdir()
        # -i: password from stdin, so it never appears in a process list.
        entry = run(["htpasswd", "-iBn", self.user], input=self.password + "\n").stdout
        (workdir / "htpasswd").write_text(entry.strip() + "\n")

    def _write_authfile(self) -> None:
        workdir = self._require_workdir()
        token = base64.b64encode(f"{self.user}:{self.password}".encode()).decode()
        self.auth_json = json.dumps({"auths": {self.host: {"auth": token}}}).encode()
        self.authfile = workdir / "auth.json"
        fd = os.open(self.authfile, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(self.auth_json)

    # --- Using it ---------------------------------------------------------------------

    def push(
        self,
        src_ref: str,
        repo_tag: str,
        skopeo_argv: Sequence[str] = ("skopeo",),
        sign_by: Optional[str] = None,
        global_args: Sequence[str] = (),
        extra_args: Sequence[str] = (),
        env: Optional[Mapping[str, str]] = None,
        timeout: float = 300,
    ) -> str:
        """``skopeo copy src_ref docker://HOST/repo_tag``; returns the pushed manifest digest.

        ``sign_by`` adds ``--sign-by`` (GPG simple signing; set GNUPGHOME through ``env``
        and the lookaside through ``--registries.d`` in ``global_args``). The copy ignores
        the machine's policy.json unless ``global_args`` names a ``--policy``.
        """
        self._require_workdir()
        policy = [] if "--policy" in global_args else ["--insecure-policy"]
        with tempfile.TemporaryDirectory(prefix="cip-push-") as tmp:
            digestfile = Path(tmp) / "digest"
            argv = [
                *skopeo_argv,
                *policy,
                *global_args,
                "copy",
                "--digestfile",
                str(digestfile),
                *self.dest_args(),
                *(["--sign-by", sign_by] if sign_by else []),
                *extra_args,
                src_ref,
                self.ref(repo_tag),
            ]
            try:
                run(argv, env=env, timeout=timeout)
            except CommandFailed as e:
                raise RegistryError(f"push to {self.flavour} registry failed: {e}") from e
            return digestfile.read_text().strip()
