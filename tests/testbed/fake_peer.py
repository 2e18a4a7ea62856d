"""A SCRIPTED FAKE PEER, not skopeo.

Used only for faults that real skopeo never produces (malformed replies, wrong fd counts,
huge values): the one place where a fake is right. It is started in place of skopeo
(``ProxyConfig(skopeo=(sys.executable, __file__))``) and serves its standard input as the
proxy's socket: it answers ``Initialize`` with ``FAKE_PEER_VERSION`` (default 0.2.8), then
answers each later request with the next entry of the JSON list in ``FAKE_PEER_SCRIPT``:
``{"raw": "<text sent as the reply>", "fds": N, "payload": "<written into each pipe>"}``.
FinishPipe always succeeds. When the script runs out it answers with an error;
``Shutdown`` makes it exit 0.
"""

from __future__ import annotations

import json
import os
import socket
import sys


def main() -> None:
    sock = socket.socket(fileno=0)
    version = os.environ.get("FAKE_PEER_VERSION", "0.2.8")
    script = json.loads(os.environ.get("FAKE_PEER_SCRIPT", "[]"))
    while True:
        data = sock.recv(65536)
        if not data:
            return
        request = json.loads(data)
        method = request["method"]
        if method == "Shutdown":
            return
        if method == "Initialize":
            sock.send(json.dumps({"success": True, "value": version, "pipeid": 0}).encode())
            continue
        if method == "FinishPipe":
            sock.send(json.dumps({"success": True, "value": None, "pipeid": 0}).encode())
            continue
        if not script:
            reply = {"success": False, "error": f"fake peer: no script for {method}", "pipeid": 0}
            sock.send(json.dumps(reply).encode())
            continue
        step = script.pop(0)
        fds = []
        for _ in range(step.get("fds", 0)):
            r, w = os.pipe()
            os.write(w, step.get("payload", "").encode())
            os.close(w)
            fds.append(r)
        sock.sendmsg(
            [step["raw"].encode()],
            [(socket.SOL_SOCKET, socket.SCM_RIGHTS, bytes(memoryview_of(fds)))] if fds else [],
        )
        for fd in fds:
            os.close(fd)


def memoryview_of(fds: list[int]) -> bytes:
    import array

    return array.array("i", fds).tobytes()


if __name__ == "__main__":
    try:
        main()
    except (BrokenPipeError, ConnectionResetError):
        pass
    sys.exit(0)
