"""The asyncio blob reader: ``await read(n)`` and ``async for chunk`` over one blob stream."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, AsyncIterator, List, Optional, Union

from . import _streaming as streaming
from ._errors import ProxyError
from ._transport import READ_CHUNK, write_all

if TYPE_CHECKING:
    from ._async import AsyncImageProxy


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

    async def readinto(self, b: Any) -> int:
        """Read once into a writable buffer; 0 at the end (after verification)."""
        if self._closed:
            raise ValueError("read from a closed AsyncBlobReader")
        # views of the caller's buffer are released before returning or raising
        with memoryview(b) as mv, mv.cast("B") as view:
            while not self._ended:
                n = self._stream.want(len(view))
                if n:
                    with view[:n] as chunk:
                        got = await self._read_once(chunk)
                        if got:
                            with chunk[:got] as data:
                                self._stream.feed(data)
                            if not self._stream.overflowed:
                                return got
                await self._end()
        if self._failure is not None:
            raise self._failure
        self._stream.check()
        return 0

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
        to see the bytes, as :meth:`BlobReader.copy_to`. Writes to ``dest`` block the loop
        briefly, as writes to a regular file do.
        """
        out = dest if isinstance(dest, int) else dest.fileno()
        if not isinstance(dest, int):
            dest.flush()
        start = self._stream.received
        if self._stream.hashing or not hasattr(os, "splice"):
            buf = bytearray(READ_CHUNK)
            with memoryview(buf) as view:
                while got := await self.readinto(buf):
                    with view[:got] as data:
                        write_all(out, data)
            return self._stream.received - start
        if self._closed:
            raise ValueError("read from a closed AsyncBlobReader")
        while not self._ended:
            n = self._stream.want(READ_CHUNK)
            if n:
                moved = await self._splice_once(out, n)
                if moved:
                    self._stream.advance(moved)
                    if not self._stream.overflowed:
                        continue
            await self._end()
        if self._failure is not None:
            raise self._failure
        self._stream.check()
        return self._stream.received - start

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
        chunk = await self.read(READ_CHUNK)
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
