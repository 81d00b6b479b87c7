"""dfdaemon in decentralized mode: the cluster as this node sees it, for dftop and Prometheus.

``GET /stats`` serves the document ``tracker/stats.py`` defines (the contract with ``dftop``),
built from gossip: the tasks this node has heard of, their live members as the peers, each
member's bitfield, rates from the counters in its ``df-have`` events, ``fetching`` for a member
that rendezvous hashing gives origin pieces now. A ``serf`` section adds the node's name, the
members by status and the counters below. So ``dftop --tracker http://HOST:STATS_PORT`` shows the
cluster from any node (``--stats-port``; loopback unless ``--stats-host`` says otherwise).

``SerfDaemonCollector`` adds to the daemon's Prometheus families:
``dragonfly_serf_members{status}``, ``dragonfly_serf_events_sent_total{event}``,
``_events_received_total{event}``, ``_events_rejected_total{reason}``,
``_event_bytes_sent_total``, ``_queries_sent_total{query}``, ``_queries_answered_total{query}``,
``_query_failures_total``, ``_rendezvous_reassigned_pieces_total``, ``_reconnects_total``,
``_agent_restarts_total``.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from typing import Any, Final

from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from dfget.coordinators.serfnode import SerfNode
from dfget.coordinators.serfview import (
    INTERVAL_S,
    ClusterView,
    Holding,
    TaskState,
    bit_count,
    full_mask,
)
from dfget.coordinators.serfwire import FLAG_COMPLETE
from proxy.api import DaemonCollector
from proxy.daemon import Daemon

PREFIX: Final = "dragonfly_serf_"
MAX_PEERS: Final = 1000
#: A member whose news is older than this is shown stalled.
STALLED_S: Final = 10.0


def stats_document(
    node: SerfNode, task: bytes | None, peers_limit: int, tasks_limit: int, started_s: float
) -> dict[str, Any]:
    view = node.view
    now = view.now()
    tasks = {key: state for key, state in view.tasks.items() if state.geometry is not None}
    chosen = list(tasks.items()) if task is None else [(task, tasks[task])] if task in tasks else []
    rows = [_task(view, key, state, now, peers_limit) for key, state in chosen]
    rows.sort(key=lambda row: (row["seeds"] - row["peers"], -row["download_bps"]))
    peers = sum(sum(1 for n in t.holders if view.alive(n)) for t in tasks.values())
    return {
        "tracker": {"uptime_s": time.monotonic() - started_s, "interval_s": INTERVAL_S,
                    "now_s": now},
        "serf": {
            "node": node.me,
            "members": dict(Counter(m.status for m in view.members.values())),
            "events_sent": sum(node.counters.events_sent.values()),
            "events_received": sum(node.counters.events_received.values()),
            "events_rejected": sum(node.counters.rejected.values()),
            "reassigned_pieces": view.reassigned,
        },
        "totals": {
            "tasks": len(tasks),
            "peers": peers,
            "seeds": sum(r["seeds"] for r in rows) if task is None else 0,
            "download_bps": sum(r["download_bps"] for r in rows),
            "upload_bps": sum(r["upload_bps"] for r in rows),
            "origin_bytes": sum(r["origin_bytes"] for r in rows),
            "peer_bytes": sum(r["peer_bytes"] for r in rows),
        },
        "tasks": rows[: max(0, tasks_limit)],
    }  # fmt: skip


def _task(
    view: ClusterView, key: bytes, state: TaskState, now: float, peers_limit: int
) -> dict[str, Any]:
    geometry = state.geometry
    assert geometry is not None
    num_pieces = geometry.num_pieces
    live = {name: h for name, h in state.holders.items() if view.alive(name)}
    union = 0
    for holding in live.values():
        union |= holding.mask
    fetching = _fetching(view, key, state)
    listed = sorted(live.items(), key=lambda item: -item[1].mask.bit_count())
    listed = listed[: max(0, min(peers_limit, MAX_PEERS))]
    seeds = sum(1 for h in live.values() if h.flags & FLAG_COMPLETE)
    name = geometry.url.rsplit("/", 1)[-1] or None if geometry.url else None
    progress = [h.mask.bit_count() / num_pieces if num_pieces else 1.0 for h in live.values()]
    return {
        "id": key.hex(),
        "url": geometry.url or None,
        "name": name,
        "size_bytes": geometry.total_length,
        "piece_length": geometry.piece_length,
        "pieces": num_pieces,
        "pieces_known": len(state.digests),
        "pieces_available": (union & full_mask(num_pieces)).bit_count(),
        "peers": len(live),
        "seeds": seeds,
        "completed": state.completions,
        "completion": sum(progress) / len(progress) if progress else 0.0,
        "download_bps": sum(h.download_bps for h in live.values()),
        "upload_bps": sum(h.upload_bps for h in live.values()),
        "origin_bytes": sum(h.origin for h in live.values()),
        "peer_bytes": sum(max(0, h.downloaded - h.origin) for h in live.values()),
        "age_s": now - state.created_at,
        "source_fetchers": sum(1 for n in fetching.values() if n),
        "peer_list": [
            _peer(view, name, h, num_pieces, fetching.get(name, 0), now) for name, h in listed
        ],
        "peer_list_truncated": len(live) > len(listed),
    }


def _fetching(view: ClusterView, key: bytes, state: TaskState) -> dict[str, int]:
    """Origin pieces each live member has by rendezvous hashing now."""
    sources = view._sources(state, view.now())
    if not sources:
        return {}
    missing = view._missing(state)
    return {
        name: sum(len(p) for p in view._groups_of(key, state, missing, sources, name).values())
        for name in sources
    }


def _peer(
    view: ClusterView, name: str, holding: Holding, num_pieces: int, assigned: int, now: float
) -> dict[str, Any]:
    info = view.members.get(name)
    complete = bool(holding.flags & FLAG_COMPLETE)
    if complete:
        state = "seeding"
    elif assigned:
        state = "fetching"
    elif now - holding.seen_at > STALLED_S:
        state = "stalled"
    else:
        state = "downloading"
    held = holding.mask.bit_count()
    return {
        "id": name,
        "client": "serf",
        "address": f"{info.addr}:{info.port}" if info else "",
        "zone": info.zone if info else "",
        "progress": held / num_pieces if num_pieces else 1.0,
        "have": holding.mask.to_bytes(bit_count(num_pieces) // 8, "big").hex(),
        "download_bps": holding.download_bps,
        "upload_bps": holding.upload_bps,
        "downloaded_bytes": holding.downloaded,
        "uploaded_bytes": holding.uploaded,
        "origin_bytes": holding.origin,
        "left_bytes": None,
        "load": info.load if info else 0,
        "last_seen_s": max(0.0, now - holding.seen_at),
        "assigned": assigned,
        "state": state,
        "reported_bad": 0,
    }


class SerfDaemonCollector(DaemonCollector):
    """The daemon's families and those of its Serf node."""

    def __init__(self, daemon: Daemon, node: SerfNode) -> None:
        super().__init__(daemon)
        self.node = node

    def collect(self) -> Iterator[Metric]:
        yield from super().collect()
        node, counters = self.node, self.node.counters
        members = GaugeMetricFamily(
            PREFIX + "members", "Serf members by status.", labels=["status"]
        )
        for status, count in sorted(Counter(m.status for m in node.view.members.values()).items()):
            members.add_metric([status], count)
        yield members
        for name, help, values, label in (
            ("events_sent", "User events this node fired.", counters.events_sent, "event"),
            ("events_received", "User events accepted from others.", counters.events_received,
             "event"),
            ("events_rejected", "Events, queries and answers dropped (malformed, "
             "unauthenticated, replayed, stale).", counters.rejected, "reason"),
            ("queries_sent", "Queries this node asked.", counters.queries_sent, "query"),
            ("queries_answered", "Queries this node answered.", counters.queries_answered, "query"),
            ("reports", "Reports of this node's downloads: bad peers, refuted manifests.",
             counters.reports, "reason"),
        ):  # fmt: skip
            family = CounterMetricFamily(PREFIX + name, help, labels=[label])
            for key, value in sorted(values.items()):
                family.add_metric([key], value)
            yield family
        agent = node.agent
        for name, help, value in (
            ("event_bytes_sent", "Bytes of the user events this node fired.",
             counters.event_bytes_sent),
            ("query_failures", "Queries that got no usable answer.", counters.query_failures),
            ("rendezvous_reassigned_pieces", "Origin pieces moved to another node because a "
             "member failed or left.", node.view.reassigned),
            ("reconnects", "Reconnections to the Serf agent.", counters.reconnects),
            ("agent_restarts", "Restarts of the agent this node supervises.",
             agent.restarts if agent else 0),
        ):  # fmt: skip
            yield CounterMetricFamily(PREFIX + name, help, value)


class StatsServer:
    """``/stats``, ``/metrics`` and ``/healthz`` over TCP (``--stats-port``)."""

    def __init__(self, node: SerfNode, registry: CollectorRegistry) -> None:
        self.node = node
        self.registry = registry
        self.started_s = time.monotonic()
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def start(self, host: str, port: int) -> None:
        app = web.Application()
        app.router.add_get("/stats", self.stats)
        app.router.add_get("/metrics", self.metrics)
        app.router.add_get("/healthz", lambda _: _text("ok\n"))
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        bound = self._runner.addresses[0][1]
        self.url = f"http://{host}:{bound}"

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def stats(self, request: web.Request) -> web.Response:
        query = request.query
        try:
            peers = int(query.get("peers", "50"))
            tasks = int(query.get("tasks", "100"))
            task = bytes.fromhex(query["task"]) if "task" in query else None
        except ValueError:
            return web.json_response({"error": "peers and tasks are numbers, task hex"}, status=400)
        document = stats_document(self.node, task, peers, tasks, self.started_s)
        return web.json_response(document)

    async def metrics(self, _: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(self.registry), content_type="text/plain", charset="utf-8"
        )


async def _text(text: str) -> web.Response:
    return web.Response(text=text)
