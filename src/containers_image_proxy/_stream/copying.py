"""What ``copy_to`` adds to reading: read coalescing, and hashing and writing a verified
blob beside the reads.

Read, hash and write on one thread take the sum of their times; here the reader's thread
(or event loop) only reads, one helper thread hashes and another writes, so the slowest of
the three sets the pace. hashlib and ``os.write`` release the GIL on large buffers, so the
three really run at once. Buffers are reused: filled by the reader, handed to the hasher,
then to the writer, then given back through ``on_free`` (a queue's ``put`` for the sync
reader, a ``call_soon_threadsafe`` for the asyncio one).

Both readers keep the rule that makes verification and resumption exact: before the end of
a stream is judged they take every buffer back (``drain`` on their side), so every byte
counted has been hashed and written.
"""

from __future__ import annotations

import queue
import threading
from typing import Callable, List, Optional, Tuple

from .._transport import write_all

# Half a pipe: measured against 1 MiB buffers, a verified GiB into a new file took 0.83 s
# instead of 1.2 s here (the buffers in flight stay in the caches); 256 KiB did as well.
BUFFER_SIZE = 512 * 1024
BUFFER_COUNT = 8
# Below this a stream is copied on the caller's thread: starting two threads and touching
# 4 MiB of buffers would cost more than it saves.
MIN_PIPELINED_SIZE = 4 * BUFFER_SIZE

_Item = Optional[Tuple[bytearray, int]]

#: A pipe holds 64 KiB by default, so no read returns more: the per-read costs (a system
#: call, the reader's bookkeeping, a hash update) are paid 16 times per MiB. 1 MiB is the
#: most an unprivileged process may ask for (/proc/sys/fs/pipe-max-size).
PIPE_SIZE = 1 << 20


class Coalescer:
    """When a bulk copy (``copy_to``) should pause before its next read of the pipe.

    A reader faster than skopeo finds the pipe nearly empty each time and is woken for
    every write skopeo makes (32 KiB each): a system call and two context switches per
    32 KiB, and skopeo losing its core each time. Pausing while the pipe fills cuts the
    wakeups about twentyfold (measured: CPU of a 1 GiB splice into a pipe 0.2-0.4 s ->
    0.05 s, and faster, since skopeo keeps running). The first pause is short enough that
    a 1 MiB pipe cannot fill during it below ~5 GB/s, so a fast source is never held
    up; it doubles while reads stay small (a slow source, such as a registry far away),
    up to a few ms, so a slow stream does not wake us more often than it would anyway.
    With a pipe smaller than 1 MiB it never pauses: the pipe would fill and stall skopeo.
    """

    SMALL = 256 * 1024
    FIRST = 0.0002
    LONGEST = 0.002

    def __init__(self, pipe_size: int) -> None:
        self._enabled = pipe_size >= PIPE_SIZE
        self._pause = self.FIRST

    def pause_after(self, moved: int) -> float:
        """Seconds to wait before the next read, after one that moved ``moved`` bytes."""
        if not self._enabled or moved <= 0:
            return 0.0
        if moved >= self.SMALL:
            self._pause = self.FIRST
            return 0.0
        pause = self._pause
        self._pause = min(pause * 2, self.LONGEST)
        return pause


def descriptor_of(dest: object) -> Optional[int]:
    """The descriptor ``copy_to`` writes to: ``dest`` itself, or its ``fileno()`` after a
    flush; None for a file object without one (a ``BytesIO``), written with ``write``."""
    if isinstance(dest, int):
        return dest
    fileno = getattr(dest, "fileno", None)
    if fileno is None:
        return None
    try:
        fd = fileno()
    except (OSError, ValueError):  # io.UnsupportedOperation is both
        return None
    flush = getattr(dest, "flush", None)
    if flush is not None:
        flush()
    return int(fd)


def buffer_count(size: Optional[int]) -> int:
    """How many buffers a stream of ``size`` bytes (None: unknown) is worth; 0: none."""
    if size is not None and size < MIN_PIPELINED_SIZE:
        return 0
    if size is None:
        return BUFFER_COUNT
    return min(BUFFER_COUNT, -(-size // BUFFER_SIZE))


class HashWritePipeline:
    """Two helper threads: one hashes filled buffers in order, the other writes them to
    ``out`` in order and gives each back with ``on_free``.

    The first exception of either stage is kept in ``error`` (later buffers are passed
    along untouched, so every buffer still comes back); the reader raises it.
    """

    def __init__(
        self,
        out: int,
        hash_data: Callable[[memoryview], None],
        on_free: Callable[[bytearray], None],
        count: int = BUFFER_COUNT,
    ) -> None:
        self.buffers: List[bytearray] = [bytearray(BUFFER_SIZE) for _ in range(count)]
        self.error: Optional[BaseException] = None
        self._out = out
        self._hash = hash_data
        self._on_free = on_free
        self._to_hash: queue.SimpleQueue[_Item] = queue.SimpleQueue()
        self._to_write: queue.SimpleQueue[_Item] = queue.SimpleQueue()
        self._threads = [
            threading.Thread(target=self._hash_loop, name="cip-hash", daemon=True),
            threading.Thread(target=self._write_loop, name="cip-write", daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, buf: bytearray, filled: int) -> None:
        """Hand over ``buf``, whose first ``filled`` bytes were just read."""
        self._to_hash.put((buf, filled))

    def close(self) -> None:
        """Stop both threads once the buffers handed over are through; idempotent."""
        if not self._threads:
            return
        self._to_hash.put(None)
        for thread in self._threads:
            thread.join()
        self._threads = []

    def _hash_loop(self) -> None:
        while (item := self._to_hash.get()) is not None:
            if self.error is None:
                buf, filled = item
                try:
                    with memoryview(buf) as view, view[:filled] as data:
                        self._hash(data)
                except BaseException as e:  # handed to the reader, raised there
                    self.error = e
            self._to_write.put(item)
        self._to_write.put(None)

    def _write_loop(self) -> None:
        while (item := self._to_write.get()) is not None:
            buf, filled = item
            if self.error is None:
                try:
                    with memoryview(buf) as view, view[:filled] as data:
                        write_all(self._out, data)
                except BaseException as e:  # handed to the reader, raised there
                    self.error = e
            self._on_free(buf)
