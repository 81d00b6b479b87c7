"""dfdaemon as a process: dfget hands downloads to it, its cache serves and seeds, GC, restarts."""

from __future__ import annotations

import grp
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import uvloop

from tests.helpers.origin_server import OriginServer, origin_process
from tests.integration.peers import random_file
from tests.integration.test_dfget import dfget, finish, sha256
from tests.integration.trackers import Tracker, tracker_process

pytestmark = pytest.mark.integration

MIB = 1 << 20


@dataclass
class Dfdaemon:
    process: subprocess.Popen[str]
    socket: Path
    cache: Path

    def api(self, target: str) -> Any:
        async def get() -> Any:
            connector = aiohttp.UnixConnector(path=str(self.socket))
            async with (
                aiohttp.ClientSession(connector=connector) as session,
                session.get(f"http://dfdaemon{target}") as response,
            ):
                if target == "/metrics":
                    return await response.text()
                return await response.json()

        return uvloop.run(get())


@contextmanager
def dfdaemon(
    root: Path, name: str, *args: str, env: dict[str, str] | None = None
) -> Iterator[Dfdaemon]:
    socket, cache = root / f"{name}.sock", root / f"{name}-cache"
    environment = {k: v for k, v in os.environ.items() if not k.startswith("DFDAEMON_")}
    environment.update(env or {})
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "proxy.cli",
            "--proxy-port",
            "0",
            "--socket",
            str(socket),
            "--cache-dir",
            str(cache),
            *args,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=environment,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert line.startswith("listening unix:"), f"dfdaemon did not start: {line!r}"
        yield Dfdaemon(process, socket, cache)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        try:
            process.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()


@pytest.fixture
def origin(tmp_path: Path) -> Iterator[tuple[OriginServer, Path]]:
    root = tmp_path / "origin"
    root.mkdir()
    with origin_process(root) as server:
        yield server, root


@pytest.fixture
def tracker() -> Iterator[Tracker]:
    with tracker_process("--interval", "1s") as running:
        yield running


SECRET = "a-cluster-secret-of-some-length"


@pytest.fixture
def secret_tracker(tmp_path: Path) -> Iterator[Tracker]:
    secret_file = tmp_path / "tracker-secret"
    secret_file.write_text(SECRET)
    with tracker_process("--interval", "1s", "--secret-file", str(secret_file)) as running:
        yield running


def test_dfget_hands_off_and_the_cache_serves_the_second_download(
    tmp_path: Path, origin: tuple[OriginServer, Path], tracker: Tracker
) -> None:
    server, root = origin
    source = random_file(root / "file.bin", 8 * MIB)
    url = f"{server.base_url}/files/file.bin"
    with dfdaemon(tmp_path, "d1", "--tracker", tracker.base_url) as daemon:
        assert stat.S_IMODE(daemon.socket.stat().st_mode) == 0o600
        assert stat.S_IMODE(daemon.cache.stat().st_mode) == 0o700
        summaries = []
        for name in ("first.bin", "second.bin"):
            code, err = finish(dfget(url, tmp_path / name, daemon_socket=daemon.socket), 120)
            assert code == 0, err
            assert sha256(tmp_path / name) == sha256(source)
            summaries.append(err.strip().splitlines()[-1])
        # The hand-off keeps the daemon's account of where the bytes came from.
        assert "from origin 8.0 MiB" in summaries[0], summaries[0]
        assert "from dfdaemon's cache" in summaries[1], summaries[1]
        # One download from the origin; the second copy came out of the cache.
        assert server.stats()["bytes_sent"] <= source.stat().st_size + 1
        tasks = daemon.api("/v1/tasks")["tasks"]
        assert [(t["complete"], t["size_bytes"]) for t in tasks] == [(True, 8 * MIB)]
        metrics = daemon.api("/metrics")
        assert 'dragonfly_dfdaemon_downloads_total{result="ok"} 1.0' in metrics
        assert "dragonfly_dfdaemon_cache_hits_total 1.0" in metrics
        assert "dragonfly_dfdaemon_upload_bytes_total" in metrics
        # The seeding peer of the host is in the swarm.
        stats = tracker.stats()
        assert stats["totals"]["seeds"] == 1


def test_second_daemon_gets_the_file_from_the_first_not_the_origin(
    tmp_path: Path, origin: tuple[OriginServer, Path], secret_tracker: Tracker
) -> None:
    """With the cluster secret the tracker's manifest is believed: the second host reads
    nothing from the origin (without it, it reads one piece to check the manifest:
    tests/integration/test_registry_mirror.py)."""
    server, root = origin
    source = random_file(root / "file.bin", 8 * MIB)
    url = f"{server.base_url}/files/file.bin"
    tracker, env = secret_tracker, {"DRAGONFLY_SECRET": SECRET}
    with (
        dfdaemon(tmp_path, "a", "--tracker", tracker.base_url, env=env) as first,
        dfdaemon(tmp_path, "b", "--tracker", tracker.base_url, env=env) as second,
    ):
        code, err = finish(dfget(url, tmp_path / "a.bin", daemon_socket=first.socket), 120)
        assert code == 0, err
        served = server.stats()["bytes_sent"]
        code, err = finish(dfget(url, tmp_path / "b.bin", daemon_socket=second.socket), 120)
        assert code == 0, err
        assert sha256(tmp_path / "b.bin") == sha256(source)
        assert server.stats()["bytes_sent"] == served, "the second host went to the origin"

        # The first host's daemon counts what it uploaded to the second.
        def uploaded() -> float:
            metrics = first.api("/metrics").splitlines()
            line = next(x for x in metrics if x.startswith("dragonfly_dfdaemon_upload_bytes_total"))
            return float(line.split()[-1])

        deadline = time.monotonic() + 5  # progress reaches the counters a moment later
        while time.monotonic() < deadline and uploaded() < source.stat().st_size:
            time.sleep(0.2)
        assert uploaded() >= source.stat().st_size


def test_garbage_collection_evicts_the_least_recently_used_over_the_quota(
    tmp_path: Path, origin: tuple[OriginServer, Path]
) -> None:
    server, root = origin
    for name in ("one.bin", "two.bin"):
        random_file(root / name, 2 * MIB)
    with dfdaemon(
        tmp_path, "gc", "--cache-size", "3M", env={"DFDAEMON_GC_INTERVAL_S": "200ms"}
    ) as daemon:
        for name in ("one.bin", "two.bin"):
            code, err = finish(
                dfget(
                    f"{server.base_url}/files/{name}", tmp_path / name, daemon_socket=daemon.socket
                )
            )
            assert code == 0, err
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and len(daemon.api("/v1/tasks")["tasks"]) > 1:
            time.sleep(0.2)
        tasks = daemon.api("/v1/tasks")["tasks"]
        assert [t["url"].rsplit("/", 1)[1] for t in tasks] == ["two.bin"]
        assert len([p for p in daemon.cache.iterdir() if p.is_dir()]) == 1


def test_a_restarted_daemon_keeps_its_cache_and_seeds_it(
    tmp_path: Path, origin: tuple[OriginServer, Path], secret_tracker: Tracker
) -> None:
    server, root = origin
    source = random_file(root / "file.bin", 4 * MIB)
    url = f"{server.base_url}/files/file.bin"
    tracker, env = secret_tracker, {"DRAGONFLY_SECRET": SECRET}
    with dfdaemon(tmp_path, "r", "--tracker", tracker.base_url, env=env) as daemon:
        code, err = finish(dfget(url, tmp_path / "first.bin", daemon_socket=daemon.socket))
        assert code == 0, err
    served = server.stats()["bytes_sent"]
    with dfdaemon(tmp_path, "r", "--tracker", tracker.base_url, env=env):
        # A plain in-process dfget finds the restarted daemon's seed through the tracker.
        code, err = finish(
            dfget(
                url,
                tmp_path / "other.bin",
                "--tracker",
                tracker.base_url,
                "--seed-time",
                "0s",
                secret=SECRET,
            )
        )
        assert code == 0, err
        assert sha256(tmp_path / "other.bin") == sha256(source)
        assert server.stats()["bytes_sent"] == served


def test_dead_daemon_socket_means_in_process_download(
    tmp_path: Path, origin: tuple[OriginServer, Path]
) -> None:
    server, root = origin
    source = random_file(root / "file.bin", 1 * MIB)
    with dfdaemon(tmp_path, "dead") as daemon:
        socket = daemon.socket
        daemon.process.kill()
        daemon.process.wait(timeout=10)
    assert socket.is_socket()  # left behind by the killed daemon
    code, err = finish(
        dfget(f"{server.base_url}/files/file.bin", tmp_path / "x.bin", "-v", daemon_socket=socket)
    )
    assert code == 0, err
    assert "does not answer" in err
    assert sha256(tmp_path / "x.bin") == sha256(source)


def test_a_full_cache_disk_fails_one_download_clearly_and_harms_nothing_else(
    tmp_path: Path, origin: tuple[OriginServer, Path]
) -> None:
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=12m,mode=0700", "tmpfs", str(disk)],
        capture_output=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr!r}")
    server, root = origin
    small = random_file(root / "small.bin", 4 * MIB)
    large = random_file(root / "large.bin", 16 * MIB)
    try:
        with dfdaemon(disk, "full") as daemon:
            url = f"{server.base_url}/files/"
            code, err = finish(
                dfget(url + "small.bin", tmp_path / "a.bin", daemon_socket=daemon.socket)
            )
            assert code == 0, err

            # The large file cannot fit next to the cached one: a clear error, no output.
            code, err = finish(
                dfget(url + "large.bin", tmp_path / "b.bin", daemon_socket=daemon.socket)
            )
            assert code == 1, err
            assert "No space left" in err or "free" in err, err
            assert not (tmp_path / "b.bin").exists()
            assert daemon.process.poll() is None, "the daemon died"

            # The cached task is intact and still served from the cache, not the origin...
            served = server.stats()["bytes_sent"]
            code, err = finish(
                dfget(url + "small.bin", tmp_path / "c.bin", daemon_socket=daemon.socket)
            )
            assert code == 0, err
            assert sha256(tmp_path / "c.bin") == sha256(small)
            assert server.stats()["bytes_sent"] == served
            tasks = {t["url"].rsplit("/", 1)[1]: t for t in daemon.api("/v1/tasks")["tasks"]}
            assert tasks["small.bin"]["complete"], tasks
            # ...and the failed one holds no data taking the space (it may stay listed: a later
            # request resumes it), so other tasks still fit.
            assert not tasks["large.bin"]["complete"]
            assert shutil.disk_usage(disk).used <= 5 * MIB
            random_file(root / "other.bin", 4 * MIB)
            code, err = finish(
                dfget(url + "other.bin", tmp_path / "d.bin", daemon_socket=daemon.socket)
            )
            assert code == 0, err
            assert sha256(tmp_path / "d.bin") == sha256(root / "other.bin")
            assert sha256(tmp_path / "a.bin") == sha256(small) != sha256(large)
    finally:
        subprocess.run(["umount", str(disk)], check=False)


def test_a_cache_group_makes_the_cache_readable_by_that_group_and_no_one_else(
    tmp_path: Path, origin: tuple[OriginServer, Path]
) -> None:
    server, root = origin
    random_file(root / "file.bin", 1 * MIB)
    group = grp.getgrnam("daemon")  # any group other than ours will do
    with dfdaemon(tmp_path, "grp", "--cache-group", group.gr_name) as daemon:
        code, err = finish(
            dfget(
                f"{server.base_url}/files/file.bin",
                tmp_path / "out.bin",
                daemon_socket=daemon.socket,
            )
        )
        assert code == 0, err
        made = [daemon.cache, *daemon.cache.rglob("*")]
        assert any(path.is_file() for path in made)
        for path in made:
            info = path.stat()
            expected = 0o750 if path.is_dir() else 0o640
            assert (stat.S_IMODE(info.st_mode), info.st_gid) == (expected, group.gr_gid), path


def test_an_unknown_cache_group_is_a_one_line_error(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "proxy.cli", "--cache-group", "no-such-group-here",
         "--cache-dir", str(tmp_path / "c"), "--socket", str(tmp_path / "s.sock")],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "no such group" in result.stderr, result.stderr
