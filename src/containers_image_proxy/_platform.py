"""Platforms: ``"os/arch[/variant]"`` strings, and which index entries they select."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Optional, Union

from ._errors import ConfigurationError
from ._models import Descriptor, Platform

#: A wanted platform: (os, architecture, variant or None for any variant).
Wanted = tuple[str, str, Optional[str]]


def parse_platform(text: str) -> Wanted:
    """``"linux/arm64/v8"`` -> ``("linux", "arm64", "v8")``; ConfigurationError if malformed."""
    parts = text.split("/") if isinstance(text, str) else []
    if len(parts) not in (2, 3) or not all(parts):
        raise ConfigurationError(f"a platform is os/arch[/variant], got {text!r}")
    return parts[0], parts[1], (parts[2] if len(parts) == 3 else None)


def matches(desc: Descriptor, wanted: Wanted) -> bool:
    """Whether the index entry ``desc`` is for the ``wanted`` platform."""
    p = desc.platform
    if p is None:
        return False
    os_, arch, variant = wanted
    if p.os != os_ or p.architecture != arch:
        return False
    if variant is None:
        return True
    if arch == "arm64":  # arm64 with no variant is v8, as in containers/image
        return (p.variant or "v8") == variant
    return p.variant == variant


def show_platform(platform: Optional[Platform]) -> str:
    """``os/arch[/variant]`` of ``platform``, for messages."""
    if platform is None:
        return "?"
    variant = f"/{platform.variant}" if platform.variant else ""
    return f"{platform.os}/{platform.architecture}{variant}"


def show_wanted(wanted: Optional[list[Wanted]]) -> str:
    """The platforms asked for, for messages (None: any)."""
    if wanted is None:
        return "any platform"
    return ", ".join("/".join(p for p in w if p) for w in wanted)


def wanted_platforms(platforms: Union[str, Sequence[str]]) -> Optional[list[Wanted]]:
    """``pull``'s ``platforms=`` parsed: None for ``"all"``, else the list asked for."""
    if platforms == "all":
        return None
    if isinstance(platforms, str):
        platforms = [platforms]
    wanted = [parse_platform(p) for p in platforms]
    if not wanted:
        raise ConfigurationError("platforms= names no platform")
    return wanted
