"""What the asyncio front end does differently from the sync one, written by hand.

The rest of ``_async`` is the source of the generated ``_sync`` package (scripts/unasync.py);
it calls these names, and ``_sync/_backend.py`` offers the same ones for threads:

- :class:`Link`: one connection to skopeo. Requests are pipelined: each is sent at once and
  its ticket queued (``_core.connection.Connection``); a reader callback on the socket resolves
  the tickets first in, first out. A task cancelled while waiting leaves its ticket queued,
  marked abandoned, so the reply stream never shifts; its reply is released when it comes.
- :func:`wait_readable`, :func:`wait_writable`: a loop reader (writer) on the descriptor,
  not ``poll``, which would block; :func:`wait_exit` and :func:`sleep` do not block either.
- :func:`hash_bytes` and :data:`CANCELLED`: large chunks are hashed on worker threads, not on
  the loop; a read cancelled while its bytes are hashed keeps them for the next read.
- :class:`Hashing`: the reads hash as they go (large pieces on worker threads); the sync
  reader hashes behind them instead. :func:`write_plain` awaits an async ``write``.
- :class:`ReturnedBuffers`: the copy's writer thread hands buffers back to the loop.
- :class:`Pacer`: no coalescing pause in bulk copies (the loop's timers are too coarse).
- :func:`settle`, :func:`state_lock`, :func:`new_slot_lock`, :func:`start_in_init`: the pool
  runs members concurrently with ``gather``; the loop serialises its bookkeeping.
- :class:`ReaderBase`: the asyncio reader's own read methods (``read(n)`` is one read).
- :func:`opening` (``_opening.py``): what ``get_blob`` returns, awaitable and an async context
  manager.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import inspect
import os
import threading
from typing import (
    TYPE_CHECKING,
    Awaitable,
    Callable,
    ContextManager,
    Deque,
    List,
    Optional,
    Sequence,
    Tuple,
    Type,
    TypeVar,
)

from .._config import ProxyConfig
from .._core.connection import Ticket, release
from .._core.protocol import Arg, Reply, encode_request
from .._errors import ProtocolError, ProxyClosedError, ProxyError
from .._link import LinkBase
from .._process import SkopeoProcess
from .._stream.state import BlobStream
from .._transport import READ_CHUNK, BytesSink, peer_closed, receive_reply
from ._opening import Opening as Opening  # what get_blob returns, for the shared source
from ._opening import opening as opening

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

T = TypeVar("T")

SlotLock = asyncio.Lock


def start_in_init(start: Callable[[], Awaitable[None]]) -> None:
    """Nothing: an asyncio proxy or pool starts in ``start()`` or ``async with`` (an
    ``__init__`` cannot await)."""


def _wake(ticket: Ticket) -> None:
    """Tell the task waiting on ``ticket`` (if any) that it is resolved."""
    fut = ticket.waiter
    if fut is not None and not fut.done():
        fut.set_result(None)


class Link(LinkBase):
    """The connection to one skopeo process, driven by the event loop."""

    def __init__(self, config: ProxyConfig) -> None:
        super().__init__(config)
        self._outbox: Deque[bytes] = collections.deque()

    async def open(self, owner: object) -> None:
        """Spawn skopeo (on a worker thread); it is killed and reaped if ``owner`` is
        dropped without being closed."""
        self._check_not_started()
        self._loop = asyncio.get_running_loop()
        process = await self._loop.run_in_executor(None, SkopeoProcess, self.config)
        self._adopt(process, owner)
        process.sock.setblocking(False)
        self._loop.add_reader(process.sock.fileno(), self._on_readable)

    # --- lifetime -------------------------------------------------------------------------

    def shut_down(self) -> Optional[Tuple[SkopeoProcess, bool]]:
        """Send Shutdown and fail what is outstanding; the process to reap and whether the
        connection had already failed (None: nothing to reap)."""
        process = self._reapable()
        if process is None:
            self.closed = True
            return None
        already_failed = self._conn.failure is not None
        self.closed = True
        self._stop_watching()
        if not already_failed:
            try:
                process.sock.setblocking(True)
                process.sock.sendmsg([encode_request("Shutdown", ())])
            except OSError:
                pass
            self._fail(ProxyClosedError("the proxy was closed"))
        return process, already_failed

    def teardown(self, failure: Optional[ProxyError]) -> None:
        """Kill skopeo; outstanding and later requests fail with ``failure``."""
        self.closed = True
        self._stop_watching()
        self._fail(failure or ProxyClosedError("the proxy was torn down"))
        self.release()

    def _stop_watching(self) -> None:
        if self.process is not None and self.process.sock.fileno() >= 0:
            self._loop.remove_reader(self.process.sock.fileno())
            self._loop.remove_writer(self.process.sock.fileno())

    def _fail(self, err: ProxyError) -> None:
        for ticket in self._conn.fail(err):
            _wake(ticket)

    # --- requests and replies -------------------------------------------------------------

    def submit(
        self, method: str, args: Tuple[Arg, ...], exempt: bool = False, abandoned: bool = False
    ) -> Ticket:
        """Send a request now (or as soon as the socket takes it); its ticket."""
        self.check_usable()
        if self._conn.failure is not None:
            raise self._conn.failure.with_traceback(None)
        process = self.process
        if self.closed or process is None:
            raise ProxyClosedError("the proxy is closed")
        data, ticket = self._conn.request(method, args, exempt=exempt)
        ticket.abandoned = abandoned
        if not abandoned:
            ticket.waiter = self._loop.create_future()
        if not self._outbox:
            try:
                process.sock.send(data)  # SEQPACKET: all of it, or EAGAIN
                return ticket
            except BlockingIOError:
                self._loop.add_writer(process.sock.fileno(), self._on_writable)
            except OSError:
                return ticket  # the reader callback sees EOF and reports the exit
        self._outbox.append(data)
        return ticket

    async def wait(self, ticket: Ticket) -> Reply:
        """The ticket's reply (or its error, raised)."""
        fut: Optional[asyncio.Future[None]] = ticket.waiter
        if not ticket.done:
            assert fut is not None, "waiting on an abandoned ticket"
            timeout = None if ticket.exempt else self.config.stall_timeout
            try:
                if timeout is None:
                    await asyncio.shield(fut)
                else:
                    done, _ = await asyncio.wait({fut}, timeout=timeout)
                    if not done:
                        raise self.stalled(f"{ticket.method} request")
            except asyncio.CancelledError:
                if ticket.done and ticket.reply is not None:
                    # the reply came as we were cancelled: nobody will take it, release it
                    for method, args in release(ticket.method, ticket.reply):
                        self.submit(method, args, abandoned=True)
                else:
                    ticket.abandoned = True  # its reply, when it comes, is released
                raise
        return ticket.result()

    def _on_writable(self) -> None:
        assert self.process is not None
        while self._outbox:
            try:
                self.process.sock.send(self._outbox[0])
            except BlockingIOError:
                return
            except OSError:
                self._outbox.clear()
                break
            self._outbox.popleft()
        self._loop.remove_writer(self.process.sock.fileno())

    def _on_readable(self) -> None:
        process = self.process
        assert process is not None
        while self._conn.failure is None:
            try:
                data, fds, truncated = receive_reply(process.sock, self._buf)
            except BlockingIOError:
                return
            except OSError:
                data, fds, truncated = b"", [], False
            if not data and not fds:
                head = self._conn.pending[0].method if self._conn.pending else "idle"
                if peer_closed(process.sock):
                    self._on_connection_lost(head)
                else:
                    self.teardown(ProtocolError(f"{head}: empty reply"))
                return
            waiting = list(self._conn.pending)
            try:
                ticket, follow_ups = self._conn.receive(data, fds, truncated)
            except ProtocolError as e:
                for waiter in waiting:  # receive() failed them all: wake every one
                    _wake(waiter)
                self.teardown(e)
                return
            _wake(ticket)
            for method, args in follow_ups:
                self.submit(method, args, abandoned=True)

    def _on_connection_lost(self, context: str) -> None:
        process = self.process
        assert process is not None
        self._stop_watching()

        async def report() -> None:
            # the exit status may take a moment to be there
            err = await self._loop.run_in_executor(None, process.exited_error, context)
            self.teardown(err)

        self._loop.create_task(report())


async def wait_exit(process: SkopeoProcess, timeout: float) -> Optional[int]:
    """Reap skopeo if it exits within ``timeout`` seconds (waiting on a worker thread)."""
    return await asyncio.get_running_loop().run_in_executor(None, process.wait, timeout)


async def wait_readable(fd: int, timeout: Optional[float]) -> bool:
    """Whether ``fd`` (non-blocking) becomes readable within ``timeout`` seconds (None: no
    limit), waiting on a loop reader."""
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[None] = loop.create_future()

    def ready() -> None:
        if not fut.done():
            fut.set_result(None)

    loop.add_reader(fd, ready)
    try:
        if timeout is None:
            await fut
            return True
        done, _ = await asyncio.wait({fut}, timeout=timeout)
        return bool(done)
    finally:
        loop.remove_reader(fd)


async def wait_writable(fd: int) -> None:
    """Wait until ``fd`` (a full pipe the caller gave) takes data again, on a loop writer
    (at once for a regular file)."""
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[None] = loop.create_future()

    def ready() -> None:
        if not fut.done():
            fut.set_result(None)

    try:
        loop.add_writer(fd, ready)
    except PermissionError:
        # epoll refuses regular files, which are always writable: a splice into one that
        # met an empty pipe (refilled since) is simply tried again
        return
    try:
        await fut
    finally:
        loop.remove_writer(fd)


async def sleep(seconds: float) -> None:
    """Wait before a retry."""
    await asyncio.sleep(seconds)


# --- hashing off the loop -----------------------------------------------------------------

# Hashing a large chunk on the event loop would stall every other task for its duration
# (about 0.7 ms per MiB here), and would keep concurrent streams hashing on one core.
HASH_OFF_LOOP_SIZE = 256 * 1024
_hash_workers: Optional[concurrent.futures.ThreadPoolExecutor] = None
_hash_workers_lock = threading.Lock()

#: What interrupts a read while its bytes are hashed: their reader keeps them for the next.
CANCELLED: Tuple[Type[BaseException], ...] = (asyncio.CancelledError,)


def _hash_executor() -> concurrent.futures.ThreadPoolExecutor:
    global _hash_workers
    with _hash_workers_lock:
        if _hash_workers is None:
            _hash_workers = concurrent.futures.ThreadPoolExecutor(
                max_workers=os.cpu_count() or 2, thread_name_prefix="cip-hash"
            )
        return _hash_workers


async def hash_bytes(stream: BlobStream, data: memoryview) -> None:
    """``stream.hash(data)``, on a worker thread when ``data`` is large."""
    if not stream.hashing:
        return
    if len(data) < HASH_OFF_LOOP_SIZE:
        stream.hash(data)
        return
    work = _hash_executor().submit(stream.hash, data)
    try:
        await asyncio.shield(asyncio.wrap_future(work))
    except asyncio.CancelledError:
        # the worker still holds ``data`` (a view of the caller's buffer) and the stream's
        # hash must take these bytes before any other: let it finish
        work.result()
        raise


class Hashing:
    """Where the reader's bytes are hashed: here, as they are read (large pieces on a worker
    thread, awaited, so a cancelled read can keep its bytes); nothing is left to drain."""

    def __init__(self, stream: BlobStream) -> None:
        self._stream = stream

    async def take_view(self, data: memoryview) -> None:
        """Hash ``data`` before returning."""
        await hash_bytes(self._stream, data)

    async def take_bytes(self, data: bytes) -> None:
        """Hash ``data`` before returning."""
        with memoryview(data) as view:
            await hash_bytes(self._stream, view)

    async def drain(self) -> None:
        """Nothing: every byte taken is hashed already."""

    def close(self, wait: bool = True) -> None:
        """Nothing to stop."""


async def write_plain(dest: BytesSink, data: bytes) -> None:
    """``dest.write(data)`` for a destination without a descriptor; a ``write`` that
    returns an awaitable (an async file) is awaited. A short count writes the rest."""
    while data:
        written = dest.write(data)
        if inspect.isawaitable(written):
            written = await written
        if not isinstance(written, int) or isinstance(written, bool) or written >= len(data):
            return
        data = data[max(written, 0) :]


class ReturnedBuffers:
    """The buffers ``copy_to``'s writer thread gives back, awaited on the loop."""

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue[bytearray] = asyncio.Queue()

    def put(self, buf: bytearray) -> None:
        """Give ``buf`` back (called on the writer thread)."""
        try:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, buf)
        except RuntimeError:  # the loop is closed: nobody waits for it any more
            pass

    async def get(self) -> bytearray:
        """The next buffer given back."""
        return await self._queue.get()


class Pacer:
    """No pause between the reads of a bulk copy here, unlike the sync front end
    (``_stream.copying.Coalescer``): the loop's timers wait in whole milliseconds (epoll), long
    enough for a 1 MiB pipe to fill and stall skopeo."""

    def __init__(self, pipe_size: int) -> None:
        pass

    async def after(self, moved: int, more: bool = True) -> None:
        """Called after each read of ``moved`` bytes."""


# --- the pool -------------------------------------------------------------------------------


async def settle(
    calls: Sequence[Callable[[], Awaitable[T]]],
) -> Tuple[List[T], List[BaseException]]:
    """Run every call at once and to its end; successes and failures apart (none is
    abandoned)."""
    results = await asyncio.gather(*(call() for call in calls), return_exceptions=True)
    ok: List[T] = []
    failed: List[BaseException] = []
    for r in results:
        if isinstance(r, BaseException):
            failed.append(r)
        else:
            ok.append(r)
    return ok, failed


def state_lock() -> ContextManager[object]:
    """The pool's bookkeeping needs no lock on one event loop (no await inside it)."""
    return contextlib.nullcontext()


def new_slot_lock() -> SlotLock:
    """Serialises the replacement of one member (created in the loop: before Python 3.10
    an asyncio.Lock binds to the loop current at its creation)."""
    return asyncio.Lock()


# --- the reader ---------------------------------------------------------------------------


class ReaderBase:
    """The asyncio reader's own methods: ``read(n)`` and ``readinto(b)`` are one read of the
    pipe (as a socket's), and ``aclose``; the rest is the shared source."""

    def __init__(self) -> None:
        self._closed = False

    @property
    def closed(self) -> bool:
        """Whether the reader is closed."""
        return self._closed

    def _mark_closed(self) -> None:
        self._closed = True

    async def _read_once(self, b: WriteableBuffer) -> int:
        raise NotImplementedError

    async def _read_chunk(self, size: int, fill: bool) -> bytes:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError

    async def readinto(self, b: WriteableBuffer) -> int:
        """Read once into a writable buffer; 0 at the end (after verification).

        The read that reaches the end raises :class:`BlobVerificationError` for a wrong
        blob, or the :class:`RequestError` skopeo reported (docs/concepts.md says which,
        per release); ``ValueError`` once closed."""
        return await self._read_once(b)

    async def read(self, size: int = -1) -> bytes:
        """Read up to ``size`` bytes (all that is left when negative); b"" at the end.

        Raises as :meth:`readinto` does."""
        if size < 0:
            parts: List[bytes] = []
            while part := await self._read_chunk(READ_CHUNK, False):
                parts.append(part)
            return b"".join(parts)
        return await self._read_chunk(size, False)

    async def aclose(self) -> None:
        """:meth:`close`."""
        await self.close()
