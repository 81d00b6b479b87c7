"""Real peer processes on 127.0.0.1 moving real files over the peer wire."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from peerwire import messages as m
from peerwire.ids import PeerId, TaskId
from peerwire.manifest import Manifest
from tests.integration.peers import (
    fetch,
    fetch_command,
    file_digest,
    random_file,
    seed,
)

pytestmark = pytest.mark.integration

MIB = 1 << 20


def test_two_processes_transfer_256_mib_bit_exact(tmp_path: Path) -> None:
    source = random_file(tmp_path / "source.bin", 256 * MIB)
    manifest = tmp_path / "task.json"
    output = tmp_path / "out" / "copy.bin"
    output.parent.mkdir()
    with seed(source, "--manifest-out", str(manifest)) as s:
        summary = fetch(manifest, output, [s.address])
    assert summary["returncode"] == 0, summary["stderr"]
    assert summary["ok"] is True
    assert summary["pieces_failed"] == 0
    assert summary["downloaded_bytes"] == 256 * MIB
    assert file_digest(output) == file_digest(source)
    assert sorted(p.name for p in output.parent.iterdir()) == ["copy.bin"]  # no debris left


class CorruptingRelay:
    """A TCP relay between a fetcher and a seed that flips one byte of the seed's stream.

    It stands for a link or a peer that damages one block once: the fetcher must reject the
    piece, ask for it again, and still end with the right bytes.
    """

    def __init__(self, upstream: tuple[str, int], flip_offset: int) -> None:
        self.upstream = upstream
        self.flip_offset = flip_offset
        self.flipped = False
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self._sockets: list[socket.socket] = []
        self._threads = [threading.Thread(target=self._accept, daemon=True)]
        self._threads[0].start()

    def _accept(self) -> None:
        try:
            client, _ = self.listener.accept()
        except OSError:
            return
        server = socket.create_connection(self.upstream)
        self._sockets += [client, server]
        for src, dst, corrupt in ((client, server, False), (server, client, True)):
            thread = threading.Thread(target=self._pump, args=(src, dst, corrupt), daemon=True)
            thread.start()
            self._threads.append(thread)

    def _pump(self, src: socket.socket, dst: socket.socket, corrupt: bool) -> None:
        offset = 0
        with contextlib.suppress(OSError):
            while data := src.recv(1 << 16):
                if corrupt and offset <= self.flip_offset < offset + len(data):
                    chunk = bytearray(data)
                    chunk[self.flip_offset - offset] ^= 0xFF
                    data = bytes(chunk)
                    self.flipped = True
                offset += len(data)
                dst.sendall(data)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self.listener.close()
        for sock in self._sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        for thread in self._threads:
            thread.join(timeout=10)
        for sock in self._sockets:
            sock.close()


def test_corrupted_block_is_rejected_refetched_and_file_correct(tmp_path: Path) -> None:
    source = random_file(tmp_path / "source.bin", 32 * MIB)
    manifest_path = tmp_path / "task.json"
    output = tmp_path / "copy.bin"
    with seed(source, "--manifest-out", str(manifest_path), "--piece-length", "1M") as s:
        # The seed's stream: handshake (68), have-all (5), unchoke (5), then piece messages of
        # a 13-byte header and a 256 KiB payload. Flip a byte in the middle of the 4th payload.
        block = 256 * 1024
        offset = 68 + 5 + 5 + 3 * (13 + block) + 13 + block // 2
        relay = CorruptingRelay((s.host, s.port), offset)
        try:
            summary = fetch(
                manifest_path, output, [f"127.0.0.1:{relay.port}"], "--block-size", "256K"
            )
        finally:
            relay.close()
    assert relay.flipped
    assert summary["returncode"] == 0, summary["stderr"]
    assert summary["pieces_failed"] == 1
    assert summary["peers_banned"] == []  # one bad piece is a strike, not yet a ban
    assert file_digest(output) == file_digest(source)


def test_peer_serving_corrupt_data_is_banned_and_honest_peer_finishes(tmp_path: Path) -> None:
    source = random_file(tmp_path / "source.bin", 32 * MIB)
    manifest_path = tmp_path / "task.json"
    damaged = tmp_path / "damaged.bin"
    data = bytearray(source.read_bytes())
    for piece_start in range(0, len(data), MIB):  # one flipped byte in every 1 MiB piece
        data[piece_start + 4096] ^= 0x01
    damaged.write_bytes(data)
    output = tmp_path / "copy.bin"
    args = ("--piece-length", "1M")
    good_seed = seed(source, "--manifest-out", str(manifest_path), "--upload-rate", "8M", *args)
    with good_seed as good, seed(damaged, "--manifest", str(manifest_path)) as bad:
        # The bad seed claims the good manifest but serves the damaged copy.
        summary = fetch(manifest_path, output, [bad.address, good.address])
    assert summary["returncode"] == 0, summary["stderr"]
    assert summary["pieces_failed"] >= 2
    assert len(summary["peers_banned"]) == 1
    assert file_digest(output) == file_digest(source)


def test_interrupted_fetch_resumes_from_verified_pieces(tmp_path: Path) -> None:
    source = random_file(tmp_path / "source.bin", 64 * MIB)
    manifest_path = tmp_path / "task.json"
    output = tmp_path / "copy.bin"
    record = tmp_path / "copy.bin.dfpart.pieces"
    with seed(source, "--manifest-out", str(manifest_path), "--piece-length", "1M") as s:
        first = subprocess.Popen(
            fetch_command(manifest_path, output, [s.address], "--rate", "16M"),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 60
        # Wait for at least 8 pieces in the record (40-byte header, 8 bytes an entry).
        while not (record.exists() and record.stat().st_size >= 40 + 8 * 8):
            assert first.poll() is None, "the first fetch ended before it was interrupted"
            assert time.monotonic() < deadline, "no progress recorded"
            time.sleep(0.05)
        first.send_signal(signal.SIGKILL)
        first.wait()
        assert not output.exists()
        second = fetch(manifest_path, output, [s.address])
    assert second["returncode"] == 0, second["stderr"]
    assert second["pieces_at_start"] >= 8
    assert second["downloaded_bytes"] <= 64 * MIB - second["pieces_at_start"] * MIB
    assert file_digest(output) == file_digest(source)
    assert not record.exists()


def test_garbage_and_wrong_task_do_not_hurt_a_seed(tmp_path: Path) -> None:
    source = random_file(tmp_path / "source.bin", 8 * MIB)
    manifest_path = tmp_path / "task.json"
    with seed(source, "--manifest-out", str(manifest_path)) as s:
        manifest = Manifest.from_json(manifest_path.read_bytes())
        hostile = [
            os.urandom(4096),  # not a handshake at all
            m.encode_handshake(
                m.Handshake(bytes(8), TaskId(os.urandom(20)), PeerId.generate())
            ),  # a task it does not serve
            m.encode_handshake(m.Handshake(bytes(8), manifest.task_id, PeerId.generate()))
            + b"\xff\xff\xff\xff\x07",  # a huge length after a valid handshake
        ]
        for payload in hostile:
            with socket.create_connection((s.host, s.port), timeout=10) as sock:
                sock.sendall(payload)
                sock.settimeout(10)
                received = b""
                while chunk := sock.recv(65536):  # the seed must close the connection
                    received += chunk
        output = tmp_path / "copy.bin"
        summary = fetch(manifest_path, output, [s.address])
        assert s.process.poll() is None
    assert summary["returncode"] == 0, summary["stderr"]
    assert file_digest(output) == file_digest(source)


def test_fetch_from_nobody_fails_cleanly_without_output(tmp_path: Path) -> None:
    source = random_file(tmp_path / "source.bin", 1 * MIB)
    manifest_path = tmp_path / "task.json"
    with seed(source, "--manifest-out", str(manifest_path)):
        pass
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    output = tmp_path / "copy.bin"
    summary = fetch(manifest_path, output, [f"127.0.0.1:{port}"], "--timeout", "2")
    assert summary["returncode"] == 1
    assert summary["ok"] is False
    assert not output.exists()
