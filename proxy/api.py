"""dfdaemon's local API: HTTP on a unix socket that only the owner can open.

``POST /v1/downloads`` takes ``{"url", "output", "headers": [[name, value], ...], "digest"
(64 hex or null), "filters": [...], "tag", "rate_bps", "timeout_s"}`` and answers a stream of
JSON lines: ``{"progress": {...}}`` about four times a second, then one ``{"result": {...}}`` or
``{"error": "...", "exit_code": N}`` (the exit codes of ``dfget``). The daemon downloads into
its cache (or finds the task there), then copies the file to ``output`` (written aside,
renamed). ``GET /v1/tasks`` lists the cache; ``GET /metrics`` is Prometheus; ``GET /healthz``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from dfget.errors import EXIT_ERROR, EXIT_USAGE, DownloadError
from dfget.options import ProgressReport
from proxy.cache import CacheModes
from proxy.daemon import Daemon, FetchRequest

log = logging.getLogger(__name__)

PREFIX = "dragonfly_dfdaemon_"
#: Largest request body accepted on the socket.
MAX_BODY_BYTES = 64 * 1024


class DaemonCollector(Collector):
    """Prometheus families from the daemon's plain counters, read at scrape time."""

    def __init__(self, daemon: Daemon, extra: dict[str, dict[str, int]] | None = None) -> None:
        self._daemon = daemon
        #: Counters other components add (the proxy: requests by route).
        self.extra = extra if extra is not None else {}

    def collect(self) -> Iterator[Metric]:
        counters = self._daemon.counters
        downloads = CounterMetricFamily(
            PREFIX + "downloads", "Downloads finished, by result.", labels=["result"]
        )
        downloads.add_metric(["ok"], counters.downloads_ok)
        downloads.add_metric(["failed"], counters.downloads_failed)
        yield downloads
        received = CounterMetricFamily(
            PREFIX + "download_bytes",
            "Bytes downloaded by finished downloads, by source (peer, origin).",
            labels=["source"],
        )
        received.add_metric(["peer"], counters.from_peers_bytes)
        received.add_metric(["origin"], counters.from_origin_bytes)
        yield received
        yield CounterMetricFamily(
            PREFIX + "cache_hits",
            "Requests served from a finished cache entry.",
            counters.cache_hits,
        )
        yield CounterMetricFamily(
            PREFIX + "upload_bytes",
            "Bytes uploaded to other peers by downloads and seeding since the daemon started.",
            self._daemon.uploaded_bytes,
        )
        yield GaugeMetricFamily(
            PREFIX + "cache_bytes", "Bytes held in the cache.", self._daemon.cache_bytes
        )
        yield GaugeMetricFamily(
            PREFIX + "cache_tasks", "Tasks in the cache.", len(self._daemon.entries)
        )
        yield CounterMetricFamily(PREFIX + "gc_runs", "Garbage collection runs.", counters.gc_runs)
        yield CounterMetricFamily(
            PREFIX + "gc_evicted",
            "Cache entries removed by garbage collection.",
            counters.gc_evicted,
        )
        for name, labelled in self.extra.items():
            family = CounterMetricFamily(PREFIX + name, name.replace("_", " "), labels=["route"])
            for label, value in sorted(labelled.items()):
                family.add_metric([label], value)
            yield family


def metrics_registry(daemon: Daemon, collector: DaemonCollector | None = None) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector or DaemonCollector(daemon))
    return registry


def parse_fetch(document: Any) -> tuple[FetchRequest, Path]:
    """The body of ``POST /v1/downloads``; ValueError says what is wrong."""
    if not isinstance(document, dict):
        raise ValueError("body must be a JSON object")
    url, output = document.get("url"), document.get("output")
    if not isinstance(url, str) or not url:
        raise ValueError("url is required")
    if not isinstance(output, str) or not os.path.isabs(output):
        raise ValueError("output must be an absolute path")
    headers = tuple((str(k), str(v)) for k, v in document.get("headers") or [])
    digest_hex = document.get("digest")
    digest = bytes.fromhex(digest_hex) if digest_hex else None
    if digest is not None and len(digest) != 32:
        raise ValueError("digest must be 64 hex digits (sha256)")
    rate = document.get("rate_bps")
    timeout = document.get("timeout_s")
    return (
        FetchRequest(
            url=url,
            headers=headers,
            digest_sha256=digest,
            filters=tuple(str(f) for f in document.get("filters") or []),
            tag=str(document.get("tag") or ""),
            rate_bps=float(rate) if rate else None,
            timeout_s=float(timeout) if timeout else None,
        ),
        Path(output),
    )


class DaemonApi:
    def __init__(self, daemon: Daemon, collector: DaemonCollector | None = None) -> None:
        self.daemon = daemon
        self.registry = metrics_registry(daemon, collector)
        self._runner: web.AppRunner | None = None

    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY_BYTES)
        app.router.add_post("/v1/downloads", self.downloads)
        app.router.add_get("/v1/tasks", self.tasks)
        app.router.add_get("/metrics", self.metrics)
        app.router.add_get("/healthz", self.healthz)
        return app

    async def start(self, path: Path) -> None:
        CacheModes().make_dir(path.parent)  # owner-only, when the daemon creates it
        if path.exists() or path.is_symlink():
            path.unlink()  # a stale socket of a daemon that died
        self._runner = web.AppRunner(self.app(), access_log=None)
        await self._runner.setup()
        old_umask = os.umask(0o077)  # the socket is created owner-only, no window
        try:
            await web.UnixSite(self._runner, str(path)).start()
        finally:
            os.umask(old_umask)
        os.chmod(path, 0o600)

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def healthz(self, _: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def metrics(self, _: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(self.registry), content_type="text/plain", charset="utf-8"
        )

    async def tasks(self, _: web.Request) -> web.Response:
        entries = [
            {
                "task_id": e.task_id.hex(),
                "url": e.url,
                "size_bytes": e.size_bytes,
                "complete": e.complete,
                "busy": e.busy,
                "last_access_s": e.last_access_s,
            }
            for e in self.daemon.entries.values()
        ]
        return web.json_response({"tasks": entries, "cache_bytes": self.daemon.cache_bytes})

    async def downloads(self, request: web.Request) -> web.StreamResponse:
        try:
            fetch, output = parse_fetch(await request.json())
        except (ValueError, TypeError) as exc:
            return web.json_response({"error": str(exc), "exit_code": EXIT_USAGE}, status=400)
        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await response.prepare(request)
        queue: asyncio.Queue[ProgressReport] = asyncio.Queue(maxsize=8)

        def progress(report: ProgressReport) -> None:
            if not queue.full():
                queue.put_nowait(report)

        async def pump() -> None:
            while True:
                report = await queue.get()
                line = {"progress": dataclasses.asdict(report)}
                await response.write(json.dumps(line).encode() + b"\n")

        pumping = asyncio.create_task(pump())
        try:
            entry, result = await self.daemon.fetch(fetch, progress)
            try:
                await self.daemon.export(entry, output)
            finally:
                self.daemon.release(entry)
            final: dict[str, Any] = {
                "result": {
                    "output": str(output),
                    "size_bytes": entry.size_bytes,
                    "task_id": entry.task_id.hex(),
                    "from_cache": result is None,
                    "from_peers_bytes": result.from_peers_bytes if result else 0,
                    "from_origin_bytes": result.from_origin_bytes if result else 0,
                    "uploaded_bytes": result.uploaded_bytes if result else 0,
                    "fallback_reason": result.fallback_reason if result else None,
                }
            }
        except DownloadError as exc:
            final = {"error": str(exc), "exit_code": exc.exit_code}
        except OSError as exc:
            final = {
                "error": f"{exc.strerror or exc}: {exc.filename or ''}",
                "exit_code": EXIT_ERROR,
            }
        finally:
            pumping.cancel()
        await response.write(json.dumps(final).encode() + b"\n")
        await response.write_eof()
        return response
