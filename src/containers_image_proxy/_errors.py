"""The exception hierarchy.

Every error the library raises on purpose is a :class:`ProxyError`, so callers can catch
one type. Messages never carry credentials: whatever reaches them comes from skopeo's
stderr or replies, which skopeo itself keeps free of secrets, or from our own text.
"""

from __future__ import annotations

import contextlib
from typing import Any, ContextManager, Dict, Optional, Tuple, Type, TypeVar

E = TypeVar("E", bound=BaseException)

#: What using a proxy that was never started says: how to start one.
NOT_STARTED = (
    "the proxy is not started: use 'async with proxy:' or 'await proxy.start()' (or make "
    "a started one with 'await AsyncImageProxy.start(config)'); an ImageProxy starts when "
    "constructed"
)


class ProxyError(Exception):
    """Base class of every error raised by containers_image_proxy.

    Every one pickles with its attributes (a worker process can send it back), whatever
    its constructor takes.
    """

    def __reduce__(self) -> Tuple[Any, ...]:
        # Exception's own reduce calls the class with ``args`` (the message alone), which
        # most constructors here do not take
        return (_restore, (type(self), self.args, self.__dict__))


def _restore(cls: Type[E], args: Tuple[Any, ...], state: Dict[str, Any]) -> E:
    err = cls.__new__(cls)
    err.args = args
    err.__dict__.update(state)
    return err


class ConfigurationError(ProxyError, ValueError):
    """The configuration or an argument is invalid; nothing was sent to skopeo."""


class SkopeoNotFoundError(ProxyError, FileNotFoundError):
    """The skopeo command could not be executed."""

    def __init__(self, command: str, detail: str = "") -> None:
        self.command = command
        hint = (
            "install skopeo (Debian/Ubuntu: 'apt-get install skopeo', Fedora: 'dnf install skopeo')"
            " or point ProxyConfig.skopeo at a skopeo binary"
        )
        msg = f"cannot run skopeo command {command!r}"
        if detail:
            msg += f": {detail}"
        super().__init__(f"{msg}; {hint}")


class ProxyTooOldError(ProxyError):
    """The skopeo found speaks an older protocol than the operation needs.

    ``found`` is the protocol version skopeo reported (or its release, when that is all that
    is known); ``required`` the protocol version needed, ``release`` the first skopeo
    release that has it.
    """

    def __init__(self, what: str, found: str, required: str, release: str = "") -> None:
        self.what = what
        self.found = found
        self.required = required
        self.release = release
        needs = f"protocol {required}"
        if release:
            needs += f" (skopeo {release} or later)"
        super().__init__(f"{what} needs {needs}; this skopeo speaks protocol {found}")


class ProxyExitedError(ProxyError):
    """skopeo exited (or was killed) while the client still needed it."""

    def __init__(self, returncode: Optional[int], stderr: str, context: str = "") -> None:
        self.returncode = returncode
        self.stderr = stderr
        if returncode is None:
            status = "skopeo closed its connection"
        elif returncode < 0:
            status = f"skopeo was killed by signal {-returncode}"
        else:
            status = f"skopeo exited with status {returncode}"
        msg = status
        if context:
            msg += f" during {context}"
        tail = stderr.strip()
        if tail:
            msg += f"; stderr: {tail}"
        super().__init__(msg)


class ProxyStalledError(ProxyExitedError, TimeoutError):
    """No progress for ``stall_timeout`` seconds; the proxy was torn down."""

    def __init__(self, timeout: float, context: str, stderr: str = "") -> None:
        self.timeout = timeout
        ProxyError.__init__(
            self, f"no progress for {timeout:g} s during {context}; skopeo was stopped"
        )
        self.returncode = None
        self.stderr = stderr


class RequestError(ProxyError):
    """skopeo answered a request with an error.

    ``error_code`` is the proxy's machine-readable class (protocol 0.2.8: ``"EPIPE"``,
    ``"retryable"``, ``"other"``) or None on older proxies; ``retryable`` says whether the
    same request may succeed if sent again (from the code, or from the text on older proxies).
    """

    def __init__(
        self,
        method: str,
        message: str,
        error_code: Optional[str] = None,
        retryable: bool = False,
    ) -> None:
        self.method = method
        self.message = message
        self.error_code = error_code
        self.retryable = retryable
        super().__init__(f"{method}: {message}")


class ImageNotFoundError(RequestError):
    """The image does not exist, as opposed to: it could not be looked at.

    Raised by ``open_image`` (``open_image_optional`` returns None instead), ``list_tags``
    and ``fetch_index``. ``reference`` is the image (or repository) asked for. What each
    transport can tell apart is listed in docs/transports.md; an unreachable registry, a
    refused login or a permission error stays a plain :class:`RequestError`.
    """

    def __init__(
        self, method: str, message: str, error_code: Optional[str] = None, reference: str = ""
    ) -> None:
        super().__init__(method, message, error_code, retryable=False)
        self.reference = reference


class BlobVerificationError(ProxyError):
    """A blob's size or digest differs from the one asked for."""

    def __init__(self, digest: str, message: str) -> None:
        self.digest = digest
        super().__init__(f"blob {digest}: {message}")


class ProxyClosedError(ProxyError):
    """The proxy was closed, or torn down after a failure, and serves no more requests."""


class ProtocolError(ProxyError):
    """skopeo sent something the protocol does not allow; the connection is unusable."""


class MetadataTooLargeError(ProtocolError):
    """A metadata reply (manifest, config, layer list, error report, JSON reply) is larger
    than ``ProxyConfig.max_metadata_size`` bytes; ``what`` names it, ``limit`` is the limit.

    Reading stopped one byte past the limit and nothing of the payload is kept or quoted.
    Refused through a pipe (every payload but a reply on the socket itself), the request
    alone fails and the proxy stays usable; a reply on the socket ends the connection.
    """

    def __init__(self, what: str, limit: int) -> None:
        self.what = what
        self.limit = limit
        super().__init__(
            f"{what}: larger than the {limit}-byte metadata limit (ProxyConfig.max_metadata_size)"
        )


def unless_already_failing(exc_type: object) -> ContextManager[object]:
    """For ``__exit__``: while an error unwinds, a ProxyError from the shutdown is
    dropped so that it does not mask the first one; otherwise it is raised."""
    if exc_type is None:
        return contextlib.nullcontext()
    return contextlib.suppress(ProxyError)


__all__ = [
    "BlobVerificationError",
    "ConfigurationError",
    "ImageNotFoundError",
    "MetadataTooLargeError",
    "ProtocolError",
    "ProxyClosedError",
    "ProxyError",
    "ProxyExitedError",
    "ProxyStalledError",
    "ProxyTooOldError",
    "RequestError",
    "SkopeoNotFoundError",
]
