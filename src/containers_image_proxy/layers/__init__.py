"""Image layers: decompression, streaming tar, safe unpacking, one file out of an image.

:func:`unpack` writes an image's merged filesystem into a directory, applying the layers
in order with OCI whiteout semantics, every path confined to the destination;
:func:`read_file` reads one file without unpacking anything. Both check every layer
against the config's ``rootfs.diff_ids`` and read every blob to its end.

The engine works on plain binary file objects (:class:`LayerSource`,
:func:`unpack_layers`, :func:`read_file_from_layers`, :class:`LayerStream`), so layers from
anywhere (an OCI layout on disk, a registry client) can go through it.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any, Callable, Optional, Union

from .._errors import ConfigurationError
from .._progress import ProgressCallback, TransferProgress
from ._compression import DecompressingReader
from ._errors import LayerDigestError, LayerFormatError, UnsafeLayerError
from ._listing import (
    DirEntry,
    MergedTree,
    list_dir,
    list_dir_async,
    list_dir_from_layers,
    merge_layers,
)
from ._reading import copy_file_from_layers, read_file_from_layers, read_files_from_layers
from ._source import (
    AsyncProxy,
    Bridge,
    LayerSource,
    SyncProxy,
    async_sources,
    run_in_worker,
    sync_sources,
)
from ._tarstream import EntryData, LayerStream, iter_layer
from ._unpack import check_dest, unpack_layers

PathLike = Union[str, "os.PathLike[str]"]


def unpack(
    proxy: SyncProxy,
    image: Any,
    dest: PathLike,
    *,
    rootless: bool = False,
    progress: Optional[ProgressCallback] = None,
) -> None:
    """Unpack ``image`` (an OpenedImage of ``proxy``) into the directory ``dest``.

    ``dest`` must not exist yet or be an empty directory. Layers are applied in order with
    OCI semantics (whiteouts, opaque directories, hardlinks across layers, modes, mtimes,
    xattrs where the filesystem takes them); nothing is written outside ``dest``. Without
    ``rootless`` ownership is applied (needs root); with it the tree belongs to the caller
    and device nodes are skipped. The tree is built aside and moved into place at the end:
    on error ``dest`` is left as it was.

    Raises UnsafeLayerError for an entry that cannot be honoured inside ``dest``,
    LayerDigestError when a layer does not match its diff_id, LayerFormatError for a layer
    that is not a readable tar, ConfigurationError for an unusable ``dest``.

    ``progress``, when given, receives a :class:`~containers_image_proxy.TransferProgress`
    per layer blob as it is read (``digest`` the layer's compressed digest, ``done`` the
    compressed bytes read so far, ``total`` the layer's size), at a bounded rate, the last
    one, with ``done == total``, once the layer is read and verified. It is called from
    the thread that fetches the layers.
    """
    check_dest(dest)  # before any download
    unpack_layers(sync_sources(proxy, image, progress), dest, rootless=rootless)


def read_file(proxy: SyncProxy, image: Any, path: str, *, max_size: Optional[int] = None) -> bytes:
    """Read ``path`` from ``image``'s merged filesystem without unpacking it.

    Layers are read from the top down, stopping at the first that settles the answer;
    symlinks are followed inside the image's root. Raises FileNotFoundError when the
    merged filesystem has no such file, IsADirectoryError for a directory, and ProxyError
    naming the size when the file is larger than ``max_size`` bytes (checked from its
    header, before any of its content is kept).
    """
    return read_file_from_layers(sync_sources(proxy, image), path, max_size=max_size)


def copy_file(
    proxy: SyncProxy,
    image: Any,
    path: str,
    write: Callable[[bytes], Any],
    *,
    max_size: Optional[int] = None,
) -> int:
    """Hand ``path`` of ``image``'s merged filesystem to ``write`` in bounded chunks.

    :func:`read_file` without holding the file in memory: what it returns in one piece
    goes to ``write`` in chunks, only once every layer it depends on is verified (a
    large file waits in a temporary file meanwhile, sparse holes kept). Returns the
    number of bytes written. Example::

        copy_file(proxy, img, "/usr/lib/os-release", sys.stdout.buffer.write)

    Raises as :func:`read_file`.
    """
    return copy_file_from_layers(sync_sources(proxy, image), path, write, max_size=max_size)


def read_files(
    proxy: SyncProxy, image: Any, paths: Iterable[str], *, max_size: Optional[int] = None
) -> dict[str, bytes]:
    """Read several files of ``image``'s merged filesystem in one pass.

    Returns ``{path: content}`` for the paths that name a regular file; the others
    (missing, a directory, a device, a symlink loop) are left out. The layers are read for
    all the paths together, from the top down, stopping as soon as every path is settled:
    a scanner reading ``/etc/os-release`` and the dpkg status file pays for one pass, not
    two. A path reached through a symlink (``/etc/os-release`` ->
    ``../usr/lib/os-release`` on Debian) may cost a second read of the layer holding the
    link's target, as :func:`read_file` of it would. Example::

        files = read_files(proxy, img, ["/etc/os-release", "/var/lib/dpkg/status"])

    Raises ProxyError naming the size when a file is larger than ``max_size`` bytes, and
    the layer errors of :func:`read_file` (LayerDigestError, LayerFormatError,
    UnsafeLayerError).
    """
    return read_files_from_layers(sync_sources(proxy, image), paths, max_size=max_size)


async def unpack_async(
    proxy: AsyncProxy,
    image: Any,
    dest: PathLike,
    *,
    rootless: bool = False,
    progress: Optional[ProgressCallback] = None,
) -> None:
    """The async twin of :func:`unpack`, for an AsyncImageProxy.

    The engine runs in a worker thread that reads the blobs through the caller's loop;
    cancelling stops it, removes the staged tree and leaves ``dest`` as it was.
    ``progress`` is called on the caller's event loop. Raises what :func:`unpack` raises.
    """
    import asyncio

    check_dest(dest)
    loop = asyncio.get_running_loop()
    bridge = Bridge(loop)
    on_loop: Optional[ProgressCallback] = None
    if progress is not None:
        callback = progress

        def on_loop(report: TransferProgress) -> None:
            loop.call_soon_threadsafe(callback, report)

    sources = await async_sources(proxy, image, bridge, on_loop)
    await run_in_worker(bridge, lambda: unpack_layers(sources, dest, rootless=rootless))


async def read_file_async(
    proxy: AsyncProxy, image: Any, path: str, *, max_size: Optional[int] = None
) -> bytes:
    """The async twin of :func:`read_file`, for an AsyncImageProxy; raises what it raises
    (cancelling stops the worker and waits for its cleanup)."""
    import asyncio

    bridge = Bridge(asyncio.get_running_loop())
    sources = await async_sources(proxy, image, bridge)
    return await run_in_worker(
        bridge, lambda: read_file_from_layers(sources, path, max_size=max_size)
    )


async def read_files_async(
    proxy: AsyncProxy, image: Any, paths: Iterable[str], *, max_size: Optional[int] = None
) -> dict[str, bytes]:
    """The async twin of :func:`read_files`, for an AsyncImageProxy; raises what it raises
    (cancelling stops the worker and waits for its cleanup)."""
    import asyncio

    if isinstance(paths, (str, bytes)):
        raise ConfigurationError("paths must be a list of paths, not one path")
    wanted = list(paths)
    bridge = Bridge(asyncio.get_running_loop())
    sources = await async_sources(proxy, image, bridge)
    return await run_in_worker(
        bridge, lambda: read_files_from_layers(sources, wanted, max_size=max_size)
    )


__all__ = [
    "DecompressingReader",
    "DirEntry",
    "EntryData",
    "LayerDigestError",
    "LayerFormatError",
    "LayerSource",
    "LayerStream",
    "MergedTree",
    "UnsafeLayerError",
    "copy_file",
    "copy_file_from_layers",
    "iter_layer",
    "list_dir",
    "list_dir_async",
    "list_dir_from_layers",
    "merge_layers",
    "read_file",
    "read_file_async",
    "read_file_from_layers",
    "read_files",
    "read_files_async",
    "read_files_from_layers",
    "unpack",
    "unpack_async",
    "unpack_layers",
]
