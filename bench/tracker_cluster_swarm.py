"""Two trackers, 20 dfget clients, one tracker SIGKILLed mid-swarm: the origin's bytes with two
memory-store trackers (each its own half of the swarm) against two sharing Redis (issue 23).

The scenario of ``tests/integration/test_tracker_cluster.py``, measured: a 16 MiB file of
random bytes served by ``tools/origin.py``; two ``dftracker serve --interval 1s`` (memory, or
``--redis`` on one ``redis-server``); 20 clients, ``--rate 3M --seed-time 3s``, half listing
each tracker first, sharing a cluster secret; when the swarm has traded twice the file between
peers, the first tracker is SIGKILLed. Per setup: the origin's bytes in copies of the file,
when the last copy was complete, every copy's sha256 checked.

    .venv/bin/python bench/tracker_cluster_swarm.py                 # both setups, 3 runs each
    .venv/bin/python bench/tracker_cluster_swarm.py --runs 1 --setups redis
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
MIB = 1 << 20
SECRET = "bench-cluster-secret-0123456789"


def listening(command: list[str], env: dict[str, str]) -> tuple[subprocess.Popen[str], str]:
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env)
    assert process.stdout is not None
    line = process.stdout.readline().strip()
    if not line.startswith("listening "):
        process.kill()
        raise SystemExit(f"{command[2]} did not start: {line!r}")
    return process, line.split(" ", 1)[1]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as answer:
        return json.loads(answer.read())


def run_once(setup: str, directory: Path, size: int, clients: int) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DF", "DRAGONFLY_"))}
    env["DRAGONFLY_SECRET"] = SECRET
    env["DFGET_DAEMON_SOCKET"] = ""
    processes: list[subprocess.Popen[Any]] = []
    try:
        extra: list[str] = []
        if setup == "redis":
            port = free_port()
            server = shutil.which("redis-server") or "/usr/bin/redis-server"
            processes.append(
                subprocess.Popen(
                    [
                        server,
                        "--port",
                        str(port),
                        "--bind",
                        "127.0.0.1",
                        "--save",
                        "",
                        "--appendonly",
                        "no",
                        "--dir",
                        str(directory),
                    ],
                    stdout=subprocess.DEVNULL,
                )
            )
            time.sleep(0.3)
            extra = ["--redis", f"redis://127.0.0.1:{port}/0"]
        origin, origin_url = listening(
            [PYTHON, str(ROOT / "tools" / "origin.py"), str(directory)], env
        )
        processes.append(origin)
        trackers = []
        for _ in range(2):
            tracker, announce = listening(
                [PYTHON, "-m", "tracker.cli", "serve", "--port", "0", "--interval", "1s", *extra],
                env,
            )
            processes.append(tracker)
            trackers.append((tracker, announce.rsplit("/", 1)[0]))
        url = f"{origin_url}/files/file.bin"
        outputs = [directory / f"out{i}.bin" for i in range(clients)]
        started = time.monotonic()
        downloads = []
        for i, output in enumerate(outputs):
            order = trackers if i % 2 == 0 else trackers[::-1]
            downloads.append(
                subprocess.Popen(
                    [
                        PYTHON,
                        "-m",
                        "dfget.cli",
                        url,
                        "-O",
                        str(output),
                        "--quiet",
                        "--tracker",
                        ",".join(base for _, base in order),
                        "--rate",
                        "3M",
                        "--seed-time",
                        "3s",
                    ],
                    env=env,
                    stderr=subprocess.PIPE,
                    text=True,
                )
            )
        killed_at = None
        while killed_at is None and time.monotonic() - started < 120:
            traded = sum(
                get_json(base + "/stats?peers=0")["totals"]["peer_bytes"] for _, base in trackers
            )
            if traded > 2 * size:
                trackers[0][0].kill()
                killed_at = time.monotonic() - started
            time.sleep(0.1)
        finished: list[float] = []
        for download, output in zip(downloads, outputs, strict=True):
            _, err = download.communicate(timeout=300)
            if download.returncode != 0:
                raise SystemExit(f"dfget failed: {err[-2000:]}")
            finished.append(output.stat().st_mtime - time.time() + time.monotonic() - started)
        expected = hashlib.sha256((directory / "file.bin").read_bytes()).hexdigest()
        exact = all(hashlib.sha256(o.read_bytes()).hexdigest() == expected for o in outputs)
        sent = get_json(origin_url + "/__stats")["bytes_sent"]
        for output in outputs:
            output.unlink()
        return {
            "setup": setup,
            "origin_copies": sent / size,
            "killed_at_s": killed_at,
            "last_copy_s": max(finished),
            "byte_exact": exact,
            "load_average_before": os.getloadavg()[0],
        }
    finally:
        for process in reversed(processes):
            if process.poll() is None:
                process.terminate()
                process.wait(timeout=10)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--setups", default="memory,redis")
    parser.add_argument(
        "--out", type=Path, default=ROOT / "bench" / "results" / "tracker_cluster_swarm.json"
    )
    args = parser.parse_args()
    size = 16 * MIB
    results = []
    with tempfile.TemporaryDirectory(prefix="dfswarm-") as tmp:
        directory = Path(tmp)
        with (directory / "file.bin").open("wb") as stream:
            stream.write(os.urandom(size))
        for run in range(args.runs):
            for setup in args.setups.split(","):
                load = os.getloadavg()[0]
                result = run_once(setup, directory, size, args.clients)
                result["run"], result["load_average_before"] = run, load
                results.append(result)
                print(json.dumps(result))
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT
    ).stdout.strip()
    args.out.write_text(json.dumps({"commit": commit, "results": results}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
