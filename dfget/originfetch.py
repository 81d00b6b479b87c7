"""The origin fetcher of one download: the pieces this peer reads from the origin, and how.

It takes the coordinator's assignment (``FetchFromOrigin`` from the task core), or every missing
piece when the download falls back to the origin (``fetch_everything``), claims those pieces
off the peer wire (``TaskCore.claim_for_origin``), and fetches them in *runs*: consecutive
pieces in one Range request, each piece stored as soon as it has arrived. How long a run is and
how many are in flight follow what this host measured of the origin (``dfget.originplan``).
Each stored piece goes back to the core, which offers it to peers and reports its digest. An
origin without Range support is read once, start to end.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from dfget.errors import OriginChanged, OriginError
from dfget.options import OriginInfo
from dfget.origin import Origin
from dfget.originplan import RUN_BYTES, RUN_SECONDS, OriginMeasure, next_run, origin_workers
from peerwire.shell import TaskShell
from peerwire.storage import PieceStore

log = logging.getLogger(__name__)


class OriginFetcher:
    """Fetches the pieces of one task it is given from the origin."""

    def __init__(
        self,
        shell: TaskShell,
        origin: Origin,
        info: OriginInfo,
        *,
        measure: OriginMeasure,
        rate_limit_bps: float | None,
        on_error: Callable[[Exception], None],
    ) -> None:
        self._shell = shell
        self._core = shell.core
        self._store: PieceStore = shell.store
        self._origin = origin
        self.info = info
        #: The origin as this host measured it (shared by a daemon's tasks).
        self._measure = measure
        self._rate_limit_bps = rate_limit_bps
        self._on_error = on_error
        self._layout = self._core.layout
        self.fetching_everything = False
        #: Pieces read to check the coordinator's claims: kept whatever the assignment says.
        self._checks: set[int] = set()
        #: Pieces to fetch, and pieces in a Range request now (out of the queue, not stored).
        self._queue: set[int] = set()
        self._inflight: set[int] = set()
        #: The coordinator lists an assignment in the order to fetch it: the upper part of a
        #: split one comes highest first, towards the fetcher that keeps the rest.
        self._descending = False
        self._last_assignment = 0
        #: Bytes/s the origin delivered to this task's runs, and the largest run so far (the
        #: next may be at most 4x: slow start). A host that measured the origin before starts
        #: from that.
        self._rate_bps: float | None = measure.rate_bps
        self._run_bytes = 0
        if measure.rate_bps is not None:
            self._run_bytes = int(min(RUN_BYTES, measure.rate_bps * RUN_SECONDS)) // 4
        self._wake = asyncio.Event()
        self._workers: list[asyncio.Task[None]] = []

    @property
    def busy(self) -> bool:
        return bool(self._queue or self._inflight)

    # -- what to fetch -------------------------------------------------------------------------

    def assigned(self, pieces: tuple[int, ...], descending: bool) -> None:
        """The coordinator's current assignment (it names the whole of it each time): pieces
        no longer in it leave the queue, new ones join it."""
        if self.fetching_everything:
            return
        assigned = set(pieces)
        dropped = [i for i in self._queue if i not in assigned and i not in self._checks]
        if dropped:
            self._queue.difference_update(dropped)
            self._core.release_from_origin(dropped)
        if pieces:
            self._last_assignment = len(pieces)
            self._descending = descending
            self._enqueue(list(pieces), workers=origin_workers(len(pieces), self._measure))
        self._shell.pump()

    def check(self, pieces: tuple[int, ...]) -> None:
        """Read ``pieces`` to check the coordinator's claims about them (the core asked)."""
        self._checks.update(pieces)
        self._enqueue(list(pieces), workers=1)
        self._shell.pump()

    def fetch_everything(self, workers: int) -> None:
        """Back-to-source for every missing piece not already on its way from a peer."""
        self.fetching_everything = True
        self._descending = False
        self._enqueue(list(self._core.have.missing()), workers=workers)
        self._shell.pump()

    def _enqueue(self, indices: list[int], *, workers: int) -> None:
        fresh = [i for i in indices if i not in self._queue and i not in self._inflight]
        taken = self._core.claim_for_origin(fresh) if fresh else []
        self._queue.update(taken)
        if not self.info.accepts_ranges:
            workers = 1  # one stream of the whole file
        self._workers = [w for w in self._workers if not w.done()]
        while len(self._workers) < workers:
            self._workers.append(asyncio.create_task(self._work()))
        self._wake.set()

    def _want_more(self) -> None:
        """Ask the coordinator for more before (or as) this assignment runs dry."""
        self._core.swarm.origin_wants_more()
        self._shell.pump()

    # -- fetching ------------------------------------------------------------------------------

    async def _work(self) -> None:
        try:
            while True:
                if not self._queue:
                    self._wake.clear()
                    self._want_more()  # assignment done
                    await self._wake.wait()
                    continue
                if self.info.accepts_ranges:
                    run = self._take_run()
                    if len(self._queue) <= self._last_assignment // 2:
                        self._want_more()
                    await self._fetch_run(run)
                else:
                    await self._stream_whole_file()
        except (OriginError, OSError) as exc:  # the origin, or the local disk
            self._on_error(exc)

    def _take_run(self) -> list[int]:
        """The lowest queued piece (the highest, descending) and the queued pieces next to it,
        sized to take about ``RUN_SECONDS`` at the rate the origin has been delivering (at most
        ``RUN_BYTES``, at most ``RUN_SECONDS`` of the download limit, at most 4x the largest run
        so far: a first reply in a burst says little about the link). Returns it ascending."""
        limit = RUN_BYTES
        for rate_bps in (self._rate_limit_bps, self._rate_bps):
            if rate_bps is not None:
                limit = min(limit, int(rate_bps * RUN_SECONDS))
        limit = min(limit, 4 * self._run_bytes)  # 0 at first: one piece, to measure the origin
        run, size = next_run(
            self._queue, self._layout.piece_size, limit, descending=self._descending
        )
        self._queue.difference_update(run)
        self._inflight.update(run)
        self._run_bytes = max(self._run_bytes, size)
        return run

    async def _fetch_run(self, run: list[int]) -> None:
        try:
            await self._fetch_run_pieces(run)
        finally:
            self._inflight.difference_update(run)

    async def _fetch_run_pieces(self, run: list[int]) -> None:
        wanted = [index for index in run if not self._store.has_piece(index)]
        if not wanted:
            return
        first, last = wanted[0], wanted[-1]
        layout = self._layout
        ends = [layout.piece_offset(i) + layout.piece_size(i) for i in range(first, last + 1)]
        began = time.monotonic()
        log.debug("origin: pieces %d-%d", first, last)
        storer = _RunStorer(self, set(wanted))
        parts = self._origin.fetch_range_parts(layout.piece_offset(first), ends, self.info)
        try:
            async with contextlib.aclosing(parts):
                async for data in parts:
                    await storer.add(data)
            await storer.finish()
        except OriginError as exc:
            await storer.finish()
            left = [index for index in wanted if index >= storer.next_index]
            if exc.retryable and not self.fetching_everything:
                # The swarm or the next assignment may do better than this origin now.
                log.warning("origin failed for pieces %d-%d (%s): leaving them", first, last, exc)
                if self._checks.intersection(left):
                    log.warning("the tracker's manifest cannot be checked: believing it as it is")
                    self._checks.difference_update(left)
                    self._core.origin_unreachable()
                self._core.release_from_origin(left)
                self._shell.pump()
                return
            raise
        finally:
            await storer.cancel()
        self._measured(storer.received_bytes, max(time.monotonic() - began, 1e-3))

    def _measured(self, received_bytes: int, elapsed_s: float) -> None:
        """Fold a run's rate into the estimate: smoothed, growing at most 4x per run (a tiny
        first run on loopback would otherwise claim gigabytes per second)."""
        measured = received_bytes / elapsed_s
        previous = self._rate_bps
        self._rate_bps = (
            measured if previous is None else min(4 * previous, 0.5 * previous + 0.5 * measured)
        )
        self._measure.rate_bps = self._rate_bps
        if self._origin.response_s is not None:
            self._measure.response_s = self._origin.response_s
        workers = origin_workers(len(self._queue), self._measure)
        if workers > len(self._workers):
            self._enqueue([], workers=workers)

    async def _stream_whole_file(self) -> None:
        """No Range support: read the whole body once, storing each piece as it completes."""
        pending = bytearray()
        index = 0
        num_pieces = self._layout.num_pieces
        async for chunk in self._origin.stream(self.info):
            pending += chunk
            while index < num_pieces and len(pending) >= self._layout.piece_size(index):
                size = self._layout.piece_size(index)
                piece = bytes(pending[:size])
                del pending[:size]
                # A piece the wire is already receiving is left to it (claim refused).
                if not self._store.has_piece(index) and self._core.claim_for_origin([index]):
                    await self.store_pieces(index, [piece])
                self._queue.discard(index)
                index += 1
        self._queue.clear()

    async def store_pieces(self, first: int, pieces: list[bytes]) -> None:
        """Hash, write and record consecutive pieces from the origin (one trip to the worker
        thread), then hand them to the core. OriginChanged when one contradicts its digest."""
        core, store = self._core, self._store
        expected = core.origin_expected(first, len(pieces))

        def commit() -> list[bytes | None]:
            return [
                store.commit_piece(index, data, want)
                for index, (data, want) in enumerate(zip(pieces, expected, strict=True), first)
            ]

        loop = asyncio.get_running_loop()
        results = await loop.run_in_executor(self._shell.executor, commit)
        self._checks.difference_update(range(first, first + len(pieces)))
        bad = core.origin_stored(first, [len(p) for p in pieces], results)
        self._shell.pump()
        if bad:
            listed = ", ".join(map(str, bad))
            raise OriginChanged(
                f"the origin's content changed under the task: piece(s) {listed} do not match "
                "their known digests"
            )

    async def close(self) -> None:
        for worker in self._workers:
            worker.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)


class _RunStorer:
    """Stores the pieces of one origin run as they arrive: while one batch is hashed and
    written in the worker thread, the pieces that arrive meanwhile gather into the next batch
    (one piece per trip on a slow origin, many on a fast one)."""

    def __init__(self, fetcher: OriginFetcher, wanted: set[int]) -> None:
        self._fetcher, self._wanted = fetcher, wanted
        self.next_index = min(wanted)
        self.received_bytes = 0
        self._batch_first, self._batch = self.next_index, list[bytes]()
        self._storing: asyncio.Task[None] | None = None

    async def add(self, data: bytes) -> None:
        """The next piece of the run has arrived."""
        index, self.next_index = self.next_index, self.next_index + 1
        self.received_bytes += len(data)
        fetcher = self._fetcher
        if index in self._wanted and not fetcher._store.has_piece(index):
            if not self._batch:
                self._batch_first = index
            self._batch.append(data)
        else:
            # A peer's copy was verified meanwhile: not ours to store. A batch stays
            # consecutive, so the one gathered so far goes now.
            fetcher._core.release_from_origin([index])
            fetcher._shell.pump()
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
        self._storing = asyncio.create_task(self._fetcher.store_pieces(self._batch_first, batch))

    async def _wait(self) -> None:
        if self._storing is not None:
            storing, self._storing = self._storing, None
            await storing
