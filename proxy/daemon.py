"""``dfdaemon``: the node's long-lived peer - one per host - and its local API.

Every download of the host goes through one ``Daemon``: one peer port for all tasks, host-wide
download and upload limits (each task's limit is a child bucket of the host's), a cache of
finished tasks that keep seeding, and garbage collection by TTL and size quota. ``dfget`` hands
its downloads over on the local API (a unix socket, owner-only; ``proxy/api.py``); the
registry mirror (``proxy/``) fetches blobs through ``Daemon.fetch``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dfget import engine
from dfget.coordinators.serfnode import SerfNode
from dfget.errors import ManifestRefuted
from dfget.host import Host
from dfget.httpclient import HttpClient
from dfget.identity import normalize_url, task_id_for
from dfget.options import DownloadOptions, DownloadResult, OriginInfo, ProgressReport
from dfget.seeding import seed_file
from dfget.taskmanifest import discard_partial
from peerwire.auth import load_secret
from peerwire.ids import TaskId
from peerwire.ratelimit import TokenBucket
from peerwire.shell import SharedListener
from peerwire.storage import PieceStore
from proxy.blobstream import BlobStream, Running
from proxy.cache import (
    CacheEntry,
    CacheModes,
    entry_dir,
    group_id,
    load_entries,
    plan_eviction,
    remove_entry,
    write_meta,
)
from proxy.config import DaemonConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class FetchRequest:
    """What a client asks the daemon for: the download-identity options of ``dfget``."""

    url: str
    headers: tuple[tuple[str, str], ...] = ()
    digest_sha256: bytes | None = None
    filters: tuple[str, ...] = ()
    tag: str = ""
    rate_bps: float | None = None
    timeout_s: float | None = None
    #: What the caller learnt of the origin already (``DownloadOptions.origin_info``).
    origin_info: OriginInfo | None = None


@dataclass
class DaemonCounters:
    downloads_ok: int = 0
    downloads_failed: int = 0
    from_peers_bytes: int = 0
    from_origin_bytes: int = 0
    cache_hits: int = 0
    gc_runs: int = 0
    gc_evicted: int = 0
    exports: int = 0
    #: Uploads of tasks no longer running (evicted or stopped); running ones are added live.
    retired_upload_bytes: int = 0


class Daemon:
    def __init__(self, config: DaemonConfig) -> None:
        self.config = config
        loop_clock = time.monotonic
        self.host = Host(
            download=TokenBucket(config.host_rate_bps, clock=loop_clock),
            upload=TokenBucket(config.upload_rate_bps, clock=loop_clock),
            listener=SharedListener(),
        )
        self.entries: dict[TaskId, CacheEntry] = {}
        self._running: dict[TaskId, Running] = {}
        self._seeding: dict[TaskId, asyncio.Task[None]] = {}
        self._gc_task: asyncio.Task[None] | None = None
        self.counters = DaemonCounters()
        self.peer_port = 0
        #: What the daemon creates in its cache: owner-only, or readable by ``--cache-group``.
        self.modes = CacheModes(group_id(config.cache_group) if config.cache_group else None)
        self.secret = load_secret(
            str(config.secret_file) if config.secret_file else None,
            os.environ.get("DRAGONFLY_SECRET"),
        )

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        self.modes.make_dir(self.config.cache_dir)
        self.host = dataclasses.replace(self.host, origin_client=HttpClient())
        assert self.host.listener is not None
        self.peer_port = await self.host.listener.start(
            self.config.peer_host, self.config.peer_port
        )
        if self.config.serf is not None:
            # Decentralized mode: one Serf node for every download and seed (SerfNodeError
            # when it cannot take part: no agent, one without the cluster secret's key).
            node = SerfNode(
                self.config.serf,
                secret=self.secret,
                directory=self.config.cache_dir / "serf",
                zone=self.config.zone,
            )
            node.set_port(self.peer_port, 0)
            await node.start()
            self.host = dataclasses.replace(self.host, serf=node)
        for entry in load_entries(self.config.cache_dir):
            self.entries[entry.task_id] = entry
            if entry.complete:
                self._seed(entry)
        log.info(
            "cache %s: %d tasks, %s bytes",
            self.config.cache_dir,
            len(self.entries),
            self.cache_bytes,
        )
        self._gc_task = asyncio.create_task(self._gc_loop())

    async def close(self) -> None:
        tasks: list[asyncio.Task[None]] = list(self._seeding.values())
        tasks += [r.engine_task for r in self._running.values() if r.engine_task is not None]
        if self._gc_task is not None:
            tasks.append(self._gc_task)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self.host.serf is not None:
            await self.host.serf.close()
        assert self.host.listener is not None
        await self.host.listener.close()
        if self.host.origin_client is not None:
            await self.host.origin_client.close()

    @property
    def uploaded_bytes(self) -> int:
        """Bytes this host has uploaded to other peers, every task together."""
        live = sum(
            r.progress.uploaded_bytes for r in self._running.values() if r.progress is not None
        )
        return self.counters.retired_upload_bytes + live

    @property
    def cache_bytes(self) -> int:
        return sum(entry.size_bytes for entry in self.entries.values())

    # -- downloads --------------------------------------------------------------------------

    async def fetch(
        self,
        request: FetchRequest,
        on_progress: Callable[[ProgressReport], None] | None = None,
    ) -> tuple[CacheEntry, DownloadResult | None]:
        """The finished cache entry of ``request``'s task: from the cache (with no result),
        from a download of it already running, or from a new download (with that download's
        result). The entry is returned *busy* (one more reader): the caller must call
        ``release`` when it is done reading it."""
        task_id = self._task_id(request)
        entry = self.entries.get(task_id)
        if entry is not None and entry.complete:
            self.counters.cache_hits += 1
            entry.busy += 1
            entry.last_access_s = time.time()
            return entry, None
        running = self._running.get(task_id) or self._start(task_id, request)
        running.entry.busy += 1
        try:
            while not running.done.done():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(running.done), 0.25)
                if on_progress is not None and running.progress is not None:
                    on_progress(running.progress)
            result = running.done.result()
        except BaseException:
            running.entry.busy -= 1
            raise
        return running.entry, result

    async def open_stream(
        self, request: FetchRequest, *, start: int = 0, end: int | None = None
    ) -> BlobStream:
        """The task's bytes from ``start`` to ``end`` (exclusive; None = the end), streamed in
        order as pieces are verified: from the cache, or from a download started or joined
        now. The stream holds the entry busy until closed. ValueError for a range outside."""
        task_id = self._task_id(request)
        entry = self.entries.get(task_id)
        running: Running | None = None
        if entry is not None and entry.complete:
            self.counters.cache_hits += 1
        else:
            running = self._running.get(task_id) or self._start(task_id, request)
            entry = running.entry
            waiters: list[asyncio.Future[Any]] = [
                asyncio.ensure_future(asyncio.shield(running.done)),
                asyncio.ensure_future(asyncio.shield(running.store)),
            ]
            try:
                await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for waiter in waiters:
                    waiter.cancel()
            if running.done.done() and running.done.exception() is not None:
                raise running.done.exception()  # type: ignore[misc]
            store = await running.store
            entry.size_bytes = store.manifest.total_length
        entry.busy += 1
        entry.last_access_s = time.time()
        size = entry.size_bytes
        stop = size if end is None else end
        if not 0 <= start <= stop <= size:
            self.release(entry)
            raise ValueError(f"range {start}-{stop} is outside the blob's {size} bytes")
        return BlobStream(self.release, entry, running, start, stop)

    def _task_id(self, request: FetchRequest) -> TaskId:
        return task_id_for(
            request.url,
            filters=request.filters,
            tag=request.tag,
            digest_sha256=request.digest_sha256,
        )

    def release(self, entry: CacheEntry) -> None:
        entry.busy = max(0, entry.busy - 1)
        entry.last_access_s = time.time()

    def _start(self, task_id: TaskId, request: FetchRequest) -> Running:
        directory = entry_dir(self.config.cache_dir, task_id)
        self.modes.make_dir(directory)
        entry = self.entries.get(task_id) or CacheEntry(
            task_id=task_id,
            directory=directory,
            url=normalize_url(request.url, request.filters),
            size_bytes=0,
            complete=False,
            last_access_s=time.time(),
        )
        entry.url = normalize_url(request.url, request.filters)
        self.entries[task_id] = entry
        running = Running(entry, request)
        self._running[task_id] = running
        options = DownloadOptions(
            url=request.url,
            output=entry.data_path,
            trackers=self.config.tracker,
            serf=self.config.serf,
            rate_bps=request.rate_bps,
            digest_sha256=request.digest_sha256,
            headers=request.headers,
            filters=request.filters,
            tag=request.tag,
            zone=self.config.zone,
            seed_time_s=math.inf,
            timeout_s=request.timeout_s,
            secret=self.secret,
            origin_info=request.origin_info,
            files=self.modes.files,
        )
        running.engine_task = asyncio.create_task(self._download(running, options))
        return running

    async def _download(self, running: Running, options: DownloadOptions) -> None:
        entry = running.entry

        def progress(report: ProgressReport) -> None:
            running.progress = report
            if report.total_bytes is not None:
                entry.size_bytes = report.total_bytes

        def complete(result: DownloadResult) -> None:
            entry.complete = True
            entry.size_bytes = result.size_bytes
            self.counters.downloads_ok += 1
            self.counters.from_peers_bytes += result.from_peers_bytes
            self.counters.from_origin_bytes += result.from_origin_bytes
            entry.manifest = result.manifest
            entry.validator, entry.ranges = result.validator, result.ranges
            try:
                write_meta(entry, self.modes.files)
            except (OSError, ValueError) as exc:
                log.error("cache: cannot record %s: %s", entry.task_id, exc)
            if not running.done.done():
                running.done.set_result(result)

        def store_opened(store: PieceStore) -> None:
            if not running.store.done():
                running.store.set_result(store)

        try:
            await engine.download(
                options,
                on_progress=progress,
                on_complete=complete,
                host=self.host,
                on_store=store_opened,
                on_piece=running.piece_verified,
            )
        except asyncio.CancelledError:
            if not running.done.done():
                running.done.cancel()
            raise
        except BaseException as exc:
            self.counters.downloads_failed += 1
            if isinstance(exc, ManifestRefuted):
                # Pieces were taken on a manifest the origin refuted: a retry must not resume
                # from them (the engine starts over itself only when no reader streams them).
                discard_partial(options.output)
            if not running.done.done():
                running.done.set_exception(exc)
                running.done.exception()  # retrieved here: waiters may be none
            if not running.store.done():
                running.store.set_exception(exc)
                running.store.exception()
            running.piece_verified(-1)  # wake streaming readers: they see the failure
            # A failed download leaves its partial data for a retry; GC removes it when idle.
        finally:
            self._running.pop(entry.task_id, None)
            if running.progress is not None:
                self.counters.retired_upload_bytes += running.progress.uploaded_bytes

    def _seed(self, entry: CacheEntry) -> None:
        assert entry.manifest is not None
        options = DownloadOptions(
            url=entry.url,
            output=entry.data_path,
            trackers=self.config.tracker,
            serf=self.config.serf,
            zone=self.config.zone,
            secret=self.secret,
        )
        self._seeding[entry.task_id] = asyncio.create_task(
            seed_file(
                options,
                entry.manifest,
                validator=entry.validator,
                ranges=entry.ranges,
                host=self.host,
            )
        )

    # -- export and garbage collection ------------------------------------------------------

    async def export(self, entry: CacheEntry, output: Path) -> None:
        """Copy a finished entry to ``output``: written aside, then renamed into place."""
        scratch = output.with_name(f".{output.name}.dfdaemon-{os.getpid()}")
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(None, shutil.copyfile, entry.data_path, scratch)
            os.replace(scratch, output)
        except BaseException:
            scratch.unlink(missing_ok=True)
            raise
        self.counters.exports += 1

    async def _gc_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.gc_interval_s)
            self.collect_garbage()

    def collect_garbage(self) -> int:
        """Evict what the policy says (``cache.plan_eviction``); returns how many went."""
        self.counters.gc_runs += 1
        plan = plan_eviction(
            list(self.entries.values()),
            now_s=time.time(),
            ttl_s=self.config.cache_ttl_s,
            quota_bytes=self.config.cache_size_bytes,
        )
        for entry in plan:
            seeding = self._seeding.pop(entry.task_id, None)
            if seeding is not None:
                seeding.cancel()
            running = self._running.get(entry.task_id)
            if running is not None and running.engine_task is not None:
                running.engine_task.cancel()  # finished and seeding: stop it
            self.entries.pop(entry.task_id, None)
            remove_entry(entry)
            log.info("cache: evicted %s (%d bytes)", entry.task_id, entry.size_bytes)
        self.counters.gc_evicted += len(plan)
        return len(plan)
