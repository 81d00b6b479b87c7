"""CPU used by ``dftop`` watching a 500-peer swarm at 2 refreshes per second (issue #6).

A ``dftracker serve`` process is fed by this script over HTTP
(``dfget.coordinators.http.HttpTracker``, real announces with ``df_have``, zones and growing
byte counters, plus a manifest ``PUT``): one task with 500 peers and a few small tasks; every
peer re-announces every few seconds with more pieces, so the numbers dftop shows keep changing.
``dftop --refresh 0.5s`` runs as a process on a pseudo-terminal (120x40, TERM=xterm-256color)
whose output this script drains; after a warm-up (imports, first frames), psutil reads the dftop
process's user+system CPU time over the measured wall time. The feeding and the tracker are not
counted: only dftop.

    .venv/bin/python bench/dftop_cpu.py                       # 500 peers, 0.5 s, 20 s
    .venv/bin/python bench/dftop_cpu.py --peers 2000 --duration 10s

Target: under 10% of one core. Writes bench/results/dftop_cpu.json and prints it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import json
import os
import platform
import pty
import random
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path
from typing import Any

import psutil

from dfget.coordinators.http import HttpTracker
from peerwire.coordination import Progress, TaskManifestDoc
from peerwire.ids import PeerId, TaskId
from peerwire.units import parse_duration

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
PIECE_BYTES = 4 * 1024 * 1024
PIECES = 256  # a 1 GiB file
OTHER_TASKS = 4
OTHER_TASK_PEERS = 5
REANNOUNCE_S = 3.0
WARMUP_S = 3.0
ROWS, COLUMNS = 40, 120
TARGET_PERCENT = 10.0
#: Rich's Live in screen mode moves the cursor home before every frame.
FRAME_MARK = b"\x1b[H"
ZONES = ("rack-a", "rack-b", "rack-c", "rack-d")


def start_tracker() -> tuple[subprocess.Popen[str], str]:
    process = subprocess.Popen(
        [PYTHON, "-m", "tracker.cli", "serve", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        cwd=ROOT,
    )
    assert process.stdout is not None
    line = process.stdout.readline().strip()
    if not line.startswith("listening "):
        process.kill()
        raise SystemExit(f"tracker did not start: {line!r}")
    port = int(line.rsplit(":", 1)[1].split("/", 1)[0])
    return process, f"http://127.0.0.1:{port}"


class Peer:
    """One simulated peer: its pieces grow at its own pace; some come from the origin."""

    def __init__(self, task: TaskId, n: int, rng: random.Random) -> None:
        self.task = task
        self.peer_id = PeerId(b"-DF0100-" + n.to_bytes(4, "big") + rng.randbytes(8))
        self.port = 20000 + n
        self.zone = ZONES[n % len(ZONES)]
        self.held = {piece for piece in range(PIECES) if rng.random() < rng.random()}
        self.pace = rng.randint(0, 12)  # pieces gained per announce
        self.downloaded = len(self.held) * PIECE_BYTES
        self.origin = self.downloaded // 10
        self.rng = rng

    def progress(self) -> Progress:
        bits = 0
        for piece in self.held:
            bits |= 1 << (PIECES - 1 - piece)
        return Progress(
            self.peer_id,
            self.port,
            uploaded_bytes=self.downloaded // 2,
            downloaded_bytes=self.downloaded,
            left_bytes=(PIECES - len(self.held)) * PIECE_BYTES,
            have=bits.to_bytes(PIECES // 8, "big"),
            zone=self.zone,
            origin_bytes=self.origin,
            numwant=10,
        )

    def grow(self) -> None:
        missing = [p for p in range(PIECES) if p not in self.held]
        gained = self.rng.sample(missing, min(len(missing), self.pace))
        self.held.update(gained)
        self.downloaded += len(gained) * PIECE_BYTES
        self.origin += len(gained) * PIECE_BYTES // 20


async def feed(base_url: str, peers: int, stop: asyncio.Event) -> int:
    """Announce every peer, then again every REANNOUNCE_S until ``stop``; announces made."""
    rng = random.Random(6)
    tracker = HttpTracker([base_url])
    big = TaskId(bytes.fromhex("b1" * 20))
    tasks = [(big, peers, "model-weights.safetensors")]
    tasks += [
        (TaskId(bytes([0xC0 + k]) * 20), OTHER_TASK_PEERS, f"layer-{k}.tar.gz")
        for k in range(OTHER_TASKS)
    ]
    swarm: list[Peer] = []
    limit = asyncio.Semaphore(32)

    async def announce(peer: Peer) -> None:
        async with limit:
            await tracker.announce(peer.task, peer.progress())

    try:
        for task, count, name in tasks:
            manifest = TaskManifestDoc(
                f"http://origin.test/{name}", PIECES * PIECE_BYTES, PIECE_BYTES, (None,) * PIECES
            )
            await tracker.put_manifest(task, manifest)
            swarm += [Peer(task, len(swarm) + n, rng) for n in range(count)]
        announces = 0
        while not stop.is_set():
            started = time.monotonic()
            await asyncio.gather(*(announce(peer) for peer in swarm))
            announces += len(swarm)
            for peer in swarm:
                peer.grow()
            left = REANNOUNCE_S - (time.monotonic() - started)
            if left > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), left)
        return announces
    finally:
        await tracker.close()


async def measure(base_url: str, args: argparse.Namespace) -> dict[str, Any]:
    stop = asyncio.Event()
    feeding = asyncio.create_task(feed(base_url, args.peers, stop))
    await asyncio.sleep(1.0)  # the first round of announces is in
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", ROWS, COLUMNS, 0, 0))
    env = {**os.environ, "TERM": "xterm-256color"}
    for name in ("COLUMNS", "LINES", "DFTOP_TRACKER"):
        env.pop(name, None)
    dftop = subprocess.Popen(
        [PYTHON, "-m", "tracker.top", "--tracker", base_url, "--refresh", f"{args.refresh_s}s"],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env=env,
        cwd=ROOT,
        start_new_session=True,
    )
    output = bytearray()
    loop = asyncio.get_running_loop()

    def drain() -> None:  # the terminal must be read, or dftop would block on a full pty
        try:
            output.extend(os.read(master, 1 << 16))
        except OSError:
            loop.remove_reader(master)

    loop.add_reader(master, drain)
    try:
        process = psutil.Process(dftop.pid)
        await asyncio.sleep(WARMUP_S)
        start_cpu, start_s, start_bytes = process.cpu_times(), time.monotonic(), len(output)
        start_frames = output.count(FRAME_MARK)
        await asyncio.sleep(args.duration_s)
        end_cpu, end_s = process.cpu_times(), time.monotonic()
        frames = output.count(FRAME_MARK) - start_frames
        alive = dftop.poll() is None
        startup_cpu_s = start_cpu.user + start_cpu.system
    finally:
        loop.remove_reader(master)
        os.write(master, b"q")
        try:
            exit_code = dftop.wait(timeout=10)
        except subprocess.TimeoutExpired:
            dftop.kill()
            exit_code = dftop.wait()
        os.close(master)
        os.close(slave)
        stop.set()
        announces = await feeding
    cpu_s = (end_cpu.user - start_cpu.user) + (end_cpu.system - start_cpu.system)
    wall_s = end_s - start_s
    seen = output.decode(errors="replace")
    return {
        "cpu_percent_of_one_core": round(100 * cpu_s / wall_s, 2),
        "cpu_s": round(cpu_s, 3),
        "wall_s": round(wall_s, 2),
        "startup_cpu_s": round(startup_cpu_s, 3),
        "frames": frames,
        "terminal_bytes_per_s": round((len(output) - start_bytes) / wall_s),
        "announces": announces,
        "dftop_alive_until_the_end": alive,
        "dftop_exit_code": exit_code,
        "showed_the_swarm": f"{args.peers} peers" in seen and "origin traffic saved" in seen,
        "traceback": "Traceback" in seen,
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--peers", type=int, default=500, help="peers of the big task")
    parser.add_argument("--refresh", default="0.5s", help="dftop --refresh (default 0.5s)")
    parser.add_argument("--duration", default="20s", help="measured time (default 20s)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "dftop_cpu.json")
    args = parser.parse_args()
    args.refresh_s = parse_duration(args.refresh)
    args.duration_s = parse_duration(args.duration)
    tracker, base_url = start_tracker()
    try:
        result = asyncio.run(measure(base_url, args))
    finally:
        tracker.terminate()
        tracker.wait(timeout=10)
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT
    ).stdout.strip()
    document = {
        "benchmark": "dftop_cpu",
        "commit": commit,
        "machine": {
            "cpus": psutil.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "peers": args.peers,
        "other_tasks": OTHER_TASKS,
        "refresh_s": args.refresh_s,
        "terminal": f"{COLUMNS}x{ROWS}",
        "target_percent": TARGET_PERCENT,
        **result,
        "ok": result["cpu_percent_of_one_core"] < TARGET_PERCENT
        and result["showed_the_swarm"]
        and not result["traceback"],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(document, indent=2) + "\n")
    print(json.dumps(document, indent=2))
    return 0 if document["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
