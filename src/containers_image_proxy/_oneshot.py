"""skopeo commands run once, with the proxy's own configuration: ``list-tags`` and
``inspect --raw``, for what the proxy protocol does not offer (tags, an index as stored).

The command line comes from :func:`~._config.build_skopeo_command`, so binary, credentials,
certificates, TLS, registries.conf and policy are the proxy's. ``auth_data`` reaches skopeo
as an inherited anonymous file, as for the proxy. stdout is bounded (a larger answer kills
skopeo and raises); stderr goes to an anonymous file, whose last line is skopeo's error.
The asyncio twins run the same blocking code in a thread and kill skopeo if cancelled.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import threading
from typing import List, Optional, Sequence, Tuple

from ._config import ProxyConfig, build_skopeo_command
from ._errors import ProtocolError, ProxyStalledError, RequestError, SkopeoNotFoundError
from ._process import _child_setup, _spawner, skopeo_help
from ._transport import READ_CHUNK, wait_readable

#: The most a one-shot command may print: the bound on metadata (an index, a tag list).
MAX_OUTPUT = 4 * 1024 * 1024
_STDERR_TAIL = 8192
# logrus's fatal line: time="..." level=fatal msg="..." (Go-quoted)
_FATAL_MSG = re.compile(r'level=fatal msg="((?:[^"\\]|\\.)*)"')


def skopeo_error_message(stderr: str) -> str:
    """The error a failed skopeo command reports: its fatal log message, unquoted."""
    found = _FATAL_MSG.findall(stderr)
    if found:
        try:
            text: str = json.loads(f'"{found[-1]}"')
            return text
        except ValueError:
            return str(found[-1])
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "no error message"


class OneShot:
    """One run of a skopeo command; :meth:`run` blocks, :meth:`kill` may come from any thread."""

    def __init__(self, config: ProxyConfig, command: Sequence[str], context: str) -> None:
        self.config = config
        self.command = tuple(command)
        self.context = context
        self._proc: Optional[subprocess.Popen[bytes]] = None
        self._lock = threading.Lock()
        self._killed = False

    def kill(self) -> None:
        """Stop skopeo (the blocked :meth:`run` then returns or raises)."""
        with self._lock:
            self._killed = True
            proc = self._proc
        if proc is not None:
            _kill(proc)

    def run(self) -> bytes:
        """Run the command to its end; its stdout, or the error it reported."""
        config = self.config
        skopeo = tuple(config.skopeo)
        uap = config.user_agent_prefix is not None and "--user-agent-prefix" in skopeo_help(skopeo)
        auth_fd: Optional[int] = None
        stderr_fd = read_end = write_end = -1
        try:
            stderr_fd = os.memfd_create("skopeo-stderr", os.MFD_CLOEXEC)
            read_end, write_end = os.pipe2(os.O_CLOEXEC)
            auth = config.auth_bytes()
            if auth is not None:
                auth_fd = os.memfd_create("auth.json", os.MFD_CLOEXEC)
                os.write(auth_fd, auth)
                os.lseek(auth_fd, 0, os.SEEK_SET)
            argv = build_skopeo_command(
                config, self.command, auth_fd=auth_fd, supports_user_agent_prefix=uap
            )
            pass_fds = (auth_fd,) if auth_fd is not None else ()
            parent = os.getpid()

            def start() -> subprocess.Popen[bytes]:
                return subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=write_end,
                    stderr=stderr_fd,
                    pass_fds=pass_fds,
                    close_fds=True,
                    preexec_fn=_child_setup(parent),
                )

            try:
                proc = _spawner.spawn(start)
            except (FileNotFoundError, PermissionError) as e:
                raise SkopeoNotFoundError(argv[0], str(e.strerror)) from None
            with self._lock:
                self._proc = proc
                killed = self._killed
            if killed:
                _kill(proc)
            os.close(write_end)
            write_end = -1
            try:
                out = self._read_output(read_end, stderr_fd)
            except BaseException:
                _kill(proc)
                raise
            finally:
                proc.wait()  # after EOF on stdout, or after the kill
            if proc.returncode != 0:
                message = skopeo_error_message(_tail(stderr_fd))
                raise RequestError(self.context, message)
            return out
        finally:
            for fd in (read_end, write_end, stderr_fd, auth_fd):
                if fd is not None and fd >= 0:
                    os.close(fd)

    def _read_output(self, fd: int, stderr_fd: int) -> bytes:
        chunks: List[bytes] = []
        size = 0
        timeout = self.config.stall_timeout
        while True:
            if not wait_readable(fd, timeout):
                assert timeout is not None
                raise ProxyStalledError(timeout, self.context, _tail(stderr_fd))
            chunk = os.read(fd, READ_CHUNK)
            if not chunk:
                return b"".join(chunks)
            size += len(chunk)
            if size > MAX_OUTPUT:
                raise ProtocolError(
                    f"{self.context}: skopeo's answer exceeds {MAX_OUTPUT} bytes; refused"
                )
            chunks.append(chunk)


def _kill(proc: subprocess.Popen[bytes]) -> None:
    if proc.returncode is None:
        try:
            proc.kill()
        except ProcessLookupError:
            pass


def _tail(fd: int) -> str:
    try:
        size = os.fstat(fd).st_size
        data = os.pread(fd, _STDERR_TAIL, max(0, size - _STDERR_TAIL))
    except OSError:
        return ""
    return data.decode(errors="replace")


def run_skopeo(config: ProxyConfig, command: Sequence[str], context: str) -> bytes:
    """Run a skopeo command with ``config``; its stdout (at most :data:`MAX_OUTPUT`).

    Raises :class:`RequestError` with skopeo's message when it fails.
    """
    return OneShot(config, command, context).run()


async def run_skopeo_async(config: ProxyConfig, command: Sequence[str], context: str) -> bytes:
    """:func:`run_skopeo` for asyncio: skopeo is killed if the awaiting task is cancelled."""
    shot = OneShot(config, command, context)
    loop = asyncio.get_running_loop()
    fut = loop.run_in_executor(None, shot.run)
    try:
        return await asyncio.shield(fut)
    except asyncio.CancelledError:
        shot.kill()
        # the thread sees EOF at once; wait for it so that no descriptor outlives us
        try:
            await fut
        except BaseException:
            pass
        raise


__all__: Tuple[str, ...] = ("MAX_OUTPUT", "OneShot", "run_skopeo", "run_skopeo_async")
