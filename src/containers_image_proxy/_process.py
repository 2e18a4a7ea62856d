"""Process supervision: spawning skopeo, its lifetime, its stderr, and noticing its exit.

Both front ends use :class:`SkopeoProcess`; nothing else in the package forks.

Lifetime: skopeo must die with the Python process. ``PR_SET_PDEATHSIG`` fires when the
*thread* that forked the child exits, not the process, so every child is forked from one
long-lived daemon thread (:class:`_Spawner`): a proxy created in a short-lived thread then
survives that thread, and still dies with the process.

stderr goes to an anonymous memory file rather than a pipe: no reader thread is needed, a
chatty skopeo can never block on a full pipe, and the tail is there to read when it exits.
In debug mode a pipe and a thread forward each line to :mod:`logging` instead.
"""

from __future__ import annotations

import collections
import concurrent.futures
import ctypes
import ctypes.util
import logging
import os
import queue
import signal
import socket
import subprocess
import threading
from typing import IO, Callable, Deque, Optional, Tuple

from ._config import ProxyConfig, build_command
from ._errors import ProxyExitedError, SkopeoNotFoundError

log = logging.getLogger("containers_image_proxy.skopeo")

STDERR_TAIL = 8192
_PR_SET_PDEATHSIG = 1


def _load_prctl() -> Optional[Callable[..., int]]:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name, use_errno=True)
        return libc.prctl
    except (OSError, AttributeError):
        return None


# Resolved in the parent: the child must not load libraries between fork and exec.
_prctl = _load_prctl()


def _child_setup(parent_pid: int) -> Callable[[], None]:
    def setup() -> None:
        if _prctl is not None:
            _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        # the parent may have died between fork and prctl: then nobody would signal us
        if os.getppid() != parent_pid:
            os._exit(1)

    return setup


class _Spawner:
    """One daemon thread that forks every skopeo (see the module docstring)."""

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[
            Tuple[
                Callable[[], subprocess.Popen[bytes]],
                concurrent.futures.Future[subprocess.Popen[bytes]],
            ]
        ] = queue.SimpleQueue()
        self._thread: Optional[threading.Thread] = None
        self._lock = threading.Lock()

    def spawn(self, start: Callable[[], subprocess.Popen[bytes]]) -> subprocess.Popen[bytes]:
        fut: concurrent.futures.Future[subprocess.Popen[bytes]] = concurrent.futures.Future()
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name="containers-image-proxy-spawner", daemon=True
                )
                self._thread.start()
            self._jobs.put((start, fut))
        return fut.result()

    def _run(self) -> None:
        while True:
            start, fut = self._jobs.get()
            try:
                fut.set_result(start())
            except BaseException as e:  # handed to the caller's thread
                fut.set_exception(e)


_spawner = _Spawner()

_flag_cache: dict[Tuple[str, ...], str] = {}
_flag_lock = threading.Lock()


def skopeo_help(skopeo: Tuple[str, ...]) -> str:
    """``skopeo --help`` output, cached per command, to detect optional global flags."""
    with _flag_lock:
        if skopeo not in _flag_cache:
            try:
                out = subprocess.run(
                    [*skopeo, "--help"],
                    stdin=subprocess.DEVNULL,
                    capture_output=True,
                    timeout=30,
                    check=False,
                )
            except FileNotFoundError as e:
                raise SkopeoNotFoundError(skopeo[0], str(e.strerror)) from None
            _flag_cache[skopeo] = out.stdout.decode(errors="replace")
        return _flag_cache[skopeo]


class SkopeoProcess:
    """A running ``skopeo experimental-image-proxy`` and our end of its socket."""

    def __init__(self, config: ProxyConfig) -> None:
        skopeo = tuple(config.skopeo)
        supports_uap = False
        if config.user_agent_prefix is not None:
            supports_uap = "--user-agent-prefix" in skopeo_help(skopeo)
        self.debug = config.debug_enabled
        self.owner_pid = os.getpid()

        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        auth_fd: Optional[int] = None
        stderr_fd: Optional[int] = None
        self._stderr_file: Optional[int] = None
        try:
            auth = config.auth_bytes()
            if auth is not None:
                # close-on-exec: a program the caller starts meanwhile (os.system in another
                # thread) must not inherit the credentials; pass_fds hands it to skopeo only
                auth_fd = os.memfd_create("auth.json", os.MFD_CLOEXEC)
                os.write(auth_fd, auth)
                os.lseek(auth_fd, 0, os.SEEK_SET)
            argv = build_command(config, auth_fd=auth_fd, supports_user_agent_prefix=supports_uap)
            self.argv = argv
            if self.debug:
                stderr_target: int = subprocess.PIPE
            else:
                stderr_fd = os.memfd_create("skopeo-stderr", os.MFD_CLOEXEC)
                stderr_target = stderr_fd
            pass_fds = (auth_fd,) if auth_fd is not None else ()
            parent = os.getpid()

            def start() -> subprocess.Popen[bytes]:
                return subprocess.Popen(
                    argv,
                    stdin=theirs.fileno(),
                    stdout=subprocess.DEVNULL,
                    stderr=stderr_target,
                    pass_fds=pass_fds,
                    close_fds=True,
                    preexec_fn=_child_setup(parent),
                )

            try:
                self.proc = _spawner.spawn(start)
            except FileNotFoundError as e:
                raise SkopeoNotFoundError(argv[0], str(e.strerror)) from None
            except PermissionError as e:
                raise SkopeoNotFoundError(argv[0], str(e.strerror)) from None
        except BaseException:
            ours.close()
            if stderr_fd is not None:
                os.close(stderr_fd)
            raise
        finally:
            theirs.close()
            if auth_fd is not None:
                os.close(auth_fd)
        self.sock = ours
        self._stderr_file = stderr_fd
        self._log_thread: Optional[threading.Thread] = None
        # in debug mode the tail is kept from the lines forwarded to logging
        self._logged_tail: Deque[str] = collections.deque(maxlen=40)
        if self.debug and self.proc.stderr is not None:
            self._log_thread = threading.Thread(
                target=_forward_stderr, args=(self.proc.stderr, self._logged_tail), daemon=True
            )
            self._log_thread.start()

    @property
    def pid(self) -> int:
        """The process id of skopeo (or of the wrapper given as the skopeo command)."""
        return self.proc.pid

    def stderr_tail(self) -> str:
        """The last few KiB skopeo wrote to stderr."""
        if self._stderr_file is None:
            return "\n".join(self._logged_tail)[-STDERR_TAIL:]
        try:
            size = os.fstat(self._stderr_file).st_size
            data = os.pread(self._stderr_file, STDERR_TAIL, max(0, size - STDERR_TAIL))
        except OSError:
            return ""
        return data.decode(errors="replace")

    def wait(self, timeout: Optional[float]) -> Optional[int]:
        """Reap skopeo if it exits within ``timeout`` seconds; its status, or None."""
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def kill(self) -> None:
        """SIGKILL skopeo (no-op once reaped) and reap it; in a forked child, nothing: the
        process is the parent's (a finalizer run at the child's exit must not end it)."""
        if os.getpid() != self.owner_pid:
            return
        if self.proc.returncode is None:
            try:
                self.proc.kill()
            except ProcessLookupError:
                pass
        self.proc.wait()

    def exited_error(self, context: str, wait: float = 2.0) -> ProxyExitedError:
        """The error to raise when the connection broke: waits briefly for the exit status."""
        code = self.wait(wait)
        if code is not None and self._log_thread is not None:
            self._log_thread.join(timeout=1)  # let the last lines reach the tail
        return ProxyExitedError(code, self.stderr_tail(), context)

    def release(self) -> None:
        """Close our descriptors (after the process has been reaped)."""
        self.sock.close()
        if self._stderr_file is not None:
            os.close(self._stderr_file)
            self._stderr_file = None
        if self._log_thread is not None:
            self._log_thread.join(timeout=5)
            self._log_thread = None

    def terminate_and_release(self) -> None:
        """Last resort (garbage collection, errors): kill, reap, close."""
        self.kill()
        self.release()


def _forward_stderr(stream: IO[bytes], tail: Deque[str]) -> None:
    with stream:
        for raw in stream:
            line = raw.decode(errors="replace").rstrip()
            tail.append(line)
            log.debug("%s", line)
