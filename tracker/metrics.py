"""``/metrics``: the tracker's Prometheus exposition (prometheus-client).

The hot path only bumps plain integers (in ``Routes`` and ``Swarm``); this collector turns them
into metric families when Prometheus scrapes, so an announce never takes a metrics lock.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from tracker.redisstore import RedisSwarm
from tracker.routes import LATENCY_BUCKETS_S, Routes
from tracker.swarm import Swarm

PREFIX = "dragonfly_tracker_"


def _by_result(name: str, documentation: str, counts: dict[str, int]) -> CounterMetricFamily:
    family = CounterMetricFamily(PREFIX + name, documentation, labels=["result"])
    for result, count in sorted(counts.items()):
        family.add_metric([result], count)
    return family


class TrackerCollector(Collector):
    """Reads the counters of one ``Routes`` (and its ``Swarm``) at scrape time."""

    def __init__(self, routes: Routes) -> None:
        self._routes = routes

    def collect(self) -> Iterator[Metric]:
        routes = self._routes
        swarm = routes.swarm
        announces = CounterMetricFamily(
            PREFIX + "announces",
            "Announces answered, by BEP 3 event and result (ok, failure).",
            labels=["event", "result"],
        )
        for (event, result), count in sorted(routes.announces.items()):
            announces.add_metric([event, result], count)
        yield announces

        yield _by_result("scrapes", "Scrapes answered, by result.", routes.scrapes)
        yield _by_result(
            "manifest_puts",
            "Manifest uploads (PUT /tasks/<id>), by result (ok, conflict, invalid).",
            routes.manifest_puts,
        )
        yield _by_result(
            "manifest_gets",
            "Manifest requests (GET or HEAD /tasks/<id>), by result (found, missing).",
            routes.manifest_gets,
        )

        buckets: list[tuple[str, float]] = []
        running = 0
        for bound, count in zip(LATENCY_BUCKETS_S, routes.latency_counts, strict=False):
            running += count
            buckets.append((repr(bound), running))
        running += routes.latency_counts[-1]
        buckets.append(("+Inf", running))
        yield HistogramMetricFamily(
            PREFIX + "announce_duration_seconds",
            "Time to parse, decide and encode one announce (excludes HTTP I/O).",
            buckets=buckets,
            sum_value=routes.latency_sum_s,
        )

        shared = routes.shared
        if swarm is not None:
            peers, seeds, tasks = swarm.peer_count, swarm.seed_count, swarm.task_count
            store: Swarm | RedisSwarm = swarm
        else:
            assert shared is not None
            totals = shared.totals
            peers, seeds, tasks = totals.peers, totals.seeds, totals.tasks
            store = shared
        scope = " (every tracker sharing the store)" if shared is not None else ""
        yield GaugeMetricFamily(PREFIX + "peers", "Peers currently in any swarm" + scope, peers)
        yield GaugeMetricFamily(PREFIX + "seeds", "Peers that have the whole file" + scope, seeds)
        yield GaugeMetricFamily(PREFIX + "tasks", "Tasks currently tracked" + scope, tasks)
        if shared is not None:
            yield from _shared_metrics(routes, shared)
        yield CounterMetricFamily(
            PREFIX + "source_assigned_pieces",
            "Pieces handed to peers to fetch from the origin (back-to-source assignments).",
            store.assigned_pieces_total,
        )
        yield CounterMetricFamily(
            PREFIX + "bad_peer_reports", "Reports of misbehaving peers.", store.reports_total
        )
        yield CounterMetricFamily(
            PREFIX + "completions",
            "Downloads completed (scrape 'downloaded').",
            store.completions_total,
        )
        yield CounterMetricFamily(
            PREFIX + "peers_expired",
            "Peers dropped after missing announces.",
            store.peers_expired_total,
        )
        yield CounterMetricFamily(
            PREFIX + "manifest_refutations",
            "Peers' reports that a task's manifest contradicts what they read from the origin.",
            routes.manifest_refutations,
        )
        yield CounterMetricFamily(
            PREFIX + "http_requests", "HTTP requests answered, any route.", routes.requests_total
        )


def _shared_metrics(routes: Routes, shared: RedisSwarm) -> Iterator[Metric]:
    """The Redis store's: whether it answers, the trackers sharing it, this tracker's traffic."""
    link = shared.link
    yield GaugeMetricFamily(
        PREFIX + "store_up", "1 while Redis answers, 0 while it is unreachable.",
        0 if link.problem else 1,
    )  # fmt: skip
    yield GaugeMetricFamily(
        PREFIX + "cluster_trackers", "Trackers sharing the store (heartbeats of the last 10 s).",
        shared.totals.trackers,
    )  # fmt: skip
    yield CounterMetricFamily(
        PREFIX + "store_unavailable", "Requests refused because Redis could not be reached.",
        routes.unavailable,
    )  # fmt: skip
    yield CounterMetricFamily(
        PREFIX + "redis_round_trips", "Writes to Redis, each carrying one or more commands.",
        link.round_trips,
    )  # fmt: skip
    yield CounterMetricFamily(PREFIX + "redis_commands", "Commands sent to Redis.", link.commands)


def make_registry(routes: Routes) -> CollectorRegistry:
    """A registry of its own (not the global one), so several trackers can share a process."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(TrackerCollector(routes))
    return registry


def render(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)
