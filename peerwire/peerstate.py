"""What the task core keeps per admitted peer, and the task's counters."""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from peerwire.admission import Admitted
from peerwire.layout import Block
from peerwire.pipeline import PipelineSizer
from peerwire.session import PeerSession

C = TypeVar("C", bound=Hashable)


@dataclass
class TaskStats:
    """Counters of one task, for summaries and metrics."""

    downloaded_bytes: int = 0
    uploaded_bytes: int = 0
    wasted_bytes: int = 0
    #: Requests refused because our uplink was busy and other peers hold the piece.
    requests_shed: int = 0
    pieces_verified: int = 0
    pieces_failed: int = 0
    #: Pieces and bytes read from the origin by this peer.
    origin_pieces: int = 0
    origin_bytes: int = 0
    peers_banned: list[str] = field(default_factory=list)
    bytes_from_peer: dict[str, int] = field(default_factory=dict)


class PeerState(Generic[C]):
    """Our side of one admitted connection."""

    __slots__ = (
        "address",
        "conn",
        "haves",
        "large_blocks",
        "last_received_s",
        "last_sent_s",
        "outgoing",
        "peer_id",
        "pipeline",
        "receiving",
        "session",
        "strikes",
    )

    def __init__(
        self, admitted: Admitted[C], session: PeerSession, pipeline: PipelineSizer
    ) -> None:
        self.conn = admitted.conn
        self.peer_id = admitted.peer_id
        self.address = admitted.address
        self.outgoing = admitted.outgoing
        self.large_blocks = admitted.large_blocks
        self.session = session
        self.pipeline = pipeline
        #: Blocks claimed for the piece buffer whose ``piece`` message is still to come, in wire
        #: order (the decoder may start the next block before the last one's message is seen).
        self.receiving: deque[Block] = deque()
        #: Pieces we verified that this peer has not been told of yet.
        self.haves: list[int] = []
        self.strikes = 0
        self.last_received_s = self.last_sent_s = admitted.since_s
