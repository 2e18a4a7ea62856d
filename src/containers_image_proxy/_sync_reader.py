"""The synchronous blob reader: a binary file object over one blob stream."""

from __future__ import annotations

import io
import os
import queue
import select
import time
from typing import TYPE_CHECKING, Any, List, Optional, Union

from . import _pipeline as pipeline
from . import _streaming as streaming
from ._errors import ProxyError
from ._transport import READ_CHUNK, write_all

if TYPE_CHECKING:
    from ._sync import ImageProxy


def wait_readable(fd: int, timeout: Optional[float]) -> bool:
    """Whether ``fd`` becomes readable within ``timeout`` seconds (None: do not wait here)."""
    if timeout is None:
        return True  # the read itself blocks
    poller = select.poll()
    poller.register(fd, select.POLLIN | select.POLLHUP | select.POLLERR)
    return bool(poller.poll(max(0.0, timeout) * 1000))


class BlobReader(streaming.StreamInfo, io.BufferedIOBase):
    """A blob streamed from the proxy: a binary file object.

    Reading to the end checks size and digest and raises
    :class:`~containers_image_proxy.BlobVerificationError` on a mismatch; ``close()``
    before the end is allowed and cheap. Works with ``shutil.copyfileobj`` and
    ``tarfile.open(fileobj=reader, mode="r|*")``.
    """

    def __init__(self, proxy: ImageProxy, ends: streaming.StreamEnds) -> None:
        super().__init__()
        self._proxy = proxy
        self._ends = ends
        self._stream = ends.stream
        self._ended = False  # the data part is over and its end was handled
        self._failure: Optional[BaseException] = None

    def readable(self) -> bool:
        return True

    def _wait_data(self, fd: int) -> None:
        timeout = self._proxy._config.stall_timeout
        ends = self._ends
        first = streaming.first_wait(self._stream.spec.kind, ends.probe is not None, timeout)
        if first is not None:
            if wait_readable(fd, first):
                return
            ends.probe = self._proxy._submit("FinishPipe", (ends.pipe_id,), exempt=True)
            if timeout is not None:
                timeout -= first
        if not wait_readable(fd, timeout):
            raise self._proxy._stalled(ends.context())

    # Every memoryview of the caller's buffer is released before returning or raising: a
    # view left alive (in a traceback, say) would stop the caller from resizing the buffer.

    def _pull(self, view: memoryview, hash_here: bool = True) -> int:
        """Read once from the pipe into ``view``; 0 when the data part is over (size
        reached, EOF, or more bytes than the blob may have)."""
        n = self._stream.want(len(view))
        if not n:
            return 0
        with view[:n] as chunk:
            fd = self._ends.data_fd
            self._wait_data(fd)
            got = os.readv(fd, [chunk])
            if hash_here:
                with chunk[:got] as data:
                    self._stream.feed(data)
            else:
                self._stream.count(got)
        return 0 if self._stream.overflowed else got

    def readinto1(self, b: Any) -> int:
        """Read once from the pipe into ``b``; 0 at the end (after verification)."""
        if self.closed:
            raise ValueError("read from a closed BlobReader")
        with memoryview(b) as mv, mv.cast("B") as view:
            if not view:
                return 0
            while not self._ended:
                got = self._pull(view)
                if got:
                    return got
                self._end()  # size reached, EOF, or too much data
        return self._verified_end()

    def readinto(self, b: Any) -> int:
        """Fill ``b`` unless the blob ends first (file semantics: pipes return short reads)."""
        with memoryview(b) as mv, mv.cast("B") as view:
            filled = 0
            while filled < len(view):
                with view[filled:] as rest:
                    got = self.readinto1(rest)
                if got == 0:
                    break
                filled += got
            return filled

    def copy_to(self, dest: Union[int, Any]) -> int:
        """Copy the rest of the blob to ``dest`` (an fd or a file with ``fileno()``); returns
        the bytes copied, after verification.

        Where nothing needs to see the bytes (a GetBlob stream, verified by skopeo, or an
        unverified GetRawBlob) they move from the pipe with ``os.splice``, never entering
        Python. A stream hashed here is read on this thread while two helper threads hash
        and write it (small ones: one reused buffer, hashed on the way).
        """
        out = dest if isinstance(dest, int) else dest.fileno()
        if not isinstance(dest, int):
            dest.flush()
        if self.closed:
            raise ValueError("read from a closed BlobReader")
        start = self._stream.received
        if self._stream.hashing or not hasattr(os, "splice"):
            size = self._stream.size
            buffers = pipeline.buffer_count(None if size is None else size - start)
            if buffers and self._stream.hashing:
                self._copy_pipelined(out, buffers)
            else:
                buf = bytearray(READ_CHUNK)
                with memoryview(buf) as view:
                    while got := self.readinto1(buf):
                        with view[:got] as data:
                            write_all(out, data)
            return self._stream.received - start
        coalescer = streaming.Coalescer(self._ends.pipe_size)
        while not self._ended:
            n = self._stream.want(READ_CHUNK)
            if n:
                fd = self._ends.data_fd
                self._wait_data(fd)
                moved = os.splice(fd, out, n)
                if moved:
                    self._stream.advance(moved)
                    if not self._stream.overflowed:
                        pause = coalescer.pause_after(moved)
                        if pause:
                            time.sleep(pause)
                        continue
            self._end()
        self._verified_end()
        return self._stream.received - start

    def _copy_pipelined(self, out: int, buffers: int) -> None:
        """Read here while helper threads hash and write (see _pipeline)."""
        returned: queue.SimpleQueue[bytearray] = queue.SimpleQueue()
        stages = pipeline.HashWritePipeline(out, self._stream.hash, returned.put, buffers)
        idle = list(stages.buffers)
        coalescer = streaming.Coalescer(self._ends.pipe_size)

        def take_back(until: int) -> None:
            while len(idle) < until:
                idle.append(returned.get())
            if stages.error is not None:
                raise stages.error

        try:
            while not self._ended:
                take_back(1)
                buf = idle.pop()
                filled = 0
                with memoryview(buf) as view:
                    while filled < len(view):
                        with view[filled:] as rest:
                            got = self._pull(rest, hash_here=False)
                        if not got:
                            break
                        filled += got
                        pause = coalescer.pause_after(got)
                        if pause and filled < len(view):
                            time.sleep(pause)
                if filled:
                    stages.submit(buf, filled)
                else:
                    idle.append(buf)
                if filled < len(buf):  # the data part is over: judge it on every byte
                    take_back(len(stages.buffers))
                    self._end()
        finally:
            stages.close()
        self._verified_end()

    def read(self, size: Optional[int] = -1) -> bytes:
        """Read ``size`` bytes (fewer only at the end), or everything left when negative."""
        if size is None or size < 0:
            parts: List[bytes] = []
            while True:
                part = self.read1(READ_CHUNK)
                if not part:
                    return b"".join(parts)
                parts.append(part)
        buf = bytearray(size)
        n = self.readinto(buf)
        del buf[n:]
        return bytes(buf)

    def read1(self, size: int = -1) -> bytes:
        """Read at most ``size`` bytes with a single read of the pipe."""
        buf = bytearray(READ_CHUNK if size < 0 else size)
        n = self.readinto1(buf)
        del buf[n:]
        return bytes(buf)

    def _end(self) -> None:
        """The data part is over: finish, verify, or resume an interrupted transfer."""
        try:
            resumed = self._proxy._run(
                streaming.end_stream(self._ends, self._proxy._config.retries)
            )
        except BaseException as e:
            self._ended = True
            self._failure = e
            raise
        if not resumed:
            self._ended = True

    def close(self) -> None:
        """Close the stream. If every byte was read, this verifies and may raise."""
        if self.closed:
            return
        try:
            if not self._ended and self._stream.complete:
                while not self._ended:
                    self._end()
        finally:
            self.close_quietly()

    def close_quietly(self) -> None:
        """Abandon the stream: close our ends; the proxy sees EPIPE and stays usable."""
        if self.closed:
            return
        if not self._ended:
            self._ended = True
            try:
                self._proxy._run(streaming.abandon_stream(self._ends))
            except ProxyError:
                pass
        self._ends.close()
        super().close()

    def __iter__(self) -> BlobReader:
        return self

    def __next__(self) -> bytes:
        """The next READ_CHUNK bytes (fewer only at the end), as the asyncio reader gives."""
        chunk = self.read(READ_CHUNK)
        if not chunk:
            raise StopIteration
        return chunk

    def __exit__(self, exc_type: object, *exc: object) -> None:
        # while an error unwinds, close without verifying: its failure would mask the error
        if exc_type is None:
            self.close()
        else:
            self.close_quietly()

    def __del__(self) -> None:
        # no request from a finalizer: only make sure the descriptors do not leak
        ends = getattr(self, "_ends", None)
        if ends is not None:
            ends.close()
