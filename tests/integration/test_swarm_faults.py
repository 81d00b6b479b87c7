"""Faults in a live swarm: the tracker goes away and comes back; downloads still complete."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from dfget.identity import task_id_for
from tests.helpers.origin_server import origin_process
from tests.integration.peers import random_file
from tests.integration.test_dfget import dfget, finish, sha256
from tests.integration.trackers import free_port, tracker_process

pytestmark = pytest.mark.integration

MIB = 1 << 20


def test_tracker_restart_mid_swarm_is_whole_again_within_an_interval(tmp_path: Path) -> None:
    root = tmp_path / "origin"
    root.mkdir()
    source = random_file(root / "file.bin", 16 * MIB)
    port = free_port()
    with origin_process(root) as origin:
        url = f"{origin.base_url}/files/file.bin"
        task = task_id_for(url).hex()
        base = f"http://127.0.0.1:{port}"
        outputs = [tmp_path / f"out{i}.bin" for i in range(2)]
        with tracker_process("--port", str(port), "--interval", "1s") as first:
            processes = [
                dfget(url, out, "--tracker", base, "--rate", "2M", "--seed-time", "5s")
                for out in outputs
            ]
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and len(first.stats()["tasks"]) == 0:
                time.sleep(0.2)
            assert first.stats()["tasks"], "the peers never announced"
            first.process.kill()  # SIGKILL: all soft state lost
            first.process.wait(timeout=10)
        with tracker_process("--port", str(port), "--interval", "1s") as second:
            # Peers re-announce within an interval (plus retry delay) and re-supply the manifest.
            deadline = time.monotonic() + 10
            manifest = None
            while time.monotonic() < deadline:
                stats = second.stats(task=task)
                if stats["tasks"] and stats["tasks"][0]["peers"] == 2:
                    manifest = json.loads(second.get(f"/tasks/{task}"))
                    break
                time.sleep(0.2)
            assert manifest is not None, "the swarm did not come back to the new tracker"
            assert manifest["total_length"] == source.stat().st_size
            for process in processes:
                code, err = finish(process, 120)
                assert code == 0, err[-3000:]
        assert all(sha256(out) == sha256(source) for out in outputs)
