"""The I/O actions the sans-IO operations yield, and the front ends perform.

An operation (``_core.operations``, ``_stream.ends``) is a generator of :data:`Action` values; it
receives each action's result and returns its own: an ``Op[T]`` returns a ``T``. A front
end performs every member of the :data:`Action` union; its dispatch ends with
:func:`assert_never`, so mypy proves that no action is left unhandled.

Actions never hand an fd to the generator: pipes are drained or wrapped by the front end
inside the action, so an abandoned generator cannot leak one.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import (
    Any,
    Awaitable,
    Callable,
    Generator,
    NoReturn,
    Optional,
    Tuple,
    TypeVar,
    Union,
    cast,
)

from .._errors import ProxyError, RequestError
from .._stream.state import StreamSpec
from .connection import Ticket
from .protocol import Arg, Reply


@dataclass(frozen=True)
class Call:
    """Send a request whose reply carries no fd; the result is the reply's JSON value."""

    method: str
    args: Tuple[Arg, ...]


@dataclass(frozen=True)
class CallPiped:
    """Send a request answered through a pipe; drain it while FinishPipe runs.

    The result is ``(value, payload)``.
    """

    method: str
    args: Tuple[Arg, ...]


@dataclass(frozen=True)
class OpenStream:
    """Send a blob request and wrap its reply in the front end's reader (the result)."""

    method: str
    args: Tuple[Arg, ...]
    spec: StreamSpec


@dataclass(frozen=True)
class Sleep:
    """Wait before a retry (time.sleep or asyncio.sleep, as the front end does)."""

    seconds: float


@dataclass(frozen=True)
class Submit:
    """Send a request now; the result is its :class:`Ticket`."""

    method: str
    args: Tuple[Arg, ...]
    exempt: bool = False
    abandoned: bool = False


@dataclass(frozen=True)
class Wait:
    """Wait for a ticket's reply; the result is the reply (or its error is raised)."""

    ticket: Ticket


@dataclass(frozen=True)
class ReadAll:
    """Read a descriptor to EOF; the result is the bytes."""

    fd: int
    context: str


@dataclass(frozen=True)
class ProxyGone:
    """Raise ProxyExitedError if skopeo exits within ``timeout`` seconds (else result None)."""

    timeout: float
    context: str


@dataclass(frozen=True)
class Reopen:
    """Send the stream's request again; the result is the new reply."""

    method: str
    args: Tuple[Arg, ...]


@dataclass(frozen=True)
class Discard:
    """Read exactly ``count`` bytes from ``fd`` into ``hasher``; the result is how many came."""

    fd: int
    count: int
    hasher: hashlib._Hash


Action = Union[
    Call, CallPiped, OpenStream, Sleep, Submit, Wait, ReadAll, ProxyGone, Reopen, Discard
]

T = TypeVar("T")
#: An operation returning ``T``. What it receives for an action depends on the action;
#: operations take results through the typed helpers below, which say what each one is.
Op = Generator[Action, object, T]

#: A reply's value: arbitrary JSON, checked by whoever uses it.
JSONValue = Any


def call(method: str, args: Tuple[Arg, ...]) -> Op[JSONValue]:
    """:class:`Call`; the reply's value."""
    return (yield Call(method, args))


def call_piped(method: str, args: Tuple[Arg, ...]) -> Op[Tuple[JSONValue, bytes]]:
    """:class:`CallPiped`; the reply's value and the pipe's payload."""
    return cast(Tuple[JSONValue, bytes], (yield CallPiped(method, args)))


def open_stream(method: str, args: Tuple[Arg, ...], spec: StreamSpec) -> Op[object]:
    """:class:`OpenStream`; the front end's reader (each front end checks its own type)."""
    return (yield OpenStream(method, args, spec))


def submit(method: str, args: Tuple[Arg, ...], abandoned: bool = False) -> Op[Ticket]:
    """:class:`Submit`; the request's ticket."""
    return cast(Ticket, (yield Submit(method, args, abandoned=abandoned)))


def read_all(fd: int, context: str) -> Op[bytes]:
    """:class:`ReadAll`; the bytes."""
    return cast(bytes, (yield ReadAll(fd, context)))


def reopen(method: str, args: Tuple[Arg, ...]) -> Op[Reply]:
    """:class:`Reopen`; the new reply."""
    return cast(Reply, (yield Reopen(method, args)))


def discard(fd: int, count: int, hasher: hashlib._Hash) -> Op[int]:
    """:class:`Discard`; how many bytes came."""
    return cast(int, (yield Discard(fd, count, hasher)))


def _thrown(error: ProxyError) -> ProxyError:
    """The error to throw into an operation: skopeo's answer to a request (a
    RequestError) loses the frames of the connection code that received it, which say
    nothing to the caller; the operation's own frames and the caller's are kept."""
    if isinstance(error, RequestError):
        return error.with_traceback(None)
    return error


def drive(op: Op[T], perform: Callable[[Action], object]) -> T:
    """Run an operation to its end, performing each action with ``perform`` (sync)."""
    result: object = None
    error: Optional[ProxyError] = None
    try:
        while True:
            try:
                action = op.send(result) if error is None else op.throw(error)
            except StopIteration as stop:
                value: T = stop.value
                return value
            result, error = None, None
            try:
                result = perform(action)
            except ProxyError as e:
                error = _thrown(e)
    finally:
        op.close()


async def drive_async(op: Op[T], perform: Callable[[Action], Awaitable[object]]) -> T:
    """Run an operation to its end, awaiting ``perform`` for each action (asyncio)."""
    result: object = None
    error: Optional[ProxyError] = None
    try:
        while True:
            try:
                action = op.send(result) if error is None else op.throw(error)
            except StopIteration as stop:
                value: T = stop.value
                return value
            result, error = None, None
            try:
                result = await perform(action)
            except ProxyError as e:
                error = _thrown(e)
    finally:
        op.close()


def assert_never(value: NoReturn) -> NoReturn:
    """Mark the end of an exhaustive dispatch: mypy fails if ``value`` can still be anything.

    (typing.assert_never, which arrived in Python 3.11.)
    """
    raise TypeError(f"unhandled action {value!r}")
