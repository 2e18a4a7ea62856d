"""Shared fixtures: the real test bed (skopeo releases, registries, image layouts)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterator

import pytest

from containers_image_proxy import ProxyConfig
from testbed.releases import SkopeoRelease

pytest_plugins = ["testbed.conftest_plugin"]


@pytest.fixture
def config(skopeo_release: SkopeoRelease) -> ProxyConfig:
    """A configuration for the release under test."""
    return ProxyConfig(skopeo=skopeo_release.argv)


def make_config(release: SkopeoRelease, **fields: Any) -> ProxyConfig:
    """A configuration for ``release`` with extra fields."""
    return ProxyConfig(skopeo=release.argv, **fields)


def open_fds() -> set[int]:
    """The descriptors this process has open now."""
    return {int(name) for name in os.listdir("/proc/self/fd")}


def child_pids() -> set[int]:
    """Direct children of this process (zombies included)."""
    me = os.getpid()
    out = set()
    for task in os.listdir("/proc/self/task"):
        try:
            children = Path(f"/proc/self/task/{task}/children").read_text()
        except FileNotFoundError:
            continue  # the thread ended since the listing: it has no children to show
        out.update(int(p) for p in children.split())
    assert me not in out
    return out


@pytest.fixture
def no_leaks() -> Iterator[None]:
    """Fails the test if it leaves descriptors or child processes behind."""
    fds, children = open_fds(), child_pids()
    yield
    import gc

    gc.collect()
    assert open_fds() - fds == set(), "leaked file descriptors"
    assert child_pids() - children == set(), "leaked child processes"
