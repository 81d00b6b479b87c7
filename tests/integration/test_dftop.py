"""``dftop --once`` as a process against a live ``dftracker`` fed by real HTTP announces."""

from __future__ import annotations

import asyncio
import fcntl
import os
import pty
import select
import signal
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import pytest

from dfget.coordinators.http import HttpTracker
from peerwire.coordination import Progress, TaskManifestDoc
from peerwire.ids import PeerId, TaskId
from tests.integration.trackers import free_port, tracker_process

pytestmark = pytest.mark.integration

PIECE_BYTES = 16 * 1024
PIECES = 16
TASK = TaskId(bytes.fromhex("d7" * 20))
OTHER_TASK = TaskId(bytes.fromhex("a1" * 20))


def have_bitfield(held: range) -> bytes:
    """BEP 3 bitfield of ``PIECES`` pieces with the pieces in ``held`` set."""
    value = 0
    for piece_index in held:
        value |= 1 << (15 - piece_index)
    return value.to_bytes(2, "big")


async def feed(base_url: str, peers: list[tuple[PeerId, int, range, str]]) -> None:
    """A manifest for TASK, one announce per peer (two for the first, so rates exist)."""
    tracker = HttpTracker([base_url])
    try:
        await tracker.put_manifest(
            TASK,
            TaskManifestDoc(
                "http://origin.test/images/layer-7.tar",
                PIECE_BYTES * PIECES,
                PIECE_BYTES,
                (None,) * PIECES,
            ),
        )
        for peer_id, port, held, zone in peers:
            left = PIECE_BYTES * (PIECES - len(held))
            progress = Progress(peer_id, port, left_bytes=left, have=have_bitfield(held), zone=zone)
            await tracker.announce(TASK, progress, "started")
        stock = Progress(PeerId(b"-qB4620-" + b"o" * 12), 6881, left_bytes=0)
        await tracker.announce(OTHER_TASK, stock)
    finally:
        await tracker.close()


def run_dftop(*args: str, columns: int = 140) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": str(columns), "LINES": "50"}
    env.pop("DFTOP_TRACKER", None)
    return subprocess.run(
        [sys.executable, "-m", "tracker.top", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )


def test_dftop_once_shows_the_peers_of_a_live_tracker() -> None:
    peers = [
        (PeerId(b"-DF0100-" + bytes([0xA0 + n]) * 12), 41000 + n, range(4 * n), f"rack-{n}")
        for n in range(1, 5)
    ]
    with tracker_process() as tracker:
        asyncio.run(feed(tracker.base_url, peers))
        done = run_dftop("--tracker", tracker.announce_url, "--once")
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    out = done.stdout
    assert "layer-7.tar" in out
    assert TASK.hex()[:12] in out
    assert "2 tasks" in out and "5 peers" in out
    assert "4 peers, 1 seed" in out  # the selected (hottest) task: TASK
    for peer_id, port, held, zone in peers:
        line = next(line for line in out.splitlines() if f"127.0.0.1:{port}" in line)
        assert f"-DF0100-…{peer_id.raw[-3:].hex()}" in line
        assert zone in line
        assert f"{len(held) * 100 // PIECES}%" in line
    full = next(line for line in out.splitlines() if "127.0.0.1:41004" in line)
    assert "seeding" in full
    assert "█" * 10 in full


@dataclass
class Terminal:
    """dftop running on a pseudo-terminal; ``read`` collects what it drew."""

    process: subprocess.Popen[bytes]
    master: int
    slave: int
    output: bytearray = field(default_factory=bytearray)

    def read_until(self, needle: bytes, timeout_s: float = 20.0) -> None:
        deadline = time.monotonic() + timeout_s
        while needle not in self.output and time.monotonic() < deadline:
            ready, _, _ = select.select([self.master], [], [], 0.05)
            if ready:
                try:
                    self.output += os.read(self.master, 65536)
                except OSError:  # the child closed the terminal
                    break
        assert needle in self.output, self.output[-2000:].decode(errors="replace")


@contextmanager
def dftop_on_a_terminal(tracker_url: str) -> Iterator[Terminal]:
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 120, 0, 0))
    env = {**os.environ, "TERM": "xterm-256color"}
    for name in ("COLUMNS", "LINES", "DFTOP_TRACKER"):
        env.pop(name, None)
    process = subprocess.Popen(
        [sys.executable, "-m", "tracker.top", "--tracker", tracker_url, "--refresh", "0.2s"],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env=env,
        start_new_session=True,
    )
    try:
        yield Terminal(process, master, slave)
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=10)
        os.close(master)
        os.close(slave)


def test_live_view_follows_keys_and_q_restores_the_terminal() -> None:
    peers = [(PeerId(b"-DF0100-" + bytes([0xB0]) * 12), 42001, range(8), "rack-1")]
    with tracker_process() as tracker:
        asyncio.run(feed(tracker.base_url, peers))
        with dftop_on_a_terminal(tracker.base_url) as term:
            before = termios.tcgetattr(term.slave)
            term.read_until(b"42001")  # the hottest task is selected: its peer is listed
            os.write(term.master, b"j")
            term.read_until(b"127.0.0.1:6881")  # the other task's peer
            os.write(term.master, b"q")
            assert term.process.wait(timeout=10) == 0
            term.read_until(b"\x1b[?1049l")  # left the alternate screen
            assert termios.tcgetattr(term.slave) == before
            assert b"Traceback" not in term.output


def test_live_view_survives_a_dead_tracker_and_ctrl_c_restores_the_terminal() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with dftop_on_a_terminal(url) as term:
        before = termios.tcgetattr(term.slave)
        term.read_until(b"unreachable (ConnectionRefused), retrying")
        term.output.clear()
        term.read_until(b"retrying")  # still refreshing
        term.process.send_signal(signal.SIGINT)
        assert term.process.wait(timeout=10) == 130
        term.read_until(b"\x1b[?1049l")
        assert termios.tcgetattr(term.slave) == before
        assert b"Traceback" not in term.output


def test_dftop_once_against_no_tracker_fails_with_a_clear_message() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    done = run_dftop("--tracker", url, "--once")
    assert done.returncode == 1
    assert f"tracker {url} unreachable (ConnectionRefused)" in done.stderr
    assert "Traceback" not in done.stderr
