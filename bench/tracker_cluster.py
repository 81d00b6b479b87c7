"""10,000 simulated peers over 1,000 tasks announcing at their interval: one tracker with the
memory store, one with Redis, two sharing Redis (issue 23).

One process simulates every peer, over a few hundred keep-alive connections (uvloop, no HTTP
library): each peer announces every ``--interval`` seconds at its own phase, with our ``df_*``
parameters (a bitfield that grows, ``df_source=1`` while incomplete: origin assignments are
made), ``started`` first, ``completed`` when its bitfield is full, then as a seed. Every task
has a manifest (``PUT`` before the run). After one interval of warm-up the run is measured for
``--duration`` seconds. Per tracker: announces/s, p50/p99 latency (request written to answer
read), CPU-seconds per 1,000 announces (the tracker process, psutil), Redis round trips and
commands per announce (the tracker's own counters; ``INFO commandstats`` for the scripts),
Redis CPU per 1,000 announces and its memory per peer (``INFO``). Any failure reason in an
answer is counted and fails the run.

    .venv/bin/python bench/tracker_cluster.py                 # the three setups, 30 s each
    .venv/bin/python bench/tracker_cluster.py --peers 1000 --tasks 100 --duration 5s --setups memory
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote_from_bytes

import psutil
import uvloop

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
PIECES = 128
PIECE_LENGTH = 16384


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start_redis() -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    server = shutil.which("redis-server") or "/usr/bin/redis-server"
    process = subprocess.Popen(
        [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", tempfile.mkdtemp(prefix="dfbench-")],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return process, port
        except OSError:
            time.sleep(0.02)
    raise SystemExit("redis-server did not start")


def redis_info(port: int) -> dict[str, str]:
    out = subprocess.run(
        ["redis-cli", "-p", str(port), "INFO", "all"], capture_output=True, text=True, check=True
    ).stdout
    info: dict[str, str] = {}
    for line in out.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            info[key] = value.strip()
    return info


def start_tracker(redis_port: int | None, interval_s: float) -> tuple[subprocess.Popen[str], int]:
    command = [PYTHON, "-m", "tracker.cli", "serve", "--port", "0", "--interval", f"{interval_s}s"]
    if redis_port is not None:
        command += ["--redis", f"redis://127.0.0.1:{redis_port}/0"]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DFTRACKER_", "DRAGONFLY_"))}
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env)
    assert process.stdout is not None
    line = process.stdout.readline().strip()
    if not line.startswith("listening "):
        raise SystemExit(f"tracker did not start: {line!r}")
    return process, int(line.rsplit(":", 1)[1].split("/", 1)[0])


def metric(port: int, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    found = re.search(rf"^{name} (\S+)$", text, re.M)
    return float(found.group(1)) if found else 0.0


def task_id(t: int) -> bytes:
    return b"\xdf" + bytes(15) + t.to_bytes(4, "big")


@dataclass
class Peer:
    number: int
    task: bytes
    tracker: int
    have: int = 0  # pieces held, lowest first
    announced: int = 0


@dataclass
class Stats:
    latencies: list[float] = field(default_factory=list)
    announces: int = 0
    failures: int = 0
    failure_text: str = ""


class Connection(asyncio.Protocol):
    """One keep-alive connection: requests one at a time, latency from write to answer."""

    def __init__(self, stats: Stats) -> None:
        self.stats = stats
        self.queue: list[bytes] = []
        self.buffer = b""
        self.sent_at = 0.0
        self.busy = False
        self.transport: asyncio.Transport | None = None
        self.measuring = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def send(self, request: bytes) -> None:
        self.queue.append(request)
        if not self.busy:
            self._next()

    def _next(self) -> None:
        if not self.queue or self.transport is None:
            self.busy = False
            return
        self.busy = True
        self.sent_at = time.perf_counter()
        self.transport.write(self.queue.pop(0))

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        head_end = self.buffer.find(b"\r\n\r\n")
        if head_end < 0:
            return
        length = int(re.search(rb"Content-Length: (\d+)", self.buffer[:head_end]).group(1))  # type: ignore[union-attr]
        end = head_end + 4 + length
        if len(self.buffer) < end:
            return
        body = self.buffer[head_end + 4 : end]
        self.buffer = self.buffer[end:]
        if self.measuring:
            self.stats.latencies.append(time.perf_counter() - self.sent_at)
            self.stats.announces += 1
            if b"failure reason" in body:
                self.stats.failures += 1
                self.stats.failure_text = body[:200].decode(errors="replace")
        self._next()


def announce_request(peer: Peer, port: int) -> bytes:
    complete = peer.have >= PIECES
    event = ""
    if peer.announced == 0:
        event = "&event=started"
    elif complete and peer.have == PIECES and peer.announced > 0:
        event = "&event=completed"
    bits = ((1 << peer.have) - 1) << (PIECES - peer.have)
    have = quote_from_bytes(bits.to_bytes(PIECES // 8, "big"), safe="")
    left = (PIECES - min(peer.have, PIECES)) * PIECE_LENGTH
    downloaded = min(peer.have, PIECES) * PIECE_LENGTH
    query = (
        f"info_hash={quote_from_bytes(peer.task, safe='')}"
        f"&peer_id=-BN0001-{peer.number:012d}&port={10000 + peer.number % 50000}"
        f"&uploaded={downloaded}&downloaded={downloaded}&left={left}&compact=1&numwant=50"
        f"&df_have={have}&df_load={peer.number % 4}&df_source={0 if complete else 1}"
        f"&df_origin=0{event}"
    )
    return f"GET /announce?{query} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode()


async def put_manifests(port: int, tasks: int) -> None:
    doc = json.dumps(
        {
            "url": "http://origin/x",
            "total_length": PIECES * PIECE_LENGTH,
            "piece_length": PIECE_LENGTH,
        }
    ).encode()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    for t in range(tasks):
        head = f"PUT /tasks/{task_id(t).hex()} HTTP/1.1\r\nHost: x\r\n"
        writer.write(f"{head}Content-Length: {len(doc)}\r\n\r\n".encode() + doc)
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(re.search(rb"Content-Length: (\d+)", head).group(1))  # type: ignore[union-attr]
        await reader.readexactly(length)
    writer.close()


async def drive(
    args: argparse.Namespace, ports: list[int], procs: list[psutil.Process], redis_port: int | None
) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    await put_manifests(ports[0], args.tasks)
    stats = [Stats() for _ in ports]
    connections: list[list[Connection]] = []
    per_tracker = max(1, args.connections // len(ports))
    for index, port in enumerate(ports):
        row = []
        for _ in range(per_tracker):
            _, protocol = await loop.create_connection(
                lambda i=index: Connection(stats[i]), "127.0.0.1", port
            )
            row.append(protocol)
        connections.append(row)
    peers = [Peer(n, task_id(n % args.tasks), n % len(ports)) for n in range(args.peers)]
    interval = args.interval
    start = loop.time()
    end_warmup = start + interval
    end = end_warmup + args.duration
    measured = False
    before: dict[str, Any] = {}
    slot = 0.01
    step = 0
    while True:
        now = loop.time()
        if not measured and now >= end_warmup:
            measured = True
            for row in connections:
                for connection in row:
                    connection.measuring = True
            before = snapshot(ports, procs, redis_port)
        if now >= end:
            break
        # every peer announces once per interval at its own phase
        due_from = int((step * slot) / interval * args.peers)
        step += 1
        due_to = int((step * slot) / interval * args.peers)
        for k in range(due_from, due_to):
            peer = peers[k % args.peers]
            port_index = peer.tracker
            connection = connections[port_index][peer.number % per_tracker]
            connection.send(announce_request(peer, ports[port_index]))
            peer.announced += 1
            if peer.have < PIECES:
                peer.have = min(PIECES, peer.have + 8 + peer.number % 8)
            elif peer.have == PIECES:
                peer.have = PIECES + 1  # completed said once; a seed from now on
        await asyncio.sleep(max(0.0, start + step * slot - loop.time()))
    for row in connections:
        for connection in row:
            connection.measuring = False
    after = snapshot(ports, procs, redis_port)
    return {"stats": stats, "before": before, "after": after, "seconds": args.duration}


def snapshot(
    ports: list[int], procs: list[psutil.Process], redis_port: int | None
) -> dict[str, Any]:
    shot: dict[str, Any] = {"cpu": [sum(p.cpu_times()[:2]) for p in procs]}
    shot["round_trips"] = [metric(p, "dragonfly_tracker_redis_round_trips_total") for p in ports]
    shot["commands"] = [metric(p, "dragonfly_tracker_redis_commands_total") for p in ports]
    if redis_port is not None:
        info = redis_info(redis_port)
        shot["redis_cpu"] = float(info["used_cpu_user"]) + float(info["used_cpu_sys"])
        shot["evalsha"] = int(
            re.search(r"calls=(\d+)", info.get("cmdstat_evalsha", "calls=0")).group(1)
        )  # type: ignore[union-attr]
        shot["memory"] = int(info["used_memory"])
    return shot


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


def run_setup(name: str, args: argparse.Namespace) -> dict[str, Any]:
    redis_proc = None
    redis_port = None
    trackers = 2 if name == "two-redis" else 1
    if name != "memory":
        redis_proc, redis_port = start_redis()
        empty_memory = int(redis_info(redis_port)["used_memory"])
    started = [start_tracker(redis_port, args.interval) for _ in range(trackers)]
    try:
        time.sleep(1.5)
        ports = [port for _, port in started]
        procs = [psutil.Process(p.pid) for p, _ in started]
        load = os.getloadavg()
        result = uvloop.run(drive(args, ports, procs, redis_port))
        before, after = result["before"], result["after"]
        out: dict[str, Any] = {"setup": name, "load_average_before": load, "trackers": []}
        total = sum(s.announces for s in result["stats"])
        for i, stats in enumerate(result["stats"]):
            cpu = after["cpu"][i] - before["cpu"][i]
            entry = {
                "announces_per_s": stats.announces / result["seconds"],
                "p50_ms": percentile(stats.latencies, 0.50) * 1000,
                "p99_ms": percentile(stats.latencies, 0.99) * 1000,
                "max_ms": max(stats.latencies, default=0.0) * 1000,
                "cpu_s_per_1000": cpu / max(1, stats.announces) * 1000,
                "failures": stats.failures,
                "failure_example": stats.failure_text,
            }
            if redis_port is not None:
                entry["redis_round_trips_per_announce"] = (
                    after["round_trips"][i] - before["round_trips"][i]
                ) / max(1, stats.announces)
                entry["redis_commands_per_announce"] = (
                    after["commands"][i] - before["commands"][i]
                ) / max(1, stats.announces)
            out["trackers"].append(entry)
        if redis_port is not None:
            out["redis_cpu_s_per_1000"] = (
                (after["redis_cpu"] - before["redis_cpu"]) / max(1, total) * 1000
            )
            out["evalsha_per_announce"] = (after["evalsha"] - before["evalsha"]) / max(1, total)
            out["redis_memory_per_peer_bytes"] = (after["memory"] - empty_memory) / args.peers
        return out
    finally:
        for process, _ in started:
            process.terminate()
            process.wait(timeout=10)
        if redis_proc is not None:
            redis_proc.terminate()
            redis_proc.wait(timeout=10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--peers", type=int, default=10_000)
    parser.add_argument("--tasks", type=int, default=1_000)
    parser.add_argument("--connections", type=int, default=200)
    parser.add_argument("--interval", type=float, default=5.0)
    parser.add_argument("--duration", type=lambda v: float(v.rstrip("s")), default=30.0)
    parser.add_argument("--setups", default="memory,redis,two-redis")
    parser.add_argument(
        "--out", type=Path, default=ROOT / "bench" / "results" / "tracker_cluster.json"
    )
    args = parser.parse_args()
    results = []
    for name in args.setups.split(","):
        result = run_setup(name, args)
        results.append(result)
        print(json.dumps(result, indent=1))
        if any(t["failures"] for t in result["trackers"]):
            raise SystemExit(f"{name}: failures in answers")
    document = {
        "peers": args.peers,
        "tasks": args.tasks,
        "interval_s": args.interval,
        "duration_s": args.duration,
        "connections": args.connections,
        "commit": subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT
        ).stdout.strip(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "results": results,
    }
    args.out.write_text(json.dumps(document, indent=1) + "\n")


if __name__ == "__main__":
    main()
