"""The two swarm stores behind one synchronous face, so that one behaviour test runs against
both: the in-memory ``Swarm`` as it is, and ``RedisSwarm`` on a real ``redis-server`` driven
through its own event loop."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import uvloop

from tracker.config import TrackerConfig
from tracker.manifests import ManifestUpdate, TaskManifest
from tracker.model import AnnounceRequest, AnnounceResult, PeerReport, ScrapeCounts
from tracker.redislink import RedisLink
from tracker.redisstore import RedisSwarm

T = TypeVar("T")


class SyncRedisSwarm:
    """``RedisSwarm`` with ``Swarm``'s synchronous methods and counters (tests only)."""

    def __init__(self, config: TrackerConfig, clock: Callable[[], float], url: str) -> None:
        self._loop = uvloop.new_event_loop()
        self.link = RedisLink(url)
        self._run(self.link.start())
        self._run(self.link.command("x", ("FLUSHALL",)))
        self.store = RedisSwarm(config, self.link, clock)

    def _run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return self._loop.run_until_complete(coroutine)

    async def _wait(self, future: asyncio.Future[T]) -> T:
        return await future

    def close(self) -> None:
        self._run(self.link.close())
        self._loop.close()

    def announce(self, req: AnnounceRequest) -> AnnounceResult:
        # The dict model carries every peer's id and contact (compact answers are bytes).
        full = dataclasses.replace(req, compact=False)
        return self._run(self._announce(full))

    async def _announce(self, req: AnnounceRequest) -> AnnounceResult:
        await self.store.refresh_estimate()  # a tracker does it every second
        return await self.store.announce(req)

    def announce_compact(self, req: AnnounceRequest) -> AnnounceResult:
        return self._run(self._announce(req))

    def put_manifest(self, task: bytes, update: ManifestUpdate) -> TaskManifest:
        self._run(self.store.refresh_estimate())
        return self._run(self.store.put_manifest(task, update))

    def get_manifest(self, task: bytes) -> TaskManifest | None:
        return self._run(self.store.get_manifest(task))

    def scrape(self, hashes: tuple[bytes, ...]) -> dict[bytes, ScrapeCounts]:
        return self._run(self.store.scrape(hashes))

    def scrape_all(self, limit: int) -> dict[bytes, ScrapeCounts]:
        return self._run(self.store.scrape_all(limit))

    def report(self, task: bytes, report: PeerReport) -> bool:
        return self._run(self.store.report(task, report))

    def expire(self) -> int:
        return self._run(self.store.expire())

    def stats(
        self, task: bytes | None = None, peers_limit: int = 100, tasks_limit: int = 1000
    ) -> dict[str, Any]:
        return self._run(self.store.stats(task, peers_limit, tasks_limit))

    def assignment_of(self, task: bytes, peer_id: bytes) -> tuple[int, ...]:
        return self._run(self.store.assignment_of(task, peer_id))

    def _totals(self) -> dict[str, int]:
        totals: dict[str, int] = self.stats(peers_limit=0)["totals"]
        return totals

    @property
    def peer_count(self) -> int:
        return self._totals()["peers"]

    @property
    def seed_count(self) -> int:
        return self._totals()["seeds"]

    @property
    def task_count(self) -> int:
        return self._totals()["tasks"]

    def __getattr__(self, name: str) -> Any:
        if name.endswith("_total"):  # this tracker's counters
            return getattr(self.store, name)
        raise AttributeError(name)
