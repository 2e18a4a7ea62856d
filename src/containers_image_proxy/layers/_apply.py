"""The disk backend of the layer rules: a tree written under a directory, confined.

The rules themselves (whiteouts, opaque directories, merges, hardlinks ...) are
``_engine.LayerRules``; :class:`DiskTree` carries them out through directory descriptors
(``_paths``): every parent is resolved inside the root in user space, the entry itself is
never followed, so no name or link in a layer reaches outside the root.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import tarfile
from typing import Any, Callable, Optional, Union

from ._content import data_fragments, write_fragments
from ._engine import DIR, FIFO, FILE, SYMLINK, Keep, LayerRules
from ._meta import CAPABILITY_XATTR, entry_times, entry_xattrs
from ._paths import DirChain, Path, Root, lstat_at, remove_at

log = logging.getLogger("containers_image_proxy.layers")

_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_SETID = stat.S_ISUID | stat.S_ISGID


class TreeWriter(LayerRules[int]):
    """Applies layers, in order, to the tree under ``root`` (see :class:`DiskTree`)."""

    def __init__(self, root: Root, *, rootless: bool = False) -> None:
        self.disk = DiskTree(root, rootless=rootless)
        super().__init__(self.disk)

    @property
    def skipped(self) -> list[str]:
        """Entries not created (device nodes where that is not permitted)."""
        return self.disk.skipped

    def set_default_root(self, mode: int) -> None:
        """The root's mode when no layer has a ``./`` entry for it."""
        self.disk.set_default_root(mode)

    def finish(self) -> None:
        """Apply directory modes and times, after the last layer."""
        self.disk.finish()


class DiskTree:
    """The tree under ``root``, written through descriptors: a backend of LayerRules.

    Directory modes and times are applied by :meth:`finish` once every layer is in:
    children written later would change a directory's mtime, and a read-only directory
    must stay writable (to its owner) while layers still go in. ``rootless`` keeps the
    tree but not the ownership (everything belongs to the caller); devices are then not
    created, and, as Python's tarfile ``data`` filter does, setuid and setgid bits of
    non-directories and file capabilities (``security.capability``) are dropped: they
    were meant for the layer's owner, not the caller. Without ``rootless`` ownership is
    applied, which needs root. Metadata is checked as :mod:`._meta` says.
    """

    def __init__(self, root: Root, *, rootless: bool = False) -> None:
        self._root = root
        self._rootless = rootless
        self._dirs: dict[Path, tuple[int, int, int]] = {}
        # The recorded directories as a tree: path -> names of children leading to records.
        self._dir_kids: dict[Path, set[str]] = {}
        self.layer = ""
        self.skipped: list[str] = []

    def set_default_root(self, mode: int) -> None:
        """The root's mode when no layer has a ``./`` entry for it."""
        if () not in self._dirs:
            os.fchmod(self._root.fd, mode)

    def finish(self) -> None:
        """Apply directory modes and times (children first), after the last layer.

        The records are visited in reverse path order (every directory after all those
        under it), walking between them with one bounded chain of descriptors.
        """
        chain = DirChain(self._root.fd)
        try:
            for path in sorted(self._dirs, reverse=True):
                if not self._goto(chain, path):
                    continue
                mode, atime, mtime = self._dirs[path]
                chain.hold_parent()  # before the mode may lock us out of this directory
                os.fchmod(chain.fd, mode)
                os.utime(chain.fd, ns=(atime, mtime))
        finally:
            chain.close()

    @staticmethod
    def _goto(chain: DirChain, path: Path) -> bool:
        """Move ``chain`` to the real directory ``path``; False when it is not there."""
        common = 0
        names = chain.names
        while common < min(len(names), len(path)) and names[common] == path[common]:
            common += 1
        while chain.depth > common:
            chain.up()
        for part in path[common:]:
            try:
                chain.down(part)
            except OSError as e:
                if e.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
                    return False
                raise
        return True

    # --- the backend protocol --------------------------------------------------------------

    def begin_layer(self, layer: str) -> None:
        self.layer = layer

    def check(self, info: tarfile.TarInfo) -> None:
        pass  # a file's sparse map is checked as its data is written

    def resolve_dir(
        self, path: Path, *, entry: str, create: bool, on_create: Callable[[Path], None]
    ) -> Optional[tuple[int, Path]]:
        return self._root.resolve_dir(
            path, entry=entry, create=create, on_create=lambda _fd, real: on_create(real)
        )

    def release(self, handle: int) -> None:
        os.close(handle)

    def lookup(self, parent: int, name: str) -> Optional[str]:
        st = lstat_at(parent, name)
        if st is None:
            return None
        return DIR if stat.S_ISDIR(st.st_mode) else FILE  # only DIR or not matters

    def names(self, parent: int) -> list[str]:
        return os.listdir(parent)

    def remove(self, parent: int, name: str, path: Path, keep: Optional[Keep]) -> None:
        rel_keep: Optional[Callable[[str], bool]] = None
        if keep is not None:

            def rel_keep(rel: str) -> bool:
                return keep((*path, *rel.split("/")) if rel else path)

        remove_at(parent, name, rel_keep)
        self._forget_removed(path, keep)

    def set_root(self, info: tarfile.TarInfo, mtime: int) -> None:
        fd = os.dup(self._root.fd)
        try:
            self._dir_meta(fd, (), info)
        finally:
            os.close(fd)

    def merge_dir(
        self, parent: int, name: str, path: Path, info: tarfile.TarInfo, mtime: int
    ) -> None:
        fd = os.open(name, _DIR_FLAGS, dir_fd=parent)
        try:
            self._dir_meta(fd, path, info)
        finally:
            os.close(fd)

    def create(
        self,
        parent: int,
        name: str,
        path: Path,
        kind: str,
        info: tarfile.TarInfo,
        data: Any,
        mtime: int,
    ) -> None:
        if kind == FILE:
            self._regular(parent, name, info, data)
        elif kind == DIR:
            os.mkdir(name, 0o700, dir_fd=parent)
            self.merge_dir(parent, name, path, info, mtime)
        elif kind == SYMLINK:
            os.symlink(info.linkname, name, dir_fd=parent)
            self._meta_at(parent, name, info, symlink=True)
        elif kind == FIFO:
            os.mkfifo(name, 0o600, dir_fd=parent)
            self._meta_at(parent, name, info, symlink=False)
        else:
            self._device(parent, name, info)

    def link(self, target_parent: int, target: str, parent: int, name: str, path: Path) -> None:
        os.link(target, name, src_dir_fd=target_parent, dst_dir_fd=parent, follow_symlinks=False)

    # --- directory records -----------------------------------------------------------------

    def _record_dir(self, path: Path, meta: tuple[int, int, int]) -> None:
        if path not in self._dirs:
            for i in range(len(path) - 1, -1, -1):
                kids = self._dir_kids.setdefault(path[:i], set())
                if path[i] in kids:
                    break
                kids.add(path[i])
        self._dirs[path] = meta

    def _forget_removed(self, base: Path, keep: Optional[Keep]) -> None:
        """Drop the records of directories that removing ``base`` took away.

        What :func:`remove_at` spares with ``keep`` is what this spares: an entry goes
        unless it and every directory between it and ``base`` are kept.
        """
        todo = [base]
        while todo:
            path = todo.pop()
            if keep is not None and keep(path):
                todo.extend((*path, kid) for kid in self._dir_kids.get(path, ()))
                continue
            self._drop_records(path)

    def _drop_records(self, top: Path) -> None:
        """Forget ``top`` and every record under it."""
        if top in self._dir_kids or top in self._dirs:
            parent_kids = self._dir_kids.get(top[:-1])
            if top and parent_kids is not None:
                parent_kids.discard(top[-1])
        todo = [top]
        while todo:
            path = todo.pop()
            self._dirs.pop(path, None)
            kids = self._dir_kids.pop(path, None)
            if kids:
                todo.extend((*path, kid) for kid in kids)

    # --- entries ---------------------------------------------------------------------------

    def _regular(self, pfd: int, base: str, info: tarfile.TarInfo, data: Any) -> None:
        fd = os.open(base, _FILE_FLAGS, 0o600, dir_fd=pfd)
        try:
            frags = data_fragments(info, data, self.layer) if data is not None else ()
            write_fragments(fd, info, frags)
            self._owner_fd(fd, info)
            self._xattrs(fd, info)
            os.fchmod(fd, self._file_mode(info))
            os.utime(fd, ns=entry_times(info))
        finally:
            os.close(fd)

    def _device(self, pfd: int, base: str, info: tarfile.TarInfo) -> None:
        if self._rootless:
            self.skipped.append(info.name)
            log.debug("%s: device node not created (rootless)", info.name)
            return
        kind = stat.S_IFCHR if info.ischr() else stat.S_IFBLK
        try:
            os.mknod(base, kind | 0o600, os.makedev(info.devmajor, info.devminor), dir_fd=pfd)
        except PermissionError:
            self.skipped.append(info.name)
            log.debug("%s: device node not permitted here", info.name)
            return
        self._meta_at(pfd, base, info, symlink=False)

    # --- metadata ------------------------------------------------------------------------

    def _file_mode(self, info: tarfile.TarInfo) -> int:
        """A non-directory's permission bits: no setuid/setgid where ownership is not kept."""
        mode = info.mode & 0o7777
        if self._rootless and mode & _SETID:
            log.debug("%s: setuid/setgid dropped (rootless)", info.name)
            mode &= ~_SETID
        return mode

    def _owner_fd(self, fd: int, info: tarfile.TarInfo) -> None:
        if not self._rootless:
            os.fchown(fd, info.uid, info.gid)

    def _xattrs(self, target: Union[int, str], info: tarfile.TarInfo) -> None:
        for key, value in entry_xattrs(info).items():
            if self._rootless and key == CAPABILITY_XATTR:
                log.debug("%s: file capabilities dropped (rootless)", info.name)
                continue
            try:
                if isinstance(target, int):
                    os.setxattr(target, key, value)
                else:
                    os.setxattr(target, key, value, follow_symlinks=False)
            except OSError as e:
                # Where the filesystem (or our privilege) does not accept it: not fatal.
                log.debug("%s: xattr %s not set: %s", info.name, key, e)

    def _dir_meta(self, fd: int, path: Path, info: tarfile.TarInfo) -> None:
        self._owner_fd(fd, info)
        self._xattrs(fd, info)
        mode = info.mode & 0o7777
        os.fchmod(fd, mode | 0o700)  # stays writable until finish() sets the real mode
        atime, mtime = entry_times(info)
        self._record_dir(path, (mode, atime, mtime))

    def _meta_at(self, pfd: int, base: str, info: tarfile.TarInfo, *, symlink: bool) -> None:
        if not self._rootless:
            os.chown(base, info.uid, info.gid, dir_fd=pfd, follow_symlinks=False)
        if entry_xattrs(info):
            # setxattr has no dir_fd form: name the entry through its directory's descriptor.
            self._xattrs(f"/proc/self/fd/{pfd}/{base}", info)
        if not symlink:
            # Linux has no lchmod; the entry was just made by us and is not a symlink.
            os.chmod(base, self._file_mode(info), dir_fd=pfd)
        os.utime(base, ns=entry_times(info), dir_fd=pfd, follow_symlinks=False)


__all__ = ["DiskTree", "TreeWriter", "entry_times", "entry_xattrs"]
