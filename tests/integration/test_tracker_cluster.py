"""Trackers sharing one Redis (issue 23), as real processes: ``redis-server``, ``dftracker
serve --redis``, the origin and ``dfget`` on 127.0.0.1. One swarm whichever tracker a client
asks; a tracker SIGKILLed mid-swarm loses nothing; a tracker started later knows the counts at
once; replays do not pass from one tracker to another; Redis away is a clear 503."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from urllib.parse import quote_from_bytes

import pytest

from dfget.coordinators.http import announce_query
from dfget.identity import task_id_for
from peerwire import bencoding
from peerwire.coordination import Progress
from peerwire.ids import PeerId, TaskId
from tests.conftest import require_program
from tests.helpers.origin_server import origin_process
from tests.helpers.redis_server import redis_server
from tests.integration.peers import random_file
from tests.integration.test_dfget import dfget, finish, sha256
from tests.integration.trackers import Tracker

pytestmark = pytest.mark.integration

MIB = 1 << 20
SECRET = "cluster-test-secret-0123456789"


@contextmanager
def cluster_tracker(redis_url: str, *args: str, secret: str | None = SECRET) -> Iterator[Tracker]:
    """``dftracker serve --redis`` on a free port, with the cluster secret in its environment;
    SIGTERM (then SIGKILL) on exit."""
    environment = {
        k: v for k, v in os.environ.items() if not k.startswith(("DFTRACKER_", "DRAGONFLY_"))
    }
    if secret is not None:
        environment["DRAGONFLY_SECRET"] = secret
    command = [sys.executable, "-m", "tracker.cli", "serve", "--port", "0", "--redis", redis_url]
    with tempfile.TemporaryFile("w+") as errors:
        process = subprocess.Popen(
            [*command, *args], stdout=subprocess.PIPE, stderr=errors, text=True, env=environment
        )
        try:
            assert process.stdout is not None
            line = process.stdout.readline().strip()
            if not line.startswith("listening "):
                process.kill()
                process.communicate(timeout=10)
                errors.seek(0)
                raise AssertionError(f"tracker did not start: {line!r}\n{errors.read()}")
            port = int(line.rsplit(":", 1)[1].split("/", 1)[0])
            yield Tracker(process, port, errors)
        finally:
            if process.poll() is None:
                process.terminate()
            try:
                process.communicate(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.communicate()


def scrape(tracker: Tracker, task: bytes) -> dict[bytes, int]:
    body = tracker.get("/scrape?info_hash=" + quote_from_bytes(task, safe=""))
    files = bencoding.decode(body)[b"files"]
    counts: dict[bytes, int] = files[task]
    return counts


def test_two_trackers_sharing_redis_lose_nothing_when_one_is_killed_mid_swarm(
    tmp_path: Path,
) -> None:
    """20 clients, half listing each tracker first; one tracker SIGKILLed mid-swarm: every copy
    is byte-exact, the origin sends at most 1.1x the file (one swarm, not two), and a third
    tracker started afterwards answers /scrape with the right counts at once."""
    root = tmp_path / "origin"
    root.mkdir()
    size = 16 * MIB
    source = random_file(root / "file.bin", size)
    with ExitStack() as stack:
        redis = stack.enter_context(redis_server())
        origin = stack.enter_context(origin_process(root))
        first = stack.enter_context(cluster_tracker(redis.url, "--interval", "1s"))
        second = stack.enter_context(cluster_tracker(redis.url, "--interval", "1s"))
        url = f"{origin.base_url}/files/file.bin"
        task = task_id_for(url).raw
        outputs = [tmp_path / f"out{i}.bin" for i in range(20)]
        processes = []
        for i, out in enumerate(outputs):
            order = (first, second) if i % 2 == 0 else (second, first)
            trackers = ",".join(t.base_url for t in order)
            processes.append(
                dfget(url, out, "--tracker", trackers, "--rate", "3M", "--seed-time", "3s",
                      secret=SECRET)
            )  # fmt: skip
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            totals = second.stats()["totals"]
            if totals["peer_bytes"] > 2 * size:
                break  # mid-swarm: peers are trading
            time.sleep(0.1)
        assert second.stats()["totals"]["peer_bytes"] > 2 * size, "the swarm never got going"
        first.process.kill()
        first.process.wait(timeout=10)
        for process, output in zip(processes, outputs, strict=True):
            code, err = finish(process, 180)
            assert code == 0, err[-3000:]
            assert sha256(output) == sha256(source)
        sent = origin.stats()["bytes_sent"]
        assert sent <= 1.1 * size, f"the origin sent {sent / size:.2f}x the file"
        with cluster_tracker(redis.url, "--interval", "1s") as third:
            counts = scrape(third, task)
            assert counts[b"downloaded"] == 20
            live = second.stats(task=task.hex())["tasks"][0]
            assert counts[b"complete"] == live["seeds"]
            assert counts[b"complete"] + counts[b"incomplete"] == live["peers"]
        assert "Traceback" not in second.stderr()


def _announce(tracker: Tracker, query: str) -> tuple[int, dict[bytes, object]]:
    try:
        with urllib.request.urlopen(f"{tracker.base_url}/announce?{query}", timeout=10) as answer:
            return answer.status, bencoding.decode(answer.read())
    except urllib.error.HTTPError as error:
        return error.code, bencoding.decode(error.read())


def test_an_announce_accepted_by_one_tracker_is_a_replay_at_the_other() -> None:
    task = TaskId(b"\x01" * 20)
    progress = Progress(peer_id=PeerId.generate(), port=7000, left_bytes=100)
    with redis_server() as redis, ExitStack() as stack:
        one = stack.enter_context(cluster_tracker(redis.url))
        other = stack.enter_context(cluster_tracker(redis.url))
        query = announce_query(task, progress, "started", SECRET.encode(), seq=5)
        status, answer = _announce(one, query)
        assert (status, b"failure reason" in answer) == (200, False)
        status, answer = _announce(other, query)
        assert b"replayed" in answer[b"failure reason"]  # type: ignore[operator]
        stopped = announce_query(task, progress, "stopped", SECRET.encode(), seq=6)
        assert b"failure reason" not in _announce(other, stopped)[1]
        # The departed peer's seq is remembered across trackers too: no replay brings it back.
        again = announce_query(task, progress, "started", SECRET.encode(), seq=6)
        assert b"replayed" in _announce(one, again)[1][b"failure reason"]  # type: ignore[operator]


def test_an_api_nonce_used_at_one_tracker_is_refused_at_the_other() -> None:
    from peerwire.auth import AUTH_HEADER, api_header, new_nonce

    task = "02" * 20
    target = f"/tasks/{task}"
    body = b'{"url":"http://o/x","total_length":65536,"piece_length":16384}'
    header = api_header(SECRET.encode(), "PUT", target, int(time.time()), new_nonce(), body)
    with redis_server() as redis, ExitStack() as stack:
        one = stack.enter_context(cluster_tracker(redis.url))
        other = stack.enter_context(cluster_tracker(redis.url))
        statuses = []
        for tracker in (one, other):
            request = urllib.request.Request(
                tracker.base_url + target, data=body, method="PUT", headers={AUTH_HEADER: header}
            )
            try:
                with urllib.request.urlopen(request, timeout=10) as answer:
                    statuses.append(answer.status)
            except urllib.error.HTTPError as error:
                statuses.append(error.code)
                assert b"used before" in error.read()
        assert statuses == [200, 403]


def test_redis_gone_is_a_clear_503_and_the_tracker_comes_back_by_itself() -> None:
    task = TaskId(b"\x03" * 20)
    progress = Progress(peer_id=PeerId.generate(), port=7000, left_bytes=100)
    with redis_server() as redis, cluster_tracker(redis.url, secret=None) as tracker:
        query = announce_query(task, progress, "started")
        assert _announce(tracker, query)[0] == 200
        redis.stop()
        started = time.monotonic()
        status, answer = _announce(tracker, query)
        assert status == 503
        assert b"tracker store unavailable" in answer[b"failure reason"]  # type: ignore[operator]
        try:
            tracker.get("/stats")
        except urllib.error.HTTPError as error:
            assert error.code == 503
        else:
            raise AssertionError("/stats answered without its store")
        redis.start()
        deadline = time.monotonic() + 30
        while _announce(tracker, announce_query(task, progress, ""))[0] != 200:
            assert time.monotonic() < deadline, "the tracker did not reconnect"
            time.sleep(0.2)
        # A Redis that lost everything is a restarted tracker: the peer is known again.
        assert tracker.stats()["totals"]["peers"] == 1
        assert time.monotonic() - started < 60
        assert "Traceback" not in tracker.stderr()


def test_a_stopped_stock_swarm_keeps_its_scrape_counts() -> None:
    """BEP 48 ``downloaded`` outlives the swarm (for the task's TTL), in Redis as in memory."""
    task = TaskId(b"\x04" * 20)
    peer = Progress(peer_id=PeerId.generate(), port=7000, left_bytes=100)
    done = Progress(peer_id=peer.peer_id, port=7000, left_bytes=0)
    with redis_server() as redis, cluster_tracker(redis.url, secret=None) as tracker:
        _announce(tracker, announce_query(task, peer, "started"))
        _announce(tracker, announce_query(task, done, "completed"))
        _announce(tracker, announce_query(task, done, "stopped"))
        assert scrape(tracker, task.raw) == {b"complete": 0, b"downloaded": 1, b"incomplete": 0}


def test_redis_lost_mid_swarm_is_survived_like_a_tracker_restart(tmp_path: Path) -> None:
    """Redis killed mid-swarm (its data gone with it) and back empty three seconds later:
    meanwhile the tracker answers 503 and the peers keep trading; then they re-announce and
    re-offer the manifest. Every copy byte-exact, no partial output left."""
    root = tmp_path / "origin"
    root.mkdir()
    size = 16 * MIB
    source = random_file(root / "file.bin", size)
    with ExitStack() as stack:
        redis = stack.enter_context(redis_server())
        origin = stack.enter_context(origin_process(root))
        tracker = stack.enter_context(cluster_tracker(redis.url, "--interval", "1s"))
        url = f"{origin.base_url}/files/file.bin"
        task = task_id_for(url).hex()
        outputs = [tmp_path / f"out{i}.bin" for i in range(6)]
        processes = [
            dfget(url, out, "--tracker", tracker.base_url, "--rate", "2M", "--seed-time", "3s",
                  secret=SECRET)
            for out in outputs
        ]  # fmt: skip
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and tracker.stats()["totals"]["peer_bytes"] < size:
            time.sleep(0.1)
        redis.process.kill()
        redis.process.wait(timeout=10)
        time.sleep(3)
        redis.start()
        deadline = time.monotonic() + 30
        while True:  # the peers bring the swarm and its manifest back
            try:
                manifest = json.loads(tracker.get(f"/tasks/{task}"))
                break
            except urllib.error.HTTPError:
                assert time.monotonic() < deadline, "the manifest never came back"
                time.sleep(0.2)
        assert manifest["total_length"] == size
        for process, output in zip(processes, outputs, strict=True):
            code, err = finish(process, 180)
            assert code == 0, err[-3000:]
            assert sha256(output) == sha256(source)
        assert not list(tmp_path.glob("*.dfpart"))
        assert "Traceback" not in tracker.stderr()


def test_rediss_with_a_password_and_a_wrong_password_said_without_it(tmp_path: Path) -> None:
    """``rediss://`` (TLS, the server's certificate checked against a given CA) with a
    password; a wrong password is a clear 503 that never shows the password."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [require_program("openssl"), "req", "-x509", "-newkey", "rsa:2048", "-nodes",
         "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        capture_output=True, check=True, timeout=60,
    )  # fmt: skip
    tls = ["--tls-cert-file", str(cert), "--tls-key-file", str(key), "--tls-ca-cert-file",
           str(cert), "--tls-auth-clients", "no"]  # fmt: skip
    task = TaskId(b"\x05" * 20)
    progress = Progress(peer_id=PeerId.generate(), port=7000, left_bytes=100)
    with redis_server(*tls, password="right-password-123") as redis:
        good = f"rediss://:right-password-123@127.0.0.1:{redis.port}/0?ssl_ca_certs={cert}"
        with cluster_tracker(good, secret=None) as tracker:
            status, answer = _announce(tracker, announce_query(task, progress, "started"))
            assert (status, answer[b"incomplete"]) == (200, 1)
        bad = f"rediss://:wrong-password-456@127.0.0.1:{redis.port}/0?ssl_ca_certs={cert}"
        with cluster_tracker(bad, secret=None) as tracker:
            status, answer = _announce(tracker, announce_query(task, progress, "started"))
            reason = answer[b"failure reason"]
            assert status == 503 and b"refused the login" in reason, reason  # type: ignore[operator]
            assert b"wrong-password" not in reason  # type: ignore[operator]
            assert "wrong-password" not in tracker.stderr()
