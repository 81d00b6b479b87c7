"""Which request goes where, and what it answers: the tracker's HTTP surface without the sockets.

``Routes.handle`` takes one parsed request (method, target, body, the client's address) and
returns a ``Response``. The server (the only asyncio module) owns connections, limits and
timeouts; this module owns meaning, and keeps the counters that ``metrics`` exports.

Routes:

* ``GET /announce`` (BEP 3, 7, 23) and ``GET /scrape`` (BEP 48): bencoded, HTTP 200 even for a
  refused announce (``failure reason``), as BitTorrent clients expect.
* ``GET|PUT /tasks/<hex id>``: the task manifest (JSON); ``POST /tasks/<hex id>/reports``.
* ``GET /stats``: JSON of the swarm for dftop; ``GET /healthz``; ``GET /metrics`` is added by
  the server (it belongs to prometheus-client).

With the in-memory ``Swarm`` every answer is decided at once (``handle`` returns a
``Response``). With the shared ``RedisSwarm`` a route that needs the swarm returns a future of
its ``Response`` (the server answers each connection's requests in order); Redis unreachable
is HTTP 503 with a bencoded ``failure reason`` (BitTorrent routes) or a JSON error, never a
hang: the store's calls are bounded by ``redis_timeout``.
"""

from __future__ import annotations

import asyncio
import bisect
import json
import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Final

from peerwire.auth import (
    ANSWER_HEADER,
    NonceCache,
    answer_mac,
    check_announce,
    check_api,
    parse_api_header,
)
from peerwire.manifest import ManifestConflict
from tracker.config import TrackerConfig
from tracker.manifests import ManifestError, TaskManifest, parse_manifest_update
from tracker.model import ID_BYTES, AnnounceRequest, AnnounceResult, Event
from tracker.protocol import (
    AnnounceError,
    encode_announce,
    encode_failure,
    encode_scrape,
    parse_announce,
    parse_report,
    parse_scrape,
)
from tracker.redislink import ReplyError, StoreUnavailable
from tracker.redisstore import RedisSwarm
from tracker.swarm import Replayed, Swarm, SwarmFull

log = logging.getLogger(__name__)

TEXT: Final = b"text/plain; charset=utf-8"
JSON: Final = b"application/json"
#: Announce latency histogram buckets (seconds), from well under a millisecond to a stall.
LATENCY_BUCKETS_S: Final = (
    0.00005,
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.1,
)
#: Largest ``peers`` a ``/stats`` request may ask for per task.
STATS_PEERS_MAX: Final = 1000


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    body: bytes
    content_type: bytes = TEXT
    #: Extra header lines, each ending in CRLF.
    headers: bytes = b""


_EVENT_LABELS: Final = {event: (event.name.lower() if event.value else "none") for event in Event}


class _AcceptEvery(NonceCache):
    """The shared store records nonces itself (in Redis, atomically with the request)."""

    def first_use(self, nonce: bytes, now_s: float) -> bool:
        return True


Answer = Response | asyncio.Future[Response]


class Routes:
    """The tracker's request handlers over one store (``Swarm`` in memory, or the shared
    ``RedisSwarm``); this tracker's counters for ``/metrics``."""

    def __init__(
        self,
        config: TrackerConfig,
        swarm: Swarm | None,
        clock: Callable[[], float] = time.perf_counter,
        *,
        secret: bytes | None = None,
        wall_clock: Callable[[], float] = time.time,
        shared: RedisSwarm | None = None,
    ) -> None:
        if (swarm is None) == (shared is None):
            raise ValueError("routes need exactly one store: a Swarm or a RedisSwarm")
        self.config = config
        self.swarm = swarm
        self.shared = shared
        self._clock = clock
        #: The cluster secret (``peerwire.auth``); None: nothing is authenticated.
        self.secret = secret
        self._wall_clock = wall_clock
        #: API nonces seen within the skew window: a second use is a replay.
        self.nonces: NonceCache = NonceCache() if shared is None else _AcceptEvery()
        self.auth_failures = 0
        #: (event label, result) -> announces; result is ``ok`` or ``failure``.
        self.announces: dict[tuple[str, str], int] = {}
        self.scrapes: dict[str, int] = {"ok": 0, "failure": 0}
        self.manifest_puts: dict[str, int] = {"ok": 0, "conflict": 0, "invalid": 0}
        self.manifest_gets: dict[str, int] = {"found": 0, "missing": 0}
        #: Requests refused because the shared store could not be reached.
        self.unavailable = 0
        self.latency_counts = [0] * (len(LATENCY_BUCKETS_S) + 1)
        self.latency_sum_s = 0.0
        self.requests_total = 0
        self.manifest_refutations = 0

    # --- dispatch -----------------------------------------------------------------------------

    def handle(
        self,
        method: bytes,
        target: bytes,
        body: bytes,
        remote_ip: str,
        auth_header: str | None = None,
    ) -> Answer:
        """Answer one request (at once, or a future with the shared store); never raises for
        anything a client can send."""
        self.requests_total += 1
        path, _, query = target.partition(b"?")
        if path == b"/announce":
            if method not in (b"GET", b"HEAD"):
                return _method_not_allowed()
            return self._announce(query, remote_ip)
        if path == b"/scrape":
            if method not in (b"GET", b"HEAD"):
                return _method_not_allowed()
            if self.shared is not None:
                return _later(self._shared_scrape(query))
            return self._scrape(query)
        if path.startswith(b"/tasks/"):
            rest = path[len(b"/tasks/") :]
            if self.secret is None:
                return self._tasks_any(method, rest, body, b"")
            # With a secret, changes must prove it; a read may, and then gets a proven answer.
            if auth_header is None and method in (b"GET", b"HEAD"):
                return self._tasks_any(method, rest, body, b"")
            reason = check_api(
                self.secret,
                method.decode(errors="replace"),
                target.decode(errors="replace"),
                auth_header,
                body,
                self._wall_clock(),
                self.nonces,
            )
            if reason is not None:
                self.auth_failures += 1
                log.warning("refused %s %s from %s: %s", method, path[:60], remote_ip, reason)
                return _json_error(403, reason)
            parsed = parse_api_header(auth_header)
            assert not isinstance(parsed, str)  # check_api accepted it
            nonce = parsed[1]
            if self.shared is None:
                return self._prove(self._tasks(method, rest, body), nonce)
            return _later(self._prove_later(self._shared_tasks(method, rest, body, nonce), nonce))
        if path == b"/stats":
            if method not in (b"GET", b"HEAD"):
                return _method_not_allowed()
            if self.shared is not None:
                return _later(self._shared_stats(query))
            return self._stats(query)
        if path == b"/healthz":
            return Response(200, b"ok\n")
        return Response(404, b"not found: try /announce, /scrape, /stats, /metrics, /healthz\n")

    # --- BitTorrent -----------------------------------------------------------------------------

    def _announce(self, query: bytes, remote_ip: str) -> Answer:
        started = self._clock()
        config = self.config
        label = "invalid"
        try:
            request = parse_announce(
                query,
                remote_ip,
                trust_ip=config.trust_ip_param,
                numwant_default=config.numwant_default,
                numwant_max=config.numwant_max,
            )
            label = _EVENT_LABELS[request.event]
            if self.secret is not None:
                reason = check_announce(
                    self.secret, query, request.auth_ts, request.auth, self._wall_clock()
                )
                if reason is None and request.seq is None:
                    reason = "this tracker requires the cluster secret (df_seq missing)"
                if reason is not None:
                    self.auth_failures += 1
                    raise AnnounceError(reason)
            if self.shared is not None:
                return self._announce_shared(request, label, started)
            assert self.swarm is not None
            result = self.swarm.announce(request)
        except (AnnounceError, SwarmFull, Replayed) as exc:
            log.debug("announce from %s refused: %s", remote_ip, exc)
            body = encode_failure(str(exc))
            outcome = "failure"
        else:
            body = encode_announce(result, compact=request.compact, no_peer_id=request.no_peer_id)
            outcome = "ok"
        self._count(label, outcome, started)
        return Response(200, body)

    def _count(self, label: str, outcome: str, started: float) -> None:
        key = (label, outcome)
        self.announces[key] = self.announces.get(key, 0) + 1
        elapsed_s = self._clock() - started
        self.latency_counts[bisect.bisect_left(LATENCY_BUCKETS_S, elapsed_s)] += 1
        self.latency_sum_s += elapsed_s

    def _announce_shared(
        self, request: AnnounceRequest, label: str, started: float
    ) -> asyncio.Future[Response]:
        """The announce through the shared store: its answer when the store's is in."""
        assert self.shared is not None
        decided = self.shared.announce(request)
        out: asyncio.Future[Response] = asyncio.get_running_loop().create_future()

        def answer(future: asyncio.Future[AnnounceResult]) -> None:
            exc = future.exception()
            status = 200
            if exc is None:
                result = future.result()
                body = encode_announce(
                    result, compact=request.compact, no_peer_id=request.no_peer_id
                )
                outcome = "ok"
            elif isinstance(exc, (SwarmFull, Replayed)):
                body, outcome = encode_failure(str(exc)), "failure"
            else:
                status, outcome = 503, "unavailable"
                body = encode_failure(self._unavailable(exc))
            self._count(label, outcome, started)
            out.set_result(Response(status, body))

        decided.add_done_callback(answer)
        return out

    def _unavailable(self, exc: BaseException) -> str:
        """The reason given for a request the shared store could not serve."""
        self.unavailable += 1
        if isinstance(exc, StoreUnavailable):
            return f"tracker store unavailable: {exc}; try again shortly"
        log.error("tracker store failed: %s", exc)
        return f"tracker store failed: {str(exc)[:200]}"

    def _scrape(self, query: bytes) -> Response:
        try:
            hashes = parse_scrape(query, max_hashes=self.config.max_scrape_hashes)
            assert self.swarm is not None
            if hashes:
                files = self.swarm.scrape(hashes)
            elif self.config.full_scrape:
                files = self.swarm.scrape_all(self.config.max_scrape_hashes)
            else:
                raise AnnounceError("scrape needs info_hash (full scrape is disabled)")
        except AnnounceError as exc:
            self.scrapes["failure"] += 1
            return Response(200, encode_failure(str(exc)))
        self.scrapes["ok"] += 1
        return Response(200, encode_scrape(files))

    async def _shared_scrape(self, query: bytes) -> Response:
        assert self.shared is not None
        try:
            hashes = parse_scrape(query, max_hashes=self.config.max_scrape_hashes)
            if hashes:
                files = await self.shared.scrape(hashes)
            elif self.config.full_scrape:
                files = await self.shared.scrape_all(self.config.max_scrape_hashes)
            else:
                raise AnnounceError("scrape needs info_hash (full scrape is disabled)")
        except AnnounceError as exc:
            self.scrapes["failure"] += 1
            return Response(200, encode_failure(str(exc)))
        except (StoreUnavailable, ReplyError) as exc:
            self.scrapes["failure"] += 1
            return Response(503, encode_failure(self._unavailable(exc)))
        self.scrapes["ok"] += 1
        return Response(200, encode_scrape(files))

    # --- JSON API ---------------------------------------------------------------------------

    def _tasks_any(self, method: bytes, rest: bytes, body: bytes, nonce: bytes) -> Answer:
        if self.shared is None:
            return self._tasks(method, rest, body)
        return _later(self._shared_tasks(method, rest, body, nonce))

    def _prove(self, response: Response, nonce: bytes) -> Response:
        """The answer with the tracker's proof, bound to the request's nonce."""
        assert self.secret is not None
        proof = answer_mac(self.secret, nonce, response.status, response.body)
        header = f"{ANSWER_HEADER}: {proof}\r\n".encode()
        return Response(response.status, response.body, response.content_type, header)

    async def _prove_later(self, pending: Coroutine[Any, Any, Response], nonce: bytes) -> Response:
        response = await pending
        if response.status == 503:
            return response  # not an answer about the task
        return self._prove(response, nonce)

    async def _shared_tasks(
        self, method: bytes, rest: bytes, body: bytes, nonce: bytes
    ) -> Response:
        """``_tasks`` through the shared store; ``nonce`` (an authenticated request's) is
        recorded in Redis with the request itself, so no tracker of the cluster takes it
        twice."""
        shared = self.shared
        assert shared is not None
        hex_id, _, sub = rest.partition(b"/")
        task = _task_id(hex_id)
        if task is None:
            return _json_error(400, "task id must be 40 hex digits")
        try:
            if sub == b"reports":
                if method != b"POST":
                    return _method_not_allowed()
                try:
                    report = parse_report(body)
                except ValueError as exc:
                    return _json_error(400, str(exc))
                if report.peer_id is None and report.address is None:
                    return self._refuted(task, report.reporter, report.reason)
                found = await shared.report(task, report, nonce)
                return Response(200, json.dumps({"found": found}).encode(), JSON)
            if sub:
                return _json_error(404, "no such resource")
            if method in (b"GET", b"HEAD"):
                return self._manifest_found(task, await shared.get_manifest(task, nonce))
            if method != b"PUT":
                return _method_not_allowed()
            try:
                update = parse_manifest_update(body)
                manifest = await shared.put_manifest(task, update, nonce)
            except (ManifestConflict, ManifestError, SwarmFull) as exc:
                return self._manifest_refused(task, exc)
            self.manifest_puts["ok"] += 1
            return Response(200, manifest.to_json(task), JSON)
        except Replayed:
            self.auth_failures += 1
            return _json_error(403, "X-DF-Auth was used before: a replayed request")
        except (StoreUnavailable, ReplyError) as exc:
            return _json_error(503, self._unavailable(exc))

    def _refuted(self, task: bytes, reporter: bytes, reason: str) -> Response:
        self.manifest_refutations += 1
        log.warning(
            "task %s: peer %s says the manifest contradicts the origin (%s)",
            task.hex()[:12],
            reporter.hex()[:12],
            reason,
        )
        return Response(200, json.dumps({"found": True}).encode(), JSON)

    def _tasks(self, method: bytes, rest: bytes, body: bytes) -> Response:
        hex_id, _, sub = rest.partition(b"/")
        task = _task_id(hex_id)
        if task is None:
            return _json_error(400, "task id must be 40 hex digits")
        if sub == b"reports":
            if method != b"POST":
                return _method_not_allowed()
            return self._report(task, body)
        if sub:
            return _json_error(404, "no such resource")
        assert self.swarm is not None
        if method in (b"GET", b"HEAD"):
            return self._manifest_found(task, self.swarm.get_manifest(task))
        if method == b"PUT":
            return self._put_manifest(task, body)
        return _method_not_allowed()

    def _put_manifest(self, task: bytes, body: bytes) -> Response:
        try:
            update = parse_manifest_update(body)
            assert self.swarm is not None
            manifest = self.swarm.put_manifest(task, update)
        except (ManifestConflict, ManifestError, SwarmFull) as exc:
            return self._manifest_refused(task, exc)
        self.manifest_puts["ok"] += 1
        return Response(200, manifest.to_json(task), JSON)

    def _manifest_found(self, task: bytes, manifest: TaskManifest | None) -> Response:
        """The answer to ``GET /tasks/<id>`` (either store), counted."""
        if manifest is None:
            self.manifest_gets["missing"] += 1
            return _json_error(404, "no manifest for this task")
        self.manifest_gets["found"] += 1
        return Response(200, manifest.to_json(task), JSON)

    def _manifest_refused(self, task: bytes, exc: Exception) -> Response:
        """Why a ``PUT /tasks/<id>`` was refused (either store), counted."""
        if isinstance(exc, ManifestConflict):
            self.manifest_puts["conflict"] += 1
            log.warning("manifest for task %s refused: %s", task.hex(), exc)
            return _json_error(409, str(exc))
        if isinstance(exc, ManifestError):
            self.manifest_puts["invalid"] += 1
            return _json_error(400, str(exc))
        return _json_error(503, str(exc))  # SwarmFull

    def _report(self, task: bytes, body: bytes) -> Response:
        try:
            report = parse_report(body)
        except ValueError as exc:
            return _json_error(400, str(exc))
        if report.peer_id is None and report.address is None:  # the manifest is refuted
            return self._refuted(task, report.reporter, report.reason)
        assert self.swarm is not None
        found = self.swarm.report(task, report)
        log.info(
            "task %s: peer %s reported %s by %s",
            task.hex()[:12],
            report.peer_id.hex()[:12] if report.peer_id else report.address,
            report.reason,
            report.reporter.hex()[:12],
        )
        return Response(200, json.dumps({"found": found}).encode(), JSON)

    def _stats(self, query: bytes) -> Response:
        parsed = _stats_query(query)
        if isinstance(parsed, Response):
            return parsed
        task, peers_limit = parsed
        assert self.swarm is not None
        document = self.swarm.stats(task, peers_limit=peers_limit)
        return Response(200, json.dumps(document, separators=(",", ":")).encode(), JSON)

    async def _shared_stats(self, query: bytes) -> Response:
        assert self.shared is not None
        parsed = _stats_query(query)
        if isinstance(parsed, Response):
            return parsed
        try:
            document = await self.shared.stats(parsed[0], peers_limit=parsed[1])
        except (StoreUnavailable, ReplyError) as exc:
            return _json_error(503, self._unavailable(exc))
        return Response(200, json.dumps(document, separators=(",", ":")).encode(), JSON)


def _stats_query(query: bytes) -> tuple[bytes | None, int] | Response:
    """(task, peers per task) of a ``/stats`` query, or the 400 answer."""
    task: bytes | None = None
    peers_limit = 100
    for part in query.split(b"&"):
        key, _, value = part.partition(b"=")
        if key == b"task":
            task = _task_id(value)
            if task is None:
                return _json_error(400, "task must be 40 hex digits")
        elif key == b"peers":
            if not value.isdigit() or len(value) > 6:
                return _json_error(400, "peers must be a number")
            peers_limit = min(int(value), STATS_PEERS_MAX)
    return task, peers_limit


def _later(coroutine: Coroutine[Any, Any, Response]) -> asyncio.Future[Response]:
    return asyncio.ensure_future(coroutine)


def _task_id(hex_id: bytes) -> bytes | None:
    if len(hex_id) != 2 * ID_BYTES:
        return None
    try:
        return bytes.fromhex(hex_id.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        return None


def _json_error(status: int, message: str) -> Response:
    return Response(status, json.dumps({"error": message}).encode(), JSON)


def _method_not_allowed() -> Response:
    return Response(405, b"method not allowed\n")
