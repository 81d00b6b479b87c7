"""Resident memory of ``dftracker serve`` holding 100,000 peers across 10,000 tasks.

A fresh tracker process per scenario; a client announces every peer once (HTTP/1.1 keep-alive,
pipelined in batches over a few connections), checks every answer is a success, then reads the
tracker's RSS (psutil) and its own ``/metrics`` peer and task gauges.

* ``bittorrent``: peers as stock clients announce them (BEP 3 fields only).
* ``dragonfly``: our peers: each task has a manifest (64 pieces, every digest known, PUT first),
  every announce carries ``df_have``, ``df_zone``, ``df_load``, ``df_source``, ``df_origin``.

    .venv/bin/python bench/tracker_memory.py          # both scenarios, 100k peers / 10k tasks
    .venv/bin/python bench/tracker_memory.py --peers 20000 --tasks 2000

Target (issue #3): at most 300 MB RSS with 100,000 peers across 10,000 tasks.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import quote_from_bytes

import psutil

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
PIECES = 64
PIECE_BYTES = 1 << 20


def task_id(n: int) -> bytes:
    return b"\xdf" + n.to_bytes(19, "big")


def announce(n: int, tasks: int, dragonfly: bool) -> bytes:
    peer_id = b"-BM0001-" + n.to_bytes(12, "big")
    query = (
        f"info_hash={quote_from_bytes(task_id(n % tasks), safe='')}"
        f"&peer_id={quote_from_bytes(peer_id, safe='')}&port={10000 + n % 50000}"
        f"&uploaded={n}&downloaded={n * 7}&left={(n % 5) * PIECE_BYTES}&compact=1&numwant=50"
        f"&event=started&key={n:08X}"
    )
    if dragonfly:
        have = bytearray(PIECES // 8)
        for piece in range(PIECES - (n % 5)):
            have[piece // 8] |= 0x80 >> (piece % 8)
        query += (
            f"&df_have={quote_from_bytes(bytes(have), safe='')}&df_zone=zone-{n % 8}"
            f"&df_load={n % 6}&df_source=1&df_origin={n % 1000}"
        )
    return f"GET /announce?{query} HTTP/1.1\r\nHost: bench\r\n\r\n".encode()


def manifest_put(n: int) -> bytes:
    digests = {str(i): os.urandom(32).hex() for i in range(PIECES)}
    body = json.dumps(
        {
            "url": f"http://origin.example/file-{n}",
            "total_length": PIECES * PIECE_BYTES,
            "piece_length": PIECE_BYTES,
            "piece_sha256": digests,
        }
    ).encode()
    head = (
        f"PUT /tasks/{task_id(n).hex()} HTTP/1.1\r\nHost: bench\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def read_answer(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = int(re.search(rb"Content-Length: (\d+)", head).group(1))  # type: ignore[union-attr]
    return status, await reader.readexactly(length)


async def drive(port: int, requests: list[bytes], connections: int, batch: int) -> int:
    """Send every request; return how many were refused (non-200 or bencoded failure)."""
    refused = 0

    async def worker(chunk: list[bytes]) -> None:
        nonlocal refused
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for start in range(0, len(chunk), batch):
            group = chunk[start : start + batch]
            writer.write(b"".join(group))
            for _ in group:
                status, body = await read_answer(reader)
                if status != 200 or body.startswith(b"d14:failure reason"):
                    refused += 1
        writer.close()

    size = (len(requests) + connections - 1) // connections
    await asyncio.gather(*(worker(requests[i : i + size]) for i in range(0, len(requests), size)))
    return refused


def gauge(text: str, name: str) -> float:
    match = re.search(rf"^{name} (\S+)$", text, re.M)
    return float(match.group(1)) if match else float("nan")


def scenario(name: str, peers: int, tasks: int) -> dict[str, Any]:
    tracker = subprocess.Popen(
        [PYTHON, "-m", "tracker.cli", "serve", "--port", "0", "--interval", "10m"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert tracker.stdout is not None
        line = tracker.stdout.readline().strip()
        port = int(line.rsplit(":", 1)[1].split("/", 1)[0])
        process = psutil.Process(tracker.pid)
        idle_rss = process.memory_info().rss
        dragonfly = name == "dragonfly"
        started = time.monotonic()
        refused = 0
        if dragonfly:
            refused += asyncio.run(drive(port, [manifest_put(n) for n in range(tasks)], 4, 50))
        requests = [announce(n, tasks, dragonfly) for n in range(peers)]
        refused += asyncio.run(drive(port, requests, 4, 200))
        elapsed_s = time.monotonic() - started
        rss = process.memory_info().rss
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as answer:
            metrics = answer.read().decode()
    finally:
        tracker.terminate()
        tracker.wait(timeout=30)
    result = {
        "scenario": name,
        "peers_announced": peers,
        "tasks": tasks,
        "tracker_peers": gauge(metrics, "dragonfly_tracker_peers"),
        "tracker_tasks": gauge(metrics, "dragonfly_tracker_tasks"),
        "refused": refused,
        "idle_rss_bytes": idle_rss,
        "rss_bytes": rss,
        "bytes_per_peer": round((rss - idle_rss) / peers),
        "load_s": round(elapsed_s, 1),
    }
    print(
        f"{name:>10}: {result['tracker_peers']:,.0f} peers in {result['tracker_tasks']:,.0f} tasks"
        f"  RSS {rss / 1e6:.0f} MB (idle {idle_rss / 1e6:.0f} MB, "
        f"{result['bytes_per_peer']} B/peer)  refused {refused}  loaded in {elapsed_s:.1f} s"
    )
    return result


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--peers", type=int, default=100_000)
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--scenarios", default="bittorrent,dragonfly")
    parser.add_argument(
        "--out", type=Path, default=ROOT / "bench" / "results" / "tracker_memory.json"
    )
    args = parser.parse_args()
    results = [scenario(name, args.peers, args.tasks) for name in args.scenarios.split(",")]
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT
    ).stdout.strip()
    document = {
        "benchmark": "tracker_memory",
        "commit": commit,
        "machine": {"python": platform.python_version(), "platform": platform.platform()},
        "target_rss_bytes": 300_000_000,
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(document, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0 if all(r["refused"] == 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
