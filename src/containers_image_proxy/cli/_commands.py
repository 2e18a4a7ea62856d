"""The commands other than ``pull``: each opens the image, asks the library, prints.

A command is a function of a :class:`Context` returning its exit status. Output goes to
``ctx.out`` as bytes: blobs and files are binary, and text is encoded the way the image
has it (UTF-8, undecodable names passed through unchanged).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import io
import json
import logging
import os
import stat
from dataclasses import dataclass
from typing import IO, Any, Iterator, List, Optional, Tuple

from .. import Feature, RequestError
from .._config import ProxyConfig
from .._core.protocol import decode_json
from .._core.session import OpenedImage
from .._errors import ConfigurationError, ProxyError
from .._models import (
    MEDIA_TYPE_DOCKER_CONFIG,
    MEDIA_TYPE_OCI_CONFIG,
    Digest,
    ImageConfig,
    ImageManifest,
    LayerInfo,
)
from .._sync import ImageProxy
from ._errors import FAILURE, NOT_FOUND, OK, USAGE, CliError, exit_code, not_found
from ._files import AtomicFile, copy_stream, destination_directory
from ._progress import CountingReader, Reporter, total_task
from ._quoting import shell_escape

log = logging.getLogger("containers_image_proxy.cli")

IMAGE_CONFIG_TYPES = (MEDIA_TYPE_OCI_CONFIG, MEDIA_TYPE_DOCKER_CONFIG)


@dataclass
class Context:
    """What every command gets: its arguments, the proxy settings, where output goes."""

    args: argparse.Namespace
    config: ProxyConfig
    reporter: Reporter
    out: IO[bytes]
    #: messages for a person (pull's summary) go to stderr, and only on a terminal
    chatty: bool = False
    #: standard output is a terminal: strings from the image are shown escaped
    terminal: bool = False

    def write(self, data: bytes) -> None:
        """Write command output."""
        self.out.write(data)

    def print(self, text: str = "") -> None:
        """Write a line of text output (names from images may not be valid UTF-8)."""
        self.out.write(text.encode("utf-8", "surrogateescape") + b"\n")

    def shown(self, text: str) -> str:
        """A string from the image as it may reach the output: on a terminal, quoted the
        way ``ls`` quotes file names (control characters cannot act); elsewhere exact."""
        return shell_escape(text) if self.terminal else text

    def write_document(self, data: bytes) -> None:
        """Write a manifest or config: exact bytes, plus a final newline on a terminal (as
        ``jq`` ends its output) so that the prompt does not follow the closing brace."""
        self.out.write(data)
        if self.terminal and not data.endswith(b"\n"):
            self.out.write(b"\n")

    def print_json(self, value: Any) -> None:
        """Write a JSON document, indented, on its own lines.

        Always valid UTF-8: a byte of a name that is not UTF-8 (held as a lone surrogate)
        becomes the JSON escape ``\\udcXX``, which decodes back to the same string.
        """
        text = json.dumps(value, indent=2, ensure_ascii=False)
        self.out.write(text.encode("utf-8", "backslashreplace") + b"\n")


@contextlib.contextmanager
def open_proxy(ctx: Context) -> Iterator[ImageProxy]:
    """Start skopeo for one command; it is shut down (or killed) whatever happens."""
    with ImageProxy(ctx.config) as proxy:
        log.debug("started %r", proxy)
        try:
            yield proxy
        finally:
            log.debug("shutting skopeo down")
    log.debug("skopeo is gone")


@contextlib.contextmanager
def opened(ctx: Context) -> Iterator[Tuple[ImageProxy, OpenedImage]]:
    """The proxy and the command's image, opened; a missing image exits with status 3.

    After an error (or Ctrl-C) the image is not closed with a request of its own: closing
    the proxy releases it, and a proxy in trouble must not hold up the exit.
    """
    ref = ctx.args.image
    with open_proxy(ctx) as proxy:
        img = proxy.open_image_optional(ref)
        if img is None:
            raise not_found(f"image not found: {ref}")
        yield proxy, img
        proxy.close_image(img)


def human_size(n: int) -> str:
    """``1536`` -> ``"1.5 KiB"``."""
    if n < 0:
        return "?"
    if n < 1024:
        return f"{n} B"
    value = float(n)
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        value /= 1024
        if value < 1024 or unit == "TiB":
            break
    return f"{value:.1f} {unit}"


def short_digest(digest: str) -> str:
    """``sha256:0123456789abcdef...`` -> ``0123456789ab`` (for progress labels)."""
    return digest.partition(":")[2][:12] or digest


def parse_manifest(raw: bytes) -> ImageManifest:
    """The manifest the proxy returned, parsed; a malformed one is a failure, not usage."""
    try:
        return ImageManifest.from_bytes(raw)
    except ConfigurationError as e:
        raise CliError(f"the proxy returned a manifest that cannot be read: {e}") from None


def layer_infos(proxy: ImageProxy, img: OpenedImage, manifest: ImageManifest) -> List[LayerInfo]:
    """The layers as a copy fetches them; the manifest's for an artifact skopeo refuses."""
    if manifest.config.media_type not in IMAGE_CONFIG_TYPES:
        # skopeo's layer info calls need an image; an artifact's layers are its blobs
        return [LayerInfo.from_descriptor(d) for d in manifest.layers]
    return proxy.get_layer_info(img)


class ProgressProxy:
    """An ImageProxy whose blob reads advance progress bars (for the layer engine).

    It has what the layer functions need (``fetch_config``, ``get_layer_info``,
    ``get_blob``), so ``unpack``, ``read_file`` and the listing run unchanged through it.
    """

    def __init__(self, proxy: ImageProxy, reporter: Reporter) -> None:
        self._proxy = proxy
        self._reporter = reporter
        self._total_made = False

    def fetch_config(self, image: Any, /) -> ImageConfig:
        return self._proxy.fetch_config(image)

    def get_layer_info(self, image: Any, /) -> List[LayerInfo]:
        infos = self._proxy.get_layer_info(image)
        if not self._total_made and len(infos) > 1:
            self._total_made = True
            total_task(self._reporter, "total", sum(max(0, i.size) for i in infos))
        return infos

    def get_blob(self, image: Any, digest: Any, size: int, /) -> CountingReader:
        reader = self._proxy.get_blob(image, digest, size)
        return CountingReader(reader, self._reporter.task(short_digest(str(digest)), size))


# --- inspect, manifest, config, layers -----------------------------------------------------


def cmd_inspect(ctx: Context) -> int:
    """Summary of an image, or with --json one object of everything."""
    with opened(ctx) as (proxy, img):
        digest, raw = proxy.fetch_manifest_raw_oci(img)
        manifest = parse_manifest(raw)
        config_raw: Optional[bytes] = None
        if manifest.config.media_type in IMAGE_CONFIG_TYPES:
            config_raw = proxy.fetch_config_raw(img)
        layers = layer_infos(proxy, img, manifest)
    config_json = decode_json(config_raw, "GetFullConfig") if config_raw is not None else None
    if ctx.args.json:
        ctx.print_json(
            {
                "digest": str(digest),
                "manifest": json.loads(raw),
                "config": config_json,
                "layers": [layer.to_json() for layer in layers],
            }
        )
        return OK
    config = ImageConfig.from_json(config_json) if config_json is not None else None
    _print_summary(ctx, str(digest), manifest, config, layers)
    return OK


def _print_summary(
    ctx: Context,
    digest: str,
    manifest: ImageManifest,
    config: Optional[ImageConfig],
    layers: List[LayerInfo],
) -> None:
    shown = ctx.shown
    rows: List[Tuple[str, str]] = [("Image", shown(ctx.args.image)), ("Digest", digest)]
    if config is None:
        rows.append(("Artifact", shown(manifest.artifact_type or "-")))
        rows.append(("Config", shown(manifest.config.media_type)))
    else:
        platform = f"{config.os}/{config.architecture}"
        if config.variant:
            platform += f"/{config.variant}"
        rows.append(("Platform", shown(platform)))
        rows.append(("Created", shown(config.created or "-")))
        run = config.config
        for label, argv in (
            ("Entrypoint", run.entrypoint if run else None),
            ("Cmd", run.cmd if run else None),
        ):
            # JSON with ensure_ascii: every control character is a \u escape
            rows.append((label, json.dumps(list(argv)) if argv is not None else "-"))
    total = sum(max(0, layer.size) for layer in layers)
    rows.append(("Layers", f"{len(layers)} ({human_size(total)})"))
    for label, value in rows:
        ctx.print(f"{label + ':':<12}{value}")
    width = max((len(human_size(layer.size)) for layer in layers), default=0)
    for layer in layers:
        size = human_size(layer.size)
        ctx.print(f"  {layer.digest}  {size:>{width}}  {shown(layer.media_type)}")
    labels = dict(config.config.labels) if config is not None and config.config else {}
    labels.update(manifest.annotations if config is None else {})
    if labels:
        ctx.print("Labels:" if config is not None else "Annotations:")
        for key in sorted(labels):
            ctx.print(f"  {shown(key)}={shown(labels[key])}")


def cmd_manifest(ctx: Context) -> int:
    """The manifest bytes as the proxy returns them."""
    with opened(ctx) as (proxy, img):
        _, raw = proxy.fetch_manifest_raw_oci(img)
    ctx.write_document(raw)
    return OK


def cmd_config(ctx: Context) -> int:
    """The config bytes as the proxy returns them (the config blob for an artifact)."""
    with opened(ctx) as (proxy, img):
        _, raw = proxy.fetch_manifest_raw_oci(img)
        manifest = parse_manifest(raw)
        if manifest.config.media_type in IMAGE_CONFIG_TYPES:
            data = proxy.fetch_config_raw(img)
        else:
            with proxy.get_descriptor(img, manifest.config) as blob:
                data = blob.read()
    ctx.write_document(data)
    return OK


def cmd_layers(ctx: Context) -> int:
    """The layer list."""
    with opened(ctx) as (proxy, img):
        _, raw = proxy.fetch_manifest_raw_oci(img)
        layers = layer_infos(proxy, img, parse_manifest(raw))
    if ctx.args.json:
        ctx.print_json([layer.to_json() for layer in layers])
        return OK
    width = max((len(str(layer.size)) for layer in layers), default=0)
    for layer in layers:
        ctx.print(f"{layer.digest}  {layer.size:>{width}}  {ctx.shown(layer.media_type)}")
    return OK


# --- blob ------------------------------------------------------------------------------


def _referenced_size(
    proxy: ImageProxy, img: OpenedImage, manifest: ImageManifest, digest: Digest
) -> Optional[int]:
    """The size of a blob the image's OCI manifest or layer list names, else None."""
    for desc in (manifest.config, *manifest.layers):
        if desc.digest == digest:
            return desc.size
    for layer in layer_infos(proxy, img, manifest):
        if layer.digest == digest and layer.size >= 0:
            return layer.size
    return None


def _ref(img: OpenedImage) -> str:
    """The image's reference, for messages."""
    return str(img.reference)


def _open_blob(
    ctx: Context, proxy: ImageProxy, img: OpenedImage, digest: Digest
) -> Tuple[Any, Optional[int]]:
    """A verified reader of the blob ``digest`` of the image, and its size (None: unknown).

    For an image skopeo converts (Docker schema 2 to OCI: the manifest it returns is not
    the stored one), two configs exist: the converted one, which the OCI manifest names
    and no source stores (taken from GetFullConfig and checked here), and the stored one,
    which only the stored manifest names (fetched without a size from GetRawBlob, or with
    ``--size`` on older skopeo).
    """
    stored_digest, raw = proxy.fetch_manifest_raw_oci(img)
    manifest = parse_manifest(raw)
    converted = Digest.of(raw, stored_digest.algorithm) != stored_digest
    if (
        converted
        and digest == manifest.config.digest
        and manifest.config.media_type in IMAGE_CONFIG_TYPES
    ):
        data = proxy.fetch_config_raw(img)
        if Digest.of(data, digest.algorithm) != digest:
            raise CliError(f"the converted config does not match {digest}")
        return io.BytesIO(data), len(data)
    size = _referenced_size(proxy, img, manifest, digest)
    given: Optional[int] = ctx.args.size
    if size is not None:
        if given is not None and given != size:
            raise CliError(f"--size {given}: the image names {digest} with {size} bytes", USAGE)
        return proxy.get_blob(img, digest, size), size
    if not converted:
        raise not_found(f"blob {digest} is not referenced by {_ref(img)}")
    # perhaps the stored config, which only the stored manifest names
    size = given
    try:
        if size is not None:
            return proxy.get_blob(img, digest, size), size
        if proxy.supports(Feature.RAW_BLOB):
            return proxy.get_raw_blob(img, digest, verify=True), None
    except RequestError as e:
        if exit_code(e) == NOT_FOUND or "unknown blob" in e.message.lower():
            raise not_found(f"blob {digest} is not in {_ref(img)}") from None
        raise
    raise CliError(
        f"blob {digest} is not named by the OCI manifest skopeo converted {_ref(img)} to;"
        " if it is the stored config, give its size (--size, from the stored manifest:"
        " skopeo inspect --raw): this skopeo needs it",
        USAGE,
    )


def cmd_blob(ctx: Context) -> int:
    """One verified blob to a file (atomically) or to standard output."""
    try:
        digest = Digest.parse(ctx.args.digest)
    except ConfigurationError as e:
        raise CliError(str(e), USAGE) from None
    output: Optional[str] = ctx.args.output
    if output == "-":
        output = None
    with opened(ctx) as (proxy, img):
        reader, size = _open_blob(ctx, proxy, img, digest)
        task = ctx.reporter.task(short_digest(digest), size)
        with reader:
            if output is None:
                copy_stream(CountingReader(reader, task), ctx.write)
            else:
                with AtomicFile(output) as out:
                    copy_stream(CountingReader(reader, task), out.write)
                    out.commit()
        task.finish()
    return OK


# --- the filesystem: cat, ls, unpack ----------------------------------------------------


def cmd_cat(ctx: Context) -> int:
    """One file of the merged filesystem to standard output, in bounded chunks."""
    from ..layers import copy_file
    from ..layers._paths import image_path

    path: str = ctx.args.path
    started = False

    def write(chunk: bytes) -> None:
        nonlocal started
        if not started:
            started = True
            ctx.reporter.close()  # bars gone before the file's content reaches the terminal
        ctx.write(chunk)

    with opened(ctx) as (proxy, img):
        try:
            copy_file(ProgressProxy(proxy, ctx.reporter), img, path, write)
        except IsADirectoryError:
            raise CliError(f"{image_path(path)}: is a directory in the image") from None
        except FileNotFoundError as e:
            if isinstance(e, ProxyError):
                raise
            raise not_found(f"{image_path(path)}: no such file in the image") from None
        except OSError as e:
            if isinstance(e, ProxyError):
                raise
            raise CliError(f"{image_path(path)}: {e.strerror or e}") from None
    ctx.reporter.close()
    return OK


def _format_mtime(mtime: float) -> str:
    try:
        when = datetime.datetime.fromtimestamp(mtime, datetime.timezone.utc)
    except (OverflowError, OSError, ValueError):
        return "?"
    return when.strftime("%Y-%m-%d %H:%M")


def cmd_ls(ctx: Context) -> int:
    """A directory listing of the merged filesystem."""
    from ..layers import list_dir
    from ..layers._paths import image_path

    path: str = ctx.args.path
    with opened(ctx) as (proxy, img):
        try:
            entries = list_dir(ProgressProxy(proxy, ctx.reporter), img, path)
        except (FileNotFoundError, NotADirectoryError) as e:
            if isinstance(e, ProxyError):
                raise
            where = shell_escape(image_path(path))
            raise not_found(f"{where}: no such file or directory in the image") from None
        except OSError as e:
            if isinstance(e, ProxyError):
                raise
            raise CliError(f"{shell_escape(image_path(path))}: {e.strerror or e}") from None
    ctx.reporter.close()
    if ctx.args.json:
        ctx.print_json([entry.to_json() for entry in entries])
        return OK
    if not ctx.args.long:
        for entry in entries:
            ctx.print(ctx.shown(entry.name))
        return OK
    owners = [f"{e.uid}/{e.gid}" for e in entries]
    sizes = [
        f"{e.device[0]}, {e.device[1]}" if e.kind in ("char", "block") else str(e.size)
        for e in entries
    ]
    ow = max((len(o) for o in owners), default=0)
    sw = max((len(s) for s in sizes), default=0)
    for entry, owner, size in zip(entries, owners, sizes):
        name = ctx.shown(entry.name)
        if entry.kind == "symlink":
            name += f" -> {ctx.shown(entry.linkname)}"
        ctx.print(
            f"{stat.filemode(entry.st_mode)} {entry.nlink:>2} {owner:<{ow}} {size:>{sw}}"
            f" {_format_mtime(entry.mtime)} {name}"
        )
    return OK


def cmd_unpack(ctx: Context) -> int:
    """The image as a root filesystem."""
    from ..layers import unpack

    if not ctx.args.rootless and os.geteuid() != 0:
        raise CliError("applying the layers' owners needs root; add --rootless", USAGE)
    with opened(ctx) as (proxy, img), destination_directory(ctx.args.dest):
        unpack(ProgressProxy(proxy, ctx.reporter), img, ctx.args.dest, rootless=ctx.args.rootless)
    return OK


# --- exists ----------------------------------------------------------------------------


def cmd_exists(ctx: Context) -> int:
    """0 if the image exists, 1 if not (failures are mapped by the caller)."""
    with open_proxy(ctx) as proxy:
        img = proxy.open_image_optional(ctx.args.image)
        if img is None:
            return FAILURE
        proxy.close_image(img)
    return OK


__all__ = [
    "Context",
    "ProgressProxy",
    "cmd_blob",
    "cmd_cat",
    "cmd_config",
    "cmd_exists",
    "cmd_inspect",
    "cmd_layers",
    "cmd_ls",
    "cmd_manifest",
    "cmd_unpack",
]
