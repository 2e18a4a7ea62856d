"""The few socket and pipe primitives both front ends share.

They work on blocking and non-blocking descriptors alike (a non-blocking one raises
:class:`BlockingIOError` when nothing is there), so the sync front end calls them after
``poll`` and the asyncio one from its reader callbacks.
"""

from __future__ import annotations

import array
import os
import select
import socket
from typing import List, Optional, Protocol, Tuple

from ._core.protocol import MAX_REPLY_SIZE
from ._core.protocol import close_fds as close_fds  # one implementation, shared

# Room for more fds than any reply may carry, so that extra ones are seen (and closed)
# instead of being silently cut off by the kernel.
_MAX_FDS = 16
_ANCILLARY_SIZE = socket.CMSG_SPACE(_MAX_FDS * array.array("i").itemsize)
_RECV_FLAGS = int(getattr(socket, "MSG_CMSG_CLOEXEC", 0))
# plain ints: combining the socket module's IntFlag members costs microseconds per reply
_TRUNCATED = int(socket.MSG_TRUNC) | int(socket.MSG_CTRUNC)
_SOL_SOCKET, _SCM_RIGHTS = int(socket.SOL_SOCKET), int(socket.SCM_RIGHTS)

READ_CHUNK = 1024 * 1024


class Writable(Protocol):
    """A file ``copy_to`` can write to: its descriptor, after flushing its buffer."""

    def fileno(self) -> int: ...

    def flush(self) -> None: ...


class BytesSink(Protocol):
    """Any other destination of ``copy_to``: an object with ``write`` (a ``BytesIO``, a
    hashing wrapper), given ``bytes`` and returning the count written (or None: all)."""

    def write(self, data: bytes, /) -> object: ...


def receive_reply(sock: socket.socket, buf: bytearray) -> Tuple[bytes, List[int], bool]:
    """Receive one SEQPACKET message into ``buf``: ``(payload, fds, truncated)``.

    ``payload`` is empty and ``fds`` empty at EOF (the peer closed its end). ``truncated``
    is true when the message or its fds did not fit; the fds that did arrive are returned
    so the caller can close them.
    """
    nbytes, ancdata, flags, _ = sock.recvmsg_into([buf], _ANCILLARY_SIZE, _RECV_FLAGS)
    fds: List[int] = []
    for level, kind, data in ancdata:
        if level == _SOL_SOCKET and kind == _SCM_RIGHTS:
            arr = array.array("i")
            usable = len(data) - len(data) % arr.itemsize
            arr.frombytes(data[:usable])
            fds.extend(arr)
    truncated = bool(flags & _TRUNCATED)
    return bytes(buf[:nbytes]), fds, truncated


def peer_closed(sock: socket.socket) -> bool:
    """Whether the peer closed its end, telling EOF from an (invalid) empty message."""
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLHUP | getattr(select, "POLLRDHUP", 0))
    try:
        return bool(poller.poll(0))
    except OSError:
        return True


def wait_readable(fd: int, timeout: Optional[float]) -> bool:
    """Whether ``fd`` becomes readable within ``timeout`` seconds (None: no limit), blocking
    the calling thread (the sync front end, one-shot skopeo commands)."""
    poller = select.poll()
    poller.register(fd, select.POLLIN | select.POLLHUP | select.POLLERR)
    return bool(poller.poll(None if timeout is None else max(0.0, timeout) * 1000))


def readable_now(fd: int) -> bool:
    """Whether a read of ``fd`` would not block now (data, EOF or an error is there)."""
    poller = select.poll()
    poller.register(fd, select.POLLIN | select.POLLHUP | select.POLLERR)
    return bool(poller.poll(0))


def new_receive_buffer() -> bytearray:
    """A buffer large enough for any reply (see MAX_REPLY_SIZE)."""
    return bytearray(MAX_REPLY_SIZE)


def write_all(fd: int, data: memoryview) -> None:
    """Write all of ``data`` (os.write may write less than asked)."""
    while data:
        written = os.write(fd, data)
        data = data[written:]
