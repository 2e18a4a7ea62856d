"""Unit tests of the pieces behind bulk ``copy_to``: the hash/write pipeline and the
coalescing of pipe reads. No skopeo: the pipeline works on any fd and hash function."""

from __future__ import annotations

import errno
import hashlib
import os
import queue
import random
from pathlib import Path

import pytest

from containers_image_proxy._stream.copying import (
    BUFFER_COUNT,
    BUFFER_SIZE,
    MIN_PIPELINED_SIZE,
    PIPE_SIZE,
    Coalescer,
    HashWritePipeline,
    buffer_count,
)


def test_buffer_count() -> None:
    assert buffer_count(0) == 0
    assert buffer_count(MIN_PIPELINED_SIZE - 1) == 0
    assert buffer_count(MIN_PIPELINED_SIZE) == MIN_PIPELINED_SIZE // BUFFER_SIZE
    assert buffer_count(MIN_PIPELINED_SIZE + 1) == MIN_PIPELINED_SIZE // BUFFER_SIZE + 1
    assert buffer_count(1 << 40) == BUFFER_COUNT
    assert buffer_count(None) == BUFFER_COUNT  # size unknown: worth it


def run_pipeline(out: int, chunks: list[bytes]) -> tuple[HashWritePipeline, bytes]:
    """Push ``chunks`` through a pipeline as a reader would; returns it and the hash."""
    hasher = hashlib.sha256()
    returned: queue.SimpleQueue[bytearray] = queue.SimpleQueue()
    stages = HashWritePipeline(out, hasher.update, returned.put, count=3)
    idle = list(stages.buffers)
    try:
        for chunk in chunks:
            if not idle:
                idle.append(returned.get(timeout=10))
            buf = idle.pop()
            buf[: len(chunk)] = chunk
            stages.submit(buf, len(chunk))
        while len(idle) < 3:  # every buffer comes back, even after an error
            idle.append(returned.get(timeout=10))
    finally:
        stages.close()
    stages.close()  # idempotent
    return stages, hasher.digest()


def test_pipeline_hashes_and_writes_in_order(tmp_path: Path) -> None:
    rng = random.Random(5)
    chunks = [rng.randbytes(rng.randrange(1, BUFFER_SIZE + 1)) for _ in range(20)]
    with open(tmp_path / "out", "wb") as f:
        stages, digest = run_pipeline(f.fileno(), chunks)
    assert stages.error is None
    whole = b"".join(chunks)
    assert (tmp_path / "out").read_bytes() == whole
    assert digest == hashlib.sha256(whole).digest()


def test_pipeline_write_error_is_kept_and_buffers_come_back() -> None:
    full = os.open("/dev/full", os.O_WRONLY)
    try:
        stages, _ = run_pipeline(full, [b"x" * 1000] * 6)
    finally:
        os.close(full)
    assert isinstance(stages.error, OSError) and stages.error.errno == errno.ENOSPC


def test_pipeline_hash_error_is_kept() -> None:
    def broken(data: memoryview) -> None:
        raise ValueError("hash failed")

    returned: queue.SimpleQueue[bytearray] = queue.SimpleQueue()
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        stages = HashWritePipeline(null, broken, returned.put, count=2)
        for buf in stages.buffers:
            stages.submit(buf, 10)
        assert {id(returned.get(timeout=10)) for _ in range(2)} == {id(b) for b in stages.buffers}
        stages.close()
    finally:
        os.close(null)
    assert isinstance(stages.error, ValueError)


def test_coalescer_pauses_only_while_reads_stay_small() -> None:
    c = Coalescer(PIPE_SIZE)
    assert c.pause_after(Coalescer.SMALL) == 0.0  # a full read: the source is fast
    assert c.pause_after(0) == 0.0  # EOF: nothing to wait for
    pauses = [c.pause_after(4096) for _ in range(8)]
    assert pauses[0] == Coalescer.FIRST
    assert pauses == sorted(pauses) and pauses[-1] == Coalescer.LONGEST  # doubling, capped
    assert c.pause_after(PIPE_SIZE) == 0.0
    assert c.pause_after(4096) == Coalescer.FIRST  # a large read started it over


@pytest.mark.parametrize("size", [0, 65536, PIPE_SIZE - 1])
def test_coalescer_never_pauses_on_a_small_pipe(size: int) -> None:
    # a pipe smaller than 1 MiB could fill during a pause and stall skopeo
    c = Coalescer(size)
    assert all(c.pause_after(n) == 0.0 for n in (1, 4096, 1 << 20))
