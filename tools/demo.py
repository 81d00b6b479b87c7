"""``make demo``: a local swarm on this machine - a tracker, an origin and 20 ``dfget`` peers.

Every part is a real process on 127.0.0.1: ``dftracker serve``, a static-file origin with Range
support (``tools/origin.py``) and 20 ``dfget`` processes that download the same file at once,
through the tracker, trading pieces among themselves. On a terminal, ``dftop`` shows the swarm
live while it runs; without one (``make demo < /dev/null > log``) a progress line is printed
every few seconds. It ends by itself when every peer is done, checks every copy against the
original, and prints a summary: time, bytes from the origin against bytes between peers.
No root needed.

    .venv/bin/python tools/demo.py                  # 20 peers, 64 MiB
    .venv/bin/python tools/demo.py --peers 50 --size 16M --no-top
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from peerwire.units import format_rate, format_size, parse_size

PYTHON = sys.executable
ROOT = Path(__file__).resolve().parent.parent
console = Console(stderr=True)


def start(
    command: list[str], what: str, env: dict[str, str] | None = None
) -> tuple[subprocess.Popen[str], str]:
    """Start a process that prints ``listening URL`` when ready; returns it and the URL."""
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=ROOT, env=env
    )
    assert process.stdout is not None
    line = process.stdout.readline().strip()
    if not line.startswith("listening "):
        process.kill()
        raise SystemExit(f"demo: the {what} did not start ({line!r})")
    url = line.split()[1]
    return process, url.removesuffix("/announce")


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


def write_random(path: Path, size_bytes: int) -> str:
    digest = hashlib.sha256()
    with path.open("wb") as stream:
        left = size_bytes
        while left:
            chunk = os.urandom(min(left, 8 << 20))
            digest.update(chunk)
            stream.write(chunk)
            left -= len(chunk)
    return digest.hexdigest()


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while chunk := stream.read(8 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--peers", type=int, default=20, help="dfget processes (default 20)")
    parser.add_argument("--size", default="64M", help="file size (default 64M)")
    parser.add_argument(
        "--seed-time", default="10s", help="how long each peer seeds once done (default 10s)"
    )
    parser.add_argument("--no-top", action="store_true", help="do not show dftop")
    args = parser.parse_args()
    size = parse_size(args.size)
    show_top = not args.no_top and sys.stdout.isatty()
    processes: list[subprocess.Popen[str]] = []
    with tempfile.TemporaryDirectory(prefix="dragonfly-demo-") as tmp:
        workdir = Path(tmp)
        (workdir / "origin").mkdir()
        console.print(f"[bold]demo:[/] writing a {format_size(size)} file of random bytes")
        expected = write_random(workdir / "origin" / "payload.bin", size)
        # The swarm shares a cluster secret, as a fleet should (SECURITY.md): the tracker's
        # manifests are then believed, and no peer needs to check them against the origin.
        secret_env = {**os.environ, "DRAGONFLY_SECRET": secrets.token_urlsafe(32)}
        try:
            tracker, tracker_url = start(
                [PYTHON, "-m", "tracker.cli", "serve", "--port", "0", "--interval", "2s"],
                "tracker",
                secret_env,
            )
            processes.append(tracker)
            origin, origin_url = start(
                [PYTHON, str(ROOT / "tools" / "origin.py"), str(workdir / "origin")], "origin"
            )
            processes.append(origin)
            url = f"{origin_url}/files/payload.bin"
            console.print(
                f"[bold]demo:[/] tracker {tracker_url}, origin {url}; "
                f"starting {args.peers} dfget peers"
            )
            started = time.monotonic()
            peers = []
            for index in range(args.peers):
                output = workdir / f"peer{index:02d}.bin"
                peers.append(
                    subprocess.Popen(
                        [
                            PYTHON,
                            "-m",
                            "dfget.cli",
                            url,
                            "-O",
                            str(output),
                            "--tracker",
                            tracker_url,
                            "--seed-time",
                            args.seed_time,
                            "--quiet",
                        ],
                        stdout=subprocess.DEVNULL,
                        stderr=(workdir / f"peer{index:02d}.log").open("w"),
                        text=True,
                        cwd=workdir,
                        # Each peer is its own process here, even when this host runs dfdaemon.
                        env={**secret_env, "DFGET_DAEMON_SOCKET": ""},
                    )
                )
            processes.extend(peers)
            top = None
            if show_top:
                top = subprocess.Popen(
                    [PYTHON, "-m", "tracker.top", "--tracker", tracker_url, "--refresh", "0.5s"],
                    stdin=subprocess.DEVNULL,
                    cwd=ROOT,
                )
                processes.append(top)
            finished_at: dict[int, float] = {}
            delivered_at: dict[int, float] = {}  # the verified file appeared at its path
            last_line = 0.0
            while len(finished_at) < len(peers):
                for index, peer in enumerate(peers):
                    if index not in delivered_at and (workdir / f"peer{index:02d}.bin").exists():
                        delivered_at[index] = time.monotonic() - started
                    if index not in finished_at and peer.poll() is not None:
                        finished_at[index] = time.monotonic() - started
                if top is None and time.monotonic() - last_line >= 3:
                    last_line = time.monotonic()
                    totals = get_json(f"{tracker_url}/stats?peers=0")["totals"]
                    console.print(
                        f"demo: {len(finished_at)}/{len(peers)} peers exited, "
                        f"{totals['seeds']} seeding, origin {format_size(totals['origin_bytes'])}, "
                        f"between peers {format_size(totals['peer_bytes'])}"
                    )
                time.sleep(0.2)
            if top is not None:
                top.terminate()
                top.wait(timeout=10)
            origin_stats = get_json(f"{origin_url}/__stats")
            totals = get_json(f"{tracker_url}/stats?peers=0")["totals"]
        finally:
            for process in processes:
                if process.poll() is None:
                    process.terminate()
            for process in processes:
                try:
                    process.communicate(timeout=15)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.communicate()
        return report(args, size, expected, workdir, peers, origin_stats, totals, delivered_at)


def report(
    args: argparse.Namespace,
    size: int,
    expected: str,
    workdir: Path,
    peers: list[subprocess.Popen[str]],
    origin_stats: dict[str, int],
    totals: dict[str, Any],
    delivered_at: dict[int, float],
) -> int:
    failures = []
    for index, peer in enumerate(peers):
        output = workdir / f"peer{index:02d}.bin"
        if peer.returncode != 0:
            log = (workdir / f"peer{index:02d}.log").read_text()[-500:]
            failures.append(f"peer {index} exited {peer.returncode}: {log}")
        elif file_sha256(output) != expected:
            failures.append(f"peer {index}: wrong sha256")
    table = Table(title=f"{args.peers} peers, one {format_size(size)} file")
    table.add_column("")
    table.add_column("", justify="right")
    origin_bytes = origin_stats["bytes_sent"]
    peer_bytes = int(totals["peer_bytes"])
    table.add_row("copies verified (sha256)", f"{args.peers - len(failures)}/{args.peers}")
    table.add_row("bytes the origin served", format_size(origin_bytes))
    table.add_row("  = copies of the file", f"{origin_bytes / size:.2f}")
    table.add_row("bytes traded between peers", format_size(peer_bytes))
    table.add_row("origin traffic saved", f"{peer_bytes / max(1, peer_bytes + origin_bytes):.0%}")
    if delivered_at:
        times = sorted(delivered_at.values())
        last = times[-1]
        table.add_row("first copy complete", f"{times[0]:.1f} s")
        table.add_row("median copy complete", f"{times[len(times) // 2]:.1f} s")
        table.add_row("last copy complete", f"{last:.1f} s")
        table.add_row("aggregate delivery", format_rate(len(times) * size / max(0.001, last)))
    Console().print(table)
    for failure in failures:
        console.print(f"[red]demo: {failure}[/]")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
