"""proxy.cli (the ``dfdaemon`` command) and proxy.run: arguments, and the wiring of metrics."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from proxy.api import DaemonCollector
from proxy.cli import build_parser, main
from proxy.config import DaemonConfig, ProxyConfig
from proxy.daemon import Daemon
from proxy.run import start_proxy
from tests.proxy.upstream_server import exchange, get


def test_parser_takes_the_daemon_options_and_the_proxy_ones() -> None:
    args = build_parser().parse_args(
        [
            "--proxy-port",
            "0",
            "--registry-mirror",
            "http://127.0.0.1:5000",
            "--registry",
            "docker.io=https://registry-1.docker.io",
            "--proxy-rule",
            r"swarm=^http://files\.example/",
            "--proxy-rule",
            "direct=.",
        ]
    )
    assert args.proxy_registries == ["docker.io=https://registry-1.docker.io"]
    assert args.proxy_rules == [r"swarm=^http://files\.example/", "direct=."]
    assert args.registry_mirror == "http://127.0.0.1:5000"


def test_a_bad_rule_is_a_one_line_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--proxy-rule", "sometimes=.*"]) == 2
    assert capsys.readouterr().err == (
        "dfdaemon: --proxy-rule='sometimes=.*': rule action must be one of swarm, direct, "
        "not 'sometimes'\n"
    )


def test_start_proxy_serves_the_daemon_metrics_with_the_proxy_counters(tmp_path: Path) -> None:
    async def body() -> None:
        daemon = Daemon(
            DaemonConfig(cache_dir=tmp_path / "c", socket=tmp_path / "s", peer_host="127.0.0.1")
        )
        await daemon.start()
        collector = DaemonCollector(daemon)
        proxy = await start_proxy(daemon, ProxyConfig(port=0), collector)
        try:
            await exchange(proxy.port, get("/v2/"))  # no upstream configured: refused
            reply = await exchange(proxy.port, get("/metrics"))
        finally:
            await proxy.close()
            await daemon.close()
        text = reply.body.decode()
        assert reply.header("Content-Type") == "text/plain; version=0.0.4; charset=utf-8"
        assert 'dragonfly_dfdaemon_proxy_requests_total{route="refused"} 1.0' in text
        assert 'dragonfly_dfdaemon_proxy_requests_total{route="metrics"} 1.0' in text
        assert 'dragonfly_dfdaemon_proxy_fallbacks_total{route="blob"} 0.0' in text
        assert "dragonfly_dfdaemon_cache_bytes 0.0" in text

    asyncio.run(body())
