"""An OCI image layout on disk, written so that it is valid at every moment.

Blobs go in first, each through a temporary file renamed into place once verified; then
the manifests that name them; ``index.json`` last, replaced in one rename under a lock on
the layout directory (two writers into one layout keep each other's tags). A writer
interrupted at any point leaves complete, verified blobs and no reference to a missing one.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from typing import Any, Optional

from ._errors import ConfigurationError
from ._files import AtomicFile, write_atomically
from ._models import MEDIA_TYPE_OCI_INDEX, Descriptor, Digest
from ._progress import Meter, ProgressCallback

REF_NAME = "org.opencontainers.image.ref.name"
LAYOUT_FILE = "oci-layout"
LAYOUT_VERSION = {"imageLayoutVersion": "1.0.0"}
_CHUNK = 1024 * 1024
# index.json is ours to read back: bounded like any other metadata
_MAX_INDEX = 64 * 1024 * 1024


class Layout:
    """An OCI image layout directory being written to (created if missing).

    Raises ConfigurationError when ``path`` is a file, or a non-empty directory that is not
    an OCI image layout (nothing of the caller's is ever mixed with blobs).
    """

    def __init__(self, path: str) -> None:
        self.path = os.fspath(path)
        marker = os.path.join(self.path, LAYOUT_FILE)
        if os.path.exists(self.path) and not os.path.isdir(self.path):
            raise ConfigurationError(f"{self.path} exists and is not a directory")
        if os.path.isdir(self.path) and os.listdir(self.path) and not os.path.exists(marker):
            raise ConfigurationError(f"{self.path} is not empty and not an OCI image layout")
        os.makedirs(self.path, exist_ok=True)
        if os.path.exists(marker):
            try:
                with open(marker, "rb") as f:
                    version = json.loads(f.read(4096)).get("imageLayoutVersion")
            except (ValueError, AttributeError):
                version = None
            if not isinstance(version, str):
                raise ConfigurationError(f"{marker} is not a valid oci-layout file")
        else:
            write_atomically(marker, json.dumps(LAYOUT_VERSION).encode())

    def blob_path(self, digest: Digest) -> str:
        """Where a blob lives: ``blobs/<algorithm>/<hex>``."""
        return os.path.join(self.path, "blobs", digest.algorithm, digest.hex)

    def has_blob(self, desc: Descriptor, progress: Optional[ProgressCallback] = None) -> bool:
        """Whether the blob is there, complete, with the right content (it is hashed).

        The hashing is reported to ``progress`` as local bytes (``TransferProgress.local``).
        """
        path = self.blob_path(desc.digest)
        try:
            f = open(path, "rb")  # noqa: SIM115 - closed below
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            return False
        with f:
            if os.fstat(f.fileno()).st_size != desc.size:
                return False
            meter = Meter(progress, str(desc.digest), desc.size, local=True)
            meter.start()
            hasher = hashlib.new(desc.digest.algorithm)
            buf = bytearray(_CHUNK)
            view = memoryview(buf)
            while n := f.readinto(buf):
                hasher.update(view[:n])
                meter.advance(n)
        if hasher.hexdigest() != desc.digest.hex:
            return False
        meter.finish()
        return True

    def new_blob(self, digest: Digest) -> AtomicFile:
        """A temporary file that becomes the blob ``digest`` on ``commit()``."""
        path = self.blob_path(digest)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        # hidden, and says what it is, in case a SIGKILL leaves it behind
        return AtomicFile(path, prefix=f".pull-{digest.hex[:16]}-")

    def put_bytes(self, digest: Digest, data: bytes) -> None:
        """Store a small blob held in memory (a manifest, an index), unless it is there."""
        if Digest.of(data, digest.algorithm) != digest:
            raise ValueError(f"the data given for {digest} has another digest")
        path = self.blob_path(digest)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        try:
            with open(path, "rb") as f:
                if f.read(len(data) + 1) == data:
                    return
        except FileNotFoundError:
            pass
        write_atomically(path, data)

    def tags(self) -> dict[str, dict[str, Any]]:
        """The layout's tags: ref name -> the descriptor in index.json."""
        out = {}
        for m in self._read_index().get("manifests", []):
            if isinstance(m, dict):
                name = (m.get("annotations") or {}).get(REF_NAME)
                if isinstance(name, str):
                    out[name] = m
        return out

    def tag(self, descriptor: dict[str, Any], tag: str) -> None:
        """Point ``tag`` at ``descriptor`` in index.json, replacing an older one atomically."""
        fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            index = self._read_index()
            manifests = [
                m
                for m in index.get("manifests", [])
                if not (isinstance(m, dict) and (m.get("annotations") or {}).get(REF_NAME) == tag)
            ]
            entry = dict(descriptor)
            entry["annotations"] = {**(entry.get("annotations") or {}), REF_NAME: tag}
            manifests.append(entry)
            index["schemaVersion"] = 2
            index.setdefault("mediaType", MEDIA_TYPE_OCI_INDEX)
            index["manifests"] = manifests
            write_atomically(
                os.path.join(self.path, "index.json"),
                json.dumps(index, separators=(",", ":")).encode(),
            )
        finally:
            os.close(fd)  # also releases the lock

    def _read_index(self) -> dict[str, Any]:
        path = os.path.join(self.path, "index.json")
        try:
            with open(path, "rb") as f:
                data = f.read(_MAX_INDEX + 1)
        except FileNotFoundError:
            return {}
        if len(data) > _MAX_INDEX:
            raise ConfigurationError(f"{path} is larger than {_MAX_INDEX} bytes")
        try:
            index = json.loads(data)
        except (ValueError, RecursionError) as e:
            raise ConfigurationError(f"{path} is not valid JSON: {e}") from None
        if not isinstance(index, dict) or not isinstance(index.get("manifests", []), list):
            raise ConfigurationError(f"{path} is not an OCI image index")
        return index
