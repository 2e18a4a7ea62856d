"""The asyncio blob reader: ``await read(n)`` and ``async for chunk`` over one blob stream."""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import threading
from typing import TYPE_CHECKING, Any, AsyncIterator, List, Optional, Union

from . import _pipeline as pipeline
from . import _streaming as streaming
from ._blobstream import BlobStream
from ._errors import ProxyError
from ._transport import READ_CHUNK, write_all

if TYPE_CHECKING:
    from ._async import AsyncImageProxy


# Hashing a large chunk on the event loop would stall every other task for its duration
# (about 0.7 ms per MiB here), and would keep concurrent streams hashing on one core.
HASH_OFF_LOOP_SIZE = 256 * 1024
_hash_workers: Optional[concurrent.futures.ThreadPoolExecutor] = None
_hash_workers_lock = threading.Lock()


def _hash_executor() -> concurrent.futures.ThreadPoolExecutor:
    global _hash_workers
    with _hash_workers_lock:
        if _hash_workers is None:
            _hash_workers = concurrent.futures.ThreadPoolExecutor(
                max_workers=os.cpu_count() or 2, thread_name_prefix="cip-hash"
            )
        return _hash_workers


async def _hash_off_loop(stream: BlobStream, data: memoryview) -> None:
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


class AsyncBlobReader(streaming.StreamInfo):
    """A blob streamed from the proxy, for asyncio: ``await read(n)``, ``async for chunk``.

    Reaching the end verifies size and digest; closing early is allowed and cheap.
    """

    def __init__(self, proxy: AsyncImageProxy, ends: streaming.StreamEnds) -> None:
        self._proxy = proxy
        self._ends = ends
        self._stream = ends.stream
        self._ended = False
        self._closed = False
        self._failure: Optional[BaseException] = None
        self._nonblocking_fd = -1
        self._leftover = b""  # bytes of a cancelled read, returned by the next one

    @property
    def bytes_read(self) -> int:
        """How many bytes were handed out so far (a cancelled read's are not, yet)."""
        return self._stream.received - len(self._leftover)

    @property
    def closed(self) -> bool:
        """Whether the reader is closed."""
        return self._closed

    async def _wait_data(self, fd: int) -> None:
        proxy, ends = self._proxy, self._ends
        timeout = proxy._config.stall_timeout
        first = streaming.first_wait(self._stream.spec.kind, ends.probe is not None, timeout)
        if first is not None:
            if await proxy._readable(fd, ends.context(), first):
                return
            ends.probe = proxy._submit("FinishPipe", (ends.pipe_id,), exempt=True)
            if timeout is not None:
                timeout -= first
        if not await proxy._readable(fd, ends.context(), timeout):
            raise proxy._stalled(ends.context())

    async def _pull(self, view: memoryview, hash_here: bool = True) -> int:
        """Read once from the pipe into ``view``; 0 when the data part is over (size
        reached, EOF, or more bytes than the blob may have)."""
        n = self._stream.want(len(view))
        if not n:
            return 0
        with view[:n] as chunk:
            got = await self._read_once(chunk)
            self._stream.count(got)
            if hash_here and got:
                with chunk[:got] as data:
                    try:
                        await _hash_off_loop(self._stream, data)
                    except asyncio.CancelledError:
                        # the bytes have left the pipe and are hashed: the next read
                        # returns them, as if this one had never happened
                        self._leftover = bytes(data)
                        raise
        return 0 if self._stream.overflowed else got

    async def readinto(self, b: Any) -> int:
        """Read once into a writable buffer; 0 at the end (after verification)."""
        if self._closed:
            raise ValueError("read from a closed AsyncBlobReader")
        # views of the caller's buffer are released before returning or raising
        with memoryview(b) as mv, mv.cast("B") as view:
            if not view:
                return 0
            if self._leftover:
                got = min(len(view), len(self._leftover))
                view[:got] = self._leftover[:got]
                self._leftover = self._leftover[got:]
                return got
            while not self._ended:
                got = await self._pull(view)
                if got:
                    return got
                await self._end()
        return self._verified_end()

    async def _read_once(self, chunk: memoryview) -> int:
        fd = self._ends.data_fd
        if fd != self._nonblocking_fd:  # a new pipe after a resumed transfer
            os.set_blocking(fd, False)
            self._nonblocking_fd = fd
        while True:
            try:
                return os.readv(fd, [chunk])
            except BlockingIOError:
                await self._wait_data(fd)

    async def copy_to(self, dest: Union[int, Any]) -> int:
        """Copy the rest of the blob to ``dest`` (an fd or a file with ``fileno()``); returns
        the bytes copied, after verification. Zero-copy (``os.splice``) where nothing needs
        to see the bytes, as :meth:`BlobReader.copy_to`; a stream hashed here is hashed
        and written by helper threads while the loop reads. Splicing to ``dest`` blocks the
        loop briefly, as writes to a regular file do.
        """
        out = dest if isinstance(dest, int) else dest.fileno()
        if not isinstance(dest, int):
            dest.flush()
        if self._closed:
            raise ValueError("read from a closed AsyncBlobReader")
        start = self.bytes_read
        if self._leftover:
            write_all(out, memoryview(self._leftover))
            self._leftover = b""
        if self._stream.hashing or not hasattr(os, "splice"):
            size = self._stream.size
            buffers = pipeline.buffer_count(None if size is None else size - start)
            if buffers and self._stream.hashing:
                await self._copy_pipelined(out, buffers)
            else:
                buf = bytearray(READ_CHUNK)
                with memoryview(buf) as view:
                    while got := await self.readinto(buf):
                        with view[:got] as data:
                            write_all(out, data)
            return self._stream.received - start
        while not self._ended:
            n = self._stream.want(READ_CHUNK)
            if n:
                moved = await self._splice_once(out, n)
                if moved:
                    self._stream.advance(moved)
                    if not self._stream.overflowed:
                        continue
            await self._end()
        self._verified_end()
        return self._stream.received - start

    async def _copy_pipelined(self, out: int, buffers: int) -> None:
        """Read on the loop while helper threads hash and write (see _pipeline).

        No read coalescing here, unlike the sync reader (streaming.Coalescer): the loop's
        timers wait in whole milliseconds (epoll), long enough for a 1 MiB pipe to fill
        and stall skopeo.
        """
        loop = asyncio.get_running_loop()
        returned: asyncio.Queue[bytearray] = asyncio.Queue()

        def give_back(buf: bytearray) -> None:  # on the writer thread
            try:
                loop.call_soon_threadsafe(returned.put_nowait, buf)
            except RuntimeError:  # the loop is closed: nobody waits for it any more
                pass

        stages = pipeline.HashWritePipeline(out, self._stream.hash, give_back, buffers)
        idle = list(stages.buffers)

        async def take_back(until: int) -> None:
            while len(idle) < until:
                idle.append(await returned.get())
            if stages.error is not None:
                raise stages.error

        try:
            while not self._ended:
                await take_back(1)
                buf = idle.pop()
                filled = 0
                with memoryview(buf) as view:
                    while filled < len(view):
                        with view[filled:] as rest:
                            got = await self._pull(rest, hash_here=False)
                        if not got:
                            break
                        filled += got
                if filled:
                    stages.submit(buf, filled)
                else:
                    idle.append(buf)
                if filled < len(buf):  # the data part is over: judge it on every byte
                    await take_back(len(stages.buffers))
                    await self._end()
        finally:
            # joins at once in the normal case (every buffer is back); after an error or
            # a cancellation, waits for the few buffers still being hashed or written
            stages.close()
        self._verified_end()

    async def _splice_once(self, out: int, count: int) -> int:
        fd = self._ends.data_fd
        if fd != self._nonblocking_fd:
            os.set_blocking(fd, False)
            self._nonblocking_fd = fd
        while True:
            try:
                return os.splice(fd, out, count, flags=os.SPLICE_F_NONBLOCK)
            except BlockingIOError:
                await self._wait_data(fd)

    async def read(self, size: int = -1) -> bytes:
        """Read up to ``size`` bytes (all that is left when negative); b"" at the end."""
        if size < 0:
            parts: List[bytes] = []
            while True:
                part = await self.read(READ_CHUNK)
                if not part:
                    return b"".join(parts)
                parts.append(part)
        buf = bytearray(size)
        n = await self.readinto(buf)
        del buf[n:]
        return bytes(buf)

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self

    async def __anext__(self) -> bytes:
        """The next READ_CHUNK bytes (fewer only at the end), as the sync reader gives."""
        buf = bytearray(READ_CHUNK)
        filled = 0
        with memoryview(buf) as view:
            while filled < len(view):
                with view[filled:] as rest:
                    got = await self.readinto(rest)
                if not got:
                    break
                filled += got
        del buf[filled:]
        chunk = bytes(buf)
        if not chunk:
            raise StopAsyncIteration
        return chunk

    async def _end(self) -> None:
        try:
            op = streaming.end_stream(self._ends, self._proxy._config.retries)
            resumed = await self._proxy._run(op)
        except BaseException as e:
            self._ended = True
            self._failure = e
            raise
        if not resumed:
            self._ended = True

    async def close(self) -> None:
        """Close the stream. If every byte was read, this verifies and may raise."""
        if self._closed:
            return
        try:
            while not self._ended and self._stream.complete:
                await self._end()
        finally:
            await self.close_quietly()

    aclose = close

    async def close_quietly(self) -> None:
        """Abandon the stream: close our ends; the proxy sees EPIPE and stays usable."""
        if self._closed:
            return
        self._closed = True
        if not self._ended:
            self._ended = True
            try:
                await self._proxy._run(streaming.abandon_stream(self._ends))
            except ProxyError:
                pass
        self._ends.close()

    async def __aenter__(self) -> AsyncBlobReader:
        return self

    async def __aexit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is None:
            await self.close()
        else:
            await self.close_quietly()

    def __del__(self) -> None:
        ends = getattr(self, "_ends", None)
        if ends is not None:
            ends.close()
