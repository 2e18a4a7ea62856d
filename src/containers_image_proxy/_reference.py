"""Image references: ``transport:name`` strings such as ``docker://quay.io/fedora/fedora:40``.

skopeo (containers/image) does the real parsing when an image is opened. This module
only rejects what would certainly fail there, so that such a mistake is reported before
any process is started, with the list of transports to choose from.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

from ._digest import _quote
from ._errors import ConfigurationError

TRANSPORTS = frozenset(
    {
        "containers-storage",
        "dir",
        "docker",
        "docker-archive",
        "docker-daemon",
        "oci",
        "oci-archive",
        "ostree",
        "sif",
        "tarball",
    }
)
"""The transports containers/image knows (not every skopeo build enables all of them)."""

# Far longer than any real reference, short enough to keep errors and requests small.
_MAX_LENGTH = 4096


def _check_text(text: str) -> None:
    if len(text) > _MAX_LENGTH:
        raise ConfigurationError(
            f"image reference {_quote(text)} is longer than {_MAX_LENGTH} characters"
        )
    if "\0" in text:
        raise ConfigurationError(f"image reference {_quote(text)} contains a NUL character")


def _known() -> str:
    return ", ".join(sorted(TRANSPORTS))


@dataclass(frozen=True)
class ImageReference:
    """An image reference: a transport and the transport-specific name.

    ``name`` is everything after the first colon; for ``docker`` it starts with ``//``::

        >>> ref = ImageReference.parse("docker://quay.io/fedora/fedora:40")
        >>> ref.transport, ref.name, ref.registry_name, ref.tag
        ('docker', '//quay.io/fedora/fedora:40', 'quay.io/fedora/fedora', '40')
        >>> str(ref)
        'docker://quay.io/fedora/fedora:40'

    Construction validates like :meth:`parse`; invalid input raises ConfigurationError.
    """

    transport: str
    name: str

    def __post_init__(self) -> None:
        transport, name = self.transport, self.name
        if not isinstance(transport, str) or not isinstance(name, str):
            raise ConfigurationError("an image reference's transport and name must be strings")
        text = f"{transport}:{name}"
        _check_text(text)
        if transport not in TRANSPORTS:
            raise ConfigurationError(
                f"unknown transport {_quote(transport)} in image reference {_quote(text)};"
                f" known transports: {_known()}"
            )
        if not name:
            raise ConfigurationError(f"image reference {_quote(text)} has an empty name")
        if transport == "docker" and (not name.startswith("//") or len(name) == 2):
            raise ConfigurationError(
                f"image reference {_quote(text)}: the docker transport needs"
                " 'docker://' followed by an image name, as in 'docker://quay.io/org/image:tag'"
            )

    @classmethod
    def parse(cls, reference: str) -> ImageReference:
        """Splits ``"transport:name"`` at the first colon and validates both parts.

        A string without a known transport raises ConfigurationError naming the known
        ones; for something that looks like a registry image it suggests ``docker://``.
        """
        if not isinstance(reference, str):
            raise ConfigurationError(
                f"an image reference must be a string, got {type(reference).__name__}"
            )
        _check_text(reference)
        transport, sep, name = reference.partition(":")
        if not sep or transport not in TRANSPORTS:
            what = "has no transport" if not sep else f"has unknown transport {_quote(transport)}"
            hint = ""
            if not reference.startswith(("/", ".")):
                hint = f" (for a registry image: {_quote('docker://' + reference)})"
            raise ConfigurationError(
                f"image reference {_quote(reference)} {what}; expected TRANSPORT:NAME"
                f" with one of: {_known()}{hint}"
            )
        return cls(transport, name)

    def __str__(self) -> str:
        return f"{self.transport}:{self.name}"

    def _docker_parts(self) -> Optional[tuple[str, Optional[str], Optional[str]]]:
        """Splits a docker name into repository, tag and digest (a light, textual split)."""
        if self.transport != "docker":
            return None
        rest, _, digest = self.name[2:].partition("@")
        # A colon after the last slash starts the tag; one before it belongs to a port.
        slash = rest.rfind("/")
        colon = rest.rfind(":")
        tag: Optional[str] = None
        if colon > slash:
            rest, tag = rest[:colon], rest[colon + 1 :]
        return rest, tag, (digest or None)

    @property
    def registry_name(self) -> Optional[str]:
        """For ``docker``: the image name without tag or digest (``quay.io/org/image``)."""
        parts = self._docker_parts()
        return parts[0] if parts else None

    @property
    def tag(self) -> Optional[str]:
        """For ``docker``: the tag, if the reference has one."""
        parts = self._docker_parts()
        return parts[1] if parts else None

    @property
    def digest(self) -> Optional[str]:
        """For ``docker``: the ``algorithm:hex`` digest after ``@``, if any (not validated)."""
        parts = self._docker_parts()
        return parts[2] if parts else None


def as_reference(reference: Union[ImageReference, str]) -> ImageReference:
    """Returns ``reference`` if it is an ImageReference, else parses it."""
    if isinstance(reference, ImageReference):
        return reference
    return ImageReference.parse(reference)
