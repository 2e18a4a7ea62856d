"""pytest fixtures for the test bed. Load with ``pytest_plugins = ["testbed.conftest_plugin"]``
in tests/conftest.py (or ``-p testbed.conftest_plugin``).

Fixtures:

- ``skopeo_release`` (session): a :class:`~testbed.releases.SkopeoRelease`; every test that
  uses it runs once per available release, with the release name as test id.
- ``registry_plain``, ``registry_tls``, ``registry_auth`` (session): a running
  :class:`~testbed.registry.Registry` of that flavour, started on first use.
- ``layouts`` (session): :class:`~testbed.images.Layouts`, the ready-made images in one OCI
  layout. Read-only: a test that damages blobs builds its own layout (``layout_builder``).
- ``layout_builder`` (function): a :class:`~testbed.images.LayoutBuilder` on a fresh
  directory.
- ``front`` (function): ``"sync"`` or ``"async"``; a test using it runs on both front ends
  (open the proxy with :func:`testbed.fronts.open_proxy`).
- ``go_tarlist`` (session): a :class:`~testbed.tarcraft.GoLister`, the Go program listing
  tars with archive/tar, built once (skips when ``go`` is not installed).

At the end, the terminal summary counts passed/failed/skipped tests per skopeo release.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .fronts import FRONTS
from .images import LayoutBuilder, Layouts, build_standard_layout
from .registry import Registry
from .releases import RELEASES_ENV, SkopeoRelease, all_releases, available_releases
from .tarcraft import GoLister, build_tarlist

RELEASE_PROPERTY = "skopeo_release"


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    # Here rather than in @pytest.fixture(params=...), which would run at import: the
    # binaries are probed only when a collected test needs a release, and a bad
    # CIP_SKOPEO_RELEASES is reported as a collection error of the modules that use it.
    if "skopeo_release" not in metafunc.fixturenames:
        return
    releases = available_releases()
    metafunc.parametrize(
        "skopeo_release",
        releases,
        ids=[r.name for r in releases],
        indirect=True,
        scope="session",
    )


@pytest.fixture(scope="session")
def skopeo_release(request: pytest.FixtureRequest) -> SkopeoRelease:
    release: SkopeoRelease = request.param
    return release


def _registry(flavour: str) -> Iterator[Registry]:
    registry = Registry(flavour)
    registry.start()
    try:
        yield registry
    finally:
        registry.stop()


@pytest.fixture(scope="session")
def registry_plain() -> Iterator[Registry]:
    yield from _registry("plain")


@pytest.fixture(scope="session")
def registry_tls() -> Iterator[Registry]:
    yield from _registry("tls")


@pytest.fixture(scope="session")
def registry_auth() -> Iterator[Registry]:
    yield from _registry("auth")


@pytest.fixture(scope="session")
def layouts(tmp_path_factory: pytest.TempPathFactory) -> Layouts:
    return build_standard_layout(tmp_path_factory.mktemp("layouts") / "oci")


@pytest.fixture
def layout_builder(tmp_path: Path) -> LayoutBuilder:
    return LayoutBuilder(tmp_path / "oci")


@pytest.fixture(params=FRONTS)
def front(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture(scope="session")
def go_tarlist(tmp_path_factory: pytest.TempPathFactory) -> GoLister:
    binary = build_tarlist(tmp_path_factory.mktemp("tarlist"))
    if binary is None:
        pytest.skip("go is not on PATH (Debian package golang-go, see scripts/setup.sh)")
    return GoLister(binary)


# --- Per-release summary -----------------------------------------------------------------


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # The release travels as a user property: reports carry those to the controller under
    # pytest-xdist, and junit XML records them.
    for item in items:
        callspec = getattr(item, "callspec", None)
        if callspec is None:
            continue
        release = callspec.params.get("skopeo_release")
        if isinstance(release, SkopeoRelease):
            item.user_properties.append((RELEASE_PROPERTY, release.name))


_OUTCOMES = ("passed", "failed", "skipped")


class ReleaseTally:
    """Counts outcomes per skopeo release and prints them in the terminal summary."""

    def __init__(self) -> None:
        # nodeid -> (release, outcome): one entry per test, so a test that passes and then
        # fails in teardown counts once, as failed.
        self.results: dict[str, tuple[str, str]] = {}

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        release = next((str(v) for k, v in report.user_properties if k == RELEASE_PROPERTY), None)
        if release is None:
            return
        if report.failed:
            outcome = "failed"
        elif report.skipped:
            outcome = "skipped"  # includes xfail, as pytest reports it
        elif report.when == "call":
            outcome = "passed"
        else:
            return
        if self.results.get(report.nodeid, ("", ""))[1] != "failed":
            self.results[report.nodeid] = (release, outcome)

    def counts(self) -> dict[str, dict[str, int]]:
        table: dict[str, dict[str, int]] = defaultdict(lambda: dict.fromkeys(_OUTCOMES, 0))
        for release, outcome in self.results.values():
            table[release][outcome] += 1
        return table

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if not self.results:
            return
        counts = self.counts()
        terminalreporter.section("tests per skopeo release")
        for name in sorted(counts, key=_version_key):
            c = counts[name]
            terminalreporter.write_line(
                f"skopeo {name:<10} {c['passed']:4d} passed {c['failed']:4d} failed "
                f"{c['skipped']:4d} skipped"
            )


def _version_key(name: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in name.split("."))
    except ValueError:
        return ()


def pytest_configure(config: pytest.Config) -> None:
    config.pluginmanager.register(ReleaseTally(), "testbed-release-tally")


@pytest.hookimpl(trylast=True)
def pytest_report_header(config: pytest.Config) -> list[str]:
    try:
        releases = available_releases()
    except LookupError as e:
        return [f"skopeo releases: {e}"]
    found = ", ".join(f"{r.name} (protocol {r.protocol}, {r.origin})" for r in releases)
    lines = [f"skopeo releases: {found or 'none'}"]
    skipped = {r.name for r in all_releases()} - {r.name for r in releases}
    if skipped:
        lines.append(f"  not selected by {RELEASES_ENV}: {', '.join(sorted(skipped))}")
    return lines
