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
from collections import deque
from collections.abc import Sequence
from typing import Callable, Optional, Union

from .._errors import ConfigurationError, ProxyError
from ._content import KeptContent
from ._errors import UnsafeLayerError
from ._paths import MAX_SYMLINKS, Path, clean_name, image_path, join
from ._readindex import (
    BOTTOM,
    DIR,
    ENTRY,
    FILE,
    HIDDEN,
    IMPLICIT,
    LINK,
    NO_SEQ,
    ROOT,
    SYMLINK,
    Alias,
    AncNode,
    Ctx,
    Found,
    Index,
    Marker,
    Node,
    Restart,
    Through,
    scan_layer,
)
from ._source import LayerSource

_MAX_NAMES = 64  # alternative names of one path through symlinks, at most
_MAX_DEPTH = 32  # nested resolutions (hardlink targets, write-through checks), at most


class MergedReader:
    """Resolves paths in the merged filesystem of ``sources`` (bottom layer first).

    With ``max_size``, the content of a file larger than that is never read: asking for
    it raises ProxyError naming its size. :meth:`close` lets go of temporary files.
    """

    def __init__(self, sources: Sequence[LayerSource], max_size: Optional[int] = None) -> None:
        self._sources = sources
        self._max_size = max_size
        self._index: dict[int, Index] = {}
        self._want: Path = ()
        self._outer_wants: list[Path] = []  # what enclosing resolutions look for
        self._depth = 0

    # --- scanning ------------------------------------------------------------------------

    def _get(self, k: int, aliases: Sequence[Alias]) -> Index:
        idx = self._index.get(k)
        if idx is None:
            names: set[Path] = set()
            for want in (*self._outer_wants, self._want):
                names.update(self._raw_names(want, k, aliases))
            idx = self._index[k] = self._scan(k, names, None)
        return idx

    def _scan(self, k: int, want: set[Path], want_seq: Optional[int]) -> Index:
        return scan_layer(self._sources[k], k, want, want_seq, self._max_size)

    # --- lookups -------------------------------------------------------------------------

    def _raw_names(self, path: Path, k: int, aliases: Sequence[Alias]) -> dict[Path, int]:
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
    def _hidden(idx: Index, raw: Path, literal: bool = True, limit: int = 1 << 62) -> bool:
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

    def _lookup(self, path: Path, top: int, ctx: Ctx) -> Found:
        """What settles ``path`` (whose parent is a directory), searching down from ``top``."""
        ancestors = ctx.ancestors(path)
        for k in range(top, -1, -1):
            for a in ancestors:
                # Below the layer that made an ancestor a directory, its lower content may
                # be gone (a directory that replaced a symlink or file, a whiteout).
                assert a.found is not None
                if a.found.layer > k and self._floor(a, ctx) > k:
                    return Found(HIDDEN, self._floor(a, ctx))
            idx = self._get(k, ctx.aliases)
            names = self._raw_names(path, k, ctx.aliases)
            best: Optional[Node] = None
            for raw, min_seq in names.items():
                node = idx.entries.get(raw)
                if node is None or node.seq < min_seq:
                    continue
                if k == ctx.top and ctx.max_seq is not None and node.seq >= ctx.max_seq:
                    continue
                if best is None or node.seq > best.seq:
                    best = node
            limit = ctx.max_seq if k == ctx.top and ctx.max_seq is not None else NO_SEQ
            hidden = any(self._hidden(idx, raw, raw == path, limit) for raw in names)
            if best is not None:
                return Found(ENTRY, k, best, hidden)
            if any(idx.parents.get(raw, NO_SEQ) < limit for raw in names):
                return Found(IMPLICIT, k, None, hidden)
            if hidden:
                return Found(HIDDEN, k)
            through = self._written_through(path, k, idx)
            if through is not None:
                return through
        return Found(BOTTOM, -1)

    def _written_through(self, path: Path, k: int, idx: Index) -> Optional[Found]:
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
                return Found(ENTRY, k, idx.entries[raw])
        through = self._through_map(k, idx, lands)
        if through.implied.get(path, {path}) - {path}:
            # A directory the layer implies, created through a lower symlink elsewhere.
            return Found(IMPLICIT, k)
        # (each test slices every prefix: only worth it where there is something to find)
        if through.whiteouts and any(
            path[:i] in through.whiteouts for i in range(len(path), 0, -1)
        ):
            return Found(HIDDEN, k)
        if through.opaque and any(path[:i] in through.opaque for i in range(len(path))):
            return Found(HIDDEN, k)
        return None

    def _through_map(self, k: int, idx: Index, lands: Callable[[Path], Optional[Path]]) -> Through:
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
        idx.through = Through(implied, whiteouts, opaque)
        return idx.through

    def _landing(self, k: int, idx: Index, raw: Path) -> Optional[Path]:
        """The real path of directory ``raw`` as layer ``k`` wrote into it (cached)."""
        if raw not in idx.landings:
            try:
                real, _ = self._resolve(raw, k - 1, None, follow_final=True, create=True)
                idx.landings[raw] = real
            except (OSError, UnsafeLayerError):
                idx.landings[raw] = None
        return idx.landings[raw]

    def _landings(self, k: int, idx: Index, raw: Path) -> None:
        """Land ``raw`` (see :meth:`_landing`) and, on the way, every prefix of it."""
        seen: list[Path] = []
        try:
            real, _ = self._resolve(raw, k - 1, None, follow_final=True, create=True, landed=seen)
            idx.landings[raw] = real
        except (OSError, UnsafeLayerError):
            idx.landings[raw] = None
        for i, spot in enumerate(seen, 1):
            idx.landings.setdefault(raw[:i], spot)

    def _floor(self, a: AncNode, ctx: Ctx) -> int:
        """The lowest layer whose entries under directory ``a`` still show in the merge."""
        if a.floor is None:
            assert a.found is not None
            a.floor = self._chain(a.path, a.found, ctx)
        return a.floor

    @staticmethod
    def _under_implicit(idx: Index, raw: Path) -> bool:
        """Whether a proper prefix of ``raw`` is a directory layer ``idx`` only implies."""
        node = idx.trie
        for part in raw[:-1]:
            node = node.kids.get(part) if node is not None else None
            if node is None:
                return False
            if node.implicit:
                return True
        return False

    def _chain(self, a: Path, found: Found, ctx: Ctx) -> int:
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
                        raise Restart(a, below.node)
                    return last_dir  # a directory replaced it: nothing below shows
                last_dir = below.layer
            cur = below

    def _deref(self, node: Node, name: str, depth: int) -> Node:
        """The node a hardlink entry links to (as of just before the link)."""
        while node.kind == LINK:
            depth += 1
            if depth > MAX_SYMLINKS:
                raise UnsafeLayerError(name, "too many levels of hardlinks")
            try:
                target = clean_name(node.linkname, entry=name)
            except UnsafeLayerError as e:
                raise e.with_layer(self._sources[node.layer].digest) from None
            found: Optional[Node]
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
    ) -> tuple[Path, Node]:
        """The real path of ``path`` and its node, following symlinks inside the root.

        With ``create``, missing components are taken as directories (as unpacking
        creates them) instead of raising FileNotFoundError. ``landed``, when given, gets
        the real path of each prefix of ``path`` the walk got through (as resolving that
        prefix alone would give it).
        """
        saved = self._want
        self._outer_wants.append(saved)
        true: dict[Path, Node] = {}
        self._depth += 1
        if self._depth > _MAX_DEPTH:
            self._depth -= 1
            raise OSError(errno.ELOOP, "paths in the image refer to each other too deeply")
        try:
            while True:
                ctx = Ctx(top, max_seq, true)
                if landed is not None:
                    landed.clear()  # what an abandoned walk saw may not hold
                    ctx.landed = landed
                try:
                    return self._walk(path, ctx, follow_final, create)
                except Restart as r:
                    if r.path in true:
                        raise RuntimeError(f"read_file: no progress resolving {r.path}") from r
                    true[r.path] = r.node
        finally:
            self._want = saved
            self._outer_wants.pop()
            self._depth -= 1

    def _walk(self, path: Path, ctx: Ctx, follow_final: bool, create: bool) -> tuple[Path, Node]:
        todo: deque[Union[str, Marker, int]] = deque(path)
        if ctx.landed is not None:
            # After each component of ``path`` (and its symlinks), a count: the prefix's end.
            todo = deque(x for i, part in enumerate(path, 1) for x in (part, i))
        real: list[str] = []
        node = ROOT
        links = 0
        while todo:
            part = todo.popleft()
            if isinstance(part, int):
                assert ctx.landed is not None
                ctx.landed.append(tuple(real))
                continue
            if isinstance(part, Marker):
                ctx.aliases.append(Alias(part.raw, tuple(real), part.layer, part.seq))
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
                found = Found(ENTRY, ctx.true[here].layer, ctx.true[here])
            else:
                found = self._lookup(here, ctx.top, ctx)
            if found.how in (HIDDEN, BOTTOM):
                if not create:
                    raise FileNotFoundError(
                        errno.ENOENT, "no such file in the image", image_path(here)
                    )
                found = Found(IMPLICIT, -1, None, True)
            entry = found.node if found.node is not None else Node(DIR, found.layer, -1)
            node = self._deref(entry, join(here), 0)
            last = not rest
            if node.kind == SYMLINK and (follow_final or not last):
                links += 1
                if links > MAX_SYMLINKS:
                    raise OSError(
                        errno.ELOOP, "too many levels of symbolic links", image_path(here)
                    )
                if node.linkname.startswith("/"):
                    real.clear()
                todo.appendleft(Marker(here, entry.layer, entry.seq))
                todo.extendleft(reversed(node.linkname.split("/")))
                continue
            if not last and node.kind != DIR:
                raise NotADirectoryError(errno.ENOTDIR, "not a directory", image_path(here))
            ctx.passed(here, found)
            real.append(part)
        return tuple(real), node

    # --- the answer ----------------------------------------------------------------------

    def open(self, path: str) -> KeptContent:
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
            raise FileNotFoundError(
                errno.ENOENT, f"no such file in the image ({e})", image_path(path)
            ) from e
        if node.kind == DIR:
            raise IsADirectoryError(errno.EISDIR, "is a directory in the image", image_path(path))
        if node.kind != FILE:
            raise OSError(errno.EINVAL, "not a regular file in the image", image_path(path))
        idx = self._index[node.layer]
        if node.seq not in idx.data and node.seq not in idx.too_big:
            # Not kept on the first pass (found through a hardlink or a late symlink).
            again = self._scan(node.layer, set(), node.seq)
            idx.data.update(again.data)
            idx.too_big.update(again.too_big)
        size = idx.too_big.get(node.seq)
        if size is not None:
            limit = self._max_size
            raise ProxyError(
                f"{image_path(path)}: the file is {size} bytes, over the limit of {limit} bytes"
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

    def keep(self, paths: Sequence[str]) -> None:
        """Keep the contents of ``paths`` from every layer scanned from now on, so that
        opening each of them afterwards reads no layer a second time."""
        for path in paths:
            if "\0" in path:
                raise ConfigurationError(f"not a valid path: {path!r}")
            try:
                self._outer_wants.append(clean_name(path))
            except UnsafeLayerError:
                continue  # a name no layer can have: it is simply not found
