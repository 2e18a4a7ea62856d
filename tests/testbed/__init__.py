"""A test bed of real components for the integration tests.

- :mod:`testbed.releases`: the skopeo releases available on this machine (the system one and
  those made by ``scripts/fetch-skopeo.sh``).
- :mod:`testbed.registry`: local distribution registries (plain HTTP, TLS, TLS + basic auth).
- :mod:`testbed.images`: OCI image layouts built in Python, deterministically.
- :mod:`testbed.conftest_plugin`: pytest fixtures over all of the above.
"""

from __future__ import annotations

from .images import (
    ImageInfo,
    IndexInfo,
    LayerInfo,
    LayoutBuilder,
    convert,
    corrupt_blob,
    make_tar,
    random_layer,
    truncate_blob,
)
from .registry import Registry
from .releases import SkopeoRelease, available_releases

__all__ = [
    "ImageInfo",
    "IndexInfo",
    "LayerInfo",
    "LayoutBuilder",
    "Registry",
    "SkopeoRelease",
    "available_releases",
    "convert",
    "corrupt_blob",
    "make_tar",
    "random_layer",
    "truncate_blob",
]
