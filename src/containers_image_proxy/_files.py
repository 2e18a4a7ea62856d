"""Writing files so that a reader never sees half of one.

Everything the library and the tool write to a destination goes to a temporary file in the
same directory first (a rename is atomic only within one filesystem), is flushed to disk,
and replaces the destination only once complete and verified. On any error, or Ctrl-C, the
temporary file is removed: a destination is either untouched or whole.

Modes: a file created here gets ``0666 & ~umask``, as ``cp`` or a shell redirection would
give it: the temporary file is created with 0666 and the kernel applies the umask (and a
directory's default ACL), so the result is never more open than the user asked for.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import secrets
import stat
from typing import IO, Any, Callable, Iterator, Optional, Union

PathLike = Union[str, "os.PathLike[str]"]

_CHUNK = 1024 * 1024
_TEMP_ATTEMPTS = 100


def create_new(directory: str, prefix: str, suffix: str) -> tuple[int, str]:
    """Create a new file with a random name in ``directory``; ``(fd, path)``.

    Like ``tempfile.mkstemp``, but with mode 0666 before the umask instead of 0600.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW
    for _ in range(_TEMP_ATTEMPTS):
        path = os.path.join(directory, f"{prefix}{secrets.token_hex(6)}{suffix}")
        try:
            return os.open(path, flags, 0o666), path
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no unused temporary name", directory)


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
    KeyboardInterrupt) removes the temporary file. The result has mode ``0666 & ~umask``
    (see the module docstring), whatever the file it replaces had.
    """

    def __init__(self, path: PathLike, *, prefix: str = "") -> None:
        self.path = os.fspath(path)
        directory, name = os.path.split(os.path.abspath(self.path))
        self.directory = directory
        # Hidden, and named after the destination, so a leftover (after SIGKILL) explains itself.
        try:
            fd, self.tmp = create_new(directory, prefix or f".{name}.", ".part")
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


def write_atomically(path: PathLike, data: bytes) -> None:
    """Replace ``path`` with ``data`` in one step."""
    with AtomicFile(path) as out:
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


@contextlib.contextmanager
def destination_directory(path: PathLike) -> Iterator[None]:
    """Around an unpack into ``path``: the directory itself ends with the mode it had, or,
    when it did not exist, ``0777 & ~umask`` (it is created here, and removed again if the
    unpack fails). The tree inside keeps the layers' modes; only the root's ``./`` entry,
    if a layer has one, is overridden.
    """
    created = False
    name = os.path.abspath(os.fspath(path))
    if os.path.isdir(os.path.dirname(name)):
        with contextlib.suppress(FileExistsError):
            os.mkdir(name, 0o777)
            created = True
    # anything else there (a file, a symlink, a missing parent) is the unpack's to refuse
    st = os.lstat(name) if created or os.path.lexists(name) else None
    try:
        yield
    except BaseException:
        if created:
            with contextlib.suppress(OSError):
                os.rmdir(name)
        raise
    if st is not None and stat.S_ISDIR(st.st_mode):
        os.chmod(name, stat.S_IMODE(st.st_mode))
