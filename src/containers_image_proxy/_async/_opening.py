"""What the asyncio front end's ``get_blob`` returns: an awaitable that is also an async
context manager, as aiohttp's ``session.get()`` is.

``reader = await proxy.get_blob(...)`` and ``async with proxy.get_blob(...) as reader:`` both
work; in the second form the reader is closed when the block ends (with verification on a
normal exit, quietly while an error unwinds). The object is a coroutine (``asyncio.gather``,
``create_task`` and ``wait_for`` take it), and wraps one: the opening runs once, whichever
way it is used, and an opening never used warns that it was never awaited, as a coroutine
does.
"""

from __future__ import annotations

from typing import Any, Coroutine, Generator, Optional, Protocol, TypeVar


class _Reader(Protocol):
    async def __aenter__(self) -> Any: ...

    async def __aexit__(self, exc_type: Any, exc: Any, tb: Any) -> None: ...


R = TypeVar("R", bound=_Reader)


class Opening(Coroutine[Any, Any, R]):
    """A reader being opened: ``await`` it, or use it with ``async with``."""

    __slots__ = ("_coro", "_reader")

    def __init__(self, coro: Coroutine[Any, Any, R]) -> None:
        self._coro = coro
        self._reader: Optional[R] = None

    def __repr__(self) -> str:
        return f"<Opening {getattr(self._coro, '__qualname__', self._coro)}>"

    # --- a coroutine: what await, asyncio.gather and create_task use ---------------------

    def __await__(self) -> Generator[Any, None, R]:
        return self._coro.__await__()

    def send(self, value: Any) -> Any:
        """Step the opening (the coroutine protocol)."""
        return self._coro.send(value)

    def throw(self, typ: Any, val: Any = None, tb: Any = None) -> Any:
        """Throw into the opening (the coroutine protocol)."""
        if val is None and tb is None:
            return self._coro.throw(typ)
        return self._coro.throw(typ, val, tb)  # pragma: no cover - deprecated form

    def close(self) -> None:
        """Close the opening (the coroutine protocol)."""
        self._coro.close()

    # --- an async context manager --------------------------------------------------------

    async def __aenter__(self) -> R:
        reader = await self._coro
        self._reader = reader
        await reader.__aenter__()
        return reader

    async def __aexit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        reader, self._reader = self._reader, None
        assert reader is not None, "__aexit__ without __aenter__"
        await reader.__aexit__(exc_type, exc, tb)


def opening(coro: Coroutine[Any, Any, R]) -> Opening[R]:
    """Wrap the coroutine opening a reader (see :class:`Opening`)."""
    return Opening(coro)
