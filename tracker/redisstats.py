"""``GET /stats`` from the Redis store: the same document as ``tracker.stats`` (dftop reads
either), made from what the ``STATS`` script returns for each task (``tracker.redislua``)."""

from __future__ import annotations

import heapq
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from tracker.model import PeerContact
from tracker.stats import client_of

if TYPE_CHECKING:
    from tracker.redisstore import RedisSwarm


def stats_document(
    swarm: RedisSwarm, replies: list[tuple[str, list[Any]]], now: float, tasks_limit: int
) -> dict[str, Any]:
    """Totals over every task of the cluster, then the hottest ``tasks_limit`` tasks."""
    tasks = [
        _task(hex_id, reply, now, swarm.config.interval_s, swarm.config.bad_peer_ttl_s)
        for hex_id, reply in replies
    ]
    chosen = heapq.nsmallest(
        max(0, tasks_limit), tasks, key=lambda t: (t["seeds"] - t["peers"], -t["download_bps"])
    )
    return {
        "tracker": {
            "uptime_s": now - swarm.started_s,
            "interval_s": swarm.config.interval_s,
            "now_s": now,
        },
        "totals": {
            "tasks": len(tasks),
            "peers": sum(t["peers"] for t in tasks),
            "seeds": sum(t["seeds"] for t in tasks),
            "download_bps": max(0.0, sum(t["download_bps"] for t in tasks)),
            "upload_bps": max(0.0, sum(t["upload_bps"] for t in tasks)),
            "origin_bytes": sum(t["origin_bytes"] for t in tasks),
            "peer_bytes": sum(t["peer_bytes"] for t in tasks),
        },
        "tasks": chosen,
    }


def _task(
    hex_id: str, reply: list[Any], now: float, interval_s: float, bad_ttl_s: float
) -> dict[str, Any]:
    (created, peers, seeds, done, origin, from_peers, down, up, progress_sum, url, total,
     piece, pieces, known, have_bytes, available, fetchers, rows) = reply  # fmt: skip
    has_manifest = pieces != b""
    url_text = url.decode() if has_manifest else None
    count = int(peers)
    listed = [_peer(row, now, interval_s, int(have_bytes)) for row in rows]
    listed.sort(key=lambda p: -p["progress"])
    return {
        "id": hex_id,
        "url": url_text,
        "name": (urlsplit(url_text).path.rsplit("/", 1)[-1] or None) if url_text else None,
        "size_bytes": int(total) if has_manifest else None,
        "piece_length": int(piece) if has_manifest else None,
        "pieces": int(pieces) if has_manifest else None,
        "pieces_known": int(known) if has_manifest else 0,
        "pieces_available": int(available) if has_manifest else None,
        "peers": count,
        "seeds": int(seeds),
        "completed": int(done),
        "completion": float(progress_sum) / count if count else 0.0,
        "download_bps": max(0.0, float(down)),
        "upload_bps": max(0.0, float(up)),
        "origin_bytes": int(float(origin)),
        "peer_bytes": int(float(from_peers)),
        "age_s": now - float(created),
        "source_fetchers": int(fetchers),
        "peer_list": listed,
        "peer_list_truncated": count > len(listed),
    }


def _peer(row: list[Any], now: float, interval_s: float, have_bytes: int) -> dict[str, Any]:
    (peer_id, _first, last, grew, down, up, origin, left, dbps, ubps, have, has_have, progress,
     load, zone, port, c4, c6, assigned, reporters) = row  # fmt: skip
    left_bytes = int(float(left))
    contact = PeerContact.make(peer_id, int(port), c4[:4] if c4 else None, c6[:16] if c6 else None)
    if left_bytes == 0:
        state = "seeding"
    elif assigned:
        state = "fetching"
    elif now - float(grew) >= 2 * interval_s:
        state = "stalled"
    else:
        state = "downloading"
    return {
        "id": peer_id.hex(),
        "client": client_of(peer_id),
        "address": contact.address,
        "zone": zone.decode(errors="replace"),
        "progress": float(progress),
        "have": have.ljust(have_bytes, b"\0").hex() if has_have else None,
        "download_bps": float(dbps),
        "upload_bps": float(ubps),
        "downloaded_bytes": int(float(down)),
        "uploaded_bytes": int(float(up)),
        "origin_bytes": int(float(origin)),
        "left_bytes": None if left_bytes < 0 else left_bytes,
        "load": None if load < 0 else load,
        "last_seen_s": now - float(last),
        "assigned": int(assigned),
        "state": state,
        "reported_bad": int(reporters),
    }
