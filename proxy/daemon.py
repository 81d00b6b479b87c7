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
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from dfget import engine
from dfget.host import Host
from dfget.identity import task_id_for
from dfget.options import DownloadOptions, DownloadResult, OriginInfo, ProgressReport
from dfget.seeding import seed_file
from peerwire.auth import load_secret
from peerwire.ids import TaskId
from peerwire.ratelimit import TokenBucket
from peerwire.shell import SharedListener
from peerwire.storage import PieceStore, StoreClosedError
from proxy.cache import (
    CacheEntry,
    ensure_private_dir,
    entry_dir,
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


class _Running:
    """One task the daemon is downloading (then seeding): its engine task and its waiters."""

    def __init__(self, entry: CacheEntry, request: FetchRequest) -> None:
        loop = asyncio.get_running_loop()
        self.entry, self.request = entry, request
        self.done: asyncio.Future[DownloadResult] = loop.create_future()
        self.progress: ProgressReport | None = None
        self.engine_task: asyncio.Task[None] | None = None
        #: The piece store once the download opened it, for readers streaming in order.
        self.store: asyncio.Future[PieceStore] = loop.create_future()
        #: Set (and replaced) whenever a piece is verified: readers wait on it.
        self.piece_event = asyncio.Event()

    def piece_verified(self, _: int) -> None:
        event, self.piece_event = self.piece_event, asyncio.Event()
        event.set()


@dataclass(frozen=True, slots=True)
class FileSpan:
    """Bytes of a task's file, to be sent without reading them (``os.sendfile``): verified
    pieces of a download in progress (``store``), or of the finished file at ``final_path``."""

    store: PieceStore | None
    offset: int
    length: int
    #: Where the file is once the download is finalized (its store may be closed by then).
    final_path: Path

    def __len__(self) -> int:
        return self.length

    @contextlib.contextmanager
    def open(self) -> Iterator[int]:
        """A descriptor of the file holding the span, its own (a slow reader never holds up
        closing the store), open while the context lasts."""
        fd: int | None = None
        if self.store is not None:
            # A closed store was finalized: the same bytes are at ``final_path``, renamed.
            with (
                contextlib.suppress(StoreClosedError),
                self.store.open_span(self.offset, self.length) as store_fd,
            ):
                fd = os.dup(store_fd)
        if fd is None:
            fd = os.open(self.final_path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            yield fd
        finally:
            os.close(fd)

    def read(self) -> bytes:
        with self.open() as fd:
            data = os.pread(fd, self.length, self.offset)
        if len(data) != self.length:
            raise OSError(f"{self.final_path} ends inside {self.offset}+{self.length}")
        return data


class BlobStream:
    """A task's bytes ``[start, end)`` in order, each piece as soon as it is verified.

    From a finished cache entry it reads the file; from a download in progress it waits for
    each next piece. ``close`` (always: use ``async with``) releases the entry for GC.
    """

    def __init__(
        self, daemon: Daemon, entry: CacheEntry, running: _Running | None, start: int, end: int
    ) -> None:
        self._daemon, self._entry, self._running = daemon, entry, running
        self.start, self.end = start, end
        self.size_bytes = entry.size_bytes
        self._closed = False

    @property
    def length(self) -> int:
        return self.end - self.start

    async def __aenter__(self) -> BlobStream:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Release the entry for GC; idempotent."""
        if not self._closed:
            self._closed = True
            self._daemon.release(self._entry)

    @property
    def download_checks_digest(self) -> bool:
        """The stream comes from a download that hashes the whole task as it is verified and
        checks it against the digest in the task's identity: ``verified`` gives the verdict as
        soon as the last piece is in, and a reader need not hash the bytes again."""
        running = self._running
        if running is None or self._entry.complete or running.request.digest_sha256 is None:
            return False
        return running.store.done() and not running.store.exception()

    async def verified(self) -> bool:
        """Whether the task's bytes are known to match its sha256 digest; waits for the verdict
        of a download in progress (False when it fails)."""
        running = self._running
        expected = running.request.digest_sha256 if running is not None else None
        while True:
            if self._entry.complete:
                return True  # finalize checked the digest that is part of the task's identity
            if running is None or expected is None or running.done.done():
                return False
            try:
                store = await running.store
            except Exception:  # the download failed before it opened its file
                return False
            digest = store.file_digest()
            if digest is not None:
                return digest == expected
            event = running.piece_event  # the last piece's commit is on its way back
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), 1.0)

    async def chunks(self, chunk_bytes: int = 1 << 20) -> AsyncIterator[bytes]:
        """The bytes in order, in chunks of at most ``chunk_bytes``."""
        loop = asyncio.get_running_loop()
        async for span in self.spans(chunk_bytes):
            yield await loop.run_in_executor(None, span.read)

    async def spans(self, chunk_bytes: int = 1 << 20) -> AsyncIterator[FileSpan]:
        """As ``chunks``, but as spans of the file to send from there (``os.sendfile``), each
        yielded once its pieces are verified."""
        offset = self.start
        running = self._running
        if running is not None and not self._entry.complete:
            async for span in self._from_download(running, offset, chunk_bytes):
                offset += len(span)
                yield span
        # The rest from the finished file (all of it for a cache hit; after a download that
        # finished while we streamed it, from where the download's store left off).
        async for span in self._from_file(offset, chunk_bytes):
            yield span

    async def _from_download(
        self, running: _Running, offset: int, chunk_bytes: int
    ) -> AsyncIterator[FileSpan]:
        """Pieces in order as they are verified, until the end or the entry is complete."""
        store = await running.store
        layout = store.manifest.layout
        while offset < self.end:
            index = offset // layout.piece_length
            while not store.has_piece(index):
                if running.done.done() and running.done.exception() is not None:
                    raise running.done.exception()  # type: ignore[misc]
                event = running.piece_event
                if store.has_piece(index):
                    break
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(event.wait(), 1.0)
            if self._entry.complete:
                return  # the file is finalized: read it there (the store may be closed)
            # This piece and the verified ones after it, up to ``chunk_bytes``: one span.
            piece_length = layout.piece_length
            span_end = min(self.end, (index + 1) * piece_length)
            while span_end < min(self.end, offset + chunk_bytes) and store.has_piece(
                span_end // piece_length
            ):
                span_end = min(self.end, span_end + piece_length)
            length = span_end - offset
            yield FileSpan(store, offset, length, self._entry.data_path)
            offset += length

    async def _from_file(self, offset: int, chunk_bytes: int) -> AsyncIterator[FileSpan]:
        if offset >= self.end:
            return
        path = self._entry.data_path
        size = (await asyncio.get_running_loop().run_in_executor(None, os.stat, path)).st_size
        if size < self.end:
            raise OSError(f"cache file {path} is shorter than expected")
        while offset < self.end:
            length = min(chunk_bytes, self.end - offset)
            yield FileSpan(None, offset, length, path)
            offset += length


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
        self._running: dict[TaskId, _Running] = {}
        self._seeding: dict[TaskId, asyncio.Task[None]] = {}
        self._gc_task: asyncio.Task[None] | None = None
        self.counters = DaemonCounters()
        self.peer_port = 0
        self.secret = load_secret(
            str(config.secret_file) if config.secret_file else None,
            os.environ.get("DRAGONFLY_SECRET"),
        )

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        ensure_private_dir(self.config.cache_dir)
        session = aiohttp.ClientSession(auto_decompress=False, cookie_jar=aiohttp.DummyCookieJar())
        self.host = dataclasses.replace(self.host, origin_session=session)
        assert self.host.listener is not None
        self.peer_port = await self.host.listener.start(
            self.config.peer_host, self.config.peer_port
        )
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
        assert self.host.listener is not None
        await self.host.listener.close()
        if self.host.origin_session is not None:
            await self.host.origin_session.close()

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
        running: _Running | None = None
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
        return BlobStream(self, entry, running, start, stop)

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

    def _start(self, task_id: TaskId, request: FetchRequest) -> _Running:
        directory = entry_dir(self.config.cache_dir, task_id)
        ensure_private_dir(directory)
        entry = self.entries.get(task_id) or CacheEntry(
            task_id=task_id,
            directory=directory,
            url=request.url,
            size_bytes=0,
            complete=False,
            last_access_s=time.time(),
        )
        entry.url = request.url
        self.entries[task_id] = entry
        running = _Running(entry, request)
        self._running[task_id] = running
        options = DownloadOptions(
            url=request.url,
            output=entry.data_path,
            trackers=self.config.tracker,
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
        )
        running.engine_task = asyncio.create_task(self._download(running, options))
        return running

    async def _download(self, running: _Running, options: DownloadOptions) -> None:
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
                write_meta(entry)
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
            zone=self.config.zone,
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
