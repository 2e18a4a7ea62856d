"""A TCP relay on loopback that adds latency, to stand in for a remote registry.

Every chunk is forwarded ``delay`` seconds after it arrived, in each direction, so a request
and its answer cost ``2 * delay`` more than on loopback. Bandwidth is not limited: chunks are
queued with their due time (a delay line), so a chunk never waits for the one before it to be
sent on top of its own delay. Threads, one per direction and side: simple, and the
benchmark's connections are few.
"""

from __future__ import annotations

import collections
import socket
import threading
import time
from typing import Deque, List, Optional, Tuple


class _DelayLine:
    """One direction of one connection: read from ``src``, write to ``dst`` later."""

    def __init__(self, src: socket.socket, dst: socket.socket, delay: float) -> None:
        self.src, self.dst, self.delay = src, dst, delay
        self.queue: Deque[Tuple[float, Optional[bytes]]] = collections.deque()
        self.cond = threading.Condition()
        self.threads = [
            threading.Thread(target=self._read, daemon=True),
            threading.Thread(target=self._write, daemon=True),
        ]
        for t in self.threads:
            t.start()

    def _read(self) -> None:
        while True:
            try:
                data: Optional[bytes] = self.src.recv(1 << 16)
            except OSError:
                data = b""
            due = time.monotonic() + self.delay
            with self.cond:
                self.queue.append((due, data or None))  # None: the end, delayed like data
                self.cond.notify()
            if not data:
                return

    def _write(self) -> None:
        while True:
            with self.cond:
                while not self.queue:
                    self.cond.wait()
                due, data = self.queue.popleft()
            pause = due - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            try:
                if data is None:
                    self.dst.shutdown(socket.SHUT_WR)
                    return
                self.dst.sendall(data)
            except OSError:
                return

    def join(self) -> None:
        for t in self.threads:
            t.join()


class DelayRelay:
    """Listens on 127.0.0.1 (``port``) and relays to ``upstream`` with ``delay`` each way.

    Example::

        with DelayRelay(("127.0.0.1", registry_port), delay=0.010) as relay:
            ref = f"docker://127.0.0.1:{relay.port}/repo:tag"
    """

    def __init__(self, upstream: Tuple[str, int], delay: float = 0.010) -> None:
        self.upstream = upstream
        self.delay = delay
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._sockets: List[socket.socket] = []
        self._closed = False
        self.connections = 0
        self._accepter = threading.Thread(target=self._accept, daemon=True)

    def __enter__(self) -> DelayRelay:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        self._accepter.start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        try:
            # connecting costs a round trip on a real network too
            time.sleep(2 * self.delay)
            upstream = socket.create_connection(self.upstream)
        except OSError:
            client.close()
            return
        for s in (client, upstream):
            # without this, Nagle's algorithm adds its own delays to small writes
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self._lock:
            if self._closed:
                client.close()
                upstream.close()
                return
            self._sockets += [client, upstream]
            self.connections += 1
        lines = [_DelayLine(client, upstream, self.delay), _DelayLine(upstream, client, self.delay)]
        for line in lines:
            line.join()
        with self._lock:
            for s in (client, upstream):
                if s in self._sockets:
                    self._sockets.remove(s)
                s.close()

    def stop(self) -> None:
        """Stop accepting and cut every connection."""
        with self._lock:
            self._closed = True
            sockets = list(self._sockets)
        self._listener.close()
        for s in sockets:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._accepter.join(timeout=5)
