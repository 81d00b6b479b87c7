"""Pure figures of ``bench/run.py``: the theoretical bounds, per-phase summaries, the table.

No I/O and no imports of the harness, so tests load this module on its own.

Bounds (F = file size, u_s = the origin's upload rate, u_i and d_i = client i's upload and
download rates, all as payload bytes per second):

* P2P, the Kumar-Ross lower bound: ``T_min = max(F/u_s, F/d_min, N*F/(u_s + sum u_i))``. The
  origin must send every byte at least once, the slowest client must receive every byte, and
  N copies must cross the system's total upload capacity.
* client-server (native): ``max(N*F/u_s, F/d_min)``: the origin sends all N copies.

Rates are payload rates: ``PAYLOAD_FRACTION`` of the tbf line rate, as measured on this machine
(a single 8 Mbit/s flow delivers ~956 kB/s; the rest is TCP/IP headers of 1500-byte frames).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Any, Final

#: Payload per byte of line rate through tbf (measured: 956 kB/s of payload at 8 Mbit/s).
PAYLOAD_FRACTION: Final = 0.956
#: Targets of issue #7 at 200 clients.
TARGET_P2P_OVER_BOUND: Final = 1.25
TARGET_ORIGIN_COPIES: Final = 1.05
#: Above this CPU use the machine, not the network, was measured.
CPU_WARN_PERCENT: Final = 85.0
#: Seconds after "go" at which the swarm timeline is read (up to the last completion).
TIMELINE_S: Final = (0.5, 1, 1.5, 2, 3, 4, 5, 6, 8, 10, 12, 15, 20, 25, 30, 40, 50, 60, 90, 120)


def payload_bps(line_bits_per_s: float) -> float:
    """Payload bytes per second through a link shaped to ``line_bits_per_s``."""
    return line_bits_per_s / 8 * PAYLOAD_FRACTION


def bound_p2p_s(
    size_bytes: int, origin_up_bps: float, client_up_bps: Sequence[float], client_down_bps: float
) -> float:
    """Kumar-Ross: the least time any scheme needs to give every client the file."""
    n = len(client_up_bps)
    if n == 0:
        return 0.0
    return max(
        size_bytes / origin_up_bps,
        size_bytes / client_down_bps,
        n * size_bytes / (origin_up_bps + sum(client_up_bps)),
    )


def bound_native_s(
    size_bytes: int, clients: int, origin_up_bps: float, client_down_bps: float
) -> float:
    """Client-server: the origin alone sends every copy."""
    if clients == 0:
        return 0.0
    return max(clients * size_bytes / origin_up_bps, size_bytes / client_down_bps)


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile (no interpolation: it is always some client's figure)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


def swarm_timeline(
    timelines: Sequence[Sequence[Sequence[float]]], size_bytes: int, until_s: float
) -> list[dict[str, float]]:
    """The whole swarm at ``TIMELINE_S``, from every client's progress reports (each a list
    of ``[seconds since its go, done bytes, uploaded bytes, peers]``, ascending): the share of
    all N copies delivered (verified bytes), the bytes uploaded so far over all N copies (more
    than delivered: queued in sockets and links, or thrown away), clients still without a
    verified byte, and the mean number of connected peers. A client is read at its last report
    at or before each time (nothing before its first)."""
    if not timelines or size_bytes <= 0:
        return []
    total = len(timelines) * size_bytes
    rows = []
    for at in TIMELINE_S:
        if at > until_s:
            break
        done = uploaded = peers = empty = 0.0
        for timeline in timelines:
            last: Sequence[float] = (at, 0, 0, 0)
            for sample in timeline:
                if sample[0] > at:
                    break
                last = sample
            done += last[1]
            uploaded += last[2]
            peers += last[3]
            empty += last[1] == 0
        rows.append(
            {
                "t_s": at,
                "delivered_fraction": done / total,
                "uploaded_fraction": uploaded / total,
                "clients_with_nothing": int(empty),
                "peers_mean": peers / len(timelines),
            }
        )
    return rows


def process_cpu(times: dict[str, Sequence[float]], clients: int) -> dict[str, Any]:
    """CPU seconds per process over the phase (``name -> (user, system)``; clients are
    ``c0``...): the clients' mean, min and max (user + system) and mean user and system
    separately, and the tracker's and the origin's totals. Kernel work done for a process
    (its sockets, softirq on its behalf) is charged to it. The kernel counts in clock ticks
    (10 ms): one client's figure is that coarse, a mean over many is not."""
    per_client = [times[f"c{i}"] for i in range(clients) if f"c{i}" in times]
    if not per_client:
        return {}
    totals = [user + system for user, system in per_client]
    figures: dict[str, Any] = {
        "client_cpu_s_mean": statistics.mean(totals),
        "client_cpu_s_min": min(totals),
        "client_cpu_s_max": max(totals),
        "client_user_cpu_s_mean": statistics.mean(user for user, _ in per_client),
        "client_system_cpu_s_mean": statistics.mean(system for _, system in per_client),
    }
    for role in ("tracker", "origin"):
        if role in times:
            figures[f"{role}_cpu_s"] = sum(times[role])
    return figures


def summarize_phase(phase: dict[str, Any], expected_sha256: str, size_bytes: int) -> dict[str, Any]:
    """The harness's raw phase (``t0``, per-client ``start``/``end``) -> figures for the JSON."""
    t0 = phase["t0"]
    clients = []
    for index, raw in enumerate(phase["clients"]):
        end = raw.get("end")
        client = {
            "index": index,
            "go_delay_s": round(raw["start"] - t0, 4),
            "completion_s": None if end is None else round(end - t0, 4),
            "bytes": raw.get("bytes"),
            "sha256_ok": raw.get("sha256") == expected_sha256 and raw.get("bytes") == size_bytes,
        }
        for key in ("from_peers_bytes", "from_origin_bytes", "uploaded_bytes", "last_report"):
            if key in raw:
                client[key] = raw[key]
        if raw.get("marks_s"):
            client["marks_s"] = raw["marks_s"]
        if raw.get("warnings"):
            client["warnings"] = raw["warnings"]
        if raw.get("error"):
            client["error"] = raw["error"]
            client["log_tail"] = raw.get("log_tail", "")
        clients.append(client)
    times = [c["completion_s"] for c in clients if c["completion_s"] is not None]
    summary: dict[str, Any] = {
        "first_s": min(times, default=math.nan),
        "median_s": statistics.median(times) if times else math.nan,
        "p95_s": percentile(times, 0.95),
        "last_s": max(times, default=math.nan),
        "origin_bytes": phase["origin_bytes"],
        "origin_copies": phase["origin_bytes"] / size_bytes,
        "origin_requests": phase["origin_requests"],
        "all_sha256_ok": all(c["sha256_ok"] for c in clients),
        # Times above are of the clients that finished; any failure makes the run invalid.
        "failed_clients": sum(c["completion_s"] is None for c in clients),
        "cpu_percent": phase["cpu"]["mean"],
        "cpu_percent_max_sample": phase["cpu"]["max_sample"],
        **process_cpu(phase.get("process_cpu", {}), len(clients)),
        "max_go_delay_s": max((c["go_delay_s"] for c in clients), default=0.0),
        "clients_that_fell_back": sum(
            any(w.startswith("dfget.engine:") and "origin" in w for w in c.get("warnings", ()))
            for c in clients
        ),
        "clients": clients,
    }
    resumed = sum(int(result.get("native_resumes", 0)) for result in phase["clients"])
    if resumed:
        # Native GETs that carried nothing for a minute and were resumed with a Range request.
        summary["stalled_gets_resumed"] = resumed
    if any("uploaded_bytes" in c for c in clients):
        uploaded = sum(c.get("uploaded_bytes", 0) for c in clients)
        from_peers = sum(c.get("from_peers_bytes", 0) for c in clients)
        summary["uploaded_bytes_total"] = uploaded
        summary["from_peers_bytes_total"] = from_peers
        # What peers sent that no one kept (duplicates, blocks after a cancel): dfget's counters.
        summary["upload_not_kept_fraction"] = 1 - from_peers / uploaded if uploaded else 0.0
    if phase.get("links") is not None:
        summary["links"] = summarize_links(phase["links"], clients)
    timelines = [raw["timeline"] for raw in phase["clients"] if raw.get("timeline")]
    if timelines:
        summary["timeline"] = swarm_timeline(timelines, size_bytes, summary["last_s"])
    if phase.get("tracker_totals") is not None:
        summary["tracker_totals"] = phase["tracker_totals"]
    return summary


def summarize_links(
    links: dict[str, dict[str, int]], clients: list[dict[str, Any]]
) -> dict[str, Any]:
    """What the shapers saw in a phase: bytes and drops of the client links (summed), of the
    origin's uplink, and how full each client's download link was until that client was done
    (line bytes over the line rate's worth of its completion time, as a median and minimum)."""
    totals: dict[str, Any] = {}
    for direction in ("up", "down"):
        picked = [v for k, v in links.items() if k.startswith("c") and k.endswith(f"/{direction}")]
        totals[f"clients_{direction}_bytes"] = sum(v["bytes"] for v in picked)
        totals[f"clients_{direction}_drops"] = sum(v["drops"] for v in picked)
        totals[f"clients_{direction}_packets"] = sum(v["packets"] for v in picked)
    for client in clients:
        for direction in ("up", "down"):
            figures = links.get(f"c{client['index']}/{direction}", {})
            client[f"{direction}_link_bytes"] = figures.get("bytes", 0)
            client[f"{direction}_link_drops"] = figures.get("drops", 0)
    tcp = [v for k, v in links.items() if k.startswith("c") and k.endswith("/tcp")]
    totals["clients_tcp_out_segments"] = sum(v["out_segments"] for v in tcp)
    totals["clients_tcp_retransmitted"] = sum(v["retransmitted"] for v in tcp)
    origin_tcp = links.get("origin/tcp", {})
    totals["origin_tcp_out_segments"] = origin_tcp.get("out_segments", 0)
    totals["origin_tcp_retransmitted"] = origin_tcp.get("retransmitted", 0)
    origin = links.get("origin/up", {})
    totals["origin_up_bytes"] = origin.get("bytes", 0)
    totals["origin_up_drops"] = origin.get("drops", 0)
    return totals


def build_run(
    *,
    clients: int,
    size_bytes: int,
    client_bw_bits: float,
    origin_bw_bits: float,
    native: dict[str, Any],
    p2p: dict[str, Any],
) -> dict[str, Any]:
    """One N's record: inputs, both phases, bounds and the derived ratios."""
    u_s = payload_bps(origin_bw_bits)
    u_c = payload_bps(client_bw_bits)
    t_min = bound_p2p_s(size_bytes, u_s, [u_c] * clients, u_c)
    t_native = bound_native_s(size_bytes, clients, u_s, u_c)
    for phase in (native, p2p):
        fills = [
            c["down_link_bytes"] / (c["completion_s"] * client_bw_bits / 8)
            for c in phase["clients"]
            if "down_link_bytes" in c and c["completion_s"]
        ]
        if fills and "links" in phase:
            phase["links"]["down_fill_median"] = statistics.median(fills)
            phase["links"]["down_fill_min"] = min(fills)
    for row in p2p.get("timeline", ()):
        # At every client's full download rate from "go": the bound's pace.
        row["ideal_fraction"] = min(1.0, row["t_s"] / t_min) if t_min else 1.0
    cpu = max(native["cpu_percent"], p2p["cpu_percent"])
    warnings = [
        f"CPU {name} {phase['cpu_percent']:.0f}% > {CPU_WARN_PERCENT:.0f}%: the CPU, not the "
        "network, was measured"
        for name, phase in (("native", native), ("p2p", p2p))
        if phase["cpu_percent"] > CPU_WARN_PERCENT
    ]
    warnings += [
        f"INVALID {name}: {phase['failed_clients']} of {clients} clients failed (first error: "
        f"{next(c['error'] for c in phase['clients'] if c.get('error'))}); its times are of "
        "the clients that finished"
        for name, phase in (("native", native), ("p2p", p2p))
        if phase["failed_clients"]
    ]
    return {
        "clients": clients,
        "size_bytes": size_bytes,
        # Line rates, bytes/s (the project's `_bps`): client up = down, origin up.
        "client_bw_bps": client_bw_bits / 8,
        "origin_bw_bps": origin_bw_bits / 8,
        "payload_fraction": PAYLOAD_FRACTION,
        "client_payload_bps": u_c,
        "origin_payload_bps": u_s,
        "bound_p2p_s": t_min,
        "bound_native_s": t_native,
        "efficiency": t_min / p2p["last_s"] if p2p["last_s"] else math.nan,
        "p2p_last_over_bound": p2p["last_s"] / t_min if t_min else math.nan,
        "native_last_over_bound": native["last_s"] / t_native if t_native else math.nan,
        "speedup": native["last_s"] / p2p["last_s"] if p2p["last_s"] else math.nan,
        "cpu_percent": cpu,
        "warnings": warnings,
        "native": native,
        "p2p": p2p,
    }


def table_rows(run: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(figure, native, p2p) rows for one N, for a rich table."""
    native, p2p = run["native"], run["p2p"]

    def both(key: str, fmt: str) -> tuple[str, str]:
        return fmt.format(native[key]), fmt.format(p2p[key])

    rows = [
        ("completion median", *both("median_s", "{:.1f} s")),
        ("completion p95", *both("p95_s", "{:.1f} s")),
        ("completion last", *both("last_s", "{:.1f} s")),
        ("bound (client-server | Kumar-Ross)",
         f"{run['bound_native_s']:.1f} s", f"{run['bound_p2p_s']:.1f} s"),
        ("last / bound", f"{run['native_last_over_bound']:.2f}x",
         f"{run['p2p_last_over_bound']:.2f}x (efficiency {run['efficiency']:.0%})"),
        ("origin sent", f"{native['origin_copies']:.2f} x F", f"{p2p['origin_copies']:.2f} x F"),
        ("peer uploads nobody kept", "", f"{p2p.get('upload_not_kept_fraction', 0):.0%}"),
        ("every client's sha256", "ok" if native["all_sha256_ok"] else "WRONG",
         "ok" if p2p["all_sha256_ok"] else "WRONG"),
        ("machine CPU (mean | busiest 1 s)",
         f"{native['cpu_percent']:.0f}% | {native['cpu_percent_max_sample']:.0f}%",
         f"{p2p['cpu_percent']:.0f}% | {p2p['cpu_percent_max_sample']:.0f}%"),
        ("CPU-s per client (user + system)", *(
            f"{x['client_user_cpu_s_mean']:.3f} + {x['client_system_cpu_s_mean']:.3f}"
            if "client_cpu_s_mean" in x else "" for x in (native, p2p))),
        ("speed-up native / p2p (last)", "", f"{run['speedup']:.1f}x"),
    ]  # fmt: skip
    if native.get("stalled_gets_resumed"):
        rows.append(("GETs resumed after a 60 s stall", str(native["stalled_gets_resumed"]), ""))
    if "links" in native and "links" in p2p:
        links = (native["links"], p2p["links"])
        busy = tuple(f"{x.get('down_fill_median', 0):.0%}" for x in links)
        drops = tuple(f"{x['clients_up_drops']} / {x['clients_down_drops']}" for x in links)
        rows.append(("client download link busy until done (median)", busy[0], busy[1]))
        rows.append(("packets dropped at client links (up / down)", drops[0], drops[1]))
    return rows


def timeline_note(run: dict[str, Any]) -> str | None:
    """The P2P swarm timeline in one line: delivered / ideal share of all copies at each time,
    and how many clients still had nothing."""
    rows = run["p2p"].get("timeline")
    if not rows:
        return None
    parts = [
        f"{row['t_s']:g} s {row['delivered_fraction']:.0%}/{row['ideal_fraction']:.0%}"
        + (f" ({row['clients_with_nothing']} empty)" if row["clients_with_nothing"] else "")
        for row in rows
    ]
    return "P2P delivered / ideal share of all copies: " + ", ".join(parts)


def target_notes(run: dict[str, Any]) -> list[str]:
    """The issue's targets, met or missed, for this N."""
    ratio = run["p2p_last_over_bound"]
    copies = run["p2p"]["origin_copies"]
    p2p_verdict = "met" if ratio <= TARGET_P2P_OVER_BOUND else "MISSED"
    return [
        f"P2P last {run['p2p']['last_s']:.1f} s = {ratio:.2f} x T_min "
        f"(target <= {TARGET_P2P_OVER_BOUND}): {p2p_verdict}",
        f"origin sent {copies:.3f} x F in P2P (target <= {TARGET_ORIGIN_COPIES}): "
        f"{'met' if copies <= TARGET_ORIGIN_COPIES else 'MISSED'}",
    ]
