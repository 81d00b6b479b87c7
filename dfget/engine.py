"""The download engine: one URL in, one verified file out, through the swarm when there is one.

``download(options)`` (async) and ``download_sync(options)`` are the library API; the ``dfget``
command is a thin shell over them. One download, top to bottom (``_Download.run``):

1. Identity (``identity.task_id_for``): the URL without ``--filter`` parameters plus ``--tag``,
   or the ``--digest`` alone. Headers never enter it.
2. The manifest (``_manifest``): the coordinator's; when it has none, this peer probes the
   origin (length, validator, Range support), picks the piece length and offers it.
3. A ``PieceStore`` beside the output (``PATH.dfpart``; verified pieces are recorded, so the
   same command resumes) and the task: its core and shell (``peerwire.shell.open_task``),
   listening for other peers.
4. The task core decides; three helpers carry out what it asks: the shell (peers: bytes and
   time), the ``SwarmClient`` (every call to the coordinator: announces, manifests, reports)
   and the ``OriginFetcher`` (the pieces this peer reads from the origin, in Range runs).
5. Fallback (``_until_complete``): no coordinator reachable, or no progress for ``STALL_S``,
   and the missing pieces come from the origin directly (said in the result), unless
   back-to-source is disabled, which is then a ``NoPeers`` error.
6. Complete: the whole-file ``--digest`` is checked, the file renamed into place, ``completed``
   announced; the peer keeps seeding for ``seed_time_s``, then announces ``stopped``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Final

import uvloop

from dfget.coordinators.choose import coordinator_for
from dfget.errors import DigestMismatch, DownloadTimeout, ManifestRefuted, NoPeers, OriginChanged
from dfget.host import Host, bucket, close_all, seed_for
from dfget.identity import task_id_for
from dfget.options import DownloadOptions, DownloadResult, OriginInfo, ProgressReport
from dfget.origin import Origin
from dfget.originfetch import OriginFetcher
from dfget.originplan import OriginMeasure, origin_key
from dfget.outage import origin_share, ride_outage
from dfget.swarmclient import SwarmClient
from dfget.taskmanifest import (
    digests_path,
    discard_partial,
    load_digests,
    public_url,
    report_refuted,
    task_manifest,
)
from dfget.taskstate import DigestSaver, ProgressMeter, missing_summary
from peerwire import commands as cmd
from peerwire.connection import PeerConnection, PeerListener, single_task_router
from peerwire.coordination import Coordinator, TaskManifestDoc
from peerwire.digests import DigestBook, DigestConflict, Trust
from peerwire.ids import PeerId
from peerwire.manifest import Manifest
from peerwire.ratelimit import AsyncRateLimiter
from peerwire.shell import TaskShell, open_task
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
    run = _Download(options, on_progress, on_complete, host or Host())
    run.on_store, run.on_piece = on_store, on_piece
    try:
        return await run.run()
    except ManifestRefuted as exc:
        if on_store is not None:
            raise  # a reader streams the bytes of that store: it must start over itself
        log.warning("%s: starting over from the origin alone", exc)
        discard_partial(options.output)
        again = _Download(
            replace(options, trackers=(), serf=None), on_progress, on_complete, host or Host()
        )
        again.on_piece = on_piece
        result = await again.run()
        return replace(result, fell_back=True, fallback_reason=str(exc))


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
        self.download_bucket = bucket(options.rate_bps, host.download, clock)
        self.upload_bucket = bucket(options.upload_rate_bps, host.upload, clock)
        limiter = AsyncRateLimiter(self.download_bucket) if self.download_bucket else None
        self.origin = Origin(
            options.url, options.headers, limiter=limiter, client=host.origin_client
        )
        self.coordinator: Coordinator | None = coordinator_for(options, host)
        self.fallback_reason: str | None = None
        #: No tracker answered at the start (``dfget.outage``): why.
        self.outage: str | None = None
        #: Whether the coordinator's claims are checked against the origin before belief.
        self.check_claims = options.back_to_source
        self.phase = "starting"
        self.shell: TaskShell | None = None
        self.client: SwarmClient | None = None
        self.fetcher: OriginFetcher | None = None
        self.listener: PeerListener | None = None
        self._meter = ProgressMeter()
        self._saver = DigestSaver(options, self.task_id)

    async def run(self) -> DownloadResult:
        executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="dfget-io")
        background: list[asyncio.Task[None]] = []
        try:
            found = await task_manifest(self.options, self.task_id, self.coordinator, self.origin)
            if found.refuted is not None and self.coordinator is not None:
                await report_refuted(self.coordinator, self.task_id, found.refuted)
                await self._lose_coordinator(f"{found.refuted} is not the origin's")
            elif found.lost is not None:
                await self._lose_coordinator(found.lost)
            elif found.outage is not None and self.on_piece is not None:
                await self._lose_coordinator(found.outage)  # a reader streaming it cannot wait
            else:
                self.outage = found.outage
            doc, info = found.doc, found.info
            self.check_claims = self.options.back_to_source and not found.unchecked
            store, digests = await self._open_store(doc, executor)
            if self.on_store is not None:
                self.on_store(store)
            shell = await self._start(store, digests, info, executor)
            if self.outage is not None:
                background.append(asyncio.create_task(self._ride_outage(self.outage, shell, info)))
            if self.on_progress is not None:
                background.append(asyncio.create_task(self._report_loop(self.on_progress)))
            background.append(asyncio.create_task(self._saver.loop(shell)))
            self.phase = "downloading"
            await self._until_complete(shell)
            self.phase = "verifying"
            await self._finalize(shell, executor)
            result = self._result(shell, info)
            if self.on_complete is not None:
                self.on_complete(result)
            if self.options.seed_time_s > 0 and self.coordinator is not None:
                self.phase = "seeding"
                await seed_for(self.options.seed_time_s)
            self.phase = "done"
            if self.on_progress is not None:
                self.on_progress(self.progress())
            return result
        finally:
            for task in background:
                task.cancel()
            await close_all(self._close_task, self._close_coordinator, self.origin.close)
            executor.shutdown(wait=True)

    # -- steps --------------------------------------------------------------------------------

    async def _open_store(
        self, doc: TaskManifestDoc, executor: ThreadPoolExecutor
    ) -> tuple[PieceStore, DigestBook]:
        """The piece store beside the output (resumed when an earlier run left one) and the
        digests known so far: the coordinator's, and those this peer saved last time."""
        output = self.options.output
        # The coordinator's digests are claims unless it proves the cluster secret; those this
        # peer saved last time were believed then.
        vouched = self.coordinator is None or self.coordinator.vouched
        digests = DigestBook(
            len(doc.piece_sha256), doc.piece_sha256, Trust.VOUCHED if vouched else Trust.CLAIMED
        )
        local = load_digests(output, self.task_id, doc)
        try:
            digests.learn_many(local, Trust.VOUCHED)
        except DigestConflict:
            digests.forget_claims()  # our own reads disagree with the claims: ours stand
            digests.learn_many(local, Trust.VOUCHED)
        known = digests.snapshot()
        manifest = Manifest(self.task_id, doc.total_length, doc.piece_length, known, doc.url)
        check_digest = self.options.digest_sha256 is not None

        def open_store() -> PieceStore:
            store = PieceStore.create(
                output, manifest, resume=True, open_digests=True, files=self.options.files
            )
            if check_digest:
                # Hashed in order as pieces arrive: no second read of the file at the end, and
                # a reader streaming the task knows the verdict with the last piece.
                store.track_file_digest()
            return store

        store = await asyncio.get_running_loop().run_in_executor(executor, open_store)
        self._saver.saved_known = digests.known
        return store, digests

    async def _start(
        self,
        store: PieceStore,
        digests: DigestBook,
        info: OriginInfo,
        executor: ThreadPoolExecutor,
    ) -> TaskShell:
        """The task (core and shell), its listener, its coordinator client and origin fetcher,
        started."""
        options = self.options
        shell = open_task(
            store,
            digests,
            peer_id=PeerId.generate(),
            executor=executor,
            secret=options.secret,
            download_bucket=self.download_bucket,
            upload_bucket=self.upload_bucket,
            on_command=self._on_command,
            check_claims=self.check_claims,
        )
        self.shell = shell
        measure = self.host.origins.setdefault(origin_key(info.url), OriginMeasure())
        rate_limit = self.download_bucket.rate_bps if self.download_bucket else None
        self.fetcher = OriginFetcher(
            shell,
            self.origin,
            info,
            measure=measure,
            rate_limit_bps=rate_limit,
            on_error=shell.fail,
        )
        if self.host.listener is not None:
            self.host.listener.add(shell)
            port = self.host.listener.port
        else:
            self.listener = PeerListener(single_task_router(shell))
            _, port = await self.listener.start(options.peer_host, options.peer_port)
        swarm = shell.core.swarm
        swarm.port, swarm.zone = port, options.zone
        swarm.may_fetch_origin = options.back_to_source
        if self.coordinator is not None and not self.coordinator.vouched:
            swarm.manifest_trust = Trust.CLAIMED
        shell.start()
        shell.core.start_claim_check()
        if self.coordinator is not None:
            self.client = SwarmClient(
                shell,
                self.coordinator,
                manifest_doc=lambda: self._manifest_doc(info),
                on_refused=self._refused,
                on_conflict=self._conflict,
            )
            if self.outage is None:
                self.client.start()
        else:
            self.fetcher.fetch_everything(DIRECT_FETCHERS)
        return shell

    async def _ride_outage(self, reason: str, shell: TaskShell, info: OriginInfo) -> None:
        """No tracker at the start: this peer's share from the origin while it tries again."""
        assert self.client is not None and self.fetcher is not None and self.coordinator
        fetcher, layout, peer_id = self.fetcher, shell.core.layout, shell.core.peer_id
        problem = await ride_outage(
            reason,
            self.coordinator,
            self.task_id,
            lambda: self._manifest_doc(info),
            lambda: fetcher.assigned(origin_share(peer_id, layout.num_pieces), False),
        )
        if problem is None:
            self.client.start()
            return
        client, self.client = self.client, None
        await client.close()
        await self._lose_coordinator(problem)
        self.fetcher.fetch_everything(DIRECT_FETCHERS)

    def _on_command(self, command: cmd.Command[PeerConnection]) -> None:
        """The core's commands the shell does not carry out itself."""
        if self.client is not None and self.client.handle(command):
            return
        kind = type(command)
        if kind is cmd.FetchFromOrigin:
            assert isinstance(command, cmd.FetchFromOrigin) and self.fetcher is not None
            self.fetcher.assigned(command.pieces, command.descending)
        elif kind is cmd.PieceDone:
            assert isinstance(command, cmd.PieceDone)
            if self.on_piece is not None:
                self.on_piece(command.index)
        elif kind is cmd.CheckClaims:
            assert isinstance(command, cmd.CheckClaims) and self.fetcher is not None
            self.fetcher.check(command.pieces)
        elif kind is cmd.ClaimsRefuted:
            assert isinstance(command, cmd.ClaimsRefuted)
            self._claims_refuted(command)

    def _claims_refuted(self, refuted: cmd.ClaimsRefuted) -> None:
        """The coordinator's manifest is false: what is missing comes from the origin. Pieces
        already taken on its word are not kept: the download starts over from the origin."""
        assert self.shell is not None and self.fetcher is not None
        log.warning("%s: fetching what is missing from the origin", refuted.reason)
        self.fallback_reason = refuted.reason
        if self.client is not None:
            self.client.report_manifest(refuted.reason)
        if refuted.tainted:
            self.shell.fail(ManifestRefuted(refuted.reason))
        else:
            self.fetcher.fetch_everything(DIRECT_FETCHERS)

    def _conflict(self, exc: Exception) -> None:
        """The coordinator refused this peer's origin digests: it holds others."""
        assert self.shell is not None and self.coordinator is not None
        if self.coordinator.vouched:  # two members read different bytes: the origin changed
            self.shell.fail(
                OriginChanged(f"pieces from the origin differ from what other peers fetched: {exc}")
            )
            return
        self.shell.core.claims_contradicted(
            f"the coordinator holds other digests than this peer read from the origin: {exc}"
        )
        self.shell.pump()

    def _manifest_doc(self, info: OriginInfo) -> TaskManifestDoc:
        assert self.shell is not None
        core = self.shell.core
        return TaskManifestDoc(
            url=public_url(self.options),
            total_length=core.layout.total_length,
            piece_length=core.layout.piece_length,
            # What this peer believes: its own reads, vouched digests, claims it checked.
            piece_sha256=core.digests.snapshot(
                Trust.CLAIMED if core.claims_checked else Trust.VOUCHED
            ),
            validator=info.validator,
            ranges=info.accepts_ranges,
        )

    def _refused(self, reason: str) -> None:
        """The coordinator refused our first announce: the swarm is closed to us."""
        assert self.shell is not None and self.fetcher is not None
        if not self.options.back_to_source:
            self.shell.fail(
                NoPeers(f"the tracker refused this peer ({reason}); back-to-source is disabled")
            )
            return
        log.warning("the tracker refused this peer (%s): downloading from the origin", reason)
        self.fallback_reason = f"tracker refused the announce: {reason}"
        self.fetcher.fetch_everything(DIRECT_FETCHERS)

    async def _lose_coordinator(self, reason: str) -> None:
        log.warning("%s: downloading from the origin directly", reason)
        self.fallback_reason = reason
        if self.coordinator is not None:
            await self.coordinator.close()
        self.coordinator = None

    async def _until_complete(self, shell: TaskShell) -> None:
        """Wait for every piece; go to the origin when the swarm stalls; honour the timeout."""
        assert self.fetcher is not None
        core = shell.core
        timeout_s = self.options.timeout_s
        deadline = None if timeout_s is None else self.started + timeout_s
        last_count, last_progress = -1, time.monotonic()
        while not shell.completed.done():
            wait_s = 1.0
            if deadline is not None:
                wait_s = min(wait_s, max(0.0, deadline - time.monotonic()))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(shell.completed), wait_s)
            if shell.completed.done():
                break
            now = time.monotonic()
            missing = core.layout.num_pieces - len(core.have)
            if deadline is not None and now >= deadline:
                raise DownloadTimeout(
                    f"timed out after {timeout_s:g}s with {missing} of "
                    f"{core.layout.num_pieces} pieces missing (verified pieces are kept; run again)"
                )
            count = len(core.have)
            if count != last_count:
                last_count, last_progress = count, now
                continue
            stalled_s = now - last_progress
            if self.options.back_to_source:
                if stalled_s >= STALL_S and not self.fetcher.fetching_everything:
                    reason = f"the swarm made no progress for {stalled_s:.0f}s"
                    log.warning(
                        "%s (%s): fetching them from the origin", reason, missing_summary(shell)
                    )
                    self.fallback_reason = reason
                    self.fetcher.fetch_everything(DIRECT_FETCHERS)
            elif stalled_s >= NO_PEERS_S:
                raise NoPeers(
                    f"no peer delivered a piece for {stalled_s:.0f}s ({core.peer_count} "
                    "connected) and back-to-source is disabled"
                )
        shell.completed.result()  # raises the task's error (origin, disk) if it failed

    async def _finalize(self, shell: TaskShell, executor: ThreadPoolExecutor) -> None:
        loop = asyncio.get_running_loop()
        store = shell.store
        try:
            await loop.run_in_executor(executor, store.finalize, self.options.digest_sha256)
        except DigestMismatchError as exc:
            await self._close_task()
            store.discard()  # wrong content: a retry must start over, not resume it
            raise DigestMismatch(
                f"sha256 of the downloaded file is {exc.actual.hex()}, expected "
                f"{exc.expected.hex()}; nothing was written to {self.options.output}"
            ) from exc
        digests_path(self.options.output).unlink(missing_ok=True)
        if self.client is not None:
            await self.client.completed()

    def _result(self, shell: TaskShell, info: OriginInfo) -> DownloadResult:
        core = shell.core
        stats = core.stats
        return DownloadResult(
            output=self.options.output,
            size_bytes=core.layout.total_length,
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
                core.layout.total_length,
                core.layout.piece_length,
                core.digests.snapshot(),
                public_url(self.options),
            ),
            validator=info.validator,
            ranges=info.accepts_ranges,
        )

    def progress(self) -> ProgressReport:
        """A snapshot for progress displays."""
        return self._meter.report(self.shell, self.phase)

    async def _report_loop(self, on_progress: Callable[[ProgressReport], None]) -> None:
        while True:
            on_progress(self.progress())
            await asyncio.sleep(PROGRESS_EVERY_S)

    # -- the end ------------------------------------------------------------------------------

    async def _close_task(self) -> None:
        """Stop the task: the coordinator hears ``stopped``, connections close, the partial
        file and its digests stay for a resume."""
        shell, self.shell = self.shell, None
        if shell is None:
            return
        try:
            if self.client is not None:
                await self.client.close()
            if self.fetcher is not None:
                await self.fetcher.close()
        finally:  # also when cancelled meanwhile: connections and files
            try:
                await shell.close()
                if self.listener is not None:
                    await self.listener.close()
                elif self.host.listener is not None:
                    self.host.listener.remove(shell)
            finally:
                self._saver.save(shell)
                shell.store.close()

    async def _close_coordinator(self) -> None:
        if self.coordinator is not None:
            await self.coordinator.close()
