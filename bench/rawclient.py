"""A bare client of the image proxy: raw socket calls, no abstraction, no checks.

It is the yardstick for one proxy: whatever the real client spends on top of this is its
own overhead. It does exactly what the benchmark's job needs (Initialize, OpenImage,
GetManifest, GetFullConfig, CloseImage, FinishPipe) in straight-line code, and parses the
manifest and config with ``json.loads`` as any caller would.
"""

from __future__ import annotations

import array
import json
import os
import socket
import subprocess
from typing import Any, List, Sequence, Tuple

_ANCILLARY = socket.CMSG_SPACE(4 * array.array("i").itemsize)


class BareProxy:
    """One skopeo proxy, driven by hand."""

    def __init__(self, skopeo: Sequence[str], image_flags: Sequence[str] = ()) -> None:
        self.sock, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.proc = subprocess.Popen(
            [*skopeo, "experimental-image-proxy", *image_flags],
            stdin=theirs.fileno(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        theirs.close()
        self.buf = bytearray(1 << 20)
        self.version = self.call("Initialize")[0]

    def call(self, method: str, *args: Any) -> Tuple[Any, int, List[int]]:
        self.sock.send(json.dumps({"method": method, "args": list(args)}).encode())
        n, ancdata, _, _ = self.sock.recvmsg_into([self.buf], _ANCILLARY)
        fds: List[int] = []
        for _, _, data in ancdata:
            fds.extend(array.array("i", data))
        reply = json.loads(self.buf[:n])
        if not reply["success"]:
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply["value"], reply["pipeid"], fds

    def piped(self, method: str, *args: Any) -> bytes:
        _, pipeid, fds = self.call(method, *args)
        # FinishPipe first: the pipe reaches EOF only once the proxy handles it
        self.sock.send(json.dumps({"method": "FinishPipe", "args": [pipeid]}).encode())
        chunks = []
        while True:
            chunk = os.read(fds[0], 1 << 20)
            if not chunk:
                break
            chunks.append(chunk)
        os.close(fds[0])
        n = self.sock.recv_into(self.buf)
        if not json.loads(self.buf[:n])["success"]:
            raise RuntimeError(f"FinishPipe of {method} failed")
        return b"".join(chunks)

    def inspect(self, ref: str) -> Tuple[Any, Any]:
        """open + manifest + config + close, parsed."""
        image = self.call("OpenImage", ref)[0]
        manifest = json.loads(self.piped("GetManifest", image))
        config = json.loads(self.piped("GetFullConfig", image))
        self.call("CloseImage", image)
        return manifest, config

    def close(self) -> None:
        self.sock.send(json.dumps({"method": "Shutdown", "args": []}).encode())
        self.proc.wait()
        self.sock.close()
