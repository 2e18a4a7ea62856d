"""The entry point: parse, configure, run one command, turn what happened into an exit status.

Signals: the first SIGINT (or SIGTERM) raises KeyboardInterrupt in the main thread, which
unwinds through the commands' context managers: blob readers are abandoned, temporary files
removed, skopeo shut down and reaped. A second one, during that cleanup, exits at once
(skopeo still dies with us: the library starts it with a parent-death signal).
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import traceback
from types import FrameType
from typing import Any, Callable, Dict, List, Optional, Sequence

from ._catalog import cmd_index, cmd_tags
from ._commands import (
    Context,
    cmd_blob,
    cmd_cat,
    cmd_config,
    cmd_exists,
    cmd_inspect,
    cmd_layers,
    cmd_ls,
    cmd_manifest,
    cmd_unpack,
)
from ._errors import (
    EXISTS_FAILURE,
    FAILURE,
    INTERRUPTED,
    NOT_FOUND,
    OK,
    describe,
    exit_code,
)
from ._globals import config_from_args
from ._options import PROG, build_parser, normalize_argv
from ._progress import make_reporter
from ._pull import cmd_pull

Command = Callable[[Context], int]

COMMANDS: Dict[str, Command] = {
    "inspect": cmd_inspect,
    "manifest": cmd_manifest,
    "config": cmd_config,
    "layers": cmd_layers,
    "blob": cmd_blob,
    "cat": cmd_cat,
    "ls": cmd_ls,
    "unpack": cmd_unpack,
    "pull": cmd_pull,
    "tags": cmd_tags,
    "index": cmd_index,
    "exists": cmd_exists,
}


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM arrived; ``signum`` says which."""

    def __init__(self, signum: int) -> None:
        super().__init__()
        self.signum = signum


def _install_signal_handlers() -> Callable[[], None]:
    """Handlers for SIGINT and SIGTERM; returns the function that restores the old ones."""

    def now(signum: int, frame: Optional[FrameType]) -> None:
        os._exit(128 + signum)

    def first(signum: int, frame: Optional[FrameType]) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, now)
        raise Interrupted(signum)

    previous: List[Any] = []
    try:
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous.append((sig, signal.signal(sig, first)))
    except ValueError:  # not the main thread (main() called from a program's thread)
        pass

    def restore() -> None:
        for sig, handler in previous:
            signal.signal(sig, handler)

    return restore


def _setup_logging(debug: bool) -> None:
    if debug:
        logging.basicConfig(
            level=logging.DEBUG,
            stream=sys.stderr,
            format="%(asctime)s %(name)s %(levelname)s %(message)s",
        )


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the command line ``argv`` (default: sys.argv[1:]); returns the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(normalize_argv(sys.argv[1:] if argv is None else argv))
    except SystemExit as e:  # --help, --version, usage errors: argparse printed them
        return e.code if isinstance(e.code, int) else FAILURE
    _setup_logging(args.debug)
    restore = _install_signal_handlers()
    out = sys.stdout.buffer
    code = OK
    try:
        config = config_from_args(args)
        chatty = not args.quiet and _isatty(sys.stdout) and _isatty(sys.stderr)
        with make_reporter(quiet=args.quiet, debug=args.debug) as reporter:
            ctx = Context(
                args=args,
                config=config,
                reporter=reporter,
                out=out,
                chatty=chatty,
                terminal=_isatty(sys.stdout),
            )
            code = COMMANDS[args.command](ctx)
        out.flush()
    except BrokenPipeError:
        # The reader of our output went away (``| head``): nothing to report to anyone.
        _silence_stdout()
        return FAILURE
    except BaseException as e:
        if isinstance(e, SystemExit):
            raise
        code = exit_code(e)
        if isinstance(e, Interrupted):
            code = 128 + e.signum
        if args.command == "exists" and not isinstance(e, KeyboardInterrupt):
            code = {FAILURE: EXISTS_FAILURE, NOT_FOUND: FAILURE}.get(code, code)
        if args.debug:
            traceback.print_exc()
        try:
            out.flush()
        except BrokenPipeError:
            _silence_stdout()
        except OSError:
            pass
        message = describe(e)
        if isinstance(e, Interrupted) and e.signum == signal.SIGTERM:
            message = "terminated"
        print(f"{PROG}: {message}", file=sys.stderr)
        sys.stderr.flush()
    finally:
        restore()
    return code if code is not None else INTERRUPTED


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def _silence_stdout() -> None:
    # Python flushes stdout again at exit; pointing it at /dev/null keeps that quiet.
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass
