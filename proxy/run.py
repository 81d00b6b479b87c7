"""Wiring the proxy into a running daemon: its counters join the daemon's Prometheus registry."""

from __future__ import annotations

from prometheus_client import generate_latest

from proxy.api import DaemonCollector, metrics_registry
from proxy.config import ProxyConfig
from proxy.daemon import Daemon
from proxy.server import ProxyServer


async def start_proxy(
    daemon: Daemon, config: ProxyConfig, collector: DaemonCollector
) -> ProxyServer:
    """Start the registry mirror / HTTP proxy of ``daemon`` on ``config.host:config.port``.

    ``collector`` (the one the daemon's API serves) gains ``proxy_requests`` by route and
    ``proxy_fallbacks`` (swarm answers passed through instead); ``/metrics`` on the proxy
    port serves the same families.
    """
    registry = metrics_registry(daemon, collector)
    server = ProxyServer(config, daemon, metrics=lambda: generate_latest(registry))
    collector.extra["proxy_requests"] = server.requests_by_route
    collector.extra["proxy_fallbacks"] = server.fallbacks
    await server.start()
    return server
