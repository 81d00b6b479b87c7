"""Does ``--rate`` hold over a real TCP connection? Token-bucket accuracy on 127.0.0.1.

For each case a receiver *process* listens on 127.0.0.1, and this process sends to it with
asyncio (uvloop by default) through ``peerwire.ratelimit.AsyncRateLimiter``. The sender sends
``rate * duration`` bytes in chunks, reserving each chunk on its bucket before writing it, and
after the last chunk waits out the bucket's remaining debt (``acquire(0)``) before closing: the
end of the transfer is when the limiter would have let the next byte go. The receiver measures
wall time from the first byte it receives to EOF, so

    achieved rate = bytes received / (EOF time - first byte time)
    error %       = 100 * (achieved / target - 1)

and a case passes when |error| <= 2% (the issue's criterion). The receiver also reports the rate
up to the last data byte (one chunk fewer of time, so slightly higher) and the slowest and fastest
whole second, as a check that the rate is held throughout, not only on average.

Cases: ``1M``, ``20M``, ``100M`` on one connection; ``100M-under-20M``, a task bucket of
100 MiB/s under a host bucket of 20 MiB/s (expect 20); ``2x100M-under-20M``, two such tasks on
two connections under one host (expect 20 together, 10 each); ``1M-1MiB-blocks``, 1 MiB writes
at 1 MiB/s (each write larger than the burst). Only 127.0.0.1 is used. Results go to
bench/results/ratelimit_sockets.json and a table is printed. Exit status 1 if a case fails.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import json
import multiprocessing
import platform
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import uvloop

from peerwire.ratelimit import DEFAULT_BURST_S, AsyncRateLimiter, TokenBucket
from peerwire.units import MIB, format_rate, format_size, parse_duration, parse_size

HOST = "127.0.0.1"  # the only address this benchmark ever uses
TOLERANCE_PCT = 2.0
RECV_BUFFER_BYTES = 1 * MIB
SETUP_TIMEOUT_S = 30.0
DEFAULT_OUTPUT = Path(__file__).resolve().parent / "results" / "ratelimit_sockets.json"


@dataclass(frozen=True)
class Case:
    """One measurement: ``connections`` senders, each under its own task bucket."""

    name: str
    task_rate_bps: float | None
    host_rate_bps: float | None  # a shared parent of the task buckets, or none
    connections: int
    expected_bps: float
    chunk_bytes: int | None = None  # None: the --chunk flag


CASES = (
    Case("1M", 1 * MIB, None, 1, 1 * MIB),
    Case("20M", 20 * MIB, None, 1, 20 * MIB),
    Case("100M", 100 * MIB, None, 1, 100 * MIB),
    Case("100M-under-20M", 100 * MIB, 20 * MIB, 1, 20 * MIB),
    Case("2x100M-under-20M", 100 * MIB, 20 * MIB, 2, 20 * MIB),
    Case("1M-1MiB-blocks", 1 * MIB, None, 1, 1 * MIB, chunk_bytes=1 * MIB),
)


# -- receiver (a separate process) -------------------------------------------------------------


class _Reading:
    """What one receiving thread saw on its connection; times are time.monotonic()."""

    def __init__(self) -> None:
        self.bytes = 0
        self.first_s: float | None = None
        self.last_data_s = 0.0
        self.eof_s = 0.0
        self.per_second: dict[int, int] = {}  # whole seconds after the first byte of the case


def _read_connection(
    conn: socket.socket, reading: _Reading, first_byte: Callable[[float], float], timeout_s: float
) -> None:
    buffer = bytearray(RECV_BUFFER_BYTES)
    conn.settimeout(timeout_s)
    with conn:
        while True:
            size = conn.recv_into(buffer)
            now_s = time.monotonic()
            if size == 0:
                reading.eof_s = now_s
                return
            if reading.first_s is None:
                reading.first_s = now_s
            start_s = first_byte(now_s)
            second = max(0, int(now_s - start_s))
            reading.per_second[second] = reading.per_second.get(second, 0) + size
            reading.bytes += size
            reading.last_data_s = now_s


def receive(results: Connection, connections: int, timeout_s: float) -> None:
    """Accept ``connections`` on 127.0.0.1, read them to EOF, send back what was measured."""
    lock = threading.Lock()
    case_first_s: list[float] = []

    def first_byte(now_s: float) -> float:
        with lock:
            if not case_first_s:
                case_first_s.append(now_s)
            return case_first_s[0]

    with socket.create_server((HOST, 0)) as server:
        server.settimeout(SETUP_TIMEOUT_S)
        results.send(server.getsockname()[1])
        readings = [_Reading() for _ in range(connections)]
        threads = []
        for reading in readings:
            conn, _ = server.accept()
            thread = threading.Thread(
                target=_read_connection, args=(conn, reading, first_byte, timeout_s)
            )
            thread.start()
            threads.append(thread)
        for thread in threads:
            thread.join()
    results.send(
        [
            {
                "bytes": r.bytes,
                "first_s": r.first_s,
                "last_data_s": r.last_data_s,
                "eof_s": r.eof_s,
                "per_second": r.per_second,
            }
            for r in readings
        ]
    )


# -- sender (this process) ---------------------------------------------------------------------


async def _send(
    writer: asyncio.StreamWriter,
    limiter: AsyncRateLimiter,
    budget: list[int],
    chunk_bytes: int,
    payload: memoryview,
) -> None:
    while budget[0] > 0:
        size = min(chunk_bytes, budget[0])
        budget[0] -= size  # shared by the connections of a case: the total is fixed
        await limiter.acquire(size)
        writer.write(payload[:size])
        await writer.drain()
    await limiter.acquire(0)  # the last chunk's time on the link ends when its debt is paid
    writer.close()
    await writer.wait_closed()


async def _run_senders(case: Case, port: int, total_bytes: int, chunk_bytes: int) -> None:
    streams = [await asyncio.open_connection(HOST, port) for _ in range(case.connections)]
    # Fresh, empty buckets, made only once every connection is up.
    clock = time.monotonic
    host = None if case.host_rate_bps is None else TokenBucket(case.host_rate_bps, clock=clock)
    limiters = [
        AsyncRateLimiter(TokenBucket(case.task_rate_bps, clock=clock, parent=host)) for _ in streams
    ]
    payload = memoryview(bytes(chunk_bytes))
    budget = [total_bytes]
    async with asyncio.TaskGroup() as group:
        for (_, writer), limiter in zip(streams, limiters, strict=True):
            group.create_task(_send(writer, limiter, budget, chunk_bytes, payload))


def run_case(case: Case, duration_s: float, chunk_bytes: int, loop_name: str) -> dict[str, Any]:
    chunk_bytes = case.chunk_bytes or chunk_bytes
    total_bytes = round(case.expected_bps * duration_s)
    timeout_s = duration_s * 3 + SETUP_TIMEOUT_S
    context = multiprocessing.get_context("spawn")
    ours, theirs = context.Pipe()
    receiver = context.Process(target=receive, args=(theirs, case.connections, timeout_s))
    receiver.start()
    try:
        if not ours.poll(SETUP_TIMEOUT_S):
            raise RuntimeError(f"receiver for {case.name!r} did not start")
        port = ours.recv()
        coroutine = _run_senders(case, port, total_bytes, chunk_bytes)
        if loop_name == "uvloop":
            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                runner.run(coroutine)
        else:
            asyncio.run(coroutine)
        if not ours.poll(timeout_s):
            raise RuntimeError(f"receiver for {case.name!r} sent no result")
        readings: list[dict[str, Any]] = ours.recv()
    finally:
        receiver.join(SETUP_TIMEOUT_S)
        if receiver.is_alive():
            receiver.kill()
    return summarise(case, readings, duration_s, chunk_bytes, total_bytes)


def summarise(
    case: Case,
    readings: list[dict[str, Any]],
    duration_s: float,
    chunk_bytes: int,
    total_bytes: int,
) -> dict[str, Any]:
    first_s = min(r["first_s"] for r in readings)
    received = sum(r["bytes"] for r in readings)
    elapsed_s = max(r["eof_s"] for r in readings) - first_s
    to_last_byte_s = max(r["last_data_s"] for r in readings) - first_s
    achieved_bps = received / elapsed_s
    error_pct = 100 * (achieved_bps / case.expected_bps - 1)
    seconds: dict[int, int] = {}
    for reading in readings:
        for second, size in reading["per_second"].items():
            seconds[second] = seconds.get(second, 0) + size
    whole = [seconds.get(s, 0) for s in range(int(elapsed_s))]  # complete seconds only
    return {
        "case": case.name,
        "task_rate_bps": case.task_rate_bps,
        "host_rate_bps": case.host_rate_bps,
        "connections": case.connections,
        "chunk_bytes": chunk_bytes,
        "target_bps": case.expected_bps,
        "bytes_sent": total_bytes,
        "bytes_received": received,
        "elapsed_s": round(elapsed_s, 6),
        "achieved_bps": round(achieved_bps, 1),
        "error_pct": round(error_pct, 3),
        "achieved_to_last_byte_bps": round(received / to_last_byte_s, 1),
        "per_connection_bps": [
            round(r["bytes"] / (r["eof_s"] - r["first_s"]), 1) for r in readings
        ],
        "slowest_second_bps": min(whole, default=None),
        "fastest_second_bps": max(whole, default=None),
        "per_second_bytes": whole,
        "pass": abs(error_pct) <= TOLERANCE_PCT and received == total_bytes,
    }


def print_table(results: list[dict[str, Any]]) -> None:
    header = f"{'case':<20} {'target':>11} {'achieved':>11} {'error':>8}  {'whole seconds':<25} ok"
    print(header)
    print("-" * len(header))
    for r in results:
        spread = "-"
        if r["slowest_second_bps"] is not None:
            slow, fast = r["slowest_second_bps"] / MIB, r["fastest_second_bps"] / MIB
            spread = f"{slow:.2f} .. {fast:.2f} MiB/s"
        print(
            f"{r['case']:<20} {format_rate(r['target_bps']):>11} "
            f"{format_rate(r['achieved_bps']):>11} {r['error_pct']:>+7.3f}%  {spread:<25} "
            f"{'yes' if r['pass'] else 'NO'}"
        )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=(
            "Measure how closely peerwire's token-bucket rate limiter holds a rate over a real "
            "TCP connection on 127.0.0.1 (sender: asyncio/uvloop in this process; receiver: a "
            "separate process timing first byte to EOF). Cases: "
            + "; ".join(c.name for c in CASES)
            + f". A case passes within {TOLERANCE_PCT}%."
        )
    )
    parser.add_argument(
        "--duration",
        type=parse_duration,
        default=10.0,
        help="length of each case at its target rate, e.g. 10s, 1m (default 10s)",
    )
    parser.add_argument(
        "--chunk",
        type=parse_size,
        default=16 * 1024,
        help="bytes per write and reservation, e.g. 16K, 256K (default 16K, the BEP 3 block)",
    )
    parser.add_argument(
        "--case",
        dest="cases",
        action="append",
        choices=[c.name for c in CASES],
        help="run only this case (repeatable; default: all)",
    )
    parser.add_argument("--loop", choices=["uvloop", "asyncio"], default="uvloop")
    parser.add_argument(
        "--output", type=Path, default=DEFAULT_OUTPUT, help=f"JSON file (default {DEFAULT_OUTPUT})"
    )
    args = parser.parse_args(argv)
    if args.duration <= 0 or args.chunk <= 0:
        parser.error("--duration and --chunk must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cases = [c for c in CASES if args.cases is None or c.name in args.cases]
    results = []
    for case in cases:
        print(f"running {case.name!r} for {args.duration:g} s ...", file=sys.stderr, flush=True)
        results.append(run_case(case, args.duration, args.chunk, args.loop))
    document = {
        "benchmark": "ratelimit_sockets",
        "when_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "loop": args.loop,
        "uvloop": importlib.metadata.version("uvloop"),
        "machine": f"{platform.system()} {platform.machine()}, {multiprocessing.cpu_count()} CPUs",
        "duration_s": args.duration,
        "default_chunk_bytes": args.chunk,
        "default_chunk": format_size(args.chunk),
        "default_burst_s": DEFAULT_BURST_S,
        "tolerance_pct": TOLERANCE_PCT,
        "results": results,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(document, indent=2) + "\n")
    print_table(results)
    print(f"\nwrote {args.output}")
    return 0 if all(r["pass"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
