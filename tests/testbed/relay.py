"""A TCP relay on loopback that damages registry traffic on purpose.

It sits between skopeo and a local registry (point the image reference at ``relay.host``
instead of the registry's) and forwards bytes both ways, except that it can:

- cut a connection after ``cut_after_bytes`` bytes of a blob response (status line and
  headers included), ``cut_times`` times in all; later blob responses pass untouched, so a
  client that retries can succeed;
- close the cut connection with a reset (``reset=True``: SO_LINGER 0, the peer sees
  ECONNRESET) or with a plain FIN (the peer sees an early EOF);
- delay every chunk sent towards the registry by ``delay_ms``: one added latency per
  request, that is per round trip.

Only HTTP/1.1 without TLS is understood (the plain registry flavour): a blob response is
the answer to a ``GET /v2/<name>/blobs/<digest>`` request line seen on the same connection.
Go's HTTP client does not pipeline, so requests and responses on one connection alternate
and the last request line seen names the response in flight.

Everything runs in daemon threads of the test process: one accepting, two per connection.
``close()`` closes every socket and joins every thread, so a test using the ``no_leaks``
fixture sees no descriptor left behind.
"""

from __future__ import annotations

import contextlib
import re
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Optional

_BLOB_REQUEST = re.compile(rb"GET (/v2/\S+/blobs/\S+) HTTP/1\.[01]\r\n")
_CHUNK = 65536


@dataclass
class RelayStats:
    """What the relay saw and did, for tests to assert on and report."""

    connections: int = 0
    blob_requests: list[str] = field(default_factory=list)
    cuts: int = 0
    bytes_to_client: int = 0


class _Connection:
    """One client connection and its upstream twin."""

    def __init__(self, client: socket.socket, upstream: socket.socket) -> None:
        self.client = client
        self.upstream = upstream
        self.lock = threading.Lock()
        # Bytes of the current blob response forwarded so far; None when the response in
        # flight is not a blob (or is one that is let through).
        self.blob_sent: Optional[int] = None
        self.cut = False
        self.reset = False
        self._pumps_left = 2

    def pump_done(self) -> bool:
        """Called by each pump thread as it ends; True for the last one, which closes."""
        with self.lock:
            self._pumps_left -= 1
            return self._pumps_left == 0

    def sever(self, reset: bool) -> None:
        """Cut both sides at once and wake both pump threads."""
        with self.lock:
            if self.cut:
                return
            self.cut = True
            self.reset = reset
        for sock in (self.client, self.upstream):
            with contextlib.suppress(OSError):
                if reset:
                    # An abortive close: linger 0 turns the close() that the last pump
                    # thread does into an RST. Only SHUT_RD here (it wakes the pumps),
                    # since SHUT_WR would send a FIN before the RST.
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    sock.shutdown(socket.SHUT_RD)
                else:
                    sock.shutdown(socket.SHUT_RDWR)


class Relay:
    """Forward ``127.0.0.1:<port>`` to ``target`` (``host:port``), damaging blob responses.

    Use as a context manager, or call :meth:`start` and :meth:`close`.
    """

    def __init__(
        self,
        target: str,
        *,
        cut_after_bytes: Optional[int] = None,
        cut_times: int = 1,
        reset: bool = False,
        delay_ms: float = 0,
        blob_filter: Optional[str] = None,
    ) -> None:
        host, _, port = target.rpartition(":")
        self.target = (host, int(port))
        self.cut_after_bytes = cut_after_bytes
        self.cut_times = cut_times
        self.reset = reset
        self.delay_ms = delay_ms
        # Only blob requests whose path contains this text are cut (None: all of them).
        self.blob_filter = blob_filter
        self.stats = RelayStats()
        self.port = 0
        self._listener: Optional[socket.socket] = None
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._sockets: list[socket.socket] = []
        self._connections: list[_Connection] = []
        self._closing = False

    @property
    def host(self) -> str:
        """``127.0.0.1:PORT``: what goes into image references in place of the registry."""
        return f"127.0.0.1:{self.port}"

    def __enter__(self) -> Relay:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        self._listener = listener
        self.port = listener.getsockname()[1]
        self._spawn(self._accept_loop, "relay-accept")

    def close(self) -> None:
        """Stop accepting, cut every connection, join every thread. Idempotent."""
        with self._lock:
            self._closing = True
            connections = list(self._connections)
        if self._listener is not None:
            with contextlib.suppress(OSError):
                # Wakes the accept() blocked in the accepting thread.
                self._listener.shutdown(socket.SHUT_RDWR)
        for conn in connections:
            conn.sever(reset=False)
        for thread in list(self._threads):
            thread.join(timeout=10)
        alive = [t.name for t in self._threads if t.is_alive()]
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            sock.close()
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        if alive:
            raise RuntimeError(f"relay threads did not stop: {alive}")

    # --- internals ----------------------------------------------------------------------

    def _spawn(self, target: Callable[..., None], name: str, *args: object) -> None:
        thread = threading.Thread(target=target, args=args, name=name, daemon=True)
        with self._lock:
            self._threads.append(thread)
        thread.start()

    def _accept_loop(self) -> None:
        assert self._listener is not None
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # the listener was shut down
            with self._lock:
                self._sockets.append(client)
                if self._closing:
                    return
            try:
                upstream = socket.create_connection(self.target, timeout=10)
                upstream.settimeout(None)
            except OSError:
                # The registry is gone: the client sees its connection closed.
                with contextlib.suppress(OSError):
                    client.shutdown(socket.SHUT_RDWR)
                continue
            conn = _Connection(client, upstream)
            with self._lock:
                self._sockets.append(upstream)
                self._connections.append(conn)
                self.stats.connections += 1
                n = self.stats.connections
            self._spawn(self._pump_requests, f"relay-{n}-up", conn)
            self._spawn(self._pump_responses, f"relay-{n}-down", conn)

    def _should_cut(self, path: str) -> bool:
        """Whether to count the response to this blob request (the cut itself may not come)."""
        if self.cut_after_bytes is None:
            return False
        if self.blob_filter is not None and self.blob_filter not in path:
            return False
        with self._lock:
            return self.stats.cuts < self.cut_times

    def _take_cut(self) -> bool:
        """Claim one of the ``cut_times`` cuts, at the moment of cutting.

        Checked here again, not only when the request was seen: responses on two
        connections may be in flight at once, and only ``cut_times`` of them may be cut.
        """
        with self._lock:
            if self.stats.cuts >= self.cut_times:
                return False
            self.stats.cuts += 1
            return True

    def _pump_requests(self, conn: _Connection) -> None:
        """Client to registry: notes blob requests, adds the delay."""
        try:
            while True:
                data = conn.client.recv(_CHUNK)
                if not data:
                    break
                match = _BLOB_REQUEST.search(data)
                if match:
                    path = match.group(1).decode(errors="replace")
                    with self._lock:
                        self.stats.blob_requests.append(path)
                    with conn.lock:
                        conn.blob_sent = 0 if self._should_cut(path) else None
                elif data.startswith((b"GET ", b"HEAD ", b"POST ", b"PUT ", b"PATCH ")):
                    with conn.lock:
                        conn.blob_sent = None
                if self.delay_ms:
                    time.sleep(self.delay_ms / 1000)
                conn.upstream.sendall(data)
        except OSError:
            pass
        finally:
            self._pump_ended(conn, conn.upstream)

    def _pump_responses(self, conn: _Connection) -> None:
        """Registry to client: counts blob response bytes and cuts where asked."""
        try:
            while True:
                data = conn.upstream.recv(_CHUNK)
                if not data:
                    break
                with conn.lock:
                    sent = conn.blob_sent
                limit = self.cut_after_bytes
                if (
                    sent is not None
                    and limit is not None
                    and sent + len(data) >= limit
                    and self._take_cut()
                ):
                    head = data[: max(0, limit - sent)]
                    conn.client.sendall(head)
                    with self._lock:
                        self.stats.bytes_to_client += len(head)
                    conn.sever(self.reset)
                    return
                conn.client.sendall(data)
                with self._lock:
                    self.stats.bytes_to_client += len(data)
                if sent is not None:
                    with conn.lock:
                        if conn.blob_sent is not None:
                            conn.blob_sent += len(data)
        except OSError:
            pass
        finally:
            self._pump_ended(conn, conn.client)

    def _pump_ended(self, conn: _Connection, towards: socket.socket) -> None:
        # Pass the end of one direction on (half close), unless the connection was cut: a
        # FIN would then arrive before the intended RST.
        if not conn.cut:
            with contextlib.suppress(OSError):
                towards.shutdown(socket.SHUT_WR)
        if conn.pump_done():
            # Closed here, as soon as both directions are over, not at the relay's close():
            # the client must see the cut (FIN or RST) now, and a socket still open in a
            # pump thread must not be closed under it (its number could be reused).
            with self._lock:
                for sock in (conn.client, conn.upstream):
                    if sock in self._sockets:
                        self._sockets.remove(sock)
                    sock.close()
