"""Soak: minutes of churn in a live swarm - peers joining, leaving, being killed, several tasks,
the tracker restarted once - and nothing may fail or grow.

Real processes on 127.0.0.1: ``dftracker serve`` (on a fixed port so that it can be restarted),
the static origin of ``tools/origin.py`` serving a few files, and a changing crowd of ``dfget``
processes: about ``--peers`` at any time, each downloading a random file with a random seeding
time; one in ten is killed with SIGKILL mid-way and one in ten interrupted with SIGINT (and run
again later: it must resume). Halfway through, the tracker is stopped and started again.

Counted: downloads completed (output sha256 checked), failures (a dfget that exits non-zero
without being killed or interrupted, or a wrong sha256: target zero), bytes verified, and every
10 s the resident memory of the tracker, the origin and the largest dfget (target: flat).

    .venv/bin/python bench/soak.py                        # 10 minutes, 50 peers
    .venv/bin/python bench/soak.py --duration 2m --peers 20
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from peerwire.units import format_size, parse_duration  # noqa: E402

PYTHON = sys.executable
FILES = {"a.bin": 4, "b.bin": 8, "c.bin": 12, "d.bin": 16}  # MiB


@dataclass
class Job:
    process: subprocess.Popen[bytes]
    name: str
    output: Path
    fate: str  # "finish", "kill", "interrupt"
    started: float
    stop_at: float


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def start_listening(command: list[str]) -> tuple[subprocess.Popen[str], str]:
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=ROOT
    )
    assert process.stdout is not None
    line = process.stdout.readline().strip()
    if not line.startswith("listening "):
        process.kill()
        raise SystemExit(f"soak: {command[2]} did not start ({line!r})")
    return process, line.split()[1].removesuffix("/announce")


def rss(process: subprocess.Popen[Any] | None) -> int:
    if process is None or process.poll() is not None:
        return 0
    try:
        return int(psutil.Process(process.pid).memory_info().rss)
    except psutil.Error:
        return 0


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--duration", default="10m")
    parser.add_argument("--peers", type=int, default=50, help="dfget processes at any time")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "soak.json")
    args = parser.parse_args()
    # Started in the background (``cmd &``, nohup), this process inherits SIGINT ignored, and so
    # would every dfget it starts: the interruptions would then silently never happen.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    duration_s = parse_duration(args.duration)
    rng = random.Random(args.seed)
    counts = {"completed": 0, "failures": 0, "killed": 0, "interrupted": 0, "resumed": 0}
    failures: list[str] = []
    bytes_verified = 0
    samples: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        work = Path(tmp)
        (work / "origin").mkdir()
        digests = {}
        for name, mib in FILES.items():
            data = os.urandom(mib << 20)
            (work / "origin" / name).write_bytes(data)
            digests[name] = hashlib.sha256(data).hexdigest()
        port = free_port()
        tracker_cmd = [
            PYTHON,
            "-m",
            "tracker.cli",
            "serve",
            "--port",
            str(port),
            "--interval",
            "2s",
        ]
        tracker, tracker_url = start_listening(tracker_cmd)
        origin, origin_url = start_listening(
            [PYTHON, str(ROOT / "tools" / "origin.py"), str(work / "origin")]
        )
        environment = {**os.environ, "DFGET_DAEMON_SOCKET": ""}
        jobs: list[Job] = []
        resumable: list[str] = []  # outputs interrupted, to run again
        started = time.monotonic()
        restarted = False
        next_sample = started
        serial = 0
        try:
            while time.monotonic() - started < duration_s or jobs:
                now = time.monotonic()
                running_out = now - started >= duration_s
                # Keep the crowd at --peers while time remains.
                while not running_out and len(jobs) < args.peers:
                    serial += 1
                    if resumable and rng.random() < 0.5:
                        output = Path(resumable.pop())
                        name = output.name.split("-", 1)[1]
                        counts["resumed"] += 1
                    else:
                        name = rng.choice(list(FILES))
                        output = work / f"out{serial}-{name}"
                    fate = rng.choices(["finish", "kill", "interrupt"], [8, 1, 1])[0]
                    seed_time = f"{rng.choice([0, 2, 5, 10, 20])}s"
                    process = subprocess.Popen(
                        [
                            PYTHON,
                            "-m",
                            "dfget.cli",
                            f"{origin_url}/files/{name}",
                            "-O",
                            str(output),
                            "--tracker",
                            tracker_url,
                            "--seed-time",
                            seed_time,
                            "--rate",
                            rng.choice(["4M", "8M", "16M"]),
                            "--quiet",
                        ],
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL,
                        cwd=work,
                        env=environment,
                    )
                    jobs.append(Job(process, name, output, fate, now, now + rng.uniform(0.5, 3)))
                for job in list(jobs):
                    code = job.process.poll()
                    if code is None:
                        if job.fate == "kill" and now >= job.stop_at:
                            job.process.kill()
                            job.process.wait()
                            counts["killed"] += 1
                            jobs.remove(job)
                        elif job.fate == "interrupt" and now >= job.stop_at:
                            job.process.send_signal(signal.SIGINT)
                            job.fate = "interrupted"
                        elif now - job.started > 300:
                            job.process.kill()
                            job.process.wait()
                            counts["failures"] += 1
                            failures.append(f"{job.output.name}: no end after 300 s")
                            jobs.remove(job)
                        continue
                    jobs.remove(job)
                    # 130: interrupted and resumable; -SIGINT: interrupted while Python was still
                    # starting (before dfget's handler existed), nothing written yet.
                    if job.fate == "interrupted" and code in (130, -signal.SIGINT):
                        counts["interrupted"] += 1
                        resumable.append(str(job.output))
                        continue
                    if code != 0:
                        counts["failures"] += 1
                        failures.append(f"{job.output.name}: exit {code}")
                        continue
                    data = job.output.read_bytes()
                    if hashlib.sha256(data).hexdigest() != digests[job.name]:
                        counts["failures"] += 1
                        failures.append(f"{job.output.name}: wrong sha256")
                        continue
                    counts["completed"] += 1
                    bytes_verified += len(data)
                    job.output.unlink()
                if not restarted and now - started >= duration_s / 2:
                    restarted = True
                    tracker.terminate()
                    tracker.wait(timeout=30)
                    time.sleep(1.0)
                    tracker, _ = start_listening(tracker_cmd)
                    print("soak: tracker restarted", flush=True)
                if now >= next_sample:
                    next_sample = now + 10
                    sample = {
                        "t_s": round(now - started, 1),
                        "tracker_rss": rss(tracker),
                        "origin_rss": rss(origin),
                        "dfget_max_rss": max((rss(j.process) for j in jobs), default=0),
                        "dfget_running": len(jobs),
                    }
                    samples.append(sample)
                    print(
                        f"soak {sample['t_s']:>6.0f} s: {counts['completed']} done, "
                        f"{counts['failures']} failed, {len(jobs)} running, tracker "
                        f"{format_size(sample['tracker_rss'])}, origin "
                        f"{format_size(sample['origin_rss'])}, largest dfget "
                        f"{format_size(sample['dfget_max_rss'])}",
                        flush=True,
                    )
                time.sleep(0.1)
        finally:
            for job in jobs:
                if job.process.poll() is None:
                    job.process.kill()
                job.process.wait()
            for process in (tracker, origin):
                process.terminate()
                process.wait(timeout=30)
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT
    ).stdout.strip()
    document = {
        "benchmark": "soak",
        "commit": commit,
        "machine": {"python": platform.python_version(), "platform": platform.platform()},
        "duration_s": duration_s,
        "peers": args.peers,
        "counts": counts,
        "failures": failures,
        "bytes_verified": bytes_verified,
        "rss_samples": samples,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(document, indent=2) + "\n")
    print(
        f"soak: {counts['completed']} downloads completed ({format_size(bytes_verified)} "
        f"verified), {counts['failures']} failures, {counts['killed']} killed, "
        f"{counts['interrupted']} interrupted, {counts['resumed']} resumed; wrote {args.out}"
    )
    for failure in failures[:20]:
        print(f"  failure: {failure}")
    return 1 if counts["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
