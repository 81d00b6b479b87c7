"""Faults in a live swarm: peers, the tracker, the origin or the disk fail; downloads still
complete correctly, or fail clearly and leave nothing at the output path."""

from __future__ import annotations

import json
import os
import subprocess
import sys
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


def bad_peer(tracker_url: str, url: str, source: Path, mode: str) -> subprocess.Popen[str]:
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.helpers.bad_peer",
            "--tracker",
            tracker_url,
            "--url",
            url,
            "--source",
            str(source),
            "--mode",
            mode,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert process.stdout is not None
    assert process.stdout.readline().startswith("listening"), "bad peer did not start"
    return process


def wait_for_file(path: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and not path.exists():
        time.sleep(0.1)
    assert path.exists(), f"{path} did not appear within {timeout_s}s"


def test_killing_30_percent_of_the_peers_mid_swarm_leaves_the_rest_complete(
    tmp_path: Path,
) -> None:
    root = tmp_path / "origin"
    root.mkdir()
    source = random_file(root / "file.bin", 32 * MIB)
    with origin_process(root) as origin, tracker_process("--interval", "1s") as tracker:
        url = f"{origin.base_url}/files/file.bin"
        outputs = [tmp_path / f"out{i}.bin" for i in range(10)]
        processes = [
            dfget(url, out, "--tracker", tracker.base_url, "--rate", "4M", "--seed-time", "5s")
            for out in outputs
        ]
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            stats = tracker.stats()
            if stats["tasks"] and stats["totals"]["peer_bytes"] > 16 * MIB:
                break  # mid-swarm: peers are trading
            time.sleep(0.2)
        for victim in processes[:3]:
            victim.kill()
        for process, output in zip(processes[3:], outputs[3:], strict=True):
            code, err = finish(process, 180)
            assert code == 0, err[-3000:]
            assert sha256(output) == sha256(source)
        for victim in processes[:3]:
            victim.communicate(timeout=10)


def test_origin_gone_after_the_swarm_has_every_piece(tmp_path: Path) -> None:
    root = tmp_path / "origin"
    root.mkdir()
    source = random_file(root / "file.bin", 8 * MIB)
    with tracker_process("--interval", "1s") as tracker:
        with origin_process(root) as origin:
            url = f"{origin.base_url}/files/file.bin"
            first_out = tmp_path / "first.bin"
            first = dfget(url, first_out, "--tracker", tracker.base_url, "--seed-time", "60s")
            wait_for_file(first_out, 60)
        # The origin process is gone now; only the seeding peer has the bytes.
        try:
            later = [
                dfget(
                    url,
                    tmp_path / f"later{i}.bin",
                    "--tracker",
                    tracker.base_url,
                    "--seed-time",
                    "2s",
                )
                for i in range(2)
            ]
            for i, process in enumerate(later):
                code, err = finish(process, 120)
                assert code == 0, err[-3000:]
                assert sha256(tmp_path / f"later{i}.bin") == sha256(source)
        finally:
            first.terminate()
            first.communicate(timeout=30)


def test_a_trickling_peer_is_routed_around(tmp_path: Path) -> None:
    root = tmp_path / "origin"
    root.mkdir()
    source = random_file(root / "file.bin", 8 * MIB)
    with origin_process(root) as origin, tracker_process("--interval", "1s") as tracker:
        url = f"{origin.base_url}/files/file.bin"
        honest_out = tmp_path / "honest.bin"
        honest = dfget(url, honest_out, "--tracker", tracker.base_url, "--seed-time", "60s")
        wait_for_file(honest_out, 60)
        slow = bad_peer(tracker.base_url, url, source, "trickle")
        try:
            output = tmp_path / "victim.bin"
            code, err = finish(
                dfget(url, output, "--tracker", tracker.base_url, "--seed-time", "0s"), 120
            )
            assert code == 0, err[-3000:]
            assert sha256(output) == sha256(source)
        finally:
            for process in (slow, honest):
                process.terminate()
                process.communicate(timeout=30)


def test_sigterm_announces_stopped_and_leaves_a_resumable_download(tmp_path: Path) -> None:
    root = tmp_path / "origin"
    root.mkdir()
    source = random_file(root / "file.bin", 16 * MIB)
    with origin_process(root) as origin, tracker_process("--interval", "1s") as tracker:
        url = f"{origin.base_url}/files/file.bin"
        output = tmp_path / "out.bin"
        process = dfget(url, output, "--tracker", tracker.base_url, "--rate", "2M")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and tracker.stats()["totals"]["peers"] == 0:
            time.sleep(0.1)
        time.sleep(1.0)
        process.terminate()
        code, err = finish(process, 30)
        assert code == 130, err
        # `stopped` was announced: the tracker forgot the peer at once, not after a timeout.
        assert tracker.stats()["totals"]["peers"] == 0
        assert output.with_name(output.name + ".dfpart").exists()
        assert not output.exists()
        code, err = finish(
            dfget(url, output, "--tracker", tracker.base_url, "--seed-time", "0s"), 120
        )
        assert code == 0, err
        assert sha256(output) == sha256(source)


def test_disk_full_is_a_clear_error_and_leaves_no_output(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    small = tmp_path / "small"
    small.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(small)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr!r}")
    try:
        root = tmp_path / "origin"
        root.mkdir()
        random_file(root / "file.bin", 8 * MIB)
        with origin_process(root) as origin:
            output = small / "out.bin"
            code, err = finish(dfget(f"{origin.base_url}/files/file.bin", output), 60)
            assert code == 1, err
            assert "No space left" in err or "free" in err, err
            assert not output.exists()
    finally:
        subprocess.run(["umount", str(small)], check=False)
