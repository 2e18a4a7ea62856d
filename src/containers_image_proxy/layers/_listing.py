"""Listing a directory of an image's merged filesystem, without unpacking it.

The layers are applied bottom first to a tree held in memory that keeps each entry's
metadata (type, mode, owner, size, time, link target) and no file content, with the same
rules as :func:`unpack`, written once in ``_engine.LayerRules``; :class:`MemoryTree` is
their in-memory backend (hardlinks share the node they link to). Every layer is read to
its end and checked against its diff_id, as unpack does, so a listing is of verified
content.

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
from typing import Any, Callable, Optional

from .._errors import ConfigurationError
from ._content import sparse_map
from ._engine import BLOCK, CHAR, DIR, FIFO, FILE, SYMLINK, Keep, LayerRules
from ._errors import UnsafeLayerError
from ._paths import MAX_SYMLINKS, Path, check_depth, image_path
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
    the digest of the layer that wrote the entry last (for a hardlink, the layer that wrote
    the link, not its target's).
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
    """An entry of the in-memory tree; hardlinked names share one node.

    A directory's ``linked`` maps a name hardlinked to a node to the layer that wrote
    that name (the node's own ``layer`` is the layer that wrote its first name).
    """

    __slots__ = (
        "children",
        "device",
        "gid",
        "kind",
        "layer",
        "linked",
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
        self.linked: dict[str, str] = {}
        self.nlink = 1
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

    def put(self, name: str, node: _Node) -> None:
        """Make ``name`` (absent) a name of ``node`` in this directory."""
        assert self.children is not None
        self.children[name] = node
        self.linked.pop(name, None)


class MemoryTree:
    """A merged tree held in memory as metadata: the other backend of LayerRules."""

    def __init__(self) -> None:
        self.root = _Node(DIR, None, "")
        self.layer = ""

    def begin_layer(self, layer: str) -> None:
        self.layer = layer

    def check(self, info: tarfile.TarInfo) -> None:
        if info.isreg():
            sparse_map(info, self.layer)  # as unpack checks it when writing the data

    def resolve_dir(
        self, path: Path, *, entry: str, create: bool, on_create: Callable[[Path], None]
    ) -> Optional[tuple[_Node, Path]]:
        try:
            found = self.walk(path, entry=entry, create=create, on_create=on_create)
        except NotADirectoryError:
            return None
        except OSError as e:
            if e.errno != errno.ELOOP:
                raise
            raise UnsafeLayerError(entry, "too many levels of symbolic links") from None
        if found is None or found[0].children is None:
            return None
        return found

    def release(self, handle: _Node) -> None:
        pass

    def lookup(self, parent: _Node, name: str) -> Optional[str]:
        assert parent.children is not None
        node = parent.children.get(name)
        return None if node is None else node.kind

    def names(self, parent: _Node) -> list[str]:
        assert parent.children is not None
        return list(parent.children)

    def remove(self, parent: _Node, name: str, path: Path, keep: Optional[Keep]) -> None:
        todo = [(parent, name, path)]
        while todo:  # no recursion: a layer's tree can be as deep as PATH_MAX allows
            parent, name, path = todo.pop()
            assert parent.children is not None
            node = parent.children.get(name)
            if node is None:
                continue
            if keep is not None and keep(path):
                if node.children is not None:
                    todo.extend((node, child, (*path, child)) for child in node.children)
                continue
            del parent.children[name]
            parent.linked.pop(name, None)
            self._drop(node)

    @staticmethod
    def _drop(top: _Node) -> None:
        """Take one name from ``top`` and, as unpack empties a removed directory, every
        name under it: another name of a file under it (a hardlink) sees one link fewer,
        a walk that still holds one of its directories finds it empty."""
        todo = [top]
        while todo:
            node = todo.pop()
            node.nlink -= 1
            if node.children:
                todo.extend(node.children.values())
                node.children.clear()
                node.linked.clear()

    def set_root(self, info: tarfile.TarInfo, mtime: int) -> None:
        self.root.set_meta(info, self.layer, mtime)

    def merge_dir(
        self, parent: _Node, name: str, path: Path, info: tarfile.TarInfo, mtime: int
    ) -> None:
        assert parent.children is not None
        parent.children[name].set_meta(info, self.layer, mtime)

    def create(
        self,
        parent: _Node,
        name: str,
        path: Path,
        kind: str,
        info: tarfile.TarInfo,
        data: Any,
        mtime: int,
    ) -> None:
        parent.put(name, _Node(kind, info, self.layer, mtime))

    def link(self, target_parent: _Node, target: str, parent: _Node, name: str, path: Path) -> None:
        assert target_parent.children is not None
        node = target_parent.children[target]
        parent.put(name, node)
        parent.linked[name] = self.layer  # this name was written now, whoever wrote the file
        node.nlink += 1

    def walk(
        self,
        path: Sequence[str],
        *,
        entry: str,
        create: bool,
        on_create: Optional[Callable[[Path], None]] = None,
    ) -> Optional[tuple[_Node, Path]]:
        """The node ``path`` names and its real path, symlinks followed inside the root
        (the last component's too).

        Missing directories are created when ``create`` (then a component that is not a
        directory raises UnsafeLayerError); otherwise a missing component gives None and
        one that is not a directory raises NotADirectoryError.
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
                    raise UnsafeLayerError(entry, f"{image_path(tuple(real))} is not a directory")
                raise NotADirectoryError(errno.ENOTDIR, "not a directory", image_path(tuple(real)))
            node = cur.children.get(part)
            if node is not None and node.kind == SYMLINK:
                links += 1
                if links > MAX_SYMLINKS:
                    if create:
                        raise UnsafeLayerError(entry, "too many levels of symbolic links")
                    raise OSError(
                        errno.ELOOP, "too many levels of symbolic links", image_path(entry)
                    )
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
                cur.put(part, node)
                if on_create is not None:
                    on_create((*real, part))
            nodes.append(node)
            real.append(part)
        if create and nodes[-1].children is None:
            # a parent being made for an entry is a file (or device ...): as unpack says
            raise UnsafeLayerError(entry, f"{image_path(tuple(real))} is not a directory")
        return nodes[-1], tuple(real)


class MergedTree(LayerRules[_Node]):
    """The merged filesystem of some layers, as metadata: apply layers, then look up."""

    def __init__(self) -> None:
        self.memory = MemoryTree()
        super().__init__(self.memory)

    @property
    def root(self) -> _Node:
        """The root directory's node."""
        return self.memory.root

    # --- looking up ----------------------------------------------------------------------

    def list(self, path: str = "/") -> list[DirEntry]:
        """The entries of directory ``path``, sorted by name; a non-directory lists itself.

        Symlinks are followed inside the image's root, the last component included.
        Raises FileNotFoundError when the merged tree has no such path, NotADirectoryError
        when a component above the last is not a directory (their ``filename`` is the path
        made absolute, as in the image).
        """
        if not isinstance(path, str) or "\0" in path:
            raise ConfigurationError(f"not a valid path: {path!r}")
        # Not cleaned lexically: ".." is resolved as the walk meets it, as the kernel does.
        found = self.memory.walk(path.split("/"), entry=path, create=False)
        if found is None:
            raise FileNotFoundError(
                errno.ENOENT, "no such file or directory in the image", image_path(path)
            )
        node, real = found
        if node.children is None:  # real names no symlink: its parent is a plain walk
            parent = self.root
            for part in real[:-1]:
                assert parent.children is not None
                parent = parent.children[part]
            return [self._entry(real[-1], real[:-1], node, parent.linked.get(real[-1]))]
        return [
            self._entry(name, real, node.children[name], node.linked.get(name))
            for name in sorted(node.children)
        ]

    @staticmethod
    def _entry(name: str, parent: Path, node: _Node, linked: Optional[str]) -> DirEntry:
        """``linked``: the layer that wrote this name as a hardlink, if it is one."""
        return DirEntry(
            name=name,
            path=image_path((*parent, name)),
            kind=node.kind,
            mode=node.mode,
            uid=node.uid,
            gid=node.gid,
            size=node.size,
            mtime=node.mtime,
            linkname=node.linkname,
            device=node.device,
            nlink=max(1, node.nlink),
            layer=node.layer if linked is None else linked,
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
    """The async twin of :func:`list_dir`, for an AsyncImageProxy; raises what it raises
    (cancelling stops the worker and waits for its cleanup)."""
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
