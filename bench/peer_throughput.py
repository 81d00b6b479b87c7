"""Peer-to-peer throughput on loopback, with aria2c downloading from nginx as the native baseline.

One peer (``python -m peerwire fetch``) downloads a file of random bytes from one seed
(``python -m peerwire seed``); in the same run aria2c downloads the same file from nginx. All
files live in one temp dir under /dev/shm, nothing is rate limited, and the bench checks the
sha256 of every output itself after the clock stops. Run with --help for what is measured and
how; results go to bench/results/peer_throughput.json. Installs nothing: ``make bench`` runs
tools/system-deps.sh for aria2c and nginx first.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import datetime
import hashlib
import http.client
import importlib.metadata
import importlib.util
import json
import mmap
import os
import platform
import queue
import resource
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil
from rich.console import Console
from rich.table import Table

from peerwire.units import parse_size

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS_PATH = REPO_ROOT / "bench" / "results" / "peer_throughput.json"
PROFILE_PATH = REPO_ROOT / "bench" / "results" / "peer_fetch_profile.svg"
GB = 1e9  # 1 GB = 1e9 bytes throughout the report
TARGET_RATIO = 1.0
STOP_GRACE_S = 5.0
LOG_TAIL_LINES = 40
CHUNK_BYTES = 16 * 1024 * 1024
DFGET = [sys.executable, "-m", "dfget.cli"]

EPILOG = """\
what is measured:
  A file of --size random bytes is written to a temp dir under /dev/shm; nginx and one
  `python -m peerwire seed` start once and serve it for the whole run. Each round runs every
  aria2c configuration (one per --aria2-connections value), then one `python -m peerwire fetch`;
  --warmup untimed rounds come first, then --runs timed ones, so drift of the machine falls on
  both sides alike. Time is wall clock from process start to exit, interpreter start-up
  included for the peer as for aria2c; fetch's own elapsed_s is shown beside it
  ("self-reported"). GB/s means 1e9 bytes per second. Ratio = median p2p GB/s / median GB/s of
  the first --aria2-connections value (the baseline); the ratio to the fastest aria2c
  configuration is given too. Target: >= 1.0x. CPU columns (medians): user+system seconds of
  the client, of the server (nginx or seed), and of everything else on the machine during the
  run ("other": kernel work charged to neither, and other programs; a noisy run shows there).
  After each download the output's sha256 is checked against the source, outside the clock,
  and the output is deleted.
  Before every run of either side, --prefault bytes of memory are touched and freed: in this VM
  freed memory goes back to the host (virtio-balloon free page reporting) and the first write
  to each page is slow, which alone halved aria2c's figure and made runs vary 3x.

native baseline:
  nginx: 1 worker, sendfile on, tcp_nopush on, access_log off, 127.0.0.1:<free port>.
  aria2c --no-conf --file-allocation=none --allow-overwrite=true --max-tries=1 -x N -s N for
  each N in --aria2-connections (N=1 is aria2c's default: one stream). aria2c is not given
  --checksum (that is a second pass over the file), while the peer verifies every piece: the
  baseline is the harder one to beat.

prerequisites:
  aria2c and nginx on PATH or in /usr/sbin (`make bench` installs them through
  tools/system-deps.sh; this script installs nothing), and `python -m peerwire` importable by
  this interpreter (unless --native-only). /dev/shm with 3 x --size free, and memory for it
  plus --prefault.

exit status:
  0 done (whatever the ratio), 1 a step failed (log tail printed and kept in the JSON), 2 bad
  arguments or a missing prerequisite, 130 interrupted. nginx, the seed and the temp dir are
  removed on every way out, Ctrl-C and SIGTERM included. Every step has a timeout.
"""


class BenchError(Exception):
    """A step failed; the message carries the evidence (exit code, command, log tail)."""


@dataclass
class Run:
    """One timed download."""

    wall_s: float
    gbps: float
    client_cpu_s: float
    server_cpu_s: float
    other_cpu_s: float  # everything else the machine did meanwhile: how noisy this run was
    reported_elapsed_s: float | None = None
    reported_gbps: float | None = None
    report: dict[str, Any] | None = None


@dataclass
class Side:
    """All runs of one client configuration."""

    name: str
    output: Path
    command: list[str] = field(default_factory=list)
    runs: list[Run] = field(default_factory=list)
    error: str | None = None

    def median_gbps(self) -> float | None:
        return statistics.median(r.gbps for r in self.runs) if self.runs else None

    def median_reported_gbps(self) -> float | None:
        values = [r.reported_gbps for r in self.runs if r.reported_gbps is not None]
        return statistics.median(values) if values else None


def size_arg(text: str) -> int:
    """A size flag: K, M, G, T are binary multiples, as peerwire.units reads them."""
    try:
        size_bytes = parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc
    if size_bytes < 0:
        raise argparse.ArgumentTypeError(f"size must not be negative: {text!r}")
    return size_bytes


def tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        kept = path.read_text(errors="replace").rstrip().splitlines()[-lines:]
    except OSError:
        return f"(no {path.name})"
    return "\n".join(kept) if kept else f"({path.name} is empty)"


def start(cmd: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
    """Each child leads its own process group, so stop_group reaches its children too and a
    terminal's Ctrl-C reaches only us (we then stop everything in order)."""
    return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, start_new_session=True, **kwargs)


def stop_group(proc: subprocess.Popen[Any], sig: int = signal.SIGTERM) -> int | None:
    """Signal the process group, wait, escalate to SIGKILL. Returns the leader's exit code."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=STOP_GRACE_S)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)  # whatever the leader left behind
    return proc.returncode


def tree_cpu_s(pid: int) -> float:
    """User+system CPU seconds of a process and its live descendants (0 for pid 0)."""
    if pid == 0:
        return 0.0
    total = 0.0
    with contextlib.suppress(psutil.NoSuchProcess):
        root = psutil.Process(pid)
        for proc in (root, *root.children(recursive=True)):
            with contextlib.suppress(psutil.NoSuchProcess):
                times = proc.cpu_times()
                total += times.user + times.system
    return total


def prefault(size_bytes: int) -> None:
    """Touch then free size_bytes of anonymous memory, so that the next run gets pages the
    hypervisor already backs. In a VM with free page reporting (virtio-balloon), freed pages are
    handed back to the host and the first write to each is slow; on this machine that halved
    aria2c's figure and made runs vary 3x. Done before every run of every side alike."""
    if size_bytes <= 0:
        return
    with mmap.mmap(-1, size_bytes) as memory:
        for offset in range(0, size_bytes, mmap.PAGESIZE):
            memory[offset] = 1


def make_random_file(path: Path, size_bytes: int) -> str:
    """Write size_bytes of random data; return its sha256."""
    digest = hashlib.sha256()
    with path.open("wb") as f:
        remaining = size_bytes
        while remaining:
            chunk = os.urandom(min(CHUNK_BYTES, remaining))
            digest.update(chunk)
            f.write(chunk)
            remaining -= len(chunk)
    return digest.hexdigest()


def machine_busy_cpu_s() -> float:
    """CPU seconds the whole machine has spent busy (all CPUs, stolen time included)."""
    times = psutil.cpu_times()
    return float(sum(times)) - times.idle - getattr(times, "iowait", 0.0)


def wait_exit(pid: int, timeout_s: float) -> bool:
    """Block until the process exits (True) or timeout_s passes (False). A pidfd wakes us the
    moment it exits; Popen.wait(timeout=...) polls every 50 ms, which skewed every figure."""
    pidfd = os.pidfd_open(pid)
    try:
        readable, _, _ = select.select([pidfd], [], [], timeout_s)
    finally:
        os.close(pidfd)
    return bool(readable)


def run_timed(
    cmd: Sequence[str], *, name: str, logs: Path, timeout_s: float, server_pid: int
) -> tuple[float, float, float, float, Path]:
    """Run a client to exit 0. Returns wall_s, the CPU seconds of client, server and everything
    else on the machine, and the path of its stdout."""
    out_path, err_path = logs / f"{name}.stdout", logs / f"{name}.stderr"
    with out_path.open("wb") as out, err_path.open("wb") as err:
        usage_before = resource.getrusage(resource.RUSAGE_CHILDREN)
        server_before = tree_cpu_s(server_pid)
        machine_before = machine_busy_cpu_s()
        started = time.perf_counter()
        proc = start(cmd, stdout=out, stderr=err, cwd=REPO_ROOT)
        try:
            exited = wait_exit(proc.pid, timeout_s)
            wall_s = time.perf_counter() - started
            if not exited:
                raise BenchError(f"{name} timed out after {timeout_s:.0f}s\n{tail(err_path)}")
            code = proc.wait()
        except BaseException:  # timeout, Ctrl-C, SIGTERM: never leave the client running
            stop_group(proc, signal.SIGKILL)
            raise
        machine_cpu_s = machine_busy_cpu_s() - machine_before
        server_cpu_s = tree_cpu_s(server_pid) - server_before
        usage_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    client_cpu_s = sum(
        getattr(usage_after, f) - getattr(usage_before, f) for f in ("ru_utime", "ru_stime")
    )
    if code != 0:
        raise BenchError(
            f"{name} exited {code}: {' '.join(cmd)}\n--- stderr (tail) ---\n{tail(err_path)}"
            f"\n--- stdout (tail) ---\n{tail(out_path)}"
        )
    other_cpu_s = max(0.0, machine_cpu_s - client_cpu_s - server_cpu_s)
    return wall_s, client_cpu_s, server_cpu_s, other_cpu_s, out_path


def check_output(path: Path, expected_sha256: str, name: str) -> None:
    """The output must exist and match the source; it is deleted either way to free memory."""
    if not path.exists():
        raise BenchError(f"{name} exited 0 but {path} does not exist")
    try:
        with path.open("rb") as f:
            actual = hashlib.file_digest(f, "sha256").hexdigest()
    finally:
        path.unlink()
    if actual != expected_sha256:
        raise BenchError(f"{name}: sha256 mismatch: got {actual}, want {expected_sha256}")


def find_program(name: str) -> str | None:
    """PATH, then /usr/sbin and /sbin (nginx lives there; not on every PATH)."""
    candidates = (shutil.which(name), f"/usr/sbin/{name}", f"/sbin/{name}")
    return next((p for p in candidates if p and os.access(p, os.X_OK)), None)


# --- native side: nginx + aria2c ----------------------------------------------------------------

ARIA2C_FLAGS = (
    *("--no-conf=true", "--allow-overwrite=true", "--auto-file-renaming=false"),
    *("--file-allocation=none", "--max-tries=1", "--connect-timeout=5"),
    *("--summary-interval=0", "--show-console-readout=false", "--console-log-level=error"),
    "--download-result=hide",
)

NGINX_CONF = """\
# Written by bench/peer_throughput.py: one worker, sendfile, no access log, loopback only.
daemon off;
worker_processes 1;
pid {root}/nginx.pid;
error_log {root}/error.log warn;
{user}
events {{ worker_connections 64; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    default_type application/octet-stream;
    types {{ }}
    client_body_temp_path {root}/tmp-body;
    proxy_temp_path {root}/tmp-proxy;
    fastcgi_temp_path {root}/tmp-fastcgi;
    uwsgi_temp_path {root}/tmp-uwsgi;
    scgi_temp_path {root}/tmp-scgi;
    server {{
        listen 127.0.0.1:{port};
        root {www};
    }}
}}
"""


@contextlib.contextmanager
def nginx_server(nginx: str, tmp: Path, src: Path, timeout_s: float) -> Iterator[tuple[str, int]]:
    """Serve src's directory on a free loopback port; yield (URL of src, master pid)."""
    root = tmp / "nginx"
    root.mkdir()
    with socket.socket() as sock:  # a free port; the tiny race with other programs is accepted
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    user = "user root;" if os.geteuid() == 0 else ""  # workers must read the 0700 temp dir
    conf = root / "nginx.conf"
    conf.write_text(NGINX_CONF.format(root=root, www=src.parent, port=port, user=user))
    err_log = root / "error.log"
    with (root / "stderr").open("wb") as err:
        cmd = [nginx, "-p", f"{root}/", "-e", str(err_log), "-c", str(conf)]
        proc = start(cmd, stdout=err, stderr=err)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if proc.poll() is not None:
                raise BenchError(f"nginx exited {proc.returncode} at start\n{tail(err_log)}")
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1.0)
                conn.request("HEAD", f"/{src.name}")
                resp = conn.getresponse()
                status, length = resp.status, resp.getheader("Content-Length")
                conn.close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise BenchError(f"nginx not answering after {timeout_s:.0f}s") from None
                time.sleep(0.05)
        if status != 200 or length != str(src.stat().st_size):
            raise BenchError(f"nginx HEAD /{src.name}: status {status}, {length} bytes")
        yield f"http://127.0.0.1:{port}/{src.name}", proc.pid
    finally:
        stop_group(proc)


def aria2c_command(
    aria2c: str, url: str, out: Path, connections: int, timeout_s: float
) -> list[str]:
    """aria2c as a plain single-host HTTP client: no config file, no preallocation, no retries."""
    return [
        aria2c,
        *ARIA2C_FLAGS,
        f"--dir={out.parent}",
        f"--out={out.name}",
        f"--max-connection-per-server={connections}",
        f"--split={connections}",
        f"--timeout={max(1, int(timeout_s))}",
        url,
    ]


# --- P2P side: python -m peerwire seed / fetch --------------------------------------------------


@contextlib.contextmanager
def peer_seed(
    src: Path, tmp: Path, piece_length: str | None, timeout_s: float
) -> Iterator[tuple[str, Path, int]]:
    """Start the seed; yield (HOST:PORT, manifest path, pid) once it prints "listening"."""
    manifest, err_path = tmp / "manifest.json", tmp / "seed.stderr"
    cmd = [sys.executable, "-m", "peerwire", "seed", str(src), "--listen", "127.0.0.1:0"]
    cmd += ["--piece-length", piece_length] if piece_length else []
    cmd += ["--manifest-out", str(manifest)]
    lines: queue.Queue[str | None] = queue.Queue()
    with err_path.open("wb") as err:
        proc = start(cmd, stdout=subprocess.PIPE, stderr=err, cwd=REPO_ROOT, text=True)
    stdout = proc.stdout
    assert stdout is not None

    def pump() -> None:  # drains stdout for the seed's whole life so it never blocks on a print
        for line in stdout:
            lines.put(line.rstrip("\n"))
        lines.put(None)

    threading.Thread(target=pump, name="seed-stdout", daemon=True).start()
    try:
        deadline, seen = time.monotonic() + timeout_s, list[str]()
        while not (seen and seen[-1].startswith("listening ")):
            try:
                line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise BenchError(f"seed not listening after {timeout_s:.0f}s") from None
            if line is None:
                proc.wait(timeout=STOP_GRACE_S)
                raise BenchError(
                    f"seed exited {proc.returncode} before listening: {' '.join(cmd)}\n--- stdout "
                    f"---\n{chr(10).join(seen)}\n--- stderr (tail) ---\n{tail(err_path)}"
                )
            seen.append(line)
        address = seen[-1].split(" ", 1)[1].strip()
        if not address.startswith("127.0.0.1:"):
            raise BenchError(f"seed listens on {address!r}; expected 127.0.0.1:PORT")
        if not manifest.exists():
            raise BenchError(f"seed is listening but wrote no manifest at {manifest}")
        yield address, manifest, proc.pid
        if proc.poll() is not None:
            raise BenchError(
                f"seed died during the runs (exit {proc.returncode})\n{tail(err_path)}"
            )
    finally:
        code = stop_group(proc)
        if code not in (0, None, -signal.SIGTERM):
            print(f"note: seed exited {code} after SIGTERM (the contract says 0)", file=sys.stderr)


@contextlib.contextmanager
def dfget_seed(url: str, tmp: Path, timeout_s: float) -> Iterator[tuple[str, int]]:
    """A dftracker and a dfget that downloads ``url`` from the origin and then seeds it; yield
    (the tracker's URL, the seeder's pid) once the seeder's copy is complete."""
    copy = tmp / "dfget-seed" / "blob.bin"
    copy.parent.mkdir()
    tracker = start(
        [sys.executable, "-m", "tracker.cli", "serve", "--port", "0", "--interval", "2s"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        cwd=REPO_ROOT,
        text=True,
    )
    seeder: subprocess.Popen[Any] | None = None
    try:
        assert tracker.stdout is not None
        line = tracker.stdout.readline().strip()
        if not line.startswith("listening "):
            raise BenchError(f"dftracker did not start: {line!r}")
        tracker_url = line.split()[1].removesuffix("/announce")
        err_path = tmp / "dfget-seed.stderr"
        with err_path.open("wb") as err:
            seeder = start(
                [*DFGET, url, "-O", str(copy), "--tracker", tracker_url, "--seed-time", "1h"],
                stdout=subprocess.DEVNULL,
                stderr=err,
                cwd=REPO_ROOT,
            )
        deadline = time.monotonic() + timeout_s
        while not copy.exists():  # the file appears complete and verified, never partial
            if seeder.poll() is not None:
                raise BenchError(f"the seeding dfget exited {seeder.returncode}\n{tail(err_path)}")
            if time.monotonic() > deadline:
                raise BenchError(f"the seeding dfget had no copy after {timeout_s:.0f}s")
            time.sleep(0.05)
        yield tracker_url, seeder.pid
    finally:
        if seeder is not None:
            stop_group(seeder)
        stop_group(tracker)


def dfget_command(url: str, tracker_url: str, out: Path) -> list[str]:
    """``dfget URL`` as a user types it, with the tracker, leaving as soon as it is done."""
    return [*DFGET, url, "-O", str(out), "--tracker", tracker_url, "--seed-time", "0", "--quiet"]


def fetch_command(manifest: Path, address: str, out: Path) -> list[str]:
    args = ["--manifest", str(manifest), "--peer", address, "-O", str(out), "--json"]
    return [sys.executable, "-m", "peerwire", "fetch", *args]


def parse_fetch_report(stdout_path: Path, size_bytes: int) -> dict[str, Any]:
    """The one JSON object `fetch --json` prints (the last line if it printed more)."""
    text = stdout_path.read_text(errors="replace").strip()
    report: Any = None
    for candidate in (text, text.splitlines()[-1] if text else ""):
        with contextlib.suppress(json.JSONDecodeError):
            report = json.loads(candidate)
            break
    if not isinstance(report, dict) or not {"bytes", "elapsed_s", "pieces_failed"} <= set(report):
        wanted = "an object with bytes, elapsed_s, pieces_failed"
        raise BenchError(f"fetch --json printed no {wanted}:\n{text[-2000:]}")
    if report["bytes"] != size_bytes:
        raise BenchError(f"fetch reports {report['bytes']} bytes; the file has {size_bytes}")
    return report


# --- report -------------------------------------------------------------------------------------


def first_line(cmd: Sequence[str]) -> str | None:
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    text = (done.stdout or done.stderr).strip()  # nginx -v answers on stderr
    return text.splitlines()[0] if text and done.returncode == 0 else None


def machine_info(aria2c: str | None, nginx: str | None) -> dict[str, Any]:
    model = None
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        model = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), None)
    packages: dict[str, str | None] = {}
    for dist in ("uvloop", "psutil"):
        try:
            packages[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            packages[dist] = None
    return {
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "cpu_model": model,
        "memory_bytes": psutil.virtual_memory().total,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "aria2c": first_line([aria2c, "--version"]) if aria2c else None,
        "nginx": first_line([nginx, "-v"]) if nginx else None,
        "packages": packages,
        "git_commit": first_line(["git", "-C", str(REPO_ROOT), "rev-parse", "--verify", "HEAD"]),
    }


def summarise(natives: list[Side], p2p: Side | None) -> dict[str, Any]:
    """Headline ratio against the first aria2c configuration, and against the fastest."""
    p2p_gbps = p2p.median_gbps() if p2p else None
    measured = [s for s in natives if s.runs]
    best = max(measured, key=lambda s: s.median_gbps() or 0.0, default=None)
    base = natives[0] if natives and natives[0].runs else None

    def over(side: Side | None) -> float | None:
        native_gbps = side.median_gbps() if side else None
        return p2p_gbps / native_gbps if p2p_gbps is not None and native_gbps else None

    return {
        "baseline": base.name if base else None,
        "ratio_p2p_over_native": over(base),
        "best_native": best.name if best else None,
        "ratio_p2p_over_best_native": over(best),
        "target_ratio": TARGET_RATIO,
        "meets_target": None if over(base) is None else (over(base) or 0.0) >= TARGET_RATIO,
    }


def print_table(console: Console, sides: list[Side], summary: dict[str, Any], size: int) -> None:
    table = Table(title=f"{size:,} bytes over loopback, /dev/shm to /dev/shm (GB = 1e9 bytes)")
    table.add_column("client")
    for column in ("median GB/s", "runs GB/s", "self-reported", "CPU s: client", "server", "other"):
        table.add_column(column, justify="right")
    for side in sides:
        if not side.runs:
            table.add_row(side.name, "[red]failed[/red]")
            continue
        reported = side.median_reported_gbps()
        table.add_row(
            side.name,
            f"{side.median_gbps():.3f}",
            " ".join(f"{r.gbps:.3f}" for r in side.runs),
            "" if reported is None else f"{reported:.3f}",
            f"{statistics.median(r.client_cpu_s for r in side.runs):.2f}",
            f"{statistics.median(r.server_cpu_s for r in side.runs):.2f}",
            f"{statistics.median(r.other_cpu_s for r in side.runs):.2f}",
        )
    console.print(table)
    if summary["ratio_p2p_over_native"] is not None:
        line = f"ratio p2p / {summary['baseline']}: {summary['ratio_p2p_over_native']:.3f}x"
        if summary["best_native"] != summary["baseline"]:
            line += (
                f"; p2p / {summary['best_native']}: {summary['ratio_p2p_over_best_native']:.3f}x"
            )
        console.print(f"{line} (target >= {TARGET_RATIO:.1f}x)")
    if summary.get("ratio_dfget_over_native") is not None:
        console.print(
            f"ratio dfget URL (end to end) / {summary['baseline']}: "
            f"{summary['ratio_dfget_over_native']:.3f}x"
        )


# --- orchestration ------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench/peer_throughput.py",
        description="One peer downloads a file from another on loopback; aria2c from nginx is "
        "the native baseline.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add = parser.add_argument
    add("--size", type=size_arg, default="1G", help="file size, K/M/G binary (default 1G)")
    add("--runs", type=int, default=3, help="timed rounds; medians are reported (default 3)")
    add("--warmup", type=int, default=1, help="untimed rounds first (default 1)")
    add(
        "--aria2-connections",
        default="1,4",
        metavar="N[,N...]",
        help="aria2c -x/-s values to measure; the first is the baseline (default 1,4)",
    )
    add(
        "--prefault",
        type=size_arg,
        metavar="SIZE",
        help="memory to touch before each run (default 2 x --size; 0 disables; see below)",
    )
    add("--piece-length", metavar="SIZE", help="passed to `peerwire seed --piece-length`")
    add("--timeout-s", type=float, help="limit per step; default 60 s + 1 s per 20 MB of --size")
    add(
        "--profile",
        action="store_true",
        help=f"one extra fetch under py-spy after the timed runs; flamegraph to {PROFILE_PATH}",
    )
    add("--out", type=Path, default=RESULTS_PATH, help=f"JSON results (default {RESULTS_PATH})")
    add(
        "--dfget",
        action="store_true",
        help="also time `dfget URL` end to end (start-up, tracker, manifest) from a seeding dfget, "
        "the URL being nginx's",
    )
    only = parser.add_mutually_exclusive_group()
    only.add_argument("--native-only", action="store_true", help="skip the peer (no ratio)")
    only.add_argument("--p2p-only", action="store_true", help="skip nginx and aria2c (no ratio)")
    args = parser.parse_args(argv)
    if args.runs < 1 or args.warmup < 0 or args.size < 1:
        parser.error("--runs and --size must be at least 1, --warmup at least 0")
    try:
        args.connections = [int(n) for n in args.aria2_connections.split(",")]
    except ValueError:
        parser.error(f"--aria2-connections: not integers: {args.aria2_connections!r}")
    if any(not 1 <= n <= 16 for n in args.connections):
        parser.error("--aria2-connections: each value must be in 1..16 (aria2c's limit)")
    if args.prefault is None:
        args.prefault = 2 * args.size
    if args.timeout_s is None:
        args.timeout_s = 60.0 + args.size / 20e6
    return args


class Bench:
    """One benchmark run: the file, the servers, the interleaved rounds. Fills the sides."""

    def __init__(self, args: argparse.Namespace, tmp: Path, console: Console) -> None:
        self.args, self.tmp, self.console = args, tmp, console
        self.logs = tmp / "logs"
        self.natives = (
            []
            if args.p2p_only
            else [Side(f"aria2c-x{n}", tmp / "out" / f"aria2c-x{n}.bin") for n in args.connections]
        )
        self.p2p = None if args.native_only else Side("peerwire", tmp / "out" / "peerwire.bin")
        #: ``dfget URL`` end to end (start-up, tracker, manifest) from a seeding dfget.
        self.dfget = (
            Side("dfget", tmp / "out" / "dfget.bin")
            if args.dfget and not args.native_only and not args.p2p_only
            else None
        )
        self.sides = [
            *self.natives,
            *([self.p2p] if self.p2p else []),
            *([self.dfget] if self.dfget else []),
        ]
        self.server_pid: dict[str, int] = {}
        self.expected_sha256 = ""

    def measure(self) -> None:
        args, tmp = self.args, self.tmp
        for d in (tmp / "www", tmp / "out", self.logs):
            d.mkdir()
        src = tmp / "www" / "blob.bin"
        self.console.print(f"writing {args.size:,} random bytes to {src}")
        self.expected_sha256 = make_random_file(src, args.size)
        with contextlib.ExitStack() as stack:
            if self.natives:
                nginx = nginx_server(args.nginx, tmp, src, args.timeout_s)
                url, pid = stack.enter_context(nginx)
                for side, n in zip(self.natives, args.connections, strict=True):
                    side.command = aria2c_command(args.aria2c, url, side.output, n, args.timeout_s)
                    self.server_pid[side.name] = pid
                if self.dfget is not None:
                    self.console.print("starting a tracker and a seeding dfget")
                    try:
                        seeding = dfget_seed(url, tmp, args.timeout_s)
                        tracker_url, seeder_pid = stack.enter_context(seeding)
                        self.dfget.command = dfget_command(url, tracker_url, self.dfget.output)
                        self.server_pid[self.dfget.name] = seeder_pid
                    except BenchError as exc:
                        self.dfget.error = str(exc)
                        self.console.print(f"dfget seed failed:\n{exc}", markup=False)
            if self.p2p is not None:
                self.console.print("starting the seed (it hashes the file first)")
                try:
                    seed = peer_seed(src, tmp, args.piece_length, args.timeout_s)
                    address, manifest, self.server_pid[self.p2p.name] = stack.enter_context(seed)
                    self.p2p.command = fetch_command(manifest, address, self.p2p.output)
                except BenchError as exc:
                    self.p2p.error = str(exc)
                    self.console.print(f"seed failed:\n{exc}", highlight=False, markup=False)
            rounds = [f"warmup{i}" for i in range(1, args.warmup + 1)]
            for label in rounds + [f"run{i}" for i in range(1, args.runs + 1)]:
                for side in self.sides:
                    if side.error is None:
                        self.run_once(side, f"{side.name}-{label}", keep=label.startswith("run"))
            if args.profile and self.p2p is not None and self.p2p.error is None:
                self.profile(self.p2p)

    def run_once(self, side: Side, name: str, *, keep: bool) -> None:
        """One timed, verified download (kept unless a warm-up); a failure marks the side failed
        and is shown verbatim."""
        size, verified = self.args.size, False
        prefault(self.args.prefault)
        try:
            wall_s, client_cpu_s, server_cpu_s, other_cpu_s, stdout_path = run_timed(
                side.command,
                name=name,
                logs=self.logs,
                timeout_s=self.args.timeout_s,
                server_pid=self.server_pid[side.name],
            )
            run = Run(wall_s, size / wall_s / GB, client_cpu_s, server_cpu_s, other_cpu_s)
            if side is self.p2p:
                run.report = parse_fetch_report(stdout_path, size)
                if run.report["pieces_failed"]:
                    self.console.print(f"note: {name}: {run.report['pieces_failed']} pieces failed")
                run.reported_elapsed_s = float(run.report["elapsed_s"])
                if run.reported_elapsed_s > 0:
                    run.reported_gbps = size / run.reported_elapsed_s / GB
            check_output(side.output, self.expected_sha256, name)
            verified = True
        except BenchError as exc:
            side.error = str(exc)
            if side is self.p2p:  # the seed's side of the story
                side.error += f"\n--- seed stderr (tail) ---\n{tail(self.tmp / 'seed.stderr', 15)}"
            self.console.print(f"{name} failed:\n{side.error}", highlight=False, markup=False)
            return
        finally:  # every run starts from an empty out dir (no resume state, no partial file)
            for left in side.output.parent.iterdir():
                if verified:
                    self.console.print(f"note: {name} left {left.name} behind; removed")
                (shutil.rmtree if left.is_dir() else os.unlink)(left)
        if keep:
            side.runs.append(run)
        self.console.print(f"{name}: {run.gbps:.3f} GB/s ({wall_s:.3f} s)")

    def profile(self, p2p: Side) -> None:
        """One more fetch under py-spy, untimed, for a flamegraph."""
        candidates = (REPO_ROOT / ".venv/bin/py-spy", Path(sys.executable).parent / "py-spy")
        py_spy = next((str(c) for c in candidates if os.access(c, os.X_OK)), shutil.which("py-spy"))
        if py_spy is None:
            self.console.print("--profile: py-spy not found (pip install -e '.[bench]'); skipped")
            return
        PROFILE_PATH.parent.mkdir(parents=True, exist_ok=True)
        cmd = [py_spy, "record", "--rate", "250", "-o", str(PROFILE_PATH), "--", *p2p.command]
        timeout_s = 3 * self.args.timeout_s
        try:
            run_timed(cmd, name="profile", logs=self.logs, timeout_s=timeout_s, server_pid=0)
            self.console.print(f"flamegraph: {PROFILE_PATH}")
        except BenchError as exc:
            self.console.print(f"--profile failed:\n{exc}", highlight=False, markup=False)
        p2p.output.unlink(missing_ok=True)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    console = Console(width=None if sys.stdout.isatty() else 120)  # rich assumes 80 in a pipe
    args.aria2c = args.nginx = None
    if not args.p2p_only:
        args.aria2c, args.nginx = find_program("aria2c"), find_program("nginx")
        missing = [n for n in ("aria2c", "nginx") if getattr(args, n) is None]
        if missing:
            print(
                f"peer_throughput: {' and '.join(missing)} not found (the native baseline); "
                "`make bench` installs them, or: apt-get install aria2 nginx",
                file=sys.stderr,
            )
            return 2
    if not args.native_only and importlib.util.find_spec("peerwire.__main__") is None:
        print(
            f"peer_throughput: `{sys.executable} -m peerwire` is unavailable (no "
            "peerwire/__main__.py); --native-only measures the baseline alone",
            file=sys.stderr,
        )
        return 2
    if not os.path.isdir("/dev/shm") or shutil.disk_usage("/dev/shm").free < 3 * args.size:
        print(f"peer_throughput: /dev/shm needs 3 x {args.size:,} bytes free", file=sys.stderr)
        return 2
    if psutil.virtual_memory().available < 3 * args.size + args.prefault:
        print("peer_throughput: not enough memory for 3 x --size + --prefault", file=sys.stderr)
        return 2

    if args.dfget:
        # The seeder and the timed dfget share a cluster secret, as a fleet's nodes do (the
        # tracker's manifest believed); no hand-off to a dfdaemon this machine may run.
        os.environ.setdefault("DRAGONFLY_SECRET", base64.urlsafe_b64encode(os.urandom(32)).decode())
        os.environ["DFGET_DAEMON_SOCKET"] = ""
    load_before = os.getloadavg()
    if load_before[0] > 0.5:  # the two ends share the CPUs with whatever else runs
        console.print(f"note: load average {load_before[0]:.2f} at start; figures will be noisy")
    signal.signal(signal.SIGTERM, lambda signum, _frame: sys.exit(128 + signum))
    started = datetime.datetime.now(datetime.UTC)
    fatal = None
    with tempfile.TemporaryDirectory(dir="/dev/shm", prefix="peer-throughput-") as tmp_name:
        bench = Bench(args, Path(tmp_name), console)
        try:
            bench.measure()
        except KeyboardInterrupt:
            print("interrupted; nginx, seed and temp dir cleaned up", file=sys.stderr)
            return 130
        except BenchError as exc:  # a server failed to start or died
            fatal = str(exc)
            console.print(f"failed:\n{exc}", highlight=False, markup=False)
    summary = summarise(bench.natives, bench.p2p)
    if bench.dfget is not None:
        # ``dfget URL`` as a user times it, against the same baseline.
        dfget_summary = summarise(bench.natives, bench.dfget)
        summary["ratio_dfget_over_native"] = dfget_summary["ratio_p2p_over_native"]
    result = {
        "benchmark": "peer_throughput",
        "date": started.isoformat(timespec="seconds"),
        "units": {"GB": "1e9 bytes", "gbps": "GB per second, wall clock around the client"},
        "size_bytes": args.size,
        "runs": args.runs,
        "warmup_runs": args.warmup,
        "prefault_bytes": args.prefault,
        "timeout_s": args.timeout_s,
        "machine": machine_info(args.aria2c, args.nginx),
        "load_average_1m": {"start": load_before[0], "end": os.getloadavg()[0]},
        "sides": {
            s.name: {
                "command": s.command,
                "median_gbps": s.median_gbps(),
                "median_reported_gbps": s.median_reported_gbps(),
                "runs": [asdict(r) for r in s.runs],
                "error": s.error,
            }
            for s in bench.sides
        },
        **summary,
        "error": fatal,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print_table(console, bench.sides, summary, args.size)
    console.print(f"results: {args.out}")
    return 1 if fatal or any(s.error for s in bench.sides) else 0


if __name__ == "__main__":
    sys.exit(main())
