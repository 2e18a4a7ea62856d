"""The command line tool, driven as a user or a script drives it: subprocesses, pipes, exit
statuses. Per skopeo release where the proxy's answers differ (GetBlob or GetRawBlob, layer
info from the proxy or the manifest, emulated OpenImageOptional)."""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from testbed.cli import cli, ok, one_line_error, skopeo_opt
from testbed.images import LayoutBuilder, Layouts, make_tar
from testbed.releases import SkopeoRelease

pytestmark = pytest.mark.integration


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


# --- every command, per release -------------------------------------------------------------


def test_inspect_json_and_summary(skopeo_release: SkopeoRelease, layouts: Layouts) -> None:
    img = layouts.small
    ref = layouts.ref("small")
    doc = json.loads(ok(cli(*skopeo_opt(skopeo_release), "inspect", "--json", ref)))
    assert set(doc) == {"digest", "manifest", "config", "layers"}
    assert doc["digest"] == img.manifest_digest
    assert doc["manifest"] == img.manifest_json
    assert doc["config"]["rootfs"]["diff_ids"] == img.diff_ids
    assert doc["layers"] == [
        {"digest": layer.digest, "size": layer.size, "media_type": layer.media_type}
        for layer in img.layers
    ]

    text = ok(cli(*skopeo_opt(skopeo_release), "inspect", ref)).decode()
    assert f"Digest:     {img.manifest_digest}" in text
    assert "Platform:   linux/amd64" in text
    assert "Created:    2024-01-01T00:00:00Z" in text
    assert 'Cmd:        ["/bin/hello"]' in text
    assert "Entrypoint: -" in text
    assert "org.example.testbed.seed=1" in text
    for layer in img.layers:
        assert layer.digest in text


def test_raw_documents_byte_for_byte(skopeo_release: SkopeoRelease, layouts: Layouts) -> None:
    ref = layouts.ref("small")
    opt = skopeo_opt(skopeo_release)
    assert ok(cli(*opt, "manifest", ref)) == layouts.small.manifest
    config = ok(cli(*opt, "config", ref))
    assert json.loads(config) == layouts.small.config_json
    layers = json.loads(ok(cli(*opt, "layers", "--json", ref)))
    assert [x["digest"] for x in layers] == [layer.digest for layer in layouts.small.layers]
    table = ok(cli(*opt, "layers", ref)).decode().splitlines()
    assert [row.split()[:2] for row in table] == [
        [layer.digest, str(layer.size)] for layer in layouts.small.layers
    ]


def test_blob_to_file_and_stdout(
    skopeo_release: SkopeoRelease, layouts: Layouts, tmp_path: Path
) -> None:
    layer = layouts.small.layers[1]
    ref = layouts.ref("small")
    out = tmp_path / "blob"
    assert ok(cli(*skopeo_opt(skopeo_release), "blob", ref, layer.digest, "-o", str(out))) == b""
    assert out.read_bytes() == layer.blob
    assert os.listdir(tmp_path) == ["blob"]  # no temporary file left beside it
    piped = ok(cli(*skopeo_opt(skopeo_release), "blob", ref, layouts.small.config_digest))
    assert piped == layouts.small.config


def test_cat_ls_exists(skopeo_release: SkopeoRelease, layouts: Layouts) -> None:
    ref = layouts.ref("small")
    opt = skopeo_opt(skopeo_release)
    assert ok(cli(*opt, "cat", ref, "/etc/os-release")) == b'NAME="testbed"\nVERSION_ID="1"\n'
    # the third layer whites out /etc/motd and adds /etc/hostname
    assert ok(cli(*opt, "ls", ref, "/etc")).decode().split() == ["hostname", "os-release"]
    assert cli(*opt, "exists", ref).returncode == 0
    assert cli(*opt, "exists", layouts.ref("no-such-tag")).returncode == 1


# --- errors and exit statuses -------------------------------------------------------------------


def test_not_found_is_status_3(skopeo_release: SkopeoRelease, layouts: Layouts) -> None:
    opt = skopeo_opt(skopeo_release)
    ref = layouts.ref("small")
    missing = cli(*opt, "inspect", layouts.ref("no-such-tag"))
    assert missing.returncode == 3
    assert "not found" in one_line_error(missing)
    gone = cli(*opt, "cat", ref, "/etc/motd")
    assert gone.returncode == 3
    assert one_line_error(gone) == "containers-image-proxy: /etc/motd: no such file in the image"
    assert cli(*opt, "ls", ref, "/nowhere").returncode == 3
    unknown = cli(*opt, "blob", ref, sha256(b"not in the image"))
    assert unknown.returncode == 3
    assert "not referenced" in one_line_error(unknown)


def test_usage_errors_are_status_2(layouts: Layouts) -> None:
    for args in (
        ["inspect"],  # missing IMAGE
        ["frobnicate", "x"],  # no such command
        ["inspect", "quay.io/foo/bar"],  # no transport
        ["--tls-verify=maybe", "inspect", "docker://x/y"],
        ["blob", layouts.ref("small"), "md5:abc"],
        ["--authfile", "/a", "--no-creds", "inspect", "docker://x/y"],
    ):
        proc = cli(*args)
        assert proc.returncode == 2, (args, proc.stderr)
        one_line_error(proc)


def test_failures_are_status_1_with_one_line(layouts: Layouts, tmp_path: Path) -> None:
    proc = cli("--skopeo", str(tmp_path / "no-skopeo"), "inspect", layouts.ref("small"))
    assert proc.returncode == 1
    assert "cannot run skopeo" in one_line_error(proc)
    # the output directory does not exist: a local failure, not "not found"
    layer = layouts.small.layers[0]
    proc = cli("blob", layouts.ref("small"), layer.digest, "-o", str(tmp_path / "a" / "b"))
    assert proc.returncode == 1
    one_line_error(proc)


def test_debug_shows_traceback_and_skopeo(layouts: Layouts) -> None:
    proc = cli("--debug", "cat", layouts.ref("small"), "/etc/motd")
    assert proc.returncode == 3
    err = proc.stderr.decode()
    assert "Traceback" in err
    assert "started <ImageProxy pid=" in err
    assert err.strip().splitlines()[-1].startswith("containers-image-proxy: ")


def test_exists_failure_is_not_no(tmp_path: Path) -> None:
    """``exists`` answers 0 or 1; a failure to answer must be neither."""
    proc = cli("--skopeo", str(tmp_path / "no-skopeo"), "exists", "oci:/nonexistent:x")
    assert proc.returncode == 4
    one_line_error(proc)
    assert cli("exists", "not-a-reference").returncode == 2


def test_global_options_before_or_after_the_command(
    skopeo_release: SkopeoRelease, layouts: Layouts
) -> None:
    ref = layouts.ref("multiarch")
    opt = skopeo_opt(skopeo_release)
    arm = layouts.multiarch.for_platform("arm64")
    before = json.loads(ok(cli(*opt, "--override-arch", "arm64", "inspect", "--json", ref)))
    after = json.loads(ok(cli("inspect", "--json", ref, *opt, "--override-arch=arm64")))
    assert before["digest"] == after["digest"] == arm.manifest_digest
    # a bare boolean flag does not take the next word as its value (as in skopeo)
    ok(cli(*opt, "--tls-verify", "exists", ref))
    ok(cli(*opt, "exists", "--tls-verify", ref))


def test_authfile_from_stdin_is_passed_to_skopeo(layouts: Layouts, tmp_path: Path) -> None:
    """--authfile - reads stdin and skopeo gets an anonymous file, never a named one."""
    seen = tmp_path / "argv"
    wrapper = tmp_path / "skopeo-wrapper"
    # The wrapper records the authfile skopeo is given and the content behind it.
    wrapper.write_text(
        "#!/bin/sh\n"
        'prev=""\n'
        'for a in "$@"; do if [ "$prev" = --authfile ]; then\n'
        f'  printf "%s\\n" "$a" > {shlex.quote(str(seen))}; cat "$a" >> {shlex.quote(str(seen))}\n'
        'fi; prev="$a"; done\n'
        'exec skopeo "$@"\n'
    )
    wrapper.chmod(0o755)
    auth = b'{"auths": {"registry.example": {"auth": "dXNlcjpwYXNz"}}}'
    proc = cli(
        "--skopeo", str(wrapper), "--authfile", "-", "exists", layouts.ref("small"), input=auth
    )
    assert proc.returncode == 0, proc.stderr
    path, _, content = seen.read_bytes().partition(b"\n")
    assert path.startswith(b"/proc/self/fd/")
    assert content == auth
    bad = cli("--authfile", "-", "exists", layouts.ref("small"), input=b"not json")
    assert bad.returncode == 2
    assert "--authfile -" in one_line_error(bad)


def test_help_for_every_command_has_an_example() -> None:
    top = ok(cli("--help", env={"COLUMNS": "100"})).decode()
    for command in (
        "inspect", "manifest", "config", "layers", "blob", "cat", "ls", "unpack", "pull",
        "exists",
    ):  # fmt: skip
        assert command in top
        text = ok(cli(command, "--help", env={"COLUMNS": "100"})).decode()
        assert "example" in text and f"containers-image-proxy {command} " in text, command
        assert "--tls-verify" in text  # global options are accepted after the command too
    assert "exit status" in top


def test_output_through_a_pipe_has_no_terminal_codes(layouts: Layouts, tmp_path: Path) -> None:
    """Not a terminal: nothing but the requested output (no bars, no messages)."""
    proc = cli("pull", layouts.ref("small"), f"{tmp_path / 'layout'}:x")
    out = ok(proc)
    assert out.decode().strip() == layouts.small.manifest_digest
    assert proc.stderr == b""
    assert b"\x1b" not in out


def test_console_script(layouts: Layouts) -> None:
    """The installed entry point is the same tool as python -m containers_image_proxy."""
    exe = Path(sys.executable).parent / "containers-image-proxy"
    if not exe.exists():
        pytest.skip("console script not installed (pip install -e .)")
    direct = subprocess.run(
        [str(exe), "manifest", layouts.ref("small")], capture_output=True, timeout=60
    )
    assert direct.returncode == 0
    assert direct.stdout == layouts.small.manifest


# --- artifacts and a filesystem with more in it ---------------------------------------------------


def test_ls_long_and_json(layout_builder: LayoutBuilder) -> None:
    layers = [
        make_tar({"usr/share/doc/a/README": b"a", "usr/bin/tool": b"x" * 100}),
        make_tar({"usr/share/doc/b/README": b"bb", "usr/share/doc/a/.wh.README": b""}),
    ]
    layout_builder.add_image("fs", layers)
    ref = layout_builder.ref("fs")
    long = ok(cli("ls", "-l", ref, "/usr/share/doc")).decode().splitlines()
    assert [line.split()[-1] for line in long] == ["a", "b"]
    assert all(line.startswith("drwxr-xr-x") for line in long)
    entries = json.loads(ok(cli("ls", "--json", ref, "/usr/bin")))
    assert entries[0]["name"] == "tool" and entries[0]["size"] == 100
    assert entries[0]["kind"] == "file" and entries[0]["mode"] == 0o644
    assert ok(cli("ls", ref, "/usr/share/doc/a")) == b""  # whited out in the upper layer
    assert ok(cli("ls", ref, "/usr/bin/tool")) == b"tool\n"  # a file lists itself


def test_unpack_needs_rootless_or_root(layouts: Layouts, tmp_path: Path) -> None:
    dest = tmp_path / "rootfs"
    ok(cli("unpack", "--rootless", layouts.ref("small"), str(dest)))
    assert (dest / "etc" / "os-release").read_bytes() == b'NAME="testbed"\nVERSION_ID="1"\n'
    assert not (dest / "etc" / "motd").exists()
    if os.geteuid() != 0:
        proc = cli("unpack", layouts.ref("small"), str(tmp_path / "other"))
        assert proc.returncode == 2
        assert "--rootless" in one_line_error(proc)


def test_artifact_inspect_config_and_blob(layout_builder: LayoutBuilder, tmp_path: Path) -> None:
    from testbed.images import add_wasm_artifact

    wasm, _ = add_wasm_artifact(layout_builder, "module")
    ref = layout_builder.ref("module")
    text = ok(cli("inspect", ref)).decode()
    assert "Artifact:   application/vnd.example.wasm.v1" in text
    assert "Config:     application/vnd.wasm.config.v0+json" in text
    doc = json.loads(ok(cli("inspect", "--json", ref)))
    assert doc["config"] is None and doc["layers"][0]["media_type"] == "application/wasm"
    assert json.loads(ok(cli("config", ref))) == {"wasm": True}
    out = tmp_path / "module.wasm"
    ok(cli("blob", ref, sha256(wasm), "-o", str(out)))
    assert out.read_bytes() == wasm
    # Its blob is not a filesystem layer: ls refuses it, naming its media type.
    refused = cli("ls", ref, "/")
    assert refused.returncode != 0
    assert "'application/wasm' is not a filesystem layer" in one_line_error(refused)
