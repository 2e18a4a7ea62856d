"""What the tool prints: the config skopeo converts versus the stored config blob, a final
newline for documents on a terminal only, and ``ls --json`` as the library's ``DirEntry``."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import tarfile
import typing
from pathlib import Path

import pytest

from containers_image_proxy.layers._listing import DirEntry
from testbed.cli import TOOL, cli, ok, one_line_error, run_in_pty, skopeo_opt
from testbed.images import LayoutBuilder, Layouts, convert
from testbed.layers import d, f, hl, sym
from testbed.layers import make_tar as make_entries_tar
from testbed.releases import SkopeoRelease

pytestmark = pytest.mark.integration


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


# --- config: converted by skopeo, and the stored blob ----------------------------------------


def stored_config(archive: Path) -> tuple[str, bytes]:
    """(digest, bytes) of the config a docker archive stores, read from the tar itself."""
    with tarfile.open(archive) as tar:
        manifest = json.loads(tar.extractfile("manifest.json").read())  # type: ignore[union-attr]
        name = manifest[0]["Config"]
        data = tar.extractfile(name).read()  # type: ignore[union-attr]
    return "sha256:" + name.removesuffix(".json"), data


def test_config_of_a_converted_image_and_the_stored_blob(
    skopeo_release: SkopeoRelease, layouts: Layouts, tmp_path: Path
) -> None:
    archive = tmp_path / "d.tar"
    ref = convert(("skopeo",), layouts.ref("small"), f"docker-archive:{archive}:example/img:1")
    opt = skopeo_opt(skopeo_release)
    stored_digest, stored = stored_config(archive)
    assert sha256(stored) == stored_digest

    manifest = json.loads(ok(cli(*opt, "manifest", ref)))
    converted = ok(cli(*opt, "config", ref))
    # what `config` prints is skopeo's conversion: other bytes, another digest
    assert converted != stored
    assert sha256(converted) == manifest["config"]["digest"] != stored_digest
    assert json.loads(converted)["rootfs"] == json.loads(stored)["rootfs"]

    # blob of the digest the OCI manifest names: the bytes `config` prints
    assert ok(cli(*opt, "blob", ref, manifest["config"]["digest"])) == converted
    # blob of the stored config's digest: the stored bytes
    size = ["--size", str(len(stored))]
    if skopeo_release.has_protocol("0.2.8"):
        assert ok(cli(*opt, "blob", ref, stored_digest)) == stored
    else:
        # GetBlob needs the size, which only the stored manifest knows
        refused = cli(*opt, "blob", ref, stored_digest)
        assert refused.returncode == 2
        assert "--size" in one_line_error(refused)
        wrong = cli(*opt, "blob", ref, stored_digest, "--size", str(len(stored) + 1))
        assert wrong.returncode == 1
        one_line_error(wrong)
    out = tmp_path / "config.json"
    ok(cli(*opt, "blob", ref, stored_digest, *size, "-o", str(out)))
    assert out.read_bytes() == stored
    # a digest that is neither: not found
    missing = cli(*opt, "blob", ref, sha256(b"nothing"), *size)
    assert missing.returncode == 3, missing.stderr
    one_line_error(missing)


def test_blob_size_must_agree_with_the_manifest(layouts: Layouts) -> None:
    layer = layouts.small.layers[0]
    ref = layouts.ref("small")
    assert ok(cli("blob", ref, layer.digest, "--size", str(layer.size))) == layer.blob
    wrong = cli("blob", ref, layer.digest, "--size", str(layer.size + 1))
    assert wrong.returncode == 2
    assert f"with {layer.size} bytes" in one_line_error(wrong)


def test_config_help_says_it_is_converted() -> None:
    text = ok(cli("config", "--help", env={"COLUMNS": "100"})).decode()
    assert "GetFullConfig" in text
    assert "blob IMAGE CONFIG_DIGEST" in text.replace("\n", " ")


# --- a final newline on a terminal -----------------------------------------------------------


def test_documents_end_with_a_newline_on_a_terminal_only(layouts: Layouts) -> None:
    ref = layouts.ref("small")
    manifest, config = layouts.small.manifest, ok(cli("config", ref))
    assert not manifest.endswith(b"\n") and not config.endswith(b"\n")  # else nothing to show
    for command, data in (("manifest", manifest), ("config", config)):
        # through a pipe: the bytes exactly
        assert ok(cli(command, ref)) == data
        # on a terminal (which shows "\n" as CR LF): the bytes, then one newline
        status, shown = run_in_pty([*TOOL, command, ref])
        assert status == 0, shown
        assert shown == data.replace(b"\n", b"\r\n") + b"\r\n", command


# --- ls --json is DirEntry --------------------------------------------------------------------


def test_ls_json_has_the_fields_and_types_of_direntry(layout_builder: LayoutBuilder) -> None:
    layer = make_entries_tar(
        [
            d("dir", mode=0o750, uid=7, gid=8),
            f("dir/file", b"hello", mode=0o4755),
            hl("dir/link", "dir/file"),
            sym("dir/sym", "file"),
            f("dir/empty"),
        ]
    )
    layout_builder.add_image("fs", [layer])
    ref = layout_builder.ref("fs")
    entries = json.loads(ok(cli("ls", "--json", ref, "/dir")))
    hints = typing.get_type_hints(DirEntry)
    names = [field.name for field in dataclasses.fields(DirEntry)]
    json_types = {str: str, int: int, float: float, tuple[int, int]: list}
    for entry in entries:
        assert list(entry) == names
        for name in names:
            assert type(entry[name]) is json_types[hints[name]], (name, entry[name])
        assert all(type(n) is int for n in entry["device"])
        # the same entry, rebuilt from the JSON, as the library gives it
        DirEntry(**{k: tuple(v) if isinstance(v, list) else v for k, v in entry.items()})
    by_name = {e["name"]: e for e in entries}
    assert sorted(by_name) == ["empty", "file", "link", "sym"]
    assert by_name["file"]["kind"] == "file" and by_name["file"]["mode"] == 0o4755
    assert by_name["file"]["nlink"] == by_name["link"]["nlink"] == 2
    assert by_name["file"]["size"] == 5 and by_name["file"]["path"] == "/dir/file"
    assert by_name["sym"]["kind"] == "symlink" and by_name["sym"]["linkname"] == "file"
    dirs = json.loads(ok(cli("ls", "--json", ref, "/")))
    assert [(e["name"], e["kind"], e["mode"], e["uid"], e["gid"]) for e in dirs] == [
        ("dir", "dir", 0o750, 7, 8)
    ]
