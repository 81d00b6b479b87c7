"""Stock BitTorrent clients use dftracker: two aria2c processes share a file through it."""

from __future__ import annotations

import hashlib
import os
import subprocess
import time
from pathlib import Path
from urllib.parse import quote_from_bytes

import bencode
import bencodepy
import pytest

from tests.conftest import require_program
from tests.integration.trackers import Tracker, free_port, tracker_process

pytestmark = pytest.mark.integration

PIECE_BYTES = 256 * 1024


def make_torrent(data_file: Path, announce_url: str, torrent: Path) -> bytes:
    """A single-file .torrent (BEP 3); returns its info_hash."""
    data = data_file.read_bytes()
    pieces = b"".join(
        hashlib.sha1(data[i : i + PIECE_BYTES]).digest() for i in range(0, len(data), PIECE_BYTES)
    )
    info = {
        "name": data_file.name,
        "length": len(data),
        "piece length": PIECE_BYTES,
        "pieces": pieces,
    }
    torrent.write_bytes(bencode.encode({"announce": announce_url, "info": info}))
    return hashlib.sha1(bencode.encode(info)).digest()


def aria2c(aria2: str, torrent: Path, directory: Path, *extra: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            aria2,
            "--enable-dht=false",
            "--enable-dht6=false",
            "--bt-enable-lpd=false",
            "--enable-peer-exchange=false",
            "--disable-ipv6=true",
            f"--listen-port={free_port()}",
            f"--dir={directory}",
            "--file-allocation=none",
            "--summary-interval=0",
            "--console-log-level=warn",
            *extra,
            str(torrent),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def scrape(tracker: Tracker, info_hash: bytes) -> dict[str, int]:
    target = "/scrape?info_hash=" + quote_from_bytes(info_hash, safe="")
    files = bencodepy.Bencode().decode(tracker.get(target))[b"files"]  # binary keys: no encoding
    return {key.decode(): value for key, value in files.get(info_hash, {}).items()}


def wait_for(predicate: object, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def test_two_aria2c_share_a_file_through_the_tracker(tmp_path: Path) -> None:
    aria2 = require_program("aria2c")
    seed_dir, leech_dir = tmp_path / "seed", tmp_path / "leech"
    seed_dir.mkdir()
    leech_dir.mkdir()
    original = seed_dir / "payload.bin"
    original.write_bytes(os.urandom(3 * 1024 * 1024 + 12345))
    with tracker_process("--interval", "2s") as tracker:
        torrent = tmp_path / "payload.torrent"
        info_hash = make_torrent(original, tracker.announce_url, torrent)
        seeder = aria2c(aria2, torrent, seed_dir, "--seed-ratio=0.0", "--check-integrity=true")
        try:
            # The seeder must be known to the tracker before the leecher asks for peers.
            wait_for(lambda: scrape(tracker, info_hash).get("complete") == 1, 60, "seeder")
            leecher = aria2c(aria2, torrent, leech_dir, "--seed-time=0")
            try:
                output, _ = leecher.communicate(timeout=120)
            finally:
                if leecher.poll() is None:
                    leecher.kill()
            assert leecher.returncode == 0, output.decode(errors="replace")
            assert (leech_dir / "payload.bin").read_bytes() == original.read_bytes()
            # aria2c with --seed-time=0 goes straight to `stopped` with left=0: a completion.
            wait_for(lambda: scrape(tracker, info_hash).get("downloaded") == 1, 30, "completion")
            counts = scrape(tracker, info_hash)
            assert (counts["complete"], counts["incomplete"]) == (1, 0)
        finally:
            seeder.terminate()
            seeder.communicate(timeout=30)
