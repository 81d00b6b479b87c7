"""dftracker (memory store) beside opentracker under the same wrk load (issue 23).

The load is ``tracker_announce.py``'s: wrk, 2 threads, 50 keep-alive connections, 100,000 peers
over 1,000 tasks picked at random per request, a live swarm's mix of events. opentracker is
Debian's package (``apt-get install opentracker``), given the 1,000 task ids as its whitelist
(Debian builds it with one). The two run in turns (dftracker, opentracker, dftracker, ...),
each against a fresh process, so drift of the machine falls on both; the load average before
each run is recorded. Figures: announces/s and wrk's latency percentiles.

    .venv/bin/python bench/tracker_vs_opentracker.py               # 3 rounds of 10 s each
    .venv/bin/python bench/tracker_vs_opentracker.py --rounds 1 --duration 5s
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
from tracker_announce import LUA, start_tracker

ROOT = Path(__file__).resolve().parent.parent
#: The wrk script's task ids: 0xDF, 15 zero bytes, then the task number (4 bytes).
TASK_PREFIX = b"\xdf" + bytes(15)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start_opentracker(whitelist: Path) -> tuple[subprocess.Popen[bytes], int]:
    binary = shutil.which("opentracker") or "/usr/bin/opentracker"
    port = free_port()
    process = subprocess.Popen(
        [binary, "-i", "127.0.0.1", "-p", str(port), "-P", str(port), "-w", str(whitelist)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return process, port
        except OSError:
            time.sleep(0.02)
    raise SystemExit("opentracker did not start")


def run_wrk(wrk: str, script: Path, port: int, args: argparse.Namespace) -> dict[str, Any]:
    done = subprocess.run(
        [wrk, "-t2", f"-c{args.connections}", f"-d{args.duration}", "--latency", "-s",
         str(script), f"http://127.0.0.1:{port}/announce"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    out = done.stdout
    figures: dict[str, Any] = {
        "announces_per_s": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    }
    for name, value, unit in re.findall(r"^\s+(\d+)%\s+([\d.]+)(us|ms|s)\s*$", out, re.M):
        scale = {"us": 1e-3, "ms": 1.0, "s": 1000.0}[unit]
        figures[f"p{name}_ms"] = float(value) * scale
    errors = re.search(r"Socket errors: (.*)", out)
    figures["socket_errors"] = errors.group(1) if errors else ""
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    figures["non_2xx"] = int(non2xx.group(1)) if non2xx else 0
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", default="10s")
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument(
        "--out", type=Path, default=ROOT / "bench" / "results" / "tracker_vs_opentracker.json"
    )
    args = parser.parse_args()
    wrk = shutil.which("wrk")
    if wrk is None or not (shutil.which("opentracker") or os.path.exists("/usr/bin/opentracker")):
        raise SystemExit("needs wrk and opentracker (apt-get install wrk opentracker)")
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "announce.lua"
        script.write_text(LUA)
        whitelist = Path(tmp) / "whitelist.txt"
        whitelist.write_text(
            "".join((TASK_PREFIX + t.to_bytes(4, "big")).hex() + "\n" for t in range(1000))
        )
        for round_index in range(args.rounds):
            for name in ("dftracker", "opentracker"):
                if name == "dftracker":
                    process, port = start_tracker([])
                    proc: subprocess.Popen[Any] = process
                else:
                    proc, port = start_opentracker(whitelist)
                sampler = psutil.Process(proc.pid)
                try:
                    time.sleep(0.5)
                    load = os.getloadavg()[0]
                    before = sum(sampler.cpu_times()[:2])
                    started = time.monotonic()
                    figures = run_wrk(wrk, script, port, args)
                    cores = (sum(sampler.cpu_times()[:2]) - before) / (time.monotonic() - started)
                finally:
                    proc.terminate()
                    proc.wait(timeout=30)
                run = {"round": round_index, "tracker": name, "load_average_1m": load,
                       "server_cpu_cores": round(cores, 3), **figures}  # fmt: skip
                runs.append(run)
                print(
                    f"{name:>12}: {figures['announces_per_s']:>9,.0f}/s  p50 "
                    f"{figures.get('p50_ms', 0):.2f} ms  p99 {figures.get('p99_ms', 0):.2f} ms  "
                    f"CPU {cores:.2f}  load {load:.2f}"
                )
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT
    ).stdout.strip()
    args.out.write_text(
        json.dumps(
            {
                "commit": commit,
                "duration": args.duration,
                "connections": args.connections,
                "runs": runs,
            },
            indent=1,
        )
        + "\n"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
