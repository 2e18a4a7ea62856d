"""``tags`` and ``index``: what a repository holds, and the platforms of an image."""

from __future__ import annotations

import argparse
from typing import List, Tuple

from .._models import Descriptor
from ._commands import Context, open_proxy
from ._errors import FAILURE, OK, CliError


def add_tags_arguments(p: argparse.ArgumentParser) -> None:
    """``tags REPOSITORY [--json]``."""
    p.add_argument(
        "repository",
        metavar="REPOSITORY",
        help="docker://REGISTRY/REPO (no tag), docker-archive:FILE or oci:LAYOUT_DIR",
    )
    p.add_argument("--json", action="store_true", help="print a JSON list of the tags")


def add_index_arguments(p: argparse.ArgumentParser) -> None:
    """``index IMAGE [--json]``."""
    p.add_argument("image", metavar="IMAGE", help="TRANSPORT:NAME, e.g. docker://quay.io/x/y:1")
    p.add_argument(
        "--json", action="store_true", help="print the index itself (the stored document)"
    )


def cmd_tags(ctx: Context) -> int:
    """One tag per line (or a JSON list); a missing repository exits with status 3."""
    with open_proxy(ctx) as proxy:
        tags = proxy.list_tags(ctx.args.repository)
    if ctx.args.json:
        ctx.print_json(tags)
    else:
        for tag in tags:
            ctx.print(tag)
    return OK


def _platform(entry: Descriptor) -> str:
    p = entry.platform
    if p is None:
        return "-"
    text = f"{p.os}/{p.architecture}"
    if p.variant:
        text += f"/{p.variant}"
    if p.os_version:
        text += f" ({p.os_version})"
    return text


def cmd_index(ctx: Context) -> int:
    """A table of the index's instances, or with --json the index; status 1 (and a message)
    for an image that has a single manifest."""
    with open_proxy(ctx) as proxy:
        found = proxy.fetch_index(ctx.args.image)
    if found is None:
        raise CliError(f"{ctx.args.image} has a single manifest, not an index", FAILURE)
    digest, index = found
    if ctx.args.json:
        ctx.print_json(index.to_json())
        return OK
    ctx.print(f"Digest: {digest}")
    ctx.print(f"Type:   {index.media_type or '-'}")
    rows: List[Tuple[str, str, str, str]] = [("PLATFORM", "DIGEST", "SIZE", "MEDIA TYPE")]
    for entry in index.manifests:
        rows.append((_platform(entry), str(entry.digest), str(entry.size), entry.media_type))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    for row in rows:
        cells = [row[i].ljust(widths[i]) for i in range(3)]
        ctx.print("  ".join([*cells, row[3]]))
    return OK


__all__ = ["add_index_arguments", "add_tags_arguments", "cmd_index", "cmd_tags"]
