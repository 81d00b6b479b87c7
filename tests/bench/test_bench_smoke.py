"""The benchmark harnesses run end to end on a small file (figures are not checked here)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import require_program

ROOT = Path(__file__).resolve().parent.parent.parent

pytestmark = pytest.mark.integration


def test_throughput_bench_runs_both_sides_and_records_them(tmp_path: Path) -> None:
    require_program("aria2c")
    require_program("nginx")
    out = tmp_path / "throughput.json"
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "peer_throughput.py"),
            "--size",
            "8M",
            "--runs",
            "1",
            "--warmup",
            "0",
            "--prefault",
            "0",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["error"] is None
    assert set(result["sides"]) >= {"aria2c-x1", "peerwire"}
    (peer_run,) = result["sides"]["peerwire"]["runs"]
    assert peer_run["report"]["ok"] is True
    assert peer_run["report"]["downloaded_bytes"] == 8 << 20
    assert result["sides"]["aria2c-x1"]["runs"][0]["gbps"] > 0
    assert result["ratio_p2p_over_native"] > 0


def test_require_program_finds_a_real_program_and_rejects_a_missing_one() -> None:
    assert Path(require_program("sh")).exists()
    with pytest.raises((pytest.skip.Exception, pytest.fail.Exception)):
        require_program("no-such-program-dragonfly-test")


def test_tracker_announce_bench_drives_wrk_and_checks_every_answer(tmp_path: Path) -> None:
    require_program("wrk")
    out = tmp_path / "announce.json"
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "tracker_announce.py"),
            "--duration",
            "1s",
            "--connections",
            "4",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    results = {r["mode"]: r for r in json.loads(out.read_text())["results"]}
    assert set(results) == {"keepalive", "close"}
    for result in results.values():
        assert result["announces_per_s"] > 0
        assert result["tracker_failures"] == 0
        # every request wrk counted was answered ok by the tracker (wrk may cut the last ones)
        assert result["tracker_ok"] >= result["requests"] > 0


def test_tracker_memory_bench_loads_peers_and_reads_rss(tmp_path: Path) -> None:
    out = tmp_path / "memory.json"
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "tracker_memory.py"),
            "--peers",
            "2000",
            "--tasks",
            "200",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    results = {r["scenario"]: r for r in json.loads(out.read_text())["results"]}
    for scenario in ("bittorrent", "dragonfly"):
        assert results[scenario]["tracker_peers"] == 2000
        assert results[scenario]["tracker_tasks"] == 200
        assert results[scenario]["rss_bytes"] > results[scenario]["idle_rss_bytes"]
