"""Exit codes, and how an exception becomes one line on stderr and one of them.

The codes are part of the tool's interface (docs/cli.md lists them): scripts branch on them,
so "not found" has its own code, apart from every other failure.
"""

from __future__ import annotations

import errno
from typing import Optional

from .._core.protocol import is_not_found
from .._errors import (
    ConfigurationError,
    ImageNotFoundError,
    ProxyError,
    RequestError,
    SkopeoNotFoundError,
)
from ._quoting import escape_controls, shell_escape

OK = 0
FAILURE = 1
USAGE = 2
NOT_FOUND = 3
#: ``exists`` only: 1 is its "no", so a failure to answer needs a code of its own.
EXISTS_FAILURE = 4
#: What shells report for a command killed by SIGINT (128 + 2).
INTERRUPTED = 130
#: SIGTERM (128 + 15): the tool cleans up as for SIGINT and exits with this.
TERMINATED = 143

#: Every exit status, as --help lists them (docs/cli.md has the same table; a test checks).
EXIT_STATUSES: tuple[tuple[int, str], ...] = (
    (OK, "success"),
    (FAILURE, "failure (registry, network, verification, skopeo, local files)"),
    (USAGE, "usage error (bad option, argument, reference or configuration)"),
    (NOT_FOUND, "not found (the image, a blob of it, a path in its filesystem)"),
    (EXISTS_FAILURE, "'exists' only: it cannot tell (its 1 means \"does not exist\")"),
    (INTERRUPTED, "interrupted (SIGINT, Ctrl-C)"),
    (TERMINATED, "terminated (SIGTERM)"),
)


class CliError(Exception):
    """An error the tool itself detects, with the exit code it means."""

    def __init__(self, message: str, code: int = FAILURE) -> None:
        super().__init__(message)
        self.code = code


def not_found(message: str) -> CliError:
    """A CliError for something that does not exist (exit code 3)."""
    return CliError(message, NOT_FOUND)


def exit_code(exc: BaseException) -> int:
    """The exit code for an exception that ended a command."""
    if isinstance(exc, CliError):
        return exc.code
    if isinstance(exc, KeyboardInterrupt):
        return INTERRUPTED
    if isinstance(exc, ImageNotFoundError):
        return NOT_FOUND
    if isinstance(exc, RequestError):
        # skopeo reports a missing image (or tag, or blob) as an error reply; its text is
        # the only thing that tells it from a registry that could not be reached.
        return NOT_FOUND if is_not_found(exc.message) else FAILURE
    if isinstance(exc, SkopeoNotFoundError):
        return FAILURE  # skopeo missing is a broken installation, not a usage mistake
    if isinstance(exc, ConfigurationError):
        return USAGE
    # Local OSErrors (a missing output directory ...) are failures, not "not found": the
    # commands turn a path missing from the image into a CliError with NOT_FOUND themselves.
    return FAILURE


def describe(exc: BaseException) -> str:
    """One line saying what went wrong, without a traceback."""
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted"
    if isinstance(exc, OSError) and not isinstance(exc, ProxyError):
        text = _os_error(exc)
    else:
        text = str(exc) or type(exc).__name__
    # skopeo's messages can span lines (wrapped Go errors); one line is the contract. What
    # is left that a terminal would act on (text from the image or a registry) is escaped.
    return escape_controls(" ".join(line.strip() for line in text.splitlines() if line.strip()))


def _os_error(exc: OSError) -> str:
    reason = exc.strerror or (errno.errorcode.get(exc.errno or 0, "") if exc.errno else "")
    reason = reason or str(exc) or type(exc).__name__
    name: Optional[str] = exc.filename if isinstance(exc.filename, str) else None
    if name is not None:
        return f"{shell_escape(name)}: {reason}"
    return reason
