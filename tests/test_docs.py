"""The documentation site covers the public API: every exported name has a docstring and a
place in the API reference (docs/api/*.md), so a new public name cannot go undocumented."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import containers_image_proxy
import containers_image_proxy.layers

DOCS = Path(__file__).resolve().parent.parent / "docs"


def _referenced() -> set[str]:
    names: set[str] = set()
    for page in (DOCS / "api").glob("*.md"):
        names.update(re.findall(r"^::: containers_image_proxy\.([\w.]+)$", page.read_text(), re.M))
    return names


def test_every_public_name_is_in_the_api_reference() -> None:
    referenced = _referenced()
    missing = [n for n in containers_image_proxy.__all__ if n not in referenced]
    assert not missing, f"add to docs/api/*.md: {missing}"


def test_every_reference_names_something_that_exists() -> None:
    for dotted in _referenced():
        obj: object = containers_image_proxy
        for part in dotted.split("."):
            obj = getattr(obj, part)  # AttributeError names the stale reference


def test_every_public_name_and_method_has_a_docstring() -> None:
    undocumented = []
    for name in containers_image_proxy.__all__:
        obj = getattr(containers_image_proxy, name)
        if not (inspect.getdoc(obj) or "").strip():
            undocumented.append(name)
        if inspect.isclass(obj):
            for attr, member in vars(obj).items():
                if attr.startswith("_") or not callable(member):
                    continue
                if not (inspect.getdoc(member) or "").strip():
                    undocumented.append(f"{name}.{attr}")
    assert not undocumented, f"no docstring: {undocumented}"


def test_every_public_function_and_method_says_what_it_raises() -> None:
    """Every public callable's docstring speaks of what it raises (or that it never does)."""
    silent = []
    for name in containers_image_proxy.__all__:
        obj = getattr(containers_image_proxy, name)
        if inspect.isclass(obj) and issubclass(obj, BaseException):
            continue
        members = (
            [(f"{name}.{a}", getattr(obj, a)) for a, m in vars(obj).items() if callable(m)]
            if inspect.isclass(obj)
            else [(name, obj)]
        )
        for label, member in members:
            if label.rsplit(".", 1)[-1].startswith("_") or not callable(member):
                continue
            if "raise" not in (inspect.getdoc(member) or "").lower():
                silent.append(label)
    assert not silent, f"say what these raise: {silent}"
