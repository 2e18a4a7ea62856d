"""examples/dask_scan.py on a real Dask LocalCluster of 2 worker processes, against the local
registry: a tag scan spread over workers, one proxy pool per worker."""

from __future__ import annotations

import importlib.util
import json
import pickle
import sys
from pathlib import Path

import pytest

from conftest import make_config
from testbed.images import LayoutBuilder, make_tar
from testbed.registry import Registry
from testbed.releases import SkopeoRelease

pytest.importorskip("distributed", reason="the dask extra is not installed (pip install '.[dask]')")

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
TAGS = 6


def _load_example():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("dask_scan", EXAMPLES / "dask_scan.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    # registered so that the workers (other processes) can unpickle its functions by name
    sys.modules["dask_scan"] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def scanned_tags(
    tmp_path_factory: pytest.TempPathFactory, registry_plain: Registry
) -> dict[str, str]:
    """TAGS images in the registry, each with its own os-release and dpkg status."""
    builder = LayoutBuilder(tmp_path_factory.mktemp("dask-layout"))
    expected = {}
    for n in range(TAGS):
        base = make_tar({"etc/os-release": f'ID=scan\nVERSION_ID="{n}"\n'.encode()})
        dpkg = make_tar({"var/lib/dpkg/status": f"Package: tool{n}\nStatus: ok\n".encode()})
        builder.add_image(f"t{n}", [base, dpkg])
        ref = registry_plain.ref(f"dask/scan:t{n}")
        registry_plain.push(builder.ref(f"t{n}"), f"dask/scan:t{n}")
        expected[ref] = str(n)
    return expected


def test_proxy_config_pickles(skopeo_release: SkopeoRelease) -> None:
    config = make_config(skopeo_release, tls_verify=False, auth_data=b'{"auths": {}}')
    assert pickle.loads(pickle.dumps(config)) == config


def test_dask_scan_over_two_worker_processes(
    skopeo_release: SkopeoRelease, scanned_tags: dict[str, str]
) -> None:
    from distributed import Client, LocalCluster

    example = _load_example()
    config = make_config(skopeo_release, tls_verify=False)
    refs = sorted(scanned_tags)
    with (
        LocalCluster(
            n_workers=2, threads_per_worker=2, processes=True, dashboard_address=None
        ) as cluster,
        Client(cluster) as client,
    ):
        # the workers import the example's module by name, as any shipped code: Dask's way
        client.upload_file(str(EXAMPLES / "dask_scan.py"))
        results = example.scan(client, config, refs, pool_size=2)
        # every worker's pool is up and belongs to that worker process
        sizes = client.run(lambda dask_worker: dask_worker.plugins[example.PLUGIN_NAME].pool.size)
        assert sorted(sizes.values()) == [2, 2]
    assert [r["reference"] for r in results] == refs
    for result in results:
        n = scanned_tags[result["reference"]]
        assert result["files"] == {
            "/etc/os-release": f'ID=scan\nVERSION_ID="{n}"\n',
            "/var/lib/dpkg/status": f"Package: tool{n}\nStatus: ok\n",
        }
        assert result["platform"] == "linux/amd64"
        assert result["digest"].startswith("sha256:")
    json.dumps(results)  # results are plain data: they crossed the network
