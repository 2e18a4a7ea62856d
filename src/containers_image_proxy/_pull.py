"""``pull``: an image, or some or all instances of a multi-platform image, into an OCI
image layout; resumable, verified, blobs fetched concurrently.

Blobs already in the layout are hashed and kept, not fetched again (an updater that pulls
a new version fetches only the layers that changed). Every blob is verified before it is
renamed into place; ``index.json`` is replaced atomically and keeps the layout's other
tags (see :mod:`._layout`).

The manifest written is the one skopeo's proxy returns: the stored bytes of an OCI
manifest (its digest is kept), the OCI conversion of a Docker schema 2 one (a new digest:
layer blobs are the same bytes, media types change). Some transports (``docker-archive:``,
``docker-daemon:``) serve uncompressed layers under the compressed media types of their
manifests: what is written is recorded as it is, so the manifest then names the media
type of the bytes in the layout, and its digest changes accordingly.
"""

from __future__ import annotations

import concurrent.futures
import json
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Optional, Union

from ._catalog import fetch_raw_manifest, parse_raw_manifest
from ._errors import ConfigurationError, ImageNotFoundError, ProtocolError, ProxyError
from ._layout import Layout
from ._models import (
    MEDIA_TYPE_DOCKER_CONFIG,
    MEDIA_TYPE_OCI_CONFIG,
    MEDIA_TYPE_OCI_INDEX,
    MEDIA_TYPE_OCI_MANIFEST,
    Descriptor,
    Digest,
    ImageManifest,
    Platform,
)
from ._platform import Wanted, matches, show_platform, show_wanted, wanted_platforms
from ._progress import Meter, ProgressCallback
from ._reference import ImageReference, as_reference
from .layers._source import close_blob

log = logging.getLogger("containers_image_proxy.pull")

_CHUNK = 1024 * 1024
_IMAGE_CONFIG_TYPES = (MEDIA_TYPE_OCI_CONFIG, MEDIA_TYPE_DOCKER_CONFIG)
DEFAULT_JOBS = 4

# What the first bytes of a layer say it is, and the OCI media type suffix for that.
_GZIP, _ZSTD = b"\x1f\x8b", b"\x28\xb5\x2f\xfd"
_OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
_OCI_NONDIST = "application/vnd.oci.image.layer.nondistributable.v1.tar"


class Cancelled(ProxyError):
    """Another blob of the same pull failed, or the caller interrupted it."""


@dataclass
class PullResult:
    """What a pull wrote: the digest the tag points at, and what it cost."""

    digest: Digest
    descriptor: dict[str, Any]
    fetched: int = 0  # blobs downloaded
    present: int = 0  # blobs already in the layout, verified and kept
    converted: list[str] = field(default_factory=list)  # notes on manifests not kept as stored


def instance_reference(ref: ImageReference, digest: Digest) -> ImageReference:
    """The reference that opens one instance of ``ref``'s index by its manifest digest.

    Raises ConfigurationError for transports that cannot name an instance by digest.
    """
    if ref.transport == "docker":
        return ImageReference("docker", f"//{ref.registry_name}@{digest}")
    raise ConfigurationError(
        f"choosing platforms needs a docker:// reference; {ref.transport}: instances"
        " cannot be opened by digest (pull with platforms=None, which takes the platform"
        " the proxy selects)"
    )


def _true_media_type(media_type: str, head: bytes) -> str:
    """The layer media type that describes bytes starting with ``head``."""
    for base in (_OCI_LAYER, _OCI_NONDIST):
        if media_type == base or media_type.startswith(base + "+"):
            if head.startswith(_GZIP):
                return base + "+gzip"
            if head.startswith(_ZSTD):
                return base + "+zstd"
            return base
    return media_type  # not a tar layer type we know: bytes are what the type says


class _Puller:
    """One pull: fetches blobs into the layout from worker threads over one proxy."""

    def __init__(
        self,
        proxy: Any,
        layout: Layout,
        progress: Optional[ProgressCallback],
        jobs: int,
    ) -> None:
        self.proxy = proxy
        self.layout = layout
        self.progress = progress
        self.jobs = max(1, jobs)
        self.cancel = threading.Event()
        self.result_lock = threading.Lock()
        self.fetched = 0
        self.present = 0
        self.converted: list[str] = []
        # one fetch per digest even when instances share layers
        self._claims: dict[str, concurrent.futures.Future[None]] = {}

    # --- blobs ---------------------------------------------------------------------------

    def ensure_blob(self, img: Any, desc: Descriptor) -> None:
        """Make sure one blob is in the layout, fetching it if it is not there whole."""
        key = str(desc.digest)
        with self.result_lock:
            claim = self._claims.get(key)
            mine = claim is None
            if mine:
                claim = self._claims[key] = concurrent.futures.Future()
        assert claim is not None
        if not mine:
            claim.result()  # another worker fetches it; its failure is ours too
            return
        try:
            self._ensure_blob(img, desc)
        except BaseException as e:
            claim.set_exception(e)
            raise
        claim.set_result(None)

    def _ensure_blob(self, img: Any, desc: Descriptor) -> None:
        if self.cancel.is_set():
            raise Cancelled("the pull was stopped")
        if self.layout.has_blob(desc, self.progress):
            with self.result_lock:
                self.present += 1
            return
        meter = Meter(self.progress, str(desc.digest), desc.size)
        reader = self.proxy.get_descriptor(img, desc)
        failed = True
        try:
            with self.layout.new_blob(desc.digest) as out:
                meter.start()
                read = getattr(reader, "read1", None) or reader.read
                while True:
                    if self.cancel.is_set():
                        raise Cancelled("the pull was stopped")
                    chunk = read(_CHUNK)
                    if not chunk:
                        break  # the reader verified size and digest before saying so
                    out.write(chunk)
                    meter.advance(len(chunk))
                out.commit()
            failed = False
        finally:
            close_blob(reader, failed)
        meter.finish()
        with self.result_lock:
            self.fetched += 1

    def ensure_blobs(self, img: Any, blobs: Sequence[Descriptor]) -> None:
        """Every blob of ``blobs``, ``jobs`` at a time; the first failure stops the rest."""
        self.run_all([lambda d=d: self.ensure_blob(img, d) for d in blobs], self.jobs)

    def run_all(self, calls: Sequence[Any], jobs: int) -> None:
        """Run ``calls``, ``jobs`` at a time; the first failure stops the others, and the
        error raised is the one that caused the stop (not a ``Cancelled`` it led to)."""
        if len(calls) <= 1 or jobs <= 1:
            for call in calls:
                call()
            return
        with concurrent.futures.ThreadPoolExecutor(jobs, thread_name_prefix="pull") as ex:
            futures = [ex.submit(call) for call in calls]
            try:
                for fut in concurrent.futures.as_completed(futures):
                    fut.result()
            except BaseException as first:
                # the others stop at their next chunk; wait for them, then report the cause
                self.cancel.set()
                for fut in futures:
                    fut.cancel()
                concurrent.futures.wait(futures)
                causes = [
                    e
                    for fut in futures
                    if not fut.cancelled()
                    and (e := fut.exception()) is not None
                    and not isinstance(e, Cancelled)
                ]
                if isinstance(first, Cancelled) and causes:
                    raise causes[0] from None
                raise

    # --- one image -----------------------------------------------------------------------

    def pull_image(
        self,
        ref: ImageReference,
        platform: Optional[dict[str, Any]] = None,
        wanted: Optional[list[Wanted]] = None,
    ) -> dict[str, Any]:
        """Pull one image (a single manifest) into the layout; returns its descriptor.

        With ``wanted`` platforms, an image for none of them is refused before any blob
        is fetched.
        """
        img = self.proxy.open_image(ref)
        try:
            if wanted is not None:
                config = self.proxy.fetch_config(img)
                have = Platform(config.architecture, config.os, config.variant)
                probe = Descriptor(MEDIA_TYPE_OCI_MANIFEST, Digest.of(b""), 0, platform=have)
                if not any(matches(probe, w) for w in wanted):
                    raise ImageNotFoundError(
                        "OpenImage",
                        f"{ref} is a single image for {show_platform(have)},"
                        f" not for {show_wanted(wanted)}",
                        reference=str(ref),
                    )
            stored, raw = self.proxy.fetch_manifest_raw_oci(img)
            try:
                manifest = ImageManifest.from_bytes(raw)
            except ConfigurationError as e:  # the registry's content, not the caller's
                raise ProtocolError(f"GetManifest of {ref}: {e}") from None
            blobs = {str(d.digest): d for d in (*manifest.layers, manifest.config)}
            if self._store_converted_config(img, manifest.config):
                # fetched just now (GetFullConfig), not found in the layout: say so once
                meter = Meter(self.progress, str(manifest.config.digest), manifest.config.size)
                meter.start()
                meter.advance(manifest.config.size)
                meter.finish()
                with self.result_lock:
                    self.fetched += 1
                blobs.pop(str(manifest.config.digest), None)
            self.ensure_blobs(img, list(blobs.values()))
        finally:
            self.proxy.close_image(img)
        raw = self._true_manifest(raw, manifest)
        digest = Digest.of(raw)
        if digest != stored:
            with self.result_lock:
                self.converted.append(f"{ref}: manifest {stored} written as {digest}")
        self.layout.put_bytes(digest, raw)
        descriptor: dict[str, Any] = {
            "mediaType": manifest.media_type or MEDIA_TYPE_OCI_MANIFEST,
            "digest": str(digest),
            "size": len(raw),
        }
        if manifest.artifact_type:
            descriptor["artifactType"] = manifest.artifact_type
        if platform:
            descriptor["platform"] = platform
        return descriptor

    def _store_converted_config(self, img: Any, config: Descriptor) -> bool:
        """Store the config from GetFullConfig when it is the blob the manifest names.

        When skopeo converts a Docker manifest to OCI it converts the config too, and the
        manifest then names a config blob the source does not have (GetBlob says "unknown
        blob"): it is exactly what GetFullConfig returns, checked here by its digest. For an
        OCI image GetFullConfig may re-serialise the config; the digest then differs and the
        config blob is fetched like the layers.
        """
        if config.media_type not in _IMAGE_CONFIG_TYPES or self.layout.has_blob(config):
            return False
        data: bytes = self.proxy.fetch_config_raw(img)
        if len(data) != config.size or Digest.of(data, config.digest.algorithm) != config.digest:
            return False
        self.layout.put_bytes(config.digest, data)
        return True

    def _true_manifest(self, raw: bytes, manifest: ImageManifest) -> bytes:
        """``raw``, with each layer's media type made to say what the layout holds."""
        fixes = {}
        for i, layer in enumerate(manifest.layers):
            with open(self.layout.blob_path(layer.digest), "rb") as f:
                head = f.read(4)
            true = _true_media_type(layer.media_type, head)
            if true != layer.media_type:
                fixes[i] = true
        if not fixes:
            return raw
        doc = json.loads(raw)
        for i, media_type in fixes.items():
            doc["layers"][i]["mediaType"] = media_type
        return json.dumps(doc, separators=(",", ":")).encode()


def default_tag(ref: ImageReference) -> str:
    """The tag a pull of ``ref`` writes when none is given: the reference's own, else latest."""
    if ref.transport == "docker":
        return ref.tag or "latest"
    if ref.transport in ("oci", "oci-archive", "docker-archive"):
        # PATH:TAG (oci), PATH:NAME:TAG (docker-archive): what follows the last colon,
        # when it is a plain tag and not part of a path or a digest
        head, sep, tail = ref.name.rpartition(":")
        if sep and head and tail and "/" not in tail and "@" not in tail:
            return tail
    return "latest"


def pull_into_layout(
    proxy: Any,
    reference: Union[str, ImageReference],
    dest: str,
    *,
    tag: Optional[str] = None,
    platforms: Union[str, Sequence[str], None] = None,
    progress: Optional[ProgressCallback] = None,
    jobs: int = DEFAULT_JOBS,
) -> PullResult:
    """The engine of :func:`pull`, returning what it wrote and what it cost."""
    ref = as_reference(reference)
    tag = tag or default_tag(ref)
    layout = Layout(dest)
    puller = _Puller(proxy, layout, progress, jobs)
    if platforms is None:
        descriptor = puller.pull_image(ref)
    else:
        descriptor = _pull_platforms(puller, ref, wanted_platforms(platforms))
    layout.tag(descriptor, tag)
    return PullResult(
        Digest(descriptor["digest"]),
        descriptor,
        puller.fetched,
        puller.present,
        puller.converted,
    )


def _pull_platforms(
    puller: _Puller,
    ref: ImageReference,
    wanted: Optional[list[Wanted]],
) -> dict[str, Any]:
    # the index as stored, with its bytes: "all" writes them unchanged
    raw_index = fetch_raw_manifest(puller.proxy.config, ref)
    found = parse_raw_manifest(raw_index)
    if found is None:
        # a single-manifest image: it is all the platforms it has
        return puller.pull_image(ref, wanted=wanted)
    index_digest, index = found
    chosen = [m for m in index.manifests if wanted is None or any(matches(m, w) for w in wanted)]
    if not chosen:
        have = ", ".join(show_platform(m.platform) for m in index.manifests if m.platform) or "none"
        raise ImageNotFoundError(
            "OpenImage",
            f"{ref} has no instance for {show_wanted(wanted)} (it has: {have})",
            reference=str(ref),
        )
    results: dict[int, dict[str, Any]] = {}

    def one(i: int, m: Descriptor) -> None:
        platform = m.platform.to_json() if m.platform is not None else None
        results[i] = puller.pull_image(instance_reference(ref, m.digest), platform)

    # instances side by side: over a pool each opens on its own member
    puller.run_all(
        [lambda i=i, m=m: one(i, m) for i, m in enumerate(chosen)],
        min(len(chosen), max(1, getattr(puller.proxy, "size", 1))),
    )
    written = [results[i] for i in range(len(chosen))]
    kept = all(w["digest"] == str(m.digest) for w, m in zip(written, chosen))
    if wanted is None and kept:
        # every instance kept its digest: the index as stored is true of the layout
        puller.layout.put_bytes(index_digest, raw_index)
        return {
            "mediaType": index.media_type or MEDIA_TYPE_OCI_INDEX,
            "digest": str(index_digest),
            "size": len(raw_index),
        }
    # a subset, or converted instances: an index of our own over what was written
    doc = {"schemaVersion": 2, "mediaType": MEDIA_TYPE_OCI_INDEX, "manifests": written}
    data = json.dumps(doc, separators=(",", ":")).encode()
    digest = Digest.of(data)
    puller.layout.put_bytes(digest, data)
    return {"mediaType": MEDIA_TYPE_OCI_INDEX, "digest": str(digest), "size": len(data)}


def pull(
    proxy: Any,
    reference: Union[str, ImageReference],
    dest: str,
    *,
    tag: Optional[str] = None,
    platforms: Union[str, Sequence[str], None] = None,
    progress: Optional[ProgressCallback] = None,
    jobs: int = DEFAULT_JOBS,
) -> Digest:
    """Write the image ``reference`` into the OCI image layout ``dest``; returns the digest
    the tag now points at.

    ``proxy`` is an :class:`ImageProxy` or a :class:`ProxyPool`. ``dest`` is created if
    missing; an existing layout keeps its other tags and blobs. ``tag`` defaults to the
    reference's tag, else ``latest``. Blobs already in the layout are verified (hashed) and
    kept; the rest are fetched ``jobs`` at a time, each verified before it is renamed into
    place, and ``index.json`` is replaced last, atomically: an interrupted pull leaves a
    valid layout, and the next one fetches only what is missing.

    ``platforms=None`` pulls the instance the proxy selects (its ``override_os``/
    ``override_arch``/``override_variant``). A list of ``"os/arch[/variant]"`` pulls those
    instances of a multi-platform image under an index of their own; ``"all"`` pulls every
    instance and keeps the index as stored (the tag then names the source's own index
    digest, as long as every instance kept its digest). Instances are opened by digest,
    which needs a ``docker://`` reference.

    ``progress`` receives :class:`TransferProgress` reports from the threads doing the
    transfers (at most ten a second per blob, the last with ``done == total``); blobs
    already present are reported with ``local=True`` while they are verified.

    Raises ImageNotFoundError when the image (or an instance for the platforms asked
    for) does not exist, BlobVerificationError when a blob does not match its descriptor,
    ConfigurationError when ``dest`` is not a directory that can hold a layout, and the
    proxy's errors (RequestError, ProxyExitedError ...) as they come.
    """
    return pull_into_layout(
        proxy, reference, dest, tag=tag, platforms=platforms, progress=progress, jobs=jobs
    ).digest


async def pull_async(
    proxy: Any,
    reference: Union[str, ImageReference],
    dest: str,
    *,
    tag: Optional[str] = None,
    platforms: Union[str, Sequence[str], None] = None,
    progress: Optional[ProgressCallback] = None,
    jobs: int = DEFAULT_JOBS,
) -> Digest:
    """The asyncio twin of :func:`pull`, for an AsyncImageProxy or an AsyncProxyPool.

    The same engine runs in a worker thread and reads blobs through the caller's loop;
    ``progress`` is called on the loop. Cancelling stops the transfers and removes
    temporary files; the layout stays valid (a cancel that comes after the last blob may
    still see the tag moved). Raises what :func:`pull` raises.
    """
    import asyncio

    from ._bridge import Bridge, BridgedProxy, run_in_worker

    loop = asyncio.get_running_loop()
    bridge = Bridge(loop)
    on_loop: Optional[ProgressCallback] = None
    if progress is not None:
        callback = progress

        def on_loop(report: Any) -> None:
            loop.call_soon_threadsafe(callback, report)

    facade = BridgedProxy(bridge, proxy)
    result = await run_in_worker(
        bridge,
        lambda: pull_into_layout(
            facade, reference, dest, tag=tag, platforms=platforms, progress=on_loop, jobs=jobs
        ),
    )
    return result.digest
