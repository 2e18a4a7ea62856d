"""The command line: global options (named as skopeo names them), commands, and the
mapping of the options onto a :class:`~containers_image_proxy.ProxyConfig`.

Global options are accepted before or after the command (``containers-image-proxy
--tls-verify=false inspect IMG`` and ``containers-image-proxy inspect --tls-verify=false
IMG`` are the same), since skopeo users write them both ways.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import sys
from typing import IO, Any, Callable, NoReturn, Optional, Sequence

from .._config import DEFAULT_MAX_METADATA_SIZE, ProxyConfig
from ._catalog import add_index_arguments, add_tags_arguments
from ._errors import USAGE, CliError

PROG = "containers-image-proxy"

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


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}")
    return value


def _positive(text: str) -> int:
    value = _count(text)
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


class _Parser(argparse.ArgumentParser):
    """argparse with usage errors on one line (the tool's error contract)."""

    def error(self, message: str) -> NoReturn:
        self.exit(USAGE, f"{PROG}: {message} (see '{self.prog} --help')\n")


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the examples in the epilogs as written."""

    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=32)


def _global_options(parser: argparse.ArgumentParser, suppress: bool) -> None:
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
        type=_count,
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
        type=_count,
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


# Each command: (name, summary, description, example lines, arguments adder).
_Adder = Callable[[argparse.ArgumentParser], None]


def _image(p: argparse.ArgumentParser) -> None:
    p.add_argument("image", metavar="IMAGE", help="TRANSPORT:NAME, e.g. docker://quay.io/x/y:1")


def _json_flag(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--json", action="store_true", help=f"print {what} as JSON")


def _add_inspect(p: argparse.ArgumentParser) -> None:
    _image(p)
    _json_flag(p, 'one object {"digest", "manifest", "config", "layers"}')


def _add_layers(p: argparse.ArgumentParser) -> None:
    _image(p)
    _json_flag(p, "a list of {digest, size, media_type}")


def _add_blob(p: argparse.ArgumentParser) -> None:
    _image(p)
    p.add_argument("digest", metavar="DIGEST", help="the blob's digest (sha256:...)")
    p.add_argument(
        "-o",
        "--output",
        metavar="FILE",
        help="write to FILE (replaced only once the blob is complete and verified)"
        " instead of standard output",
    )


def _add_cat(p: argparse.ArgumentParser) -> None:
    _image(p)
    p.add_argument("path", metavar="PATH", help="absolute path in the image's filesystem")


def _add_ls(p: argparse.ArgumentParser) -> None:
    _image(p)
    p.add_argument("path", metavar="PATH", nargs="?", default="/", help="directory (default: /)")
    p.add_argument("-l", "--long", action="store_true", help="type, mode, owner, size and time too")
    _json_flag(p, "a list of entries")


def _add_unpack(p: argparse.ArgumentParser) -> None:
    _image(p)
    p.add_argument("dest", metavar="DIR", help="new (or empty) directory for the rootfs")
    p.add_argument(
        "--rootless",
        action="store_true",
        help="do not apply the layers' owners (needed when not root); skip device nodes",
    )


def _add_pull(p: argparse.ArgumentParser) -> None:
    _image(p)
    p.add_argument(
        "target",
        metavar="LAYOUT_DIR[:TAG]",
        help="OCI image layout to write into (created if missing); TAG defaults to the"
        " image's tag, else 'latest'",
    )
    p.add_argument(
        "-j",
        "--jobs",
        metavar="N",
        type=_positive,
        default=4,
        help="blobs fetched at once (default: 4)",
    )


COMMANDS: tuple[tuple[str, str, str, Sequence[str], _Adder], ...] = (
    (
        "inspect",
        "summary of an image: digest, platform, created, layers, labels, entrypoint",
        "Print a readable summary of IMAGE. With --json, print one object with the\n"
        "manifest digest (as stored), the manifest (OCI form), the config and the layers.",
        ("inspect docker://quay.io/libpod/busybox:latest", "inspect --json oci:/srv/oci:app"),
        _add_inspect,
    ),
    (
        "manifest",
        "the manifest, byte for byte as the proxy returns it (OCI form)",
        "Print IMAGE's manifest exactly as skopeo's proxy returns it: the stored bytes for\n"
        "an OCI manifest, the OCI conversion of a Docker one. For a multi-platform image,\n"
        "the instance for this platform (see --override-arch).",
        ("manifest docker://quay.io/libpod/busybox:latest | jq .layers",),
        _image,
    ),
    (
        "config",
        "the image config, byte for byte as the proxy returns it",
        "Print IMAGE's configuration (OCI form) exactly as skopeo's proxy returns it;\n"
        "for an artifact whose config is not an image config, the config blob itself.",
        ("config oci:/srv/oci:app | jq .config.Env",),
        _image,
    ),
    (
        "layers",
        "the layers: digest, size, media type",
        "List IMAGE's layers as a copy would fetch them.",
        ("layers docker://quay.io/libpod/busybox:latest", "layers --json oci:/srv/oci:app"),
        _add_layers,
    ),
    (
        "blob",
        "one blob, verified, to a file or standard output",
        "Fetch one blob of IMAGE (a layer or the config) and check its size and digest.\n"
        "With -o the file appears only once the whole blob arrived and matched; on\n"
        "standard output a mismatch is reported at the end (exit status 1).",
        ("blob oci:/srv/oci:app sha256:1a2b... -o layer.tar.gz",),
        _add_blob,
    ),
    (
        "cat",
        "one file of the image's filesystem to standard output",
        "Print a file of IMAGE's merged filesystem (symlinks followed inside the image)\n"
        "without unpacking it. Exit status 3 if there is no such file.",
        ("cat docker://registry.fedoraproject.org/fedora:40 /etc/os-release",),
        _add_cat,
    ),
    (
        "ls",
        "list a directory of the image's merged filesystem",
        "List a directory of IMAGE's merged filesystem (all layers applied, whiteouts\n"
        "honoured), without unpacking it. Exit status 3 if there is no such path.",
        ("ls -l docker://quay.io/libpod/busybox:latest /etc",),
        _add_ls,
    ),
    (
        "unpack",
        "the image as a root filesystem in a directory",
        "Apply IMAGE's layers in order into DIR, which must not exist or be empty.\n"
        "DIR appears only once every layer is applied and verified.",
        ("unpack --rootless docker://quay.io/libpod/busybox:latest ./rootfs",),
        _add_unpack,
    ),
    (
        "pull",
        "copy an image into an OCI image layout (resumable, parallel)",
        "Write IMAGE into the OCI image layout LAYOUT_DIR, tagged TAG, readable by skopeo\n"
        "(oci:LAYOUT_DIR:TAG) and umoci. Blobs already in the layout whose content matches\n"
        "their digest are not fetched again, so an interrupted pull resumes where it\n"
        "stopped. Prints the digest of the manifest written (the sha256 of the OCI form\n"
        "the proxy returns, which is the stored digest unless skopeo converted it).",
        ("pull docker://quay.io/libpod/busybox:latest ./layout:busybox",),
        _add_pull,
    ),
    (
        "tags",
        "the tags of a repository, one per line",
        "List the tags of REPOSITORY: a registry repository (docker://REGISTRY/REPO, no\n"
        "tag), the references in a docker-archive: file, or the tags of an oci: layout.\n"
        "Exit status 3 if the repository, archive or layout does not exist.",
        ("tags docker://quay.io/libpod/busybox", "tags --json oci:/srv/oci"),
        add_tags_arguments,
    ),
    (
        "index",
        "the platforms of a multi-platform image (its index as stored)",
        "Print the manifest list or OCI index of IMAGE: its digest and one row per\n"
        "instance (platform, digest, size, media type); with --json the index itself.\n"
        "Each instance opens by digest (docker://REPO@DIGEST). Exit status 1 for an image\n"
        "with a single manifest, 3 if IMAGE does not exist.",
        ("index docker://quay.io/libpod/busybox:latest", "index --json oci:/srv/oci:app"),
        add_index_arguments,
    ),
    (
        "exists",
        "exit status 0 if the image exists, 1 if not",
        "Exit with status 0 if IMAGE exists, 1 if it does not, and 4 (or 2 for a usage\n"
        "error) if that cannot be told.",
        ("exists docker://quay.io/libpod/busybox:latest && echo yes",),
        _image,
    ),
)

_EXIT_STATUS = """\
exit status:
  0  success            2  usage error (bad option, argument or configuration)
  1  failure            3  not found (the image, a blob, a path in the image)
  130  interrupted (Ctrl-C)
  'exists' exits 1 when the image does not exist and 4 when it cannot tell."""


def build_parser() -> argparse.ArgumentParser:
    """The parser of the whole command line."""
    from .. import __version__

    parser = _Parser(
        prog=PROG,
        formatter_class=_Formatter,
        description="Inspect, read and copy container images through skopeo's"
        " experimental-image-proxy:\nevery transport, registries.conf, auth.json and"
        " signature policy, streamed.",
        epilog=(
            "examples:\n"
            f"  {PROG} inspect docker://quay.io/libpod/busybox:latest\n"
            f"  {PROG} --override-arch arm64 ls docker://quay.io/libpod/busybox /bin\n"
            f"  {PROG} pull docker://quay.io/libpod/busybox:latest ./layout:busybox\n\n"
            f"{_EXIT_STATUS}\n\nRun '{PROG} COMMAND --help' for a command's options."
        ),
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    _global_options(parser, suppress=False)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for name, summary, description, examples, adder in COMMANDS:
        lines = "\n".join(f"  {PROG} {e}" for e in examples)
        p = sub.add_parser(
            name,
            help=summary,
            description=description,
            epilog=f"example{'s' if len(examples) > 1 else ''}:\n{lines}",
            formatter_class=_Formatter,
        )
        adder(p)
        _global_options(p, suppress=True)
    return parser


def normalize_argv(argv: Sequence[str]) -> list[str]:
    """skopeo's boolean flags take a value only after ``=``: a bare ``--tls-verify`` means
    true, and the word after it is the next argument (a command, an image), never its value.
    """
    out: list[str] = []
    for i, arg in enumerate(argv):
        if arg == "--":
            return out + list(argv[i:])
        out.append("--tls-verify=true" if arg == "--tls-verify" else arg)
    return out


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


# An OCI layout tag ("ref name"): what can follow the last colon of LAYOUT_DIR:TAG.
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")


def split_layout_target(text: str) -> tuple[str, Optional[str]]:
    """``DIR[:TAG]`` -> (DIR, TAG or None). A colon inside a path is not a tag separator:
    only a last component that is a valid tag counts."""
    path, sep, tag = text.rpartition(":")
    if sep and path and _TAG.fullmatch(tag):
        return path, tag
    return text, None
