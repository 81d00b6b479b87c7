"""The tracker's records of one task and of one of its peers (the swarm's state, ``tracker.swarm``
changes them), and two small queries on them."""

from __future__ import annotations

import ipaddress

from tracker.assign import SourcePlanner
from tracker.manifests import TaskManifest
from tracker.model import AnnounceRequest, PeerContact, ScrapeCounts
from tracker.selection import Ranked, Ranking


class PeerRecord(Ranked):
    """One peer of one task (``peer_id``, ``contact`` and ``zone`` come from ``Ranked``)."""

    __slots__ = (
        "can_source",
        "counted",
        "download_bps",
        "downloaded",
        "first_seen",
        "grew_at",
        "have",
        "last_seen",
        "left",
        "load",
        "origin",
        "progress",
        "reports",
        "seq",
        "upload_bps",
        "uploaded",
    )

    def __init__(self, req: AnnounceRequest, now: float) -> None:
        super().__init__(req.peer_id, PeerContact.make(req.peer_id, req.port, req.ip4, req.ip6))
        self.first_seen = self.last_seen = self.grew_at = now
        self.downloaded = req.downloaded_bytes
        self.uploaded = req.uploaded_bytes
        self.origin = req.origin_bytes
        self.left: int | None = None  # set by the first announce's update
        self.counted = False  # counted as a completion
        self.download_bps = self.upload_bps = 0.0
        self.have: int | None = None  # piece-set int (assign module), None = unknown
        self.progress = 0.0
        self.load: int | None = None
        self.can_source = False
        #: Reporter peer id -> when it reported (oldest first); None while never reported.
        self.reports: dict[bytes, float] | None = None
        #: The last ``df_seq`` accepted (announces with the cluster secret).
        self.seq = req.seq


class TaskRecord:
    """One task: peers, ranking, manifest and planner, counters kept after peers leave."""

    __slots__ = (
        "available",
        "available_stale",
        "completions",
        "created",
        "download_bps",
        "full",
        "have_bytes",
        "idle_since",
        "manifest",
        "origin_bytes",
        "peer_bytes",
        "peers",
        "planner",
        "ranking",
        "reported",
        "seeds",
        "upload_bps",
    )

    def __init__(self, now: float, exclude_reports: int) -> None:
        self.peers: dict[bytes, PeerRecord] = {}
        self.ranking = Ranking(exclude_reports=exclude_reports)
        self.manifest: TaskManifest | None = None
        self.planner: SourcePlanner | None = None
        self.full = 0  # every piece, once the manifest says how many
        self.have_bytes = -1  # df_have length the manifest expects; -1 without manifest
        self.available = 0  # OR of the live peers' have
        self.available_stale = False
        self.created = self.idle_since = now
        self.seeds = self.completions = 0
        self.origin_bytes = self.peer_bytes = 0
        self.download_bps = self.upload_bps = 0.0  # sums over the peers
        self.reported: set[bytes] = set()  # peers holding reports (expired by ``expire``)


def counts(task: TaskRecord) -> ScrapeCounts:
    return ScrapeCounts(task.seeds, len(task.peers) - task.seeds, task.completions)


def find_by_address(task: TaskRecord, address: str) -> PeerRecord | None:
    """The peer of ``task`` at ``host:port`` / ``[v6]:port`` (IP literals only), if any."""
    host, _, port_text = address.rpartition(":")
    try:
        packed = ipaddress.ip_address(host.removeprefix("[").removesuffix("]")).packed
        port = int(port_text)
    except ValueError:
        return None  # a hostname: peers are known by address only
    for peer in task.peers.values():
        contact = peer.contact
        if contact.port == port and (contact.ip4 == packed or contact.ip6 == packed):
            return peer
    return None
