"""The OCI layer rules, written once, over a tree held on disk or in memory.

:class:`LayerRules` applies a layer's entries, in order, to a tree that a backend holds
(:class:`TreeBackend`): ``_apply.DiskTree`` writes it under a directory through
descriptors, ``_listing.MemoryTree`` keeps it as metadata. The rules, as the OCI image
spec and the runtimes apply them:

- Every entry's parent is resolved inside the root, symlinks followed (by the backend,
  confined); missing parents are created as implied directories. The entry itself is never
  followed.
- An entry replaces what is there, except a directory over a directory, which merges
  (the new metadata, the children kept). Nothing but a directory replaces the root.
- A whiteout (``.wh.NAME``) removes NAME and what is under it, an opaque marker
  (``.wh..wh..opq``) everything in its directory, but never what the same layer wrote
  (nor the directories leading to it). AUFS bookkeeping names (``.wh..wh.*``) are skipped.
- A hardlink names a non-directory already in the tree (its target is resolved like a
  parent); linking a name to itself keeps the file.
"""

from __future__ import annotations

import errno
import tarfile
from typing import Any, Callable, Generic, Optional, Protocol, TypeVar

from ._errors import UnsafeLayerError
from ._meta import check_entry
from ._paths import Path, check_link_target, clean_name

WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"

FILE, DIR, SYMLINK, FIFO, CHAR, BLOCK = "file", "dir", "symlink", "fifo", "char", "block"

H = TypeVar("H")
Keep = Callable[[Path], bool]


def entry_kind(info: tarfile.TarInfo) -> Optional[str]:
    """The kind of tree entry a tar entry makes (None: not one a layer may hold)."""
    if info.isreg():
        return FILE
    if info.isdir():
        return DIR
    if info.issym():
        return SYMLINK
    if info.isfifo():
        return FIFO
    if info.ischr():
        return CHAR
    if info.isblk():
        return BLOCK
    return None


class TreeBackend(Protocol[H]):
    """A tree the rules are applied to; ``H`` is its handle on a directory.

    Paths are real paths (tuples of names from the root, no symlink in them). A handle
    from :meth:`resolve_dir` is given back with :meth:`release`.
    """

    def begin_layer(self, layer: str) -> None:
        """A new layer starts (``layer`` names it in errors and entries)."""

    def check(self, info: tarfile.TarInfo) -> None:
        """The backend's own checks of an entry, before the rules apply it."""

    def resolve_dir(
        self, path: Path, *, entry: str, create: bool, on_create: Callable[[Path], None]
    ) -> Optional[tuple[H, Path]]:
        """The directory ``path`` names (symlinks followed inside the root), and its real
        path. Missing components are created when ``create`` (``on_create`` told of each);
        otherwise a missing component or a non-directory gives None. Raises
        UnsafeLayerError naming ``entry`` for a symlink loop, and with ``create`` for a
        component that is not a directory."""

    def release(self, handle: H) -> None:
        """Give back a handle from :meth:`resolve_dir`."""

    def lookup(self, parent: H, name: str) -> Optional[str]:
        """The kind of ``name`` in ``parent`` (only ``DIR`` matters), None when absent."""

    def names(self, parent: H) -> list[str]:
        """The names in directory ``parent``."""

    def remove(self, parent: H, name: str, path: Path, keep: Optional[Keep]) -> None:
        """Remove ``name`` (at ``path``) and what is under it; what ``keep`` says (by real
        path) is spared, with the directories above it. A missing name is no error."""

    def set_root(self, info: tarfile.TarInfo, mtime: int) -> None:
        """Give the root the metadata of directory entry ``info``."""

    def merge_dir(
        self, parent: H, name: str, path: Path, info: tarfile.TarInfo, mtime: int
    ) -> None:
        """Give the existing directory ``name`` the metadata of ``info``."""

    def create(
        self,
        parent: H,
        name: str,
        path: Path,
        kind: str,
        info: tarfile.TarInfo,
        data: Any,
        mtime: int,
    ) -> None:
        """Create ``name`` (absent) of ``kind`` from ``info`` (``data``: a file's content)."""

    def link(self, target_parent: H, target: str, parent: H, name: str, path: Path) -> None:
        """Make ``name`` (absent) another name of the non-directory ``target``."""


class LayerRules(Generic[H]):
    """Applies layers, in order, to the tree ``backend`` holds (the rules of the module)."""

    def __init__(self, backend: TreeBackend[H]) -> None:
        self.backend = backend
        self.layer = ""
        # Real paths the current layer wrote (and their parents): whiteouts spare them.
        self._upper: set[Path] = set()
        self._upper_parents: set[Path] = set()

    def begin_layer(self, layer: str = "") -> None:
        """Start a layer (``layer`` names it in errors and entries)."""
        self.layer = layer
        self._upper.clear()
        self._upper_parents.clear()
        self.backend.begin_layer(layer)

    def apply(self, info: tarfile.TarInfo, data: Any = None) -> None:
        """Apply one entry of the current layer; ``data`` is a regular file's content
        where the backend writes it. Raises UnsafeLayerError (naming the layer) for an
        entry that cannot be honoured inside the root."""
        name = info.name
        try:
            _, mtime = check_entry(info)
            self.backend.check(info)
            path = clean_name(name)
            if path and path[-1].startswith(WHITEOUT_PREFIX):
                self._whiteout(path, name)
            elif not path:
                if not info.isdir():
                    raise UnsafeLayerError(name, "a non-directory cannot replace the root")
                self.backend.set_root(info, mtime)
            else:
                found = self.backend.resolve_dir(
                    path[:-1], entry=name, create=True, on_create=self._add_upper
                )
                assert found is not None
                parent, real = found
                try:
                    self._create(parent, (*real, path[-1]), info, data, mtime)
                finally:
                    self.backend.release(parent)
        except UnsafeLayerError as e:
            raise e.with_layer(self.layer) from e.__cause__
        except OSError as e:
            if e.errno in (errno.ENAMETOOLONG, errno.EILSEQ):
                raise UnsafeLayerError(name, f"not a valid name ({e.strerror})", self.layer) from e
            raise

    # --- what the current layer wrote ------------------------------------------------------

    def _add_upper(self, path: Path) -> None:
        self._upper.add(path)
        for i in range(len(path) - 1, -1, -1):
            prefix = path[:i]
            if prefix in self._upper_parents:
                break  # and so are all of its own prefixes
            self._upper_parents.add(prefix)

    def _keeper(self) -> Optional[Keep]:
        if not self._upper:
            return None
        upper, parents = self._upper, self._upper_parents
        return lambda path: path in upper or path in parents

    # --- the rules -------------------------------------------------------------------------

    def _whiteout(self, path: Path, name: str) -> None:
        base = path[-1]
        if base != OPAQUE_MARKER and base.startswith(WHITEOUT_PREFIX + WHITEOUT_PREFIX):
            return  # AUFS bookkeeping (.wh..wh.plnk and the like), not a whiteout
        victim = base[len(WHITEOUT_PREFIX) :]
        if base != OPAQUE_MARKER and victim in ("", ".", ".."):
            raise UnsafeLayerError(name, "whiteout names no entry, or the directory above it")
        found = self.backend.resolve_dir(
            path[:-1], entry=name, create=False, on_create=self._add_upper
        )
        if found is None:
            return  # nothing there to hide
        parent, real = found
        try:
            victims = self.backend.names(parent) if base == OPAQUE_MARKER else [victim]
            for child in victims:
                self.backend.remove(parent, child, (*real, child), self._keeper())
        finally:
            self.backend.release(parent)

    def _create(self, parent: H, path: Path, info: tarfile.TarInfo, data: Any, mtime: int) -> None:
        if info.islnk():
            self._hardlink(parent, path, info)
            return
        base = path[-1]
        existing = self.backend.lookup(parent, base)
        if existing is not None:
            if info.isdir() and existing == DIR:
                self.backend.merge_dir(parent, base, path, info, mtime)
                self._add_upper(path)
                return
            self.backend.remove(parent, base, path, None)
        self._add_upper(path)
        kind = entry_kind(info)
        if kind is None:
            raise UnsafeLayerError(info.name, f"unsupported tar entry type {info.type!r}")
        if kind == SYMLINK:
            check_link_target(info.linkname, info.name)
        self.backend.create(parent, base, path, kind, info, data, mtime)

    def _hardlink(self, parent: H, path: Path, info: tarfile.TarInfo) -> None:
        tparent, tbase, tpath = self._link_target(info)
        try:
            if tpath != path:  # else a link to itself: the file is already there
                self.backend.remove(parent, path[-1], path, None)
                if self.backend.lookup(tparent, tbase) is None:
                    raise UnsafeLayerError(
                        info.name, f"hardlink target {info.linkname!r} was removed by the entry"
                    )
                self.backend.link(tparent, tbase, parent, path[-1], path)
        finally:
            self.backend.release(tparent)
        self._add_upper(path)

    def _link_target(self, info: tarfile.TarInfo) -> tuple[H, str, Path]:
        """The directory handle, name and real path of a hardlink's target."""
        name = info.name
        target = clean_name(info.linkname, entry=name)
        if not target:
            raise UnsafeLayerError(name, "hardlink to the root directory")
        found = self.backend.resolve_dir(
            target[:-1], entry=name, create=False, on_create=self._add_upper
        )
        if found is None:
            raise UnsafeLayerError(name, f"hardlink target {info.linkname!r} is not in the tree")
        tparent, real = found
        kind = self.backend.lookup(tparent, target[-1])
        if kind is None or kind == DIR:
            self.backend.release(tparent)
            what = "is not in the tree" if kind is None else "is a directory"
            raise UnsafeLayerError(name, f"hardlink target {info.linkname!r} {what}")
        return tparent, target[-1], (*real, target[-1])


__all__ = ["LayerRules", "TreeBackend", "entry_kind"]
