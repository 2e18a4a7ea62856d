"""What a repository holds (its tags) and what a multi-platform image is (its index as
stored): the two questions the proxy protocol cannot answer.

Tags come from ``skopeo list-tags`` for ``docker://`` and ``docker-archive:``, and from
``index.json`` for ``oci:`` layouts (the ``org.opencontainers.image.ref.name`` annotations).
An index comes from ``skopeo inspect --raw``: the proxy's GetManifest only ever hands out
the instance for one platform. Both run skopeo with the proxy's configuration
(:mod:`._oneshot`). Parsing is pure; each entry point has a blocking and an asyncio form.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
from typing import Any, List, Optional, Tuple, Union

from ._config import ProxyConfig
from ._core.notfound import image_not_found
from ._errors import ConfigurationError, ImageNotFoundError, ProtocolError, RequestError
from ._models import MEDIA_TYPE_DOCKER_MANIFEST_LIST, MEDIA_TYPE_OCI_INDEX, Digest, ImageIndex
from ._oneshot import MAX_OUTPUT, run_skopeo, run_skopeo_async
from ._reference import ImageReference, as_reference

#: The annotation that names a tag in an OCI layout's index.json.
REF_NAME = "org.opencontainers.image.ref.name"
TAG_TRANSPORTS = ("docker", "docker-archive", "oci")
_INDEX_TYPES = (MEDIA_TYPE_OCI_INDEX, MEDIA_TYPE_DOCKER_MANIFEST_LIST)

IndexResult = Optional[Tuple[Digest, ImageIndex]]


# --- tags -------------------------------------------------------------------------------


def _tags_reference(repository: Union[str, ImageReference]) -> ImageReference:
    ref = as_reference(repository)
    if ref.transport not in TAG_TRANSPORTS:
        raise ConfigurationError(
            f"list_tags: the {ref.transport}: transport has no tags to list;"
            f" supported: {', '.join(t + ':' for t in TAG_TRANSPORTS)}"
        )
    if ref.transport == "docker" and (ref.tag is not None or ref.digest is not None):
        raise ConfigurationError(
            f"list_tags takes a repository without tag or digest, not {str(ref)!r}"
        )
    if ref.transport == "oci" and ":" in ref.name:
        raise ConfigurationError(
            f"list_tags takes an oci: layout directory without a tag, not {str(ref)!r}"
        )
    return ref


def _skopeo_failure(e: RequestError, ref: ImageReference) -> RequestError:
    if image_not_found(e.message, ref.transport):
        return ImageNotFoundError(e.method, e.message, None, str(ref))
    return e


def parse_tag_list(output: bytes, context: str = "list-tags") -> List[str]:
    """The tags of ``skopeo list-tags`` output (``{"Tags": [...]}``), in its order."""
    try:
        doc = json.loads(output)
    except (ValueError, RecursionError) as e:
        raise ProtocolError(f"{context}: output is not JSON: {e}") from None
    tags = doc.get("Tags") if isinstance(doc, dict) else None
    if tags is None and isinstance(doc, dict) and "Tags" in doc:
        return []  # a repository without tags: Go marshals the empty slice as null
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        raise ProtocolError(f"{context}: output has no list of string 'Tags'")
    return list(tags)


def layout_tags(index_json: bytes, where: str) -> List[str]:
    """The tags an OCI layout's ``index.json`` names, in document order, each once."""
    try:
        index = ImageIndex.from_bytes(index_json)
    except ConfigurationError as e:
        raise RequestError("list_tags", f"{where}: not a valid image index: {e}") from None
    seen: dict[str, None] = {}
    for entry in index.manifests:
        name = entry.annotations.get(REF_NAME)
        if name:
            seen.setdefault(name, None)
    return list(seen)


def read_layout_index(ref: ImageReference) -> bytes:
    """The bytes of ``index.json`` of the layout ``ref`` names (bounded)."""
    where = os.path.join(ref.name, "index.json")
    try:
        with open(where, "rb") as f:
            data = f.read(MAX_OUTPUT + 1)
    except FileNotFoundError:
        raise ImageNotFoundError(
            "list_tags", f"open {where}: no such file or directory", None, str(ref)
        ) from None
    except OSError as e:
        raise RequestError("list_tags", f"open {where}: {e.strerror or e}") from None
    if len(data) > MAX_OUTPUT:
        raise RequestError("list_tags", f"{where} exceeds {MAX_OUTPUT} bytes; refused")
    return data


def list_tags(config: ProxyConfig, repository: Union[str, ImageReference]) -> List[str]:
    """The tags of ``repository`` (see :meth:`ImageProxy.list_tags`)."""
    ref = _tags_reference(repository)
    if ref.transport == "oci":
        return layout_tags(read_layout_index(ref), os.path.join(ref.name, "index.json"))
    try:
        output = run_skopeo(config, ("list-tags", str(ref)), "list-tags")
    except RequestError as e:
        raise _skopeo_failure(e, ref) from None
    return parse_tag_list(output)


async def list_tags_async(config: ProxyConfig, repository: Union[str, ImageReference]) -> List[str]:
    """The asyncio twin of :func:`list_tags`."""
    ref = _tags_reference(repository)
    if ref.transport == "oci":
        loop = asyncio.get_running_loop()
        data = await loop.run_in_executor(None, read_layout_index, ref)
        return layout_tags(data, os.path.join(ref.name, "index.json"))
    try:
        output = await run_skopeo_async(config, ("list-tags", str(ref)), "list-tags")
    except RequestError as e:
        raise _skopeo_failure(e, ref) from None
    return parse_tag_list(output)


# --- indexes ----------------------------------------------------------------------------


def parse_raw_manifest(raw: bytes, context: str = "inspect --raw") -> IndexResult:
    """``(digest, ImageIndex)`` if ``raw`` is an OCI index or a Docker manifest list, else
    None (a single image's manifest). The digest is that of the bytes as stored."""
    try:
        doc: Any = json.loads(raw)
    except (ValueError, RecursionError) as e:
        raise ProtocolError(f"{context}: manifest is not JSON: {e}") from None
    if not isinstance(doc, dict):
        raise ProtocolError(f"{context}: manifest is not a JSON object")
    media_type = doc.get("mediaType")
    # an OCI index may leave mediaType out; then "manifests" (and no "config") tells it
    is_index = media_type in _INDEX_TYPES or (
        media_type is None and "manifests" in doc and "config" not in doc
    )
    if not is_index:
        return None
    try:
        index = ImageIndex.from_json(doc)
    except ConfigurationError as e:
        raise ProtocolError(f"{context}: {e}") from None
    return Digest("sha256:" + hashlib.sha256(raw).hexdigest()), index


def _index_command(reference: Union[str, ImageReference]) -> Tuple[ImageReference, Tuple[str, ...]]:
    ref = as_reference(reference)
    return ref, ("inspect", "--raw", str(ref))


def fetch_raw_manifest(config: ProxyConfig, reference: Union[str, ImageReference]) -> bytes:
    """The top-level manifest of ``reference`` as stored: an index or manifest list for a
    multi-platform image (``skopeo inspect --raw`` with the proxy's configuration)."""
    ref, command = _index_command(reference)
    try:
        return run_skopeo(config, command, "inspect")
    except RequestError as e:
        raise _skopeo_failure(e, ref) from None


def fetch_index(config: ProxyConfig, reference: Union[str, ImageReference]) -> IndexResult:
    """The index of ``reference`` as stored (see :meth:`ImageProxy.fetch_index`)."""
    return parse_raw_manifest(fetch_raw_manifest(config, reference))


async def fetch_index_async(
    config: ProxyConfig, reference: Union[str, ImageReference]
) -> IndexResult:
    """The asyncio twin of :func:`fetch_index`."""
    ref, command = _index_command(reference)
    try:
        raw = await run_skopeo_async(config, command, "inspect")
    except RequestError as e:
        raise _skopeo_failure(e, ref) from None
    return parse_raw_manifest(raw)


__all__ = [
    "REF_NAME",
    "fetch_index",
    "fetch_index_async",
    "fetch_raw_manifest",
    "layout_tags",
    "list_tags",
    "list_tags_async",
    "parse_raw_manifest",
    "parse_tag_list",
]
