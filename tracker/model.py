"""The tracker's shared vocabulary: what an announce says, and what the swarm answers.

``protocol`` turns query bytes into these values and these values into bencoded bytes;
``swarm`` turns an ``AnnounceRequest`` into an ``AnnounceResult``. Neither side does I/O.
"""

from __future__ import annotations

import enum
import ipaddress
import struct
from dataclasses import dataclass

#: BEP 3: info_hash and peer_id are exactly 20 bytes.
ID_BYTES = 20


class Event(enum.Enum):
    """BEP 3 ``event``; absent and empty both mean a regular announce."""

    NONE = b""
    STARTED = b"started"
    COMPLETED = b"completed"
    STOPPED = b"stopped"


@dataclass(frozen=True, slots=True)
class PeerContact:
    """How other peers reach one peer; built once when the peer registers or moves.

    ``compact4`` / ``compact6`` are the BEP 23 / BEP 7 encodings (address then port, network
    byte order), precomputed because every announce that hands this peer out copies them.
    """

    peer_id: bytes
    port: int
    ip4: bytes | None = None
    ip6: bytes | None = None
    compact4: bytes | None = None
    compact6: bytes | None = None

    @classmethod
    def make(cls, peer_id: bytes, port: int, ip4: bytes | None, ip6: bytes | None) -> PeerContact:
        packed_port = struct.pack(">H", port)
        return cls(
            peer_id=peer_id,
            port=port,
            ip4=ip4,
            ip6=ip6,
            compact4=ip4 + packed_port if ip4 is not None else None,
            compact6=ip6 + packed_port if ip6 is not None else None,
        )

    @property
    def address(self) -> str:
        """``host:port`` for people (IPv4 preferred, IPv6 in brackets)."""
        if self.ip4 is not None:
            return f"{ipaddress.IPv4Address(self.ip4)}:{self.port}"
        if self.ip6 is not None:
            return f"[{ipaddress.IPv6Address(self.ip6)}]:{self.port}"
        return f"?:{self.port}"


@dataclass(frozen=True, slots=True)
class AnnounceRequest:
    """One parsed ``GET /announce`` (BEP 3), plus our peers' ``df_*`` extension parameters.

    Stock BitTorrent clients send none of the ``df_*`` parameters; their defaults below describe
    a peer the tracker knows only by ``left``.
    """

    info_hash: bytes
    peer_id: bytes
    port: int
    uploaded_bytes: int = 0
    downloaded_bytes: int = 0
    left_bytes: int | None = None
    event: Event = Event.NONE
    numwant: int = 50
    compact: bool = True
    no_peer_id: bool = False
    key: bytes | None = None
    ip4: bytes | None = None
    ip6: bytes | None = None
    # --- extension parameters sent by our own peers (dfget, dfdaemon) ---
    #: ``df_have``: the peer's pieces as a BEP 3 bitfield (piece 0 = high bit of byte 0).
    have: bytes | None = None
    #: ``df_load``: how many peers this peer is uploading to right now.
    load: int | None = None
    #: ``df_zone``: a locality label (rack, zone); peers in the same zone are preferred.
    zone: str = ""
    #: ``df_source=1``: this peer may fetch pieces from the origin (back-to-source).
    can_source: bool = False
    #: ``df_origin``: bytes this peer has fetched from the origin so far (of ``downloaded``).
    origin_bytes: int = 0
    #: ``df_ts`` and ``df_auth``: the cluster-secret proof (``peerwire.auth``), when sent.
    auth_ts: int | None = None
    auth: bytes | None = None
    #: ``df_seq``: grows with every announce of the peer; with the secret, one not above the
    #: last accepted is a replay.
    seq: int | None = None

    @property
    def is_ours(self) -> bool:
        """True when the announce comes from one of our peers (it sent ``df_have``)."""
        return self.have is not None


@dataclass(frozen=True, slots=True)
class AnnounceResult:
    """What the swarm decided for one announce; ``protocol.encode_announce`` bencodes it."""

    interval_s: int
    min_interval_s: int
    complete: int
    incomplete: int
    peers: list[PeerContact]
    #: Pieces this peer should fetch from the origin now (ascending, disjoint from every other
    #: peer's assignment). Empty when there is nothing to fetch or the origin budget is spent.
    assignment: tuple[int, ...] = ()
    #: Seconds until an unreported assignment is taken back and handed to someone else.
    assignment_ttl_s: int = 0
    #: How many piece digests the tracker's manifest holds, or None without a manifest; a peer
    #: fetches ``GET /tasks/<id>`` again when this grows past what it has.
    pieces_known: int | None = None
    #: The compact peer lists already made (BEP 23 ``peers``, BEP 7 ``peers6``), when the store
    #: answered a compact announce that way (``tracker.redisstore``); ``peers`` is then empty.
    packed: tuple[bytes, bytes] | None = None


@dataclass(frozen=True, slots=True)
class ScrapeCounts:
    """BEP 48 per-file counts."""

    complete: int
    incomplete: int
    downloaded: int


@dataclass(frozen=True, slots=True)
class PeerReport:
    """``POST /tasks/<id>/reports``: a peer says another peer misbehaved."""

    reporter: bytes
    reason: str
    #: The reported peer, by id and/or by ``host:port`` (at least one is set).
    peer_id: bytes | None = None
    address: str | None = None
