"""Paths confined to a root directory, resolved the way container runtimes resolve them.

A layer's names are interpreted as if the destination were ``/``: ``..`` stops at the
root, absolute names and absolute symlink targets point into the root. Symlinks are read
and followed here, in user space, one component at a time, with every step taken through
a directory file descriptor opened with O_NOFOLLOW; the kernel never follows a link for
us, so no name or link in a layer can reach outside the root.

Depth is bounded and nothing here recurses: a name is at most ``PATH_MAX`` bytes once
cleaned, a resolved path at most ``MAX_DEPTH`` components (what ``PATH_MAX`` allows with
one-byte names), and walks hold at most ``FD_WINDOW`` descriptors of their own, going
back up through ``..`` (checked against the directory it must be) instead.
"""

from __future__ import annotations

import errno
import os
import stat
from collections import deque
from collections.abc import Sequence
from typing import Callable, Optional, Union

from ._errors import UnsafeLayerError

MAX_SYMLINKS = 40  # Linux's limit for one resolution
NAME_MAX = 255  # Linux's limit for one component
PATH_MAX = 4096  # Linux's limit for a path given to one system call, its NUL included
MAX_DEPTH = PATH_MAX // 2  # components of "a/a/a/...", the deepest path PATH_MAX allows
FD_WINDOW = 8  # descriptors a walk keeps open below the one it stands in
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC

Path = tuple[str, ...]


def clean_name(name: str, entry: Optional[str] = None) -> Path:
    """The components of a layer name, lexically cleaned with ``..`` stopping at the root.

    The empty tuple is the root. Raises UnsafeLayerError for names that are not valid
    (empty, holding a NUL byte, a component over ``NAME_MAX`` bytes) and for names that
    are ``PATH_MAX`` bytes or longer once cleaned: no runtime can create them, they do not
    fit one system call.
    """
    if entry is None:
        entry = name
    if not name or "\0" in name:
        raise UnsafeLayerError(entry, "not a valid name")
    cleaned = _clean(name)
    # A character is at most 4 bytes: only long names need encoding to be measured.
    if len(name) >= PATH_MAX // 4 and len(_encoded("/".join(cleaned))) >= PATH_MAX:
        raise UnsafeLayerError(entry, f"name longer than PATH_MAX ({PATH_MAX} bytes)")
    for part in cleaned:
        if len(part) > NAME_MAX // 4 and len(_encoded(part)) > NAME_MAX:
            raise UnsafeLayerError(entry, f"not a valid name (a component over {NAME_MAX} bytes)")
    return cleaned


def _encoded(name: str) -> bytes:
    return name.encode("utf-8", "surrogateescape")


def _clean(name: str) -> Path:
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


def check_depth(path: Sequence[str], entry: str) -> None:
    """Raise UnsafeLayerError when ``path`` is deeper than ``MAX_DEPTH`` components."""
    if len(path) > MAX_DEPTH:
        raise UnsafeLayerError(entry, f"path deeper than {MAX_DEPTH} components")


def check_link_target(target: str, entry: str) -> None:
    """Raise UnsafeLayerError for a symlink target the kernel would not store.

    Empty, holding a NUL byte, or ``PATH_MAX`` bytes or longer (symlink(2) refuses it
    with ENAMETOOLONG, so no runtime can create it).
    """
    if not target or "\0" in target:
        raise UnsafeLayerError(entry, "symlink with no valid target")
    if len(target) >= PATH_MAX // 4 and len(_encoded(target)) >= PATH_MAX:
        raise UnsafeLayerError(entry, f"symlink target longer than PATH_MAX ({PATH_MAX} bytes)")


def join(path: Path) -> str:
    """A path tuple as a relative name (``.`` for the root)."""
    return "/".join(path) or "."


def image_path(path: Union[str, Path]) -> str:
    """A path as messages show it: absolute, as in the image (``/etc/passwd``, ``/``).

    A path tuple is joined from the root; a caller's string is kept as given (its ``..``
    and symlinks mean what the walk made of them), with a ``/`` in front if it had none.
    """
    if isinstance(path, tuple):
        return "/" + "/".join(path)
    return path if path.startswith("/") else "/" + path


def lstat_at(dir_fd: int, name: str) -> Optional[os.stat_result]:
    """lstat of ``name`` in ``dir_fd``, None when it does not exist."""
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


class DirChain:
    """A walk down from a base directory descriptor, holding a bounded number of them.

    :meth:`down` enters a child, :meth:`up` returns to the parent. Only the last
    ``FD_WINDOW`` levels keep their descriptors; a level whose descriptor was let go is
    reopened through ``..`` of its child and checked (device and inode) to be the
    directory it was, so a deep tree costs no more descriptors than a shallow one. The
    base descriptor belongs to the caller and is never closed here.
    """

    def __init__(self, base_fd: int) -> None:
        self._base = base_fd
        self._fds: list[int] = []  # -1: let go
        self._ids: list[tuple[int, int]] = []
        self.names: list[str] = []

    @property
    def fd(self) -> int:
        """The descriptor of the directory the walk stands in."""
        return self._fds[-1] if self._fds else self._base

    @property
    def depth(self) -> int:
        """Levels below the base."""
        return len(self._fds)

    def down(self, name: str) -> int:
        """Enter directory ``name`` (never through a symlink); its descriptor."""
        fd = os.open(name, _DIR_FLAGS, dir_fd=self.fd)
        try:
            st = os.fstat(fd)
        except OSError:
            os.close(fd)
            raise
        self._fds.append(fd)
        self._ids.append((st.st_dev, st.st_ino))
        self.names.append(name)
        held = len(self._fds) - 1 - FD_WINDOW
        if held >= 0 and self._fds[held] >= 0:
            os.close(self._fds[held])
            self._fds[held] = -1
        return fd

    def hold_parent(self) -> None:
        """Make sure the parent's descriptor is held (before this level is locked up)."""
        if len(self._fds) >= 2 and self._fds[-2] < 0:
            fd = os.open("..", _DIR_FLAGS, dir_fd=self._fds[-1])
            st = os.fstat(fd)
            if (st.st_dev, st.st_ino) != self._ids[-2]:
                os.close(fd)
                raise OSError(errno.ESTALE, "a directory moved during the walk")
            self._fds[-2] = fd

    def up(self) -> None:
        """Return to the parent directory."""
        self.hold_parent()
        os.close(self._fds.pop())
        self._ids.pop()
        self.names.pop()

    def detach(self) -> int:
        """The current directory's descriptor, now the caller's (a dup at the base)."""
        if not self._fds:
            return os.dup(self._base)
        fd = self._fds.pop()
        self._ids.pop()
        self.names.pop()
        return fd

    def close(self) -> None:
        """Close every descriptor the walk holds."""
        for fd in self._fds:
            if fd >= 0:
                os.close(fd)
        self._fds.clear()
        self._ids.clear()
        self.names.clear()


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
        that exists and is not a directory raises UnsafeLayerError naming ``entry``, and so
        does a real path deeper than ``MAX_DEPTH``.
        """
        todo: deque[str] = deque(path)
        chain = DirChain(self.fd)
        links = 0
        try:
            while todo:
                part = todo.popleft()
                if part in ("", "."):
                    continue
                if part == "..":
                    if chain.depth:
                        chain.up()
                    continue
                cur = chain.fd
                st = lstat_at(cur, part)
                if st is not None and stat.S_ISLNK(st.st_mode):
                    links += 1
                    if links > MAX_SYMLINKS:
                        raise UnsafeLayerError(entry, "too many levels of symbolic links")
                    target = os.readlink(part, dir_fd=cur)
                    if target.startswith("/"):
                        # Absolute targets point into the root, not the host.
                        chain.close()
                    todo.extendleft(reversed(target.split("/")))
                    continue
                if st is None:
                    if not create:
                        return None
                    # Only what we create can make the tree deeper: check there.
                    check_depth((*chain.names, part), entry)
                    os.mkdir(part, 0o755, dir_fd=cur)
                elif not stat.S_ISDIR(st.st_mode):
                    if not create:
                        return None
                    where = image_path((*chain.names, part))
                    raise UnsafeLayerError(entry, f"{where} is not a directory")
                fd = chain.down(part)
                if st is None:
                    os.fchmod(fd, 0o755)  # whatever the umask: a fixed, usual mode
                    if on_create is not None:
                        on_create(fd, tuple(chain.names))
            real = tuple(chain.names)
            return chain.detach(), real
        finally:
            chain.close()

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


class _Level:
    """One directory being emptied by :func:`remove_at`."""

    __slots__ = ("children", "kept", "rel")

    def __init__(self, rel: str, kept: bool, children: list[str]) -> None:
        self.rel = rel
        self.kept = kept
        self.children = children


def remove_at(dir_fd: int, name: str, keep: Optional[Callable[[str], bool]] = None) -> None:
    """Remove ``name`` in ``dir_fd`` and what is under it, never following symlinks.

    ``keep(relative_name)``, when given, spares an entry (names are relative to ``name``,
    ``""`` being ``name`` itself): a kept directory stays, and its children are examined
    the same way; an entry not kept goes with everything under it. A missing name is not
    an error. Iterative, with a bounded number of descriptors (see :class:`DirChain`).
    """
    st = lstat_at(dir_fd, name)
    if st is None:
        return
    kept = keep is not None and keep("")
    if not stat.S_ISDIR(st.st_mode):
        if not kept:
            os.unlink(name, dir_fd=dir_fd)
        return
    chain = DirChain(dir_fd)
    levels: list[_Level] = []
    try:
        levels.append(_Level("", kept, _enter(chain, name)))
        while levels:
            level = levels[-1]
            if not level.children:
                chain.up()
                levels.pop()
                if not level.kept:
                    os.rmdir(level.rel.rpartition("/")[2] or name, dir_fd=chain.fd)
                continue
            child = level.children.pop()
            rel = f"{level.rel}/{child}" if level.rel else child
            child_kept = level.kept and keep is not None and keep(rel)
            st = lstat_at(chain.fd, child)
            if st is None:
                continue
            if stat.S_ISDIR(st.st_mode):
                levels.append(_Level(rel, child_kept, _enter(chain, child)))
            elif not child_kept:
                os.unlink(child, dir_fd=chain.fd)
    finally:
        chain.close()


def _enter(chain: DirChain, name: str) -> list[str]:
    """Enter directory ``name`` to empty it; its children's names."""
    fd = chain.down(name)
    if os.geteuid() != 0:
        # Without root, a read-only directory cannot be emptied: open it up first.
        os.fchmod(fd, stat.S_IMODE(os.fstat(fd).st_mode) | 0o700)
    return os.listdir(fd)
