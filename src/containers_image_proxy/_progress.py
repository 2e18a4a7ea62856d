"""Progress of transfers, for programs: what ``progress=`` callbacks receive."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Callable, Optional

#: Seconds between two reports of one transfer (the last one is always reported).
REPORT_INTERVAL = 0.1


@dataclass(frozen=True)
class TransferProgress:
    """How far one blob's transfer is.

    ``digest`` names the blob, ``done`` counts the bytes so far, ``total`` is the size when
    known (else None). ``local`` is true for bytes read from a blob that was already at
    the destination (a resumed pull verifying what it has), which were not downloaded. The
    last report of a transfer has ``done == total``.
    """

    digest: str
    done: int
    total: Optional[int]
    local: bool = False

    @property
    def finished(self) -> bool:
        """Whether this is the report of a complete transfer."""
        return self.total is not None and self.done >= self.total


ProgressCallback = Callable[[TransferProgress], None]


class Meter:
    """Counts one transfer's bytes and reports them to a callback at a bounded rate.

    At most one report per :data:`REPORT_INTERVAL` seconds, plus the first and the last,
    so a callback costs the same for a 1 KiB blob and a 1 GiB one. Thread-safe.
    """

    def __init__(
        self,
        callback: Optional[ProgressCallback],
        digest: str,
        total: Optional[int],
        *,
        local: bool = False,
    ) -> None:
        self._callback = callback
        self.digest = digest
        self.total = total
        self.local = local
        self.done = 0
        self._last = 0.0
        self._lock = threading.Lock()
        self._finished = False

    def start(self) -> None:
        """Report that the transfer began (``done == 0``)."""
        self._report(force=True)

    def advance(self, amount: int) -> None:
        """``amount`` more bytes were transferred."""
        with self._lock:
            self.done += amount
        self._report(force=False)

    def finish(self) -> None:
        """The transfer is complete: report ``done == total`` once."""
        with self._lock:
            if self._finished:
                return
            self._finished = True
            if self.total is None:
                self.total = self.done
        self._report(force=True)

    def _report(self, *, force: bool) -> None:
        if self._callback is None:
            return
        now = time.monotonic()
        with self._lock:
            if not force and (
                now - self._last < REPORT_INTERVAL
                or (self.total is not None and self.done >= self.total)
            ):
                # all bytes are in, but not yet verified: finish() reports done == total
                return
            self._last = now
            report = TransferProgress(self.digest, self.done, self.total, self.local)
        self._callback(report)
