"""The worked examples of docs/cli.md (examples/*.py), each run as the docs show it."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from testbed.images import (
    WASM_LAYER,
    LayoutBuilder,
    add_wasm_artifact,
    make_tar,
)

pytestmark = pytest.mark.integration

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def run_example(name: str, *args: str) -> subprocess.CompletedProcess[bytes]:
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / name), *args],
        capture_output=True,
        stdin=subprocess.DEVNULL,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    return proc


def test_os_update_fetches_only_new_layers(layout_builder: LayoutBuilder, tmp_path: Path) -> None:
    base = make_tar({"usr/lib/os-release": b"VERSION=1\n", "usr/bin/sh": b"#!sh"})
    app_v1 = make_tar({"opt/app/version": b"1\n"})
    app_v2 = make_tar({"opt/app/version": b"2\n"})
    v1 = layout_builder.add_image("os", [base, app_v1])
    state = tmp_path / "state"

    first = run_example("os_update.py", layout_builder.ref("os"), str(state))
    lines = first.stdout.decode().splitlines()
    assert lines == [
        f"fetched {v1.diff_ids[0]}",
        f"fetched {v1.diff_ids[1]}",
        f"updated {v1.manifest_digest}",
    ]

    again = run_example("os_update.py", layout_builder.ref("os"), str(state))
    assert again.stdout.decode().splitlines() == [f"unchanged {v1.manifest_digest}"]

    v2 = layout_builder.add_image("os", [base, app_v2])  # same base layer, new app layer
    update = run_example("os_update.py", layout_builder.ref("os"), str(state))
    assert update.stdout.decode().splitlines() == [
        f"have {v2.diff_ids[0]}",
        f"fetched {v2.diff_ids[1]}",
        f"updated {v2.manifest_digest}",
    ]
    stored = state / "layers" / v2.diff_ids[1].replace(":", "-")
    assert stored.read_bytes() == app_v2  # the uncompressed layer, checked against its diff_id


def test_extract_docs_streams_only_the_prefix(layout_builder: LayoutBuilder) -> None:
    layers = [
        make_tar(
            {
                "usr/share/doc/bash/README": b"bash docs\n",
                "usr/share/doc/old/README": b"removed later\n",
                "usr/bin/bash": b"\x7fELF" + b"\0" * 4096,
            }
        ),
        make_tar(
            {
                "usr/share/doc/coreutils/copyright": b"GPL\n",
                "usr/share/doc/.wh.old": b"",
                "etc/motd": b"hi\n",
            }
        ),
    ]
    layout_builder.add_image("pkgs", layers)
    proc = run_example("extract_docs.py", layout_builder.ref("pkgs"), "/usr/share/doc")
    with tarfile.open(fileobj=io.BytesIO(proc.stdout)) as tar:
        files = {m.name: tar.extractfile(m).read() for m in tar if m.isreg()}  # type: ignore[union-attr]
    assert files == {
        "usr/share/doc/bash/README": b"bash docs\n",
        "usr/share/doc/coreutils/copyright": b"GPL\n",
    }
    assert b"2 files under /usr/share/doc" in proc.stderr


def test_fetch_artifact_writes_the_blob(layout_builder: LayoutBuilder, tmp_path: Path) -> None:
    wasm, manifest = add_wasm_artifact(layout_builder, "module")
    out = tmp_path / "module.wasm"
    proc = run_example("fetch_artifact.py", layout_builder.ref("module"), str(out))
    assert out.read_bytes() == wasm
    digest = "sha256:" + hashlib.sha256(wasm).hexdigest()
    assert proc.stdout.decode().split() == [manifest["artifactType"], digest]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["module.wasm", "oci"]
    assert json.loads(json.dumps(manifest))["layers"][0]["mediaType"] == WASM_LAYER
