#!/usr/bin/env -S sh -c 'p="${0%/*}/../.venv/bin/python";[ -x "$p" ]||p=python3;exec "$p" "$0" "$@"'
"""Native against P2P on emulated links, held against the theoretical bound (issue #7).

    python bench/run.py 200 clients [--size 4M] [--client-bw 2mbit] [--origin-bw 40mbit]
                        [--runs 1] [--out bench/results]
    python bench/run.py 10,50,100,200 clients          # the sweep of the chart
    python bench/run.py --cleanup                      # remove leftovers of a killed run

For each N: one network namespace per client host, one for the origin, one for the tracker, on
a bridge; every client link shaped with tbf in both directions, the origin's uplink too (the
tracker is unshaped). All clients fetch one file of random bytes at once, first natively (one
HTTP GET from the origin each), then through the swarm (dfget with the tracker), in the same
long-lived client processes, so Python's start-up is outside the clock. See --help.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import hashlib
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType
from typing import Any, Final

import netns
import psutil
import run_report
import uvloop
from harness import PAYLOAD_NAME, ROOT, BenchError, Swarm
from rich.console import Console
from rich.table import Table

from peerwire.units import parse_duration, parse_rate, parse_size

DEFAULT_OUT: Final = ROOT / "bench" / "results"
MAX_CLIENTS: Final = 500
EXIT_UNAVAILABLE: Final = 3
console = Console()

EPILOG = """\
defaults and why:
  --size 4M: dfget cuts it into 256 pieces of 16 KiB (about 500 pieces, 16 KiB at least), enough
  for 200 peers to trade. --client-bw 2mbit, --origin-bw 40mbit: the original test's 20:1
  (two 1000 Mb/s servers against 100 Mb/s clients), scaled so that 200 clients uploading at once
  move 400 Mbit/s through the bridge, well under the ~800 Mbit/s that cost 1.4 of this machine's
  2 cores in the namespace notes. --origin-budget defaults to origin-bw / client-bw (20): that
  many peers fetch from the origin at once, which fills its uplink. --interval 2s as in the demo.
  --queue 200ms: each tbf queues up to 200 ms of its rate. Measured here: 8 TCP flows converging
  on a 2 Mbit/s link got 20-67% of it with the notes' 50 ms (28 KB: there is no emulated delay,
  so the queue must hold every flow's window, or losses end in 200 ms retransmission timeouts)
  and 98-100% with 200 ms. TCP in the namespaces is CUBIC (set per route), not this machine's
  default BBR: without emulated delay, BBR takes the tbf burst for a 1 Gbit/s path, stays in its
  start-up gain and floods the queues (27% of the clients' segments retransmitted at 20 clients,
  against 6% with CUBIC).

what is measured:
  A client's completion time runs from the moment the harness tells every client to start
  (one line on each client's stdin, written in a loop; the JSON has each client's delay) to the
  moment its complete file exists: for P2P the ctime of the verified output, which dfget's
  rename sets. Median, p95 (nearest rank) and last over the clients. Origin bytes come from the
  origin's own counter (body bytes of its file responses). CPU is the whole machine's, mean over
  the phase and the busiest 1 s; above 85% the CPU, not the network, was measured. P2P clients
  seed until the last one is done. Every client's sha256 is checked after the clock stops.
  Per link, the shapers' byte and drop counters and each namespace's TCP retransmissions are
  read before and after each phase (JSON "links"); "download link busy" is a client's line
  bytes over its line rate times its completion time. dfget's own counters give the share of
  peer uploads nobody kept (duplicates).

bounds (payload rates: 95.6% of the tbf line rate, measured on this machine):
  Kumar-Ross  T_min = max(F/u_s, F/d_min, N*F/(u_s + sum u_i))
  client-server     = max(N*F/u_s, F/d_min)
  efficiency = T_min / P2P last; speed-up = native last / P2P last.
  Targets at 200 clients: P2P last <= 1.25 x T_min, origin <= 1.05 x F.

--loopback (no root or no namespaces): everything on 127.0.0.1; the client rate is enforced in
  software (dfget --rate and upload rate, a token bucket in the native client), the origin's
  uplink is NOT limited, so native times are optimistic. Labelled as such in the output, the
  JSON ("mode": "loopback") and the chart.

output: OUT/run/run-<time>-<Ns>.json (+ .png), OUT/run/latest.json and latest.png link to the
  newest. Everything (namespaces, processes, temp files) is removed at the end, on Ctrl-C and
  SIGTERM; a run never exceeds --max-time. Namespaces are named dfb-<run id>-...; --cleanup
  removes every dfb-* namespace and what runs in it, and the dfb-* work folders in /dev/shm,
  after a run was killed with SIGKILL (do not use it while a run is going on).
"""


def parse_clients(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of client counts: {text!r}") from None
    if not values or any(not 1 <= v <= MAX_CLIENTS for v in values):
        raise argparse.ArgumentTypeError(f"client counts must be 1..{MAX_CLIENTS}: {text!r}")
    return values


def bit_rate(text: str) -> float:
    """A line rate in bits/s: ``2mbit``; a bytes spelling (``250K``) is converted."""
    try:
        return float(parse_rate(text)) * 8
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bench/run.py",
        description=__doc__.split("\n\n")[0],
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add = parser.add_argument
    add("clients", nargs="?", type=parse_clients, help="N, or a sweep: 10,50,100,200")
    add("word", nargs="?", choices=["clients"], help=argparse.SUPPRESS)
    add("--size", type=parse_size, default=parse_size("4M"), help="file size (default 4M)")
    add("--client-bw", type=bit_rate, default=2e6, help="each client, up and down (default 2mbit)")
    add("--origin-bw", type=bit_rate, default=40e6, help="the origin's uplink (default 40mbit)")
    add("--origin-budget", type=int, help="tracker --origin-budget (default origin/client bw)")
    add("--interval", type=parse_duration, default=2.0, help="announce interval (default 2s)")
    add(
        "--queue",
        type=parse_duration,
        default=netns.TBF_LATENCY_MS / 1000,
        help=f"tbf queue of every link, as time (default {netns.TBF_LATENCY_MS}ms)",
    )
    add("--runs", type=int, default=1, help="repetitions of each N (default 1)")
    add("--out", type=Path, default=DEFAULT_OUT, help="results folder (default bench/results)")
    add("--max-time", type=parse_duration, default=3600.0, help="whole command (default 60m)")
    add("--loopback", action="store_true", help="no namespaces: software limits on 127.0.0.1")
    add("--no-plot", action="store_true", help="skip the PNG")
    add("--client-log", default="WARNING", help="clients' log level, e.g. INFO (default WARNING)")
    add("--keep-logs", action="store_true", help="keep every process's log in OUT/run/logs-*")
    add("--cleanup", action="store_true", help="remove what a killed run left (dfb-*), exit")
    return parser


def write_payload(path: Path, size_bytes: int) -> str:
    digest = hashlib.sha256()
    with path.open("wb") as stream:
        left = size_bytes
        while left:
            chunk = os.urandom(min(left, 8 << 20))
            digest.update(chunk)
            stream.write(chunk)
            left -= len(chunk)
    return digest.hexdigest()


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


async def _phases(swarm: Swarm) -> tuple[dict[str, Any], dict[str, Any]]:
    """Start the processes, run native then P2P; Ctrl-C/SIGTERM cancel it and close them."""
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, task.cancel)
    try:
        await swarm.start()
        console.print(f"  {swarm.clients} clients ready; native phase")
        native = await swarm.run_phase("native")
        console.print(f"  native done in {native['wall_s']:.1f} s; P2P phase")
        p2p = await swarm.run_phase("p2p")
        console.print(f"  P2P done in {p2p['wall_s']:.1f} s")
        return native, p2p
    finally:
        await swarm.close()


def _work_parent() -> Path:
    """Where the file and the clients' copies live: memory (/dev/shm), so no disk is measured."""
    shm = Path("/dev/shm")
    return shm if shm.is_dir() else Path(tempfile.gettempdir())


def run_one(
    args: argparse.Namespace, clients: int, deadline: float, logs_to: Path
) -> dict[str, Any]:
    """One N: files, namespaces (unless loopback), processes, both phases; all removed after.
    The processes' logs are kept in ``logs_to`` when a client or the run failed."""
    workdir = Path(tempfile.mkdtemp(prefix="dfb-", dir=_work_parent()))
    topology = None
    if not args.loopback:
        topology = netns.Topology(tbf_latency_ms=max(1, round(args.queue * 1000)))
    try:
        (workdir / "origin").mkdir()
        expected = write_payload(workdir / "origin" / PAYLOAD_NAME, args.size)
        budget = args.origin_budget or max(1, round(args.origin_bw / args.client_bw))
        hosts = None
        if topology is not None:
            started = time.monotonic()
            specs: list[tuple[str, float | None, float | None]] = [
                ("origin", args.origin_bw, None),
                ("tracker", None, None),
            ]
            specs += [(f"c{i}", args.client_bw, args.client_bw) for i in range(clients)]
            hosts = {h.namespace.removeprefix(topology.prefix): h for h in topology.build(specs)}
            console.print(
                f"  {len(specs)} namespaces ({topology.prefix}*) and their shapers in "
                f"{time.monotonic() - started:.1f} s"
            )
        swarm = Swarm(
            workdir=workdir,
            clients=clients,
            interval_s=args.interval,
            origin_budget=budget,
            deadline=deadline,
            hosts=hosts,
            client_rate_bps=run_report.payload_bps(args.client_bw) if args.loopback else None,
            link_counters=None if topology is None else topology.link_counters,
            client_log_level=args.client_log,
        )
        try:
            native_raw, p2p_raw = uvloop.run(_phases(swarm))
        except BenchError:
            shutil.copytree(workdir / "logs", logs_to, dirs_exist_ok=True)
            console.print(f"  the processes' logs are in {logs_to}")
            raise
        failed = any(c.get("error") for phase in (native_raw, p2p_raw) for c in phase["clients"])
        if failed or args.keep_logs:
            shutil.copytree(workdir / "logs", logs_to, dirs_exist_ok=True)
            console.print(f"  the processes' logs are in {logs_to}")
    finally:
        if topology is not None:
            topology.teardown()
        shutil.rmtree(workdir, ignore_errors=True)
    run = run_report.build_run(
        clients=clients,
        size_bytes=args.size,
        client_bw_bits=args.client_bw,
        origin_bw_bits=args.origin_bw,
        native=run_report.summarize_phase(native_raw, expected, args.size),
        p2p=run_report.summarize_phase(p2p_raw, expected, args.size),
    )
    run["origin_budget"] = budget
    run["interval_s"] = args.interval
    run["sha256"] = expected
    run["namespace_prefix"] = None if topology is None else topology.prefix
    run["tbf_queue_ms"] = None if topology is None else topology.tbf_latency_ms
    return run


def print_run(run: dict[str, Any], mode: str) -> None:
    label = "" if mode == "netns" else "  [LOOPBACK: software limits, origin not limited]"
    table = Table(title=f"{run['clients']} clients, {run['size_bytes'] / 2**20:g} MiB{label}")
    table.add_column("")
    table.add_column("native", justify="right")
    table.add_column("P2P", justify="right")
    for row in run_report.table_rows(run):
        table.add_row(*row)
    console.print(table)
    for note in run_report.target_notes(run):
        console.print(f"  {note}")
    if timeline := run_report.timeline_note(run):
        console.print(f"  {timeline}")
    for warning in run["warnings"]:
        console.print(f"  [bold red]warning:[/] {warning}")


def _commit() -> str:
    done = subprocess.run(
        ["git", "-C", str(ROOT), "describe", "--always", "--dirty"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    return done.stdout.strip()


def _diff_sha256() -> str:
    """Identifies uncommitted changes of the code under test (a '-dirty' commit alone cannot)."""
    done = subprocess.run(
        ["git", "-C", str(ROOT), "diff", "HEAD", "--", "peerwire", "tracker", "dfget", "bench"],
        capture_output=True, check=False,
    )  # fmt: skip
    return hashlib.sha256(done.stdout).hexdigest()[:16] if done.stdout else ""


def _link_latest(target: Path, name: str) -> None:
    link = target.parent / name
    temporary = target.parent / f".{name}.{os.getpid()}"
    temporary.unlink(missing_ok=True)
    temporary.symlink_to(target.name)
    os.replace(temporary, link)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.cleanup:
        removed = netns.cleanup_leftovers() if os.geteuid() == 0 else []
        folders = [p for p in _work_parent().glob("dfb-*") if p.is_dir()]
        for folder in folders:
            shutil.rmtree(folder, ignore_errors=True)
        console.print(
            f"bench: removed {len(removed)} namespaces {' '.join(removed)} and "
            f"{len(folders)} work folders"
        )
        return 0
    if args.clients is None:
        build_parser().error("say how many clients: bench/run.py 200 clients")
    if not args.loopback and (reason := netns.unavailable_reason()) is not None:
        console.print(
            f"bench: cannot emulate links here: {reason}.\n"
            "  Run as root with iproute2 (ip, tc), or add --loopback: all processes on "
            "127.0.0.1 with software rate limits and an unlimited origin, labelled as such."
        )
        return EXIT_UNAVAILABLE
    signal.signal(signal.SIGTERM, _on_sigterm)
    mode = "loopback" if args.loopback else "netns"
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%d-%H%M%S")
    out_dir = args.out / "run"
    out_dir.mkdir(parents=True, exist_ok=True)
    out_json = out_dir / f"run-{stamp}-{'_'.join(map(str, args.clients))}.json"
    document: dict[str, Any] = {
        "benchmark": "bench/run.py",
        "mode": mode,
        "command": " ".join(["bench/run.py", *(argv if argv is not None else sys.argv[1:])]),
        "started": stamp,
        "commit": _commit(),
        "uncommitted_diff_sha256": _diff_sha256(),
        "machine": {
            "cpus": psutil.cpu_count(),
            "memory_bytes": psutil.virtual_memory().total,
            "python": platform.python_version(),
            "kernel": platform.release(),
            "load_average_at_start": os.getloadavg(),
        },
        "runs": [],
    }
    deadline = time.monotonic() + args.max_time
    try:
        for clients in args.clients:
            for repetition in range(args.runs):
                console.print(f"[bold]bench:[/] {clients} clients ({mode}), run {repetition + 1}")
                logs_to = out_dir / f"logs-{stamp}-{clients}-{repetition + 1}"
                run = run_one(args, clients, deadline, logs_to)
                document["runs"].append(run)
                out_json.write_text(json.dumps(document, indent=1) + "\n")
                print_run(run, mode)
    except (KeyboardInterrupt, asyncio.CancelledError):
        console.print("bench: interrupted; everything was cleaned up")
        return 130
    except (BenchError, netns.NetnsError) as exc:
        console.print(f"[bold red]bench: failed:[/] {exc}")
        return 1
    _link_latest(out_json, "latest.json")
    console.print(f"bench: results in {out_json}")
    if not args.no_plot:
        import plot

        png = plot.plot(document, out_json.with_suffix(".png"))
        _link_latest(png, "latest.png")
        console.print(f"bench: chart in {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
