"""``make demo``: a small swarm on this machine, over the real peer wire on 127.0.0.1.

Until the tracker (issue #3) and dfget (issue #4) exist, this runs the peer wire on its own: one
seed and three fetchers, each a separate process (``python -m peerwire``), told about each other
on the command line instead of by a tracker. The seed's upload is capped so that the fetchers must
trade pieces among themselves to finish quickly; the table at the end shows who got what from
whom. Every file is verified piece by piece and compared with the original.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

PYTHON = sys.executable
console = Console(stderr=True)


def start_seed(workdir: Path, source: Path, upload_rate: str) -> tuple[subprocess.Popen[str], str]:
    manifest = workdir / "task.json"
    seed = subprocess.Popen(
        [
            PYTHON,
            "-m",
            "peerwire",
            "seed",
            str(source),
            "--manifest-out",
            str(manifest),
            "--upload-rate",
            upload_rate,
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert seed.stdout is not None
    line = seed.stdout.readline().strip()
    if not line.startswith("listening "):
        seed.kill()
        raise SystemExit(f"demo: the seed did not start (said {line!r})")
    return seed, line.split()[1]


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(4 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=64, help="file size (default 64)")
    parser.add_argument("--fetchers", type=int, default=3, help="fetching peers (default 3)")
    parser.add_argument("--seed-rate", default="16M", help="seed upload cap (default 16M)")
    args = parser.parse_args()

    console.rule("[bold]peerwire swarm demo[/] (no tracker yet: peers named on the command line)")
    with tempfile.TemporaryDirectory(prefix="dfdemo-") as tmp:
        workdir = Path(tmp)
        source = workdir / "origin.bin"
        source.write_bytes(os.urandom(args.size_mib << 20))
        console.print(f"made {args.size_mib} MiB of random data at {source}")
        seed, seed_addr = start_seed(workdir, source, args.seed_rate)
        console.print(f"seed listening on {seed_addr}, upload capped at {args.seed_rate}/s")
        fetchers: list[tuple[str, subprocess.Popen[str], Path]] = []
        ports = [free_port() for _ in range(args.fetchers)]
        try:
            for n in range(args.fetchers):
                listen = f"127.0.0.1:{ports[n]}"
                peers = [seed_addr] + [f"127.0.0.1:{ports[k]}" for k in range(n)]
                out = workdir / f"fetcher{n}.bin"
                cmd = [
                    PYTHON,
                    "-m",
                    "peerwire",
                    "fetch",
                    "--manifest",
                    str(workdir / "task.json"),
                    "-O",
                    str(out),
                    "--listen",
                    listen,
                    "--json",
                    "--linger",
                    "3s",
                ]
                for peer in peers:
                    cmd += ["--peer", peer]
                proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
                fetchers.append((listen, proc, out))
                console.print(f"fetcher {n} on {listen}, told about {', '.join(peers)}")
                time.sleep(0.3)
            with console.status("swarm running..."):
                results = [
                    (listen, json.loads(proc.communicate(timeout=300)[0] or "{}"), out)
                    for listen, proc, out in fetchers
                ]
        finally:
            seed.terminate()
            seed.wait(timeout=10)
            for _, proc, _ in fetchers:
                proc.kill() if proc.poll() is None else None
        expected = sha256_of(source)
        names = {s.get("peer_id"): f"fetcher {n}" for n, (_, s, _) in enumerate(results)}
        table = Table(title="who delivered what")
        table.add_column("fetcher")
        table.add_column("time", justify="right")
        table.add_column("verified", justify="center")
        table.add_column("received from")
        ok = True
        for n, (_, summary, out) in enumerate(results):
            good = bool(summary.get("ok")) and sha256_of(out) == expected
            ok &= good
            received = sorted(summary.get("bytes_from_peer", {}).items())
            sources = ", ".join(
                f"{names.get(peer, 'seed')}: {count / 2**20:.1f} MiB" for peer, count in received
            )
            table.add_row(
                f"fetcher {n}",
                f"{summary.get('elapsed_s', 0):.2f}s",
                "[green]yes[/]" if good else "[red]NO[/]",
                sources,
            )
        console.print(table)
        console.print("[green]all fetchers verified[/]" if ok else "[red]a fetcher failed[/]")
        return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
