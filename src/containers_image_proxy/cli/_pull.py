"""``pull``: an image into an OCI image layout, a thin caller of the library's
:func:`containers_image_proxy.pull` engine, with progress bars built on its
``progress=`` reports."""

from __future__ import annotations

import sys
import threading
from typing import Optional

from .._errors import ConfigurationError, ImageNotFoundError
from .._progress import TransferProgress
from .._pull import default_tag, pull_into_layout
from .._reference import ImageReference
from ._commands import Context, open_proxy, short_digest
from ._errors import OK, USAGE, CliError, not_found
from ._options import split_layout_target
from ._progress import Reporter, Task, total_task


class _Bars:
    """Turns the engine's TransferProgress reports into the reporter's bars."""

    def __init__(self, reporter: Reporter) -> None:
        self._reporter = reporter
        self._tasks: dict[tuple[str, bool], tuple[Task, int]] = {}
        self._lock = threading.Lock()

    def __call__(self, report: TransferProgress) -> None:
        key = (report.digest, report.local)
        with self._lock:
            task, shown = self._tasks.get(key, (None, 0))
            if task is None:
                label = short_digest(report.digest) + (" (present)" if report.local else "")
                task = self._reporter.task(label, report.total)
            if report.done > shown:
                task.advance(report.done - shown)
            self._tasks[key] = (task, report.done)
            if report.finished:
                task.finish()
                del self._tasks[key]


def _platforms(text: Optional[str]) -> Optional[list[str]]:
    if text is None:
        return None
    return ["all"] if text == "all" else [p.strip() for p in text.split(",") if p.strip()]


def cmd_pull(ctx: Context) -> int:
    """Copy the image into an OCI layout; prints the digest the tag points at."""
    path, tag = split_layout_target(ctx.args.target)
    platforms = _platforms(ctx.args.platform)
    try:
        tag = tag or default_tag(ImageReference.parse(ctx.args.image))
    except ConfigurationError:
        pass  # pull_into_layout reports the bad reference
    total_task(ctx.reporter, "total", None)
    with open_proxy(ctx) as proxy:
        try:
            result = pull_into_layout(
                proxy,
                ctx.args.image,
                path,
                tag=tag,
                platforms="all" if platforms == ["all"] else platforms,
                progress=_Bars(ctx.reporter),
                jobs=ctx.args.jobs,
            )
        except ImageNotFoundError as e:
            raise not_found(f"image not found: {e.message}") from None
        except ConfigurationError as e:
            raise CliError(str(e), USAGE) from None
    ctx.reporter.close()
    if ctx.chatty:
        for note in result.converted:
            print(f"note: {note}", file=sys.stderr)
        print(
            f"wrote oci:{path}:{tag or 'latest'}: {result.fetched} blob(s) fetched,"
            f" {result.present} already present",
            file=sys.stderr,
        )
    ctx.print(str(result.digest))
    return OK
