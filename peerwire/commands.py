"""What the task core asks its shell to do: commands out of ``peerwire.core.TaskCore``.

The core never touches a socket, a file, a thread or the event loop. Every effect it wants is one
of these small values, collected in order and taken by the shell (``TaskCore.take_commands``),
which carries them out and reports back as events (``peer_closed``, ``piece_checked``,
``announced``, ...). ``C`` is the shell's connection handle: any hashable the core only hands
back.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Generic, NamedTuple, TypeVar

from peerwire import messages as m
from peerwire.ids import PeerId

C = TypeVar("C", bound=Hashable)


class Send(NamedTuple, Generic[C]):
    """Encode ``messages`` and write them to ``conn`` (in order, one write)."""

    conn: C
    messages: Sequence[m.Message]


class Close(NamedTuple, Generic[C]):
    """Close ``conn``; its ``peer_closed`` event follows."""

    conn: C
    reason: str


class WakeUploader(NamedTuple, Generic[C]):
    """``conn`` has requests queued (and had none): the uploader asks ``choose_upload``."""

    conn: C


class Verify(NamedTuple):
    """Hash ``buffer`` against ``expected``, write and record it as piece ``index`` (a worker
    thread for large pieces), then ``piece_checked`` with the digest or None."""

    index: int  # type: ignore[assignment]
    buffer: bytearray
    expected: bytes


class Dial(NamedTuple):
    """Open a connection to a peer; ``dial_finished`` follows, whatever happens."""

    host: str
    port: int


class Announce(NamedTuple):
    """Tell the coordinator our progress (``TaskCore.progress``) with this BEP 3 ``event``;
    ``announced``, ``announce_failed`` or ``announce_refused`` follows."""

    event: str


class FetchManifest(NamedTuple):
    """The coordinator knows digests we do not: get its manifest; ``manifest_received``."""


class SupplyManifest(NamedTuple):
    """The coordinator has no manifest for the task (it restarted): give it ours."""


class FetchFromOrigin(NamedTuple):
    """The pieces this peer is to fetch from the origin now, in the order to fetch them
    (``descending``: highest first). Replaces any earlier list; pieces no longer in it are not
    to be fetched (the coordinator gave them to someone else)."""

    pieces: tuple[int, ...]
    descending: bool


class CheckClaims(NamedTuple):
    """Read these claimed pieces from the origin: their bytes settle whether the claims of
    the coordinator's manifest are believed (``origin_stored`` follows)."""

    pieces: tuple[int, ...]


class ClaimsRefuted(NamedTuple):
    """The origin contradicted a claimed digest: every claim was dropped. What is missing must
    come from the origin; ``tainted`` pieces were verified against a claim and are not to be
    kept."""

    reason: str
    tainted: tuple[int, ...]


class ReportDigests(NamedTuple):
    """Digests of pieces this peer read from the origin, for the coordinator's manifest."""

    digests: dict[int, bytes]


class ReportPeer(NamedTuple):
    """A peer misbehaved (``reason``): tell the coordinator."""

    peer_id: PeerId
    address: str
    reason: str


class PieceDone(NamedTuple):
    """Piece ``index`` is verified and stored (progress displays, readers streaming in order)."""

    index: int  # type: ignore[assignment]


class TaskDone(NamedTuple):
    """Every piece is verified."""


class SwarmRefused(NamedTuple):
    """The coordinator will not have this peer (no cluster secret, full): not a member."""

    reason: str


class TaskFailed(NamedTuple):
    """The task cannot go on (the disk failed, the origin changed)."""

    error: BaseException


Command = (
    Send[C]
    | Close[C]
    | WakeUploader[C]
    | Verify
    | Dial
    | Announce
    | FetchManifest
    | SupplyManifest
    | FetchFromOrigin
    | CheckClaims
    | ClaimsRefuted
    | ReportDigests
    | ReportPeer
    | PieceDone
    | TaskDone
    | SwarmRefused
    | TaskFailed
)
