"""Applying layer entries to a tree, with OCI whiteout semantics.

Every entry's parent is resolved inside the root (symlinks followed, confined), the entry
itself is never followed: an existing entry is replaced, except a directory over a
directory, which merges. Whiteouts (``.wh.NAME``) and opaque markers (``.wh..wh..opq``)
hide what lower layers put there, never what the same layer adds (OCI image spec).
"""

from __future__ import annotations

import base64
import binascii
import errno
import logging
import os
import stat
import tarfile
import urllib.parse
from decimal import Decimal, InvalidOperation
from typing import Callable, Optional, Union

from ._compression import Readable
from ._errors import UnsafeLayerError
from ._paths import Path, Root, clean_name, lstat_at, remove_at

log = logging.getLogger("containers_image_proxy.layers")

WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"
_CHUNK = 1024 * 1024
_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _pax_ns(value: Optional[str]) -> Optional[int]:
    if value is None:
        return None
    try:
        return int(Decimal(value) * 1_000_000_000)
    except (InvalidOperation, ValueError):
        return None


def entry_times(info: tarfile.TarInfo) -> tuple[int, int]:
    """(atime, mtime) in nanoseconds, with PAX precision when the header has it."""
    mtime = _pax_ns(info.pax_headers.get("mtime"))
    if mtime is None:
        mtime = int(Decimal(str(info.mtime)) * 1_000_000_000)
    atime = _pax_ns(info.pax_headers.get("atime"))
    return (mtime if atime is None else atime), mtime


def entry_xattrs(info: tarfile.TarInfo) -> dict[str, bytes]:
    """Extended attributes carried in PAX headers (SCHILY.xattr.*, LIBARCHIVE.xattr.*)."""
    out: dict[str, bytes] = {}
    for key, value in info.pax_headers.items():
        if key.startswith("SCHILY.xattr."):
            # tarfile decoded the value as UTF-8 with surrogateescape: this gives the bytes back.
            out[key[len("SCHILY.xattr.") :]] = value.encode("utf-8", "surrogateescape")
        elif key.startswith("LIBARCHIVE.xattr."):
            name = urllib.parse.unquote(key[len("LIBARCHIVE.xattr.") :])
            try:
                out[name] = base64.b64decode(value + "=" * (-len(value) % 4))
            except (binascii.Error, ValueError):
                log.debug("%s: undecodable xattr %s", info.name, name)
    return out


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


class TreeWriter:
    """Applies layers, in order, to the tree under ``root``.

    Directory modes and times are applied by :meth:`finish` once every layer is in:
    children written later would change a directory's mtime, and a read-only directory
    must stay writable (to its owner) while layers still go in. ``rootless`` keeps the
    tree but not the ownership (everything belongs to the caller); devices are then not
    created. Without ``rootless`` ownership is applied, which needs root.
    """

    def __init__(self, root: Root, *, rootless: bool = False) -> None:
        self._root = root
        self._rootless = rootless
        self._dirs: dict[Path, tuple[int, int, int]] = {}
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

    def apply(self, info: tarfile.TarInfo, data: Optional[Readable] = None) -> None:
        """Apply one entry; ``data`` is a regular file's content."""
        name = info.name
        try:
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
        """Apply directory modes and times (deepest first), after the last layer."""
        for path in sorted(self._dirs, key=len, reverse=True):
            mode, atime, mtime = self._dirs[path]
            fd = self._root.open_real_dir(path)
            if fd is None:
                continue
            try:
                os.fchmod(fd, mode)
                os.utime(fd, ns=(atime, mtime))
            finally:
                os.close(fd)

    # --- bookkeeping ----------------------------------------------------------------------

    def _add_upper(self, path: Path) -> None:
        self._upper.add(path)
        for i in range(len(path)):
            self._upper_parents.add(path[:i])

    def _implicit_dir(self, fd: int, path: Path) -> None:
        self._add_upper(path)

    def _keeper(self, base: Path) -> Optional[Callable[[str], bool]]:
        if not self._upper:
            return None

        def keep(rel: str) -> bool:
            path = base + tuple(rel.split("/")) if rel else base
            return path in self._upper or path in self._upper_parents

        return keep

    def _forget_removed(self, base: Path) -> None:
        """Drop directory records under ``base`` whose directory is gone."""
        n = len(base)
        for path in [p for p in self._dirs if p[:n] == base]:
            fd = self._root.open_real_dir(path)
            if fd is None:
                del self._dirs[path]
            else:
                os.close(fd)

    def _remove(self, dir_fd: int, name: str, path: Path, keep: bool) -> None:
        remove_at(dir_fd, name, self._keeper(path) if keep else None)
        self._forget_removed(path)

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
        data: Optional[Readable],
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
            if not info.linkname or "\0" in info.linkname:
                raise UnsafeLayerError(info.name, "symlink with no valid target")
            os.symlink(info.linkname, base, dir_fd=pfd)
            self._meta_at(pfd, base, info, symlink=True)
        elif info.isfifo():
            os.mkfifo(base, 0o600, dir_fd=pfd)
            self._meta_at(pfd, base, info, symlink=False)
        elif info.ischr() or info.isblk():
            self._device(pfd, base, info)
        else:
            raise UnsafeLayerError(info.name, f"unsupported tar entry type {info.type!r}")

    def _regular(
        self, pfd: int, base: str, info: tarfile.TarInfo, data: Optional[Readable]
    ) -> None:
        fd = os.open(base, _FILE_FLAGS, 0o600, dir_fd=pfd)
        try:
            if data is not None:
                while True:
                    chunk = data.read(_CHUNK)
                    if not chunk:
                        break
                    _write_all(fd, chunk)
            self._owner_fd(fd, info)
            self._xattrs(fd, info)
            os.fchmod(fd, info.mode & 0o7777)
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

    def _owner_fd(self, fd: int, info: tarfile.TarInfo) -> None:
        if not self._rootless:
            os.fchown(fd, info.uid, info.gid)

    def _xattrs(self, target: Union[int, str], info: tarfile.TarInfo) -> None:
        for key, value in entry_xattrs(info).items():
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
        self._dirs[path] = (mode, atime, mtime)

    def _meta_at(self, pfd: int, base: str, info: tarfile.TarInfo, *, symlink: bool) -> None:
        if not self._rootless:
            os.chown(base, info.uid, info.gid, dir_fd=pfd, follow_symlinks=False)
        if entry_xattrs(info):
            # setxattr has no dir_fd form: name the entry through its directory's descriptor.
            self._xattrs(f"/proc/self/fd/{pfd}/{base}", info)
        if not symlink:
            # Linux has no lchmod; the entry was just made by us and is not a symlink.
            os.chmod(base, info.mode & 0o7777, dir_fd=pfd)
        os.utime(base, ns=entry_times(info), dir_fd=pfd, follow_symlinks=False)


__all__ = ["TreeWriter", "entry_times", "entry_xattrs"]
