"""Hashing behind the reads: the sync reader's plain reads hash on a helper thread.

A verified stream read with ``read()``, ``readinto()`` or iteration used to be read and
hashed on the caller's thread, so the caller's own work (writing the bytes to a file, say)
waited for the hash and the hash for it. Here the bytes handed out are hashed on one helper
thread, in order, while the caller goes on: a ``bytes`` result is immutable, so it is
hashed as it is; bytes read into a caller's buffer are copied first (a copy costs a
fraction of the hash), since the caller may change that buffer as soon as the read returns.

The rule that keeps verification exact: :meth:`HashBehind.drain` waits until every byte
taken is hashed, and the reader drains before it judges the end of a stream (``check``),
resumes it (its prefix hash) or hands the hasher to ``copy_to``'s pipeline.
"""

from __future__ import annotations

import collections
import threading
from typing import Deque, List, Optional, Tuple, Union

from .state import BlobStream

#: At most this many bytes wait to be hashed; a reader ahead by more waits for the hasher.
#: Also bounds the memory the copies of ``readinto`` take.
MAX_BEHIND = 4 * 1024 * 1024
#: Smaller pieces are hashed on the reader's thread when nothing waits (starting the
#: thread and handing over would cost more than hashing them).
HASH_HERE_BELOW = 128 * 1024

#: ``readinto``'s bytes are copied into reused buffers of this size (larger pieces: bytes).
COPY_SIZE = 1024 * 1024

# a piece to hash, and the reused buffer it is in (None: a bytes object)
_Item = Tuple[Union[bytes, memoryview], Optional[bytearray]]


class HashBehind:
    """Hashes ``stream``'s bytes on a helper thread (started at the first large piece)."""

    def __init__(self, stream: BlobStream) -> None:
        self._stream = stream
        self._cond = threading.Condition()
        self._items: Deque[_Item] = collections.deque()
        self._spare: List[bytearray] = []  # copy buffers back from the hasher
        self._behind = 0  # bytes taken and not hashed yet (a copy counts its whole buffer)
        self._thread: Optional[threading.Thread] = None
        self._stopping = False
        self._error: Optional[BaseException] = None

    def take_view(self, data: memoryview) -> None:
        """Hash ``data``, bytes of a buffer the caller may change once this returns."""
        size = len(data)
        if self._hash_here(size):
            self._stream.hash(data)
        elif size > COPY_SIZE:
            self._queue(bytes(data), None)
        else:
            with self._cond:
                buf = self._spare.pop() if self._spare else None
            if buf is None:
                buf = bytearray(COPY_SIZE)
            buf[:size] = data
            self._queue(memoryview(buf)[:size], buf)

    def take_bytes(self, data: bytes) -> None:
        """Hash ``data`` (immutable: it is hashed as it is, maybe later)."""
        if self._hash_here(len(data)):
            self._stream.hash(data)
        else:
            self._queue(data, None)

    def _hash_here(self, size: int) -> bool:
        # only the reader's thread adds to _behind: a 0 seen here stays 0 until it adds
        return not self._stream.hashing or (self._behind == 0 and size < HASH_HERE_BELOW)

    def _queue(self, data: Union[bytes, memoryview], buf: Optional[bytearray]) -> None:
        with self._cond:
            while self._behind >= MAX_BEHIND and self._error is None:
                self._cond.wait()
            if self._error is not None:
                raise self._error
            self._items.append((data, buf))
            self._behind += len(data) if buf is None else len(buf)
            self._cond.notify_all()
            if self._thread is None:
                self._stopping = False
                self._thread = threading.Thread(
                    target=self._run, name="cip-hash-behind", daemon=True
                )
                self._thread.start()

    def drain(self) -> None:
        """Wait until every byte taken is hashed; raises what the hash raised."""
        with self._cond:
            while self._behind and self._error is None:
                self._cond.wait()
            if self._error is not None:
                raise self._error

    def close(self, wait: bool = True) -> None:
        """Stop the helper thread, dropping what was not hashed yet (the stream is over
        or abandoned); ``wait``: join it (not from a finalizer)."""
        with self._cond:
            thread, self._thread = self._thread, None
            self._stopping = True
            self._cond.notify_all()
        if thread is not None and wait:
            thread.join()

    def _run(self) -> None:
        cond = self._cond
        while True:
            with cond:
                while not self._items and not self._stopping:
                    cond.wait()
                if self._stopping:
                    self._items.clear()
                    self._behind = 0
                    cond.notify_all()
                    return
                data, buf = self._items[0]
            try:
                self._stream.hash(data)
            except BaseException as e:  # raised to the reader by drain or the next take
                with cond:
                    self._error = e
            with cond:
                if self._items:
                    self._items.popleft()
                    self._behind -= len(data) if buf is None else len(buf)
                if buf is not None:
                    data.release()  # type: ignore[union-attr]
                    self._spare.append(buf)
                cond.notify_all()
