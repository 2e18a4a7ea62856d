"""The state of one blob stream, without I/O: how much to read next, and what the end means.

Two wire forms exist. GetBlob (every version) streams through a pipe that reaches EOF only
after FinishPipe, and skopeo verifies size and digest, reporting a mismatch as FinishPipe's
error. GetRawBlob (0.2.8) streams through a pipe that reaches EOF by itself, plus an error
pipe; nobody verifies but us. The readers of both front ends drive this class and only do
the reads and the FinishPipe themselves.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from enum import Enum
from typing import Optional, Tuple

from .._core.protocol import MAX_JSON_INT
from .._digest import Digest
from .._errors import BlobVerificationError, ProtocolError, RequestError


class StreamKind(Enum):
    """Which wire form a blob stream has."""

    PIPE = "GetBlob"
    RAW = "GetRawBlob"


@dataclass(frozen=True)
class StreamSpec:
    """What the caller asked for: the blob, its expected size, whether to hash it here."""

    kind: StreamKind
    digest: Digest
    expected_size: Optional[int]
    verify: bool


# FinishPipe errors of GetBlob that mean "the bytes were wrong", as opposed to "could not get them"
_CORRUPTED = re.compile(r"corrupted blob", re.I)
_VERIFY_TEXT = re.compile(r"corrupted blob|expected \d+ bytes in blob|digest|size mismatch", re.I)


class BlobStream:
    """Tracks one stream from its reply to its verified end.

    ``want(n)`` says how many bytes to read next (0: the data part is complete);
    ``feed(data)`` accounts for bytes read; ``end_of_data()`` is called when the data pipe
    reached EOF (RAW) or when ``want`` returned 0 (PIPE); ``check()`` raises if anything
    was wrong, and is to be called once the stream's closing information is in.
    """

    def __init__(self, spec: StreamSpec, reported_size: object) -> None:
        if isinstance(reported_size, bool) or not isinstance(reported_size, int):
            raise ProtocolError(f"{spec.kind.value}: size is not an integer: {reported_size!r:.40}")
        if not -1 <= reported_size <= MAX_JSON_INT:
            raise ProtocolError(f"{spec.kind.value}: size out of range: {reported_size}")
        self.spec = spec
        self.reported_size: Optional[int] = reported_size if reported_size >= 0 else None
        self.received = 0
        self.finished = False
        self._hasher = spec.digest.hasher() if spec.verify else None
        self._error: Optional[BaseException] = None
        expected = spec.expected_size
        if (
            expected is not None
            and self.reported_size is not None
            and expected != self.reported_size
        ):
            # Known before the first byte: fail now instead of at the end (and for GetBlob,
            # reading up to the expected size would wait forever on a short blob).
            self._error = BlobVerificationError(
                spec.digest, f"source has {self.reported_size} bytes, expected {expected}"
            )

    @property
    def size(self) -> Optional[int]:
        """The blob's size, as far as known before the end."""
        if self.spec.expected_size is not None:
            return self.spec.expected_size
        return self.reported_size

    @property
    def early_error(self) -> Optional[BaseException]:
        """An error known before reading (size mismatch); the reader raises it at once."""
        return self._error

    def want(self, n: int) -> int:
        """How many bytes to ask for next, at most ``n``."""
        size = self.size
        if size is None:
            return n
        left = size - self.received
        if self.spec.kind is StreamKind.PIPE:
            # the pipe reaches EOF only after FinishPipe: never wait for a byte past the size
            return max(0, min(n, left))
        # raw pipes end by themselves; reading one byte past the end proves there is no more
        return max(1, min(n, left)) if left > 0 else 1

    def feed(self, data: memoryview | bytes) -> None:
        """Account for ``data`` just read: ``hash`` and ``count`` together."""
        self.hash(data)
        self.count(len(data))

    def advance(self, count: int) -> None:
        """Account for ``count`` bytes moved without being seen (zero-copy; no hashing)."""
        assert self._hasher is None
        self.count(count)

    def hash(self, data: memoryview | bytes) -> None:
        """Hash ``data``, if this stream is verified here. Apart from ``count`` so that
        another thread can hash while the reader goes on; every byte counted must be
        hashed, in order, before ``check``, ``begin_resume`` or ``check_prefix``."""
        if self._hasher is not None:
            self._hasher.update(data)

    def count(self, count: int) -> None:
        """Account for ``count`` bytes read (the half of ``feed`` the reader does)."""
        self.received += count
        size = self.size
        if size is not None and self.received > size and self._error is None:
            self._error = BlobVerificationError(
                self.spec.digest, f"source has more than the expected {size} bytes"
            )

    @property
    def hashing(self) -> bool:
        """Whether the bytes must pass through here (to be hashed)."""
        return self._hasher is not None

    @property
    def complete(self) -> bool:
        """Whether every byte of a blob of known size has been read."""
        size = self.size
        return size is not None and self.received >= size

    @property
    def overflowed(self) -> bool:
        """Whether more bytes arrived than the blob may have."""
        size = self.size
        return size is not None and self.received > size

    def finish_pipe_result(self, error: Optional[RequestError]) -> None:
        """Record FinishPipe's outcome for a GetBlob stream that was read to its size."""
        if error is None or self._error is not None:
            return
        if _VERIFY_TEXT.search(error.message):
            self._error = BlobVerificationError(self.spec.digest, self._skopeo_verdict(error))
        else:
            self._error = error

    def _skopeo_verdict(self, error: RequestError) -> str:
        """What skopeo's verification failure says, without repeating the digest asked for
        (the error's prefix names it): the actual digest when this stream was hashed here
        too, else that the content differs (skopeo does not say what it found)."""
        if self._hasher is not None and self.received == self.size:
            return f"content has digest {self.spec.digest.algorithm}:{self._hasher.hexdigest()}"
        if _CORRUPTED.search(error.message):
            return "content does not have this digest (skopeo's check, which names no other)"
        return error.message.replace(str(self.spec.digest), "the blob")

    def raw_result(self, error: Optional[RequestError]) -> None:
        """Record what GetRawBlob's error pipe held once the data pipe reached EOF."""
        if error is not None and self._error is None:
            self._error = error

    def check(self) -> None:
        """Raise the stream's error, or verify size and digest; idempotent."""
        if self._error is not None:
            raise self._error
        if self.finished:
            return
        size = self.size
        if size is not None and self.received != size:
            self._error = BlobVerificationError(
                self.spec.digest, f"got {self.received} bytes, expected {size}"
            )
            raise self._error
        if self._hasher is not None:
            actual = Digest(f"{self.spec.digest.algorithm}:{self._hasher.hexdigest()}")
            if actual != self.spec.digest:
                self._error = BlobVerificationError(
                    self.spec.digest, f"content has digest {actual}"
                )
                raise self._error
        self.finished = True

    @property
    def resumable(self) -> bool:
        """Whether a failed transfer can be restarted without the caller noticing.

        Exact only when nothing was handed out yet, or when every byte handed out was
        hashed: the restarted stream's prefix is then checked against that hash.
        """
        return self.received == 0 or self._hasher is not None

    def begin_resume(self) -> Tuple[int, hashlib._Hash]:
        """Forget the failure; returns how many bytes to skip and a hasher to check them."""
        self._error = None
        return self.received, self.spec.digest.hasher()

    def check_prefix(self, check: hashlib._Hash, skipped: int) -> None:
        """Compare the restarted stream's first bytes with those already handed out."""
        prefix = self._hasher.copy().digest() if self._hasher is not None else None
        if skipped != self.received or (prefix is not None and check.digest() != prefix):
            self._error = BlobVerificationError(
                self.spec.digest, "the source changed while resuming an interrupted transfer"
            )
            raise self._error

    def failure(self) -> Optional[BaseException]:
        """The error recorded so far (before size and digest are checked)."""
        return self._error
