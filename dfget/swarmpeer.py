"""One task's peer in the swarm: the peer wire, the announce loop and the origin fetcher.

``SwarmPeer`` wires a ``peerwire.task.PeerTask`` (trading pieces with other peers) to the
tracker (``dfget.coordinator``) and to the origin (``dfget.origin``):

* announces every interval, and early once an origin assignment is done (never more often than
  the tracker's ``min interval``); connects to the peers each answer lists; when the tracker
  knows more digests than we do (``df known``), fetches its manifest so those pieces can be
  asked of peers; queues the pieces it is assigned to fetch from the origin;
* fetches queued pieces from the origin (Range requests, planned by ``dfget.originplan``;
  without Range support one stream of the whole file), stores them, offers them to peers and
  reports their digests;
* reports peers it banned for corrupt pieces to the tracker;
* saves the digests it learned beside the partial file (``PATH.dfpart.digests``) every few
  seconds and on close, so an interrupted download resumes even without a tracker.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import time
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any, Final

from dfget.coordinator import (
    AnnounceAnswer,
    Coordinator,
    PeerAddress,
    Progress,
    TaskManifestDoc,
    TrackerError,
    TrackerRefused,
)
from dfget.errors import OriginChanged, OriginError
from dfget.options import DownloadOptions, ProgressReport
from dfget.origin import Origin, OriginInfo
from dfget.originplan import (
    RUN_BYTES,
    RUN_SECONDS,
    OriginMeasure,
    next_run,
    origin_key,
    origin_workers,
)
from peerwire.connection import PeerListener, single_task_router
from peerwire.ids import PeerId, TaskId
from peerwire.manifest import Manifest, ManifestConflict
from peerwire.ratelimit import TokenBucket
from peerwire.storage import PieceStore
from peerwire.task import PeerTask, TaskStats

log = logging.getLogger(__name__)

#: Do not dial the same address again within this long.
REDIAL_S: Final = 30.0
#: Outgoing connection attempts at once.
MAX_DIALS: Final = 16
#: How often learned digests are saved beside the partial file.
SAVE_DIGESTS_S: Final = 2.0
#: Origin pieces' digests are reported to the tracker in batches, at most this often.
REPORT_EVERY_S: Final = 0.1
#: Announce retry delay while the tracker is unreachable.
TRACKER_RETRY_S: Final = 2.0
#: ``stopped`` must not hold up an exit for long.
STOPPED_TIMEOUT_S: Final = 3.0


class SharedListener:
    """One peer port for every task of a process (dfdaemon): connections are routed to the
    task whose info_hash their handshake names."""

    def __init__(self) -> None:
        self._tasks: dict[TaskId, PeerTask] = {}
        self.listener = PeerListener(self._tasks.get)
        self.port = 0

    async def start(self, host: str, port: int) -> int:
        _, self.port = await self.listener.start(host, port)
        return self.port

    def add(self, task: PeerTask) -> None:
        self._tasks[task.task_id] = task

    def remove(self, task: PeerTask) -> None:
        if self._tasks.get(task.task_id) is task:
            del self._tasks[task.task_id]

    async def close(self) -> None:
        await self.listener.close()


class SwarmPeer:
    def __init__(
        self,
        options: DownloadOptions,
        task_id: TaskId,
        store: PieceStore,
        *,
        executor: Executor,
        origin: Origin,
        origin_info: OriginInfo,
        tracker: Coordinator | None,
        download_bucket: TokenBucket | None,
        upload_bucket: TokenBucket | None,
        listener: SharedListener | None = None,
        origins: dict[str, OriginMeasure] | None = None,
    ) -> None:
        self.options = options
        self.task_id = task_id
        self.store = store
        self.origin = origin
        self.origin_info = origin_info
        self.tracker = tracker
        self.peer_id = PeerId.generate()
        self.task = PeerTask(
            store,
            peer_id=self.peer_id,
            executor=executor,
            download_bucket=download_bucket,
            upload_bucket=upload_bucket,
            secret=options.secret,
        )
        self.task.on_ban = self._on_ban
        self._download_rate_bps = download_bucket.rate_bps if download_bucket else None
        #: The pieces the tracker's last answer assigned us.
        self._last_assignment: set[int] = set()
        #: Answers that brought us new origin pieces.
        self._assignments = 0
        #: Set when the first assignment is (nearly) done: the next announce goes at once.
        self._announce_urgent = asyncio.Event()
        #: Bytes/s the origin delivered to this peer's last runs (None before the first).
        self._origin_bps: float | None = None
        self._unreported: dict[int, bytes] = {}
        self._reporter: asyncio.Task[None] | None = None
        self.shared = listener
        self.listener = PeerListener(single_task_router(self.task)) if listener is None else None
        self.port = 0
        self.fetching_everything = False
        self._layout = store.manifest.layout
        self._background: set[asyncio.Task[Any]] = set()
        self._announce_now = asyncio.Event()
        self._origin_queue: set[int] = set()
        #: The tracker lists an assignment in the order to fetch it: the upper part of a split
        #: one comes highest first (tracker.assign), towards the fetcher that keeps the rest.
        self._origin_descending = False
        #: Pieces in a Range request now (out of the queue, not stored yet).
        self._origin_inflight: set[int] = set()
        #: Bytes of the largest run fetched so far: the next may be at most 4x (slow start).
        self._run_bytes = 0
        #: The origin as measured by earlier tasks of this host (a daemon's, shared): a task
        #: from an origin measured before starts with runs sized for it, not with one piece.
        key = origin_key(origin_info.url)
        if origins is None:
            self._origin = OriginMeasure()
        else:
            self._origin = origins.setdefault(key, OriginMeasure())
        known_bps = self._origin.rate_bps
        if known_bps is not None:
            self._origin_bps = known_bps
            self._run_bytes = int(min(RUN_BYTES, known_bps * RUN_SECONDS)) // 4
        self._origin_wake = asyncio.Event()
        self._origin_workers: list[asyncio.Task[None]] = []
        self._dialed: dict[tuple[str, int], float] = {}
        self._dials = asyncio.Semaphore(MAX_DIALS)
        self._dialing = 0  # dials spawned and not yet connected (or failed)
        self._registered = False
        self._interval_s = 5.0
        self._min_interval_s = 1.0
        self._saved_known = sum(d is not None for d in store.digests)
        self._rate_window: tuple[float, int] = (time.monotonic(), self.done_bytes)
        self._rate_bps = 0.0
        self._closed = False
        #: Called when the tracker refuses this peer's first announce (the download decides).
        self.on_refused: Callable[[str], None] | None = None

    # -- state ------------------------------------------------------------------------------

    @property
    def completed(self) -> asyncio.Future[None]:
        return self.task.completed

    @property
    def stats(self) -> TaskStats:
        return self.task.stats

    @property
    def num_pieces(self) -> int:
        return self._layout.num_pieces

    @property
    def pieces_had(self) -> int:
        return len(self.task.scheduler.have)

    @property
    def pieces_missing(self) -> int:
        return self.num_pieces - self.pieces_had

    @property
    def peer_count(self) -> int:
        return self.task.peer_count

    @property
    def done_bytes(self) -> int:
        have = self.task.scheduler.have
        done = len(have) * self._layout.piece_length
        last = self.num_pieces - 1
        if last >= 0 and last in have:
            done -= self._layout.piece_length - self._layout.piece_size(last)
        return done

    def missing_summary(self) -> str:
        """Why the missing pieces are missing, for a stall message."""
        missing = list(self.task.scheduler.have.missing())
        no_digest = sum(self.store.digest(i) is None for i in missing)
        nobody = sum(self.task.scheduler.availability(i) == 0 for i in missing)
        origin = len(self.task.origin_claimed)
        return (
            f"{len(missing)} pieces missing: {no_digest} without a known digest, "
            f"{nobody} that no connected peer has, {origin} claimed for the origin; "
            f"{self.peer_count} peers connected"
        )

    def progress(self, phase: str) -> ProgressReport:
        now, done = time.monotonic(), self.done_bytes
        since, done_then = self._rate_window
        if now - since >= 1.0:
            self._rate_bps = (done - done_then) / (now - since)
            self._rate_window = (now, done)
        return ProgressReport(
            total_bytes=self._layout.total_length,
            done_bytes=done,
            from_peers_bytes=self.stats.downloaded_bytes,
            from_origin_bytes=self.stats.origin_bytes,
            uploaded_bytes=self.stats.uploaded_bytes,
            peers=self.peer_count,
            rate_bps=self._rate_bps,
            phase=phase,
        )

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        if self.listener is not None:
            _, self.port = await self.listener.start(self.options.peer_host, self.options.peer_port)
        else:
            assert self.shared is not None
            self.shared.add(self.task)
            self.port = self.shared.port
        self.task.start()
        if self.tracker is not None:
            self._spawn(self._announce_loop())
        self._spawn(self._save_digests_loop())

    async def seed(self, seconds: float) -> None:
        """Keep serving the finished file (announcing as a seed) for ``seconds``; ``math.inf``
        seeds until cancelled."""
        log.info("seeding for %.0fs", seconds)
        if math.isinf(seconds):
            await asyncio.get_running_loop().create_future()
        await asyncio.sleep(seconds)

    async def announce_completed(self) -> None:
        if self.tracker is None:
            return
        await self.flush_reports()
        with contextlib.suppress(TrackerError):
            await self.tracker.announce(self.task_id, self._tracker_progress(), "completed")

    async def close(self) -> None:
        """Stop everything; announce ``stopped``; keep the partial file and its digests."""
        if self._closed:
            return
        self._closed = True
        workers = [*self._background, *self._origin_workers]
        if self._reporter is not None:
            workers.append(self._reporter)
        for task in workers:
            task.cancel()
        try:
            await asyncio.gather(*workers, return_exceptions=True)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.flush_reports(), STOPPED_TIMEOUT_S)
            if self.tracker is not None and self._registered:
                with contextlib.suppress(TrackerError, TimeoutError):
                    await asyncio.wait_for(
                        self.tracker.service_down(self.task_id, self._tracker_progress()),
                        STOPPED_TIMEOUT_S,
                    )
        finally:  # also when cancelled while telling the tracker: connections and files
            try:
                await self.task.close()
                if self.listener is not None:
                    await self.listener.close()
                elif self.shared is not None:
                    self.shared.remove(self.task)
            finally:
                self._save_digests()
                self.store.close()

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.create_task(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # -- the tracker --------------------------------------------------------------------------

    def _tracker_progress(self) -> Progress:
        stats = self.stats
        left = self._layout.total_length - self.done_bytes
        return Progress(
            peer_id=self.peer_id,
            port=self.port,
            uploaded_bytes=stats.uploaded_bytes,
            downloaded_bytes=stats.downloaded_bytes + stats.origin_bytes,
            left_bytes=left,
            have=self.task.scheduler.have.to_bytes(),
            load=self.peer_count,
            zone=self.options.zone,
            can_source=self.options.back_to_source and left > 0,
            origin_bytes=stats.origin_bytes,
        )

    async def _announce_loop(self) -> None:
        assert self.tracker is not None
        loop = asyncio.get_running_loop()
        event = "started"
        failing = False
        while True:
            sent = loop.time()
            wait_s = self._interval_s
            try:
                answer = await self.tracker.announce(self.task_id, self._tracker_progress(), event)
            except TrackerRefused as exc:
                if not self._registered and self.on_refused is not None:
                    # The tracker will not have us (no cluster secret, full): not a swarm member.
                    self.on_refused(str(exc))
                    return
                log.warning("announce refused: %s", exc)
                wait_s = min(wait_s, TRACKER_RETRY_S)
            except TrackerError as exc:
                if not failing:
                    log.warning("announce failed (%s); keeping known peers, retrying", exc)
                failing = True
                wait_s = min(wait_s, TRACKER_RETRY_S)
            else:
                if failing:
                    log.info("tracker reachable again")
                failing = False
                event = ""
                self._registered = True
                self._interval_s = max(1.0, answer.interval_s)
                self._min_interval_s = max(0.5, min(answer.min_interval_s, self._interval_s))
                wait_s = self._interval_s
                if not answer.assignment and self.pieces_had == 0 and self.pieces_missing:
                    # Nothing to fetch and nothing yet: while a crowd arrives, an assignment may
                    # be split for us as soon as its fetcher has told its rate (tracker.assign).
                    wait_s = self._min_interval_s
                await self._apply(answer)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._announce_now.wait(), wait_s)
            self._announce_now.clear()
            early_s = self._min_interval_s - (loop.time() - sent)
            if early_s > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._announce_urgent.wait(), early_s)
            self._announce_urgent.clear()

    async def _apply(self, answer: AnnounceAnswer) -> None:
        log.debug(
            "announced: %d peers, assignment of %d pieces%s",
            len(answer.peers),
            len(answer.assignment),
            f" ({answer.assignment[0]}-{answer.assignment[-1]})" if answer.assignment else "",
        )
        if answer.pieces_known is None:
            await self._supply_manifest()  # a restarted tracker: give it back what we know
        else:
            if answer.pieces_known > self.store.known_digests:
                await self._learn_manifest()
        if not self.fetching_everything:
            # The answer names our whole current assignment: pieces the tracker gave to someone
            # else meanwhile (a newcomer took half of ours) leave our queue.
            assigned = set(answer.assignment)
            dropped = [index for index in self._origin_queue if index not in assigned]
            if dropped:
                self._origin_queue.difference_update(dropped)
                self.task.release_from_origin(dropped)
        if answer.assignment:
            if not set(answer.assignment) <= self._last_assignment:
                self._assignments += 1
                # New pieces: while a crowd arrives, newcomers may be given part of them
                # (tracker.assign); ask again soon (at ``min interval``) to hear of it before
                # the origin runs reach that part.
                self._announce_now.set()
            self._last_assignment = set(answer.assignment)
            self._origin_descending = answer.assignment[0] > answer.assignment[-1]
            workers = origin_workers(len(answer.assignment), self._origin)
            self._queue_origin(list(answer.assignment), workers=workers)
        for peer in answer.peers:
            if self._slots_left() <= 0:
                break  # the rest are not recorded as dialled: a later answer may list them
            self._dial(peer)

    async def _supply_manifest(self) -> None:
        assert self.tracker is not None
        manifest = self.store.manifest
        doc = TaskManifestDoc(
            url=manifest.url or self.options.url,
            total_length=manifest.total_length,
            piece_length=manifest.piece_length,
            piece_sha256=self.store.digests,
            validator=self.origin_info.validator,
            ranges=self.origin_info.accepts_ranges,
        )
        try:
            await self.tracker.put_manifest(self.task_id, doc)
            log.info("supplied the task manifest to the tracker (it had none)")
        except TrackerError as exc:
            log.warning("cannot supply the manifest to the tracker: %s", exc)

    async def _learn_manifest(self) -> None:
        assert self.tracker is not None
        try:
            doc = await self.tracker.get_manifest(self.task_id)
        except TrackerError as exc:
            log.warning("cannot fetch the manifest: %s", exc)
            return
        if doc is None or len(doc.piece_sha256) != self.num_pieces:
            return  # a restarted tracker: our next PUT-worthy event supplies it again
        fresh = {
            index: digest
            for index, digest in enumerate(doc.piece_sha256)
            if digest is not None and self.store.digest(index) is None
        }
        if fresh:
            learned = self.task.learn_digests(fresh)
            log.debug("learned %d digests from the tracker", learned)

    def _slots_left(self) -> int:
        """Peers we may still dial: ``dial_peers`` less peers, connections still handshaking and
        dials not yet connected. (Dialling every listed peer at once, 200 clients starting
        together made ~22,000 connections that the far end, already full, refused: 3 for
        every one kept, and most of the CPU of the swarm's first seconds.)"""
        busy = self.task.peer_count + self.task.connecting_count + self._dialing
        config = self.task.config
        return min(config.dial_peers, config.max_peers) - busy

    def _dial(self, peer: PeerAddress) -> None:
        if self._slots_left() <= 0:
            return  # not recorded as dialled: a later answer may list it again
        key = (peer.host, peer.port)
        now = time.monotonic()
        last = self._dialed.get(key)
        if last is not None and now - last < REDIAL_S:
            return
        self._dialed[key] = now
        if len(self._dialed) > 4096:  # bounded memory: forget the oldest attempts
            for old in sorted(self._dialed, key=self._dialed.__getitem__)[:1024]:
                del self._dialed[old]
        self._dialing += 1
        self._spawn(self._connect(peer.host, peer.port))

    async def _connect(self, host: str, port: int) -> None:
        try:
            async with self._dials:
                await self.task.connect(host, port)
        except (OSError, TimeoutError) as exc:
            log.debug("cannot connect to %s:%d: %s", host, port, exc)
        finally:
            self._dialing -= 1

    def _on_ban(self, peer_id: PeerId, address: str, reason: str) -> None:
        if self.tracker is None:
            return
        host, _, port = address.rpartition(":")
        subject = PeerAddress(host or "?", int(port) if port.isdigit() else 0, peer_id.raw)
        self._spawn(self._report(subject, reason))

    async def _report(self, subject: PeerAddress, reason: str) -> None:
        assert self.tracker is not None
        try:
            await self.tracker.report_error(self.task_id, self.peer_id, subject, "bad_piece")
            log.info("reported peer %s to the tracker: %s", subject.host, reason)
        except TrackerError as exc:
            log.warning("cannot report a bad peer: %s", exc)

    # -- the origin ---------------------------------------------------------------------------

    def fetch_everything_from_origin(self, workers: int) -> None:
        """Back-to-source for every missing piece not already on its way from a peer."""
        self.fetching_everything = True
        self._queue_origin(list(self.task.scheduler.have.missing()), workers=workers)

    def _queue_origin(self, indices: list[int], *, workers: int) -> None:
        # The tracker names our whole assignment each time: pieces already on their way from
        # the origin are not queued again.
        fresh = [
            i for i in indices if i not in self._origin_queue and i not in self._origin_inflight
        ]
        taken = self.task.claim_for_origin(fresh) if fresh else []
        self._origin_queue.update(taken)
        if not self.origin_info.accepts_ranges:
            workers = 1  # one stream of the whole file
        self._origin_workers = [w for w in self._origin_workers if not w.done()]
        while len(self._origin_workers) < workers:
            self._origin_workers.append(asyncio.create_task(self._origin_worker()))
        self._origin_wake.set()

    def _ask_for_more(self) -> None:
        """Announce soon to be given more origin pieces. After the first assignment at once,
        not at ``min interval``: the tracker sized it without knowing our rate (a share over
        its origin budget, ``tracker.assign``), so a lone peer on a fast origin has the rest
        of the file to come, and only the fetchers of a crowd's first round come early."""
        self._announce_now.set()
        if self._assignments == 1:
            self._announce_urgent.set()

    async def _origin_worker(self) -> None:
        try:
            while True:
                if not self._origin_queue:
                    self._origin_wake.clear()
                    self._ask_for_more()  # assignment done
                    await self._origin_wake.wait()
                    continue
                if self.origin_info.accepts_ranges:
                    run = self._take_run()
                    if len(self._origin_queue) <= len(self._last_assignment) // 2:
                        self._ask_for_more()  # before this runs dry
                    await self._fetch_run(run)
                else:
                    await self._stream_whole_file()
        except OriginError as exc:
            self._fail(exc)
        except OSError as exc:  # the local disk
            self._fail(exc)

    def _take_run(self) -> list[int]:
        """The lowest queued piece (the highest, when the assignment came highest first) and the
        queued pieces next to it: one Range request for the lot (the tracker assigns contiguous
        runs). Each piece is stored as soon as it has arrived (``_RunStorer``); a run is sized
        to take about ``RUN_SECONDS`` at the rate the origin has been delivering to us (slow
        start from one piece, unless this host measured the origin before; at most
        ``RUN_BYTES``, at most ``RUN_SECONDS`` of ``--rate``, and at most 4x the largest run so
        far: a first reply that came in a burst says little about the link), so that a run
        rarely reaches the far part of a long assignment, which a newcomer may be given
        meanwhile. Returns the run ascending."""
        limit = RUN_BYTES
        for rate_bps in (self._download_rate_bps, self._origin_bps):
            if rate_bps is not None:
                limit = min(limit, int(rate_bps * RUN_SECONDS))
        limit = min(limit, 4 * self._run_bytes)  # 0 at first: one piece, to measure the origin
        run, size = next_run(
            self._origin_queue, self._layout.piece_size, limit, descending=self._origin_descending
        )
        self._origin_queue.difference_update(run)
        self._origin_inflight.update(run)
        self._run_bytes = max(self._run_bytes, size)
        return run

    async def _fetch_run(self, run: list[int]) -> None:
        try:
            await self._fetch_run_pieces(run)
        finally:
            self._origin_inflight.difference_update(run)

    async def _fetch_run_pieces(self, run: list[int]) -> None:
        wanted = [index for index in run if not self.store.has_piece(index)]
        if not wanted:
            return
        first, last = wanted[0], wanted[-1]
        layout = self._layout
        ends = [layout.piece_offset(i) + layout.piece_size(i) for i in range(first, last + 1)]
        began = time.monotonic()
        log.debug("origin: pieces %d-%d", first, last)
        storer = _RunStorer(self, set(wanted))
        parts = self.origin.fetch_range_parts(layout.piece_offset(first), ends, self.origin_info)
        try:
            async with contextlib.aclosing(parts):
                async for data in parts:
                    await storer.add(data)
            await storer.finish()
        except OriginError as exc:
            await storer.finish()
            left = [index for index in wanted if index >= storer.next_index]
            if exc.retryable and not self.fetching_everything:
                # The swarm or the tracker's next assignment may do better than this origin now.
                log.warning("origin failed for pieces %d-%d (%s): leaving them", first, last, exc)
                self.task.release_from_origin(left)
                return
            raise
        finally:
            await storer.cancel()
        elapsed_s = max(time.monotonic() - began, 1e-3)
        measured = storer.received_bytes / elapsed_s
        # Smoothed, and growing at most 4x per run (slow start; a tiny first run on loopback
        # would otherwise claim gigabytes per second).
        previous = self._origin_bps
        self._origin_bps = (
            measured if previous is None else min(4 * previous, 0.5 * previous + 0.5 * measured)
        )
        self._origin.rate_bps = self._origin_bps
        if self.origin.response_s is not None:
            self._origin.response_s = self.origin.response_s
        workers = origin_workers(len(self._origin_queue), self._origin)
        if workers > len(self._origin_workers):
            self._queue_origin([], workers=workers)

    async def _stream_whole_file(self) -> None:
        """No Range support: read the whole body once, publishing each piece as it completes."""
        pending = bytearray()
        index = 0
        async for chunk in self.origin.stream(self.origin_info):
            pending += chunk
            while index < self.num_pieces and len(pending) >= self._layout.piece_size(index):
                size = self._layout.piece_size(index)
                piece = bytes(pending[:size])
                del pending[:size]
                # A piece the wire is already receiving is left to it (claim refused).
                if not self.store.has_piece(index) and self.task.claim_for_origin([index]):
                    await self._store_origin_piece(index, piece)
                self._origin_queue.discard(index)
                index += 1
        self._origin_queue.clear()

    async def _store_origin_piece(self, index: int, data: bytes) -> None:
        await self.store_origin_pieces(index, [data])

    async def store_origin_pieces(self, first: int, pieces: list[bytes]) -> None:
        try:
            digests = await self.task.add_origin_pieces(first, pieces)
        except ValueError as exc:
            raise OriginChanged(f"the origin's content changed under the task: {exc}") from exc
        if self.tracker is None:
            return
        # Reported in batches: one PUT per REPORT_EVERY_S for every piece fetched meanwhile.
        self._unreported.update(enumerate(digests, first))
        if self._reporter is None or self._reporter.done():
            self._reporter = asyncio.create_task(self._report_soon())

    async def _report_soon(self) -> None:
        # Pieces stored while a report is on its way go in the next one: loop until none are
        # left (no other reporter starts while this one runs).
        delay_s = REPORT_EVERY_S
        while self._unreported:
            await asyncio.sleep(delay_s)
            delay_s = REPORT_EVERY_S if await self.flush_reports() else TRACKER_RETRY_S

    async def flush_reports(self) -> bool:
        """Send the digests of origin pieces not reported yet (one request). False when the
        tracker could not be reached: the batch is kept for the next attempt."""
        if self.tracker is None or not self._unreported:
            return True
        batch, self._unreported = self._unreported, {}
        try:
            await self.tracker.report_pieces(self.task_id, batch)
        except ManifestConflict as exc:
            self._fail(
                OriginChanged(f"pieces from the origin differ from what other peers fetched: {exc}")
            )
        except TrackerError as exc:
            log.warning("cannot report %d pieces to the tracker (will retry): %s", len(batch), exc)
            self._unreported = batch | self._unreported
            return False
        return True

    def fail(self, error: Exception) -> None:
        """End the download with ``error`` (raised by the engine's wait)."""
        self._fail(error)

    def _fail(self, error: Exception) -> None:
        if not self.task.completed.done():
            self.task.completed.set_exception(error)

    # -- resume support -----------------------------------------------------------------------

    async def _save_digests_loop(self) -> None:
        while True:
            await asyncio.sleep(SAVE_DIGESTS_S)
            self._save_digests()

    def _save_digests(self) -> None:
        store = self.store
        if store.is_finalized:
            return
        digests = store.digests
        known = sum(d is not None for d in digests)
        if known == self._saved_known:
            return
        manifest = store.manifest
        document = Manifest(
            manifest.task_id, manifest.total_length, manifest.piece_length, digests, manifest.url
        ).to_json()
        path = store.output_path.with_name(store.output_path.name + ".dfpart.digests")
        scratch = path.with_name(path.name + ".tmp")
        try:
            scratch.write_text(document)
            os.replace(scratch, path)
        except OSError as exc:
            log.warning("cannot save digests to %s: %s", path, exc)
            return
        self._saved_known = known


class _RunStorer:
    """Stores the pieces of one origin run as they arrive: while one batch is hashed and
    written in the worker thread, the pieces that arrive meanwhile gather into the next batch
    (one piece per trip on a slow origin, many on a fast one)."""

    def __init__(self, peer: SwarmPeer, wanted: set[int]) -> None:
        self._peer, self._wanted = peer, wanted
        self.next_index = min(wanted)
        self.received_bytes = 0
        self._batch_first, self._batch = self.next_index, list[bytes]()
        self._storing: asyncio.Task[None] | None = None

    async def add(self, data: bytes) -> None:
        """The next piece of the run has arrived."""
        index, self.next_index = self.next_index, self.next_index + 1
        self.received_bytes += len(data)
        peer = self._peer
        if index in self._wanted and not peer.store.has_piece(index):
            if not self._batch:
                self._batch_first = index
            self._batch.append(data)
        else:
            # A peer's copy was verified meanwhile: not ours to store. A batch stays
            # consecutive, so the one gathered so far goes now.
            peer.task.release_from_origin([index])
            await self._flush(wait=True)
        await self._flush(wait=False)

    async def finish(self) -> None:
        """Store what is left and wait for it (errors of any batch are raised here)."""
        await self._flush(wait=True)
        await self._wait()

    async def cancel(self) -> None:
        """Stop a batch still being stored without raising (the run is being left)."""
        if self._storing is not None and not self._storing.done():
            with contextlib.suppress(Exception):
                await self._storing
        self._storing = None

    async def _flush(self, *, wait: bool) -> None:
        if not self._batch:
            return
        if not wait and self._storing is not None and not self._storing.done():
            return  # more gathers while the previous batch is stored
        await self._wait()  # the previous batch (its error, if any, is raised here)
        batch, self._batch = self._batch, []
        storing = self._peer.store_origin_pieces(self._batch_first, batch)
        self._storing = asyncio.create_task(storing)

    async def _wait(self) -> None:
        if self._storing is not None:
            storing, self._storing = self._storing, None
            await storing
