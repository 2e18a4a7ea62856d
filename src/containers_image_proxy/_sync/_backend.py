"""What the sync front end does differently from the asyncio one, written by hand.

The rest of ``_sync`` is generated from ``_async`` (scripts/unasync.py); it calls these
names, which ``_async/_backend.py`` offers for the event loop:

- :class:`Link`: one connection to skopeo, shared by threads. Requests from any thread are
  queued and sent at once (``_core.connection.Connection`` keeps their order); whichever waiting
  thread finds nobody receiving becomes the receiver and hands each reply to its ticket, so
  threads never wait on each other's requests more than the proxy itself makes them.
- :func:`wait_readable`, :func:`wait_writable`: ``poll``; :func:`wait_exit` and
  :func:`sleep` block the calling thread.
- :func:`hash_bytes` and :data:`CANCELLED`: bytes are hashed on the reading thread, which
  nothing cancels.
- :class:`Hashing` (``_stream.hashing.HashBehind``): the plain reads' bytes are hashed on a
  helper thread while the caller uses them. :func:`write_plain` writes to a file without
  a descriptor.
- :class:`ReturnedBuffers`: the copy's writer thread hands buffers back through a queue.
- :class:`Pacer`: bulk copies pause while the pipe fills (``_stream.copying.Coalescer``).
- :func:`settle`, :func:`state_lock`, :func:`new_slot_lock`, :func:`start_in_init`: the pool
  starts and closes members on helper threads and guards its bookkeeping with locks.
- :class:`ReaderBase`: the binary file object's methods (``read(n)`` fills, ``read1`` and
  ``readinto1`` read once).
- :func:`opening`: ``get_blob`` returns the reader itself.
"""

from __future__ import annotations

import concurrent.futures
import io
import queue
import select
import threading
import time
from typing import TYPE_CHECKING, Callable, List, Optional, Sequence, Tuple, Type, TypeVar, Union

from .._config import ProxyConfig
from .._core.connection import Ticket
from .._core.protocol import Arg, Reply, encode_request
from .._errors import ProtocolError, ProxyClosedError, ProxyError, ProxyStalledError
from .._link import LinkBase
from .._process import SkopeoProcess
from .._stream.copying import Coalescer
from .._stream.hashing import HashBehind
from .._stream.state import BlobStream
from .._transport import READ_CHUNK, BytesSink, peer_closed, receive_reply
from .._transport import wait_readable as wait_readable  # poll, shared with _oneshot

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

T = TypeVar("T")

SlotLock = threading.Lock

# what one receive gives the receiving thread: a message, or the error ending the connection
_Received = Union[ProxyError, Tuple[bytes, List[int], bool]]


def start_in_init(start: Callable[[], None]) -> None:
    """A sync proxy or pool is started by its constructor."""
    start()


class Link(LinkBase):
    """The connection to one skopeo process, shared by every thread using the proxy."""

    def __init__(self, config: ProxyConfig) -> None:
        super().__init__(config)
        self._cond = threading.Condition()
        self._receiving = False

    def open(self, owner: object) -> None:
        """Spawn skopeo; it is killed and reaped if ``owner`` is dropped without close()."""
        self._check_not_started()
        self._adopt(SkopeoProcess(self.config), owner)

    # --- lifetime -------------------------------------------------------------------------

    def shut_down(self) -> Optional[Tuple[SkopeoProcess, bool]]:
        """Send Shutdown and fail what is outstanding; the process to reap and whether the
        connection had already failed (None: nothing to reap)."""
        with self._cond:
            process = self._reapable()
            if process is None:
                self.closed = True
                return None
            already_failed = self._conn.failure is not None
            self.closed = True
            if not already_failed:
                try:
                    # Shutdown has no reply, hence no ticket
                    process.sock.sendmsg([encode_request("Shutdown", ())])
                except OSError:
                    pass
                self._conn.fail(ProxyClosedError("the proxy was closed"))
            self._cond.notify_all()
        return process, already_failed

    def teardown(self, failure: Optional[ProxyError]) -> None:
        """Kill skopeo after a failure; outstanding and later requests fail with ``failure``.

        Our socket stays open until close() or garbage collection: another thread may be
        blocked in a receive on it, and closing an fd under it is never safe.
        """
        with self._cond:
            self._conn.fail(failure or ProxyClosedError("the proxy was torn down"))
            self.closed = True
            self._cond.notify_all()
        if self.process is not None:
            self.process.kill()

    # --- requests and replies -------------------------------------------------------------

    def submit(
        self, method: str, args: Tuple[Arg, ...], exempt: bool = False, abandoned: bool = False
    ) -> Ticket:
        """Send a request now; its ticket."""
        self.check_usable()  # before the lock: in a forked child it may be held for good
        with self._cond:
            if self.closed and self._conn.failure is None:
                raise ProxyClosedError("the proxy is closed")
            process = self.process
            assert process is not None
            data, ticket = self._conn.request(method, args, exempt=exempt)
            ticket.abandoned = abandoned
            try:
                process.sock.sendmsg([data])
            except OSError:
                pass  # skopeo is gone: the receiver sees EOF and says so, with its status
        return ticket

    def wait(self, ticket: Ticket) -> Reply:
        """The ticket's reply (or its error, raised); this thread may receive for others."""
        cond = self._cond
        with cond:
            while not ticket.done:
                if self._receiving:
                    cond.wait()
                    continue
                self._receiving = True
                exempt = self._conn.head_exempt
                head = self._conn.pending[0].method if self._conn.pending else ticket.method
                cond.release()
                try:
                    outcome = self._receive_one(exempt, head)
                finally:
                    cond.acquire()
                    self._receiving = False
                    cond.notify_all()
                self._deliver(outcome)
        return ticket.result()

    def _receive_one(self, exempt: bool, context: str) -> _Received:
        """One message from the socket, or the error that ends the connection."""
        process = self.process
        assert process is not None
        sock = process.sock
        timeout = None if exempt else self.config.stall_timeout
        if timeout is not None and not wait_readable(sock.fileno(), timeout):
            return ProxyStalledError(timeout, f"{context} request", process.stderr_tail())
        try:
            data, fds, truncated = receive_reply(sock, self._buf)
        except OSError:
            data, fds, truncated = b"", [], False
        if not data and not fds:
            if peer_closed(sock):
                return process.exited_error(context)
            return ProtocolError(f"{context}: empty reply")
        return data, fds, truncated

    def _deliver(self, outcome: _Received) -> None:
        """Resolve a ticket (the caller holds the lock)."""
        process = self.process
        assert process is not None
        if isinstance(outcome, ProxyError):
            self._conn.fail(outcome)
            self.closed = True
            process.kill()
            return
        try:
            _, follow_ups = self._conn.receive(*outcome)
        except ProtocolError:
            self.closed = True
            process.kill()
            return
        for method, args in follow_ups:
            data, extra = self._conn.request(method, args)
            extra.abandoned = True
            try:
                process.sock.sendmsg([data])
            except OSError:
                pass


def wait_writable(fd: int) -> None:
    """Wait until ``fd`` (a full pipe the caller gave) takes data again."""
    poller = select.poll()
    poller.register(fd, select.POLLOUT | select.POLLERR)
    poller.poll()


def wait_exit(process: SkopeoProcess, timeout: float) -> Optional[int]:
    """Reap skopeo if it exits within ``timeout`` seconds."""
    return process.wait(timeout)


def sleep(seconds: float) -> None:
    """Wait before a retry."""
    time.sleep(seconds)


#: Nothing interrupts a sync read while its bytes are hashed.
CANCELLED: Tuple[Type[BaseException], ...] = ()


def hash_bytes(stream: BlobStream, data: memoryview) -> None:
    """``stream.hash(data)``, here on the reading thread."""
    stream.hash(data)


#: The plain reads' bytes are hashed on a helper thread while the caller uses them.
Hashing = HashBehind


def write_plain(dest: BytesSink, data: bytes) -> None:
    """``dest.write(data)`` for a destination without a descriptor; a short count (a raw
    file's) writes the rest."""
    while data:
        written = dest.write(data)
        if not isinstance(written, int) or isinstance(written, bool) or written >= len(data):
            return
        data = data[max(written, 0) :]


class ReturnedBuffers:
    """The buffers ``copy_to``'s writer thread gives back to the reading thread."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[bytearray] = queue.SimpleQueue()

    def put(self, buf: bytearray) -> None:
        """Give ``buf`` back (called on the writer thread)."""
        self._queue.put(buf)

    def get(self) -> bytearray:
        """The next buffer given back."""
        return self._queue.get()


class Pacer:
    """Pauses a bulk copy while the pipe fills (see ``_stream.copying.Coalescer``): fewer, larger
    reads, and skopeo keeps its core."""

    def __init__(self, pipe_size: int) -> None:
        self._coalescer = Coalescer(pipe_size)

    def after(self, moved: int, more: bool = True) -> None:
        """Called after each read of ``moved`` bytes; ``more``: another read follows."""
        pause = self._coalescer.pause_after(moved)
        if pause and more:
            time.sleep(pause)


# --- the pool -------------------------------------------------------------------------------


def settle(calls: Sequence[Callable[[], T]]) -> Tuple[List[T], List[BaseException]]:
    """Run every call at once (on helper threads: each mostly waits for its skopeo) and to
    its end; successes and failures apart."""
    if not calls:
        return [], []
    with concurrent.futures.ThreadPoolExecutor(len(calls), "proxy-pool") as ex:
        futures = [ex.submit(call) for call in calls]
    ok: List[T] = []
    failed: List[BaseException] = []
    for fut in futures:
        try:
            ok.append(fut.result())
        except BaseException as e:
            failed.append(e)
    return ok, failed


def state_lock() -> threading.Lock:
    """Guards the pool's bookkeeping between threads."""
    return threading.Lock()


def new_slot_lock() -> SlotLock:
    """Serialises the replacement of one member: one thread replaces it, others wait."""
    return threading.Lock()


# --- the reader ---------------------------------------------------------------------------


class ReaderBase(io.BufferedIOBase):
    """The binary file object's methods over the shared reader source: ``read(n)`` and
    ``readinto`` fill (fewer bytes only at the end), ``read1`` and ``readinto1`` read once."""

    def _mark_closed(self) -> None:
        io.BufferedIOBase.close(self)

    def _read_once(self, b: WriteableBuffer) -> int:
        raise NotImplementedError

    def _fill(self, b: WriteableBuffer) -> int:
        raise NotImplementedError

    def _read_chunk(self, size: int, fill: bool) -> bytes:
        raise NotImplementedError

    def readable(self) -> bool:
        return True

    def readinto1(self, b: WriteableBuffer) -> int:
        """Read once from the pipe into ``b``; 0 at the end (after verification)."""
        return self._read_once(b)

    def readinto(self, b: WriteableBuffer) -> int:
        """Fill ``b`` unless the blob ends first (file semantics: pipes return short reads).

        The read that reaches the end raises :class:`BlobVerificationError` for a wrong
        blob, or the :class:`RequestError` skopeo reported (docs/concepts.md says which,
        per release); ``ValueError`` once closed."""
        return self._fill(b)

    def read(self, size: Optional[int] = -1) -> bytes:
        """Read ``size`` bytes (fewer only at the end), or everything left when negative.

        Raises as :meth:`readinto` does."""
        if size is None or size < 0:
            parts: List[bytes] = []
            while part := self._read_chunk(READ_CHUNK, False):
                parts.append(part)
            return b"".join(parts)
        return self._read_chunk(size, True)

    def read1(self, size: int = -1) -> bytes:
        """Read at most ``size`` bytes with a single read of the pipe."""
        return self._read_chunk(READ_CHUNK if size < 0 else size, False)


def opening(reader: T) -> T:
    """The reader itself (the asyncio front end wraps it for ``await`` and ``async with``)."""
    return reader
