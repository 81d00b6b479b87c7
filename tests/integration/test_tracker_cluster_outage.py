"""A tracker outage at the start of a crowd is not an origin stampede (issue 23): twelve dfget
clients start, the tracker is killed one second later and back three seconds after that.
Every copy is byte-exact and the origin sends far less than one copy per client (before this,
each client that found no tracker fetched the whole file: 12x)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.helpers.origin_server import origin_process
from tests.integration.peers import random_file
from tests.integration.test_dfget import dfget, finish, sha256
from tests.integration.trackers import free_port, tracker_process

pytestmark = pytest.mark.integration

MIB = 1 << 20
CLIENTS = 12


def test_a_tracker_down_for_three_seconds_at_the_start_is_no_origin_stampede(
    tmp_path: Path,
) -> None:
    root = tmp_path / "origin"
    root.mkdir()
    size = 16 * MIB
    source = random_file(root / "file.bin", size)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with origin_process(root) as origin:
        url = f"{origin.base_url}/files/file.bin"
        outputs = [tmp_path / f"out{i}.bin" for i in range(CLIENTS)]
        with tracker_process("--port", str(port), "--interval", "1s") as tracker:
            started = time.monotonic()
            processes = [dfget(url, out, "--tracker", base, "--seed-time", "3s") for out in outputs]
            time.sleep(max(0.0, started + 1.0 - time.monotonic()))
            tracker.process.kill()
            tracker.process.wait(timeout=10)
        time.sleep(max(0.0, started + 4.0 - time.monotonic()))
        with tracker_process("--port", str(port), "--interval", "1s"):
            for process in processes:
                code, err = finish(process, 180)
                assert code == 0, err[-3000:]
        for output in outputs:
            assert sha256(output) == sha256(source)
        sent = origin.stats()["bytes_sent"]
        print(f"origin sent {sent / size:.2f}x the file to {CLIENTS} clients")
        assert sent <= 3 * size, f"the origin sent {sent / size:.2f}x the file"
