"""The blob reader of the asyncio front end, :class:`AsyncBlobReader`: one blob stream.

``_async/reader.py`` is the source of ``_sync/reader.py`` (scripts/unasync.py); what differs
between the two readers is in their ``_backend`` (how to wait for the pipe, where to hash,
whether a bulk copy pauses, and the read methods each kind of caller expects).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, List, Optional, Protocol, Union

from .._config import ProxyConfig
from .._core.actions import Op, T
from .._errors import ProxyError
from .._progress import Meter, ProgressCallback
from .._stream import copying as pipeline
from .._stream import ends as streaming
from .._transport import READ_CHUNK, BytesSink, Writable, readable_now, write_all
from . import _backend as backend

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

# Every memoryview of the caller's buffer is released before returning or raising: a view
# left alive (in a traceback, say) would stop the caller from resizing the buffer.


class StreamOwner(Protocol):
    """What a reader needs of the proxy it came from (which imports this module)."""

    _config: ProxyConfig
    _link: backend.Link

    async def _run(self, op: Op[T]) -> T: ...


class AsyncBlobReader(streaming.StreamInfo, backend.ReaderBase):
    """A blob streamed from the proxy.

    Reading to the end checks size and digest and raises
    :class:`~containers_image_proxy.BlobVerificationError` on a mismatch; closing before
    the end is allowed and cheap. Leaving its ``with`` block closes it: with verification
    on a normal exit, quietly while an error unwinds (so that error is not masked).
    Iterating gives chunks of 1 MiB (the last one shorter).
    """

    def __init__(self, proxy: StreamOwner, ends: streaming.StreamEnds) -> None:
        super().__init__()
        self._proxy = proxy
        self._ends = ends
        self._stream = ends.stream
        self._ended = False  # the data part is over and its end was handled
        self._failure = None
        self._nonblocking_fd = -1
        self._leftover = b""  # bytes of an interrupted read, returned by the next one
        self._hashing = backend.Hashing(self._stream)
        # a read that fills (``read(n)``, iteration) waits while the pipe fills, as copy_to
        self._pacer = backend.Pacer(ends.pipe_size)

    @property
    def bytes_read(self) -> int:
        """How many bytes were handed out so far (an interrupted read's are not, yet)."""
        return self._stream.received - len(self._leftover)

    def _data_fd(self) -> int:
        self._proxy._link.check_owner()  # a forked child reading would steal the parent's bytes
        fd = self._ends.data_fd
        if fd != self._nonblocking_fd:  # a new pipe after a resumed transfer
            os.set_blocking(fd, False)
            self._nonblocking_fd = fd
        return fd

    async def _wait_data(self, fd: int) -> None:
        proxy, ends = self._proxy, self._ends
        timeout = proxy._config.stall_timeout
        first = streaming.first_wait(self._stream.spec.kind, ends.probe is not None, timeout)
        if first is not None:
            if await backend.wait_readable(fd, first):
                return
            ends.probe = proxy._link.submit("FinishPipe", (ends.pipe_id,), exempt=True)
            if timeout is not None:
                timeout -= first
        if not await backend.wait_readable(fd, timeout):
            raise proxy._link.stalled(ends.context())

    async def _readv(self, chunk: memoryview) -> int:
        fd = self._data_fd()
        while True:
            try:
                return os.readv(fd, [chunk])
            except BlockingIOError:
                await self._wait_data(fd)

    async def _pull(self, view: memoryview, hash_here: bool = True) -> int:
        """Read once from the pipe into ``view``; 0 when the data part is over (size
        reached, EOF, or more bytes than the blob may have)."""
        n = self._stream.want(len(view))
        if not n:
            return 0
        with view[:n] as chunk:
            got = await self._readv(chunk)
            self._stream.count(got)
            if hash_here and got:
                with chunk[:got] as data:
                    try:
                        await self._hashing.take_view(data)
                    except backend.CANCELLED:
                        # the bytes have left the pipe and are hashed: the next read
                        # returns them, as if this one had never happened
                        self._leftover = bytes(data)
                        raise
        return 0 if self._stream.overflowed else got

    async def _read_once(self, b: WriteableBuffer) -> int:
        """Read once into a writable buffer; 0 at the end (after verification)."""
        if self.closed:
            raise ValueError("read from a closed AsyncBlobReader")
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
                await self._end()  # size reached, EOF, or too much data
        return self._verified_end()

    async def _fill(self, b: WriteableBuffer) -> int:
        """Fill ``b`` unless the blob ends first; 0 at the end (after verification). The
        bytes are hashed once the buffer is full (one piece to hash behind the caller,
        however many reads it took), and before the end is judged."""
        if self.closed:
            raise ValueError("read from a closed AsyncBlobReader")
        with memoryview(b) as mv, mv.cast("B") as view:
            filled = hashed = 0
            if self._leftover and view:
                filled = hashed = await self._read_once(view)  # already hashed
            try:
                while filled < len(view) and not self._ended:
                    with view[filled:] as rest:
                        got = await self._pull(rest, hash_here=False)
                    if got:
                        filled += got
                        await self._pacer.after(got, filled < len(view))
                        continue
                    start, hashed = hashed, filled  # (a cancelled hash still finishes)
                    with view[start:filled] as data:
                        await self._hashing.take_view(data)
                    await self._end()  # size reached, EOF, or too much data
                if hashed < filled:
                    start, hashed = hashed, filled
                    with view[start:filled] as data:
                        await self._hashing.take_view(data)
            except backend.CANCELLED:
                # what left the pipe is hashed and kept for the next read (none returned)
                with view[hashed:filled] as data:
                    self._stream.hash(data)
                self._leftover = bytes(view[:filled])
                raise
            if filled or not view:
                return filled
            return self._verified_end()

    async def _pull_bytes(self, size: int) -> bytes:
        """Like :meth:`_pull`, into a new ``bytes`` (no copy; not hashed); b"": over."""
        n = self._stream.want(min(size, READ_CHUNK))
        if not n:
            return b""
        fd = self._data_fd()
        while True:
            try:
                data = os.read(fd, n)
                break
            except BlockingIOError:
                await self._wait_data(fd)
        self._stream.count(len(data))
        return b"" if self._stream.overflowed else data

    async def _read_chunk(self, size: int, fill: bool) -> bytes:
        """Up to ``size`` bytes as a new ``bytes`` (``fill``: fewer only at the end); b""
        at the end, after verification. The result cannot change, so its hash may run
        behind the caller (``backend.Hashing``); the end is judged once all is hashed."""
        if self.closed:
            raise ValueError("read from a closed AsyncBlobReader")
        if size <= 0:
            return b""
        if self._leftover:
            data, self._leftover = self._leftover[:size], self._leftover[size:]
            return data
        parts: List[bytes] = []
        have = 0
        try:
            while have < size and not self._ended:
                data = await self._pull_bytes(size - have)
                if data:
                    parts.append(data)  # first: a hash cancelled below still finishes
                    await self._hashing.take_bytes(data)
                    have += len(data)
                    if not fill:
                        break
                    await self._pacer.after(len(data), have < size)
                    continue
                await self._end()  # size reached, EOF, or too much data
        except backend.CANCELLED:
            # the bytes have left the pipe and are hashed: the next read returns them
            self._leftover = b"".join(parts)
            raise
        if not parts:
            self._verified_end()
            return b""
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def __aiter__(self) -> AsyncBlobReader:
        return self

    async def __anext__(self) -> bytes:
        """The next 1 MiB (fewer bytes only at the end)."""
        data = await self._read_chunk(READ_CHUNK, True)
        if not data:
            raise StopAsyncIteration
        return data

    async def copy_to(
        self,
        dest: Union[int, Writable, BytesSink],
        *,
        progress: Optional[ProgressCallback] = None,
    ) -> int:
        """Copy the rest of the blob to ``dest``; returns the bytes copied, after
        verification.

        ``dest`` is a descriptor, a file with ``fileno()`` (flushed first), or any object
        with ``write()`` (a ``BytesIO``, a socket file, a hashing wrapper), which is given
        ``bytes`` (and awaited by the asyncio reader when it returns an awaitable).
        ``progress`` receives :class:`~containers_image_proxy.TransferProgress` reports
        (``done`` counts from the blob's start) at most every 0.1 s, the last one after
        verification with ``done == total``.

        Where nothing needs to see the bytes (a GetBlob stream, verified by skopeo, or an
        unverified GetRawBlob) they move from the pipe to a descriptor with ``os.splice``,
        never entering Python (a splice to a regular file blocks briefly, as its writes
        do). A stream hashed here is read here while two helper threads hash and write it
        (small ones: one reused buffer, hashed on the way).

        Raises :class:`~containers_image_proxy.BlobVerificationError` on a size or digest
        mismatch, the destination's own error (``OSError``), ``ValueError`` when closed,
        and the errors of a read.
        """
        if self.closed:
            raise ValueError("read from a closed AsyncBlobReader")
        out = pipeline.descriptor_of(dest)
        start = self.bytes_read
        meter = Meter(progress, str(self.digest), self.size)
        meter.done = start
        meter.start()
        if out is None:
            while data := await self._read_chunk(READ_CHUNK, True):
                await backend.write_plain(dest, data)  # type: ignore[arg-type]
                meter.advance(len(data))
        else:
            await self._copy_to_fd(out, meter)
        meter.finish()
        return self._stream.received - start

    async def _copy_to_fd(self, out: int, meter: Meter) -> None:
        if self._leftover:
            write_all(out, memoryview(self._leftover))
            meter.advance(len(self._leftover))
            self._leftover = b""
        if self._stream.hashing or not hasattr(os, "splice"):
            size = self._stream.size
            buffers = pipeline.buffer_count(None if size is None else size - self.bytes_read)
            if buffers and self._stream.hashing:
                await self._hashing.drain()  # the pipeline hashes on: in order
                await self._copy_with_helpers(out, buffers, meter)
            else:
                buf = bytearray(READ_CHUNK)
                with memoryview(buf) as view:
                    while got := await self._read_once(buf):
                        with view[:got] as data:
                            write_all(out, data)
                        meter.advance(got)
            return
        pacer = backend.Pacer(self._ends.pipe_size)
        while not self._ended:
            n = self._stream.want(READ_CHUNK)
            if n:
                moved = await self._splice_once(out, n)
                if moved:
                    self._stream.advance(moved)
                    if not self._stream.overflowed:
                        meter.advance(moved)
                        await pacer.after(moved)
                        continue
            await self._end()
        self._verified_end()

    async def _splice_once(self, out: int, count: int) -> int:
        fd = self._data_fd()
        while True:
            try:
                return os.splice(fd, out, count, flags=os.SPLICE_F_NONBLOCK)
            except BlockingIOError:
                if readable_now(fd):  # the destination is a full pipe: wait for room there
                    await backend.wait_writable(out)
                else:
                    await self._wait_data(fd)

    async def _copy_with_helpers(self, out: int, buffers: int, meter: Meter) -> None:
        """Read here while helper threads hash and write (see _stream.copying)."""
        returned = backend.ReturnedBuffers()
        stages = pipeline.HashWritePipeline(out, self._stream.hash, returned.put, buffers)
        idle = list(stages.buffers)
        pacer = backend.Pacer(self._ends.pipe_size)

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
                        await pacer.after(got, filled < len(view))
                if filled:
                    stages.submit(buf, filled)
                    meter.advance(filled)
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

    async def _end(self) -> None:
        """The data part is over: finish, verify, or resume an interrupted transfer."""
        try:
            await self._hashing.drain()  # judged on every byte
            op = streaming.end_stream(self._ends, self._proxy._config.retries)
            resumed = await self._proxy._run(op)
        except BaseException as e:
            self._ended = True
            self._failure = e
            raise
        if not resumed:
            self._ended = True

    async def close(self) -> None:
        """Close the stream. If every byte was read, this verifies and may raise
        :class:`BlobVerificationError` (or the :class:`RequestError` skopeo reported at the
        end); closed early, it never does."""
        if self.closed:
            return
        try:
            while not self._ended and self._stream.complete:
                await self._end()
        finally:
            await self.close_quietly()

    async def close_quietly(self) -> None:
        """Abandon the stream: close our ends; the proxy sees EPIPE and stays usable. Never
        raises (nothing is verified: use it while another error unwinds)."""
        if self.closed:
            return
        self._mark_closed()
        self._hashing.close()
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
        # while an error unwinds, close without verifying: its failure would mask the error
        if exc_type is None:
            await self.close()
        else:
            await self.close_quietly()

    def __del__(self) -> None:
        # no request from a finalizer: only make sure the descriptors do not leak
        ends = getattr(self, "_ends", None)
        if ends is not None:
            ends.close()
        hashing = getattr(self, "_hashing", None)
        if hashing is not None:
            hashing.close(wait=False)
