"""Telling "the image does not exist" from "the image could not be looked at". No I/O.

skopeo has no error code for a missing image (protocol 0.2.8 codes it "other", like a
permission problem), so the text of its error is all there is. Which texts mean "missing"
depends on the transport: "no such file or directory" means a missing layout when it names
``index.json``, but a damaged one when it names a blob. The texts below were collected from
skopeo 1.9.3, 1.18 and 1.22 by tests/test_not_found.py; docs/transports.md lists them.
"""

from __future__ import annotations

import re
from typing import Dict, Optional, Pattern

# What every transport may say: registries, the OCI layout index, containers-storage, the
# docker daemon. None of these texts can come from a failure to reach or read the store.
_ANY = re.compile(
    r"manifest unknown|name unknown|repository name not known"
    r"|no descriptor found for reference"
    r"|identifier is not an image|does not resolve to an image ID|image not known"
    r"|no such image",
    re.IGNORECASE,
)

# Per transport: a missing file or archive, in the words each release uses.
_BY_TRANSPORT: Dict[str, Pattern[str]] = {
    # the layout directory (or its index.json) is not there
    "oci": re.compile(r"index\.json: no such file or directory"),
    # 1.9.3: "creating temp directory: open F: no such file ..."; 1.18+: "archive file not found"
    "oci-archive": re.compile(
        r"archive file not found|creating temp directory: open .*: no such file or directory"
    ),
    # the archive is not there; a tag (or @N) it does not hold (reported by GetManifest)
    "docker-archive": re.compile(
        r'opening file ".*": open .*: no such file or directory'
        r'|Tag ".*" not found|Invalid source index @\d+, only \d+ manifest'
    ),
    # dir: opens without looking; the first read finds no manifest.json
    "dir": re.compile(r"manifest\.json: no such file or directory"),
    # list-tags on 1.9.3 for an unknown repository
    "docker": re.compile(r"fetching tags list: invalid status code from registry 404"),
}

#: Transports whose OpenImage succeeds for an image that is not there: the first read fails.
LAZY_TRANSPORTS = frozenset({"dir", "docker-archive"})


def image_not_found(message: str, transport: Optional[str] = None) -> bool:
    """Whether skopeo's ``message`` says the image does not exist, for ``transport``.

    With no transport, only the texts every transport shares are recognised.
    """
    if _ANY.search(message) is not None:
        return True
    pattern = _BY_TRANSPORT.get(transport or "")
    return pattern is not None and pattern.search(message) is not None


__all__ = ["LAZY_TRANSPORTS", "image_not_found"]
