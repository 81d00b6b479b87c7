"""An attacker on the same network as a swarm, for the attack tests (issue 25).

It speaks only public protocols, built here on raw sockets: the tracker's HTTP API as README.md
documents it, and the BitTorrent-framed peer wire through the codec (``peerwire.messages``,
``peerwire.decoder``). It holds no cluster secret. Its traffic leaves from ``ATTACKER_IP``
(127.0.0.2, another address of loopback), so to the tracker and to peers it is another host.

* ``forged_manifest``: a task manifest for content of the attacker's choosing.
* ``ForgedSeed``: ``PUT``s such a manifest before anyone else, announces itself as a seed of the
  task (``left=0``, ``df_have`` all ones) every second, serves the forged content over the peer
  wire (BEP 3 handshake, BEP 6 have-all or a full bitfield, unchoke, a ``piece`` for every
  ``request``; the fast and large-block reserved bits as the codec defines them) and, when
  asked, dials every peer ``/stats`` lists and offers them the same.
* ``request``: one raw HTTP request from the attacker's address (replays go through it).
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import os
import socket
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from typing import Any

from dfget.identity import task_id_for
from peerwire import messages as m
from peerwire.bitfield import Bitfield
from peerwire.decoder import NEED_DATA, Decoder
from peerwire.ids import PeerId, TaskId
from peerwire.layout import choose_piece_length

ATTACKER_IP = "127.0.0.2"


@dataclass(frozen=True)
class Answer:
    status: int
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def request(
    base_url: str,
    method: str,
    target: str,
    *,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    source: str = ATTACKER_IP,
) -> Answer:
    """One HTTP request sent from ``source``; the target goes on the wire byte for byte."""
    parts = urllib.parse.urlsplit(base_url)
    assert parts.hostname is not None and parts.port is not None
    connection = http.client.HTTPConnection(
        parts.hostname, parts.port, timeout=10, source_address=(source, 0)
    )
    try:
        connection.request(method, target, body=body, headers=headers or {})
        response = connection.getresponse()
        return Answer(response.status, response.read())
    finally:
        connection.close()


def bdecode(data: bytes) -> Any:
    """Decode one bencoded value (BEP 3): enough to read a tracker's answer."""

    def value(at: int) -> tuple[Any, int]:
        kind = data[at : at + 1]
        if kind == b"i":
            end = data.index(b"e", at)
            return int(data[at + 1 : end]), end + 1
        if kind in (b"l", b"d"):
            items: list[Any] = []
            at += 1
            while data[at : at + 1] != b"e":
                item, at = value(at)
                items.append(item)
            if kind == b"l":
                return items, at + 1
            return dict(zip(items[::2], items[1::2], strict=True)), at + 1
        colon = data.index(b":", at)
        length = int(data[at:colon])
        return data[colon + 1 : colon + 1 + length], colon + 1 + length

    decoded, end = value(0)
    if end != len(data):
        raise ValueError("trailing bytes after the bencoded value")
    return decoded


def failure_reason(answer: Answer) -> str | None:
    """The ``failure reason`` of an announce answer (None: the tracker accepted it)."""
    document = bdecode(answer.body)
    reason = document.get(b"failure reason") if isinstance(document, dict) else None
    return None if reason is None else reason.decode(errors="replace")


def piece_digests(content: bytes, piece_length: int) -> list[str]:
    return [
        hashlib.sha256(content[i : i + piece_length]).hexdigest()
        for i in range(0, len(content), piece_length)
    ]


def forged_manifest(url: str, content: bytes, *, validator: str | None) -> dict[str, Any]:
    """The manifest an honest first peer would publish for ``url``, made for ``content``: the
    piece length dfget picks for that length, every piece's sha256, the given origin validator."""
    piece_length = choose_piece_length(len(content))
    return {
        "url": url,
        "total_length": len(content),
        "piece_length": piece_length,
        "piece_sha256": piece_digests(content, piece_length),
        "validator": validator,
        "ranges": True,
    }


def origin_validator(url: str) -> str | None:
    """The origin's ETag, as anyone who can reach the origin can read it."""
    parts = urllib.parse.urlsplit(url)
    assert parts.hostname is not None
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    try:
        connection.request("HEAD", parts.path)
        response = connection.getresponse()
        response.read()
        return response.getheader("ETag")
    finally:
        connection.close()


@dataclass
class ForgedSeed:
    """A hostile seed of ``url``'s task serving ``content``; see the module docstring.

    ``start()`` runs it in threads of the calling process; ``stop()`` closes everything."""

    tracker_url: str
    url: str
    content: bytes
    manifest: dict[str, Any]
    #: Also dial every peer of the task that ``/stats`` lists (it is open to anyone).
    dial_listed_peers: bool = False
    peer_id: PeerId = field(default_factory=lambda: PeerId.generate(b"-EV0001-"))
    #: What the tracker answered: the ``PUT`` status, the last announce's failure reason.
    put_status: int = 0
    announce_failure: str | None = None
    announces: int = 0
    handshakes: int = 0
    pieces_sent: int = 0

    def __post_init__(self) -> None:
        self.task_id: TaskId = task_id_for(self.url)
        self.piece_length = int(self.manifest["piece_length"])
        self.num_pieces = len(self.manifest["piece_sha256"])
        self._listener = socket.create_server((ATTACKER_IP, 0))
        self._listener.settimeout(0.2)
        self.port: int = self._listener.getsockname()[1]
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._dialled: set[str] = set()

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        body = json.dumps(self.manifest).encode()
        self.put_status = request(
            self.tracker_url, "PUT", f"/tasks/{self.task_id.hex()}", body=body
        ).status
        self._announce("started")
        loops = [self._accept_loop, self._announce_loop]
        if self.dial_listed_peers:
            loops.append(self._dial_loop)
        for loop in loops:
            self._spawn(loop)

    def stop(self) -> None:
        self._stop.set()
        self._listener.close()
        with self._lock:
            for sock in self._sockets:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
        for thread in self._threads:
            thread.join(timeout=5)
        with contextlib.suppress(OSError, ValueError, IndexError):
            self._announce("stopped")

    def __enter__(self) -> ForgedSeed:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _spawn(self, target: Any, *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        with self._lock:
            self._threads.append(thread)
        thread.start()

    # -- the tracker ------------------------------------------------------------------------

    def _announce(self, event: str = "") -> None:
        query: dict[str, bytes] = {
            "info_hash": self.task_id.raw,
            "peer_id": self.peer_id.raw,
            "port": str(self.port).encode(),
            "uploaded": b"0",
            "downloaded": b"0",
            "left": b"0",
            "compact": b"1",
            "numwant": b"50",
            "df_source": b"0",
            "df_have": Bitfield.full(self.num_pieces).to_bytes(),
        }
        if event:
            query["event"] = event.encode()
        target = "/announce?" + "&".join(
            f"{key}={urllib.parse.quote_from_bytes(value, safe='')}" for key, value in query.items()
        )
        self.announce_failure = failure_reason(request(self.tracker_url, "GET", target))
        self.announces += 1

    def _announce_loop(self) -> None:
        while not self._stop.wait(1.0):
            with contextlib.suppress(OSError, ValueError, IndexError):
                self._announce()

    def _dial_loop(self) -> None:
        while not self._stop.wait(0.3):
            try:
                stats = request(self.tracker_url, "GET", f"/stats?task={self.task_id.hex()}")
                tasks = stats.json()["tasks"] if stats.status == 200 else []
            except (OSError, ValueError):
                continue
            for peer in tasks[0]["peer_list"] if tasks else ():
                address = peer["address"]
                if address in self._dialled or peer["id"] == self.peer_id.hex():
                    continue
                self._dialled.add(address)
                host, _, port = address.rpartition(":")
                try:
                    sock = socket.create_connection(
                        (host, int(port)), timeout=5, source_address=(ATTACKER_IP, 0)
                    )
                except OSError:
                    continue
                self._spawn(self._serve, sock, True)

    # -- the peer wire ----------------------------------------------------------------------

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                sock, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self._spawn(self._serve, sock, False)

    def _handshake(self, remote: m.Handshake | None) -> bytes:
        bits = [m.FAST_EXTENSION_BIT, m.LARGE_BLOCKS_BIT]
        if remote is None or remote.supports(m.AUTH_BIT):
            bits.append(m.AUTH_BIT)  # pretend: it cannot prove the secret
        return m.encode_handshake(m.Handshake(m.reserved_with(*bits), self.task_id, self.peer_id))

    def _serve(self, sock: socket.socket, dialled: bool) -> None:
        """One connection: offer every piece, answer every request with forged bytes."""
        with self._lock:
            self._sockets.append(sock)
        sock.settimeout(30)
        decoder = Decoder()
        try:
            if dialled:
                sock.sendall(self._handshake(None))
            while not self._stop.is_set() and (data := sock.recv(65536)):
                decoder.receive_data(data)
                while (event := decoder.next_event()) is not NEED_DATA:
                    sock.sendall(self._answer(event, dialled))
        except Exception:  # a hostile peer just drops a connection that fails
            pass
        finally:
            sock.close()

    def _answer(self, event: m.Event, dialled: bool) -> bytes:
        if isinstance(event, m.Handshake):
            self.handshakes += 1
            out = b"" if dialled else self._handshake(event)
            if event.supports(m.AUTH_BIT):
                out += m.encode(m.AuthChallenge(os.urandom(m.AUTH_NONCE_BYTES)))
            if event.supports(m.FAST_EXTENSION_BIT):
                out += m.encode(m.HaveAll())
            else:
                out += m.encode(m.Bitfield(Bitfield.full(self.num_pieces).to_bytes()))
            return out + m.encode(m.Unchoke())
        if isinstance(event, m.AuthChallenge):
            return m.encode(m.AuthProof(os.urandom(m.AUTH_PROOF_BYTES)))
        if isinstance(event, m.Request):
            start = event.index * self.piece_length + event.begin
            if not 0 <= event.index < self.num_pieces or event.length > (1 << 20):
                return b""
            self.pieces_sent += 1
            return m.encode(
                m.Piece(event.index, event.begin, self.content[start : start + event.length])
            )
        return b""


def wait_until(predicate: Any, timeout_s: float = 30.0, what: str = "condition") -> None:
    """Poll ``predicate`` every 50 ms until it is true; AssertionError after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(0.05)
