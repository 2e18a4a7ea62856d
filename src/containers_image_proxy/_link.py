"""What the two connection backends share (``_async/_backend.Link``, ``_sync/_backend.Link``).

A link is one skopeo process and the ticket FIFO of its socket. How requests are sent and
replies received differs (a loop reader, or threads taking turns) and is each backend's own;
the process's lifetime and the bookkeeping around it are here, once.
"""

from __future__ import annotations

import os
import weakref
from typing import Optional

from ._config import ProxyConfig
from ._core.connection import Connection
from ._errors import NOT_STARTED, ProxyClosedError, ProxyError, ProxyStalledError
from ._process import SkopeoProcess
from ._transport import new_receive_buffer


class LinkBase:
    """The state of one connection to skopeo and its process's lifetime."""

    def __init__(self, config: ProxyConfig) -> None:
        self.config = config
        self.process: Optional[SkopeoProcess] = None
        self.closed = False
        self._conn = Connection(config.max_metadata_size)
        self._buf = new_receive_buffer()
        self._finalizer: Optional[weakref.finalize[[], object]] = None
        #: the process that started skopeo: its socket and pipes are that process's
        self.owner_pid: Optional[int] = None

    @property
    def usable(self) -> bool:
        """Whether requests may still be sent: started, neither closed nor failed."""
        return self.process is not None and not self.closed and self._conn.failure is None

    def _adopt(self, process: SkopeoProcess, owner: object) -> None:
        """Take ``process`` on; it is killed and reaped if ``owner`` is dropped unclosed."""
        self.process = process
        self.owner_pid = os.getpid()
        self._finalizer = weakref.finalize(owner, process.terminate_and_release)

    @property
    def forked(self) -> bool:
        """Whether this is a forked child of the process that started skopeo."""
        return self.owner_pid is not None and self.owner_pid != os.getpid()

    def check_owner(self) -> None:
        """Raise ProxyError in a forked child: a request sent or a pipe read from here would
        interleave with the parent's on the same socket and pipes, and corrupt its session."""
        if self.forked:
            raise ProxyError(
                f"this proxy was started by process {self.owner_pid} and is used in its "
                f"forked child {os.getpid()}: its skopeo and socket belong to the parent. "
                "Create a proxy (or pool) in the child; a ProxyConfig pickles"
            )

    def check_usable(self) -> None:
        """Before a request: raise if this proxy is not this process's, or never started."""
        self.check_owner()
        if self.process is None and not self.closed:
            raise ProxyClosedError(NOT_STARTED)

    def disown(self) -> None:
        """In a forked child: let the parent's skopeo be, closing only this process's copies
        of the descriptors (the parent's stay open)."""
        self.closed = True
        if self._finalizer is not None:
            self._finalizer.detach()
        if self.process is not None:
            self.process.release()

    def _check_not_started(self) -> None:
        if self.process is not None:
            raise ProxyError("the proxy is already started")

    def _reapable(self) -> Optional[SkopeoProcess]:
        """The process, unless there is none or it was already released."""
        if self._finalizer is None or not self._finalizer.alive:
            return None
        return self.process

    def release(self) -> None:
        """Kill, reap and close now (a start that failed); idempotent."""
        if self._finalizer is not None:
            self._finalizer()

    def detach(self) -> None:
        """The process was reaped by close(): nothing is left for the finalizer."""
        if self._finalizer is not None:
            self._finalizer.detach()

    def teardown(self, failure: Optional[ProxyError]) -> None:
        """Kill skopeo; outstanding and later requests fail with ``failure``."""
        raise NotImplementedError

    def stalled(self, context: str) -> ProxyStalledError:
        """Tear the connection down for a stall; the error to raise."""
        assert self.config.stall_timeout is not None and self.process is not None
        err = ProxyStalledError(self.config.stall_timeout, context, self.process.stderr_tail())
        self.teardown(err)
        return err
