"""Cross-check against umoci: the same OCI layout unpacked by both, compared entry by entry."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import subprocess
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from containers_image_proxy.layers import LayerSource, unpack_layers
from testbed.layers import MTIME, OCI_GZIP, E, d, f, gz, hl, make_tar, sha256, sym, wh

UMOCI = shutil.which("umoci")
pytestmark = pytest.mark.skipif(UMOCI is None, reason="umoci is not installed")

LAYERS: list[list[E]] = [
    [
        d("etc", mode=0o755),
        f("etc/hostname", b"box\n", mode=0o644, mtime=MTIME + 1),
        f("etc/shadow", b"root:*:\n", mode=0o640),
        d("usr", mode=0o755),
        d("usr/bin", mode=0o755),
        f("usr/bin/busybox", b"BUSYBOX" * 100, mode=0o755),
        hl("usr/bin/sh", "usr/bin/busybox"),
        f("usr/bin/su", b"su", mode=0o4755),
        f("usr/bin/wall", b"wall", mode=0o2755),
        sym("bin", "usr/bin"),
        sym("lib", "/usr/lib"),
        d("usr/lib", mode=0o755),
        d("tmp", mode=0o1777),
        d("opaque", mode=0o755),
        f("opaque/old", b"old"),
        d("opaque/sub", mode=0o700),
        f("opaque/sub/deep", b"deep"),
        d("gone", mode=0o755),
        f("gone/file", b"g"),
        f("todir", b"a file first"),
        d("tofile", mode=0o755),
        f("tofile/x", b"x"),
        f("replaced", b"v1"),
        d("ro", mode=0o555),
        f("ro/file", b"ro", mode=0o444),
        d("répertoire", mode=0o750),
        f("répertoire/ファイル", b"utf8"),
        d("long" * 20, mode=0o755),
        f("long" * 20 + "/" + "n" * 150, b"long name"),
        f("empty", b""),
    ],
    [
        d("etc", mode=0o755),
        f("etc/hostname", b"changed\n", mode=0o600),
        wh("etc/.wh.shadow"),
        wh(".wh.gone"),
        d("opaque", mode=0o711),
        wh("opaque/.wh..wh..opq"),
        f("opaque/new", b"new"),
        d("todir", mode=0o700),
        f("todir/inside", b"now a dir"),
        f("tofile", b"now a file"),
        hl("usr/bin/ls", "usr/bin/busybox"),
        hl("etc/replaced-link", "replaced"),
        f("replaced", b"v2"),
        f("bin/through", b"written via the bin symlink", mode=0o755),
        f("usr/lib/libc.so", b"libc"),
        d("ro", mode=0o555),
        f("ro/added", b"added later"),
        sym("etc/localtime", "/usr/share/zoneinfo/UTC"),
    ],
]


def write_layout(path: Path, blobs: list[tuple[bytes, bytes]], tag: str) -> None:
    """An OCI image layout with one image of gzip layers (tar, blob) tagged ``tag``."""
    blob_dir = path / "blobs" / "sha256"
    blob_dir.mkdir(parents=True)

    def put(data: bytes) -> dict[str, Any]:
        digest = hashlib.sha256(data).hexdigest()
        (blob_dir / digest).write_bytes(data)
        return {"digest": f"sha256:{digest}", "size": len(data)}

    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": [sha256(tar) for tar, _ in blobs]},
    }
    config_desc = put(json.dumps(config).encode())
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **config_desc},
        "layers": [{"mediaType": OCI_GZIP, **put(blob)} for _, blob in blobs],
    }
    manifest_desc = put(json.dumps(manifest).encode())
    index = {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                **manifest_desc,
                "annotations": {"org.opencontainers.image.ref.name": tag},
            }
        ],
    }
    (path / "index.json").write_text(json.dumps(index))
    (path / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))


def tree(root: Path) -> tuple[dict[str, tuple[Any, ...]], list[list[str]]]:
    """Entries (type, mode, size, content hash or link target, mtime of files) and the
    groups of paths that share an inode."""
    entries: dict[str, tuple[Any, ...]] = {}
    inodes: dict[int, list[str]] = defaultdict(list)
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, root)
            st = os.lstat(full)
            mode = stat.S_IMODE(st.st_mode)
            if stat.S_ISLNK(st.st_mode):
                entries[rel] = ("symlink", os.readlink(full))
            elif stat.S_ISDIR(st.st_mode):
                entries[rel] = ("dir", oct(mode), st.st_mtime_ns)
            else:
                os.chmod(full, mode | 0o400)  # read 0o000 files (as root anyway)
                with open(full, "rb") as fh:
                    digest = hashlib.sha256(fh.read()).hexdigest()[:16]
                entries[rel] = ("file", oct(mode), st.st_size, digest, st.st_mtime_ns)
                inodes[st.st_ino].append(rel)
    groups = sorted(sorted(g) for g in inodes.values() if len(g) > 1)
    return entries, groups


def test_same_tree_as_umoci(tmp_path: Path) -> None:
    tars = [make_tar(layer) for layer in LAYERS]
    blobs = [(tar, gz(tar)) for tar in tars]
    layout = tmp_path / "layout"
    write_layout(layout, blobs, "v1")

    out = tmp_path / "umoci"
    subprocess.run(
        [UMOCI or "umoci", "unpack", "--rootless", "--image", f"{layout}:v1", str(out)],
        check=True,
        capture_output=True,
    )

    def opener(blob: bytes) -> Any:
        digest = hashlib.sha256(blob).hexdigest()
        return lambda: open(layout / "blobs" / "sha256" / digest, "rb")

    sources = [
        LayerSource(sha256(blob), OCI_GZIP, sha256(tar), opener(blob)) for tar, blob in blobs
    ]
    ours = tmp_path / "ours"
    unpack_layers(sources, ours, rootless=True)

    theirs_entries, theirs_links = tree(out / "rootfs")
    ours_entries, ours_links = tree(ours)
    # One deliberate difference: umoci --rootless keeps setuid/setgid bits of files that
    # now belong to the caller; we drop them (as tarfile's data filter does).
    assert theirs_entries["usr/bin/su"][1] == "0o4755"
    assert ours_entries["usr/bin/su"][1] == "0o755"
    for name, entry in theirs_entries.items():
        if entry[0] == "file":
            dropped = oct(int(entry[1], 8) & ~0o6000)
            theirs_entries[name] = (entry[0], dropped, *entry[2:])
    assert sorted(ours_entries) == sorted(theirs_entries)
    for name in sorted(theirs_entries):
        assert ours_entries[name] == theirs_entries[name], name
    assert ours_links == theirs_links
    # A few facts worth stating on their own.
    assert (
        ours_entries["usr/bin/through"][3]
        == hashlib.sha256(b"written via the bin symlink").hexdigest()[:16]
    )
    assert ["usr/bin/busybox", "usr/bin/ls", "usr/bin/sh"] in ours_links
