"""Content digests: ``Digest``, a validated ``algorithm:hex`` string.

Also the small helpers that quote and name bad input in error messages, shared with
the models.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any, Mapping, Union

from ._errors import ConfigurationError

# The algorithms the OCI spec registers, with the length of their hex encoding.
_HEX_LENGTHS: dict[str, int] = {"sha256": 64, "sha384": 96, "sha512": 128}
_LOWER_HEX = re.compile(r"[0-9a-f]+")


def _quote(text: str, limit: int = 80) -> str:
    """Quotes a value for an error message, cut short so a huge input cannot flood logs."""
    return repr(text) if len(text) <= limit else repr(text[:limit]) + "..."


_KINDS: tuple[tuple[Any, str], ...] = (
    (bool, "a boolean"),  # before int: bool is an int subclass
    (int, "an integer"),
    (float, "a number"),
    (str, "a string"),
    (Mapping, "an object"),
    ((list, tuple), "an array"),
)


def _kind(value: object) -> str:
    """Names the JSON type of a value, for error messages."""
    if value is None:
        return "null"
    return next((name for t, name in _KINDS if isinstance(value, t)), type(value).__name__)


def _type_error(path: str, expected: str, value: object) -> ConfigurationError:
    return ConfigurationError(f"{path}: expected {expected}, got {_kind(value)}")


class Digest(str):
    """A content digest, ``"algorithm:hex"``, validated on construction.

    It is a ``str``, so it compares, hashes and serialises like its text::

        >>> d = Digest.of(b"hello")
        >>> d.algorithm, d.hex[:12]
        ('sha256', '2cf24dba5fb0')
        >>> d == "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
        True

    Only sha256, sha384 and sha512 with the exact number of lowercase hex digits are
    accepted; anything else raises :class:`ConfigurationError`.
    """

    __slots__ = ()

    def __new__(cls, value: str) -> Digest:
        if not isinstance(value, str):
            raise ConfigurationError(f"a digest must be a string, got {_kind(value)}")
        algorithm, sep, hex_ = value.partition(":")
        length = _HEX_LENGTHS.get(algorithm)
        if not sep or length is None:
            raise ConfigurationError(
                f"invalid digest {_quote(value)}: expected sha256, sha384 or sha512,"
                " a colon and lowercase hex digits"
            )
        if len(hex_) != length or not _LOWER_HEX.fullmatch(hex_):
            raise ConfigurationError(
                f"invalid digest {_quote(value)}: {algorithm} needs exactly {length}"
                " lowercase hex digits"
            )
        return super().__new__(cls, value)

    @classmethod
    def of(cls, data: Union[bytes, bytearray, memoryview], algorithm: str = "sha256") -> Digest:
        """Returns the digest of ``data`` computed with ``algorithm``."""
        if algorithm not in _HEX_LENGTHS:
            raise ConfigurationError(
                f"unsupported digest algorithm {_quote(str(algorithm))};"
                f" expected one of {', '.join(_HEX_LENGTHS)}"
            )
        return cls(f"{algorithm}:{hashlib.new(algorithm, data).hexdigest()}")

    @classmethod
    def parse(cls, value: Union[str, Digest]) -> Digest:
        """Returns ``value`` if it already is a Digest, else validates it into one."""
        return value if isinstance(value, Digest) else cls(value)

    @property
    def algorithm(self) -> str:
        """The algorithm name, for example ``"sha256"``."""
        return self.partition(":")[0]

    @property
    def hex(self) -> str:
        """The hex-encoded hash value (the part after the colon)."""
        return self.partition(":")[2]

    def hasher(self) -> hashlib._Hash:
        """Returns a new, empty hashlib object for this digest's algorithm (never raises: a
        Digest only holds algorithms hashlib has)."""
        return hashlib.new(self.algorithm)

    def __repr__(self) -> str:
        return f"Digest({str.__repr__(self)})"
