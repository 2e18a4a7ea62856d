"""The tool at a terminal: progress bars that render and then disappear, and Ctrl-C in the
middle of a transfer, which stops it at once with no partial file at the destination and no
skopeo left behind.

The registry is reached through a relay that sends at 1 MiB/s, so fetching the 6 MiB layer
takes seconds and the interrupt lands while bytes are still arriving.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from testbed.cli import (
    TOOL,
    Throttle,
    alive,
    children_of,
    cli,
    interrupt,
    ok,
    run_in_pty,
    screen,
    skopeo_opt,
    wait_for,
)
from testbed.images import LayoutBuilder, Layouts, convert, make_tar, random_layer
from testbed.registry import Registry
from testbed.releases import SkopeoRelease

pytestmark = pytest.mark.integration

LAYER_SIZE = 6 * 1024 * 1024
RATE = 1024 * 1024
STOP_WITHIN = 3.0  # seconds from Ctrl-C to exit; a transfer left running would take longer


@pytest.fixture(scope="module")
def slow_image(
    registry_plain: Registry, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, str, int]]:
    """(reference through the slow relay, big layer digest, its size)."""
    builder = LayoutBuilder(tmp_path_factory.mktemp("slow") / "oci")
    info = builder.add_image("big", [random_layer(7, LAYER_SIZE)], compression=None)
    convert(("skopeo",), builder.ref("big"), registry_plain.ref("cli/slow:1"),
            registry_plain.dest_args())  # fmt: skip
    # the push compressed the layer: ask the registry for what it holds
    del info
    layers = json.loads(ok(cli("--tls-verify=false", "layers", "--json",
                                registry_plain.ref("cli/slow:1"))))  # fmt: skip
    with Throttle(registry_plain.host, RATE) as relay:
        yield f"docker://{relay.host}/cli/slow:1", layers[0]["digest"], layers[0]["size"]


@pytest.fixture(scope="module")
def quick_image(
    registry_plain: Registry, slow_image: tuple[str, str, int]
) -> Iterator[tuple[str, str]]:
    """The same image at 8 MiB/s: a transfer of about a second, long enough for bars."""
    with Throttle(registry_plain.host, 8 * RATE) as relay:
        yield f"docker://{relay.host}/cli/slow:1", slow_image[1]


def start(args: list[str], group: bool) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [*TOOL, "--tls-verify=false", *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=group,
    )


def files_under(path: Path) -> list[Path]:
    return [p for p in path.rglob("*") if p.is_file()]


def largest(path: Path) -> int:
    """The size of the largest file under ``path`` (files come and go while we look)."""
    sizes = [0]
    for p in files_under(path):
        with contextlib.suppress(FileNotFoundError):
            sizes.append(p.stat().st_size)
    return max(sizes)


def interrupt_midway(
    proc: subprocess.Popen[bytes], written: Path, group: bool
) -> tuple[float, set[int], bytes]:
    """Wait for bytes to land under ``written``, Ctrl-C; (seconds to exit, skopeos, stderr)."""

    def some_bytes() -> bool:
        assert proc.poll() is None, proc.communicate()
        return largest(written) > 256 * 1024

    wait_for(some_bytes, 30, "the transfer to start")
    skopeos = children_of(proc.pid)
    assert skopeos, "no skopeo child while transferring"
    interrupt(proc, group=group)
    t0 = time.monotonic()
    _, err = proc.communicate(timeout=30)
    took = time.monotonic() - t0
    print(f"stopped {took:.2f} s after Ctrl-C")
    return took, skopeos, err


def test_ctrl_c_during_blob_to_file(
    skopeo_release: SkopeoRelease, slow_image: tuple[str, str, int], tmp_path: Path
) -> None:
    ref, digest, _ = slow_image
    out = tmp_path / "layer.tar"
    proc = start([*skopeo_opt(skopeo_release), "blob", ref, digest, "-o", str(out)], group=False)
    took, skopeos, err = interrupt_midway(proc, tmp_path, group=False)
    assert proc.returncode == 130, err
    assert err.decode().strip() == "containers-image-proxy: interrupted"
    assert took < STOP_WITHIN
    assert os.listdir(tmp_path) == []  # neither the file nor its temporary twin
    assert not any(alive(pid) for pid in skopeos)


def test_sigterm_during_blob_to_file(slow_image: tuple[str, str, int], tmp_path: Path) -> None:
    """SIGTERM (a service manager stopping the tool) cleans up like Ctrl-C, status 143."""
    ref, digest, _ = slow_image
    out = tmp_path / "layer.tar"
    proc = start(["blob", ref, digest, "-o", str(out)], group=False)

    def some_bytes() -> bool:
        assert proc.poll() is None, proc.communicate()
        return largest(tmp_path) > 256 * 1024

    wait_for(some_bytes, 30, "the transfer to start")
    skopeos = children_of(proc.pid)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 143, err
    assert err.decode().strip() == "containers-image-proxy: terminated"
    assert os.listdir(tmp_path) == []
    assert skopeos and not any(alive(pid) for pid in skopeos)


def test_ctrl_c_during_pull_from_a_terminal(
    slow_image: tuple[str, str, int], tmp_path: Path
) -> None:
    """As a terminal sends it: SIGINT to the whole process group, skopeo included."""
    ref, _, _ = slow_image
    layout = tmp_path / "layout"
    proc = start(["pull", ref, f"{layout}:x"], group=True)
    took, skopeos, err = interrupt_midway(proc, tmp_path, group=True)
    assert proc.returncode == 130, err
    assert took < STOP_WITHIN
    assert not any(alive(pid) for pid in skopeos)
    blobs = files_under(layout / "blobs")
    # what is left is complete and verified (the small config), never the partial layer
    assert all(not p.name.startswith(".") for p in blobs), blobs
    assert not (layout / "index.json").exists()


def test_ctrl_c_during_pull_only_the_tool(slow_image: tuple[str, str, int], tmp_path: Path) -> None:
    """SIGINT to the tool alone: it must shut skopeo down itself."""
    ref, digest, size = slow_image
    layout = tmp_path / "layout"
    proc = start(["pull", ref, f"{layout}:x"], group=False)
    took, skopeos, err = interrupt_midway(proc, tmp_path, group=False)
    assert proc.returncode == 130, err
    assert took < STOP_WITHIN
    assert not any(alive(pid) for pid in skopeos)
    assert all(not p.name.startswith(".") for p in files_under(layout / "blobs"))
    assert not (layout / "blobs" / "sha256" / digest.split(":")[1]).exists()
    del size


# --- progress bars ---------------------------------------------------------------------------


def test_progress_renders_and_disappears(quick_image: tuple[str, str], tmp_path: Path) -> None:
    ref, digest = quick_image
    layout = tmp_path / "layout"
    code, output = run_in_pty([*TOOL, "--tls-verify=false", "pull", ref, f"{layout}:x"])
    text = output.decode(errors="replace")
    assert code == 0, text
    # while it ran: a bar per blob and a total, with bytes, rate and time left
    short = digest.split(":")[1][:12]
    assert short in text and "total" in text, text
    assert "MB" in text and "/s" in text and "━" in text, text
    assert re.search(r"\d:\d\d:\d\d", text), text  # time left
    # at the end: only the result is on the screen, the bars are gone
    lines = screen(output)
    manifest = json.loads((layout / "index.json").read_bytes())["manifests"][0]["digest"]
    assert lines == [f"wrote oci:{layout}:x: 2 blob(s) fetched, 0 already present", manifest]


def test_bars_are_gone_before_a_file_is_printed(tmp_path: Path) -> None:
    builder = LayoutBuilder(tmp_path / "oci")
    builder.add_image("t", [make_tar({"etc/motd": b"line one\nline two\n"})])
    code, output = run_in_pty([*TOOL, "cat", builder.ref("t"), "/etc/motd"])
    assert code == 0
    assert screen(output) == ["line one", "line two"]


def test_quiet_on_a_terminal_prints_only_the_output(layouts: Layouts, tmp_path: Path) -> None:
    code, output = run_in_pty([*TOOL, "-q", "pull", layouts.ref("small"), f"{tmp_path}/l:x"])
    assert code == 0
    assert output.decode().split() == [layouts.small.manifest_digest]


def test_without_rich_the_tool_works_without_bars(layouts: Layouts, tmp_path: Path) -> None:
    """rich is optional (the ``cli`` extra): hidden, a terminal gets the output alone."""
    hide_rich = (
        "import sys; sys.modules['rich'] = None\n"
        "from containers_image_proxy.cli import main\n"
        "sys.exit(main())"
    )
    argv = [sys.executable, "-c", hide_rich, "pull", layouts.ref("small"), f"{tmp_path}/l:x"]
    code, output = run_in_pty(argv)
    assert code == 0, output
    assert b"\x1b[" not in output
    assert screen(output)[-1] == layouts.small.manifest_digest


def test_nothing_imports_rich_unless_bars_are_drawn(layouts: Layouts) -> None:
    probe = (
        "import sys\n"
        "import containers_image_proxy, containers_image_proxy.layers\n"
        "from containers_image_proxy.cli import main\n"
        "code = main(['manifest', sys.argv[1]])\n"
        "assert 'rich' not in sys.modules, 'rich imported'\n"
        "sys.exit(code)"
    )
    proc = subprocess.run(
        [sys.executable, "-c", probe, layouts.ref("small")],
        capture_output=True,
        stdin=subprocess.DEVNULL,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
