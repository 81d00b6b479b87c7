"""``GET /stats``: the swarm as JSON for dftop and operators. Pure, read-only.

The document's keys are a contract with ``dftop`` (``tracker/top.py``):

* ``tracker``: uptime, announce interval, the tracker clock;
* ``totals``: tasks, peers, seeds, aggregate rates, bytes from the origin vs between peers;
* ``tasks``: hottest first (most incomplete peers, then download rate), each with its geometry,
  counts, completion, rates, origin/peer bytes, and ``peer_list`` (best progress first, at most
  ``peers`` of them; ``peer_list_truncated`` says when some were left out). A peer's ``state``
  is ``seeding``, ``fetching`` (holds a back-to-source assignment), ``stalled`` (incomplete
  and its ``downloaded`` has not grown for two intervals) or ``downloading``.
"""

from __future__ import annotations

import heapq
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from tracker.records import PeerRecord, TaskRecord
    from tracker.swarm import Swarm


def stats_document(
    swarm: Swarm,
    tasks: dict[bytes, TaskRecord],
    task: bytes | None,
    peers_limit: int,
    tasks_limit: int,
) -> dict[str, Any]:
    """The ``GET /stats`` document: totals, then tasks hottest first (or just ``task``)."""
    now = swarm.now()
    if task is not None:
        record = tasks.get(task)
        chosen = [] if record is None else [(task, record)]
    else:
        chosen = heapq.nsmallest(
            max(0, tasks_limit),
            tasks.items(),
            key=lambda item: (item[1].seeds - len(item[1].peers), -item[1].download_bps),
        )
    return {
        "tracker": {
            "uptime_s": now - swarm.started_s,
            "interval_s": swarm.config.interval_s,
            "now_s": now,
        },
        "totals": {
            "tasks": len(tasks),
            "peers": swarm.peer_count,
            "seeds": swarm.seed_count,
            "download_bps": max(0.0, sum(t.download_bps for t in tasks.values())),
            "upload_bps": max(0.0, sum(t.upload_bps for t in tasks.values())),
            "origin_bytes": swarm.origin_bytes_total,
            "peer_bytes": swarm.peer_bytes_total,
        },
        "tasks": [_task_stats(swarm, key, record, now, peers_limit) for key, record in chosen],
    }


def _task_stats(
    swarm: Swarm, key: bytes, task: TaskRecord, now: float, peers_limit: int
) -> dict[str, Any]:
    manifest, planner, peers = task.manifest, task.planner, task.peers
    listed = heapq.nlargest(max(0, peers_limit), peers.values(), key=lambda p: p.progress)
    return {
        "id": key.hex(),
        "url": manifest.url if manifest else None,
        "name": (urlsplit(manifest.url).path.rsplit("/", 1)[-1] or None) if manifest else None,
        "size_bytes": manifest.total_length if manifest else None,
        "piece_length": manifest.piece_length if manifest else None,
        "pieces": manifest.num_pieces if manifest else None,
        "pieces_known": manifest.known if manifest else 0,
        "pieces_available": swarm.available(task).bit_count() if manifest else None,
        "peers": len(peers),
        "seeds": task.seeds,
        "completed": task.completions,
        "completion": sum(p.progress for p in peers.values()) / len(peers) if peers else 0.0,
        "download_bps": max(0.0, task.download_bps),
        "upload_bps": max(0.0, task.upload_bps),
        "origin_bytes": task.origin_bytes,
        "peer_bytes": task.peer_bytes,
        "age_s": now - task.created,
        "source_fetchers": planner.fetchers if planner else 0,
        "peer_list": [_peer_stats(swarm, task, peer, now) for peer in listed],
        "peer_list_truncated": len(peers) > len(listed),
    }


def _peer_stats(swarm: Swarm, task: TaskRecord, peer: PeerRecord, now: float) -> dict[str, Any]:
    assigned = len(task.planner.assignment_of(peer.peer_id)) if task.planner else 0
    stall_s = 2 * swarm.config.interval_s
    if peer.left == 0:
        state = "seeding"
    elif assigned:
        state = "fetching"
    elif now - peer.grew_at >= stall_s:  # grew_at starts at first_seen: seen that long
        state = "stalled"
    else:
        state = "downloading"
    oldest_s = now - swarm.config.bad_peer_ttl_s
    have = peer.have
    return {
        "id": peer.peer_id.hex(),
        "client": client_of(peer.peer_id),
        "address": peer.contact.address,
        "zone": peer.zone,
        "progress": peer.progress,
        "have": None if have is None else have.to_bytes(task.have_bytes, "big").hex(),
        "download_bps": peer.download_bps,
        "upload_bps": peer.upload_bps,
        "downloaded_bytes": peer.downloaded,
        "uploaded_bytes": peer.uploaded,
        "origin_bytes": peer.origin,
        "left_bytes": peer.left,
        "load": peer.load,
        "last_seen_s": now - peer.last_seen,
        "assigned": assigned,
        "state": state,
        "reported_bad": sum(1 for at in (peer.reports or {}).values() if at > oldest_s),
    }


def client_of(peer_id: bytes) -> str:
    """The printable head of a peer id (at most 8 characters): ``-DF0100-``, ``-qB4620-``."""
    head = []
    for byte in peer_id[:8]:
        if not 0x20 < byte < 0x7F:
            break
        head.append(chr(byte))
    return "".join(head)
