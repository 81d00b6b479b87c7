"""``HttpTracker``: the tracker interface (``peerwire.coordination``) over HTTP to ``dftracker``.

One or more trackers, tried in turn: a tracker that cannot be reached (connection refused,
timeout, HTTP 5xx) is skipped and the next one asked; the last one that answered is asked first
next time. A tracker that answers with a bencoded ``failure reason`` has answered: that is
``TrackerRefused``, not a failover. Announces are BEP 3 queries with our ``df_*`` parameters;
manifests and reports go to the tracker's JSON API.
"""

from __future__ import annotations

import asyncio
import ipaddress
import itertools
import json
import logging
import struct
import time
from typing import Any, Final
from urllib.parse import quote_from_bytes

from dfget.httpclient import BodyTooLarge, HttpClient, HttpClientError, Response
from peerwire import bencoding
from peerwire.auth import (
    ANSWER_HEADER,
    AUTH_HEADER,
    api_header,
    check_answer,
    new_nonce,
    sign_announce,
)
from peerwire.coordination import (
    AnnounceAnswer,
    PeerAddress,
    Progress,
    TaskManifestDoc,
    TrackerRefused,
    TrackerUnavailable,
)
from peerwire.ids import PeerId, TaskId
from peerwire.manifest import ManifestConflict
from tracker.urls import tracker_base_url

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S: Final = 10.0
#: Largest tracker answer read (an announce with 200 peers is ~1.5 KB; a manifest of a million
#: pieces ~70 MB is beyond any task we make).
MAX_ANSWER_BYTES: Final = 64 * 1024 * 1024
#: BEP 23 compact IPv4 peer: four address bytes, then the port (big-endian).
_COMPACT4: Final = struct.Struct(">BBBBH")


def announce_query(
    task: TaskId, progress: Progress, event: str, secret: bytes | None = None, seq: int = 0
) -> str:
    """The query string of one announce; raw bytes percent-encoded byte by byte (BEP 3).
    With the cluster secret, ``df_seq``, ``df_ts`` and, last, ``df_auth`` prove this peer holds
    it, over every field (``peerwire.auth.sign_announce``); ``seq`` must grow with every
    announce of the peer."""
    params = [
        ("info_hash", quote_from_bytes(task.raw, safe="")),
        ("peer_id", quote_from_bytes(progress.peer_id.raw, safe="")),
        ("port", str(progress.port)),
        ("uploaded", str(progress.uploaded_bytes)),
        ("downloaded", str(progress.downloaded_bytes)),
        ("compact", "1"),
        ("numwant", str(progress.numwant)),
        ("df_load", str(progress.load)),
        ("df_source", "1" if progress.can_source else "0"),
        ("df_origin", str(progress.origin_bytes)),
    ]
    if progress.left_bytes is not None:
        params.append(("left", str(progress.left_bytes)))
    if event:
        params.append(("event", event))
    if progress.have is not None:
        params.append(("df_have", quote_from_bytes(progress.have, safe="")))
    if progress.zone:
        params.append(("df_zone", quote_from_bytes(progress.zone.encode(), safe="")))
    query = "&".join(f"{key}={value}" for key, value in params)
    if secret is None:
        return query
    return sign_announce(secret, query, seq, int(time.time()))


def parse_announce_answer(body: bytes) -> AnnounceAnswer:
    """Decode a bencoded announce answer; TrackerRefused on ``failure reason`` or garbage."""
    try:
        answer = bencoding.decode(body)
    except bencoding.BencodeError as exc:
        raise TrackerRefused(f"tracker answer is not bencode: {exc}") from exc
    if not isinstance(answer, dict):
        raise TrackerRefused("tracker answer is not a bencoded dictionary")
    if b"failure reason" in answer:
        reason = bytes(answer[b"failure reason"]).decode(errors="replace")
        raise TrackerRefused(f"tracker refused the announce: {reason}")
    peers: list[PeerAddress] = []
    raw4 = answer.get(b"peers", b"")
    if isinstance(raw4, list):  # BEP 3 dictionary model (compact=0)
        for entry in raw4:
            if isinstance(entry, dict) and b"ip" in entry and b"port" in entry:
                peer_id = entry.get(b"peer id")
                peers.append(
                    PeerAddress(entry[b"ip"].decode(errors="replace"), int(entry[b"port"]), peer_id)
                )
    elif isinstance(raw4, bytes):  # BEP 23
        for offset in range(0, len(raw4) - len(raw4) % 6, 6):
            a, b, c, d, port = _COMPACT4.unpack_from(raw4, offset)
            peers.append(PeerAddress(f"{a}.{b}.{c}.{d}", port))
    raw6 = answer.get(b"peers6", b"")
    if isinstance(raw6, bytes):  # BEP 7
        for offset in range(0, len(raw6) - len(raw6) % 18, 18):
            host = str(ipaddress.IPv6Address(raw6[offset : offset + 16]))
            (port,) = struct.unpack_from(">H", raw6, offset + 16)
            peers.append(PeerAddress(host, port))
    assignment = answer.get(b"df assign", [])
    known = answer.get(b"df known")
    interval = _integer(answer.get(b"interval"), 30)
    return AnnounceAnswer(
        interval_s=float(interval),
        min_interval_s=float(_integer(answer.get(b"min interval"), interval)),
        complete=_integer(answer.get(b"complete"), 0),
        incomplete=_integer(answer.get(b"incomplete"), 0),
        peers=tuple(peers),
        assignment=tuple(i for i in assignment if isinstance(i, int))
        if isinstance(assignment, list)
        else (),
        assignment_ttl_s=float(_integer(answer.get(b"df assign ttl"), 0)),
        pieces_known=known if isinstance(known, int) else None,
    )


def _integer(value: object, default: int) -> int:
    return value if isinstance(value, int) else default


def parse_manifest_doc(document: Any) -> TaskManifestDoc:
    """The JSON of ``GET /tasks/<id>``; TrackerRefused when it is not one."""
    try:
        digests = tuple(
            bytes.fromhex(d) if d is not None else None for d in document["piece_sha256"]
        )
        validator = document.get("validator")
        return TaskManifestDoc(
            url=str(document["url"]),
            total_length=int(document["total_length"]),
            piece_length=int(document["piece_length"]),
            piece_sha256=digests,
            validator=None if validator is None else str(validator),
            ranges=document.get("ranges", True) is not False,
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise TrackerRefused(f"tracker sent a malformed manifest: {exc!r}") from exc


class HttpTracker:
    """``Coordinator`` over HTTP to a list of ``dftracker`` base URLs, tried in turn.

    ``timeout_s`` bounds each request to one tracker, its answer read whole. A given ``client``
    is not closed by ``close``."""

    def __init__(
        self,
        urls: list[str],
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        client: HttpClient | None = None,
        secret: bytes | None = None,
    ) -> None:
        if not urls:
            raise ValueError("at least one tracker URL is needed")
        self.base_urls = [tracker_base_url(url) for url in urls]
        self._timeout_s = timeout_s
        self._client = client
        self._own_client = client is None
        self._preferred = 0
        self._secret = secret
        #: With the secret, every manifest answer carries the tracker's proof (checked here).
        self.vouched = secret is not None
        #: ``df_seq`` of the next announce: every announce of this client gets a larger one.
        self._seq = itertools.count(1)
        #: Per task: the lock its announces take turns on, and how many hold or wait for it.
        self._announcing: dict[TaskId, tuple[asyncio.Lock, int]] = {}

    async def _request(
        self, method: str, target: str, payload: bytes | None = None
    ) -> tuple[int, bytes]:
        """One request to the first tracker that answers; (status, body)."""
        if self._client is None:
            self._client = HttpClient()
        problems: list[str] = []
        count = len(self.base_urls)
        for step in range(count):
            index = (self._preferred + step) % count
            url = self.base_urls[index] + target
            headers = {"Content-Type": "application/json"} if payload is not None else {}
            nonce: bytes | None = None
            if self._secret is not None and target.startswith("/tasks/"):
                # Signed over the tracker-relative target: a prefix in the base URL is not.
                nonce = new_nonce()
                headers[AUTH_HEADER] = api_header(
                    self._secret, method, target, int(time.time()), nonce, payload or b""
                )
            try:
                async with asyncio.timeout(self._timeout_s):
                    response = await self._client.request(
                        method,
                        url,
                        headers=headers.items(),
                        body=payload,
                        connect_timeout_s=None,
                        read_timeout_s=None,
                    )
                    async with response:
                        body = await _read_bounded(response)
            except (TimeoutError, HttpClientError, OSError) as exc:
                problems.append(f"{self.base_urls[index]}: {exc.__class__.__name__} {exc}")
                continue
            if response.status >= 500:
                problems.append(f"{self.base_urls[index]}: HTTP {response.status}")
                continue
            if nonce is not None and self._secret is not None:
                proof = response.headers.get(ANSWER_HEADER)
                if not check_answer(self._secret, nonce, response.status, body, proof):
                    # Not our tracker's answer to this request: nothing in it is believed (a
                    # manifest from it would be anyone's claim).
                    raise TrackerRefused(
                        f"{self.base_urls[index]} answered without the cluster secret's proof"
                    )
            self._preferred = index
            return response.status, body
        raise TrackerUnavailable("no tracker reachable: " + "; ".join(problems))

    async def announce(self, task: TaskId, progress: Progress, event: str = "") -> AnnounceAnswer:
        """One announce of a task at a time, its ``df_seq`` taken as it goes: two under way
        together (``completed`` while the periodic one waits for a busy tracker) go over two
        connections and may arrive in either order, and the larger ``df_seq`` first would make
        the other a replay. Other tasks' announces do not wait."""
        lock, users = self._announcing.get(task, (None, 0))
        if lock is None:
            lock = asyncio.Lock()
        self._announcing[task] = (lock, users + 1)
        try:
            async with lock:
                query = announce_query(task, progress, event, self._secret, next(self._seq))
                status, body = await self._request("GET", "/announce?" + query)
        finally:
            lock, users = self._announcing[task]
            if users == 1:
                del self._announcing[task]
            else:
                self._announcing[task] = (lock, users - 1)
        if status != 200:
            raise TrackerRefused(f"announce answered HTTP {status}")
        return parse_announce_answer(body)

    async def get_manifest(self, task: TaskId) -> TaskManifestDoc | None:
        status, body = await self._request("GET", f"/tasks/{task.hex()}")
        if status == 404:
            return None
        return parse_manifest_doc(self._json(status, body))

    async def put_manifest(self, task: TaskId, manifest: TaskManifestDoc) -> TaskManifestDoc:
        return await self._put(task, manifest.to_json())

    async def report_piece(self, task: TaskId, piece_index: int, sha256: bytes) -> None:
        await self.report_pieces(task, {piece_index: sha256})

    async def report_pieces(self, task: TaskId, digests: dict[int, bytes]) -> None:
        """Several pieces' digests in one request; the answer (the whole manifest) is not
        parsed, only its status: this runs for every batch of origin pieces."""
        document = {"piece_sha256": {str(i): d.hex() for i, d in digests.items()}}
        payload = json.dumps(document, separators=(",", ":")).encode()
        status, body = await self._request("PUT", f"/tasks/{task.hex()}", payload)
        if status == 409:
            raise ManifestConflict(_error_text(body))
        if status != 200:
            raise TrackerRefused(f"tracker answered HTTP {status}: {_error_text(body)}")

    async def _put(self, task: TaskId, document: dict[str, Any]) -> TaskManifestDoc:
        payload = json.dumps(document, separators=(",", ":")).encode()
        status, body = await self._request("PUT", f"/tasks/{task.hex()}", payload)
        if status == 409:
            raise ManifestConflict(_error_text(body))
        return parse_manifest_doc(self._json(status, body))

    async def report_error(
        self, task: TaskId, reporter: PeerId, peer: PeerAddress, reason: str
    ) -> None:
        document: dict[str, Any] = {"reporter": reporter.hex(), "reason": reason[:64]}
        if peer.peer_id is not None:
            document["peer"] = peer.peer_id.hex()
        if peer.host:  # no peer at all: the report is about the task's manifest
            host = f"[{peer.host}]" if ":" in peer.host else peer.host
            document["address"] = f"{host}:{peer.port}"
        payload = json.dumps(document).encode()
        status, body = await self._request("POST", f"/tasks/{task.hex()}/reports", payload)
        self._json(status, body)

    async def service_down(self, task: TaskId, progress: Progress) -> None:
        await self.announce(task, progress, "stopped")

    async def close(self) -> None:
        if self._client is not None and self._own_client:
            await self._client.close()
        self._client = None

    @staticmethod
    def _json(status: int, body: bytes) -> Any:
        if status != 200:
            raise TrackerRefused(f"tracker answered HTTP {status}: {_error_text(body)}")
        try:
            return json.loads(body)
        except ValueError as exc:
            raise TrackerRefused(f"tracker answer is not JSON: {exc}") from exc


async def _read_bounded(response: Response) -> bytes:
    """The whole body, refusing one larger than ``MAX_ANSWER_BYTES``."""
    try:
        return await response.read_all(MAX_ANSWER_BYTES)
    except BodyTooLarge:
        raise TrackerRefused(f"tracker answer larger than {MAX_ANSWER_BYTES} bytes") from None


def _error_text(body: bytes) -> str:
    try:
        document = json.loads(body)
        return str(document.get("error", document))
    except (ValueError, AttributeError):
        return body[:200].decode(errors="replace")
