"""The global options, named as skopeo names them, and the ProxyConfig they make."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from typing import IO, Any, Optional

from .._config import DEFAULT_MAX_METADATA_SIZE, ProxyConfig
from ._errors import USAGE, CliError

_TRUE = ("true", "1", "yes", "on")
_FALSE = ("false", "0", "no", "off")


def parse_bool(text: str) -> bool:
    """``true``/``false`` (and 1/0, yes/no, on/off), as skopeo's boolean flags take."""
    value = text.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def count_arg(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}")
    return value


def positive_arg(text: str) -> int:
    value = count_arg(text)
    if value == 0:
        raise argparse.ArgumentTypeError("expected a number >= 1")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError("expected a positive number of seconds")
    return value


def add_global_options(parser: argparse.ArgumentParser, suppress: bool) -> None:
    """The global options; on a command's parser ``suppress`` leaves unset ones unset, so
    they do not overwrite what was given before the command."""

    def default(value: Any) -> Any:
        return argparse.SUPPRESS if suppress else value

    g = parser.add_argument_group("global options (before or after the command)")
    g.add_argument(
        "--skopeo",
        metavar="CMD",
        default=default("skopeo"),
        help="the skopeo command, split like a shell would (default: skopeo),"
        " e.g. 'podman unshare skopeo'",
    )
    g.add_argument(
        "--authfile",
        metavar="PATH",
        default=default(None),
        help="credentials file (auth.json); '-' reads it from standard input",
    )
    g.add_argument(
        "--no-creds",
        action="store_true",
        default=default(False),
        help="access the registry anonymously",
    )
    g.add_argument(
        "--cert-dir",
        metavar="DIR",
        default=default(None),
        help="certificates (*.crt, *.cert, *.key) for the registry",
    )
    g.add_argument(
        "--tls-verify",
        metavar="BOOL",
        type=parse_bool,
        default=default(None),
        help="--tls-verify[=BOOL]: require HTTPS and verify certificates"
        " (default: as registries.conf says)",
    )
    g.add_argument("--policy", metavar="PATH", default=default(None), help="signature policy file")
    g.add_argument(
        "--insecure-policy",
        action="store_true",
        default=default(False),
        help="run without any policy check",
    )
    g.add_argument(
        "--registries-conf",
        metavar="PATH",
        default=default(None),
        help="registries.conf to use instead of the system's",
    )
    g.add_argument(
        "--registries.d",
        dest="registries_d",
        metavar="DIR",
        default=default(None),
        help="directory of registries.d configuration (signature storage)",
    )
    g.add_argument("--override-os", metavar="OS", default=default(None), help="choose OS")
    g.add_argument(
        "--override-arch", metavar="ARCH", default=default(None), help="choose architecture"
    )
    g.add_argument(
        "--override-variant", metavar="VARIANT", default=default(None), help="choose variant"
    )
    g.add_argument(
        "--retries",
        metavar="N",
        type=count_arg,
        default=default(0),
        help="fetch a blob again up to N times after a retryable network error",
    )
    g.add_argument(
        "--stall-timeout",
        metavar="SECONDS",
        type=_seconds,
        default=default(None),
        help="give up when a transfer makes no progress for this long",
    )
    g.add_argument(
        "--max-metadata-size",
        metavar="BYTES",
        type=count_arg,
        default=default(DEFAULT_MAX_METADATA_SIZE),
        help="refuse a manifest, config or layer list larger than this"
        f" (default {DEFAULT_MAX_METADATA_SIZE}, 4 MiB)",
    )
    g.add_argument(
        "--debug",
        action="store_true",
        default=default(False),
        help="log skopeo's and our debug output to stderr; tracebacks on errors",
    )
    g.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        default=default(False),
        help="no progress bars and no messages: only the requested output",
    )


# --- configuration -----------------------------------------------------------------------


def _read_auth(stdin: IO[bytes]) -> bytes:
    data = stdin.read()
    try:
        obj = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise CliError(
            "--authfile -: standard input is not an auth.json (not JSON)", USAGE
        ) from None
    if not isinstance(obj, dict):
        raise CliError("--authfile -: standard input is not an auth.json (not an object)", USAGE)
    return bytes(data)


def config_from_args(args: argparse.Namespace, stdin: Optional[IO[bytes]] = None) -> ProxyConfig:
    """The ProxyConfig the options ask for; ``--authfile -`` reads ``stdin``.

    Credentials from standard input go to skopeo as ``auth_data``, which the library
    hands over through an anonymous file: they never touch a named file.
    """
    try:
        skopeo = tuple(shlex.split(args.skopeo))
    except ValueError as e:
        raise CliError(f"--skopeo: {e}", USAGE) from None
    if not skopeo:
        raise CliError("--skopeo: empty command", USAGE)
    if args.authfile is not None and args.no_creds:
        raise CliError("--authfile and --no-creds exclude each other", USAGE)
    if args.policy is not None and args.insecure_policy:
        raise CliError("--policy and --insecure-policy exclude each other", USAGE)
    authfile: Optional[str] = args.authfile
    auth_data: Optional[bytes] = None
    if authfile == "-":
        auth_data = _read_auth(stdin if stdin is not None else sys.stdin.buffer)
        authfile = None
    return ProxyConfig(
        skopeo=skopeo,
        authfile=authfile,
        auth_data=auth_data,
        auth_anonymous=args.no_creds,
        cert_dir=args.cert_dir,
        tls_verify=args.tls_verify,
        policy=args.policy,
        insecure_policy=args.insecure_policy,
        registries_conf=args.registries_conf,
        registries_d=args.registries_d,
        override_os=args.override_os,
        override_arch=args.override_arch,
        override_variant=args.override_variant,
        retries=args.retries,
        stall_timeout=args.stall_timeout,
        max_metadata_size=args.max_metadata_size,
        debug=args.debug,
    )
