"""The request/reply bookkeeping of one connection, without I/O.

The proxy answers requests strictly in order, so replies are matched to requests by
position: every request sent gets a :class:`Ticket` at the back of a FIFO, and every
message received resolves the ticket at the front. Both front ends use this class, so
pipelining, abandoned requests and connection failure are handled once.

A ticket can be *abandoned* (its caller was cancelled, or does not care about the answer).
Its reply must still be consumed to keep the FIFO in step, and whatever it holds released:
fds are closed, and a pipe gets its FinishPipe, an opened image its CloseImage. Those
follow-up requests are returned to the front end, which sends them as abandoned tickets too.
"""

from __future__ import annotations

import collections
from typing import TYPE_CHECKING, Deque, List, Optional, Sequence, Tuple

from .._errors import ProtocolError, ProxyError, RequestError
from .._transport import close_fds
from .protocol import Arg, PipeReply, RawPipesReply, Reply, decode_reply, encode_request

if TYPE_CHECKING:
    import asyncio

_IMAGE_OPENERS = ("OpenImage", "OpenImageOptional")

FollowUp = Tuple[str, Tuple[Arg, ...]]


class Ticket:
    """One request awaiting its reply."""

    __slots__ = ("abandoned", "done", "error", "exempt", "method", "reply", "waiter")

    def __init__(self, method: str, exempt: bool = False) -> None:
        self.method = method
        #: exempt from stall detection: a FinishPipe that waits on our own draining
        self.exempt = exempt
        self.abandoned = False
        self.done = False
        self.reply: Optional[Reply] = None
        self.error: Optional[BaseException] = None
        #: front-end specific (an asyncio future for the async front end)
        self.waiter: Optional[asyncio.Future[None]] = None

    def result(self) -> Reply:
        """The reply, or raise the error it got."""
        assert self.done
        if self.error is not None:
            # one error may be raised for many tickets: each raise starts a fresh
            # traceback, or it would grow by the frames of every raise before
            raise self.error.with_traceback(None)
        assert self.reply is not None
        return self.reply

    def __repr__(self) -> str:
        state = "done" if self.done else "pending"
        return f"<Ticket {self.method} {state}{' abandoned' if self.abandoned else ''}>"


def release(method: str, reply: Reply) -> List[FollowUp]:
    """Free what an unwanted reply holds; returns the requests that finish releasing it."""
    if isinstance(reply, PipeReply):
        close_fds(reply.fd)
        return [("FinishPipe", (reply.pipe_id,))]
    if isinstance(reply, RawPipesReply):
        close_fds(reply.data_fd, reply.error_fd)
        return []
    value = reply.value
    if method in _IMAGE_OPENERS and type(value) is int and value > 0:
        return [("CloseImage", (value,))]
    return []


class Connection:
    """The FIFO of tickets, and the connection's failure once it has one.

    ``max_reply_size`` bounds the JSON of a reply (ProxyConfig.max_metadata_size); a longer
    one is a :class:`~._errors.MetadataTooLargeError` that ends the connection.
    """

    def __init__(self, max_reply_size: Optional[int] = None) -> None:
        self.max_reply_size = max_reply_size
        self.pending: Deque[Ticket] = collections.deque()
        self.failure: Optional[ProxyError] = None

    def request(
        self, method: str, args: Sequence[Arg], *, exempt: bool = False
    ) -> Tuple[bytes, Ticket]:
        """Encode a request and queue its ticket; the caller sends the bytes next, in order."""
        if self.failure is not None:
            raise self.failure.with_traceback(None)
        data = encode_request(method, args)
        ticket = Ticket(method, exempt)
        self.pending.append(ticket)
        return data, ticket

    @property
    def head_exempt(self) -> bool:
        """Whether the oldest outstanding request may legitimately wait without limit."""
        return bool(self.pending) and self.pending[0].exempt

    def receive(
        self, data: bytes, fds: List[int], truncated: bool
    ) -> Tuple[Ticket, List[FollowUp]]:
        """Resolve the oldest ticket with one received message.

        Returns the ticket and the follow-up requests for an abandoned reply. A protocol
        violation fails the whole connection (and is raised).
        """
        if not self.pending:
            close_fds(*fds)
            err = ProtocolError("reply received with no request outstanding")
            self.fail(err)
            raise err
        ticket = self.pending.popleft()
        ticket.done = True
        try:
            reply = decode_reply(ticket.method, data, fds, truncated, self.max_reply_size)
        except RequestError as e:
            # stored without its traceback: the frames it holds (a reader's buffers among
            # them) would otherwise live as long as the ticket
            ticket.error = e.with_traceback(None)
            return ticket, []
        except ProtocolError as e:
            ticket.error = e.with_traceback(None)
            self.fail(e)
            raise
        if ticket.abandoned:
            return ticket, release(ticket.method, reply)
        ticket.reply = reply
        return ticket, []

    def fail(self, err: ProxyError) -> List[Ticket]:
        """The connection is unusable: fail every outstanding ticket; returns them."""
        if self.failure is None:
            self.failure = err
        failed = list(self.pending)
        self.pending.clear()
        for ticket in failed:
            ticket.done = True
            ticket.error = err
        return failed
