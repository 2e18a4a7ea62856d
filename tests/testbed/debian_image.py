"""A real Debian image for the layer tests: a debootstrapped minbase rootfs packed by umoci.

Two steps, with very different costs:

- :func:`rootfs_tarball` runs ``debootstrap --variant=minbase bookworm`` against the
  machine's own Debian mirror once and caches the tree as a tarball under
  ``<test-bed cache>/debian-minbase/`` (a minute or two cold, nothing warm). A lock file
  serialises concurrent test sessions; delete the directory to rebuild.
- :func:`build_debian_image` makes an OCI layout out of it with umoci, per session
  (tens of seconds): layer 1 is the rootfs, layer 2 deletes files, replaces ``/etc/apt``
  by an opaque directory and adds a symlink, a hardlink pair, a setuid file, a path over
  100 bytes, a non-ASCII name, a file owned by an unknown user.

umoci 0.4.7 (Debian 12) writes the whiteouts of ``repack`` one by one, never an opaque
marker (a directory removed and recreated becomes a ``.wh.`` entry per vanished child);
only ``umoci insert --opaque`` writes ``.wh..wh..opq``, and in a tar that stops right after
the last file's data, with neither the padding nor the end-of-archive blocks (Go's reader
accepts that; GNU tar and Python's tarfile do not). So layer 2 is the ``repack`` tar and
the ``insert --opaque`` tar joined into one well-formed tar, every header byte as umoci
wrote it, appended with ``umoci raw add-layer``.

:func:`snapshot_tree` and :func:`compare_trees` describe and compare unpacked trees entry by
entry.
"""

from __future__ import annotations

import contextlib
import fcntl
import gzip
import hashlib
import io
import json
import os
import platform
import shutil
import stat
import subprocess
import tarfile
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from ._run import CommandFailed, run
from .releases import cache_dir

SUITE = "bookworm"
VARIANT = "minbase"
MIRROR_ENV = "CIP_DEBIAN_MIRROR"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
SOURCES_FILES = (Path("/etc/apt/sources.list.d/debian.sources"), Path("/etc/apt/sources.list"))

# What layer 2 does; the tests look for each of these in the layer and in the trees.
DELETED = ("etc/motd", "etc/issue.net", "usr/share/doc/apt", "usr/bin/perl5.36.0")
OPAQUE_DIR = "etc/apt"
CHANGED = "etc/hostname"
SYMLINK = ("opt/testbed/passwd-link", "/etc/passwd")
RELATIVE_SYMLINK = ("usr/local/bin/sh-link", "../../bin/dash")
HARDLINKS = ("opt/testbed/data", "opt/testbed/data.hardlink")
SETUID = "usr/local/bin/testbed-suid"
# A name of more than 100 bytes (no USTAR prefix split can hold it: PAX) and a symlink
# whose target is that long too.
LONG_PATH = "opt/testbed/" + "long-directory-" * 5 + "/" + "long-file-name-" * 8 + ".txt"
LONG_SYMLINK = ("opt/testbed/long-link", "/" + LONG_PATH)
NON_ASCII = "opt/testbed/répertoire/ファイル-ü.txt"
OWNED = ("opt/testbed/owned-by-nobody-known", 1234, 5678)
# The content /etc/apt is replaced with (path -> content; a path ending in / is a directory).
OPAQUE_CONTENT = {
    "sources.list.d/": b"",
    "sources.list.d/testbed.sources": b"Types: deb\nURIs: http://example.invalid/debian\n",
    "apt.conf.d/": b"",
    "apt.conf.d/99testbed": b'APT::Install-Recommends "false";\n',
    "keyrings/": b"",
}
# Entries of layer 1 under the opaque directory (checked to be there before layer 2, so
# that the opaque marker has something to hide).
OPAQUE_HIDDEN = ("etc/apt/trusted.gpg.d", "etc/apt/apt.conf.d/01autoremove")

# GNU tar, keeping numeric owners and every xattr (as root, -p keeps modes on extraction).
TAR_KEEP_ALL = ("tar", "--numeric-owner", "--xattrs", "--xattrs-include=*")

DEBIAN_TAG = "debian"
LAYOUT_NAME = "oci"
ZSTD_LAYOUT_NAME = "oci-zstd"


class DebianImageError(RuntimeError):
    """The Debian image could not be built; the message says what to do about it."""


# --- the rootfs (cached) ---------------------------------------------------------------


def debian_mirror() -> str:
    """The machine's own Debian mirror for ``SUITE`` (``CIP_DEBIAN_MIRROR`` overrides).

    Read from the deb822 file first, then the one-line format; deb.debian.org otherwise.
    """
    env = os.environ.get(MIRROR_ENV, "").strip()
    if env:
        return env
    for path in SOURCES_FILES:
        try:
            text = path.read_text()
        except OSError:
            continue
        found = _mirror_deb822(text) if path.suffix == ".sources" else _mirror_one_line(text)
        if found:
            return found
    return DEFAULT_MIRROR


def _mirror_deb822(text: str) -> Optional[str]:
    for stanza in text.split("\n\n"):
        fields: dict[str, str] = {}
        for line in stanza.splitlines():
            if line.startswith("#") or ":" not in line or line[:1].isspace():
                continue
            key, _, value = line.partition(":")
            fields[key.strip().lower()] = value.strip()
        if "deb" in fields.get("types", "").split() and SUITE in fields.get("suites", "").split():
            uris = fields.get("uris", "").split()
            if uris:
                return uris[0]
    return None


def _mirror_one_line(text: str) -> Optional[str]:
    for line in text.splitlines():
        words = line.split("#", 1)[0].split()
        if words[:1] != ["deb"]:
            continue
        words = words[1:]
        if words and words[0].startswith("["):  # options: [arch=amd64 signed-by=...]
            while words and not words[0].endswith("]"):
                words.pop(0)
            words = words[1:]
        if len(words) >= 2 and words[1] == SUITE:
            return words[0]
    return None


def debian_cache() -> Path:
    return cache_dir() / "debian-minbase"


def _arch() -> str:
    out = subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True)
    return out.stdout.strip() or platform.machine()


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        # Blocking: a second session waits for the first one's build and then reuses it.
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


@dataclass(frozen=True)
class Rootfs:
    """The cached rootfs tarball and how it was made."""

    tarball: Path
    mirror: str
    arch: str
    # Seconds this call spent building it: 0.0 when the cache already had it.
    build_seconds: float
    info: dict[str, Any] = field(default_factory=dict)


def rootfs_tarball(
    cache: Optional[Path] = None, log: Optional[Callable[[str], None]] = None
) -> Rootfs:
    """The minbase rootfs as a tarball, debootstrapped on first use (needs root).

    Raises DebianImageError when debootstrap is missing or fails (the mirror is
    unreachable, most likely), with debootstrap's own last words.
    """
    cache = cache or debian_cache()
    arch = _arch()
    tarball = cache / f"{SUITE}-{VARIANT}-{arch}.tar"
    info_file = tarball.with_suffix(".json")
    with _locked(cache / ".lock"):
        if tarball.exists():
            info = json.loads(info_file.read_text()) if info_file.exists() else {}
            return Rootfs(tarball, str(info.get("mirror", "")), arch, 0.0, info)
        if os.geteuid() != 0:
            raise DebianImageError("building the Debian rootfs needs root (debootstrap)")
        if shutil.which("debootstrap") is None:
            raise DebianImageError("debootstrap is not installed: run scripts/setup.sh (as root)")
        mirror = debian_mirror()
        if log:
            log(f"debootstrap --variant={VARIANT} {SUITE} from {mirror} (once; cached)")
        started = time.monotonic()
        work = Path(tempfile.mkdtemp(prefix="build-", dir=cache))
        target = work / "rootfs"
        try:
            argv = ["debootstrap", f"--variant={VARIANT}", f"--arch={arch}", SUITE]
            try:
                # Under the tests' 900 s timeout, so that this message is the one reported.
                run([*argv, str(target), mirror], timeout=800)
            except (CommandFailed, subprocess.TimeoutExpired) as e:
                raise DebianImageError(_debootstrap_failure(e, mirror, target)) from e
            tmp = tarball.with_name(tarball.name + ".tmp")
            # Numeric owners: the names in the tarball are the rootfs's, not this machine's.
            run([*TAR_KEEP_ALL, "-C", str(target), "-cf", str(tmp), "."], timeout=600)
            seconds = time.monotonic() - started
            info = {
                "suite": SUITE,
                "variant": VARIANT,
                "arch": arch,
                "mirror": mirror,
                "build_seconds": round(seconds, 1),
                "built": time.strftime("%Y-%m-%d"),
            }
            info_file.write_text(json.dumps(info, indent=1) + "\n")
            tmp.replace(tarball)
        finally:
            _remove_tree(work)
    return Rootfs(tarball, mirror, arch, seconds, info)


def _debootstrap_failure(e: BaseException, mirror: str, target: Path) -> str:
    detail = str(e)
    log_file = target / "debootstrap" / "debootstrap.log"
    with contextlib.suppress(OSError):
        detail += "\n--- debootstrap.log (end) ---\n" + "\n".join(
            log_file.read_text(errors="replace").splitlines()[-15:]
        )
    return (
        f"debootstrap could not build Debian {SUITE} ({VARIANT}) from {mirror}. The Debian "
        f"image tests need that mirror (set {MIRROR_ENV} to use another one).\n{detail}"
    )


def _remove_tree(path: Path) -> None:
    """rm -rf that first unmounts what a failed debootstrap may have left mounted inside."""
    try:
        mounts = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        mounts = []
    prefix = str(path.resolve()) + "/"
    inside = [m.split()[1] for m in mounts if len(m.split()) > 1]
    for point in sorted((p for p in inside if p.startswith(prefix)), key=len, reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True)
    subprocess.run(["rm", "-rf", "--one-file-system", str(path)], capture_output=True)


# --- the OCI layout (per session) -----------------------------------------------------


@dataclass(frozen=True)
class LayerEntry:
    """One tar header of a layer, as written."""

    name: str
    type: bytes
    mode: int
    uid: int
    gid: int
    size: int
    linkname: str
    pax: bool  # the entry has a PAX extended header (long or non-ASCII name, xattrs ...)


@dataclass(frozen=True)
class DebianImage:
    """The Debian image in an OCI layout (gzip layers) and its zstd copy."""

    layout: Path
    zstd_layout: Path
    tag: str
    umoci: str  # `umoci --version`
    rootfs: Rootfs
    # Layer 2 exactly as stored (the tests check every case is really in it).
    top_layer: tuple[LayerEntry, ...]
    seconds: dict[str, float]

    def ref(self, zstd: bool = False) -> str:
        """The skopeo reference of the gzip image, or of its zstd copy."""
        return f"oci:{self.zstd_layout if zstd else self.layout}:{self.tag}"

    @property
    def umoci_image(self) -> str:
        """The image as umoci names it (``--image``); umoci 0.4.7 cannot read zstd layers."""
        return f"{self.layout}:{self.tag}"


def umoci_version() -> str:
    return run(["umoci", "--version"]).stdout.strip()


def manifest(layout: Path, tag: str) -> dict[str, Any]:
    """The manifest ``tag`` points at in an OCI layout."""
    index = json.loads((layout / "index.json").read_text())
    for desc in index["manifests"]:
        if desc.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag:
            result: dict[str, Any] = json.loads(blob_path(layout, desc["digest"]).read_text())
            return result
    raise KeyError(f"no tag {tag!r} in {layout}")


def config(layout: Path, tag: str) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(
        blob_path(layout, manifest(layout, tag)["config"]["digest"]).read_text()
    )
    return result


def blob_path(layout: Path, digest: str) -> Path:
    algorithm, _, hexdigest = digest.partition(":")
    return layout / "blobs" / algorithm / hexdigest


def layer_tar(layout: Path, tag: str, index: int) -> bytes:
    """Layer ``index`` of the image, uncompressed (gzip or none: what umoci writes)."""
    desc = manifest(layout, tag)["layers"][index]
    data = blob_path(layout, desc["digest"]).read_bytes()
    return gzip.decompress(data) if desc["mediaType"].endswith("+gzip") else data


def tar_entries(data: bytes) -> tuple[LayerEntry, ...]:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:", encoding="utf-8") as tar:
        return tuple(
            LayerEntry(
                m.name, m.type, m.mode, m.uid, m.gid, m.size, m.linkname, bool(m.pax_headers)
            )
            for m in tar.getmembers()
        )


def tar_members_bytes(data: bytes) -> bytes:
    """A tar's member blocks, byte for byte, without its end-of-archive blocks.

    Also takes a tar cut short right after its last member's data (what ``umoci insert``
    writes): the missing padding is added, nothing else is touched.
    """
    data += b"\0" * (-len(data) % 512)
    with tarfile.open(fileobj=io.BytesIO(data + b"\0" * 1024), mode="r:") as tar:
        members = tar.getmembers()
    if not members:
        return b""
    last = members[-1]
    # Only regular files carry data blocks in the tars umoci writes (links, dirs: size 0).
    end = last.offset_data + (-(-last.size // 512) * 512 if last.isreg() else 0)
    return data[:end]


def join_tars(*tars: bytes) -> bytes:
    """One tar with the members of ``tars`` in order, every header as it was written."""
    return b"".join(tar_members_bytes(t) for t in tars) + b"\0" * 1024


def _write(path: Path, data: bytes, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    os.chmod(path, mode)


def _modify(root: Path) -> None:
    """Layer 2's changes, made on an unpacked bundle for ``umoci repack`` to find."""
    for rel in (*DELETED, *OPAQUE_HIDDEN):
        if not os.path.lexists(root / rel):
            raise DebianImageError(f"the rootfs has no /{rel}: the image's recipe needs it")
    for rel in DELETED:
        path = root / rel
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    (root / CHANGED).write_bytes(b"testbed-debian\n")
    link, target = SYMLINK
    (root / link).parent.mkdir(parents=True, exist_ok=True)
    os.symlink(target, root / link)
    link, target = RELATIVE_SYMLINK
    os.symlink(target, root / link)
    first, second = HARDLINKS
    _write(root / first, b"hardlinked data\n" * 4096)
    os.link(root / first, root / second)
    _write(root / SETUID, b"#!/bin/sh\nid\n")
    os.chown(root / SETUID, 0, 0)
    os.chmod(root / SETUID, 0o4755)  # after chown, which would clear the bit
    _write(root / LONG_PATH, b"a path of more than 100 bytes\n")
    link, target = LONG_SYMLINK
    os.symlink(target, root / link)
    _write(root / NON_ASCII, "non-ASCII: répertoire, ファイル\n".encode())
    owned, uid, gid = OWNED
    _write(root / owned, b"owned by 1234:5678\n", 0o640)
    os.chown(root / owned, uid, gid)


def _opaque_source(where: Path) -> Path:
    src = where / "apt"
    src.mkdir(parents=True)
    os.chmod(src, 0o755)
    for rel, content in OPAQUE_CONTENT.items():
        if rel.endswith("/"):
            (src / rel).mkdir(parents=True, exist_ok=True)
            os.chmod(src / rel, 0o755)
        else:
            _write(src / rel, content)
    return src


def build_debian_image(
    workdir: Path,
    skopeo: Sequence[str],
    rootfs: Optional[Rootfs] = None,
    log: Optional[Callable[[str], None]] = None,
) -> DebianImage:
    """Build the two-layer Debian image under ``workdir`` (an empty or absent directory).

    ``skopeo`` (a release's argv) recompresses the image to zstd into a second layout.
    Needs root: the rootfs holds files of other owners, device nodes, setuid files.
    """
    if os.geteuid() != 0:
        raise DebianImageError("building the Debian image needs root")
    if shutil.which("umoci") is None:
        raise DebianImageError("umoci is not installed: run scripts/setup.sh (as root)")
    seconds: dict[str, float] = {}
    started = time.monotonic()
    rootfs = rootfs or rootfs_tarball(log=log)
    seconds["rootfs"] = time.monotonic() - started

    workdir.mkdir(parents=True, exist_ok=True)
    layout = workdir / LAYOUT_NAME
    zstd_layout = workdir / ZSTD_LAYOUT_NAME
    lay = str(layout)

    def step(name: str) -> None:
        now = time.monotonic()
        seconds[name] = now - sum(seconds.values()) - started
        if log:
            log(f"debian image: {name} {seconds[name]:.1f}s")

    def umoci(*args: str) -> None:
        run(["umoci", *args], timeout=600)

    umoci("init", "--layout", lay)
    umoci("new", "--image", f"{lay}:empty")
    # Layer 1: the rootfs, through a bundle so that umoci (not us) writes the tar.
    bundle = workdir / "bundle-1"
    umoci("unpack", "--image", f"{lay}:empty", str(bundle))
    extract = ["-xpf", str(rootfs.tarball), "-C", str(bundle / "rootfs")]
    run([*TAR_KEEP_ALL, *extract], timeout=600)
    history = f"debootstrap --variant={VARIANT} {SUITE}"
    umoci("repack", "--image", f"{lay}:base", "--history.created_by", history, str(bundle))
    _remove_tree(bundle)
    step("layer 1")

    # Layer 2, part one: what `umoci repack` makes of the changes.
    bundle = workdir / "bundle-2"
    umoci("unpack", "--image", f"{lay}:base", str(bundle))
    _modify(bundle / "rootfs")
    umoci("repack", "--image", f"{lay}:scratch-repack", str(bundle))
    _remove_tree(bundle)
    # Part two: /etc/apt as an opaque directory, the one thing repack never writes.
    src = _opaque_source(workdir / "opaque-source")
    insert = ["--tag", "scratch-opaque", "--opaque", str(src), "/" + OPAQUE_DIR]
    umoci("insert", "--image", f"{lay}:base", *insert)
    _remove_tree(src.parent)
    merged = workdir / "layer-2.tar"
    merged.write_bytes(
        join_tars(layer_tar(layout, "scratch-repack", -1), layer_tar(layout, "scratch-opaque", -1))
    )
    history = "testbed: whiteouts, opaque /etc/apt, links, setuid, long and non-ASCII names"
    add = ["--tag", DEBIAN_TAG, "--history.created_by", history, str(merged)]
    umoci("raw", "add-layer", "--image", f"{lay}:base", *add)
    merged.unlink()
    for scratch in ("empty", "base", "scratch-repack", "scratch-opaque"):
        umoci("rm", "--image", f"{lay}:{scratch}")
    umoci("gc", "--layout", lay)
    step("layer 2")

    # A layout of its own: copied into the same one, skopeo would reuse the gzip blobs.
    zstd = ["--dest-compress-format", "zstd", f"oci:{layout}:{DEBIAN_TAG}"]
    copy = [*skopeo, "--insecure-policy", "copy", "--quiet", *zstd]
    run([*copy, f"oci:{zstd_layout}:{DEBIAN_TAG}"], timeout=600)
    step("zstd copy")

    top = tar_entries(layer_tar(layout, DEBIAN_TAG, -1))
    return DebianImage(layout, zstd_layout, DEBIAN_TAG, umoci_version(), rootfs, top, seconds)


# --- unpacked trees, entry by entry --------------------------------------------------


@dataclass(frozen=True)
class TreeEntry:
    """What is compared of one entry. ``size`` is None for directories: their st_size
    depends on the filesystem's history (ext4 never shrinks a directory), not the image."""

    kind: str
    mode: int
    uid: int
    gid: int
    size: Optional[int]
    sha256: Optional[str]
    target: Optional[str]
    rdev: Optional[tuple[int, int]]
    mtime_ns: int
    xattrs: tuple[tuple[str, bytes], ...]


@dataclass(frozen=True)
class Tree:
    entries: dict[str, TreeEntry]
    # Paths sharing an inode, as sorted tuples, sorted.
    hardlinks: tuple[tuple[str, ...], ...]


_KINDS = (
    (stat.S_ISDIR, "dir"),
    (stat.S_ISREG, "file"),
    (stat.S_ISLNK, "symlink"),
    (stat.S_ISCHR, "char"),
    (stat.S_ISBLK, "block"),
    (stat.S_ISFIFO, "fifo"),
    (stat.S_ISSOCK, "socket"),
)


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    # O_NOFOLLOW: the walk saw a regular file here; never read through a swapped-in link.
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        while chunk := os.read(fd, 1 << 20):
            h.update(chunk)
    finally:
        os.close(fd)
    return h.hexdigest()


def _xattrs(path: str) -> tuple[tuple[str, bytes], ...]:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return ()
    return tuple(sorted((n, os.getxattr(path, n, follow_symlinks=False)) for n in names))


def snapshot_tree(root: Path) -> Tree:
    """Every entry under ``root`` (``"."`` being root itself), described by lstat."""
    entries: dict[str, TreeEntry] = {}
    inodes: dict[tuple[int, int], list[str]] = defaultdict(list)

    def visit(path: str, rel: str) -> None:
        st = os.lstat(path)
        kind = next(name for test, name in _KINDS if test(st.st_mode))
        entries[rel] = TreeEntry(
            kind=kind,
            mode=stat.S_IMODE(st.st_mode),
            uid=st.st_uid,
            gid=st.st_gid,
            size=None if kind == "dir" else st.st_size,
            sha256=_sha256(path) if kind == "file" else None,
            target=os.readlink(path) if kind == "symlink" else None,
            rdev=(os.major(st.st_rdev), os.minor(st.st_rdev))
            if kind in ("char", "block")
            else None,
            mtime_ns=st.st_mtime_ns,
            xattrs=_xattrs(path),
        )
        if kind != "dir" and st.st_nlink > 1:
            inodes[(st.st_dev, st.st_ino)].append(rel)
        if kind == "dir":
            for name in sorted(os.listdir(path)):
                visit(os.path.join(path, name), name if rel == "." else f"{rel}/{name}")

    visit(str(root), ".")
    groups = tuple(sorted(tuple(sorted(g)) for g in inodes.values() if len(g) > 1))
    return Tree(entries, groups)


def compare_trees(ours: Tree, theirs: Tree, fields: Sequence[str] = ()) -> list[str]:
    """The differences between two trees, one line each (empty: the same).

    ``fields`` limits which TreeEntry fields count (default: all of them).
    """
    names = fields or [f for f in TreeEntry.__dataclass_fields__]
    out: list[str] = []
    for rel in sorted(theirs.entries.keys() - ours.entries.keys()):
        out.append(f"{rel}: missing (umoci has {theirs.entries[rel].kind})")
    for rel in sorted(ours.entries.keys() - theirs.entries.keys()):
        out.append(f"{rel}: extra {ours.entries[rel].kind} (umoci has nothing)")
    for rel in sorted(ours.entries.keys() & theirs.entries.keys()):
        a, b = ours.entries[rel], theirs.entries[rel]
        for name in names:
            va, vb = getattr(a, name), getattr(b, name)
            if va != vb:
                if name == "mode":
                    va, vb = oct(va), oct(vb)
                out.append(f"{rel}: {name} {va!r} (umoci: {vb!r})")
    a_groups, b_groups = set(ours.hardlinks), set(theirs.hardlinks)
    for group in sorted(b_groups - a_groups):
        out.append(f"hardlink group {group} missing")
    for group in sorted(a_groups - b_groups):
        out.append(f"hardlink group {group} extra")
    return out
