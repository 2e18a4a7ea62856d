"""The package's shape: no import cycle, no module over 500 lines, the generated sync front
end current (scripts/unasync.py --check)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Set

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "src" / "containers_image_proxy"


def _module(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path, modules: Set[str]) -> Set[str]:
    """The package modules ``path`` imports, at run time or for type checking."""
    module = _module(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: Set[str] = set()
    tree = ast.parse(path.read_text(), str(path))
    for node in tree.body:  # module level only: imports inside functions run later
        for sub in ast.walk(node):
            if isinstance(sub, ast.ImportFrom) and sub.level:
                base = package.split(".")
                base = base[: len(base) - sub.level + 1]
                target = ".".join(base + ([sub.module] if sub.module else []))
                for alias in sub.names:  # a submodule, or a name the module defines
                    name = f"{target}.{alias.name}"
                    found.add(name if name in modules else target)
            elif isinstance(sub, ast.Import):
                found.update(alias.name for alias in sub.names)
    return found


def _graph() -> Dict[str, Set[str]]:
    paths = {_module(p): p for p in PACKAGE.rglob("*.py")}
    modules = set(paths)
    return {m: {t for t in _imports(p, modules) if t in paths and t != m} for m, p in paths.items()}


def test_no_import_cycle() -> None:
    graph = _graph()
    state: Dict[str, int] = {}
    stack: List[str] = []

    def visit(module: str) -> None:
        state[module] = 1
        stack.append(module)
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                cycle = [*stack[stack.index(target) :], target]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if target not in state:
                visit(target)
        stack.pop()
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module)


def test_no_module_over_500_lines() -> None:
    long = {
        str(p.relative_to(PACKAGE)): n
        for p in PACKAGE.rglob("*.py")
        if (n := len(p.read_text().splitlines())) > 500
    }
    assert long == {}


def test_generated_sync_front_end_is_current() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "unasync.py"), "--check"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
