"""Faults and hostile peers: every one ends in a typed error, with no hang and no leak."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterator, List

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import child_pids, make_config, open_fds
from containers_image_proxy import (
    AsyncImageProxy,
    ImageProxy,
    ProtocolError,
    ProxyConfig,
    ProxyExitedError,
    ProxyStalledError,
    RequestError,
)
from testbed import fake_peer
from testbed.fronts import open_proxy
from testbed.images import LayoutBuilder, random_layer
from testbed.releases import SkopeoRelease

pytestmark = pytest.mark.integration


class BlackHole:
    """A TCP listener on loopback that accepts connections and never answers."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.conns: List[socket.socket] = []
        self._stop = False
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        self.sock.settimeout(0.2)
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.conns.append(conn)

    def close(self) -> None:
        self._stop = True
        self._thread.join()
        for c in self.conns:
            c.close()
        self.sock.close()


@pytest.fixture
def black_hole() -> Iterator[BlackHole]:
    hole = BlackHole()
    yield hole
    hole.close()


def kill_later(proxy: Any, sig: int, delay: float) -> threading.Timer:
    timer = threading.Timer(delay, os.kill, (proxy._process.pid, sig))
    timer.start()
    return timer


def test_kill_during_a_request(
    no_leaks: None, skopeo_release: SkopeoRelease, black_hole: BlackHole
) -> None:
    config = make_config(skopeo_release, tls_verify=False)
    proxy = ImageProxy(config)
    kill_later(proxy, signal.SIGKILL, 0.5)
    start = time.monotonic()
    with pytest.raises(ProxyExitedError) as e:
        proxy.open_image(f"docker://127.0.0.1:{black_hole.port}/x/y:z")
    assert time.monotonic() - start < 5
    assert e.value.returncode == -signal.SIGKILL
    assert "OpenImage" in str(e.value)
    with pytest.raises(ProxyExitedError):
        proxy.open_image("oci:/x:y")  # the failure sticks
    proxy.close()  # does not raise again after a reported failure


def test_kill_during_an_async_request(
    no_leaks: None, skopeo_release: SkopeoRelease, black_hole: BlackHole
) -> None:
    config = make_config(skopeo_release, tls_verify=False)

    async def main() -> None:
        async with AsyncImageProxy(config) as proxy:
            kill_later(proxy, signal.SIGKILL, 0.5)
            with pytest.raises(ProxyExitedError):
                await asyncio.wait_for(
                    proxy.open_image(f"docker://127.0.0.1:{black_hole.port}/x/y:z"), 10
                )

    asyncio.run(main())


def test_stalled_registry_trips_stall_timeout(
    no_leaks: None, skopeo_release: SkopeoRelease, black_hole: BlackHole
) -> None:
    config = make_config(skopeo_release, tls_verify=False, stall_timeout=1.0)
    with ImageProxy(config) as proxy:
        start = time.monotonic()
        with pytest.raises(ProxyStalledError, match="no progress for 1 s"):
            proxy.open_image(f"docker://127.0.0.1:{black_hole.port}/x/y:z")
        assert time.monotonic() - start < 4


@pytest.fixture(scope="module")
def big_layout(tmp_path_factory: pytest.TempPathFactory) -> Any:
    builder = LayoutBuilder(tmp_path_factory.mktemp("big") / "oci")
    image = builder.add_image("big", [random_layer(1, 8 * 1024 * 1024)], compression=None)
    return builder, image


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGSTOP], ids=["kill", "stop"])
def test_skopeo_dies_or_stops_mid_blob(
    skopeo_release: SkopeoRelease, big_layout: Any, sig: int, no_leaks: None
) -> None:
    builder, image = big_layout
    layer = image.layers[0]
    config = make_config(skopeo_release, stall_timeout=1.5)
    proxy = ImageProxy(config)
    with proxy.open_image(builder.ref("big")) as img:
        blob = proxy.get_blob(img, layer.digest, layer.size)
        assert len(blob.read(100_000)) == 100_000
        os.kill(proxy._process.pid, sig)
        start = time.monotonic()
        expected = ProxyExitedError if sig == signal.SIGKILL else ProxyStalledError
        with pytest.raises(expected):
            while blob.read(1 << 20):
                pass
        assert time.monotonic() - start < 6
        blob.close()
    proxy.close()


def test_many_proxies_leave_nothing_behind(skopeo_release: SkopeoRelease, tmp_path: Path) -> None:
    if skopeo_release.origin != "system":
        pytest.skip("process hygiene is release-independent: run once, on the system skopeo")
    fds, children = open_fds(), child_pids()
    for _ in range(200):
        with ImageProxy(ProxyConfig(skopeo=skopeo_release.argv)):
            pass
    assert open_fds() == fds
    assert child_pids() == children


# --- a scripted fake peer: malformed replies real skopeo never sends (both front ends) ----


def fake_config(*steps: Any, version: str = "0.2.8") -> ProxyConfig:
    os.environ["FAKE_PEER_SCRIPT"] = json.dumps(list(steps))
    os.environ["FAKE_PEER_VERSION"] = version
    return ProxyConfig(skopeo=(sys.executable, fake_peer.__file__))


@pytest.fixture
def fake_env() -> Iterator[None]:
    yield
    os.environ.pop("FAKE_PEER_SCRIPT", None)
    os.environ.pop("FAKE_PEER_VERSION", None)


OK = '{"success": true, "value": 1, "pipeid": 0}'

MALFORMED_OPEN = [
    {"raw": "not json"},
    {"raw": "[]"},
    {"raw": '{"value": 1}'},
    {"raw": '{"success": "yes"}'},
    {"raw": '{"success": true, "value": "one", "pipeid": 0}'},
    {"raw": '{"success": true, "value": -4, "pipeid": 0}'},
    {"raw": '{"success": true, "value": 1e300, "pipeid": 0}'},
    {"raw": '{"success": true, "value": 1, "pipeid": 0}', "fds": 1},
    {"raw": '{"success": true, "value": 1, "pipeid": 5}'},
    {"raw": '{"success": false, "pipeid": 0}'},
    {"raw": '{"success": false, "pipeid": 0, "error": "x"}', "fds": 2},
]


@pytest.mark.parametrize("step", MALFORMED_OPEN, ids=lambda s: s["raw"][:30])
def test_malformed_open_replies(front: str, step: Any, fake_env: None, no_leaks: None) -> None:
    with open_proxy(front, fake_config(step)) as proxy, pytest.raises(ProtocolError):
        proxy.open_image("oci:/x:y")


MALFORMED_MANIFEST = [
    {"raw": '{"success": true, "value": "sha256:x", "pipeid": 3}', "fds": 0},  # id, no fd
    {"raw": '{"success": true, "value": "sha256:x", "pipeid": 0}', "fds": 2},
    {"raw": '{"success": true, "value": "sha256:x", "pipeid": 3}', "fds": 3},
    {"raw": '{"success": true, "value": 12, "pipeid": 3}', "fds": 1, "payload": "{}"},
]


@pytest.mark.parametrize("step", MALFORMED_MANIFEST, ids=lambda s: s["raw"][:40])
def test_malformed_pipe_replies(front: str, step: Any, fake_env: None, no_leaks: None) -> None:
    with open_proxy(front, fake_config({"raw": OK}, step)) as proxy:
        img = proxy.open_image("oci:/x:y")
        with pytest.raises(ProtocolError):
            proxy.fetch_manifest_raw_oci(img)


def test_raw_blob_with_one_fd(front: str, fake_env: None, no_leaks: None) -> None:
    bad = {"raw": '{"success": true, "value": 3, "pipeid": 0}', "fds": 1, "payload": "abc"}
    with open_proxy(front, fake_config({"raw": OK}, bad)) as proxy:
        img = proxy.open_image("oci:/x:y")
        with pytest.raises(ProtocolError):
            proxy.get_blob(img, "sha256:" + "0" * 64, 3)


def test_raw_blob_with_garbage_in_the_error_pipe(
    front: str, fake_env: None, no_leaks: None
) -> None:
    bad = {"raw": '{"success": true, "value": 3, "pipeid": 0}', "fds": 2, "payload": "abc"}
    with open_proxy(front, fake_config({"raw": OK}, bad)) as proxy:
        img = proxy.open_image("oci:/x:y")
        # the error pipe holds "abc" too: not JSON
        blob = proxy.get_raw_blob(img, "sha256:" + "0" * 64)
        with pytest.raises(ProtocolError):
            blob.read()
        blob.close()


def test_peer_that_exits_at_once(front: str, tmp_path: Path, no_leaks: None) -> None:
    script = tmp_path / "dies"
    script.write_text("#!/bin/sh\necho 'something went wrong' >&2\nexit 3\n")
    script.chmod(0o755)
    with pytest.raises(ProxyExitedError, match="something went wrong") as e:
        open_proxy(front, ProxyConfig(skopeo=(str(script),)))
    assert e.value.returncode == 3


@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    raw=st.one_of(
        st.text(max_size=60),
        st.builds(
            lambda s, v, p: json.dumps({"success": s, "value": v, "pipeid": p}),
            st.booleans(),
            st.one_of(st.integers(), st.text(max_size=5), st.none()),
            st.integers(min_value=-3, max_value=2**33),
        ),
    ),
    fds=st.integers(min_value=0, max_value=3),
)
def test_fuzzed_replies_from_a_fake_peer(raw: str, fds: int) -> None:
    before = open_fds()
    try:
        with ImageProxy(fake_config({"raw": OK}, {"raw": raw, "fds": fds})) as proxy:
            img = proxy.open_image("oci:/x:y")
            try:
                proxy.fetch_manifest_raw_oci(img)
            except (ProtocolError, RequestError):
                pass
    except (ProtocolError, RequestError):
        pass
    finally:
        os.environ.pop("FAKE_PEER_SCRIPT", None)
    assert open_fds() == before
