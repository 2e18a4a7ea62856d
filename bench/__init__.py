"""Benchmarks of containers-image-proxy against skopeo itself and against the limits of the
machine. Run ``make bench`` (about 15 minutes on 2 cores) or ``make bench-smoke`` (tiny sizes,
about a minute: it proves the suite runs and prints the same table, but its numbers mean
nothing).

Every measure runs its contender and its baseline in the same run, interleaved, several
times, and reports medians and their ratio. Nothing here asserts a time.

- :mod:`bench.inputs`: the image layouts and registry contents, built here (and cached).
- :mod:`bench.workload`: what a client does, run in a fresh child process per measurement.
- :mod:`bench.rawclient`: a bare protocol client, the limit for one proxy.
- :mod:`bench.relay`: a TCP relay adding latency, to simulate a remote registry.
- :mod:`bench.rows`: the measures, their baselines and targets; issue 14's in
  :mod:`bench.user_rows`, :mod:`bench.scan_rows`, :mod:`bench.engine_rows` and
  :mod:`bench.unpack_rows` (workloads in :mod:`bench.user_workloads`).
- :mod:`bench.charts`: the PNG charts of a run.
"""

import sys
from pathlib import Path

# The test bed (skopeo releases, registry, layout writer) lives with the tests.
_TESTS = str(Path(__file__).resolve().parent.parent / "tests")
if _TESTS not in sys.path:
    sys.path.insert(0, _TESTS)
