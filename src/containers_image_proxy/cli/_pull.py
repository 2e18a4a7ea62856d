"""``pull``: an image into an OCI image layout, blobs in parallel, resumable.

The order of writes keeps the layout valid at every moment, whatever interrupts it: first
the blobs (layers and config), each through a temporary file renamed into place only after
the reader verified size and digest; then the manifest blob; last ``index.json``, replaced
in one rename. An interrupted pull leaves complete, verified blobs and no reference to a
missing one; the next pull hashes what is there and fetches only the rest.

The manifest written is the one skopeo's proxy returns: the stored bytes for an OCI
manifest, the OCI conversion of a Docker schema 2 one (layer blobs are the same bytes
either way, only media types change). Its digest in ``index.json`` is the sha256 of the
bytes written, which differs from the registry's digest after such a conversion.
"""

from __future__ import annotations

import concurrent.futures
import fcntl
import json
import logging
import os
import sys
import threading
from typing import Any, Dict, List

from .._core.session import OpenedImage
from .._errors import ProxyError
from .._models import MEDIA_TYPE_OCI_INDEX, MEDIA_TYPE_OCI_MANIFEST, Descriptor, Digest
from .._reference import ImageReference
from .._sync import ImageProxy
from ._commands import IMAGE_CONFIG_TYPES, Context, opened, parse_manifest, short_digest
from ._errors import OK, USAGE, CliError
from ._files import AtomicFile, file_digest, write_atomically
from ._options import split_layout_target
from ._progress import Reporter, total_task

log = logging.getLogger("containers_image_proxy.cli")

REF_NAME = "org.opencontainers.image.ref.name"
LAYOUT_FILE = "oci-layout"
LAYOUT_VERSION = {"imageLayoutVersion": "1.0.0"}
_CHUNK = 1024 * 1024
# How long workers get to stop on their own after Ctrl-C before skopeo is shut down
# under them (which ends any read still waiting for data).
_STOP_GRACE = 2.0


class _Cancelled(Exception):
    """Another blob failed, or the user interrupted: stop this one."""


class Layout:
    """An OCI image layout directory being written to."""

    def __init__(self, path: str) -> None:
        self.path = path
        marker = os.path.join(path, LAYOUT_FILE)
        if os.path.isdir(path) and os.listdir(path) and not os.path.exists(marker):
            raise CliError(f"{path} is not empty and not an OCI image layout", USAGE)
        if os.path.exists(path) and not os.path.isdir(path):
            raise CliError(f"{path} exists and is not a directory", USAGE)
        os.makedirs(path, exist_ok=True)
        if os.path.exists(marker):
            try:
                with open(marker, "rb") as f:
                    version = json.load(f).get("imageLayoutVersion")
            except (ValueError, AttributeError):
                version = None
            if not isinstance(version, str):
                raise CliError(f"{marker} is not a valid oci-layout file")
        else:
            write_atomically(marker, json.dumps(LAYOUT_VERSION).encode())

    def blob_path(self, digest: Digest) -> str:
        """Where a blob lives: ``blobs/<algorithm>/<hex>``."""
        return os.path.join(self.path, "blobs", digest.algorithm, digest.hex)

    def has_blob(self, desc: Descriptor) -> bool:
        """Whether the blob is there, complete, with the right content (it is hashed)."""
        path = self.blob_path(desc.digest)
        try:
            if os.stat(path).st_size != desc.size:
                return False
        except FileNotFoundError:
            return False
        return file_digest(path, desc.digest.algorithm) == desc.digest

    def put_bytes(self, digest: Digest, data: bytes) -> None:
        """Store a small blob held in memory (the manifest)."""
        path = self.blob_path(digest)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        if file_digest(path, digest.algorithm) != digest:
            write_atomically(path, data)

    def tag(self, descriptor: Dict[str, Any], tag: str) -> None:
        """Point ``tag`` at ``descriptor`` in index.json, replacing an older one atomically.

        The read-modify-write runs under a lock on the layout directory, so two pulls into
        one layout do not drop each other's tags.
        """
        index_path = os.path.join(self.path, "index.json")
        fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            index = self._read_index(index_path)
            manifests = [
                m
                for m in index.get("manifests", [])
                if not (isinstance(m, dict) and m.get("annotations", {}).get(REF_NAME) == tag)
            ]
            entry = dict(descriptor)
            entry["annotations"] = {**entry.get("annotations", {}), REF_NAME: tag}
            manifests.append(entry)
            index["schemaVersion"] = 2
            index.setdefault("mediaType", MEDIA_TYPE_OCI_INDEX)
            index["manifests"] = manifests
            write_atomically(index_path, json.dumps(index, separators=(",", ":")).encode())
        finally:
            os.close(fd)  # also releases the lock

    @staticmethod
    def _read_index(path: str) -> Dict[str, Any]:
        try:
            with open(path, "rb") as f:
                index = json.load(f)
        except FileNotFoundError:
            return {}
        except ValueError as e:
            raise CliError(f"{path} is not valid JSON: {e}") from None
        if not isinstance(index, dict) or not isinstance(index.get("manifests", []), list):
            raise CliError(f"{path} is not an OCI image index")
        return index


class _Fetcher:
    """Fetches blobs into the layout from worker threads over one (thread-safe) proxy."""

    def __init__(
        self, proxy: ImageProxy, img: OpenedImage, layout: Layout, reporter: Reporter
    ) -> None:
        self.proxy = proxy
        self.img = img
        self.layout = layout
        self.reporter = reporter
        self.cancel = threading.Event()
        self.fetched = 0
        self.present = 0
        self._lock = threading.Lock()

    def fetch(self, desc: Descriptor) -> None:
        """Make sure one blob is in the layout, fetching it if it is not there whole."""
        if self.cancel.is_set():
            raise _Cancelled()
        # a bar per blob being worked on, not per blob waiting: images can have hundreds
        task = self.reporter.task(short_digest(desc.digest), desc.size)
        if self.layout.has_blob(desc):
            task.finish(skipped=True)
            with self._lock:
                self.present += 1
            return
        path = self.layout.blob_path(desc.digest)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        # The temporary name is hidden and says what it is, in case a SIGKILL leaves it.
        with (
            self.proxy.get_descriptor(self.img, desc) as reader,
            AtomicFile(path, prefix=f".pull-{desc.digest.hex[:16]}-") as out,
        ):
            while True:
                if self.cancel.is_set():
                    raise _Cancelled()
                # read1: one read of the pipe, so a cancel is seen within one chunk's time
                chunk = reader.read1(_CHUNK)
                if not chunk:
                    break  # the reader checked size and digest before saying so
                out.write(chunk)
                task.advance(len(chunk))
            out.commit()
        task.finish()
        with self._lock:
            self.fetched += 1


def _descriptors(manifest_blobs: List[Descriptor]) -> List[Descriptor]:
    seen: Dict[str, Descriptor] = {}
    for desc in manifest_blobs:
        seen.setdefault(str(desc.digest), desc)
    return list(seen.values())


def _run_parallel(fetcher: _Fetcher, blobs: List[Descriptor], jobs: int) -> None:
    """Fetch every blob with ``jobs`` threads; the first failure (or Ctrl-C) stops all."""
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="pull")
    futures = [pool.submit(fetcher.fetch, d) for d in blobs]
    try:
        for fut in concurrent.futures.as_completed(futures):
            fut.result()
    except BaseException as e:
        log.debug("stopping the transfers: %s", type(e).__name__)
        fetcher.cancel.set()
        for fut in futures:
            fut.cancel()
        # Workers stop at their next chunk; one waiting on a stalled transfer only wakes
        # when skopeo goes away, so after a grace period the proxy is closed under it.
        _, running = concurrent.futures.wait(futures, timeout=_STOP_GRACE)
        if running:
            log.debug("stopping skopeo to end %d transfer(s)", len(running))
            try:
                fetcher.proxy.close()
            except ProxyError:
                pass
        raise
    finally:
        pool.shutdown(wait=True)
        log.debug("transfers over")


def _store_converted_config(
    proxy: ImageProxy, img: OpenedImage, layout: Layout, config: Descriptor
) -> bool:
    """Store the config from GetFullConfig when it is the blob the manifest names.

    When skopeo converts a Docker manifest to OCI it converts the config too, and the
    manifest then names a config blob the source does not have (GetBlob says "unknown
    blob"): it is exactly what GetFullConfig returns, verified here by its digest. For an
    OCI image GetFullConfig may re-serialise the config; the digest then differs and the
    config blob is fetched like the layers.
    """
    if config.media_type not in IMAGE_CONFIG_TYPES or layout.has_blob(config):
        return False
    data = proxy.fetch_config_raw(img)
    if len(data) != config.size or Digest.of(data, config.digest.algorithm) != config.digest:
        return False
    layout.put_bytes(config.digest, data)
    return True


def _default_tag(image: str) -> str:
    try:
        tag = ImageReference.parse(image).tag
    except ProxyError:
        tag = None
    return tag or "latest"


def cmd_pull(ctx: Context) -> int:
    """Copy the image into an OCI layout; prints the manifest digest written."""
    path, tag = split_layout_target(ctx.args.target)
    tag = tag or _default_tag(ctx.args.image)
    with opened(ctx) as (proxy, img):
        stored_digest, raw = proxy.fetch_manifest_raw_oci(img)
        manifest = parse_manifest(raw)
        layout = Layout(path)
        config_stored = _store_converted_config(proxy, img, layout, manifest.config)
        blobs = _descriptors([*manifest.layers, manifest.config])
        total_task(ctx.reporter, "total", sum(d.size for d in blobs))
        fetcher = _Fetcher(proxy, img, layout, ctx.reporter)
        _run_parallel(fetcher, blobs, ctx.args.jobs)
        if config_stored:  # the workers found it present, but it was fetched just now
            fetcher.fetched, fetcher.present = fetcher.fetched + 1, fetcher.present - 1
        digest = Digest.of(raw)
        layout.put_bytes(digest, raw)
    descriptor: Dict[str, Any] = {
        "mediaType": manifest.media_type or MEDIA_TYPE_OCI_MANIFEST,
        "digest": str(digest),
        "size": len(raw),
    }
    if manifest.artifact_type:
        descriptor["artifactType"] = manifest.artifact_type
    layout.tag(descriptor, tag)
    ctx.reporter.close()
    if ctx.chatty:
        note = "" if digest == stored_digest else f" (converted from {stored_digest})"
        print(
            f"wrote oci:{path}:{tag}{note}: {fetcher.fetched} blob(s) fetched,"
            f" {fetcher.present} already present",
            file=sys.stderr,
        )
    ctx.print(str(digest))
    return OK
