"""Ten dfdaemons, one origin, one file pulled by all at once: with a dftracker, and without one
(``--coordinator serf``, a Serf agent per node), side by side.

    .venv/bin/python bench/serf_vs_tracker.py [--nodes 10] [--size 64M] [--runs 3]

Each run starts the nodes afresh (their caches empty), hands one download to every daemon at
the same moment (``dfget`` through each daemon's socket) and measures the last completion (from
that moment), the bytes the origin sent, and - with Serf - the gossip: every agent reports
memberlist's ``udp.sent`` and ``tcp.sent`` byte counters to a statsd listener of this script
(Serf's ``statsd_addr``), summed over the download and divided by nodes and seconds. The
agents use Serf's LAN profile (its defaults). The nodes share a generated cluster secret, as a
fleet's should (the tracker and the agents' gossip key too), so no node checks a manifest
against the origin. Modes alternate run by run; each run starts from empty caches. The load
average is recorded before each run (the machine may be shared).

From the measured events a node fires per download and Serf's published gossip defaults
(memberlist's LAN profile: fanout 3, 200 ms interval, 1400-byte packets, each message sent
``4 * ceil(log10(N+1))`` times by every node), the script works out the event rate a 1,000-node
cluster would carry if every node pulled at once, against what its gossip can carry. JSON goes
to ``bench/results/serf_vs_tracker.json``.
"""

from __future__ import annotations

import argparse
import base64
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from dfget.coordinators.serfwire import gossip_key  # noqa: E402

PYTHON = sys.executable
GOSSIP_PORT = 7946
#: memberlist's LAN defaults (``DefaultLANConfig``), the figures Serf's convergence simulator
#: starts from.
FANOUT, GOSSIP_INTERVAL_S, PACKET_BYTES, RETRANSMIT_MULT = 3, 0.2, 1400, 4


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def first_line(process: subprocess.Popen[str], what: str) -> str:
    assert process.stdout is not None
    line = process.stdout.readline().strip()
    if not line.startswith("listening"):
        raise SystemExit(f"{what} did not start: {line!r}")
    return line


def stop(process: subprocess.Popen[Any]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@contextmanager
def running(
    command: list[str], what: str, **kwargs: Any
) -> Iterator[tuple[subprocess.Popen[str], str]]:
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, cwd=ROOT, **kwargs)
    try:
        yield process, first_line(process, what)
    finally:
        stop(process)


class StatsdCounter:
    """A statsd listener summing memberlist's byte counters of every agent."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.address = f"127.0.0.1:{self.sock.getsockname()[1]}"
        self.bytes = 0.0
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        pattern = re.compile(r"memberlist\.(udp|tcp)\.sent:([0-9.]+)\|c")
        while not self._stop:
            try:
                data = self.sock.recv(65535).decode(errors="replace")
            except TimeoutError:
                continue
            for match in pattern.finditer(data):
                self.bytes += float(match.group(2))

    def close(self) -> None:
        self._stop = True
        self._thread.join()
        self.sock.close()


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as answer:
        return json.loads(answer.read())


def metric_total(url: str, family: str) -> float:
    with urllib.request.urlopen(url, timeout=10) as answer:
        text = answer.read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if re.match(rf"{family}(\{{|\s)", line)
    )


def run_once(
    mode: str, work: Path, url: str, origin: str, nodes: int, secret: str
) -> dict[str, Any]:
    net = f"127.{100 + os.getpid() % 100}.{1 + int(time.time()) % 200}"
    load = os.getloadavg()[0]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DFDAEMON_", "DFGET_"))}
    env["DRAGONFLY_SECRET"] = secret
    run = work / f"{mode}-{time.monotonic_ns()}"
    run.mkdir()
    with ExitStack() as stack:
        stack.callback(shutil.rmtree, run, True)
        extra: list[list[str]] = [[] for _ in range(nodes)]
        statsd = None
        if mode == "tracker":
            secret_file = run / "secret"
            secret_file.write_text(secret)
            command = [PYTHON, "-m", "tracker.cli", "serve", "--port", "0",
                       "--secret-file", str(secret_file)]  # fmt: skip
            _, line = stack.enter_context(running(command, "dftracker"))
            tracker = line.split()[1].removesuffix("/announce")
            extra = [["--tracker", tracker] for _ in range(nodes)]
        else:
            statsd = StatsdCounter()
            stack.callback(statsd.close)
            config = run / "agent.json"
            config.write_text(json.dumps({"statsd_addr": statsd.address}))
            keyring = run / "keyring.json"
            keyring.write_text(json.dumps([gossip_key(secret.encode())]))
            for i in range(1, nodes + 1):
                rpc = f"127.0.0.1:{free_port()}"
                command = [shutil.which("serf") or "serf", "agent", f"-node=b{i}",
                           f"-bind={net}.{i}:{GOSSIP_PORT}", f"-rpc-addr={rpc}",
                           f"-config-file={config}", f"-keyring-file={keyring}",
                           "-log-level=err"]  # fmt: skip
                if i > 1:
                    command.append(f"-join={net}.1:{GOSSIP_PORT}")
                agent = subprocess.Popen(
                    command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
                )
                stack.callback(stop, agent)
                time.sleep(0.3)
                extra[i - 1] = ["--coordinator", "serf", "--serf-rpc", rpc, "--stats-port", "0"]
        daemons: list[tuple[Path, str]] = []
        for i in range(1, nodes + 1):
            sock = run / f"{i}.sock"
            command = [PYTHON, "-m", "proxy.cli", "--proxy-port", "0", "--socket", str(sock),
                       "--cache-dir", str(run / f"{i}-cache"), *extra[i - 1]]  # fmt: skip
            _, line = stack.enter_context(running(command, f"dfdaemon {i}", env=env))
            stats = line.split(" stats ")[1] if " stats " in line else ""
            daemons.append((sock, stats))
        if mode == "serf":
            deadline = time.monotonic() + 60
            while any(
                get_json(s + "/stats")["serf"]["members"].get("alive", 0) < nodes
                for _, s in daemons
            ):
                if time.monotonic() > deadline:
                    raise SystemExit("the Serf agents did not meet")
                time.sleep(0.2)
        before = get_json(origin + "/__stats")["bytes_sent"]
        gossip_before = statsd.bytes if statsd else 0.0
        started = time.monotonic()
        downloads = []
        for i, (sock, _) in enumerate(daemons, 1):
            denv = dict(env, DFGET_DAEMON_SOCKET=str(sock))
            command = [PYTHON, "-m", "dfget.cli", url, "-O", str(run / f"out-{i}"), "-q"]
            downloads.append(subprocess.Popen(command, env=denv, cwd=ROOT, stderr=subprocess.PIPE))
        finished = []
        for download in downloads:
            _, err = download.communicate(timeout=600)
            if download.returncode != 0:
                raise SystemExit(f"a download failed: {err.decode()}")
            finished.append(time.monotonic() - started)
        last = max(finished)
        result: dict[str, Any] = {
            "mode": mode,
            "load_before": round(load, 2),
            "last_completion_s": round(last, 2),
            "origin_bytes": get_json(origin + "/__stats")["bytes_sent"] - before,
        }
        if statsd is not None:
            time.sleep(1.5)  # the agents flush their counters every second
            gossip = statsd.bytes - gossip_before
            result["gossip_bytes_per_node_per_s"] = round(gossip / nodes / last)
            result["events_fired"] = sum(
                metric_total(s + "/metrics", "dragonfly_serf_events_sent_total") for _, s in daemons
            )
            result["event_bytes_fired"] = sum(
                metric_total(s + "/metrics", "dragonfly_serf_event_bytes_sent_total")
                for _, s in daemons
            )
            result["queries_sent"] = sum(
                metric_total(s + "/metrics", "dragonfly_serf_queries_sent_total")
                for _, s in daemons
            )
        return result


def extrapolate(serf_runs: list[dict[str, Any]], nodes: int, target: int = 1000) -> dict[str, Any]:
    events = sum(r["events_fired"] for r in serf_runs) / len(serf_runs)
    event_bytes = sum(r["event_bytes_fired"] for r in serf_runs) / len(serf_runs)
    seconds = sum(r["last_completion_s"] for r in serf_runs) / len(serf_runs)
    per_node = events / nodes
    mean_bytes = event_bytes / max(1.0, events)
    sends = RETRANSMIT_MULT * math.ceil(math.log10(target + 1))
    capacity_bps = FANOUT * PACKET_BYTES / GOSSIP_INTERVAL_S
    carry = capacity_bps / (sends * (mean_bytes + 16))
    return {
        "events_per_node_per_download": round(per_node, 1),
        "mean_event_bytes": round(mean_bytes),
        "sends_per_event_per_node": sends,
        "gossip_capacity_bytes_per_node_per_s": round(capacity_bps),
        "cluster_event_rate_gossip_carries_per_s": round(carry, 1),
        "cluster_event_rate_if_all_pull_at_once_per_s": round(per_node * target / seconds, 1),
        "seconds_to_gossip_one_simultaneous_pull": round(per_node * target / carry),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=10)
    parser.add_argument("--size", default="64M", help="file size (K/M/G)")
    parser.add_argument("--runs", type=int, default=3, help="runs of each mode, alternating")
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/serf_vs_tracker.json")
    args = parser.parse_args()
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    size = int(args.size[:-1]) * units[args.size[-1]] if args.size[-1] in units else int(args.size)
    if shutil.which("serf") is None:
        raise SystemExit("needs Debian's serf package (apt-get install serf)")
    with tempfile.TemporaryDirectory(prefix="serf-bench-") as tmp:
        work = Path(tmp)
        files = work / "files"
        files.mkdir()
        with (files / "blob.bin").open("wb") as out:
            for _ in range(size // (1 << 20)):
                out.write(os.urandom(1 << 20))
        command = [PYTHON, "tools/origin.py", str(files), "--port", "0"]
        with running(command, "origin") as (_, line):
            origin = line.split()[1]
            url = origin + "/files/blob.bin"
            runs = []
            secret = base64.b64encode(os.urandom(32)).decode()
            for index in range(args.runs * 2):
                mode = ("tracker", "serf")[index % 2]
                result = run_once(mode, work, url, origin, args.nodes, secret)
                result["origin_copies"] = round(result["origin_bytes"] / size, 3)
                print(json.dumps(result), flush=True)
                runs.append(result)
    document = {
        "benchmark": "serf_vs_tracker",
        "command": " ".join(["bench/serf_vs_tracker.py", *sys.argv[1:]]),
        "nodes": args.nodes,
        "size_bytes": size,
        "runs": runs,
        "extrapolation_1000_nodes": extrapolate(
            [r for r in runs if r["mode"] == "serf"], args.nodes
        ),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(document, indent=2) + "\n")
    print(json.dumps(document["extrapolation_1000_nodes"], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
