"""Helpers for the command line tests: running the tool, a slow network, a tiny terminal.

No tests here; the test_cli_* modules import from it (``from testbed.cli import ...``).
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

from testbed.releases import SkopeoRelease

ROOT = Path(__file__).resolve().parent.parent.parent
TOOL = [sys.executable, "-m", "containers_image_proxy"]


def skopeo_opt(release: SkopeoRelease) -> list[str]:
    """``--skopeo`` for a release (the option takes a shell-like command)."""
    return ["--skopeo", shlex.join(release.argv)]


def cli(
    *args: str,
    input: Optional[bytes] = None,
    timeout: float = 60,
    env: Optional[dict[str, str]] = None,
) -> subprocess.CompletedProcess[bytes]:
    """Run the tool to completion, as a script would (pipes, no terminal)."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [*TOOL, *args],
        input=input,
        stdin=None if input is not None else subprocess.DEVNULL,
        capture_output=True,
        timeout=timeout,
        env=full_env,
    )


def ok(proc: subprocess.CompletedProcess[bytes]) -> bytes:
    """stdout of a run that must have succeeded (its stderr in the failure message)."""
    assert proc.returncode == 0, (proc.returncode, proc.stderr.decode(errors="replace"))
    return proc.stdout


def one_line_error(proc: subprocess.CompletedProcess[bytes]) -> str:
    """The single line of stderr a failed run must print (no traceback)."""
    text = proc.stderr.decode(errors="replace")
    lines = text.strip().splitlines()
    assert len(lines) == 1, text
    assert "Traceback" not in text
    assert lines[0].startswith("containers-image-proxy: "), text
    return lines[0]


def children_of(pid: int) -> set[int]:
    """Direct children of process ``pid`` (all its threads')."""
    out: set[int] = set()
    with contextlib.suppress(FileNotFoundError, ProcessLookupError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(FileNotFoundError, ProcessLookupError):
                text = Path(f"/proc/{pid}/task/{task}/children").read_text()
                out.update(int(p) for p in text.split())
    return out


def alive(pid: int) -> bool:
    """Whether ``pid`` is a process that has not exited (zombies count as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    state = stat.rpartition(")")[2].split()[0]
    return state not in ("Z", "X")


def wait_for(predicate: object, timeout: float, what: str) -> None:
    """Poll ``predicate()`` until true; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


# --- a slow network ---------------------------------------------------------------------


class Throttle:
    """A loopback TCP relay to ``target`` that sends responses at ``rate`` bytes/s.

    Enough to make a blob transfer last seconds, so a test can interrupt it midway.
    """

    def __init__(self, target: str, rate: int) -> None:
        host, _, port = target.rpartition(":")
        self.target = (host, int(port))
        self.rate = rate
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._sockets: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._closed = False

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def __enter__(self) -> Throttle:
        self._spawn(self._accept)
        return self

    def __exit__(self, *exc: object) -> None:
        self._closed = True
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        with self._lock:
            sockets = list(self._sockets)
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        for thread in self._threads:
            thread.join(timeout=10)
        for sock in sockets:
            sock.close()
        self._listener.close()

    def _spawn(self, target: object, *args: object) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)  # type: ignore[arg-type]
        self._threads.append(thread)
        thread.start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
                upstream = socket.create_connection(self.target, timeout=10)
            except OSError:
                return
            upstream.settimeout(None)
            with self._lock:
                self._sockets += [client, upstream]
            self._spawn(self._pump, client, upstream, None)
            self._spawn(self._pump, upstream, client, self.rate)

    def _pump(self, src: socket.socket, dst: socket.socket, rate: Optional[int]) -> None:
        chunk = 16 * 1024
        try:
            while True:
                data = src.recv(chunk)
                if not data:
                    break
                dst.sendall(data)
                if rate:
                    time.sleep(len(data) / rate)
        except OSError:
            pass
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)


# --- a terminal ---------------------------------------------------------------------------


def run_in_pty(argv: Sequence[str], timeout: float = 60, columns: int = 120) -> tuple[int, bytes]:
    """Run ``argv`` with stdout and stderr on a pseudo-terminal; (exit status, output)."""
    import pty

    master, slave = pty.openpty()
    env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": str(columns), "LINES": "40"}
    env.pop("NO_COLOR", None)
    proc = subprocess.Popen(
        list(argv), stdin=subprocess.DEVNULL, stdout=slave, stderr=slave, env=env
    )
    os.close(slave)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    try:
        while True:
            if time.monotonic() > deadline:
                proc.kill()
                raise AssertionError("the program on the terminal did not finish")
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: every writer of the terminal is gone
                break
            if not data:
                break
            chunks.append(data)
    finally:
        os.close(master)
    return proc.wait(timeout=10), b"".join(chunks)


_CSI = re.compile(rb"\x1b\[([?0-9;]*)([A-Za-z])|\x1b\][^\x07]*\x07|\x1b[78]")


def screen(output: bytes) -> list[str]:
    """What a terminal shows after ``output``: the non-empty lines, trailing blanks cut.

    Understands what progress bars use: CR, LF, cursor up/down/column, erase line.
    """
    rows: list[list[str]] = [[]]
    row = col = 0
    text = output.decode(errors="replace")
    pos = 0
    raw = text.encode()
    while pos < len(raw):
        m = _CSI.match(raw, pos)
        if m:
            pos = m.end()
            if m.group(2) is None:
                continue
            params, cmd = m.group(1).decode(), m.group(2).decode()
            n = int(params) if params.isdigit() else None
            if cmd == "A":
                row = max(0, row - (n or 1))
            elif cmd == "B":
                row += n or 1
            elif cmd == "G":
                col = (n or 1) - 1
            elif cmd == "C":
                col += n or 1
            elif cmd == "D":
                col = max(0, col - (n or 1))
            elif cmd == "K":
                while len(rows) <= row:
                    rows.append([])
                line = rows[row]
                if n in (None, 0):
                    del line[col:]
                elif n == 2:
                    line.clear()
                elif n == 1:
                    line[:col] = [" "] * min(col, len(line))
            continue
        ch = raw[pos : pos + 1]
        # one UTF-8 character
        length = 1
        if ch[0] >= 0xC0:
            length = 2 if ch[0] < 0xE0 else 3 if ch[0] < 0xF0 else 4
        char = raw[pos : pos + length].decode(errors="replace")
        pos += length
        if char == "\r":
            col = 0
        elif char == "\n":
            row += 1
            col = 0
        elif char == "\x1b":
            continue
        else:
            while len(rows) <= row:
                rows.append([])
            line = rows[row]
            while len(line) < col:
                line.append(" ")
            if col < len(line):
                line[col] = char
            else:
                line.append(char)
            col += 1
    return [s for s in ("".join(r).rstrip() for r in rows) if s]


def interrupt(proc: subprocess.Popen[bytes], group: bool = False) -> None:
    """Ctrl-C: SIGINT to the process, or to its whole process group as a terminal does."""
    if group:
        os.killpg(proc.pid, signal.SIGINT)
    else:
        proc.send_signal(signal.SIGINT)
