"""What happens when a blob stream ends, written once for both readers.

A reader's hot path (wait for data, read into the caller's buffer, account for it) is a few
lines in each front end. Everything after the data part — FinishPipe or GetRawBlob's error
pipe, telling a killed skopeo from a short blob, verification, and retrying an interrupted
transfer — is :func:`end_stream`, a generator of actions like those in ``_core.operations``.

Retrying: a transfer that failed with a retryable error is requested again, as long as
``retries`` allows. If bytes were already handed out, the new stream's first bytes are read
and hashed here, and must hash like the ones handed out: the caller then sees one unbroken
stream, and a source that changed in between is a :class:`BlobVerificationError`.
"""

from __future__ import annotations

import fcntl
from typing import Optional, Tuple

from .._core.actions import Op, ProxyGone, Sleep, Wait, discard, read_all, reopen, submit
from .._core.connection import Ticket
from .._core.protocol import Arg, PipeReply, RawPipesReply, Reply, decode_raw_blob_error
from .._digest import Digest
from .._errors import ProtocolError, RequestError
from .._transport import close_fds
from .copying import PIPE_SIZE
from .state import BlobStream, StreamKind, StreamSpec

#: A GetBlob pipe silent for this long gets its FinishPipe early. The pipe reaches EOF only
#: inside FinishPipe, so a writer that died (registry connection lost) would otherwise leave
#: the reader waiting forever; a writer that is merely slow just finishes first.
PROBE_AFTER = 1.0


def backoff(attempt: int) -> float:
    """Seconds to wait before retry number ``attempt`` (0-based): 0.2, 0.4, 0.8 ... 5."""
    return float(min(5.0, 0.2 * (2**attempt)))


def _grow_pipe(fd: int) -> int:
    """Grow a data pipe to PIPE_SIZE where allowed; returns its size (0: unknown)."""
    try:
        return int(fcntl.fcntl(fd, getattr(fcntl, "F_SETPIPE_SZ", 1031), PIPE_SIZE))
    except OSError:
        pass  # over the per-user pipe quota, or not a pipe: the default size works too
    try:
        return int(fcntl.fcntl(fd, getattr(fcntl, "F_GETPIPE_SZ", 1032)))
    except OSError:
        return 0


class StreamEnds:
    """One stream's descriptors and state; owns the fds until :meth:`close`."""

    def __init__(self, reply: Reply, spec: StreamSpec, method: str, args: Tuple[Arg, ...]) -> None:
        self.method = method
        self.args = args
        self.data_fd = self.error_fd = -1
        self.pipe_id = 0
        self.pipe_size = 0
        self.probe: Optional[Ticket] = None
        self.retries_used = 0
        self._adopt(reply, spec)
        try:
            self.stream = BlobStream(spec, reply.value)
        except BaseException:
            self.close()
            raise

    def _adopt(self, reply: Reply, spec: StreamSpec) -> None:
        if spec.kind is StreamKind.PIPE:
            if not isinstance(reply, PipeReply):
                close_fds(*_reply_fds(reply))
                raise ProtocolError(f"{spec.kind.value}: reply has no pipe")
            self.data_fd, self.pipe_id = reply.fd, reply.pipe_id
        else:
            if not isinstance(reply, RawPipesReply):
                close_fds(*_reply_fds(reply))
                raise ProtocolError(f"{spec.kind.value}: reply has no pipes")
            self.data_fd, self.error_fd = reply.data_fd, reply.error_fd
        self.probe = None
        self.pipe_size = _grow_pipe(self.data_fd)

    def context(self) -> str:
        """How errors name this stream."""
        return f"{self.method} of {self.stream.spec.digest}"

    def close(self) -> None:
        """Close our ends (idempotent). The proxy's writer then fails with EPIPE, harmlessly."""
        close_fds(self.data_fd, self.error_fd)
        self.data_fd = self.error_fd = -1


class StreamInfo:
    """What both blob readers tell about their stream, and how both judge its end."""

    _stream: BlobStream
    _failure: Optional[BaseException]  # what ended the stream, raised again on every read

    def _verified_end(self) -> int:
        """The data part is over and handled: raise its failure, or verify; 0 (EOF)."""
        if self._failure is not None:
            raise self._failure
        self._stream.check()
        return 0

    @property
    def digest(self) -> Digest:
        """The digest asked for."""
        return self._stream.spec.digest

    @property
    def size(self) -> Optional[int]:
        """The blob's size, when known."""
        return self._stream.size

    @property
    def bytes_read(self) -> int:
        """How many bytes were handed out so far."""
        return self._stream.received


def _reply_fds(reply: Reply) -> Tuple[int, ...]:
    if isinstance(reply, PipeReply):
        return (reply.fd,)
    if isinstance(reply, RawPipesReply):
        return (reply.data_fd, reply.error_fd)
    return ()


def end_stream(ends: StreamEnds, retries: int) -> Op[bool]:
    """Collect the stream's closing information and verify it.

    The result is True when the transfer was restarted (the reader reads on, from the new
    descriptors in ``ends``), False when the stream is over and verified; errors raise.
    """
    stream = ends.stream
    error: Optional[RequestError] = None
    try:
        if stream.spec.kind is StreamKind.PIPE:
            ticket = ends.probe
            if ticket is None:
                ticket = yield from submit("FinishPipe", (ends.pipe_id,))
            try:
                yield Wait(ticket)
            except RequestError as e:
                error = e
            stream.finish_pipe_result(error)
        elif not stream.overflowed:
            error = decode_raw_blob_error((yield from read_all(ends.error_fd, ends.context())))
            size = stream.size
            if error is None and size is not None and stream.received < size:
                # short with no report: skopeo itself may have been killed mid-copy
                yield ProxyGone(0.5, ends.context())
            stream.raw_result(error)
    finally:
        ends.close()
    failure = stream.failure()
    if (
        isinstance(failure, RequestError)
        and failure.retryable
        and ends.retries_used < retries
        and stream.resumable
    ):
        yield Sleep(backoff(ends.retries_used))
        ends.retries_used += 1
        reply = yield from reopen(ends.method, ends.args)
        ends._adopt(reply, stream.spec)
        skip, check = stream.begin_resume()
        skipped = (yield from discard(ends.data_fd, skip, check)) if skip else 0
        stream.check_prefix(check, skipped)
        return True
    stream.check()
    return False


def abandon_stream(ends: StreamEnds) -> Op[None]:
    """Close a stream before its end: our ends first (the writer sees EPIPE), then release
    its pipe in the proxy without waiting for the answer."""
    ends.close()
    if ends.stream.spec.kind is StreamKind.PIPE:
        if ends.probe is not None:
            ends.probe.abandoned = True
        else:
            yield from submit("FinishPipe", (ends.pipe_id,), abandoned=True)


def first_wait(kind: StreamKind, probed: bool, stall_timeout: Optional[float]) -> Optional[float]:
    """How long a reader waits for data before probing a silent GetBlob pipe (None: no probe)."""
    if kind is not StreamKind.PIPE or probed:
        return None
    return PROBE_AFTER if stall_timeout is None else min(stall_timeout, PROBE_AFTER)
