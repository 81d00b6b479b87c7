"""Tunables of the peer wire for one task, with their defaults. How each default was chosen is
written up with its measurements in bench/README.md ("Native vs P2P on emulated links")."""

from __future__ import annotations

from dataclasses import dataclass

from peerwire.layout import LARGE_BLOCK_BYTES


@dataclass(frozen=True, slots=True)
class WireConfig:
    """Defaults suit loopback and datacentre links as well as slow emulated ones."""

    block_bytes: int = LARGE_BLOCK_BYTES
    #: Most requests in flight at one peer; the depth used is sized to the peer's rate.
    pipeline_depth: int = 32
    #: Each peer is asked for about this long of what it delivers, and at least
    #: ``min_pipeline_depth`` blocks (also the depth before its rate is known).
    pipeline_target_s: float = 1.0
    min_pipeline_depth: int = 2
    #: Bytes requested from all peers of the task and not yet arrived: bounds the piece
    #: buffers a task can hold, however many peers it has.
    max_inflight_bytes: int = 64 * 1024 * 1024
    request_timeout_s: float = 10.0
    #: Endgame duplicates a block only once its request is overdue for its holder's rate
    #: (``peerwire.scheduler.OVERDUE_FACTOR``), and at the latest this long after it was sent:
    #: on slow links a request waits its turn at the sender for seconds.
    endgame_patience_s: float = 5.0
    handshake_timeout_s: float = 10.0
    keepalive_interval_s: float = 30.0
    idle_timeout_s: float = 120.0
    tick_s: float = 0.5
    #: Connections per task we open ourselves; the room up to ``max_peers`` is for peers that
    #: arrive later (a crowd's latecomer must find someone with a free slot).
    dial_peers: int = 8
    #: Connections per task at most, incoming ones included.
    max_peers: int = 16
    #: Upload slots: interested peers unchoked at once (every peer, by default).
    max_unchoked: int = 16
    #: While peers wait for a slot, the longest-unchoked gives way this often.
    rotate_s: float = 5.0
    #: ``have`` messages to a peer are held this long at most and sent together (on a slow
    #: uplink shared by many connections, one packet per piece per peer is a real share).
    have_delay_s: float = 1.0
    ban_after_bad_pieces: int = 2
    random_first_pieces: int = 4
    picker_policy: str = "rarest_first"

    def __post_init__(self) -> None:
        positive = {
            "block_bytes": self.block_bytes,
            "pipeline_depth": self.pipeline_depth,
            "request_timeout_s": self.request_timeout_s,
            "handshake_timeout_s": self.handshake_timeout_s,
            "keepalive_interval_s": self.keepalive_interval_s,
            "idle_timeout_s": self.idle_timeout_s,
            "tick_s": self.tick_s,
            "dial_peers": self.dial_peers,
            "max_peers": self.max_peers,
            "max_unchoked": self.max_unchoked,
            "rotate_s": self.rotate_s,
            "pipeline_target_s": self.pipeline_target_s,
            "min_pipeline_depth": self.min_pipeline_depth,
            "max_inflight_bytes": self.max_inflight_bytes,
            "ban_after_bad_pieces": self.ban_after_bad_pieces,
        }
        for name, value in positive.items():
            if value <= 0:
                raise ValueError(f"{name} must be > 0, got {value}")
        if self.endgame_patience_s < 0:
            raise ValueError(f"endgame_patience_s must be >= 0, got {self.endgame_patience_s}")
