"""The tracker interface: how a task's peer talks to whatever coordinates its swarm.

    announce(task, progress)          -> peers, back-to-source assignment, manifest news
    get_manifest / put_manifest       -> the task's piece digests (report_pieces is a partial put)
    report_error(task, peer, reason)  -> a bad piece, a refused connection
    service_down(task, progress)      -> leaving the swarm (``event=stopped``)

The task core (``peerwire.core``) reads ``AnnounceAnswer``s and writes ``Progress``; the
implementations live with the download engine (``dfget.coordinators``: the HTTP tracker, and any
other coordinator), so that one can replace another without touching the engine. These are only
the vocabulary: plain values, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from peerwire.ids import PeerId, TaskId


class TrackerError(Exception):
    """Base of coordinator errors."""


class TrackerUnavailable(TrackerError):
    """No tracker in the list could be reached; the message says what each one did."""


class TrackerRefused(TrackerError):
    """A tracker answered with a ``failure reason`` (or a 4xx for the JSON API)."""


@dataclass(frozen=True, slots=True)
class Progress:
    """What a peer says about itself in an announce (BEP 3 fields plus our ``df_*`` ones)."""

    peer_id: PeerId
    port: int
    uploaded_bytes: int = 0
    downloaded_bytes: int = 0
    left_bytes: int | None = None
    #: BEP 3 bitfield of the pieces held; None for a peer that does not know the layout yet.
    have: bytes | None = None
    load: int = 0
    zone: str = ""
    can_source: bool = True
    origin_bytes: int = 0
    numwant: int = 50


@dataclass(frozen=True, slots=True)
class PeerAddress:
    host: str
    port: int
    peer_id: bytes | None = None


@dataclass(frozen=True, slots=True)
class AnnounceAnswer:
    interval_s: float
    min_interval_s: float
    complete: int
    incomplete: int
    peers: tuple[PeerAddress, ...]
    #: Pieces to fetch from the origin now (ascending); () when none.
    assignment: tuple[int, ...] = ()
    assignment_ttl_s: float = 0.0
    #: Digests the tracker's manifest holds (None: the tracker has no manifest for the task).
    pieces_known: int | None = None


@dataclass(frozen=True, slots=True)
class TaskManifestDoc:
    """The tracker's view of a task: geometry and the digests known so far (None = unknown)."""

    url: str
    total_length: int
    piece_length: int
    piece_sha256: tuple[bytes | None, ...] = field(default=())
    #: The origin's ETag or Last-Modified when the task began (None: it sent neither).
    validator: str | None = None
    #: Whether the origin honours Range requests.
    ranges: bool = True

    def to_json(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "total_length": self.total_length,
            "piece_length": self.piece_length,
            "piece_sha256": [d.hex() if d is not None else None for d in self.piece_sha256],
            "validator": self.validator,
            "ranges": self.ranges,
        }


class Coordinator(Protocol):
    """The narrow interface between a peer and whatever coordinates its swarm."""

    #: Its manifests are proven to come from holders of the cluster secret (its answers carry
    #: the secret's proof). False: a manifest from it is a claim, to be checked against the
    #: origin before it is believed.
    vouched: bool

    async def announce(
        self, task: TaskId, progress: Progress, event: str = ""
    ) -> AnnounceAnswer: ...

    async def get_manifest(self, task: TaskId) -> TaskManifestDoc | None: ...

    async def put_manifest(self, task: TaskId, manifest: TaskManifestDoc) -> TaskManifestDoc: ...

    async def report_piece(self, task: TaskId, piece_index: int, sha256: bytes) -> None: ...

    async def report_pieces(self, task: TaskId, digests: dict[int, bytes]) -> None: ...

    async def report_error(
        self, task: TaskId, reporter: PeerId, peer: PeerAddress, reason: str
    ) -> None: ...

    async def service_down(self, task: TaskId, progress: Progress) -> None: ...

    async def close(self) -> None: ...
