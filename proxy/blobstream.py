"""A task's bytes as the registry mirror streams them: from a finished cache entry, or from a
download in progress, each piece as soon as it is verified (``BlobStream``), handed over as
spans of the file to send with ``os.sendfile`` (``FileSpan``)."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from dfget.options import DownloadResult, ProgressReport
from peerwire.storage import PieceStore, StoreClosedError
from proxy.cache import CacheEntry

if TYPE_CHECKING:
    from proxy.daemon import FetchRequest


class Running:
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
        self,
        release: Callable[[CacheEntry], None],
        entry: CacheEntry,
        running: Running | None,
        start: int,
        end: int,
    ) -> None:
        self._release, self._entry, self._running = release, entry, running
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
            self._release(self._entry)

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
        self, running: Running, offset: int, chunk_bytes: int
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
