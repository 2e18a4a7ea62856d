"""Progress reporting: bars on a terminal, nothing anywhere else.

Commands report through a :class:`Reporter` and never ask whether anyone is watching.
:func:`make_reporter` picks the implementation: rich's progress bars (the optional ``cli``
dependency group, imported only here and only when bars will be drawn) or a reporter that
does nothing. The library itself never imports rich.

Bars go to stderr and are transient: when the work ends they are erased, and what remains
on the terminal is exactly the command's output.
"""

from __future__ import annotations

import sys
import threading
from typing import IO, Any, Optional


class Task:
    """One bar: a blob or a layer, or the total."""

    def advance(self, amount: int) -> None:
        """``amount`` more bytes are done."""

    def finish(self, *, skipped: bool = False) -> None:
        """The task is over; ``skipped``: its bytes count as done without being read."""


class Reporter:
    """Creates tasks and ends the display; this base class shows nothing."""

    enabled = False

    def task(self, label: str, total: Optional[int], *, visible: bool = True) -> Task:
        """A new task of ``total`` bytes (None: unknown)."""
        return Task()

    def note(self, message: str) -> None:
        """A line for the user that stays (printed above the bars)."""

    def close(self) -> None:
        """Erase the bars; the terminal is left as it was before them."""

    def __enter__(self) -> Reporter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _RichTask(Task):
    def __init__(self, reporter: _RichReporter, task_id: Any, total: Optional[int]) -> None:
        self._reporter = reporter
        self._id = task_id
        self._total = total
        self._done = 0
        self._finished = False

    def advance(self, amount: int) -> None:
        self._done += amount
        self._reporter.progress.advance(self._id, amount)
        overall = self._reporter.overall
        if overall is not None and overall is not self:
            overall.advance(amount)

    def finish(self, *, skipped: bool = False) -> None:
        if self._finished:
            return
        self._finished = True
        if skipped and self._total is not None and self._total > self._done:
            self.advance(self._total - self._done)
        # finished blobs leave the screen: with many layers only the live ones stay
        self._reporter.progress.update(self._id, visible=False)


class _RichReporter(Reporter):
    """Rich progress bars on stderr: per task bytes, rate and time left, and a total."""

    enabled = True

    def __init__(self, stream: IO[str]) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        self.console = Console(file=stream)
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=self.console,
            transient=True,
            # Our stdout may be binary data (blob, cat): rich must not wrap it.
            redirect_stdout=False,
            redirect_stderr=False,
        )
        self.overall: Optional[_RichTask] = None
        self._lock = threading.Lock()
        self._started = False

    def _start(self) -> None:
        with self._lock:
            if not self._started:
                self.progress.start()
                self._started = True

    def total(self, label: str, total: Optional[int]) -> Task:
        """The overall task: every other task's progress also advances it."""
        self._start()
        task_id = self.progress.add_task(label, total=total)
        self.overall = _RichTask(self, task_id, total)
        return self.overall

    def task(self, label: str, total: Optional[int], *, visible: bool = True) -> Task:
        self._start()
        task_id = self.progress.add_task(label, total=total, visible=visible)
        # draw now: a short command should still show its bars once
        self.progress.refresh()
        return _RichTask(self, task_id, total)

    def note(self, message: str) -> None:
        self.console.print(message, markup=False, highlight=False)

    def close(self) -> None:
        with self._lock:
            if self._started:
                self._started = False
                self.progress.stop()


def make_reporter(*, quiet: bool, debug: bool) -> Reporter:
    """Bars when both stdout and stderr are terminals and rich is installed; else none.

    stdout must be a terminal too: with it redirected the caller is a script (or a
    pipeline) that wants nothing but the output. With --debug, skopeo's log lines share
    stderr with the bars, which would garble both, so there are none.
    """
    if quiet or debug:
        return Reporter()
    try:
        if not (sys.stdout.isatty() and sys.stderr.isatty()):
            return Reporter()
    except (AttributeError, ValueError):  # replaced or closed streams
        return Reporter()
    try:
        return _RichReporter(sys.stderr)
    except ImportError:
        return Reporter()


def total_task(reporter: Reporter, label: str, total: Optional[int]) -> Task:
    """The overall task of ``reporter`` (a no-op task without bars)."""
    if isinstance(reporter, _RichReporter):
        return reporter.total(label, total)
    return Task()


class CountingReader:
    """A blob reader that reports what passes through it to a task.

    Forwards ``close_quietly`` too: the layer engine uses it to abandon a stream after a
    failure without a verification error masking the first one.
    """

    def __init__(self, reader: Any, task: Task) -> None:
        self._reader = reader
        self._task = task

    def read(self, size: int = -1, /) -> bytes:
        data: bytes = self._reader.read(size)
        if data:
            self._task.advance(len(data))
        return data

    def read1(self, size: int = -1, /) -> bytes:
        read1 = getattr(self._reader, "read1", None)
        data: bytes = read1(size) if read1 is not None else self._reader.read(size)
        if data:
            self._task.advance(len(data))
        return data

    def close(self) -> None:
        try:
            self._reader.close()
        finally:
            self._task.finish()

    def close_quietly(self) -> None:
        quiet = getattr(self._reader, "close_quietly", None)
        try:
            (quiet or self._reader.close)()
        finally:
            self._task.finish()

    def __enter__(self) -> CountingReader:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.close_quietly()
