"""Process supervision: what the child inherits, its lifetime, stderr, debug logging."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from conftest import make_config
from containers_image_proxy import ImageProxy, ProxyConfig, ProxyExitedError
from testbed.images import Layouts
from testbed.releases import SkopeoRelease

pytestmark = pytest.mark.integration

SECRET = "c2VjcmV0LXVzZXI6aHVudGVyMg=="  # base64 of a made-up user:password


def wrapper(tmp_path: Path, release: SkopeoRelease, body: str) -> tuple[str, ...]:
    """A shell wrapper around the release's skopeo: runs ``body`` first, then execs it."""
    script = tmp_path / "skopeo-wrapper"
    argv = " ".join(f"'{a}'" for a in release.argv)
    script.write_text(f"#!/bin/sh\n{body}\nexec {argv} \"$@\"\n")
    script.chmod(0o755)
    return (str(script),)


def cmdline(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")


def test_child_inherits_only_its_socket_and_the_auth_file(
    skopeo_release: SkopeoRelease, tmp_path: Path, layouts: Layouts
) -> None:
    record = tmp_path / "fds"
    script = tmp_path / "record-fds"
    # a Python wrapper: a shell keeps descriptors of its own (the script) open
    script.write_text(
        f"#!{sys.executable}\n"
        "import os, sys\n"
        f"fds = os.listdir('/proc/self/fd')\n"
        f"open({str(record)!r}, 'w').write(' '.join(fds))\n"
        f"os.execv({skopeo_release.argv[0]!r}, [{skopeo_release.argv[0]!r}, *sys.argv[1:]])\n"
    )
    script.chmod(0o755)
    skopeo = (str(script),)
    auth = '{"auths": {"registry.invalid": {"auth": "' + SECRET + '"}}}'
    # plenty of descriptors open in the parent that must not leak into the child
    extra = [os.open("/dev/null", os.O_RDONLY) for _ in range(5)]
    r, w = os.pipe()
    os.set_inheritable(r, True)  # even an inheritable one
    try:
        with ImageProxy(ProxyConfig(skopeo=skopeo, auth_data=auth)) as proxy:
            args = cmdline(proxy._process.pid)
            with proxy.open_image(layouts.ref("small")):
                pass
    finally:
        for fd in [*extra, r, w]:
            os.close(fd)
    fds = sorted(int(x) for x in record.read_text().split())
    auth_fd = int(args[args.index("--authfile") + 1].rsplit("/", 1)[1])
    # stdin (the socket), stdout, stderr, the auth file; one more is listdir's own
    assert auth_fd in fds and {0, 1, 2} <= set(fds)
    assert len(set(fds) - {0, 1, 2, auth_fd}) == 1, fds
    assert not any(SECRET in a for a in args)


def test_secrets_stay_out_of_argv_repr_and_logs(
    skopeo_release: SkopeoRelease, layouts: Layouts, caplog: pytest.LogCaptureFixture
) -> None:
    auth = '{"auths": {"registry.invalid": {"auth": "' + SECRET + '"}}}'
    config = make_config(skopeo_release, auth_data=auth.encode(), debug=True)
    assert SECRET not in repr(config) and SECRET not in str(config)
    with caplog.at_level(logging.DEBUG, logger="containers_image_proxy"):
        with ImageProxy(config) as proxy:
            assert SECRET not in " ".join(cmdline(proxy._process.pid))
            with proxy.open_image(layouts.ref("small")) as img:
                proxy.fetch_manifest(img)
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "level=debug" in text  # skopeo ran with --debug and its stderr reached logging
    assert SECRET not in text


def test_user_agent_prefix_only_where_accepted(
    skopeo_release: SkopeoRelease, layouts: Layouts
) -> None:
    config = make_config(skopeo_release, user_agent_prefix="cip-test/1")
    with ImageProxy(config) as proxy:
        args = cmdline(proxy._process.pid)
        with proxy.open_image(layouts.ref("small")):
            pass
    accepts = skopeo_release.version >= (1, 21)
    assert ("--user-agent-prefix" in args) is accepts


def test_skopeo_dies_with_the_python_process(skopeo_release: SkopeoRelease) -> None:
    """The proxy is started in a thread that has exited; then the process is killed."""
    code = textwrap.dedent(
        f"""
        import os, sys, threading, time
        from containers_image_proxy import ImageProxy, ProxyConfig, RequestError
        box = {{}}
        config = ProxyConfig(skopeo={skopeo_release.argv!r})
        t = threading.Thread(target=lambda: box.setdefault("p", ImageProxy(config)))
        t.start(); t.join()
        # a round trip after the thread is gone: skopeo outlived it and still answers
        try:
            box["p"].open_image("oci:/nonexistent/layout:x")
        except RequestError:
            pass
        print(box["p"]._process.pid, flush=True)
        threading.Event().wait()  # until killed
        """
    )
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None
    pid = int(child.stdout.readline())
    os.kill(pid, 0)  # alive although the thread that started it is gone
    child.kill()
    child.wait()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    pytest.fail("skopeo outlived the Python process that started it")


def test_close_reports_a_non_zero_exit(skopeo_release: SkopeoRelease, tmp_path: Path) -> None:
    script = tmp_path / "exits-badly"
    argv = " ".join(f"'{a}'" for a in skopeo_release.argv)
    script.write_text(f"#!/bin/sh\n{argv} \"$@\"\necho 'wrapper failed' >&2\nexit 7\n")
    script.chmod(0o755)
    proxy = ImageProxy(ProxyConfig(skopeo=(str(script),)))
    with pytest.raises(ProxyExitedError, match="wrapper failed") as e:
        proxy.close()
    assert e.value.returncode == 7


def test_garbage_collected_proxy_is_reaped(skopeo_release: SkopeoRelease) -> None:
    proxy = ImageProxy(ProxyConfig(skopeo=skopeo_release.argv))
    pid = proxy._process.pid
    del proxy
    import gc

    gc.collect()
    with pytest.raises(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)  # already reaped: not our child any more


def test_proxies_started_from_many_threads(skopeo_release: SkopeoRelease) -> None:
    proxies: list[ImageProxy] = []
    lock = threading.Lock()

    def start() -> None:
        p = ImageProxy(ProxyConfig(skopeo=skopeo_release.argv))
        with lock:
            proxies.append(p)

    threads = [threading.Thread(target=start) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(proxies) == 8
    for p in proxies:
        p.close()
