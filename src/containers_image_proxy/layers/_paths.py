"""Paths confined to a root directory, resolved the way container runtimes resolve them.

A layer's names are interpreted as if the destination were ``/``: ``..`` stops at the
root, absolute names and absolute symlink targets point into the root. Symlinks are read
and followed here, in user space, one component at a time, with every step taken through
a directory file descriptor opened with O_NOFOLLOW; the kernel never follows a link for
us, so no name or link in a layer can reach outside the root.
"""

from __future__ import annotations

import errno
import os
import stat
from collections import deque
from typing import Callable, Optional

from ._errors import UnsafeLayerError

MAX_SYMLINKS = 40  # Linux's limit for one resolution
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC

Path = tuple[str, ...]


def clean_name(name: str, entry: Optional[str] = None) -> Path:
    """The components of a layer name, lexically cleaned with ``..`` stopping at the root.

    The empty tuple is the root. Raises UnsafeLayerError for names that are not valid
    (empty, or holding a NUL byte).
    """
    if entry is None:
        entry = name
    if not name or "\0" in name:
        raise UnsafeLayerError(entry, "not a valid name")
    parts: list[str] = []
    for part in name.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if parts:
                parts.pop()
            continue
        parts.append(part)
    return tuple(parts)


def join(path: Path) -> str:
    """A path tuple as a relative name (``.`` for the root)."""
    return "/".join(path) or "."


def lstat_at(dir_fd: int, name: str) -> Optional[os.stat_result]:
    """lstat of ``name`` in ``dir_fd``, None when it does not exist."""
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


class Root:
    """A directory that layer paths are confined to."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.fd = os.open(path, _DIR_FLAGS)

    def close(self) -> None:
        """Close the root's descriptor."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> Root:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def resolve_dir(
        self,
        path: Path,
        *,
        entry: str,
        create: bool = False,
        on_create: Optional[Callable[[int, Path], None]] = None,
    ) -> Optional[tuple[int, Path]]:
        """Open the directory ``path`` names inside the root, following symlinks within it.

        Returns a new descriptor (the caller closes it) and the directory's real path, all
        symlinks resolved. Missing components are created (mode 0o755) when ``create`` is
        true, ``on_create(fd, real_path)`` being called for each; otherwise a missing
        component, or one that is not a directory, gives None. With ``create``, a component
        that exists and is not a directory raises UnsafeLayerError naming ``entry``.
        """
        todo: deque[str] = deque(path)
        real: list[str] = []
        fds: list[int] = []
        links = 0
        try:
            while todo:
                part = todo.popleft()
                if part in ("", "."):
                    continue
                if part == "..":
                    if real:
                        real.pop()
                        os.close(fds.pop())
                    continue
                cur = fds[-1] if fds else self.fd
                st = lstat_at(cur, part)
                if st is not None and stat.S_ISLNK(st.st_mode):
                    links += 1
                    if links > MAX_SYMLINKS:
                        raise UnsafeLayerError(entry, "too many levels of symbolic links")
                    target = os.readlink(part, dir_fd=cur)
                    if target.startswith("/"):
                        # Absolute targets point into the root, not the host.
                        for fd in fds:
                            os.close(fd)
                        fds.clear()
                        real.clear()
                    todo.extendleft(reversed(target.split("/")))
                    continue
                if st is None:
                    if not create:
                        return None
                    os.mkdir(part, 0o755, dir_fd=cur)
                elif not stat.S_ISDIR(st.st_mode):
                    if not create:
                        return None
                    where = join((*real, part))
                    raise UnsafeLayerError(entry, f"{where} is not a directory")
                fd = os.open(part, _DIR_FLAGS, dir_fd=cur)
                fds.append(fd)
                real.append(part)
                if st is None:
                    os.fchmod(fd, 0o755)  # whatever the umask: a fixed, usual mode
                    if on_create is not None:
                        on_create(fd, tuple(real))
            result = fds.pop() if fds else os.dup(self.fd)
            return result, tuple(real)
        finally:
            for fd in fds:
                os.close(fd)

    def open_real_dir(self, path: Path) -> Optional[int]:
        """Open a directory by its real path (no symlink followed); None if not there."""
        fd = os.dup(self.fd)
        try:
            for part in path:
                try:
                    nfd = os.open(part, _DIR_FLAGS, dir_fd=fd)
                except OSError as e:
                    if e.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
                        return None
                    raise
                os.close(fd)
                fd = nfd
            result, fd = fd, -1
            return result
        finally:
            if fd >= 0:
                os.close(fd)


def remove_at(dir_fd: int, name: str, keep: Optional[Callable[[str], bool]] = None) -> None:
    """Remove ``name`` in ``dir_fd`` recursively, never following symlinks.

    ``keep(relative_name)``, when given, spares an entry (names are relative to ``name``,
    ``""`` being ``name`` itself): a kept directory stays, and its children are examined
    the same way; an entry not kept goes with everything under it. A missing name is not
    an error.
    """
    st = lstat_at(dir_fd, name)
    if st is None:
        return
    kept = keep is not None and keep("")
    if not stat.S_ISDIR(st.st_mode):
        if not kept:
            os.unlink(name, dir_fd=dir_fd)
        return
    fd = os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
    try:
        if os.geteuid() != 0:
            # Without root, a read-only directory cannot be emptied: open it up first.
            os.fchmod(fd, stat.S_IMODE(os.fstat(fd).st_mode) | 0o700)
        for child in os.listdir(fd):
            sub: Optional[Callable[[str], bool]] = None
            if kept and keep is not None:
                sub = _sub_keep(keep, child)
            remove_at(fd, child, sub)
    finally:
        os.close(fd)
    if not kept:
        os.rmdir(name, dir_fd=dir_fd)


def _sub_keep(keep: Callable[[str], bool], child: str) -> Callable[[str], bool]:
    def sub(rel: str) -> bool:
        return keep(f"{child}/{rel}" if rel else child)

    return sub
