"""The swarm in Redis, shared by any number of trackers (``dftracker serve --redis URL``).

The same behaviour as the in-memory ``tracker.swarm.Swarm`` (the same tests run against both),
with the state in Redis (layout and scripts: ``tracker.redislua``): each announce, manifest
read or update and report is ONE script call, atomic in Redis, so the replay checks
(``df_seq``, API nonces), which peer fetches which piece from the origin and the first
manifest of a task are decided once for the whole cluster. Calls go out pipelined
(``tracker.redislink``): an announce costs one command and shares its round trip with the
others of the same turn of the event loop.

What is not per request runs in ``maintain`` every second: the index of tasks (``df:tasks``,
for ``/stats``, the full scrape and the sweep; touched tasks are added in one batch), this
tracker's heartbeat (``df:trackers``), every ten seconds the cluster's totals for
``/metrics``, and every interval the sweep of silent peers and idle tasks, by whichever
tracker takes the lock.

Counters (announces, completions, assigned pieces...) are this tracker's; gauges (tasks,
peers, seeds, trackers) are the cluster's.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from peerwire.auth import MAX_SKEW_S
from peerwire.manifest import ManifestConflict
from tracker.config import TrackerConfig
from tracker.manifests import DIGEST_BYTES, ManifestError, ManifestUpdate, TaskManifest
from tracker.model import (
    AnnounceRequest,
    AnnounceResult,
    Event,
    PeerContact,
    PeerReport,
    ScrapeCounts,
)
from tracker.redisannounce import ANNOUNCE
from tracker.redislink import Arg, RedisLink, ReplyError, Script, StoreUnavailable
from tracker.redislua import COMMON
from tracker.redisscripts import ASSIGNMENT, EXPIRE, MANIFEST_GET, MANIFEST_PUT, REPORT, STATS
from tracker.redisstats import stats_document
from tracker.selection import spread_hash
from tracker.swarm import MAX_REPORTERS, Replayed, SwarmFull

log = logging.getLogger(__name__)

INDEX_KEY: Final = "df:tasks"
TRACKERS_KEY: Final = "df:trackers"
SWEEP_KEY: Final = "df:sweep"
#: How often the index and the heartbeat are brought up to date; the cluster's totals (for
#: ``/metrics``: one command per task) every ``TOTALS_EVERY`` of these.
MAINTAIN_S: Final = 1.0
TOTALS_EVERY: Final = 10
#: The sweep and the totals send this many tasks' commands at a time: Redis runs a batch in
#: one go, and the announces sent meanwhile wait behind it.
SWEEP_BATCH: Final = 16
_EVENTS: Final = {Event.NONE: b"0", Event.STARTED: b"1", Event.COMPLETED: b"2", Event.STOPPED: b"3"}


def task_key(task: bytes) -> str:
    """The task's hash; its other keys share the prefix and the hash tag (one cluster slot)."""
    return f"df:{{{task.hex()}}}:t"


@dataclass(frozen=True, slots=True)
class ClusterTotals:
    """What the trackers sharing this Redis hold together (refreshed every ``MAINTAIN_S``)."""

    tasks: int = 0
    peers: int = 0
    seeds: int = 0
    trackers: int = 0


class RedisSwarm:
    """The swarm's state in Redis; the one store of every tracker started with ``--redis``."""

    def __init__(
        self, config: TrackerConfig, link: RedisLink, clock: Callable[[], float] = time.time
    ) -> None:
        self._config = config
        self.link = link
        self._clock = clock
        self._started = clock()
        self.tracker_id = os.urandom(8).hex()
        self._interval_s = max(1, round(config.interval_s))
        self._min_interval_s = max(1, round(config.min_interval_s))
        self._assign_ttl_s = int(config.assign_ttl_s)
        common = COMMON.format(
            skew=MAX_SKEW_S,
            peer_timeout=repr(float(config.peer_timeout_s)),
            max_peers=config.max_peers_per_task,
            exclude=config.bad_peer_exclude_reports,
            bad_ttl=repr(float(config.bad_peer_ttl_s)),
            max_reporters=max(MAX_REPORTERS, config.bad_peer_exclude_reports),
            budget=config.origin_budget,
            assign_max=config.assign_max_pieces,
            assign_ttl=repr(float(config.assign_ttl_s)),
            task_ttl=repr(float(config.task_ttl_s)),
            key_ttl=int(config.task_ttl_s + config.peer_timeout_s + MAX_SKEW_S + 600),
            interval=repr(float(config.interval_s)),
        )
        self._announce = Script(common + ANNOUNCE)
        self._expire = Script(common + EXPIRE)
        self._get = Script(common + MANIFEST_GET)
        self._put = Script(common + MANIFEST_PUT)
        self._report = Script(common + REPORT)
        self._stats = Script(common + STATS)
        self._assignment = Script(common + ASSIGNMENT)
        self._touched: set[str] = set()
        self.totals = ClusterTotals()
        self.task_estimate = 0
        self.completions_total = 0
        self.reports_total = 0
        self.manifest_conflicts_total = 0
        self.peers_expired_total = 0
        self.assigned_pieces_total = 0
        self.origin_bytes_total = 0
        self.peer_bytes_total = 0

    # --- announce --------------------------------------------------------------------------

    def announce(self, req: AnnounceRequest) -> asyncio.Future[AnnounceResult]:
        """Record ``req`` and answer it (``Swarm.announce``); the future raises SwarmFull,
        Replayed or StoreUnavailable."""
        key = task_key(req.info_hash)
        self._touched.add(key)
        packed_port = req.port.to_bytes(2, "big")
        args: list[Arg] = [
            repr(self._clock()),
            req.peer_id,
            b"" if req.seq is None else str(req.seq),
            _EVENTS[req.event],
            req.port,
            b"" if req.ip4 is None else req.ip4 + packed_port,
            b"" if req.ip6 is None else req.ip6 + packed_port,
            b"" if req.left_bytes is None else req.left_bytes,
            req.downloaded_bytes,
            req.uploaded_bytes,
            req.origin_bytes,
            req.have or b"",
            b"0" if req.have is None else b"1",
            b"" if req.load is None else req.load,
            req.zone,
            b"1" if req.can_source else b"0",
            req.numwant,
            b"1" if req.compact else b"0",
            b"1" if self.task_estimate < self._config.max_tasks else b"0",
            spread_hash(req.peer_id),
        ]
        raw = self.link.eval(self._announce, key, args)
        loop = asyncio.get_running_loop()
        out: asyncio.Future[AnnounceResult] = loop.create_future()
        compact = req.compact
        raw.add_done_callback(lambda f: self._answered(f, out, compact))
        return out

    def _answered(
        self, raw: asyncio.Future[Any], out: asyncio.Future[AnnounceResult], compact: bool
    ) -> None:
        exc = raw.exception()
        if exc is not None:
            out.set_exception(
                exc if not isinstance(exc, ReplyError) else StoreUnavailable(f"redis: {exc}")
            )
            return
        reply = raw.result()
        status = reply[0]
        if status != b"ok":
            if status == b"replayed":
                out.set_exception(
                    Replayed("replayed announce: df_seq is not above the last one accepted")
                )
            else:
                out.set_exception(SwarmFull())
            return
        flags = reply[7]
        if flags[1]:
            self.completions_total += 1
        self.assigned_pieces_total += flags[2]
        self.origin_bytes_total += flags[3]
        self.peer_bytes_total += flags[4]
        assignment = tuple(reply[6])
        known = reply[3]
        if compact:
            peers: list[PeerContact] = []
            packed: tuple[bytes, bytes] | None = (reply[4], reply[5])
        else:
            peers = [_contact(member) for member in reply[4]]
            packed = None
        out.set_result(
            AnnounceResult(
                interval_s=self._interval_s,
                min_interval_s=self._min_interval_s,
                complete=reply[1],
                incomplete=reply[2],
                peers=peers,
                assignment=assignment,
                assignment_ttl_s=self._assign_ttl_s if assignment else 0,
                pieces_known=None if known < 0 else known,
                packed=packed,
            )
        )

    # --- scrape, manifests, reports --------------------------------------------------------

    async def scrape(self, info_hashes: tuple[bytes, ...]) -> dict[bytes, ScrapeCounts]:
        replies = await asyncio.gather(
            *[
                self.link.command(task_key(h), ("HMGET", task_key(h), "s", "n", "d"))
                for h in info_hashes
            ]
        )
        files: dict[bytes, ScrapeCounts] = {}
        for info_hash, (seeds, peers, done) in zip(info_hashes, replies, strict=True):
            if peers is not None:
                files[info_hash] = ScrapeCounts(int(seeds), int(peers) - int(seeds), int(done))
        return files

    async def scrape_all(self, limit: int) -> dict[bytes, ScrapeCounts]:
        await self.flush_index()
        keys = await self.link.command(INDEX_KEY, ("ZRANGE", INDEX_KEY, 0, max(0, limit - 1)))
        return await self.scrape(tuple(bytes.fromhex(_hex_of(k)) for k in keys))

    async def get_manifest(self, task: bytes, nonce: bytes = b"") -> TaskManifest | None:
        """The manifest, or None; Replayed when ``nonce`` was used before."""
        key = task_key(task)
        reply = await self.link.eval(self._get, key, [repr(self._clock()), nonce.hex()])
        if reply[0] == b"replayed":
            raise Replayed("a replayed request")
        if reply[0] == b"missing":
            return None
        return _manifest(reply)

    async def put_manifest(
        self, task: bytes, update: ManifestUpdate, nonce: bytes = b""
    ) -> TaskManifest:
        """Create or extend the manifest (``Swarm.put_manifest``); ManifestError,
        ManifestConflict, SwarmFull or Replayed."""
        key = task_key(task)
        self._touched.add(key)
        try:
            first = TaskManifest.create(update)
            problem = ""
        except ManifestError as exc:
            first, problem = None, str(exc)
        args: list[Any] = [repr(self._clock()), nonce.hex()]
        args.append(b"1" if self.task_estimate < self._config.max_tasks else b"0")
        args.append(problem)
        if first is not None:
            digests, known = first.stored_digests()
            args += [
                first.url,
                first.total_length,
                first.piece_length,
                first.num_pieces,
                first.validator or "",
                b"0" if first.validator is None else b"1",
                b"1" if first.ranges else b"0",
                digests,
                known,
                first.known,
            ]
        else:
            args += ["", 0, 0, 0, "", b"0", b"1", b"", b"", 0]
        args += [
            b"" if update.total_length is None else update.total_length,
            b"" if update.piece_length is None else update.piece_length,
            update.validator or "",
            b"0" if update.validator is None else b"1",
        ]
        for index, digest in update.digests.items():
            if len(digest) != DIGEST_BYTES:
                raise ManifestError(f"piece {index}: a sha256 digest is {DIGEST_BYTES} bytes")
            args += [index, digest]
        reply = await self.link.eval(self._put, key, args)
        status = reply[0]
        if status == b"ok":
            return _manifest(reply)
        if status == b"conflict":
            self.manifest_conflicts_total += 1
            why = reply[1].decode(errors="replace")
            if len(reply) > 2:  # a piece whose stored digest differs
                index = int(why.split()[1])
                why = (
                    f"{why}: sha256 {update.digests[index].hex()} differs from the stored "
                    f"{reply[2].hex()}"
                )
            raise ManifestConflict(why)
        if status == b"invalid":
            raise ManifestError(reply[1].decode(errors="replace"))
        if status == b"replayed":
            raise Replayed("a replayed request")
        raise SwarmFull()

    async def report(self, task: bytes, report: PeerReport, nonce: bytes = b"") -> bool:
        self.reports_total += 1
        address = b""
        if report.address is not None:
            address = _compact_address(report.address)
        reply = await self.link.eval(
            self._report,
            task_key(task),
            [repr(self._clock()), nonce.hex(), report.reporter, report.peer_id or b"", address],
        )
        if reply[0] == b"replayed":
            raise Replayed("a replayed request")
        return bool(reply[1])

    async def assignment_of(self, task: bytes, peer_id: bytes) -> tuple[int, ...]:
        """The pieces ``peer_id`` is assigned now, in the order to fetch them."""
        return tuple(await self.link.eval(self._assignment, task_key(task), [peer_id]))

    # --- soft state ------------------------------------------------------------------------

    async def flush_index(self) -> None:
        """Add the tasks touched since the last flush to the index (one command)."""
        if not self._touched:
            return
        touched, self._touched = self._touched, set()
        now = repr(self._clock())
        args: list[Any] = ["ZADD", INDEX_KEY]
        for key in touched:
            args += [now, _hex_of(key)]
        try:
            await self.link.command(INDEX_KEY, args)
        except (StoreUnavailable, ReplyError):
            self._touched |= touched
            raise

    async def refresh_estimate(self) -> int:
        """How many tasks the cluster holds (the index), for ``max_tasks``: checked against
        this estimate, refreshed every ``MAINTAIN_S``, so trackers may together overshoot
        the bound by what they create within a second."""
        await self.flush_index()
        self.task_estimate = int(await self.link.command(INDEX_KEY, ("ZCARD", INDEX_KEY)))
        return self.task_estimate

    async def expire(self) -> int:
        """Sweep every indexed task (``Swarm.expire``); returns the peers dropped."""
        await self.flush_index()
        hexes = await self.link.command(INDEX_KEY, ("ZRANGE", INDEX_KEY, 0, -1))
        now = repr(self._clock())
        replies: list[Any] = []
        for start in range(0, len(hexes), SWEEP_BATCH):
            replies += await asyncio.gather(
                *[
                    self.link.eval(self._expire, _key_of(h), [now])
                    for h in hexes[start : start + SWEEP_BATCH]
                ]
            )
        removed = 0
        gone: list[Any] = []
        for hex_id, (dropped, deleted) in zip(hexes, replies, strict=True):
            removed += dropped
            if deleted:
                gone.append(hex_id)
        if gone:
            await self.link.command(INDEX_KEY, ("ZREM", INDEX_KEY, *gone))
        self.peers_expired_total += removed
        return removed

    async def maintain(self, *, totals: bool, sweep: bool) -> None:
        """The index and the heartbeat; the cluster's totals when ``totals``; the sweep when
        ``sweep`` and the lock is ours (one tracker sweeps per interval). StoreUnavailable
        propagates (the caller tries again later)."""
        await self.flush_index()
        now = self._clock()
        pipe = [
            self.link.command(TRACKERS_KEY, ("ZADD", TRACKERS_KEY, repr(now), self.tracker_id)),
            self.link.command(
                TRACKERS_KEY,
                ("ZREMRANGEBYSCORE", TRACKERS_KEY, "-inf", repr(now - 10 * MAINTAIN_S)),
            ),
            self.link.command(TRACKERS_KEY, ("ZCARD", TRACKERS_KEY)),
            self.link.command(INDEX_KEY, ("ZCARD", INDEX_KEY)),
        ]
        _, _, trackers, tasks = await asyncio.gather(*pipe)
        self.task_estimate = int(tasks)
        if totals:
            hexes = await self.link.command(INDEX_KEY, ("ZRANGE", INDEX_KEY, 0, -1))
            counts: list[Any] = []
            for start in range(0, len(hexes), SWEEP_BATCH):
                counts += await asyncio.gather(
                    *[self.link.command(_key_of(h), ("HMGET", _key_of(h), "n", "s"))
                      for h in hexes[start : start + SWEEP_BATCH]]
                )  # fmt: skip
            live = [(int(n), int(s)) for n, s in counts if n is not None]
            self.totals = ClusterTotals(
                len(live), sum(n for n, _ in live), sum(s for _, s in live), int(trackers)
            )
        else:
            self.totals = dataclasses.replace(self.totals, trackers=int(trackers))
        if sweep:
            period_ms = max(500, int(self._config.interval_s * 1000))
            if await self.link.command(
                SWEEP_KEY, ("SET", SWEEP_KEY, self.tracker_id, "NX", "PX", period_ms - 100)
            ):
                removed = await self.expire()
                if removed:
                    log.info("expired %d silent peers", removed)

    # --- stats -----------------------------------------------------------------------------

    async def stats(
        self, task: bytes | None = None, peers_limit: int = 100, tasks_limit: int = 1000
    ) -> dict[str, Any]:
        """The ``GET /stats`` document of the whole cluster (``tracker.stats``' keys)."""
        await self.flush_index()
        if task is not None:
            hexes = [task.hex().encode()]
        else:
            hexes = await self.link.command(INDEX_KEY, ("ZRANGE", INDEX_KEY, 0, -1))
        now = self._clock()
        replies = await asyncio.gather(
            *[self.link.eval(self._stats, _key_of(h), [repr(now), peers_limit]) for h in hexes]
        )
        return stats_document(
            self,
            [(_hex_of(h), r) for h, r in zip(hexes, replies, strict=True) if r],
            now,
            tasks_limit,
        )

    @property
    def config(self) -> TrackerConfig:
        return self._config

    @property
    def started_s(self) -> float:
        return self._started

    def now(self) -> float:
        return self._clock()


def _hex_of(key: bytes | str) -> str:
    text = key.decode() if isinstance(key, bytes) else key
    if text.startswith("df:{"):
        return text[4:44]
    return text


def _key_of(hex_id: bytes | str) -> str:
    text = hex_id.decode() if isinstance(hex_id, bytes) else hex_id
    return f"df:{{{text}}}:t"


def _contact(member: bytes) -> PeerContact:
    peer_id = member[:20]
    rest = member[20:]
    ip4 = ip6 = None
    if len(rest) == 6:
        ip4, port = rest[:4], rest[4:]
    elif len(rest) == 18:
        ip6, port = rest[:16], rest[16:]
    else:
        ip4, ip6, port = rest[:4], rest[6:22], rest[4:6]
    return PeerContact.make(peer_id, int.from_bytes(port, "big"), ip4, ip6)


def _compact_address(address: str) -> bytes:
    """``host:port`` as compact bytes (address then port), b'' for a hostname."""
    host, _, port_text = address.rpartition(":")
    try:
        packed = ipaddress.ip_address(host.removeprefix("[").removesuffix("]")).packed
        return packed + int(port_text).to_bytes(2, "big")
    except ValueError:
        return b""


def _manifest(reply: list[Any]) -> TaskManifest:
    _, url, total, piece, pieces, validator, has_validator, ranges, digests, known = reply
    return TaskManifest.from_stored(
        url.decode(),
        int(total),
        int(piece),
        int(pieces),
        validator.decode() if has_validator else None,
        ranges != b"0",
        digests,
        known,
    )
