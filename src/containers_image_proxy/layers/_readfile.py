"""Reading one file out of an image's merged filesystem, without unpacking it.

Layers are scanned from the top, each one whole (so that its digest is checked), and only
as far down as the answer needs: a layer that has the path, or hides it (a whiteout of it
or of a directory above it, an opaque directory above it, a non-directory replacing a
directory above it), settles it. Each scanned layer is kept as an index of names, types
and link targets; file contents are kept only for the path being looked for (a layer is
read again in the rare case the answer's content was not kept, e.g. a hardlink to an
earlier entry).

Paths resolve as :func:`unpack` writes them: symlinks are followed inside the image's root,
and names that an upper layer wrote through a symlink of a lower one (``bin/x`` over
``bin -> usr/bin``) are found at the link's target. Layers that do not list the
directories they write into cost more: whether such a directory was a lower symlink can
only be learnt from the layers below, so these are read too. Known gaps, against unpack:
orderings inside one layer that unpack honours entry by entry (a whiteout and a name
written through a symlink re-creating the same directory in one layer) are approximated.
"""

from __future__ import annotations

import errno
import os
import tarfile
import tempfile
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Union

from .._errors import ConfigurationError, ProxyError
from ._apply import OPAQUE_MARKER, WHITEOUT_PREFIX
from ._content import CHUNK, data_fragments, sparse_map, write_fragments
from ._errors import UnsafeLayerError
from ._meta import check_entry
from ._paths import MAX_SYMLINKS, Path, check_link_target, clean_name, join
from ._source import LayerSource, close_blob
from ._tarstream import LayerStream

FILE, DIR, SYMLINK, LINK, OTHER = "file", "dir", "symlink", "link", "other"
_MAX_NAMES = 64  # alternative names of one path through symlinks, at most
_NO_SEQ = 1 << 62
_MAX_DEPTH = 32  # nested resolutions (hardlink targets, write-through checks), at most
_IN_MEMORY = 1024 * 1024  # a kept file's content above this size waits in a temporary file


class _Content:
    """A kept file's content: bytes when small, else a temporary file (holes kept)."""

    def __init__(self, info: tarfile.TarInfo, data: Any, layer: str) -> None:
        self.size = info.size
        self._bytes: Optional[bytes] = None
        self._file: Optional[Any] = None
        fragments = data_fragments(info, data, layer)
        if self.size <= _IN_MEMORY:
            buf = bytearray(self.size)
            for offset, chunk in fragments:
                buf[offset : offset + len(chunk)] = chunk
            self._bytes = bytes(buf)
            return
        self._file = tempfile.TemporaryFile()  # noqa: SIM115 - closed by close()
        try:
            write_fragments(self._file.fileno(), info, fragments)
        except BaseException:
            self.close()
            raise

    def read(self) -> bytes:
        """All of the content."""
        if self._bytes is not None:
            return self._bytes
        out = bytearray()
        self.copy_to(out.extend)
        return bytes(out)

    def copy_to(self, write: Callable[[bytes], Any]) -> int:
        """Hand the content to ``write`` in chunks of at most ``CHUNK`` bytes."""
        if self._bytes is not None:
            for i in range(0, len(self._bytes), CHUNK):
                write(self._bytes[i : i + CHUNK])
            return len(self._bytes)
        assert self._file is not None
        fd = self._file.fileno()
        done = 0
        while done < self.size:
            chunk = os.pread(fd, min(CHUNK, self.size - done), done)
            if not chunk:
                raise OSError(errno.EIO, "temporary copy of the file ended early")
            write(chunk)
            done += len(chunk)
        return done

    def close(self) -> None:
        """Let go of the temporary file, if any."""
        if self._file is not None:
            self._file.close()
            self._file = None


@dataclass(frozen=True)
class _Node:
    kind: str
    layer: int  # index in the image's layer list, bottom first
    seq: int  # entry number inside the layer
    linkname: str = ""


_ROOT = _Node(DIR, -1, -1)


@dataclass
class _Index:
    entries: dict[Path, _Node] = field(default_factory=dict)
    whiteouts: dict[Path, int] = field(default_factory=dict)  # path -> entry number
    opaque: dict[Path, int] = field(default_factory=dict)
    parents: dict[Path, int] = field(default_factory=dict)  # implied dir -> first entry
    data: dict[int, _Content] = field(default_factory=dict)
    too_big: dict[int, int] = field(default_factory=dict)  # entry number -> size
    by_base: dict[str, list[Path]] = field(default_factory=dict)
    implicit: set[Path] = field(default_factory=set)
    landings: dict[Path, Optional[Path]] = field(default_factory=dict)
    # What the layer writes through lower symlinks, by where it lands (built once).
    through: Optional[_Through] = None
    trie: Optional[_Mark] = None

    def close(self) -> None:
        for content in self.data.values():
            content.close()
        self.data.clear()


class _Mark:
    """A node of a layer's name trie: what the layer says about one path.

    Walking a path through it costs one lookup of a (hash-cached) string per component,
    where looking each prefix up as a tuple costs the prefix's length: with deep paths
    the difference is between quadratic and cubic time.
    """

    __slots__ = ("entry", "implicit", "kids", "opaque", "whiteout")

    def __init__(self) -> None:
        self.kids: dict[str, _Mark] = {}
        self.entry: Optional[_Node] = None
        self.opaque: Optional[int] = None
        self.whiteout: Optional[int] = None
        self.implicit = False


def _mark(root: _Mark, path: Path) -> _Mark:
    node = root
    for part in path:
        kid = node.kids.get(part)
        if kid is None:
            kid = node.kids[part] = _Mark()
        node = kid
    return node


def _build_trie(idx: _Index) -> _Mark:
    root = _Mark()
    for path, entry in idx.entries.items():
        _mark(root, path).entry = entry
    for path, seq in idx.whiteouts.items():
        _mark(root, path).whiteout = seq
    for path, seq in idx.opaque.items():
        _mark(root, path).opaque = seq
    for path in idx.implicit:
        _mark(root, path).implicit = True
    return root


class _AncNode:
    """A directory a walk passed (see ``_Ctx``): how it was found, its floor once known."""

    __slots__ = ("floor", "found", "kids", "path")

    def __init__(self) -> None:
        self.kids: dict[str, _AncNode] = {}
        self.path: Path = ()
        self.found: Optional[_Found] = None
        self.floor: Optional[int] = None


@dataclass
class _Through:
    implied: dict[Path, set[Path]]  # landing -> implied directories (raw) landing there
    whiteouts: set[Path]  # where whiteouts land
    opaque: set[Path]  # directories made opaque, where they land


@dataclass(frozen=True)
class _Alias:
    """Names under ``raw`` in layers above a symlink land under ``canon``."""

    raw: Path
    canon: Path
    layer: int
    seq: int


ENTRY, IMPLICIT, HIDDEN, BOTTOM = "entry", "implicit", "hidden", "bottom"


@dataclass(frozen=True)
class _Found:
    """How a layer settles a path: an entry, an implied directory, hidden, or nothing."""

    how: str
    layer: int
    node: Optional[_Node] = None
    hides_below: bool = False  # the same layer also hides what lower layers had there


class _Restart(Exception):
    """A directory turned out to be a lower symlink written through: walk again."""

    def __init__(self, path: Path, node: _Node) -> None:
        super().__init__(path)
        self.path = path
        self.node = node


class _Ctx:
    """One walk's state: where it looks from, symlinks crossed, directories passed."""

    def __init__(self, top: int, max_seq: Optional[int], true: dict[Path, _Node]) -> None:
        self.top = top
        self.max_seq = max_seq
        self.true = true
        self.aliases: list[_Alias] = []
        self.anc = _AncNode()  # directories passed, as a trie of their names
        self.landed: Optional[list[Path]] = None  # see MergedReader._resolve

    def passed(self, path: Path, found: _Found) -> None:
        """Record that the walk passed directory ``path``, settled by ``found``."""
        node = self.anc
        for part in path:
            kid = node.kids.get(part)
            if kid is None:
                kid = node.kids[part] = _AncNode()
            node = kid
        node.path, node.found, node.floor = path, found, None

    def ancestors(self, path: Path) -> list[_AncNode]:
        """The directories passed that are proper prefixes of ``path``."""
        out: list[_AncNode] = []
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
class _Marker:
    """Queued after a symlink's target: once reached, the target's real path is known."""

    raw: Path
    layer: int
    seq: int


def _kind(info_type: bytes, isreg: bool) -> str:
    if isreg:
        return FILE
    return {b"5": DIR, b"2": SYMLINK, b"1": LINK}.get(info_type, OTHER)


def _plain_target(target: str) -> bool:
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


def _through(path: Path, links: dict[Path, str]) -> Path:
    """Where ``path`` lands when written through symlinks made earlier in the same layer."""
    for _ in range(MAX_SYMLINKS):
        for i in range(1, len(path)):
            target = links.get(path[:i])
            if target and _plain_target(target):
                base = "" if target.startswith("/") else "/".join(path[: i - 1])
                path = clean_name(f"{base}/{target}") + path[i:]
                break
        else:
            return path
    raise UnsafeLayerError("/".join(path), "too many levels of symbolic links")


class MergedReader:
    """Resolves paths in the merged filesystem of ``sources`` (bottom layer first).

    With ``max_size``, the content of a file larger than that is never read: asking for
    it raises ProxyError naming its size. :meth:`close` lets go of temporary files.
    """

    def __init__(self, sources: Sequence[LayerSource], max_size: Optional[int] = None) -> None:
        self._sources = sources
        self._max_size = max_size
        self._index: dict[int, _Index] = {}
        self._want: Path = ()
        self._outer_wants: list[Path] = []  # what enclosing resolutions look for
        self._depth = 0

    # --- scanning ------------------------------------------------------------------------

    def _get(self, k: int, aliases: Sequence[_Alias]) -> _Index:
        idx = self._index.get(k)
        if idx is None:
            names: set[Path] = set()
            for want in (*self._outer_wants, self._want):
                names.update(self._raw_names(want, k, aliases))
            idx = self._index[k] = self._scan(k, names, None)
        return idx

    def _scan(self, k: int, want: set[Path], want_seq: Optional[int]) -> _Index:
        src = self._sources[k]
        idx = _Index()
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
                    path = _through(clean_name(info.name), links)
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
                kind = _kind(info.type, info.isreg())
                link_to: Optional[Path] = None
                if kind == LINK:
                    link_to = _through(clean_name(info.linkname or "/"), links)
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
                idx.entries[path] = _Node(kind, k, seq, info.linkname)
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
                    if self._max_size is not None and info.size > self._max_size:
                        idx.too_big[seq] = info.size  # refused if it is the answer
                    else:
                        idx.data[seq] = _Content(info, data, src.digest)
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
        idx.trie = _build_trie(idx)
        return idx

    # --- lookups -------------------------------------------------------------------------

    def _raw_names(self, path: Path, k: int, aliases: Sequence[_Alias]) -> dict[Path, int]:
        """Names that, in layer ``k``, land on ``path`` -> the least entry number for each."""
        names = {path: 0}
        changed = True
        while changed and len(names) < _MAX_NAMES:
            changed = False
            for alias in aliases:
                if alias.layer > k:
                    continue
                min_seq = alias.seq + 1 if alias.layer == k else 0
                n = len(alias.canon)
                for name, seq in list(names.items()):
                    if name[:n] != alias.canon:
                        continue
                    alt = alias.raw + name[n:]
                    if alt not in names:
                        names[alt] = max(seq, min_seq)
                        changed = True
        return names

    @staticmethod
    def _hidden(idx: _Index, raw: Path, literal: bool = True, limit: int = 1 << 62) -> bool:
        node = idx.trie
        n = len(raw)
        for i in range(n + 1):
            if node is None:
                return False  # the layer says nothing at or below this prefix
            if i < n and node.opaque is not None and node.opaque < limit:
                return True
            if i and node.whiteout is not None and node.whiteout < limit:
                return True
            if literal and 0 < i < n:
                # A file above hides; a symlink there is how a name got here, not a wall
                # (a directory that replaced it above is caught by the floors).
                entry = node.entry
                if entry is not None and entry.kind not in (DIR, SYMLINK) and entry.seq < limit:
                    return True
            if i < n:
                node = node.kids.get(raw[i])
        return False

    def _lookup(self, path: Path, top: int, ctx: _Ctx) -> _Found:
        """What settles ``path`` (whose parent is a directory), searching down from ``top``."""
        ancestors = ctx.ancestors(path)
        for k in range(top, -1, -1):
            for a in ancestors:
                # Below the layer that made an ancestor a directory, its lower content may
                # be gone (a directory that replaced a symlink or file, a whiteout).
                assert a.found is not None
                if a.found.layer > k and self._floor(a, ctx) > k:
                    return _Found(HIDDEN, self._floor(a, ctx))
            idx = self._get(k, ctx.aliases)
            names = self._raw_names(path, k, ctx.aliases)
            best: Optional[_Node] = None
            for raw, min_seq in names.items():
                node = idx.entries.get(raw)
                if node is None or node.seq < min_seq:
                    continue
                if k == ctx.top and ctx.max_seq is not None and node.seq >= ctx.max_seq:
                    continue
                if best is None or node.seq > best.seq:
                    best = node
            limit = ctx.max_seq if k == ctx.top and ctx.max_seq is not None else _NO_SEQ
            hidden = any(self._hidden(idx, raw, raw == path, limit) for raw in names)
            if best is not None:
                return _Found(ENTRY, k, best, hidden)
            if any(idx.parents.get(raw, _NO_SEQ) < limit for raw in names):
                return _Found(IMPLICIT, k, None, hidden)
            if hidden:
                return _Found(HIDDEN, k)
            through = self._written_through(path, k, idx)
            if through is not None:
                return through
        return _Found(BOTTOM, -1)

    def _written_through(self, path: Path, k: int, idx: _Index) -> Optional[_Found]:
        """An entry (or whiteout) of layer ``k`` that lands on ``path`` through a symlink.

        Only names under a directory the layer does not list itself can be written
        through a lower symlink (a listed directory replaces the symlink); where such a
        name could land on ``path`` (or hide it), resolve its parent as of layer k-1.
        """
        if k == 0 or not idx.implicit:
            return None

        def lands(raw: Path) -> Optional[Path]:
            if not self._under_implicit(idx, raw):
                return None
            parent = self._landing(k, idx, raw[:-1])
            return None if parent is None else (*parent, raw[-1])

        for raw in idx.by_base.get(path[-1], ()):
            if raw != path and lands(raw) == path:
                return _Found(ENTRY, k, idx.entries[raw])
        through = self._through_map(k, idx, lands)
        if through.implied.get(path, {path}) - {path}:
            # A directory the layer implies, created through a lower symlink elsewhere.
            return _Found(IMPLICIT, k)
        # (each test slices every prefix: only worth it where there is something to find)
        if through.whiteouts and any(
            path[:i] in through.whiteouts for i in range(len(path), 0, -1)
        ):
            return _Found(HIDDEN, k)
        if through.opaque and any(path[:i] in through.opaque for i in range(len(path))):
            return _Found(HIDDEN, k)
        return None

    def _through_map(
        self, k: int, idx: _Index, lands: Callable[[Path], Optional[Path]]
    ) -> _Through:
        """Where layer ``k``'s implied directories, whiteouts and opaque markers land.

        Built once per layer: looking each of them up again for every path resolved made
        a lookup cost as much as the layer's size (issue 14).
        """
        if idx.through is not None:
            return idx.through
        # Deepest first: one walk down a chain of implied directories lands them all.
        for raw in sorted(idx.implicit, key=len, reverse=True):
            if raw not in idx.landings:
                self._landings(k, idx, raw)
        implied: dict[Path, set[Path]] = {}
        for raw in idx.implicit:
            spot = self._landing(k, idx, raw)
            if spot is not None:
                implied.setdefault(spot, set()).add(raw)
        whiteouts = {spot for spot in map(lands, idx.whiteouts) if spot is not None}
        opaque: set[Path] = set()
        for raw in idx.opaque:
            spot = lands((*raw, "")) if raw else None
            if spot is not None:
                opaque.add(spot[:-1])
        idx.through = _Through(implied, whiteouts, opaque)
        return idx.through

    def _landing(self, k: int, idx: _Index, raw: Path) -> Optional[Path]:
        """The real path of directory ``raw`` as layer ``k`` wrote into it (cached)."""
        if raw not in idx.landings:
            try:
                real, _ = self._resolve(raw, k - 1, None, follow_final=True, create=True)
                idx.landings[raw] = real
            except (OSError, UnsafeLayerError):
                idx.landings[raw] = None
        return idx.landings[raw]

    def _landings(self, k: int, idx: _Index, raw: Path) -> None:
        """Land ``raw`` (see :meth:`_landing`) and, on the way, every prefix of it."""
        seen: list[Path] = []
        try:
            real, _ = self._resolve(raw, k - 1, None, follow_final=True, create=True, landed=seen)
            idx.landings[raw] = real
        except (OSError, UnsafeLayerError):
            idx.landings[raw] = None
        for i, spot in enumerate(seen, 1):
            idx.landings.setdefault(raw[:i], spot)

    def _floor(self, a: _AncNode, ctx: _Ctx) -> int:
        """The lowest layer whose entries under directory ``a`` still show in the merge."""
        if a.floor is None:
            assert a.found is not None
            a.floor = self._chain(a.path, a.found, ctx)
        return a.floor

    @staticmethod
    def _under_implicit(idx: _Index, raw: Path) -> bool:
        """Whether a proper prefix of ``raw`` is a directory layer ``idx`` only implies."""
        node = idx.trie
        for part in raw[:-1]:
            node = node.kids.get(part) if node is not None else None
            if node is None:
                return False
            if node.implicit:
                return True
        return False

    def _chain(self, a: Path, found: _Found, ctx: _Ctx) -> int:
        last_dir = found.layer if found.how == ENTRY else None
        cur = found
        while True:
            if cur.hides_below:
                return cur.layer
            if cur.layer <= 0:
                return 0
            below = self._lookup(a, cur.layer - 1, ctx)
            if below.how == BOTTOM:
                return 0
            if below.how == HIDDEN:
                return below.layer
            if below.how == ENTRY:
                assert below.node is not None
                if below.node.kind != DIR:
                    if last_dir is None:
                        # Only written through: ``a`` is that symlink (or file) still.
                        raise _Restart(a, below.node)
                    return last_dir  # a directory replaced it: nothing below shows
                last_dir = below.layer
            cur = below

    def _deref(self, node: _Node, name: str, depth: int) -> _Node:
        """The node a hardlink entry links to (as of just before the link)."""
        while node.kind == LINK:
            depth += 1
            if depth > MAX_SYMLINKS:
                raise UnsafeLayerError(name, "too many levels of hardlinks")
            try:
                target = clean_name(node.linkname, entry=name)
            except UnsafeLayerError as e:
                raise e.with_layer(self._sources[node.layer].digest) from None
            found: Optional[_Node]
            try:
                _, found = self._resolve(target, node.layer, node.seq, follow_final=False)
            except (FileNotFoundError, NotADirectoryError):
                found = None
            if found is None or found.kind == DIR:
                raise UnsafeLayerError(
                    name,
                    f"hardlink target {node.linkname!r} is not a file in the tree",
                    self._sources[node.layer].digest,
                )
            node = found
        return node

    def _resolve(
        self,
        path: Path,
        top: int,
        max_seq: Optional[int],
        *,
        follow_final: bool,
        create: bool = False,
        landed: Optional[list[Path]] = None,
    ) -> tuple[Path, _Node]:
        """The real path of ``path`` and its node, following symlinks inside the root.

        With ``create``, missing components are taken as directories (as unpacking
        creates them) instead of raising FileNotFoundError. ``landed``, when given, gets
        the real path of each prefix of ``path`` the walk got through (as resolving that
        prefix alone would give it).
        """
        saved = self._want
        self._outer_wants.append(saved)
        true: dict[Path, _Node] = {}
        self._depth += 1
        if self._depth > _MAX_DEPTH:
            self._depth -= 1
            raise OSError(errno.ELOOP, "paths in the image refer to each other too deeply")
        try:
            while True:
                ctx = _Ctx(top, max_seq, true)
                if landed is not None:
                    landed.clear()  # what an abandoned walk saw may not hold
                    ctx.landed = landed
                try:
                    return self._walk(path, ctx, follow_final, create)
                except _Restart as r:
                    if r.path in true:
                        raise RuntimeError(f"read_file: no progress resolving {r.path}") from r
                    true[r.path] = r.node
        finally:
            self._want = saved
            self._outer_wants.pop()
            self._depth -= 1

    def _walk(self, path: Path, ctx: _Ctx, follow_final: bool, create: bool) -> tuple[Path, _Node]:
        todo: deque[Union[str, _Marker, int]] = deque(path)
        if ctx.landed is not None:
            # After each component of ``path`` (and its symlinks), a count: the prefix's end.
            todo = deque(x for i, part in enumerate(path, 1) for x in (part, i))
        real: list[str] = []
        node = _ROOT
        links = 0
        while todo:
            part = todo.popleft()
            if isinstance(part, int):
                assert ctx.landed is not None
                ctx.landed.append(tuple(real))
                continue
            if isinstance(part, _Marker):
                ctx.aliases.append(_Alias(part.raw, tuple(real), part.layer, part.seq))
                continue
            if part in ("", "."):
                continue
            if part == "..":
                if real:
                    real.pop()
                continue
            here = (*real, part)
            rest = [p for p in todo if isinstance(p, str)]
            self._want = clean_name("/".join(here + tuple(rest)) or "/") if rest else here
            if here in ctx.true:
                found = _Found(ENTRY, ctx.true[here].layer, ctx.true[here])
            else:
                found = self._lookup(here, ctx.top, ctx)
            if found.how in (HIDDEN, BOTTOM):
                if not create:
                    raise FileNotFoundError(errno.ENOENT, "no such file in the image", join(here))
                found = _Found(IMPLICIT, -1, None, True)
            entry = found.node if found.node is not None else _Node(DIR, found.layer, -1)
            node = self._deref(entry, join(here), 0)
            last = not rest
            if node.kind == SYMLINK and (follow_final or not last):
                links += 1
                if links > MAX_SYMLINKS:
                    raise OSError(errno.ELOOP, "too many levels of symbolic links", join(here))
                if node.linkname.startswith("/"):
                    real.clear()
                todo.appendleft(_Marker(here, entry.layer, entry.seq))
                todo.extendleft(reversed(node.linkname.split("/")))
                continue
            if not last and node.kind != DIR:
                raise NotADirectoryError(errno.ENOTDIR, "not a directory", join(here))
            ctx.passed(here, found)
            real.append(part)
        return tuple(real), node

    # --- the answer ----------------------------------------------------------------------

    def open(self, path: str) -> _Content:
        """The content of the regular file at ``path`` in the merged filesystem.

        Raises FileNotFoundError, IsADirectoryError, OSError (EINVAL) for what is not a
        regular file, and ProxyError for a file over ``max_size``.
        """
        if "\0" in path:
            raise ConfigurationError(f"not a valid path: {path!r}")
        # Not cleaned lexically: ".." is resolved as the walk meets it, as the kernel does.
        parts = tuple(path.split("/"))
        top = len(self._sources) - 1
        try:
            _, node = self._resolve(parts, top, None, follow_final=True)
        except NotADirectoryError as e:
            raise FileNotFoundError(errno.ENOENT, f"no such file in the image ({e})", path) from e
        if node.kind == DIR:
            raise IsADirectoryError(errno.EISDIR, "is a directory in the image", path)
        if node.kind != FILE:
            raise OSError(errno.EINVAL, "not a regular file in the image", path)
        idx = self._index[node.layer]
        if node.seq not in idx.data and node.seq not in idx.too_big:
            # Not kept on the first pass (found through a hardlink or a late symlink).
            again = self._scan(node.layer, set(), node.seq)
            idx.data.update(again.data)
            idx.too_big.update(again.too_big)
        size = idx.too_big.get(node.seq)
        if size is not None:
            raise ProxyError(
                f"{path}: the file is {size} bytes, over the limit of {self._max_size} bytes"
            )
        return idx.data[node.seq]

    def close(self) -> None:
        """Let go of every kept content (temporary files)."""
        for idx in self._index.values():
            idx.close()

    def __enter__(self) -> MergedReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def read(self, path: str) -> bytes:
        """The content of the regular file at ``path`` (see :meth:`open`)."""
        return self.open(path).read()


def _check_max_size(max_size: Optional[int]) -> None:
    if max_size is not None and (not isinstance(max_size, int) or max_size < 0):
        raise ConfigurationError(f"max_size must be a size in bytes, not {max_size!r}")


def read_file_from_layers(
    sources: Sequence[LayerSource], path: str, *, max_size: Optional[int] = None
) -> bytes:
    """Read ``path`` from the merged filesystem of ``sources`` (bottom layer first).

    The engine of :func:`read_file`. Raises FileNotFoundError when the merged filesystem
    has no such file, IsADirectoryError for a directory, and ProxyError naming the size
    when the file is larger than ``max_size`` (checked before any of it is kept).
    """
    _check_max_size(max_size)
    with MergedReader(sources, max_size) as reader:
        return reader.read(path)


def copy_file_from_layers(
    sources: Sequence[LayerSource],
    path: str,
    write: Callable[[bytes], Any],
    *,
    max_size: Optional[int] = None,
) -> int:
    """Hand the file ``path`` of the merged filesystem to ``write``, in bounded chunks.

    Like :func:`read_file_from_layers`, but the content is never held whole in memory (a
    large one waits in a temporary file, its holes kept, until every layer it depends on
    is verified). Returns the number of bytes written. Raises as read_file_from_layers.
    """
    _check_max_size(max_size)
    with MergedReader(sources, max_size) as reader:
        return reader.open(path).copy_to(write)
