"""``dfget`` as processes on 127.0.0.1: a real tracker, a real origin, real peers."""

from __future__ import annotations

import hashlib
import os
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest

from dfget.identity import task_id_for
from peerwire.layout import choose_piece_length
from peerwire.wireconfig import WireConfig
from tests.helpers.origin_server import OriginServer, origin_process
from tests.integration.peers import random_file
from tests.integration.trackers import Tracker, free_port, tracker_process

pytestmark = pytest.mark.integration

MIB = 1 << 20


def dfget(
    url: str,
    output: Path,
    *args: str,
    daemon_socket: Path | None = None,
    secret: str | None = None,
) -> subprocess.Popen[str]:
    """A ``dfget`` process isolated from the host's settings: no DFGET_*/DRAGONFLY_* variables,
    no user config file; in-process unless ``daemon_socket`` names a dfdaemon to hand over to."""
    environment = {
        k: v for k, v in os.environ.items() if not k.startswith(("DFGET_", "DRAGONFLY_"))
    }
    environment["XDG_CONFIG_HOME"] = str(output.parent)  # no user config file applies
    environment["DFGET_DAEMON_SOCKET"] = str(daemon_socket) if daemon_socket else ""
    if secret is not None:
        environment["DRAGONFLY_SECRET"] = secret
    return subprocess.Popen(
        [sys.executable, "-m", "dfget.cli", url, "-O", str(output), "--quiet", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=environment,
    )


def finish(process: subprocess.Popen[str], timeout_s: float = 240) -> tuple[int, str]:
    try:
        _, err = process.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        _, err = process.communicate()
        raise AssertionError(f"dfget did not finish in {timeout_s}s:\n{err[-3000:]}") from None
    return process.returncode, err


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[OriginServer, Path]]:
    root = tmp_path / "origin"
    root.mkdir()
    with origin_process(root) as origin:
        yield origin, root


@pytest.fixture
def tracker() -> Iterator[Tracker]:
    with tracker_process("--interval", "2s") as running:
        yield running


def test_ten_dfget_processes_share_a_file_and_the_origin_serves_it_about_once(
    tmp_path: Path, served: tuple[OriginServer, Path], tracker: Tracker
) -> None:
    origin, root = served
    source = random_file(root / "big.bin", 64 * MIB)
    url = f"{origin.base_url}/files/big.bin"
    outputs = [tmp_path / f"out{i}.bin" for i in range(10)]
    processes = [
        dfget(url, out, "--tracker", tracker.base_url, "--seed-time", "15s") for out in outputs
    ]
    results = [finish(p) for p in processes]
    for code, err in results:
        assert code == 0, err[-3000:]
    expected = sha256(source)
    assert all(sha256(out) == expected for out in outputs)
    sent = origin.stats()["bytes_sent"]
    assert sent <= 1.1 * source.stat().st_size, f"origin sent {sent} bytes for 10 copies"
    # The bytes between peers outweigh the origin's: each process says so in its summary.
    assert any("from peers" in err for _, err in results)


class SilentPeers:
    """Listening sockets that accept connections and never answer the handshake; counts how
    many of their connections are open at once."""

    def __init__(self, count: int) -> None:
        self.listeners = [socket.create_server(("127.0.0.1", 0)) for _ in range(count)]
        self.open = self.most_open = 0
        self._selector = selectors.DefaultSelector()
        for listener in self.listeners:
            listener.setblocking(False)
            self._selector.register(listener, selectors.EVENT_READ, "listener")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    @property
    def ports(self) -> list[int]:
        return [listener.getsockname()[1] for listener in self.listeners]

    def _serve(self) -> None:
        while not self._stop.is_set():
            for key, _ in self._selector.select(timeout=0.05):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                if key.data == "listener":
                    conn, _ = sock.accept()
                    conn.setblocking(False)
                    self._selector.register(conn, selectors.EVENT_READ, "conn")
                    self.open += 1
                    self.most_open = max(self.most_open, self.open)
                elif not sock.recv(65536):  # the dialler gave up on us
                    self._selector.unregister(sock)
                    sock.close()
                    self.open -= 1

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        for key in list(self._selector.get_map().values()):
            key.fileobj.close()  # type: ignore[union-attr]
        self._selector.close()


def test_dfget_dials_no_more_peers_than_it_may_keep(
    tmp_path: Path, served: tuple[OriginServer, Path], tracker: Tracker
) -> None:
    """The tracker lists 20 peers that never complete a handshake: dfget has at most
    ``dial_peers`` (8) connections open or being opened at once, not one per listed peer."""
    origin, root = served
    random_file(root / "file.bin", 4 * MIB)
    url = f"{origin.base_url}/files/file.bin"
    task = urllib.parse.quote_from_bytes(task_id_for(url).raw)
    silent = SilentPeers(20)
    try:
        for n, port in enumerate(silent.ports):
            peer_id = urllib.parse.quote_from_bytes(b"-XX0001-" + n.to_bytes(12, "big"))
            tracker.get(
                f"/announce?info_hash={task}&peer_id={peer_id}&port={port}"
                "&uploaded=0&downloaded=0&left=1000&compact=1"
            )
        # Slowed to ~4 s, longer than the dials take; the handshake timeout (10 s) frees no
        # slot meanwhile.
        output = tmp_path / "out.bin"
        code, err = finish(
            dfget(url, output, "--tracker", tracker.base_url, "--seed-time", "0s", "--rate", "1M")
        )
        assert code == 0, err[-3000:]
        assert 1 <= silent.most_open <= WireConfig().dial_peers, silent.most_open
    finally:
        silent.close()


def test_sigint_keeps_verified_pieces_and_the_same_command_resumes(
    tmp_path: Path, served: tuple[OriginServer, Path]
) -> None:
    origin, root = served
    source = random_file(root / "file.bin", 16 * MIB)
    url = f"{origin.base_url}/files/file.bin"
    output = tmp_path / "resumed.bin"
    first = dfget(url, output, "--rate", "4M")
    partial = output.with_name(output.name + ".dfpart")
    record = output.with_name(output.name + ".dfpart.pieces")
    entry_bytes, header_bytes = 8, 40  # peerwire/piecerecord.py
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if record.exists() and record.stat().st_size >= header_bytes + 16 * entry_bytes:
            break  # some pieces are verified and recorded
        time.sleep(0.05)
    first.send_signal(signal.SIGINT)
    code, err = finish(first, 60)
    assert code == 130, err
    assert "resume" in err
    assert partial.exists() and not output.exists()
    kept = (record.stat().st_size - header_bytes) // entry_bytes
    assert kept >= 16
    origin.reset()
    code, err = finish(dfget(url, output), 120)
    assert code == 0, err
    assert sha256(output) == sha256(source)
    assert not partial.exists()
    # Only what was missing came again: the verified pieces of the first run were kept.
    piece_bytes = choose_piece_length(source.stat().st_size)
    assert origin.stats()["bytes_sent"] <= source.stat().st_size - kept * piece_bytes + 1


def test_digest_mismatch_exits_3_and_leaves_nothing_at_the_output(
    tmp_path: Path, served: tuple[OriginServer, Path]
) -> None:
    origin, root = served
    random_file(root / "file.bin", 2 * MIB)
    output = tmp_path / "wrong.bin"
    code, err = finish(
        dfget(f"{origin.base_url}/files/file.bin", output, "--digest", "sha256:" + "0" * 64)
    )
    assert code == 3, err
    assert "sha256" in err
    assert not output.exists()
    assert not output.with_name(output.name + ".dfpart").exists()


def test_matching_digest_succeeds(tmp_path: Path, served: tuple[OriginServer, Path]) -> None:
    origin, root = served
    source = random_file(root / "file.bin", 2 * MIB)
    output = tmp_path / "right.bin"
    digest = "sha256:" + sha256(source)
    code, err = finish(dfget(f"{origin.base_url}/files/file.bin", output, "--digest", digest))
    assert code == 0, err
    assert sha256(output) == sha256(source)


@pytest.mark.parametrize("status", [404, 500])
def test_origin_error_exits_4_with_its_status(
    tmp_path: Path, served: tuple[OriginServer, Path], status: int
) -> None:
    origin, _ = served
    output = tmp_path / "missing.bin"
    code, err = finish(dfget(f"{origin.base_url}/status/{status}", output))
    assert code == 4, err
    assert str(status) in err
    assert not output.exists()


def test_origin_without_range_support_still_serves_a_swarm(
    tmp_path: Path, served: tuple[OriginServer, Path], tracker: Tracker
) -> None:
    origin, root = served
    source = random_file(root / "plain.bin", 8 * MIB)
    url = f"{origin.base_url}/norange/plain.bin"
    outputs = [tmp_path / f"plain{i}.bin" for i in range(3)]
    processes = [
        dfget(url, out, "--tracker", tracker.base_url, "--seed-time", "10s") for out in outputs
    ]
    for process in processes:
        code, err = finish(process)
        assert code == 0, err[-3000:]
    assert all(sha256(out) == sha256(source) for out in outputs)


def test_unreachable_tracker_falls_back_to_the_origin(
    tmp_path: Path, served: tuple[OriginServer, Path]
) -> None:
    origin, root = served
    source = random_file(root / "file.bin", 4 * MIB)
    output = tmp_path / "fallback.bin"
    dead = f"http://127.0.0.1:{free_port()}"
    code, err = finish(dfget(f"{origin.base_url}/files/file.bin", output, "--tracker", dead))
    assert code == 0, err
    assert sha256(output) == sha256(source)
    assert "tracker unreachable" in err


def test_unreachable_tracker_without_back_to_source_fails_clearly(
    tmp_path: Path, served: tuple[OriginServer, Path]
) -> None:
    origin, root = served
    random_file(root / "file.bin", 1 * MIB)
    output = tmp_path / "never.bin"
    dead = f"http://127.0.0.1:{free_port()}"
    code, err = finish(
        dfget(
            f"{origin.base_url}/files/file.bin",
            output,
            "--tracker",
            dead,
            "--no-back-to-source",
        )
    )
    assert code == 6, err
    assert "back-to-source is disabled" in err
    assert not output.exists()
    assert origin.stats()["bytes_sent"] == 0


def test_corrupt_peer_is_detected_banned_and_reported(
    tmp_path: Path, served: tuple[OriginServer, Path], tracker: Tracker
) -> None:
    origin, root = served
    source = random_file(root / "file.bin", 8 * MIB)
    url = f"{origin.base_url}/files/file.bin"
    # An honest peer fetches the file (making the full manifest) and keeps seeding.
    honest = dfget(
        url, tmp_path / "honest.bin", "--tracker", tracker.base_url, "--seed-time", "60s"
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (tmp_path / "honest.bin").exists():
        time.sleep(0.2)
    assert (tmp_path / "honest.bin").exists(), "the honest peer did not finish"
    bad = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.helpers.bad_peer",
            "--tracker",
            tracker.base_url,
            "--url",
            url,
            "--source",
            str(source),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert bad.stdout is not None
        assert bad.stdout.readline().startswith("listening"), "bad peer did not start"
        output = tmp_path / "victim.bin"
        code, err = finish(
            dfget(url, output, "--tracker", tracker.base_url, "--seed-time", "0s", "-v")
        )
        assert code == 0, err[-3000:]
        assert sha256(output) == sha256(source)
        assert "banning peer" in err
        metrics = tracker.get("/metrics").decode()
        line = next(x for x in metrics.splitlines() if x.startswith("dragonfly_tracker_bad_peer"))
        assert float(line.split()[-1]) >= 1, metrics
    finally:
        bad.terminate()
        bad.communicate(timeout=30)
        honest.terminate()
        honest.communicate(timeout=30)
