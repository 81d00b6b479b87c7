"""The download engine: one URL in, one verified file out, through the swarm when there is one.

``download(options)`` (async) and ``download_sync(options)`` are the library API; the ``dfget``
command is a thin shell over them. One download, start to end:

1. Identity (``identity.task_id_for``): the URL without ``--filter`` parameters plus ``--tag``,
   or the ``--digest`` alone. Headers never enter it.
2. The manifest: the tracker's (``GET /tasks/<id>``); when it has none, this peer probes the
   origin (length, validator, Range support), picks the piece length and ``PUT``s it.
3. A ``PieceStore`` with open digests beside the output (``PATH.dfpart``; verified pieces are
   recorded, so the same command resumes) and a ``PeerTask`` listening for other peers.
4. Announces every interval (earlier when an origin assignment is done): the answer brings
   peers to connect to, news of digests (``df known``: fetch the manifest again, learn them,
   ask peers for those pieces) and pieces to fetch from the origin (``df assign``). Origin pieces
   are fetched with Range requests, stored, offered to peers and their digests reported.
5. Fallback: no tracker reachable, or no progress for ``STALL_S``, and the missing pieces come
   from the origin directly (logged, counted in the result), unless back-to-source is disabled,
   which is then a ``NoPeers`` error.
6. Complete: the whole-file ``--digest`` is checked, the file renamed into place, ``completed``
   announced; the peer keeps seeding for ``seed_time_s``, then announces ``stopped``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import aiohttp
import uvloop

from dfget.coordinator import HttpTracker, TaskManifestDoc, TrackerError
from dfget.errors import DigestMismatch, DownloadTimeout, NoPeers, OriginChanged
from dfget.identity import task_id_for
from dfget.options import DownloadOptions, DownloadResult, ProgressReport
from dfget.origin import Origin, OriginInfo
from dfget.originplan import OriginMeasure
from dfget.swarmpeer import SharedListener, SwarmPeer
from peerwire.ids import TaskId
from peerwire.layout import choose_piece_length
from peerwire.manifest import Manifest, ManifestConflict
from peerwire.ratelimit import AsyncRateLimiter, TokenBucket
from peerwire.storage import DigestMismatchError, PieceStore

log = logging.getLogger(__name__)

#: No verified piece for this long while incomplete: the swarm is stuck, go to the origin. Long
#: enough that a peer of a large swarm on slow links, waiting for its first pieces while the
#: origin's fetchers work, does not stampede the origin.
STALL_S: Final = 30.0
#: With back-to-source disabled, give up after this long without progress.
NO_PEERS_S: Final = 60.0
#: How often progress is reported to ``on_progress``.
PROGRESS_EVERY_S: Final = 0.25
#: Concurrent origin requests when this peer fetches everything itself.
DIRECT_FETCHERS: Final = 4


@dataclass(frozen=True, slots=True)
class Host:
    """What a long-lived node (dfdaemon) shares between its downloads: the host-wide token
    buckets (each task's ``--rate`` bucket is a child of ``download``) and one peer port."""

    download: TokenBucket | None = None
    upload: TokenBucket | None = None
    listener: SharedListener | None = None
    #: Each origin as last measured (``originplan.origin_key`` -> rate, answer time): the next
    #: task from it skips the slow start of its Range requests and knows how many to send.
    origins: dict[str, OriginMeasure] = field(default_factory=dict)
    #: One HTTP client for every task's origin requests, so that connections to an origin are
    #: kept and reused from one task to the next (no cookies kept: tasks carry their own
    #: credentials). None: each download opens its own.
    origin_session: aiohttp.ClientSession | None = None


async def download(
    options: DownloadOptions,
    *,
    on_progress: Callable[[ProgressReport], None] | None = None,
    on_complete: Callable[[DownloadResult], None] | None = None,
    host: Host | None = None,
    on_store: Callable[[PieceStore], None] | None = None,
    on_piece: Callable[[int], None] | None = None,
) -> DownloadResult:
    """Download ``options.url`` to ``options.output``; see the module docstring.

    Raises a ``dfget.errors.DownloadError`` (digest mismatch, origin error, timeout, no peers),
    ``OSError`` for the local disk, ``ValueError`` for bad options. Cancelled (Ctrl-C), it keeps
    the verified pieces beside the output and announces ``stopped``; run it again to resume.

    ``on_complete`` is called with the result as soon as the file is at its path, before the
    seeding time; with ``seed_time_s=math.inf`` the download then seeds until cancelled (how
    dfdaemon keeps its cache in the swarm). ``host`` shares limits and a peer port between
    downloads of one process. ``on_store`` receives the piece store once it is open and
    ``on_piece`` each piece index as it is verified: a reader can stream the file in order
    while it downloads (dfdaemon's registry mirror does).
    """
    download = _Download(options, on_progress, on_complete, host or Host())
    download.on_store, download.on_piece = on_store, on_piece
    return await download.run()


def download_sync(
    options: DownloadOptions, *, on_progress: Callable[[ProgressReport], None] | None = None
) -> DownloadResult:
    """``download`` on a fresh uvloop event loop, for code that is not async."""
    return uvloop.run(download(options, on_progress=on_progress))


class _Download:
    def __init__(
        self,
        options: DownloadOptions,
        on_progress: Callable[[ProgressReport], None] | None,
        on_complete: Callable[[DownloadResult], None] | None,
        host: Host,
    ) -> None:
        self.options = options
        self.on_progress = on_progress
        self.on_complete = on_complete
        self.host = host
        self.on_store: Callable[[PieceStore], None] | None = None
        self.on_piece: Callable[[int], None] | None = None
        self.task_id = task_id_for(
            options.url,
            filters=options.filters,
            tag=options.tag,
            digest_sha256=options.digest_sha256,
        )
        self.started = time.monotonic()
        clock = asyncio.get_running_loop().time
        self.download_bucket = _bucket(options.rate_bps, host.download, clock)
        self.upload_bucket = _bucket(options.upload_rate_bps, host.upload, clock)
        limiter = AsyncRateLimiter(self.download_bucket) if self.download_bucket else None
        self.origin = Origin(
            options.url, options.headers, limiter=limiter, session=host.origin_session
        )
        self.tracker = (
            HttpTracker(list(options.trackers), secret=options.secret) if options.trackers else None
        )
        self.fallback_reason: str | None = None
        self.phase = "starting"

    async def run(self) -> DownloadResult:
        executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="dfget-io")
        peer: SwarmPeer | None = None
        reporter: asyncio.Task[None] | None = None
        try:
            doc, info = await self._manifest()
            store = await self._open_store(doc, executor)
            if self.on_store is not None:
                self.on_store(store)
            peer = SwarmPeer(
                self.options,
                self.task_id,
                store,
                executor=executor,
                origin=self.origin,
                origin_info=info,
                tracker=self.tracker,
                download_bucket=self.download_bucket,
                upload_bucket=self.upload_bucket,
                listener=self.host.listener,
                origins=self.host.origins,
            )
            peer.task.on_piece = self.on_piece
            peer.on_refused = lambda reason: self._refused(peer, reason)
            await peer.start()
            if on_progress := self.on_progress:
                reporter = asyncio.create_task(self._report_loop(peer, on_progress))
            if self.tracker is None:
                peer.fetch_everything_from_origin(DIRECT_FETCHERS)
            self.phase = "downloading"
            await self._until_complete(peer)
            self.phase = "verifying"
            await self._finalize(peer, executor)
            result = self._result(peer)
            if self.on_complete is not None:
                self.on_complete(result)
            if self.options.seed_time_s > 0 and self.tracker is not None:
                self.phase = "seeding"
                await peer.seed(self.options.seed_time_s)
            self.phase = "done"
            if on_progress:
                on_progress(peer.progress(self.phase))
            return result
        finally:
            if reporter is not None:
                reporter.cancel()
            tracker = self.tracker
            await _close_all(
                peer.close if peer is not None else None,
                tracker.close if tracker is not None else None,
                self.origin.close,
            )
            executor.shutdown(wait=True)

    # -- steps --------------------------------------------------------------------------------

    async def _manifest(self) -> tuple[TaskManifestDoc, OriginInfo]:
        """The task's manifest (the tracker's, or made from an origin probe) and what to expect
        from the origin; without a reachable tracker, switch to origin-only."""
        options = self.options
        doc: TaskManifestDoc | None = None
        if self.tracker is not None:
            try:
                if options.origin_info is not None and options.back_to_source:
                    doc = await self._offer_manifest(options.origin_info)
                else:
                    doc = await self.tracker.get_manifest(self.task_id)
            except TrackerError as exc:
                await self._lose_tracker(f"tracker unreachable: {exc}")
        if doc is None and not options.back_to_source:
            doc = await self._wait_for_manifest()
        if doc is None:
            # The caller may know the origin already (a registry's HEAD of a blob): no probe.
            info = options.origin_info or await self.origin.probe()
            doc = _new_manifest(options.url, info)
            if self.tracker is not None:
                try:
                    doc = await self.tracker.put_manifest(self.task_id, doc)
                except ManifestConflict:
                    # Someone else made it first, with other geometry: theirs is the task's.
                    fetched = await self.tracker.get_manifest(self.task_id)
                    if fetched is None:
                        raise
                    doc = fetched
                except TrackerError as exc:
                    await self._lose_tracker(f"tracker unreachable: {exc}")
            if doc.validator != info.validator or doc.total_length != info.total_length:
                raise OriginChanged(
                    "the origin's content differs from the task's manifest "
                    f"(length {info.total_length} vs {doc.total_length}, "
                    f"validator {info.validator!r} vs {doc.validator!r})"
                )
            return doc, info
        expect = OriginInfo(
            url=options.url,
            total_length=doc.total_length,
            validator=doc.validator,
            accepts_ranges=doc.ranges,
        )
        return doc, expect

    async def _offer_manifest(self, info: OriginInfo) -> TaskManifestDoc | None:
        """The caller knows the origin already (a registry's HEAD): our manifest is PUT at
        once instead of asked for first. The answer is the task's manifest, ours or the one
        the tracker had (merged: the same as a GET), so a download through dfdaemon starts one
        round trip sooner. One of other geometry (a conflict) is fetched instead."""
        assert self.tracker is not None
        try:
            return await self.tracker.put_manifest(
                self.task_id, _new_manifest(self.options.url, info)
            )
        except ManifestConflict:
            return await self.tracker.get_manifest(self.task_id)

    async def _wait_for_manifest(self) -> TaskManifestDoc:
        """Back-to-source disabled and no manifest yet: only the swarm can tell the size."""
        deadline = time.monotonic() + NO_PEERS_S
        while self.tracker is not None and time.monotonic() < deadline:
            try:
                doc = await self.tracker.get_manifest(self.task_id)
            except TrackerError as exc:
                raise NoPeers(
                    f"no tracker reachable and back-to-source is disabled: {exc}"
                ) from exc
            if doc is not None:
                return doc
            await asyncio.sleep(1.0)
        if self.tracker is None:
            raise NoPeers("no tracker reachable and back-to-source is disabled")
        raise NoPeers(
            f"no peer has published this task within {NO_PEERS_S:.0f}s and back-to-source is "
            "disabled"
        )

    def _refused(self, peer: SwarmPeer | None, reason: str) -> None:
        """The tracker refused our first announce: the swarm is closed to us."""
        assert peer is not None
        if not self.options.back_to_source:
            peer.fail(
                NoPeers(f"the tracker refused this peer ({reason}); back-to-source is disabled")
            )
            return
        log.warning("the tracker refused this peer (%s): downloading from the origin", reason)
        self.fallback_reason = f"tracker refused the announce: {reason}"
        peer.fetch_everything_from_origin(DIRECT_FETCHERS)

    async def _lose_tracker(self, reason: str) -> None:
        if not self.options.back_to_source:
            raise NoPeers(f"{reason}; back-to-source is disabled")
        log.warning("%s: downloading from the origin directly", reason)
        self.fallback_reason = reason
        if self.tracker is not None:
            await self.tracker.close()
        self.tracker = None

    async def _open_store(self, doc: TaskManifestDoc, executor: ThreadPoolExecutor) -> PieceStore:
        output = self.options.output
        local = _load_digests(output, self.task_id, doc)
        digests = tuple(
            remote if remote is not None else local.get(index)
            for index, remote in enumerate(doc.piece_sha256)
        )
        manifest = Manifest(self.task_id, doc.total_length, doc.piece_length, digests, doc.url)
        loop = asyncio.get_running_loop()
        check_digest = self.options.digest_sha256 is not None

        def open_store() -> PieceStore:
            store = PieceStore.create(output, manifest, resume=True, open_digests=True)
            if check_digest:
                # Hashed in order as pieces arrive: no second read of the file at the end, and
                # a reader streaming the task knows the verdict with the last piece.
                store.track_file_digest()
            return store

        return await loop.run_in_executor(executor, open_store)

    async def _until_complete(self, peer: SwarmPeer) -> None:
        """Wait for every piece; go to the origin when the swarm stalls; honour the timeout."""
        timeout_s = self.options.timeout_s
        deadline = None if timeout_s is None else self.started + timeout_s
        last_count, last_progress = -1, time.monotonic()
        while not peer.completed.done():
            wait_s = 1.0
            if deadline is not None:
                wait_s = min(wait_s, max(0.0, deadline - time.monotonic()))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(peer.completed), wait_s)
            if peer.completed.done():
                break
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                raise DownloadTimeout(
                    f"timed out after {timeout_s:g}s with {peer.pieces_missing} of "
                    f"{peer.num_pieces} pieces missing (verified pieces are kept; run again)"
                )
            count = peer.pieces_had
            if count != last_count:
                last_count, last_progress = count, now
                continue
            stalled_s = now - last_progress
            if self.options.back_to_source:
                if stalled_s >= STALL_S and not peer.fetching_everything:
                    reason = f"the swarm made no progress for {stalled_s:.0f}s"
                    log.warning(
                        "%s (%s): fetching them from the origin", reason, peer.missing_summary()
                    )
                    self.fallback_reason = reason
                    peer.fetch_everything_from_origin(DIRECT_FETCHERS)
            elif stalled_s >= NO_PEERS_S:
                raise NoPeers(
                    f"no peer delivered a piece for {stalled_s:.0f}s ({peer.peer_count} connected) "
                    "and back-to-source is disabled"
                )
        peer.completed.result()  # raises the engine's error (origin, disk) if it failed

    async def _finalize(self, peer: SwarmPeer, executor: ThreadPoolExecutor) -> None:
        loop = asyncio.get_running_loop()
        store = peer.store
        try:
            await loop.run_in_executor(executor, store.finalize, self.options.digest_sha256)
        except DigestMismatchError as exc:
            await peer.close()
            store.discard()  # wrong content: a retry must start over, not resume it
            raise DigestMismatch(
                f"sha256 of the downloaded file is {exc.actual.hex()}, expected "
                f"{exc.expected.hex()}; nothing was written to {self.options.output}"
            ) from exc
        _digests_path(self.options.output).unlink(missing_ok=True)
        await peer.announce_completed()

    def _result(self, peer: SwarmPeer) -> DownloadResult:
        stats = peer.stats
        return DownloadResult(
            output=self.options.output,
            size_bytes=peer.store.manifest.total_length,
            elapsed_s=time.monotonic() - self.started,
            from_peers_bytes=stats.downloaded_bytes,
            from_origin_bytes=stats.origin_bytes,
            uploaded_bytes=stats.uploaded_bytes,
            fell_back=self.fallback_reason is not None,
            fallback_reason=self.fallback_reason,
            peers_banned=tuple(stats.peers_banned),
            task_id=self.task_id.hex(),
            manifest=Manifest(
                self.task_id,
                peer.store.manifest.total_length,
                peer.store.manifest.piece_length,
                peer.store.digests,
                self.options.url,
            ),
            validator=peer.origin_info.validator,
            ranges=peer.origin_info.accepts_ranges,
        )

    async def _report_loop(
        self, peer: SwarmPeer, on_progress: Callable[[ProgressReport], None]
    ) -> None:
        while True:
            on_progress(peer.progress(self.phase))
            await asyncio.sleep(PROGRESS_EVERY_S)


async def _close_all(*closers: Callable[[], Awaitable[None]] | None) -> None:
    """Await every closer in turn, also after one failed or the task was cancelled meanwhile
    (a download that ends by itself may be cancelled while it cleans up); the first error is
    raised at the end."""
    error: BaseException | None = None
    for close in closers:
        if close is None:
            continue
        try:
            await close()
        except BaseException as exc:  # re-raised below, once the others ran
            error = error or exc
    if error is not None:
        raise error


def _bucket(
    rate_bps: float | None, parent: TokenBucket | None, clock: Callable[[], float]
) -> TokenBucket | None:
    """This task's bucket: its own rate (None = unlimited) under the host's, if any."""
    if rate_bps is None and parent is None:
        return None
    return TokenBucket(rate_bps, clock=clock, parent=parent)


def _digests_path(output: Path) -> Path:
    return output.with_name(output.name + ".dfpart.digests")


def _new_manifest(url: str, info: OriginInfo) -> TaskManifestDoc:
    """A task manifest made from the origin's description: geometry, no digests yet."""
    piece_length = choose_piece_length(info.total_length)
    return TaskManifestDoc(
        url=url,
        total_length=info.total_length,
        piece_length=piece_length,
        piece_sha256=(None,) * -(-info.total_length // piece_length),
        validator=info.validator,
        ranges=info.accepts_ranges,
    )


def _load_digests(output: Path, task_id: TaskId, doc: TaskManifestDoc) -> dict[int, bytes]:
    """Digests this peer learned in an earlier, interrupted run (``SwarmPeer`` saves them),
    when they are for the same task and geometry; they let its recorded pieces resume."""
    path = _digests_path(output)
    try:
        saved = Manifest.from_json(path.read_bytes())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        log.warning("ignoring %s: %s", path, exc)
        return {}
    if (saved.task_id, saved.total_length, saved.piece_length) != (
        task_id,
        doc.total_length,
        doc.piece_length,
    ):
        return {}
    return {i: d for i, d in enumerate(saved.piece_sha256) if d is not None}


async def seed_file(
    options: DownloadOptions,
    manifest: Manifest,
    *,
    validator: str | None = None,
    ranges: bool = True,
    host: Host | None = None,
) -> None:
    """Serve a complete, verified file (``options.output``) to the swarm until cancelled.

    dfdaemon's cache after a restart: the file was verified when it was finalized, so it is
    opened without re-hashing, announced as a seed, and its manifest supplied to a tracker that
    lost it. Without trackers there is nobody to serve: it returns at once.
    """
    if not options.trackers:
        return
    host = host or Host()
    loop = asyncio.get_running_loop()
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dfget-seed")
    store = await loop.run_in_executor(
        executor, lambda: PieceStore.open_complete(options.output, manifest)
    )
    tracker = HttpTracker(list(options.trackers), secret=options.secret)
    origin = Origin(options.url, options.headers, session=host.origin_session)
    info = OriginInfo(options.url, manifest.total_length, validator, ranges)
    peer = SwarmPeer(
        options,
        manifest.task_id,
        store,
        executor=executor,
        origin=origin,
        origin_info=info,
        tracker=tracker,
        download_bucket=_bucket(None, host.download, loop.time),
        upload_bucket=_bucket(options.upload_rate_bps, host.upload, loop.time),
        listener=host.listener,
        origins=host.origins,
    )
    try:
        await peer.start()
        await peer.seed(math.inf)
    finally:
        await _close_all(peer.close, tracker.close, origin.close)
        executor.shutdown(wait=False)
