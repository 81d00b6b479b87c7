"""The chart of ``bench/run.py``: completion time against N, and the spread at the largest N.

    python bench/plot.py bench/results/run/latest.json [-o chart.png]

Left: the last client's completion time for native and P2P against the number of clients, with
the client-server bound and the Kumar-Ross bound (the P2P lower limit) as dashed lines. Right:
the empirical CDF of every client's completion time at the largest N, native and P2P, with the
bound marked. Needs matplotlib (the ``bench`` extra).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any


def plot(result: dict[str, Any], out: Path) -> Path:
    """Write the PNG for one ``bench/run.py`` JSON document; returns its path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs: list[dict[str, Any]] = result["runs"]
    by_n: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for run in runs:
        by_n[run["clients"]].append(run)
    ns = sorted(by_n)

    def mean(n: int, key: str, phase: str | None = None) -> float:
        values = [float((r[phase] if phase else r)[key]) for r in by_n[n]]
        return sum(values) / len(values)

    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5.2))
    mode = result.get("mode", "netns")
    first = runs[0]
    title = (
        f"{first['size_bytes'] / 2**20:g} MiB to N clients; client links "
        f"{first['client_bw_bps'] * 8 / 1e6:g} Mbit/s up and down, origin "
        f"{first['origin_bw_bps'] * 8 / 1e6:g} Mbit/s up"
    )
    if mode != "netns":
        title += f"  [{mode.upper()}: software rate limits, origin not limited]"
    fig.suptitle(title, fontsize=11)

    left.plot(ns, [mean(n, "last_s", "native") for n in ns], "o-", color="tab:red",
              label="native (HTTP from the origin), last client")  # fmt: skip
    left.plot(ns, [mean(n, "last_s", "p2p") for n in ns], "o-", color="tab:blue",
              label="P2P (dfget + tracker), last client")  # fmt: skip
    left.plot(ns, [mean(n, "median_s", "p2p") for n in ns], ".:", color="tab:blue",
              label="P2P, median client")  # fmt: skip
    left.plot(ns, [mean(n, "bound_native_s") for n in ns], "--", color="tab:red", alpha=0.5,
              label="client-server bound max(NF/u_s, F/d)")  # fmt: skip
    left.plot(ns, [mean(n, "bound_p2p_s") for n in ns], "--", color="tab:green",
              label="Kumar-Ross bound (P2P lower limit)")  # fmt: skip
    left.set_xlabel("clients (N)")
    left.set_ylabel("time until the last client has the file (s)")
    left.set_ylim(bottom=0)
    left.set_xlim(left=0)
    left.grid(alpha=0.3)
    left.legend(fontsize=8)

    for n in ns:
        for phase, color in (("native", "tab:red"), ("p2p", "tab:blue")):
            failed = max(r[phase].get("failed_clients", 0) for r in by_n[n])
            if failed:
                left.annotate(f"{failed} failed", (n, mean(n, "last_s", phase)), fontsize=8,
                              textcoords="offset points", xytext=(4, -10), color=color)  # fmt: skip

    largest = by_n[ns[-1]][-1]
    for phase, color in (("native", "tab:red"), ("p2p", "tab:blue")):
        clients = largest[phase]["clients"]
        times = sorted(c["completion_s"] for c in clients if c["completion_s"] is not None)
        # Over all clients: failed ones never arrive, so the curve stops short of 1.
        fractions = [(i + 1) / len(clients) for i in range(len(times))]
        right.step([0.0, *times], [0.0, *fractions], where="post", color=color, label=phase)
    right.axvline(largest["bound_p2p_s"], color="tab:green", linestyle="--",
                  label=f"Kumar-Ross bound {largest['bound_p2p_s']:.1f} s")  # fmt: skip
    right.set_xlim(left=0)
    right.set_ylim(0, 1.02)
    right.set_xlabel("completion time (s)")
    right.set_ylabel("fraction of clients done")
    right.set_title(f"every client at N = {ns[-1]}", fontsize=10)
    right.grid(alpha=0.3)
    right.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("json", type=Path, help="a bench/run.py result")
    parser.add_argument("-o", "--out", type=Path, help="PNG path (default: beside the JSON)")
    args = parser.parse_args()
    result = json.loads(args.json.read_text())
    out = args.out or args.json.resolve().with_suffix(".png")
    print(plot(result, out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
