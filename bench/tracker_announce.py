"""Announces per second and p99 latency of ``dftracker serve`` under wrk.

wrk (Debian's package) drives ``GET /announce`` with a Lua script: 100,000 distinct peers (each
with its own peer id and port, bound to one of 1,000 task ids), picked at random per request, with
the events and ``left`` values of a live swarm (mostly regular announces, some ``started``,
``completed``, ``stopped``). Two runs: HTTP/1.1 keep-alive, and ``Connection: close`` (a new TCP
connection per announce, as libtorrent does). After each run the tracker's own ``/metrics`` must
show every announce answered ``ok``: a fast tracker that refuses is not a fast tracker.

    .venv/bin/python bench/tracker_announce.py                   # 10 s, 50 connections, 2 threads
    .venv/bin/python bench/tracker_announce.py --duration 30s --connections 100
    .venv/bin/python bench/tracker_announce.py --profile         # py-spy record of the tracker

Targets (issue #3): >= 16,000 announces/s with keep-alive, >= 8,000/s with Connection: close
(opentracker on this 2-core machine: ~16,000/s closing after every reply).
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable

LUA = r"""
-- 100,000 peers over 1,000 tasks; peer n always announces for task n % 1000 on port 10000+n%50000.
local tasks = {}
for t = 0, 999 do
  -- info_hash: 0xDF, 15 zero bytes, then t as 4 bytes big-endian (20 bytes, percent-encoded)
  tasks[t] = "%DF" .. string.rep("%00", 15) .. string.format("%%%02X%%%02X%%%02X%%%02X",
    math.floor(t / 16777216) % 256, math.floor(t / 65536) % 256, math.floor(t / 256) % 256,
    t % 256)
end
-- 85% regular announces, 5% each started, completed, stopped
local events = {}
for i = 1, 17 do events[i] = "" end
events[18] = "started"; events[19] = "completed"; events[20] = "stopped"
local counter = 0
init = function(args)
  math.randomseed(os.time() + tonumber(tostring({}):sub(8), 16) % 100000)
end
request = function()
  counter = counter + 1
  local n = math.random(0, 99999)
  local peer_id = string.format("-WK0001-%012d", n)
  local event = events[math.random(1, #events)]
  local left = (event == "completed") and 0 or (math.random(0, 3) * 1048576)
  local path = "/announce?info_hash=" .. tasks[n % 1000] ..
    "&peer_id=" .. peer_id ..
    "&port=" .. (10000 + n % 50000) ..
    "&uploaded=" .. (counter * 16384) .. "&downloaded=" .. (counter * 16384) ..
    "&left=" .. left .. "&compact=1&numwant=50&key=" .. string.format("%08X", n)
  if event ~= "" then path = path .. "&event=" .. event end
  return wrk.format("GET", path)
end
"""


def start_tracker(extra: list[str]) -> tuple[subprocess.Popen[str], int]:
    process = subprocess.Popen(
        [PYTHON, "-m", "tracker.cli", "serve", "--port", "0", *extra],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    line = process.stdout.readline().strip()
    if not line.startswith("listening "):
        process.kill()
        raise SystemExit(f"tracker_announce: tracker did not start ({line!r})")
    return process, int(line.rsplit(":", 1)[1].split("/", 1)[0])


def metric_sums(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    sums: dict[str, float] = {"ok": 0.0, "failure": 0.0}
    for match in re.finditer(
        r'^dragonfly_tracker_announces_total\{.*result="(\w+)"\} (\S+)$', text, re.M
    ):
        sums[match.group(1)] = sums.get(match.group(1), 0.0) + float(match.group(2))
    return sums


def parse_wrk(output: str) -> dict[str, float]:
    rate = re.search(r"Requests/sec:\s+([\d.]+)", output)
    p99 = re.search(r"^\s+99%\s+([\d.]+)(us|ms|s)\s*$", output, re.M)
    total = re.search(r"(\d+) requests in", output)
    errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    if rate is None or p99 is None or total is None:
        raise SystemExit(f"tracker_announce: cannot read wrk output:\n{output}")
    scale = {"us": 1e-3, "ms": 1.0, "s": 1000.0}[p99.group(2)]
    return {
        "announces_per_s": float(rate.group(1)),
        "p99_ms": float(p99.group(1)) * scale,
        "requests": float(total.group(1)),
        "socket_errors": float(sum(int(g) for g in errors.groups())) if errors else 0.0,
        "non_2xx": float(non2xx.group(1)) if non2xx else 0.0,
    }


def run_mode(
    wrk: str, script: Path, mode: str, args: argparse.Namespace, extra: list[str]
) -> dict[str, Any]:
    tracker, port = start_tracker(extra)
    sampler = psutil.Process(tracker.pid)
    profiler: subprocess.Popen[bytes] | None = None
    try:
        if args.profile:
            out = ROOT / "bench" / "results" / f"tracker_announce_{mode}.speedscope.json"
            profiler = subprocess.Popen(
                ["py-spy", "record", "-o", str(out), "-f", "speedscope", "-p", str(tracker.pid)]
            )
            time.sleep(1)
        headers = ["-H", "Connection: close"] if mode == "close" else []
        sampler.cpu_percent()
        cpu_before = sampler.cpu_times()
        wall_start = time.monotonic()
        done = subprocess.run(
            [
                wrk,
                f"-t{args.threads}",
                f"-c{args.connections}",
                f"-d{args.duration}",
                "--latency",
                "-s",
                str(script),
                *headers,
                f"http://127.0.0.1:{port}/announce",
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        wall_s = time.monotonic() - wall_start
        cpu_after = sampler.cpu_times()
        figures = parse_wrk(done.stdout)
        counts = metric_sums(port)
        rss_bytes = sampler.memory_info().rss
    finally:
        if profiler is not None:
            profiler.send_signal(2)
            profiler.wait(timeout=60)
        tracker.terminate()
        tracker.wait(timeout=30)
    tracker_cpu_s = (cpu_after.user + cpu_after.system) - (cpu_before.user + cpu_before.system)
    result: dict[str, Any] = {
        "mode": mode,
        **figures,
        "tracker_ok": counts["ok"],
        "tracker_failures": counts["failure"],
        "tracker_cpu_cores": round(tracker_cpu_s / wall_s, 3),
        "tracker_rss_bytes": rss_bytes,
        "wrk_output": done.stdout,
    }
    print(
        f"{mode:>10}: {figures['announces_per_s']:>9,.0f} announces/s   p99 "
        f"{figures['p99_ms']:.2f} ms   tracker ok {counts['ok']:,.0f} failures "
        f"{counts['failure']:,.0f}   tracker CPU {result['tracker_cpu_cores']:.2f} cores   "
        f"RSS {rss_bytes / 2**20:.0f} MiB"
    )
    return result


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--duration", default="10s", help="wrk -d (default 10s)")
    parser.add_argument("--connections", type=int, default=50, help="wrk -c (default 50)")
    parser.add_argument("--threads", type=int, default=2, help="wrk -t (default 2)")
    parser.add_argument("--modes", default="keepalive,close", help="keepalive, close or both")
    parser.add_argument("--profile", action="store_true", help="record the tracker with py-spy")
    parser.add_argument(
        "--out", type=Path, default=ROOT / "bench" / "results" / "tracker_announce.json"
    )
    args = parser.parse_args()
    wrk = shutil.which("wrk")
    if wrk is None:
        raise SystemExit("tracker_announce: wrk not found (apt-get install wrk, or make bench)")
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "announce.lua"
        script.write_text(LUA)
        for mode in args.modes.split(","):
            results.append(run_mode(wrk, script, mode, args, []))
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT
    ).stdout.strip()
    document = {
        "benchmark": "tracker_announce",
        "commit": commit,
        "machine": {
            "cpus": psutil.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "wrk": {
            "threads": args.threads,
            "connections": args.connections,
            "duration": args.duration,
        },
        "peers": 100_000,
        "tasks": 1_000,
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(document, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
