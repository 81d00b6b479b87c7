"""Decentralized mode with dfdaemons: ten nodes, each with the Serf agent it starts itself
(``--serf-agent auto``), one origin, no dftracker anywhere."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from tests.helpers.origin_server import OriginServer, origin_process
from tests.integration.peers import random_file
from tests.integration.serfcluster import (
    Daemon,
    alive_count,
    daemon_cluster,
    dfget_via,
    finish,
    sha256,
    stop,
    wait_until,
)

pytestmark = pytest.mark.integration

MIB = 1 << 20
SIZE = 24 * MIB
NODES = 10


@pytest.fixture
def origin(tmp_path: Path) -> Iterator[tuple[OriginServer, str, str]]:
    files = tmp_path / "files"
    files.mkdir()
    digest = sha256(random_file(files / "blob.bin", SIZE))
    with origin_process(files) as server:
        yield server, server.base_url + "/files/blob.bin", digest


def test_ten_daemons_without_a_tracker_copy_exactly_and_the_origin_serves_the_file_once(
    tmp_path: Path, origin: tuple[OriginServer, str, str]
) -> None:
    server, url, digest = origin
    with ExitStack() as stack:
        daemons = daemon_cluster(stack, tmp_path, NODES)
        server.reset()
        outputs = {d.name: tmp_path / f"copy-{d.name}.bin" for d in daemons}
        downloads = [dfget_via(d, url, outputs[d.name]) for d in daemons]
        for download in downloads:
            finish(download)
        for name, output in outputs.items():
            assert sha256(output) == digest, name
        sent = server.stats()["bytes_sent"]
        assert sent <= 1.1 * SIZE, f"the origin sent {sent / SIZE:.2f} copies"

        # Any node shows the whole cluster: dftop's /stats document and the mode's metrics.
        watcher = daemons[-1]
        wait_until(
            lambda: [t["seeds"] for t in watcher.stats()["tasks"]] == [NODES],
            "every node to be seen seeding",
        )
        task = watcher.stats()["tasks"][0]
        assert task["size_bytes"] == SIZE and task["peers"] == NODES
        assert {p["id"] for p in task["peer_list"]} == {d.name for d in daemons}
        frame = subprocess.run(
            [sys.executable, "-m", "tracker.top", "--tracker", watcher.stats_url, "--once"],
            capture_output=True, text=True, timeout=60, check=True,
        ).stdout  # fmt: skip
        assert "blob.bin" in frame and "n1" in frame, frame
        metrics = watcher.metrics()
        assert f'dragonfly_serf_members{{status="alive"}} {NODES}.0' in metrics
        assert 'dragonfly_serf_events_received_total{event="df-have"}' in metrics
        assert 'dragonfly_serf_events_received_total{event="df-digests"}' in metrics
        assert "dragonfly_dfdaemon_downloads_total" in metrics


def test_three_daemons_killed_mid_download_leave_the_others_to_finish_exactly(
    tmp_path: Path, origin: tuple[OriginServer, str, str]
) -> None:
    _, url, digest = origin
    with ExitStack() as stack:
        daemons = daemon_cluster(stack, tmp_path, NODES)
        survivors, doomed = daemons[:7], daemons[7:]
        outputs = {d.name: tmp_path / f"copy-{d.name}.bin" for d in daemons}
        # A rate limit keeps every download going while three nodes are killed.
        downloads = {d.name: dfget_via(d, url, outputs[d.name], "--rate", "3M") for d in daemons}
        watcher = survivors[0]

        def doomed_mid_download() -> bool:
            tasks = watcher.stats()["tasks"]
            peers = {p["id"]: p for t in tasks for p in t["peer_list"]}
            return all(d.name in peers and 0 < peers[d.name]["progress"] < 1 for d in doomed)

        wait_until(doomed_mid_download, "the three to hold some pieces, not all")
        for daemon in doomed:
            agents = daemon.agent_pids()
            os.kill(daemon.process.pid, signal.SIGKILL)
            for pid in agents:
                os.kill(pid, signal.SIGKILL)
        for daemon in doomed:
            stop(downloads.pop(daemon.name))
        wait_until(
            lambda: watcher.stats()["serf"]["members"].get("failed", 0) == len(doomed),
            "Serf to declare the three failed",
        )
        for name, download in downloads.items():
            finish(download)
            assert sha256(outputs[name]) == digest, name
        assert 'dragonfly_serf_members{status="failed"} 3.0' in watcher.metrics()


def test_a_daemon_supervises_its_agent_and_stops_it_on_exit(tmp_path: Path) -> None:
    import psutil

    with ExitStack() as stack:
        first, second = daemon_cluster(stack, tmp_path, 2)
        [agent] = first.agent_pids()
        os.kill(agent, signal.SIGKILL)
        wait_until(
            lambda: (
                counter(first, "dragonfly_serf_agent_restarts_total") >= 1
                and counter(first, "dragonfly_serf_reconnects_total") >= 1
            ),
            "the daemon to start its agent again and reconnect",
        )
        [restarted] = first.agent_pids()
        assert restarted != agent
        wait_until(
            lambda: alive_count(first) == 2 and alive_count(second) == 2,
            "the restarted agent to rejoin the cluster",
        )
        [other] = second.agent_pids()
        stop(second.process)  # SIGTERM: the daemon leaves and stops its agent
        assert not psutil.pid_exists(other) or psutil.Process(other).status() == "zombie"


def counter(daemon: Daemon, name: str) -> float:
    for line in daemon.metrics().splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0
