"""The Redis store on a Redis Cluster of three masters on loopback (issue 23): every key of a
task carries the task's hash tag, so each task lives on one slot and its scripts run there;
tasks spread over the three masters, and two trackers started on different masters serve one
swarm."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest

from dfget.coordinators.http import announce_query
from peerwire.coordination import Progress
from peerwire.ids import PeerId, TaskId
from tests.conftest import require_program
from tests.helpers.redis_server import RedisServer, free_port, redis_server
from tests.integration.test_tracker_cluster import SECRET, _announce, cluster_tracker, scrape

pytestmark = pytest.mark.integration


@contextmanager
def redis_cluster(tmp_path: Path) -> Iterator[list[RedisServer]]:
    """Three masters, every slot assigned (``redis-cli --cluster create``)."""
    with ExitStack() as stack:
        nodes = []
        for i in range(3):
            config = tmp_path / f"nodes-{i}.conf"
            nodes.append(
                stack.enter_context(
                    redis_server(
                        "--cluster-enabled", "yes", "--cluster-config-file", str(config),
                        "--cluster-node-timeout", "5000",
                        # the bus port defaults to the port + 10000, past 65535 for a port
                        # above 55535: name a free one
                        "--cluster-port", str(free_port()),
                    )
                )
            )  # fmt: skip
        subprocess.run(
            [require_program("redis-cli"), "--cluster", "create",
             *[f"127.0.0.1:{node.port}" for node in nodes], "--cluster-replicas", "0",
             "--cluster-yes"],
            capture_output=True, text=True, timeout=60, check=True,
        )  # fmt: skip
        deadline = time.monotonic() + 30
        while not all("cluster_state:ok" in node.cli("CLUSTER", "INFO") for node in nodes):
            assert time.monotonic() < deadline, "the cluster did not come up"
            time.sleep(0.2)
        yield nodes


def test_trackers_on_a_three_master_cluster_serve_one_swarm(tmp_path: Path) -> None:
    with redis_cluster(tmp_path) as nodes, ExitStack() as stack:
        one = stack.enter_context(cluster_tracker(nodes[0].url, "--interval", "1s"))
        other = stack.enter_context(cluster_tracker(nodes[1].url, "--interval", "1s"))
        secret = SECRET.encode()
        tasks = [TaskId(bytes([n]) * 20) for n in range(1, 31)]
        first = PeerId.generate()
        second = PeerId.generate()
        for task in tasks:
            mine = Progress(peer_id=first, port=7001, left_bytes=100)
            status, answer = _announce(one, announce_query(task, mine, "started", secret, 1))
            assert status == 200 and b"failure reason" not in answer, answer
            theirs = Progress(peer_id=second, port=7002, left_bytes=0)
            status, answer = _announce(other, announce_query(task, theirs, "completed", secret, 1))
            assert status == 200 and b"failure reason" not in answer, answer
            assert (answer[b"complete"], answer[b"incomplete"]) == (1, 1)
            assert answer[b"peers"] == bytes([127, 0, 0, 1]) + (7001).to_bytes(2, "big")
        # The tasks are spread over the three masters, each task's keys on one of them.
        sizes = [int(node.cli("DBSIZE")) for node in nodes]
        assert all(size > 0 for size in sizes), sizes
        for task in tasks[:5]:
            assert scrape(one, task.raw)[b"downloaded"] == 1
        # A replay sent to the other tracker is refused there too.
        again = announce_query(tasks[0], Progress(peer_id=first, port=7001), "", secret, 1)
        assert b"replayed" in _announce(other, again)[1][b"failure reason"]  # type: ignore[operator]
        stats = other.stats()
        assert stats["totals"]["tasks"] == len(tasks)
        assert stats["totals"]["peers"] == 2 * len(tasks)
        assert "Traceback" not in one.stderr() + other.stderr()
