"""The answers of the read engine: one file, one file streamed, many files in one pass."""

from __future__ import annotations

import errno
from collections.abc import Iterable, Sequence
from typing import Any, Callable, Optional

from .._errors import ConfigurationError
from ._readfile import MergedReader
from ._source import LayerSource


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


def read_files_from_layers(
    sources: Sequence[LayerSource], paths: Iterable[str], *, max_size: Optional[int] = None
) -> dict[str, bytes]:
    """Read several files of the merged filesystem of ``sources`` in one pass.

    The engine of :func:`read_files`. Returns ``{path: content}`` for the paths that name a
    regular file (after symlinks); the others (missing, a directory, a device, a symlink
    loop) are left out. The layers are read for all the paths together, from the top down,
    and no further down than the last path still unsettled needs. Raises ProxyError naming
    the size when a file is larger than ``max_size``, and the layer errors of
    :func:`read_file_from_layers`.
    """
    _check_max_size(max_size)
    if isinstance(paths, (str, bytes)):
        raise ConfigurationError("paths must be a list of paths, not one path")
    wanted = list(dict.fromkeys(paths))  # each once, in the caller's order
    for path in wanted:
        if not isinstance(path, str):
            raise ConfigurationError(f"paths must be strings, got {type(path).__name__}")
    found: dict[str, bytes] = {}
    with MergedReader(sources, max_size) as reader:
        reader.keep(wanted)
        for path in wanted:
            try:
                found[path] = reader.read(path)
            except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
                continue
            except OSError as e:
                # EINVAL: not a regular file; ELOOP: a symlink loop, which names no file
                if e.errno not in (errno.EINVAL, errno.ELOOP):
                    raise
    return found
