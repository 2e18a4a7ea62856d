"""The command line: the parser, its commands and their arguments (the global options
and the ProxyConfig they make are in :mod:`._globals`).

Global options are accepted before or after the command (``containers-image-proxy
--tls-verify=false inspect IMG`` and ``containers-image-proxy inspect --tls-verify=false
IMG`` are the same), since skopeo users write them both ways.
"""

from __future__ import annotations

import argparse
import re
from typing import Callable, NoReturn, Optional, Sequence

from ._catalog import add_index_arguments, add_tags_arguments
from ._errors import EXIT_STATUSES, USAGE
from ._globals import add_global_options, count_arg, positive_arg

PROG = "containers-image-proxy"


class _Parser(argparse.ArgumentParser):
    """argparse with usage errors on one line (the tool's error contract)."""

    def error(self, message: str) -> NoReturn:
        self.exit(USAGE, f"{PROG}: {message} (see '{self.prog} --help')\n")


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the examples in the epilogs as written."""

    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=32)


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
    p.add_argument(
        "--size",
        metavar="BYTES",
        type=count_arg,
        help="the blob's size, for a blob the OCI manifest does not name (the stored"
        " config of a converted image) with a skopeo before 1.19, which needs it;"
        " for a blob it names, it must agree",
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
        type=positive_arg,
        default=4,
        help="blobs fetched at once (default: 4)",
    )
    p.add_argument(
        "--platform",
        metavar="all|OS/ARCH[/VARIANT][,...]",
        help="instances of a multi-platform image to pull: 'all' keeps the index as"
        " stored, a list gets an index of its own (default: the one the proxy selects,"
        " see --override-arch); needs a docker:// IMAGE",
    )


# Each command: (name, summary, description, example lines, arguments adder).
_Adder = Callable[[argparse.ArgumentParser], None]


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
        "the image config, byte for byte as the proxy returns it (OCI form)",
        "Print IMAGE's configuration (OCI form) exactly as skopeo's proxy returns it\n"
        "(GetFullConfig); for an artifact whose config is not an image config, the config\n"
        "blob itself. For an image skopeo converts (Docker schema 2 to OCI) this is the\n"
        "converted config, whose bytes and digest differ from the stored blob; the stored\n"
        "bytes are 'blob IMAGE CONFIG_DIGEST', with the digest the stored manifest names\n"
        "(skopeo inspect --raw IMAGE | jq -r .config.digest).",
        (
            "config oci:/srv/oci:app | jq .config.Env",
            "blob docker-archive:app.tar sha256:1a2b...  # the stored config",
        ),
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
        "standard output a mismatch is reported at the end (exit status 1). For an image\n"
        "skopeo converts (Docker schema 2 to OCI), DIGEST may be the stored config's\n"
        "(the stored bytes) or the converted one the OCI manifest names (the bytes\n"
        "'config' prints).",
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

_EXIT_STATUS = "exit status:\n" + "\n".join(f"  {code:<5}{text}" for code, text in EXIT_STATUSES)


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
    add_global_options(parser, suppress=False)
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
        p.usage = _own_usage(p)
        add_global_options(p, suppress=True)
    return parser


def _own_usage(p: argparse.ArgumentParser) -> str:
    """The usage line of a command from its own arguments, the global options summed up
    (listed last in its help): the command's options are not lost among the global ones."""
    formatter = p.formatter_class(prog=p.prog)
    formatter.add_usage(None, p._actions, [], prefix="")
    return formatter.format_help().strip() + " [GLOBAL OPTIONS]"


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


# An OCI layout tag ("ref name"): what can follow the last colon of LAYOUT_DIR:TAG.
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")


def split_layout_target(text: str) -> tuple[str, Optional[str]]:
    """``DIR[:TAG]`` -> (DIR, TAG or None). A colon inside a path is not a tag separator:
    only a last component that is a valid tag counts."""
    path, sep, tag = text.rpartition(":")
    if sep and path and _TAG.fullmatch(tag):
        return path, tag
    return text, None
