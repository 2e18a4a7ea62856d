"""Applying layer entries to a tree, with OCI whiteout semantics.

Every entry's parent is resolved inside the root (symlinks followed, confined), the entry
itself is never followed: an existing entry is replaced, except a directory over a
directory, which merges. Whiteouts (``.wh.NAME``) and opaque markers (``.wh..wh..opq``)
hide what lower layers put there, never what the same layer adds (OCI image spec).
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import tarfile
from typing import Any, Callable, Optional, Union

from ._content import data_fragments, write_fragments
from ._errors import UnsafeLayerError
from ._meta import CAPABILITY_XATTR, check_entry, entry_times, entry_xattrs
from ._paths import DirChain, Path, Root, check_link_target, clean_name, lstat_at, remove_at

log = logging.getLogger("containers_image_proxy.layers")

WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"
_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_SETID = stat.S_ISUID | stat.S_ISGID


class TreeWriter:
    """Applies layers, in order, to the tree under ``root``.

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
        self._upper: set[Path] = set()
        self._upper_parents: set[Path] = set()
        self.layer = ""
        self.skipped: list[str] = []

    # --- layers -------------------------------------------------------------------------

    def begin_layer(self, layer: str = "") -> None:
        """Start a layer (``layer`` names it in errors)."""
        self.layer = layer
        self._upper.clear()
        self._upper_parents.clear()

    def apply(self, info: tarfile.TarInfo, data: Any = None) -> None:
        """Apply one entry; ``data`` is a regular file's content (see ``data_fragments``)."""
        name = info.name
        try:
            check_entry(info)
            path = clean_name(name)
            if path and path[-1].startswith(WHITEOUT_PREFIX):
                self._whiteout(path, name)
            elif not path:
                if not info.isdir():
                    raise UnsafeLayerError(name, "a non-directory cannot replace the root")
                self._root_dir(info)
            else:
                res = self._root.resolve_dir(
                    path[:-1], entry=name, create=True, on_create=self._implicit_dir
                )
                assert res is not None
                pfd, parent = res
                try:
                    self._create(pfd, parent, path[-1], info, data)
                finally:
                    os.close(pfd)
        except UnsafeLayerError as e:
            raise e.with_layer(self.layer) from e.__cause__
        except OSError as e:
            if e.errno in (errno.ENAMETOOLONG, errno.EILSEQ):
                raise UnsafeLayerError(name, f"not a valid name ({e.strerror})", self.layer) from e
            raise

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

    # --- bookkeeping ----------------------------------------------------------------------

    def _add_upper(self, path: Path) -> None:
        self._upper.add(path)
        for i in range(len(path) - 1, -1, -1):
            prefix = path[:i]
            if prefix in self._upper_parents:
                break  # and so are all of its own prefixes
            self._upper_parents.add(prefix)

    def _implicit_dir(self, fd: int, path: Path) -> None:
        self._add_upper(path)

    def _keeper(self, base: Path) -> Optional[Callable[[str], bool]]:
        if not self._upper:
            return None

        def keep(rel: str) -> bool:
            path = base + tuple(rel.split("/")) if rel else base
            return path in self._upper or path in self._upper_parents

        return keep

    def _record_dir(self, path: Path, meta: tuple[int, int, int]) -> None:
        if path not in self._dirs:
            for i in range(len(path) - 1, -1, -1):
                kids = self._dir_kids.setdefault(path[:i], set())
                if path[i] in kids:
                    break
                kids.add(path[i])
        self._dirs[path] = meta

    def _forget_removed(self, base: Path, keep: bool) -> None:
        """Drop the records of directories that removing ``base`` took away.

        What :func:`remove_at` spares with the keeper of :meth:`_keeper` is what this
        spares: an entry goes unless it and every directory between it and ``base`` were
        written by the current layer (or lead to what it wrote).
        """
        spared = keep and bool(self._upper)
        todo = [base]
        while todo:
            path = todo.pop()
            if spared and (path in self._upper or path in self._upper_parents):
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

    def _remove(self, dir_fd: int, name: str, path: Path, keep: bool) -> None:
        remove_at(dir_fd, name, self._keeper(path) if keep else None)
        self._forget_removed(path, keep)

    # --- whiteouts -----------------------------------------------------------------------

    def _whiteout(self, path: Path, name: str) -> None:
        base = path[-1]
        if base != OPAQUE_MARKER and base.startswith(WHITEOUT_PREFIX + WHITEOUT_PREFIX):
            return  # AUFS bookkeeping (.wh..wh.plnk and the like), not a whiteout
        victim = base[len(WHITEOUT_PREFIX) :]
        if base != OPAQUE_MARKER and victim in ("", ".", ".."):
            raise UnsafeLayerError(name, "whiteout names no entry, or the directory above it")
        res = self._root.resolve_dir(path[:-1], entry=name)
        if res is None:
            return  # nothing there to hide
        fd, parent = res
        try:
            if base == OPAQUE_MARKER:
                for child in os.listdir(fd):
                    self._remove(fd, child, (*parent, child), keep=True)
            else:
                self._remove(fd, victim, (*parent, victim), keep=True)
        finally:
            os.close(fd)

    # --- entries -------------------------------------------------------------------------

    def _root_dir(self, info: tarfile.TarInfo) -> None:
        fd = os.dup(self._root.fd)
        try:
            self._dir_meta(fd, (), info)
        finally:
            os.close(fd)

    def _link_target(self, info: tarfile.TarInfo) -> tuple[int, str, Path]:
        """The directory descriptor, name and real path of a hardlink's target."""
        name = info.name
        target = clean_name(info.linkname, entry=name)
        if not target:
            raise UnsafeLayerError(name, "hardlink to the root directory")
        res = self._root.resolve_dir(target[:-1], entry=name)
        if res is None:
            raise UnsafeLayerError(name, f"hardlink target {info.linkname!r} is not in the tree")
        fd, parent = res
        st = lstat_at(fd, target[-1])
        if st is None or stat.S_ISDIR(st.st_mode):
            os.close(fd)
            what = "is not in the tree" if st is None else "is a directory"
            raise UnsafeLayerError(name, f"hardlink target {info.linkname!r} {what}")
        return fd, target[-1], (*parent, target[-1])

    def _create(
        self,
        pfd: int,
        parent: Path,
        base: str,
        info: tarfile.TarInfo,
        data: Any,
    ) -> None:
        path = (*parent, base)
        st = lstat_at(pfd, base)
        if info.islnk():
            tfd, tbase, tpath = self._link_target(info)
            try:
                if tpath == path:
                    self._add_upper(path)
                    return  # a link to itself: the file is already there
                if st is not None:
                    self._remove(pfd, base, path, keep=False)
                if lstat_at(tfd, tbase) is None:
                    raise UnsafeLayerError(
                        info.name, f"hardlink target {info.linkname!r} was removed by the entry"
                    )
                os.link(tbase, base, src_dir_fd=tfd, dst_dir_fd=pfd, follow_symlinks=False)
            finally:
                os.close(tfd)
            self._add_upper(path)
            return
        if st is not None:
            if info.isdir() and stat.S_ISDIR(st.st_mode):
                fd = os.open(base, _DIR_FLAGS, dir_fd=pfd)
                try:
                    self._dir_meta(fd, path, info)
                finally:
                    os.close(fd)
                self._add_upper(path)
                return
            self._remove(pfd, base, path, keep=False)
        self._add_upper(path)
        if info.isreg():
            self._regular(pfd, base, info, data)
        elif info.isdir():
            os.mkdir(base, 0o700, dir_fd=pfd)
            fd = os.open(base, _DIR_FLAGS, dir_fd=pfd)
            try:
                self._dir_meta(fd, path, info)
            finally:
                os.close(fd)
        elif info.issym():
            check_link_target(info.linkname, info.name)
            os.symlink(info.linkname, base, dir_fd=pfd)
            self._meta_at(pfd, base, info, symlink=True)
        elif info.isfifo():
            os.mkfifo(base, 0o600, dir_fd=pfd)
            self._meta_at(pfd, base, info, symlink=False)
        elif info.ischr() or info.isblk():
            self._device(pfd, base, info)
        else:
            raise UnsafeLayerError(info.name, f"unsupported tar entry type {info.type!r}")

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


__all__ = ["TreeWriter", "entry_times", "entry_xattrs"]
