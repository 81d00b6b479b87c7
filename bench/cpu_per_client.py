#!/usr/bin/env -S sh -c 'p="${0%/*}/../.venv/bin/python";[ -x "$p" ]||p=python3;exec "$p" "$0" "$@"'
"""CPU per client: the same swarm downloaded by dfget and by aria2c, one after the other.

    bench/cpu_per_client.py                                  # 20 clients, 4 MiB, 1 Mbit/s each
    bench/cpu_per_client.py --size 32M --rate 8mbit --source-rate 8mbit   # symmetric links

Both swarms on 127.0.0.1 with software rate limits and this project's tracker: every client
downloads at ``--rate`` and uploads at ``--rate``; the source serves at ``--source-rate`` (the
dfget swarm's origin is ``tools/origin.py --rate``, the aria2c swarm's an aria2c seeder with that
upload limit and the file). dfget pieces are what dfget picks for the size (16 KiB for 4 MiB);
the torrent's pieces are the same size. The dfget swarm shares a cluster secret (the
recommended configuration: no origin check per client); aria2c, a stock client, uses an open
tracker. Clients start together and leave when done (``--seed-time 0`` / ``--seed-time=0``).

Per client: CPU seconds (user + system, psutil) for the whole process and without start-up
(the CPU of ``dfget --help`` / ``aria2c --version``, measured apart), CPU per second of
download, read and write syscalls and voluntary context switches (wakeups) per
second (``/proc``, sampled every 0.2 s), the download time, and what it took from peers and
the origin and uploaded (dfget's summary line). The bound: the file at one client's rate.
dfget's fixed cost is measured too: the CPU of one dfget alone fetching 1 KiB through the same
tracker and origin (start-up, tracker, manifest, teardown), and the CPU without it.
JSON to bench/results/cpu_per_client*.json; bench/README.md has the story.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import re
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from peerwire import bencoding
from peerwire.layout import choose_piece_length
from peerwire.units import format_rate, parse_rate, parse_size

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
SAMPLE_S = 0.2
#: ``python -c`` this, the stats file, the module, its arguments: the module under cProfile, every
#: call counted and timed in CPU time (a wall clock would charge idle waits to whatever awaits).
PROFILE_MODULE = """
import atexit, cProfile, runpy, sys, time
out = sys.argv.pop(1)
module = sys.argv.pop(1)
profile = cProfile.Profile(time.process_time)
atexit.register(lambda: (profile.disable(), profile.dump_stats(out)))
profile.enable()
runpy.run_module(module, run_name="__main__", alter_sys=True)
"""


@dataclass
class Client:
    name: str
    process: psutil.Popen
    started: float
    cpu_s: float = 0.0
    syscalls: int = 0
    wakeups: int = 0
    ended: float = 0.0
    exit_code: int | None = None
    stderr: str = ""
    samples: list[tuple[float, float, int, int]] = field(default_factory=list)

    def sample(self) -> None:
        try:
            with self.process.oneshot():
                times = self.process.cpu_times()
                io = self.process.io_counters()
                switches = self.process.num_ctx_switches()
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            return
        self.cpu_s = times.user + times.system
        self.syscalls = io.read_count + io.write_count
        self.wakeups = switches.voluntary


@contextlib.contextmanager
def started(
    command: list[str], env: dict[str, str], cwd: Path
) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """A server that prints ``listening URL``; stopped at the end."""
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env, cwd=cwd
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline().strip()
        if not line.startswith("listening "):
            raise SystemExit(f"cpu_per_client: {command[:4]} did not start: {line!r}")
        yield process, line.split()[1].removesuffix("/announce")
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()


def run_clients(
    commands: list[tuple[str, list[str]]], env: dict[str, str], cwd: Path
) -> list[Client]:
    """Start every client at once; sample them until all have exited."""
    clients = []
    for name, command in commands:
        log = (cwd / f"{name}.err").open("w")
        process = psutil.Popen(command, stdout=subprocess.DEVNULL, stderr=log, env=env, cwd=cwd)
        clients.append(Client(name, process, time.monotonic()))
    running = list(clients)
    while running:
        time.sleep(SAMPLE_S)
        for client in list(running):
            pid, status, usage = os.wait4(client.process.pid, os.WNOHANG)
            if pid == 0:
                client.sample()  # syscalls and wakeups so far (gone with the process)
                continue
            client.exit_code = os.waitstatus_to_exitcode(status)
            client.ended = time.monotonic()
            client.cpu_s = usage.ru_utime + usage.ru_stime  # exact, at exit
            running.remove(client)
    for client in clients:
        client.stderr = (cwd / f"{client.name}.err").read_text(errors="replace")
    return clients


@contextlib.contextmanager
def origin_timeline(origin: str) -> Iterator[list[tuple[float, int]]]:
    """(seconds since the start, body bytes the origin has written) every second, from a
    thread asking its ``/__stats``: how busy the origin was, and when it was done."""
    timeline: list[tuple[float, int]] = []
    stop = threading.Event()
    began = time.monotonic()

    def sample() -> None:
        while not stop.wait(1.0):
            with contextlib.suppress(OSError, ValueError):
                with urllib.request.urlopen(f"{origin}/__stats", timeout=2) as answer:
                    written = json.loads(answer.read()).get("bytes_written", 0)
                timeline.append((round(time.monotonic() - began, 1), written))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        yield timeline
    finally:
        stop.set()
        sampler.join()


def client_env() -> dict[str, str]:
    """The clients' environment: none of this shell's dfget settings, and Python writing and
    reading its bytecode caches as on a user's machine (``PYTHONDONTWRITEBYTECODE`` would
    compile every module from source in every client)."""
    return {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("DFGET_", "DRAGONFLY_")) and k != "PYTHONDONTWRITEBYTECODE"
    }


def child_cpu_s(command: list[str], env: dict[str, str] | None = None) -> float:
    """The exact user + system CPU of one run of ``command`` (its rusage at exit)."""
    before = os.times()
    subprocess.run(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, check=False
    )
    after = os.times()
    return (after.children_user - before.children_user) + (
        after.children_system - before.children_system
    )


def summary_bytes(stderr: str) -> dict[str, int | None]:
    """From peers / from origin / uploaded of dfget's summary line, in bytes."""
    units = {"B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30}
    found: dict[str, int | None] = {"from_peers": None, "from_origin": None, "uploaded": None}
    for key, label in (
        ("from_peers", "from peers"),
        ("from_origin", "from origin"),
        ("uploaded", "uploaded"),
    ):
        match = re.search(rf"{label} ([0-9.]+) (B|KiB|MiB|GiB)", stderr)
        if match:
            found[key] = round(float(match[1]) * units[match[2]])
    return found


def make_torrent(data: Path, announce: str, piece_bytes: int, torrent: Path) -> None:
    content = data.read_bytes()
    pieces = b"".join(
        hashlib.sha1(content[i : i + piece_bytes]).digest()
        for i in range(0, len(content), piece_bytes)
    )
    info = {
        "name": data.name,
        "length": len(content),
        "piece length": piece_bytes,
        "pieces": pieces,
    }
    torrent.write_bytes(bencoding.encode({"announce": announce, "info": info}))


def aria2c_command(
    aria2: str, torrent: Path, directory: Path, rate: int, port: int, *extra: str
) -> list[str]:
    return [
        aria2,
        "--no-conf",
        "--enable-dht=false",
        "--enable-dht6=false",
        "--bt-enable-lpd=false",
        "--enable-peer-exchange=false",
        "--disable-ipv6=true",
        f"--listen-port={port}",
        f"--dir={directory}",
        "--file-allocation=none",
        "--summary-interval=0",
        "--console-log-level=warn",
        f"--max-download-limit={rate}",
        f"--max-upload-limit={rate}",
        "--allow-overwrite=true",
        *extra,
        str(torrent),
    ]


def free_ports(count: int) -> list[int]:
    sockets, ports = [], []
    for _ in range(count):
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        sockets.append(probe)
        ports.append(probe.getsockname()[1])
    for probe in sockets:
        probe.close()
    return ports


def describe(clients: list[Client], size: int, startup_s: float) -> dict[str, Any]:
    per_client = []
    for client in clients:
        duration = max(client.ended - client.started, 1e-3)
        without = max(client.cpu_s - startup_s, 0.0)
        row: dict[str, Any] = {
            "name": client.name,
            "exit": client.exit_code,
            "download_s": round(duration, 3),
            "cpu_s": round(client.cpu_s, 4),
            "cpu_s_without_startup": round(without, 4),
            "cpu_ms_per_s": round(1000 * without / duration, 3),
            "syscalls_per_s": round(client.syscalls / duration, 1),
            "wakeups_per_s": round(client.wakeups / duration, 1),
            **summary_bytes(client.stderr),
        }
        per_client.append(row)
    ok = [row for row in per_client if row["exit"] == 0]
    for client in clients:
        if client.exit_code != 0:
            tail = client.stderr.strip().splitlines()[-3:]
            print(f"{client.name} exited {client.exit_code}: {' | '.join(tail)}", file=sys.stderr)

    def median(key: str) -> float | None:
        values = [row[key] for row in ok if row[key] is not None]
        return round(statistics.median(values), 4) if values else None

    return {
        "clients": per_client,
        "ok": len(ok),
        "median_download_s": median("download_s"),
        "last_download_s": max((row["download_s"] for row in ok), default=None),
        "median_cpu_s": median("cpu_s"),
        "median_cpu_s_without_startup": median("cpu_s_without_startup"),
        "median_cpu_ms_per_s": median("cpu_ms_per_s"),
        "median_syscalls_per_s": median("syscalls_per_s"),
        "median_wakeups_per_s": median("wakeups_per_s"),
        "startup_cpu_s": round(startup_s, 4),
    }


def dfget_swarm(args: argparse.Namespace, work: Path, data: Path, rate: int) -> dict[str, Any]:
    env = client_env()
    env.update({"DRAGONFLY_SECRET": secrets.token_urlsafe(32), "DFGET_DAEMON_SOCKET": ""})
    origin_dir = work / "origin"
    origin_dir.mkdir()
    shutil.copy(data, origin_dir / data.name)
    (origin_dir / "tiny.bin").write_bytes(os.urandom(1024))
    source_rate = int(parse_rate(args.source_rate)) if args.source_rate else 20 * rate
    with (
        started(
            [PYTHON, "-m", "tracker.cli", "serve", "--port", "0", "--interval", "2s"], env, ROOT
        ) as (_, tracker),
        started(
            [
                PYTHON,
                str(ROOT / "tools" / "origin.py"),
                str(origin_dir),
                "--rate",
                str(source_rate),
            ],
            env,
            ROOT,
        ) as (_, origin),
    ):
        commands = []
        for index in range(args.clients):
            out = work / f"dfget{index:02d}.bin"
            if index == 0 and args.profile:
                profiler = ["-c", PROFILE_MODULE, str(args.profile)]
            else:
                profiler = ["-m"]
            commands.append(
                (
                    f"dfget{index:02d}",
                    [
                        PYTHON,
                        *profiler,
                        "dfget.cli",
                        f"{origin}/files/{data.name}",
                        "-O",
                        str(out),
                        "--tracker",
                        tracker,
                        "--rate",
                        str(rate),
                        "--upload-rate",
                        str(rate),
                        "--seed-time",
                        "0s",
                    ],
                )
            )
        began = time.monotonic()
        with origin_timeline(origin) as timeline:
            clients = run_clients(commands, env, work)
        wall = time.monotonic() - began
        # The fixed cost of a download: one dfget alone fetching 1 KiB through the same
        # tracker and origin (interpreter, imports, tracker, manifest, file, teardown).
        tiny = [
            PYTHON,
            "-m",
            "dfget.cli",
            f"{origin}/files/tiny.bin",
            "-O",
            str(work / "tiny.bin"),
            "--tracker",
            tracker,
            "--seed-time",
            "0s",
            "--quiet",
        ]
        fixed_s = min(child_cpu_s(tiny, env) for _ in range(3))
        origin_stats = json.loads(
            subprocess.run(
                ["curl", "-s", f"{origin}/__stats"], capture_output=True, text=True, check=False
            ).stdout
            or "{}"
        )
    result = describe(clients, data.stat().st_size, args.dfget_startup_s)
    result["wall_s"] = round(wall, 3)
    result["origin_timeline"] = timeline
    result["fixed_cpu_s"] = round(fixed_s, 4)
    without_fixed = [c["cpu_s"] - fixed_s for c in result["clients"] if c["exit"] == 0]
    result["median_cpu_s_without_fixed"] = (
        round(statistics.median(without_fixed), 4) if without_fixed else None
    )
    result["origin_bytes"] = origin_stats.get("bytes_sent")
    result["source_rate_bps"] = source_rate
    expected = hashlib.sha256(data.read_bytes()).hexdigest()
    result["verified"] = sum(
        hashlib.sha256((work / f"dfget{i:02d}.bin").read_bytes()).hexdigest() == expected
        for i in range(args.clients)
        if (work / f"dfget{i:02d}.bin").exists()
    )
    return result


def aria2c_swarm(args: argparse.Namespace, work: Path, data: Path, rate: int) -> dict[str, Any]:
    aria2 = shutil.which("aria2c")
    if aria2 is None:
        raise SystemExit("cpu_per_client: aria2c is not installed (apt-get install aria2)")
    env = client_env()
    piece = choose_piece_length(data.stat().st_size)
    source_rate = int(parse_rate(args.source_rate)) if args.source_rate else 20 * rate
    seed_dir = work / "seed"
    seed_dir.mkdir()
    shutil.copy(data, seed_dir / data.name)
    ports = free_ports(args.clients + 1)
    with started(
        [PYTHON, "-m", "tracker.cli", "serve", "--port", "0", "--interval", "2s"], env, ROOT
    ) as (_, tracker):
        torrent = work / "file.torrent"
        make_torrent(data, f"{tracker}/announce", piece, torrent)
        seeder = subprocess.Popen(
            aria2c_command(
                aria2,
                torrent,
                seed_dir,
                source_rate,
                ports[0],
                "--check-integrity=true",
                "--seed-ratio=0.0",
            ),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=env,
        )
        try:
            time.sleep(2.0)  # the seeder checks the file and announces itself
            commands = []
            for index in range(args.clients):
                directory = work / f"aria{index:02d}"
                directory.mkdir()
                commands.append(
                    (
                        f"aria{index:02d}",
                        aria2c_command(
                            aria2, torrent, directory, rate, ports[index + 1], "--seed-time=0"
                        ),
                    )
                )
            began = time.monotonic()
            clients = run_clients(commands, env, work)
            wall = time.monotonic() - began
        finally:
            seeder.terminate()
            seeder.wait(timeout=10)
    result = describe(clients, data.stat().st_size, args.aria2c_startup_s or 0.0)
    result["wall_s"] = round(wall, 3)
    result["source_rate_bps"] = source_rate
    expected = hashlib.sha256(data.read_bytes()).hexdigest()
    result["verified"] = sum(
        hashlib.sha256((work / f"aria{i:02d}" / data.name).read_bytes()).hexdigest() == expected
        for i in range(args.clients)
        if (work / f"aria{i:02d}" / data.name).exists()
    )
    return result


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--size", default="4M")
    parser.add_argument("--rate", default="1mbit", help="each client's download and upload limit")
    parser.add_argument("--source-rate", help="the origin's / seeder's rate (default 20x --rate)")
    parser.add_argument("--only", choices=("dfget", "aria2c"))
    parser.add_argument(
        "--profile", type=Path, help="run dfget client 0 under cProfile, its stats to this file"
    )
    parser.add_argument(
        "--out", type=Path, default=ROOT / "bench" / "results" / "cpu_per_client.json"
    )
    args = parser.parse_args()
    rate = int(parse_rate(args.rate))
    size = parse_size(args.size)
    # Bytecode caches of the project's modules, as an installed copy has them.
    subprocess.run(
        [PYTHON, "-m", "compileall", "-q", "dfget", "peerwire", "tracker", "proxy"],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        env=client_env(),
        check=False,
    )
    # dfget's start-up: the least CPU of five runs of `dfget --help` (interpreter, imports).
    args.dfget_startup_s = min(
        child_cpu_s([PYTHON, "-m", "dfget.cli", "--help"], client_env()) for _ in range(5)
    )
    aria2 = shutil.which("aria2c")
    args.aria2c_startup_s = (
        min(child_cpu_s([aria2, "--version"]) for _ in range(5)) if aria2 else None
    )
    report: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "commit": subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            cwd=ROOT,
            check=False,
        ).stdout.strip(),
        "clients": args.clients,
        "size_bytes": size,
        "rate_bps": rate,
        "bound_s": round(size / rate, 3),
        "load_before": os.getloadavg(),
        "dfget_help_cpu_s": round(args.dfget_startup_s, 4),
        "aria2c_version_cpu_s": args.aria2c_startup_s,
    }
    with tempfile.TemporaryDirectory(prefix="cpu-per-client-", dir="/dev/shm") as tmp:
        data = Path(tmp) / "payload.bin"
        data.write_bytes(os.urandom(size))
        for swarm in ("dfget", "aria2c"):
            if args.only and args.only != swarm:
                continue
            work = Path(tmp) / swarm
            work.mkdir()
            runner = dfget_swarm if swarm == "dfget" else aria2c_swarm
            report[swarm] = runner(args, work, data, rate)
            row = report[swarm]
            print(
                f"{swarm}: {row['ok']}/{args.clients} ok ({row['verified']} verified), "
                f"download median {row['median_download_s']} s last {row['last_download_s']} s "
                f"(bound {report['bound_s']} s), CPU median "
                f"{row['median_cpu_s_without_startup']} s without start-up "
                f"({row['median_cpu_ms_per_s']} ms/s), {row['median_syscalls_per_s']} syscalls/s, "
                f"{row['median_wakeups_per_s']} wakeups/s"
                + (
                    f"; fixed cost {row['fixed_cpu_s']} s, without it "
                    f"{row['median_cpu_s_without_fixed']} s"
                    if "fixed_cpu_s" in row
                    else ""
                ),
                flush=True,
            )
    report["load_after"] = os.getloadavg()
    if "dfget" in report and "aria2c" in report:
        a, d = report["aria2c"], report["dfget"]
        if a["median_cpu_s_without_startup"]:
            report["cpu_ratio_dfget_to_aria2c"] = round(
                d["median_cpu_s_without_startup"] / a["median_cpu_s_without_startup"], 3
            )
            print(
                f"CPU per client, dfget / aria2c: {report['cpu_ratio_dfget_to_aria2c']}x; "
                f"dfget --help {report['dfget_help_cpu_s'] * 1000:.0f} ms of CPU; "
                f"rate {format_rate(rate)}"
            )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    print(f"results: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
