"""The data ``read_file`` works on: one index per scanned layer, and a walk's state.

An :class:`Index` holds what a layer says about names (entries, whiteouts, opaque
directories, directories it only implies), as dicts keyed by path and as a trie of
names (:class:`Mark`) for walks down deep paths; :class:`Ctx` is one resolution's state.
The logic that reads them is :class:`._readfile.MergedReader`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from ._content import KeptContent, sparse_map
from ._engine import OPAQUE_MARKER, WHITEOUT_PREFIX
from ._errors import UnsafeLayerError
from ._meta import check_entry
from ._paths import MAX_SYMLINKS, Path, check_link_target, clean_name
from ._source import LayerSource, close_blob
from ._tarstream import LayerStream

FILE, DIR, SYMLINK, LINK, OTHER = "file", "dir", "symlink", "link", "other"
NO_SEQ = 1 << 62


@dataclass(frozen=True)
class Node:
    kind: str
    layer: int  # index in the image's layer list, bottom first
    seq: int  # entry number inside the layer
    linkname: str = ""


ROOT = Node(DIR, -1, -1)


@dataclass
class Index:
    entries: dict[Path, Node] = field(default_factory=dict)
    whiteouts: dict[Path, int] = field(default_factory=dict)  # path -> entry number
    opaque: dict[Path, int] = field(default_factory=dict)
    parents: dict[Path, int] = field(default_factory=dict)  # implied dir -> first entry
    data: dict[int, KeptContent] = field(default_factory=dict)
    too_big: dict[int, int] = field(default_factory=dict)  # entry number -> size
    by_base: dict[str, list[Path]] = field(default_factory=dict)
    implicit: set[Path] = field(default_factory=set)
    landings: dict[Path, Optional[Path]] = field(default_factory=dict)
    # What the layer writes through lower symlinks, by where it lands (built once).
    through: Optional[Through] = None
    trie: Optional[Mark] = None

    def close(self) -> None:
        for content in self.data.values():
            content.close()
        self.data.clear()


class Mark:
    """A node of a layer's name trie: what the layer says about one path.

    Walking a path through it costs one lookup of a (hash-cached) string per component,
    where looking each prefix up as a tuple costs the prefix's length: with deep paths
    the difference is between quadratic and cubic time.
    """

    __slots__ = ("entry", "implicit", "kids", "opaque", "whiteout")

    def __init__(self) -> None:
        self.kids: dict[str, Mark] = {}
        self.entry: Optional[Node] = None
        self.opaque: Optional[int] = None
        self.whiteout: Optional[int] = None
        self.implicit = False


def mark_path(root: Mark, path: Path) -> Mark:
    node = root
    for part in path:
        kid = node.kids.get(part)
        if kid is None:
            kid = node.kids[part] = Mark()
        node = kid
    return node


def build_trie(idx: Index) -> Mark:
    root = Mark()
    for path, entry in idx.entries.items():
        mark_path(root, path).entry = entry
    for path, seq in idx.whiteouts.items():
        mark_path(root, path).whiteout = seq
    for path, seq in idx.opaque.items():
        mark_path(root, path).opaque = seq
    for path in idx.implicit:
        mark_path(root, path).implicit = True
    return root


class AncNode:
    """A directory a walk passed (see ``Ctx``): how it was found, its floor once known."""

    __slots__ = ("floor", "found", "kids", "path")

    def __init__(self) -> None:
        self.kids: dict[str, AncNode] = {}
        self.path: Path = ()
        self.found: Optional[Found] = None
        self.floor: Optional[int] = None


@dataclass
class Through:
    implied: dict[Path, set[Path]]  # landing -> implied directories (raw) landing there
    whiteouts: set[Path]  # where whiteouts land
    opaque: set[Path]  # directories made opaque, where they land


@dataclass(frozen=True)
class Alias:
    """Names under ``raw`` in layers above a symlink land under ``canon``."""

    raw: Path
    canon: Path
    layer: int
    seq: int


ENTRY, IMPLICIT, HIDDEN, BOTTOM = "entry", "implicit", "hidden", "bottom"


@dataclass(frozen=True)
class Found:
    """How a layer settles a path: an entry, an implied directory, hidden, or nothing."""

    how: str
    layer: int
    node: Optional[Node] = None
    hides_below: bool = False  # the same layer also hides what lower layers had there


class Restart(Exception):
    """A directory turned out to be a lower symlink written through: walk again."""

    def __init__(self, path: Path, node: Node) -> None:
        super().__init__(path)
        self.path = path
        self.node = node


class Ctx:
    """One walk's state: where it looks from, symlinks crossed, directories passed."""

    def __init__(self, top: int, max_seq: Optional[int], true: dict[Path, Node]) -> None:
        self.top = top
        self.max_seq = max_seq
        self.true = true
        self.aliases: list[Alias] = []
        self.anc = AncNode()  # directories passed, as a trie of their names
        self.landed: Optional[list[Path]] = None  # see MergedReader._resolve

    def passed(self, path: Path, found: Found) -> None:
        """Record that the walk passed directory ``path``, settled by ``found``."""
        node = self.anc
        for part in path:
            kid = node.kids.get(part)
            if kid is None:
                kid = node.kids[part] = AncNode()
            node = kid
        node.path, node.found, node.floor = path, found, None

    def ancestors(self, path: Path) -> list[AncNode]:
        """The directories passed that are proper prefixes of ``path``."""
        out: list[AncNode] = []
        node = self.anc
        for part in path[:-1]:
            kid = node.kids.get(part)
            if kid is None:
                break
            node = kid
            if node.found is not None:
                out.append(node)
        return out


@dataclass(frozen=True)
class Marker:
    """Queued after a symlink's target: once reached, the target's real path is known."""

    raw: Path
    layer: int
    seq: int


def entry_kind(info_type: bytes, isreg: bool) -> str:
    if isreg:
        return FILE
    return {b"5": DIR, b"2": SYMLINK, b"1": LINK}.get(info_type, OTHER)


def plain_target(target: str) -> bool:
    """Whether a symlink target can be applied lexically: ``..`` only at its start.

    A ``..`` after a name of the target depends on what that name really is (a file
    makes it an error); such names are left to the lookups, which walk them physically.
    """
    seen_name = False
    for part in target.split("/"):
        if part == "..":
            if seen_name:
                return False
        elif part not in ("", "."):
            seen_name = True
    return True


def through_links(path: Path, links: dict[Path, str]) -> Path:
    """Where ``path`` lands when written through symlinks made earlier in the same layer."""
    for _ in range(MAX_SYMLINKS):
        for i in range(1, len(path)):
            target = links.get(path[:i])
            if target and plain_target(target):
                base = "" if target.startswith("/") else "/".join(path[: i - 1])
                path = clean_name(f"{base}/{target}") + path[i:]
                break
        else:
            return path
    raise UnsafeLayerError("/".join(path), "too many levels of symbolic links")


def scan_layer(
    src: LayerSource, k: int, want: set[Path], want_seq: Optional[int], max_size: Optional[int]
) -> Index:
    """Read layer ``k`` (``src``) whole into an Index, its digest checked.

    Contents are kept for the entries named in ``want`` and entry number ``want_seq``,
    unless larger than ``max_size`` (then only their size is). Every entry is checked as
    unpack checks it (raises UnsafeLayerError, LayerFormatError).
    """
    idx = Index()
    links: dict[Path, str] = {}  # this layer's symlinks so far
    blob = src.open()
    failed = True
    try:
        stream = LayerStream(blob, src.media_type, diff_id=src.diff_id, layer=src.digest)
        for seq, (info, data) in enumerate(stream):
            try:
                check_entry(info)  # as unpack and list_dir check it
                if info.isreg():
                    sparse_map(info, src.digest)
                elif info.issym():
                    check_link_target(info.linkname, info.name)
                path = through_links(clean_name(info.name), links)
            except UnsafeLayerError as e:
                raise e.with_layer(src.digest) from None
            base = path[-1] if path else ""
            if base.startswith(WHITEOUT_PREFIX):
                if base == OPAQUE_MARKER:
                    idx.opaque.setdefault(path[:-1], seq)
                elif not base.startswith(WHITEOUT_PREFIX + WHITEOUT_PREFIX):
                    victim = base[len(WHITEOUT_PREFIX) :]
                    if victim in ("", ".", ".."):
                        raise UnsafeLayerError(
                            info.name,
                            "whiteout names no entry, or the directory above it",
                            src.digest,
                        )
                    idx.whiteouts.setdefault((*path[:-1], victim), seq)
                continue
            if not path:
                if not info.isdir():
                    raise UnsafeLayerError(
                        info.name, "a non-directory cannot replace the root", src.digest
                    )
                continue
            kind = entry_kind(info.type, info.isreg())
            link_to: Optional[Path] = None
            if kind == LINK:
                link_to = through_links(clean_name(info.linkname or "/"), links)
                if link_to == path:
                    continue  # a hardlink to itself changes nothing (as in unpack)
            old = idx.entries.get(path)
            if old is not None:
                replaced = idx.data.pop(old.seq, None)
                if replaced is not None:
                    replaced.close()
            if kind != DIR and path in idx.parents:
                # Replacing a directory drops what the layer put in it so far.
                n = len(path)
                for p in [p for p in idx.entries if len(p) > n and p[:n] == path]:
                    del idx.entries[p]
            idx.entries[path] = Node(kind, k, seq, info.linkname)
            if kind == SYMLINK:
                links[path] = info.linkname
            elif link_to is not None and link_to in links:
                links[path] = links[link_to]  # a hardlink to a symlink is that symlink
            else:
                links.pop(path, None)
            for i in range(len(path) - 1, -1, -1):
                if path[:i] in idx.parents:
                    break  # and so are all of its prefixes, with an earlier number
                idx.parents[path[:i]] = seq
            if data is not None and (seq == want_seq or path in want):
                if max_size is not None and info.size > max_size:
                    idx.too_big[seq] = info.size  # refused if it is the answer
                else:
                    idx.data[seq] = KeptContent(info, data, src.digest)
        stream.finish()
        failed = False
    except BaseException:
        idx.close()
        raise
    finally:
        close_blob(blob, failed)
    for path in idx.entries:
        idx.by_base.setdefault(path[-1], []).append(path)
    # Directories the layer only implies: a lower symlink there is written through.
    idx.implicit = {
        p for p in idx.parents if p and (p not in idx.entries or idx.entries[p].kind != DIR)
    }
    idx.trie = build_trie(idx)
    return idx
