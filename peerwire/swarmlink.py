"""The task core's side of the tracker interface: coordinator answers in, announces out.

Part of the task core (sans-IO, the core's clock): it turns an announce answer into dials,
manifest requests and the origin assignment, and decides when the next announce goes
(``peerwire.membership``). The shell runs the coordinator calls the commands ask for and reports
their outcomes here (``announced``, ``announce_failed``, ``manifest_received``, ...).
"""

from __future__ import annotations

import logging
from collections.abc import Hashable
from typing import TYPE_CHECKING, Generic, TypeVar

from peerwire.commands import FetchFromOrigin, SwarmRefused
from peerwire.coordination import AnnounceAnswer, Progress, TaskManifestDoc
from peerwire.digests import DigestConflict, Trust
from peerwire.membership import Membership

if TYPE_CHECKING:
    from peerwire.core import TaskCore

log = logging.getLogger(__name__)

C = TypeVar("C", bound=Hashable)


class SwarmLink(Generic[C]):
    """Announce timing, dials and assignments of one task core."""

    def __init__(self, core: TaskCore[C], membership: Membership) -> None:
        self._core = core
        self.membership = membership
        #: Our peer port as the coordinator should publish it (the shell sets it).
        self.port = 0
        self.zone = ""
        #: Whether this peer may be given pieces to fetch from the origin.
        self.may_fetch_origin = True
        #: False while there is no coordinator (an origin-only download): nothing is announced.
        self.active = False
        #: How far the coordinator's manifests are believed (``CLAIMED`` without the secret).
        self.manifest_trust = Trust.VOUCHED

    @property
    def deadline(self) -> float:
        return self.membership.deadline if self.active else float("inf")

    def start(self) -> None:
        """A coordinator is there: announce ``started`` at once."""
        self.active = True
        self._core.deadline = min(self._core.deadline, self.membership.deadline)

    def stop(self) -> None:
        self.active = False

    def poll(self) -> None:
        """The timer fired: send the announce if one is due."""
        if self.active and (command := self.membership.poll()) is not None:
            self._core.emit(command)

    def progress(self) -> Progress:
        """What the next announce says of this peer."""
        core = self._core
        stats = core.stats
        layout = core.layout
        have = core.have
        done = len(have) * layout.piece_length
        last = layout.num_pieces - 1
        if last >= 0 and last in have:
            done -= layout.piece_length - layout.piece_size(last)
        left = layout.total_length - done
        return Progress(
            peer_id=core.peer_id,
            port=self.port,
            uploaded_bytes=stats.uploaded_bytes,
            downloaded_bytes=stats.downloaded_bytes + stats.origin_bytes,
            left_bytes=left,
            have=have.to_bytes(),
            load=core.peer_count,
            zone=self.zone,
            can_source=self.may_fetch_origin and left > 0,
            origin_bytes=stats.origin_bytes,
        )

    # -- coordinator outcomes ------------------------------------------------------------------

    def announced(self, answer: AnnounceAnswer) -> None:
        core = self._core
        membership = self.membership
        log.debug(
            "announced: %d peers, assignment of %d pieces",
            len(answer.peers),
            len(answer.assignment),
        )
        membership.answered(answer, has_pieces=len(core.have) > 0, complete=core.done)
        news = membership.manifest_news(answer, core.digests.known)
        if news is not None:
            core.emit(news)
        membership.assigned(answer.assignment)
        descending = len(answer.assignment) > 1 and answer.assignment[0] > answer.assignment[-1]
        core.emit(FetchFromOrigin(answer.assignment, descending))
        for dial in membership.dials(answer.peers, core.peer_count + core.connecting_count):
            core.emit(dial)
        self._rearm()

    def announce_failed(self, reason: str) -> None:
        if self.membership.failed():
            log.warning("announce failed (%s); keeping known peers, retrying", reason)
        self._rearm()

    def announce_refused(self, reason: str) -> None:
        """The coordinator answered with a refusal. Before we were ever registered, the swarm
        is closed to us (no cluster secret, full): the engine decides what then."""
        if not self.membership.registered:
            self.active = False
            self._core.emit(SwarmRefused(reason))
            return
        log.warning("announce refused: %s", reason)
        self.membership.failed()
        self._rearm()

    def manifest_received(self, doc: TaskManifestDoc | None) -> int:
        """The coordinator's manifest (after a ``FetchManifest``): its digests we lacked are
        learned. Returns how many."""
        core = self._core
        if doc is None or len(doc.piece_sha256) != core.layout.num_pieces:
            return 0  # a restarted tracker: our next announce supplies it again
        # New digests, and any that differ from ours: a claim that contradicts our own read
        # refutes the claims (``peerwire.believing``).
        fresh = {
            index: digest
            for index, digest in enumerate(doc.piece_sha256)
            if digest is not None and core.digests.get(index) != digest
        }
        if not fresh:
            return 0
        try:
            return core.learn_digests(fresh, self.manifest_trust)
        except DigestConflict as exc:
            log.error("task %s: %s", core.task_id, exc)
            return len(exc.learned)

    def dial_finished(self) -> None:
        self.membership.dial_finished()

    def origin_wants_more(self) -> None:
        """The origin fetcher has done (or nearly) what it was assigned."""
        self.membership.want_more()
        self._rearm()

    def _rearm(self) -> None:
        if self.active:
            self._core.deadline = min(self._core.deadline, self.membership.deadline)
