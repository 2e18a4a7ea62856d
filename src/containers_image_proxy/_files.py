"""Writing files so that a reader never sees half of one.

Everything the library and the tool write to a destination goes to a temporary file in the
same directory first (a rename is atomic only within one filesystem), is flushed to disk,
and replaces the destination only once complete and verified. On any error, or Ctrl-C, the
temporary file is removed: a destination is either untouched or whole.
"""

from __future__ import annotations

import errno
import hashlib
import os
import tempfile
from typing import IO, Any, Callable, Optional, Union

PathLike = Union[str, "os.PathLike[str]"]

_CHUNK = 1024 * 1024


def fsync_dir(path: PathLike) -> None:
    """Make a rename or a new entry in directory ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class AtomicFile:
    """A temporary file that becomes ``path`` on :meth:`commit`, or vanishes.

    Use as a context manager: leaving the block without ``commit()`` (an exception, a
    KeyboardInterrupt) removes the temporary file. ``mode`` is applied to the result
    (regular files get 0644 by default, not mkstemp's 0600, as ``cp`` would do).
    """

    def __init__(self, path: PathLike, *, mode: int = 0o644, prefix: str = "") -> None:
        self.path = os.fspath(path)
        directory, name = os.path.split(os.path.abspath(self.path))
        self.directory = directory
        self._mode = mode
        # Hidden, and named after the destination, so a leftover (after SIGKILL) explains itself.
        try:
            fd, self.tmp = tempfile.mkstemp(
                prefix=prefix or f".{name}.", suffix=".part", dir=directory
            )
        except FileNotFoundError:
            # name the directory the user gave, not the temporary file in it
            raise FileNotFoundError(errno.ENOENT, "no such directory", directory) from None
        self.file: IO[bytes] = os.fdopen(fd, "wb")
        self._done = False

    def __enter__(self) -> AtomicFile:
        return self

    def __exit__(self, *exc: object) -> None:
        if not self._done:
            self.discard()

    def write(self, data: Any) -> int:
        """Write bytes to the temporary file."""
        return self.file.write(data)

    def commit(self) -> None:
        """Flush to disk and rename over the destination."""
        self.file.flush()
        os.fchmod(self.file.fileno(), self._mode)
        os.fsync(self.file.fileno())
        self.file.close()
        os.replace(self.tmp, self.path)
        self._done = True
        fsync_dir(self.directory)

    def discard(self) -> None:
        """Remove the temporary file (idempotent)."""
        self._done = True
        try:
            self.file.close()
        finally:
            try:
                os.unlink(self.tmp)
            except FileNotFoundError:
                pass


def write_atomically(path: PathLike, data: bytes, *, mode: int = 0o644) -> None:
    """Replace ``path`` with ``data`` in one step."""
    with AtomicFile(path, mode=mode) as out:
        out.write(data)
        out.commit()


def copy_stream(
    source: Any,
    write: Callable[[bytes], Any],
    chunk: int = _CHUNK,
) -> int:
    """Copy ``source.read`` chunks to ``write`` until the end; returns the byte count.

    The end is only reached through a read that returns b"": that read is where a blob
    reader checks size and digest, so a copy that returns was verified.
    """
    total = 0
    # read1 where the source has it: whatever arrived, at once (smooth progress)
    read = getattr(source, "read1", None) or source.read
    while True:
        data = read(chunk)
        if not data:
            return total
        write(data)
        total += len(data)


def file_digest(path: PathLike, algorithm: str = "sha256") -> Optional[str]:
    """The ``algorithm:hex`` digest of a file's content, or None if there is no such file."""
    hasher = hashlib.new(algorithm)
    try:
        with open(path, "rb") as f:
            while True:
                data = f.read(_CHUNK)
                if not data:
                    break
                hasher.update(data)
    except (FileNotFoundError, IsADirectoryError):
        return None
    return f"{algorithm}:{hasher.hexdigest()}"
