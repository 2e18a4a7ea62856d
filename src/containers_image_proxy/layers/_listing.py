"""Listing a directory of an image's merged filesystem, without unpacking it.

The layers are applied bottom first to a tree held in memory that keeps each entry's
metadata (type, mode, owner, size, time, link target) and no file content, with the same
rules as :func:`unpack` (see ``_apply.TreeWriter``): a parent is resolved through symlinks
inside the root, an entry replaces what was there except a directory over a directory,
whiteouts and opaque markers hide what lower layers put there but never what the same layer
adds, hardlinks share the node they link to. Every layer is read to its end and checked
against its diff_id, as unpack does, so a listing is of verified content.

Memory is one small object per entry of the merged tree; nothing is written to disk.
"""

from __future__ import annotations

import dataclasses
import errno
import stat
import tarfile
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Optional

from .._errors import ConfigurationError
from ._apply import OPAQUE_MARKER, WHITEOUT_PREFIX
from ._content import sparse_map
from ._errors import UnsafeLayerError
from ._meta import check_entry
from ._paths import MAX_SYMLINKS, Path, check_depth, check_link_target, clean_name, join
from ._source import (
    AsyncProxy,
    Bridge,
    LayerSource,
    SyncProxy,
    async_sources,
    close_blob,
    run_in_worker,
    sync_sources,
)
from ._tarstream import LayerStream

FILE, DIR, SYMLINK, FIFO, CHAR, BLOCK = "file", "dir", "symlink", "fifo", "char", "block"

_TYPE_BITS = {
    FILE: stat.S_IFREG,
    DIR: stat.S_IFDIR,
    SYMLINK: stat.S_IFLNK,
    FIFO: stat.S_IFIFO,
    CHAR: stat.S_IFCHR,
    BLOCK: stat.S_IFBLK,
}


@dataclass(frozen=True)
class DirEntry:
    """One entry of a directory listing of an image's merged filesystem.

    ``path`` is the entry's absolute path in the image, symlinks above it resolved;
    ``kind`` one of ``"file"``, ``"dir"``, ``"symlink"``, ``"fifo"``, ``"char"``,
    ``"block"``; ``mode`` the permission bits (``st_mode`` gives type and permissions, as
    ``os.stat`` does); ``size`` a regular file's size (0 otherwise); ``mtime`` seconds since
    the epoch; ``linkname`` a symlink's target; ``device`` (major, minor) of a device node;
    ``nlink`` how many names the merged tree has for the same file (hardlinks); ``layer``
    the digest of the layer that wrote the entry last.
    """

    name: str
    path: str
    kind: str
    mode: int
    uid: int
    gid: int
    size: int
    mtime: float
    linkname: str = ""
    device: tuple[int, int] = (0, 0)
    nlink: int = 1
    layer: str = ""

    @property
    def st_mode(self) -> int:
        """File type and permission bits, as in ``os.stat_result.st_mode``."""
        return _TYPE_BITS[self.kind] | self.mode

    def to_json(self) -> dict[str, Any]:
        """The entry as JSON data (what ``ls --json`` prints): one member per field, same
        names and values (``mode`` the permission bits as an integer, ``device`` a list)."""
        out: dict[str, Any] = {}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            out[field.name] = list(value) if isinstance(value, tuple) else value
        return out


class _Node:
    """An entry of the in-memory tree; hardlinked names share one node."""

    __slots__ = (
        "children",
        "device",
        "gid",
        "kind",
        "layer",
        "linkname",
        "mode",
        "mtime",
        "nlink",
        "size",
        "uid",
    )

    def __init__(
        self, kind: str, info: Optional[tarfile.TarInfo], layer: str, mtime_ns: int = 0
    ) -> None:
        self.kind = kind
        self.children: Optional[dict[str, _Node]] = {} if kind == DIR else None
        self.nlink = 0
        self.mode, self.uid, self.gid, self.mtime = 0o755, 0, 0, 0.0
        self.size, self.linkname, self.device, self.layer = 0, "", (0, 0), layer
        if info is not None:
            self.set_meta(info, layer, mtime_ns)

    def set_meta(self, info: tarfile.TarInfo, layer: str, mtime_ns: int) -> None:
        self.mode = info.mode & 0o7777
        self.uid, self.gid = info.uid, info.gid
        self.mtime = mtime_ns / 1e9  # checked and clamped as unpack applies it
        self.layer = layer
        if self.kind == FILE:
            self.size = info.size
        elif self.kind == SYMLINK:
            self.linkname = info.linkname
        elif self.kind in (CHAR, BLOCK):
            self.device = (info.devmajor, info.devminor)


def _kind(info: tarfile.TarInfo) -> Optional[str]:
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


class MergedTree:
    """The merged filesystem of some layers, as metadata: apply layers, then look up."""

    def __init__(self) -> None:
        self.root = _Node(DIR, None, "")
        self.root.nlink = 1
        self.layer = ""
        # Real paths the current layer wrote (and their parents): whiteouts spare them.
        self._upper: set[Path] = set()
        self._upper_parents: set[Path] = set()

    # --- applying layers -----------------------------------------------------------------

    def begin_layer(self, layer: str) -> None:
        """Start applying a layer (``layer`` names it in errors and in entries)."""
        self.layer = layer
        self._upper.clear()
        self._upper_parents.clear()

    def apply(self, info: tarfile.TarInfo) -> None:
        """Apply one tar entry of the current layer."""
        name = info.name
        try:
            _, mtime = check_entry(info)
            if info.isreg():
                sparse_map(info, self.layer)
            path = clean_name(name)
            if path and path[-1].startswith(WHITEOUT_PREFIX):
                self._whiteout(path, name)
            elif not path:
                if not info.isdir():
                    raise UnsafeLayerError(name, "a non-directory cannot replace the root")
                self.root.set_meta(info, self.layer, mtime)
            else:
                found = self._walk(path[:-1], entry=name, create=True, follow_final=True)
                assert found is not None
                parent, parent_path = found
                self._create(parent, parent_path, path[-1], info, mtime)
        except UnsafeLayerError as e:
            raise e.with_layer(self.layer) from e.__cause__

    def _add_upper(self, path: Path) -> None:
        self._upper.add(path)
        for i in range(len(path) - 1, -1, -1):
            prefix = path[:i]
            if prefix in self._upper_parents:
                break  # and so are all of its own prefixes
            self._upper_parents.add(prefix)

    def _walk(
        self, path: Sequence[str], *, entry: str, create: bool, follow_final: bool
    ) -> Optional[tuple[_Node, Path]]:
        """The node ``path`` names and its real path, symlinks followed inside the root.

        Missing directories are created when ``create`` (then a component that is not a
        directory raises UnsafeLayerError); otherwise a missing component gives None and
        one that is not a directory raises NotADirectoryError. The final component is
        followed if it is a symlink only with ``follow_final``.
        """
        todo: deque[str] = deque(path)
        nodes: list[_Node] = [self.root]
        real: list[str] = []
        links = 0
        while todo:
            part = todo.popleft()
            if part in ("", "."):
                continue
            if part == "..":
                if real:
                    real.pop()
                    nodes.pop()
                continue
            cur = nodes[-1]
            if cur.children is None:
                if create:
                    raise UnsafeLayerError(entry, f"{join(tuple(real))} is not a directory")
                raise NotADirectoryError(errno.ENOTDIR, "not a directory", "/" + join(tuple(real)))
            node = cur.children.get(part)
            last = not any(p not in ("", ".") for p in todo)
            if node is not None and node.kind == SYMLINK and (follow_final or not last):
                links += 1
                if links > MAX_SYMLINKS:
                    if create:
                        raise UnsafeLayerError(entry, "too many levels of symbolic links")
                    raise OSError(errno.ELOOP, "too many levels of symbolic links", entry)
                if node.linkname.startswith("/"):
                    # Absolute targets point into the image's root, not the host's.
                    del nodes[1:]
                    real.clear()
                todo.extendleft(reversed(node.linkname.split("/")))
                continue
            if node is None:
                if not create:
                    return None
                check_depth((*real, part), entry)  # as unpack refuses to create it
                node = _Node(DIR, None, self.layer)
                node.nlink = 1
                cur.children[part] = node
                self._add_upper((*real, part))
            nodes.append(node)
            real.append(part)
        if create and nodes[-1].children is None:
            # a parent being made for an entry is a file (or device ...): as unpack says
            raise UnsafeLayerError(entry, f"{join(tuple(real))} is not a directory")
        return nodes[-1], tuple(real)

    def _remove(self, parent: _Node, name: str, path: Path, keep: bool) -> None:
        """Remove ``name`` and what is under it; with ``keep``, spare the current layer's."""
        todo = [(parent, name, path)]
        while todo:  # no recursion: a layer's tree can be as deep as PATH_MAX allows
            parent, name, path = todo.pop()
            assert parent.children is not None
            node = parent.children.get(name)
            if node is None:
                continue
            if keep and (path in self._upper or path in self._upper_parents):
                if node.children is not None:
                    todo.extend((node, child, (*path, child)) for child in node.children)
                continue
            del parent.children[name]
            node.nlink -= 1

    def _whiteout(self, path: Path, name: str) -> None:
        base = path[-1]
        if base != OPAQUE_MARKER and base.startswith(WHITEOUT_PREFIX + WHITEOUT_PREFIX):
            return  # AUFS bookkeeping (.wh..wh.plnk and the like), not a whiteout
        victim = base[len(WHITEOUT_PREFIX) :]
        if base != OPAQUE_MARKER and victim in ("", ".", ".."):
            raise UnsafeLayerError(name, "whiteout names no entry, or the directory above it")
        try:
            found = self._walk(path[:-1], entry=name, create=False, follow_final=True)
        except (NotADirectoryError, OSError):
            return  # nothing there to hide (unpack finds no directory either)
        if found is None:
            return
        node, real = found
        if node.children is None:
            return
        if base == OPAQUE_MARKER:
            for child in list(node.children):
                self._remove(node, child, (*real, child), keep=True)
        else:
            self._remove(node, victim, (*real, victim), keep=True)

    def _link_target(self, info: tarfile.TarInfo) -> tuple[_Node, str, Path]:
        name = info.name
        target = clean_name(info.linkname, entry=name)
        if not target:
            raise UnsafeLayerError(name, "hardlink to the root directory")
        try:
            found = self._walk(target[:-1], entry=name, create=False, follow_final=True)
        except (NotADirectoryError, OSError):
            found = None
        node = None
        if found is not None and found[0].children is not None:
            node = found[0].children.get(target[-1])
        if found is None or node is None or node.kind == DIR:
            what = "is a directory" if node is not None else "is not in the tree"
            raise UnsafeLayerError(name, f"hardlink target {info.linkname!r} {what}")
        return found[0], target[-1], (*found[1], target[-1])

    def _create(
        self, parent: _Node, parent_path: Path, base: str, info: tarfile.TarInfo, mtime: int
    ) -> None:
        assert parent.children is not None
        path = (*parent_path, base)
        existing = parent.children.get(base)
        if info.islnk():
            tparent, tbase, tpath = self._link_target(info)
            if tpath == path:
                self._add_upper(path)
                return  # a link to itself: the file is already there
            if existing is not None:
                self._remove(parent, base, path, keep=False)
            assert tparent.children is not None
            target = tparent.children.get(tbase)
            if target is None:
                raise UnsafeLayerError(
                    info.name, f"hardlink target {info.linkname!r} was removed by the entry"
                )
            parent.children[base] = target
            target.nlink += 1
            self._add_upper(path)
            return
        if existing is not None:
            if info.isdir() and existing.kind == DIR:
                existing.set_meta(info, self.layer, mtime)  # a directory over a directory merges
                self._add_upper(path)
                return
            self._remove(parent, base, path, keep=False)
        kind = _kind(info)
        if kind is None:
            raise UnsafeLayerError(info.name, f"unsupported tar entry type {info.type!r}")
        if kind == SYMLINK:
            check_link_target(info.linkname, info.name)
        node = _Node(kind, info, self.layer, mtime)
        node.nlink = 1
        parent.children[base] = node
        self._add_upper(path)

    # --- looking up ----------------------------------------------------------------------

    def list(self, path: str = "/") -> list[DirEntry]:
        """The entries of directory ``path``, sorted by name; a non-directory lists itself.

        Symlinks are followed inside the image's root, the last component included.
        Raises FileNotFoundError when the merged tree has no such path, NotADirectoryError
        when a component above the last is not a directory.
        """
        if not isinstance(path, str) or "\0" in path:
            raise ConfigurationError(f"not a valid path: {path!r}")
        # Not cleaned lexically: ".." is resolved as the walk meets it, as the kernel does.
        found = self._walk(path.split("/"), entry=path, create=False, follow_final=True)
        if found is None:
            raise FileNotFoundError(errno.ENOENT, "no such file or directory in the image", path)
        node, real = found
        if node.children is None:
            parent = real[:-1]
            return [self._entry(real[-1] if real else "/", parent, node)]
        return [self._entry(name, real, node.children[name]) for name in sorted(node.children)]

    @staticmethod
    def _entry(name: str, parent: Path, node: _Node) -> DirEntry:
        return DirEntry(
            name=name,
            path="/" + "/".join((*parent, name)),
            kind=node.kind,
            mode=node.mode,
            uid=node.uid,
            gid=node.gid,
            size=node.size,
            mtime=node.mtime,
            linkname=node.linkname,
            device=node.device,
            nlink=max(1, node.nlink),
            layer=node.layer,
        )


def merge_layers(sources: Sequence[LayerSource]) -> MergedTree:
    """Read every layer of ``sources`` (bottom first), verified, into a :class:`MergedTree`."""
    tree = MergedTree()
    for src in sources:
        blob = src.open()
        failed = True
        try:
            stream = LayerStream(blob, src.media_type, diff_id=src.diff_id, layer=src.digest)
            tree.begin_layer(src.digest)
            for info, _data in stream:
                tree.apply(info)  # the data is skipped by the stream on the next entry
            stream.finish()
            failed = False
        finally:
            close_blob(blob, failed)
    return tree


def list_dir_from_layers(sources: Sequence[LayerSource], path: str = "/") -> list[DirEntry]:
    """List directory ``path`` of the merged filesystem of ``sources`` (bottom first).

    The engine of :func:`list_dir`. Raises FileNotFoundError when there is no such path.
    """
    return merge_layers(sources).list(path)


def list_dir(proxy: SyncProxy, image: Any, path: str = "/") -> list[DirEntry]:
    """List directory ``path`` of ``image``'s merged filesystem (an OpenedImage of ``proxy``).

    Example::

        for entry in list_dir(proxy, img, "/etc"):
            print(entry.kind, entry.size, entry.name)

    Every layer is read whole and checked against its diff_id; nothing is written to disk.
    A path that is not a directory lists itself. Raises FileNotFoundError when the merged
    filesystem has no such path.
    """
    return list_dir_from_layers(sync_sources(proxy, image), path)


async def list_dir_async(proxy: AsyncProxy, image: Any, path: str = "/") -> list[DirEntry]:
    """The async twin of :func:`list_dir`, for an AsyncImageProxy."""
    import asyncio

    bridge = Bridge(asyncio.get_running_loop())
    sources = await async_sources(proxy, image, bridge)
    return await run_in_worker(bridge, lambda: list_dir_from_layers(sources, path))


__all__ = [
    "DirEntry",
    "MergedTree",
    "list_dir",
    "list_dir_async",
    "list_dir_from_layers",
    "merge_layers",
]
