"""Does ``fetch --rate`` hold its limit end to end, over the real peer wire?

For each rate R: a seed process serves a file of R x duration bytes, a fetch process downloads it
with ``--rate R`` (both ``python -m peerwire``, on 127.0.0.1), and the achieved rate is the file
size over the fetch's own transfer time (``elapsed_s``: connect, every block, verify, rename).
The error is achieved / R - 1; the criterion is within 2%. ``bench/ratelimit_sockets.py``
measures the token bucket alone over a socket; this measures the whole download path.

    .venv/bin/python bench/fetch_rate.py                        # 1M, 20M, 100M for 10 s each
    .venv/bin/python bench/fetch_rate.py --rates 20M --duration 30s
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from peerwire.units import format_rate, parse_duration, parse_rate

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable


def run_case(workdir: Path, rate_text: str, duration_s: float) -> dict[str, object]:
    rate_bps = parse_rate(rate_text)
    size = int(rate_bps * duration_s)
    source = workdir / f"src-{rate_text}.bin"
    with source.open("wb") as f:
        left = size
        while left:
            f.write(os.urandom(min(left, 8 << 20)))
            left -= min(left, 8 << 20)
    manifest = workdir / f"task-{rate_text}.json"
    output = workdir / f"out-{rate_text}.bin"
    seed = subprocess.Popen(
        [PYTHON, "-m", "peerwire", "seed", str(source), "--manifest-out", str(manifest)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert seed.stdout is not None
        line = seed.stdout.readline().split()
        if not line or line[0] != "listening":
            raise SystemExit(f"fetch_rate: seed did not start ({line})")
        cmd = [
            PYTHON,
            "-m",
            "peerwire",
            "fetch",
            "--manifest",
            str(manifest),
            "-O",
            str(output),
            "--peer",
            line[1],
            "--rate",
            rate_text,
            "--json",
            "--timeout",
            str(int(duration_s * 3 + 30)),
        ]
        wall_start = time.monotonic()
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        wall_s = time.monotonic() - wall_start
    finally:
        seed.terminate()
        seed.wait(timeout=10)
    if done.returncode != 0:
        raise SystemExit(f"fetch_rate: fetch failed: {done.stderr.strip()[-500:]}")
    summary = json.loads(done.stdout)
    achieved = size / summary["elapsed_s"]
    for path in (source, output):
        path.unlink(missing_ok=True)
    return {
        "rate": rate_text,
        "target_bps": rate_bps,
        "size_bytes": size,
        "elapsed_s": summary["elapsed_s"],
        "process_wall_s": round(wall_s, 4),
        "achieved_bps": round(achieved),
        "error_pct": round((achieved / rate_bps - 1) * 100, 3),
        "within_2pct": abs(achieved / rate_bps - 1) <= 0.02,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--rates", default="1M,20M,100M", help="comma-separated (default %(default)s)"
    )
    parser.add_argument("--duration", default="10s", help="per rate (default %(default)s)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "fetch_rate.json")
    args = parser.parse_args()
    duration_s = parse_duration(args.duration)
    base = Path("/dev/shm") if Path("/dev/shm").is_dir() else None
    cases = []
    with tempfile.TemporaryDirectory(prefix="fetch-rate-", dir=base) as tmp:
        for rate_text in args.rates.split(","):
            case = run_case(Path(tmp), rate_text.strip(), duration_s)
            cases.append(case)
            print(
                f"{case['rate']:>6}: {format_rate(float(case['achieved_bps']))} over "
                f"{case['elapsed_s']:.2f}s, error {case['error_pct']:+.3f}%",
                flush=True,
            )
    result = {
        "benchmark": "fetch_rate",
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "duration_s": duration_s,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "cases": cases,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0 if all(case["within_2pct"] for case in cases) else 1


if __name__ == "__main__":
    sys.exit(main())
