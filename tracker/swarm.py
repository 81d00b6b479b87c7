"""The tracker's registry: tasks, their peers, manifests and back-to-source plans. Pure.

``Swarm.announce`` turns one parsed announce (BEP 3 plus our ``df_*`` parameters) into an answer:
peers to try (``selection``), pieces to fetch from the origin (``assign``), and counts. State is
soft: peers that stop announcing are dropped by ``expire``, and a restarted tracker is whole
again after one interval (peers re-announce and re-``PUT`` their manifests). Time comes from the
injected ``clock``; nothing here does I/O.

Per peer, one ``__slots__`` record (about 1 KB with its contact and map entry, so 100,000 peers
fit easily). Each task's peer map is kept in least-recently-announced order (an announce moves
its peer to the end), so ``expire`` looks only at the front of each map.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from peerwire.auth import MAX_SKEW_S
from peerwire.manifest import ManifestConflict
from tracker.assign import SourcePlanner, bitfield_to_int, full_mask
from tracker.config import TrackerConfig
from tracker.manifests import ManifestUpdate, TaskManifest
from tracker.model import (
    AnnounceRequest,
    AnnounceResult,
    Event,
    PeerContact,
    PeerReport,
    ScrapeCounts,
)
from tracker.records import PeerRecord, TaskRecord, counts, find_by_address
from tracker.stats import stats_document

#: Reporters remembered per reported peer (oldest forgotten first): bounds a report flood.
MAX_REPORTERS = 16
#: How long a departed peer's last ``df_seq`` is remembered (the cluster secret's skew window:
#: an announce older than that is refused for its time anyway), and how many at most.
DEPARTED_MEMORY_S = MAX_SKEW_S
MAX_DEPARTED = 100_000


class SwarmFull(Exception):
    """A new task was refused because ``max_tasks`` are tracked; ``str()`` is the reason."""

    def __init__(self, reason: str = "tracker is tracking too many tasks") -> None:
        super().__init__(reason)


class Replayed(Exception):
    """An announce whose ``df_seq`` is not above the last one accepted from its peer: a
    captured announce sent again (``str()`` is the reason)."""


class Swarm:
    """Every task the tracker knows; the one owner of that state."""

    def __init__(self, config: TrackerConfig, clock: Callable[[], float]) -> None:
        self._config = config
        self._clock = clock
        self._started = clock()
        self._tasks: dict[bytes, TaskRecord] = {}
        self._departed: OrderedDict[tuple[bytes, bytes], tuple[int, float]] = OrderedDict()
        self._interval_s = max(1, round(config.interval_s))
        self._min_interval_s = max(1, round(config.min_interval_s))
        self._assign_ttl_s = int(config.assign_ttl_s)
        self._max_reporters = max(MAX_REPORTERS, config.bad_peer_exclude_reports)
        self.peer_count = 0
        self.seed_count = 0
        self.completions_total = 0
        self.reports_total = 0
        self.manifest_conflicts_total = 0
        self.peers_expired_total = 0
        self.assigned_pieces_total = 0
        self.origin_bytes_total = 0
        self.peer_bytes_total = 0

    @property
    def task_count(self) -> int:
        return len(self._tasks)

    # --- announce -------------------------------------------------------------------------

    def announce(self, req: AnnounceRequest) -> AnnounceResult:
        """Record what ``req`` says and answer it; SwarmFull for a new task past ``max_tasks``."""
        now = self._clock()
        stopped = req.event is Event.STOPPED
        task = self._tasks.get(req.info_hash)
        if req.seq is not None:
            self._check_seq(task, req, now)
        if task is None:
            if stopped:
                return self._answer(None, [])
            if len(self._tasks) >= self._config.max_tasks:
                raise SwarmFull()
            task = self._tasks[req.info_hash] = TaskRecord(
                now, self._config.bad_peer_exclude_reports
            )
        peers = task.peers
        peer = peers.pop(req.peer_id, None)
        if peer is None:
            if stopped:
                return self._answer(task, [])
            if len(peers) >= self._config.max_peers_per_task:  # answered, not stored
                contact = PeerContact.make(req.peer_id, req.port, req.ip4, req.ip6)
                chosen = task.ranking.select(req.peer_id, contact, req.zone, req.numwant)
                return self._answer(task, chosen)
            peer = PeerRecord(req, now)
            self.peer_count += 1
            first = True
        else:
            first = False
        peers[req.peer_id] = peer  # (re)inserted last: the map stays in last-announce order
        self._update(task, peer, req, now, first=first)
        peer.seq = req.seq
        if stopped:
            self._depart(req.info_hash, peer, now)
            self._remove(task, peer, now)
            if not peers and not _worth_keeping(task):
                del self._tasks[req.info_hash]
            return self._answer(task, [])
        chosen = task.ranking.select(req.peer_id, peer.contact, peer.zone, req.numwant)
        assignment: tuple[int, ...] = ()
        planner, manifest = task.planner, task.manifest
        if planner is not None and manifest is not None:
            if peer.can_source and peer.left != 0:
                before = planner.assigned_total
                assignment = planner.assign(
                    peer.peer_id,
                    now,
                    self.available(task),
                    # Without Range support the one fetcher streams it all: everything is its.
                    rate_bps=(peer.download_bps or None) if manifest.ranges else math.inf,
                    piece_length=manifest.piece_length,
                    interval_s=self._config.interval_s,
                    # None on a first announce: whether a crowd follows is not known yet.
                    contenders=None if first else len(task.peers) - task.seeds,
                )
                self.assigned_pieces_total += planner.assigned_total - before
            elif planner.fetchers:
                planner.release(peer.peer_id)  # done, or no longer allowed to fetch
        return self._answer(task, chosen, assignment)

    def _update(
        self, task: TaskRecord, peer: PeerRecord, req: AnnounceRequest, now: float, *, first: bool
    ) -> None:
        """Fold one announce into the peer's record and the task's counters."""
        contact = peer.contact
        if contact.port != req.port or contact.ip4 != req.ip4 or contact.ip6 != req.ip6:
            peer.contact = PeerContact.make(req.peer_id, req.port, req.ip4, req.ip6)
        if not first:
            # Rates from deltas since the previous announce; a client that restarted reports
            # smaller totals than before: count nothing rather than a negative rate.
            downloaded = max(0, req.downloaded_bytes - peer.downloaded)
            uploaded = max(0, req.uploaded_bytes - peer.uploaded)
            from_origin = max(0, req.origin_bytes - peer.origin)
            task.origin_bytes += from_origin
            self.origin_bytes_total += from_origin
            from_peers = max(0, downloaded - from_origin)
            task.peer_bytes += from_peers
            self.peer_bytes_total += from_peers
            elapsed_s = now - peer.last_seen
            if elapsed_s > 0:
                download_bps, upload_bps = downloaded / elapsed_s, uploaded / elapsed_s
                task.download_bps += download_bps - peer.download_bps
                task.upload_bps += upload_bps - peer.upload_bps
                peer.download_bps, peer.upload_bps = download_bps, upload_bps
            if downloaded:
                peer.grew_at = now
        peer.downloaded, peer.uploaded = req.downloaded_bytes, req.uploaded_bytes
        peer.origin = req.origin_bytes
        peer.last_seen = now

        left, previous_left = req.left_bytes, peer.left
        if (left == 0) != (previous_left == 0):
            delta = 1 if left == 0 else -1
            task.seeds += delta
            self.seed_count += delta
        # A completion: event=completed, or left went from >0 to 0 (aria2c --seed-time=0 sends
        # only stopped with left=0). A peer that arrives complete is a seed, not a completion.
        if (
            left == 0
            and not peer.counted
            and (req.event is Event.COMPLETED or (previous_left is not None and previous_left > 0))
        ):
            peer.counted = True
            task.completions += 1
            self.completions_total += 1
        peer.left = left
        peer.load, peer.zone, peer.can_source = req.load, req.zone, req.can_source

        have = self._have_of(task, req)
        old = peer.have
        if have != old:
            peer.have = have
            if have is not None and (old is None or not old & ~have):
                task.available |= have  # pieces only grew: the union grows with them
            elif old:
                task.available_stale = True
        peer.progress = self._progress(task, peer)
        self._rank(task, peer, now)

    @staticmethod
    def _have_of(task: TaskRecord, req: AnnounceRequest) -> int | None:
        """The peer's pieces as a set int, or None when unknown (``df_have``)."""
        if task.manifest is None:
            return None
        if req.have is not None and len(req.have) == task.have_bytes:
            return bitfield_to_int(req.have) & task.full  # BEP 3: spare bits mean nothing
        if req.left_bytes == 0:
            return task.full  # a stock seed has everything; one shared int for all seeds
        return None

    @staticmethod
    def _progress(task: TaskRecord, peer: PeerRecord) -> float:
        """Fraction of the file the peer holds, 0..1, from the best evidence at hand."""
        manifest = task.manifest
        if manifest is not None:
            if peer.have is not None and manifest.num_pieces:
                return peer.have.bit_count() / manifest.num_pieces
            if peer.left is not None and manifest.total_length:
                done = manifest.total_length - peer.left
                return min(1.0, max(0.0, done / manifest.total_length))
        return 1.0 if peer.left == 0 else 0.0

    def _rank(self, task: TaskRecord, peer: PeerRecord, now: float) -> None:
        task.ranking.place(
            peer, progress=peer.progress, load=peer.load, bad_reports=self._bad(peer, now)
        )

    def _bad(self, peer: PeerRecord, now: float) -> int:
        """Distinct reporters of ``peer`` within ``bad_peer_ttl_s``; forgets older reports."""
        reports = peer.reports
        if reports is None:
            return 0
        oldest_s = now - self._config.bad_peer_ttl_s
        for reporter in [r for r, at in reports.items() if at <= oldest_s]:
            del reports[reporter]
        if not reports:
            peer.reports = None
            return 0
        return len(reports)

    def available(self, task: TaskRecord) -> int:
        """Pieces some live peer holds; recomputed only after a peer lost pieces or left."""
        if task.available_stale:
            union = 0
            for peer in task.peers.values():
                if peer.have:
                    union |= peer.have
            task.available = union
            task.available_stale = False
        return task.available

    def _check_seq(self, task: TaskRecord | None, req: AnnounceRequest, now: float) -> None:
        """Replayed unless ``df_seq`` is above the last accepted from the peer, present or
        recently departed."""
        assert req.seq is not None
        peer = task.peers.get(req.peer_id) if task is not None else None
        last = peer.seq if peer is not None else None
        if peer is None:
            departed = self._departed.get((req.info_hash, req.peer_id))
            if departed is not None and now - departed[1] <= DEPARTED_MEMORY_S:
                last = departed[0]
        if last is not None and req.seq <= last:
            raise Replayed("replayed announce: df_seq is not above the last one accepted")

    def _depart(self, info_hash: bytes, peer: PeerRecord, now: float) -> None:
        """Remember a leaving peer's last ``df_seq`` for a while, so that none of its
        announces can be replayed to bring it back."""
        if peer.seq is None:
            return
        departed = self._departed
        departed[(info_hash, peer.peer_id)] = (peer.seq, now)
        while departed:
            key, (_, when) = next(iter(departed.items()))
            if now - when <= DEPARTED_MEMORY_S and len(departed) <= MAX_DEPARTED:
                break
            del departed[key]

    def _remove(self, task: TaskRecord, peer: PeerRecord, now: float) -> None:
        """Take ``peer`` out of ``task``: counts, ranking, assignment, union of pieces."""
        del task.peers[peer.peer_id]
        self.peer_count -= 1
        task.ranking.remove(peer)
        task.reported.discard(peer.peer_id)
        if task.planner is not None:
            task.planner.release(peer.peer_id)
        if peer.left == 0:
            task.seeds -= 1
            self.seed_count -= 1
        if peer.have:
            task.available_stale = True
        task.download_bps -= peer.download_bps
        task.upload_bps -= peer.upload_bps
        if not task.peers:
            task.idle_since = now
            task.download_bps = task.upload_bps = 0.0  # no float residue in an empty task

    def _answer(
        self, task: TaskRecord | None, chosen: list[PeerContact], assignment: tuple[int, ...] = ()
    ) -> AnnounceResult:
        complete = incomplete = 0
        known: int | None = None
        if task is not None:
            complete = task.seeds
            incomplete = len(task.peers) - complete
            if task.manifest is not None:
                known = task.manifest.known
        return AnnounceResult(
            interval_s=self._interval_s,
            min_interval_s=self._min_interval_s,
            complete=complete,
            incomplete=incomplete,
            peers=chosen,
            assignment=assignment,
            assignment_ttl_s=self._assign_ttl_s if assignment else 0,
            pieces_known=known,
        )

    # --- scrape, manifests, reports -------------------------------------------------------

    def scrape(self, info_hashes: tuple[bytes, ...]) -> dict[bytes, ScrapeCounts]:
        """BEP 48 counts of the known tasks among ``info_hashes``; unknown ones are omitted."""
        files: dict[bytes, ScrapeCounts] = {}
        for info_hash in info_hashes:
            task = self._tasks.get(info_hash)
            if task is not None:
                files[info_hash] = counts(task)
        return files

    def scrape_all(self, limit: int) -> dict[bytes, ScrapeCounts]:
        """Counts of up to ``limit`` tasks (a full scrape, when the operator enabled it)."""
        files: dict[bytes, ScrapeCounts] = {}
        for info_hash, task in self._tasks.items():
            if len(files) >= limit:
                break
            files[info_hash] = counts(task)
        return files

    def get_manifest(self, task: bytes) -> TaskManifest | None:
        record = self._tasks.get(task)
        return None if record is None else record.manifest

    def put_manifest(self, task: bytes, update: ManifestUpdate) -> TaskManifest:
        """Create or extend the manifest of ``task`` (creating the task if needed).

        ManifestError (bad or incomplete first document) and ManifestConflict (disagrees with
        the stored one; counted) propagate; SwarmFull when a new task is past ``max_tasks``.
        """
        record = self._tasks.get(task)
        if record is None and len(self._tasks) >= self._config.max_tasks:
            raise SwarmFull()
        if record is not None and record.manifest is not None:
            try:
                record.manifest.merge(update)
            except ManifestConflict:
                self.manifest_conflicts_total += 1
                raise
            return record.manifest
        manifest = TaskManifest.create(update)
        now = self._clock()
        if record is None:
            record = self._tasks[task] = TaskRecord(now, self._config.bad_peer_exclude_reports)
        record.manifest = manifest
        record.full = full_mask(manifest.num_pieces)
        record.have_bytes = (manifest.num_pieces + 7) // 8
        # An origin without Range support can only be read from the start: one fetcher streams
        # the whole file (every piece is its assignment) and the swarm trades what it publishes.
        record.planner = SourcePlanner(
            manifest.num_pieces,
            budget=self._config.origin_budget if manifest.ranges else 1,
            max_pieces=self._config.assign_max_pieces if manifest.ranges else manifest.num_pieces,
            ttl_s=self._config.assign_ttl_s,
            fair_share=True,
            split_large=True,
        )
        # Peers' pieces were unknown without a manifest; they tell again on their next announce.
        record.available, record.available_stale = 0, False
        if not record.peers:
            record.idle_since = now
        return manifest

    def report(self, task: bytes, report: PeerReport) -> bool:
        """Remember that ``report.reporter`` saw the subject misbehave; True if it was found."""
        self.reports_total += 1
        record = self._tasks.get(task)
        if record is None:
            return False
        subject = record.peers.get(report.peer_id) if report.peer_id is not None else None
        if subject is None and report.address is not None:
            subject = find_by_address(record, report.address)
        if subject is None:
            return False
        if report.reporter == subject.peer_id:
            return True  # nobody votes on itself
        reports = subject.reports
        if reports is None:
            reports = subject.reports = {}
        reports.pop(report.reporter, None)
        now = self._clock()
        reports[report.reporter] = now
        if len(reports) > self._max_reporters:
            del reports[next(iter(reports))]
        record.reported.add(subject.peer_id)
        self._rank(record, subject, now)
        return True

    # --- soft state -----------------------------------------------------------------------

    def expire(self) -> int:
        """Drop silent peers, stale reports and assignments, idle tasks; returns peers dropped.

        A peer silent for more than ``peer_timeout_s`` is gone (its assignment is released at
        once). A task without peers is dropped once idle for ``task_ttl_s`` (it keeps its
        manifest for returning peers and its counts for scrapes until then), at once when it
        has neither a manifest nor a completion.
        """
        now = self._clock()
        deadline = now - self._config.peer_timeout_s
        removed = 0
        idle: list[bytes] = []
        for key, task in self._tasks.items():
            silent: list[PeerRecord] = []
            for peer in task.peers.values():  # least recently announced first
                if peer.last_seen >= deadline:
                    break
                silent.append(peer)
            for peer in silent:
                self._depart(key, peer, now)
                self._remove(task, peer, now)
            removed += len(silent)
            for peer_id in list(task.reported):
                peer = task.peers[peer_id]
                self._rank(task, peer, now)
                if peer.reports is None:
                    task.reported.discard(peer_id)
            if task.planner is not None and task.planner.fetchers:
                task.planner.expire(now)
            if not task.peers and (
                not _worth_keeping(task) or now - task.idle_since > self._config.task_ttl_s
            ):
                idle.append(key)
        for key in idle:
            self._tasks.pop(key, None)
        self.peers_expired_total += removed
        return removed

    def assignment_of(self, task: bytes, peer_id: bytes) -> tuple[int, ...]:
        """The pieces ``peer_id`` is assigned now, in the order to fetch them."""
        record = self._tasks.get(task)
        if record is None or record.planner is None:
            return ()
        return record.planner.assignment_of(peer_id)

    # --- stats (dftop) --------------------------------------------------------------------

    def stats(
        self, task: bytes | None = None, peers_limit: int = 100, tasks_limit: int = 1000
    ) -> dict[str, Any]:
        """The ``GET /stats`` document (see ``tracker.stats``)."""
        return stats_document(self, self._tasks, task, peers_limit, tasks_limit)

    @property
    def config(self) -> TrackerConfig:
        return self._config

    @property
    def started_s(self) -> float:
        return self._started

    def now(self) -> float:
        return self._clock()


def _worth_keeping(task: TaskRecord) -> bool:
    """A task without peers is kept for ``task_ttl``: its manifest for returning peers, its
    completions for scrapes (BEP 48 ``downloaded``). One with neither goes at once."""
    return task.manifest is not None or task.completions > 0
