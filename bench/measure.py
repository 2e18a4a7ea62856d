"""Running one measurement: a workload in a child interpreter, or a command, timed.

Also the machine description printed with every result table.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

REPO_ROOT = Path(__file__).resolve().parent.parent
_TICK = os.sysconf("SC_CLK_TCK")


def process_cpu(pid: Optional[int]) -> float:
    """CPU seconds (user + system, every thread) a process has used so far."""
    if pid is None:
        return float("nan")
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / _TICK


class MeasureError(RuntimeError):
    """A workload or a command failed; the message carries its stderr."""


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def child_env(client_src: Optional[str]) -> Dict[str, str]:
    """The environment of workload children: the bench package importable, and the client
    from ``client_src`` instead of the installed one when given (to measure a patched copy)."""
    env = dict(os.environ)
    paths = [str(REPO_ROOT)]
    if client_src:
        paths.insert(0, client_src)
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    return env


def run_workload(spec: Mapping[str, Any], env: Mapping[str, str]) -> Dict[str, Any]:
    """Run ``bench.workload`` with ``spec`` in a fresh interpreter; its JSON result."""
    proc = subprocess.run(
        [sys.executable, "-m", "bench.workload", json.dumps(spec)],
        cwd=REPO_ROOT,
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=600,
        stdin=subprocess.DEVNULL,
    )
    if proc.returncode != 0:
        raise MeasureError(f"workload {spec.get('kind')} failed:\n{proc.stderr[-3000:]}")
    result: Dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def run_timed(argv: Sequence[str], stdout: Optional[Path] = None) -> Tuple[float, float]:
    """Run a command to its end: (wall seconds, its CPU seconds). ``stdout``: a file to
    (re)create for its output, else its output is discarded."""
    with tempfile.TemporaryFile() as err:
        out = open(stdout, "wb") if stdout is not None else None  # noqa: SIM115
        t0 = time.perf_counter()
        try:
            proc = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=out if out is not None else subprocess.DEVNULL,
                stderr=err,
            )
        finally:
            if out is not None:
                out.close()
        # wait4 gives the child's own resource usage, unmixed with other children's
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            err.seek(0)
            detail = err.read().decode(errors="replace")[-3000:]
            raise MeasureError(f"{' '.join(argv)} exited with {proc.returncode}:\n{detail}")
    return wall, usage.ru_utime + usage.ru_stime


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory_gib() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / (1 << 20)
    except OSError:
        pass
    return float("nan")


def filesystem_of(path: Path) -> str:
    """The type of the filesystem holding ``path`` (ext4, tmpfs ...)."""
    best, kind = "", "unknown"
    try:
        target = str(path.resolve())
        for line in Path("/proc/mounts").read_text().splitlines():
            parts = line.split()
            mount = parts[1]
            inside = target == mount or target.startswith(mount.rstrip("/") + "/")
            if inside and len(mount) > len(best):
                best, kind = mount, parts[2]
    except OSError:
        pass
    return kind


def load_average() -> float:
    return os.getloadavg()[0]


def machine_lines(releases: Sequence[Any], workdir: Path) -> List[str]:
    """What the numbers depend on: cores, CPU, memory, kernel, Python, skopeo releases."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    found = ", ".join(f"{r.name} (protocol {r.protocol}, {r.origin})" for r in releases)
    return [
        f"cores: {cores} ({_cpu_model()}), memory {_memory_gib():.0f} GiB",
        f"kernel: {platform.release()}, Python {platform.python_version()}",
        f"skopeo: {found or 'none found'}",
        f"work directory: {workdir} ({filesystem_of(workdir)})",
        f"load average at start: {load_average():.2f}",
    ]
