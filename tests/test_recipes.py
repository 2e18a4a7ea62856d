"""The programs of docs/recipes.md (examples/recipes/*.py), each run as the page shows it,
against the test bed's registry (with Debian's skopeo, the one on PATH)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from testbed.images import LayoutBuilder, Layouts, make_tar, random_layer
from testbed.registry import Registry

pytestmark = pytest.mark.integration

RECIPES = Path(__file__).resolve().parent.parent / "examples" / "recipes"
NO_TLS = "--tls-verify=false"


def run(name: str, *args: str) -> list[str]:
    proc = subprocess.run(
        [sys.executable, str(RECIPES / name), *args],
        capture_output=True,
        stdin=subprocess.DEVNULL,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    return proc.stdout.decode().splitlines()


def test_updater_fetches_only_what_changed(
    layout_builder: LayoutBuilder, registry_plain: Registry, tmp_path: Path
) -> None:
    base = random_layer(11, 128 * 1024)
    v1 = layout_builder.add_image("v1", [base, make_tar({"etc/version": b"1\n"})])
    v2 = layout_builder.add_image("v2", [base, make_tar({"etc/version": b"2\n"})])
    registry_plain.push(layout_builder.ref("v1"), "recipes/os:v1")
    registry_plain.push(layout_builder.ref("v2"), "recipes/os:v2")
    state = str(tmp_path / "state")
    first = run("updater.py", registry_plain.ref("recipes/os:v1"), state, NO_TLS)
    assert first[-1] == f"current {v1.manifest_digest}"
    assert all(line.startswith("fetched ") for line in first[:-1]), first
    second = run("updater.py", registry_plain.ref("recipes/os:v2"), state, NO_TLS)
    assert second[-1] == f"current {v2.manifest_digest}"
    kept = {line.split()[1] for line in second if line.startswith("kept ")}
    fetched = {line.split()[1] for line in second if line.startswith("fetched ")}
    assert kept == {v2.layers[0].digest}  # the base layer did not cross the network again
    assert fetched == {v2.layers[1].digest, v2.config_digest}


def test_scanner_reads_every_tag(layout_builder: LayoutBuilder, registry_plain: Registry) -> None:
    for n, packages in enumerate((1, 3, 0)):
        status = "".join(f"Package: p{i}\nStatus: ok\n\n" for i in range(packages))
        layers = [make_tar({"etc/os-release": f'ID="os{n}"\n'.encode()})]
        if packages:
            layers.append(make_tar({"var/lib/dpkg/status": status.encode()}))
        layout_builder.add_image(f"s{n}", layers)
        registry_plain.push(layout_builder.ref(f"s{n}"), f"recipes/scan:s{n}")
    repo = registry_plain.ref("recipes/scan")
    lines = run("scanner.py", repo, "--pool-size=2", NO_TLS)
    results = {r["reference"]: r for r in map(json.loads, lines)}
    assert {ref: (r["os"], r["packages"]) for ref, r in results.items()} == {
        f"{repo}:s0": ("os0", 1),
        f"{repo}:s1": ("os1", 3),
        f"{repo}:s2": ("os2", 0),
    }


def test_mirror_keeps_the_index_digest(
    layouts: Layouts, registry_plain: Registry, tmp_path: Path
) -> None:
    registry_plain.push(layouts.ref("multiarch"), "recipes/multi:1", extra_args=["--all"])
    lines = run("mirror.py", registry_plain.ref("recipes/multi:1"), f"{tmp_path}/m:1", NO_TLS)
    assert lines[0] == f"index {layouts.multiarch.digest}"
    assert len([line for line in lines if line.startswith("  linux/")]) == 4
    assert lines[-1] == f"mirrored {layouts.multiarch.digest}"
