"""A recording HTTP relay: what an eavesdropper on the path between a peer and its tracker sees.

``RecordingRelay(upstream_port)`` listens on 127.0.0.1 and forwards every byte both ways to the
upstream, unchanged (keep-alive included: it is a TCP forwarder). On the way up it also parses
the requests (request line, headers, a ``Content-Length`` body) and records them, so a test can
replay exactly what a real peer sent. Point a peer at ``relay.base_url`` instead of the tracker.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass


@dataclass(frozen=True)
class Recorded:
    """One request as it went over the wire."""

    method: str
    target: str
    headers: tuple[tuple[str, str], ...]
    body: bytes

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k.lower() == name.lower()), None)


class _Tap:
    """Parses the client-to-upstream byte stream into requests, whatever the read boundaries."""

    def __init__(self, record: list[Recorded], lock: threading.Lock) -> None:
        self._buffer = b""
        self._record = record
        self._lock = lock

    def feed(self, data: bytes) -> None:
        self._buffer += data
        while True:
            head_end = self._buffer.find(b"\r\n\r\n")
            if head_end < 0:
                return
            lines = self._buffer[:head_end].decode("latin-1").split("\r\n")
            method, target, _ = lines[0].split(" ", 2)
            headers = tuple(
                (name.strip(), value.strip())
                for name, _, value in (line.partition(":") for line in lines[1:])
            )
            length = int(next((v for k, v in headers if k.lower() == "content-length"), "0"))
            end = head_end + 4 + length
            if len(self._buffer) < end:
                return
            body = self._buffer[head_end + 4 : end]
            self._buffer = self._buffer[end:]
            with self._lock:
                self._record.append(Recorded(method, target, headers, body))


class RecordingRelay:
    def __init__(self, upstream_port: int, upstream_host: str = "127.0.0.1") -> None:
        self._upstream = (upstream_host, upstream_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)
        self._lock = threading.Lock()
        self._recorded: list[Recorded] = []
        self._sockets: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept_loop, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._listener.getsockname()[1]}"

    def requests(self, method: str | None = None, path: str | None = None) -> list[Recorded]:
        """The requests recorded so far (optionally only those of one method and path)."""
        with self._lock:
            found = list(self._recorded)
        return [
            r
            for r in found
            if (method is None or r.method == method)
            and (path is None or r.target.partition("?")[0] == path)
        ]

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._listener.close()
        with self._lock:
            for sock in self._sockets:
                sock.close()

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                upstream = socket.create_connection(self._upstream, timeout=10)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            client.settimeout(None)
            with self._lock:
                self._sockets += [client, upstream]
            tap = _Tap(self._recorded, self._lock)
            threading.Thread(target=_pump, args=(client, upstream, tap), daemon=True).start()
            threading.Thread(target=_pump, args=(upstream, client, None), daemon=True).start()


def _pump(source: socket.socket, sink: socket.socket, tap: _Tap | None) -> None:
    try:
        while data := source.recv(65536):
            if tap is not None:
                tap.feed(data)
            sink.sendall(data)
    except OSError:
        pass
    finally:
        for sock in (source, sink):
            with suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


@contextmanager
def recording_relay(upstream_port: int) -> Iterator[RecordingRelay]:
    relay = RecordingRelay(upstream_port)
    relay.start()
    try:
        yield relay
    finally:
        relay.close()
