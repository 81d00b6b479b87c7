"""A task's membership of its swarm, as policy: when to announce, whom to dial, what an answer
asks of us. Sans-IO: times come from the injected clock, effects are commands.

* Announces go every ``interval`` the coordinator gives; sooner when asked (an origin assignment
  is done or running low, new pieces were assigned), never sooner than ``min interval`` after
  the last one, except once: right after the first assignment is done (``urgent``), because a
  first assignment is sized without knowing our rate and a lone peer may have the rest of the
  file to fetch. Until the first answer, and while the coordinator cannot be reached, every
  ``RETRY_S``.
* Dialling: at most ``dial_limit`` connections of our own (peers, connections not yet
  admitted and dials under way all count); an address is not dialled again within
  ``REDIAL_S``, and one left out for want of a slot is not remembered (a later answer may list
  it again).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Final

from peerwire.commands import Announce, Dial, FetchManifest, SupplyManifest
from peerwire.coordination import AnnounceAnswer, PeerAddress

#: Do not dial the same address again within this long.
REDIAL_S: Final = 30.0
#: Announce retry delay while the coordinator is unreachable.
RETRY_S: Final = 2.0
#: Addresses remembered as dialled, at most (the oldest quarter is forgotten past it).
MAX_DIALED: Final = 4096


class Membership:
    """When to announce and whom to dial, for one task."""

    def __init__(self, *, clock: Callable[[], float], dial_limit: int) -> None:
        self._clock = clock
        self.dial_limit = dial_limit
        #: The BEP 3 event of the next announce: ``started`` until one is answered.
        self.event = "started"
        self.registered = False
        self.failing = False
        self.interval_s = 5.0
        self.min_interval_s = 1.0
        self._in_flight = False
        self._sent_at = -math.inf
        #: When the next announce falls due by the clock alone.
        self._due_at = clock()
        self._asked = False
        self._urgent = False
        #: Answers that brought new origin pieces.
        self.assignments = 0
        self.last_assignment: frozenset[int] = frozenset()
        self._dialed: dict[tuple[str, int], float] = {}
        #: Dials under way (``Dial`` sent, ``dial_finished`` not yet heard).
        self.dialing = 0

    # -- announcing ----------------------------------------------------------------------------

    @property
    def deadline(self) -> float:
        """When the next announce should go (inf while one is under way)."""
        return self._due(self._clock())

    def _due(self, now: float) -> float:
        if self._in_flight:
            return math.inf
        due = min(self._due_at, now) if self._asked else self._due_at
        if not self._urgent:
            due = max(due, self._sent_at + self.min_interval_s)
        return due

    def ask(self, *, urgent: bool = False) -> None:
        """Announce as soon as ``min interval`` allows (``urgent``: at once)."""
        self._asked = True
        self._urgent = self._urgent or urgent

    def poll(self) -> Announce | None:
        """The announce to send now, if one is due."""
        now = self._clock()
        if now < self._due(now):  # one reading of the clock: an asked announce is due "now"
            return None
        self._in_flight = True
        self._sent_at = now
        self._asked = self._urgent = False
        return Announce(self.event)

    def answered(self, answer: AnnounceAnswer, *, has_pieces: bool, complete: bool) -> None:
        """The coordinator answered the announce under way."""
        self._in_flight = False
        self.failing = False
        self.event = ""
        self.registered = True
        self.interval_s = max(1.0, answer.interval_s)
        self.min_interval_s = max(0.5, min(answer.min_interval_s, self.interval_s))
        wait_s = self.interval_s
        if not answer.assignment and not has_pieces and not complete:
            # Nothing to fetch and nothing yet: while a crowd arrives, an assignment may be
            # split for us as soon as its fetcher has told its rate.
            wait_s = self.min_interval_s
        self._due_at = self._clock() + wait_s

    def failed(self) -> bool:
        """The announce under way failed (unreachable, or refused once registered); True the
        first time in a row (worth a log line)."""
        self._in_flight = False
        first = not self.failing
        self.failing = True
        self._due_at = self._clock() + min(self.interval_s, RETRY_S)
        return first

    def manifest_news(
        self, answer: AnnounceAnswer, known: int
    ) -> FetchManifest | SupplyManifest | None:
        """What an answer says of the task's manifest: the coordinator has none (a restarted
        tracker: give it ours), or knows more digests than we do (fetch them)."""
        if answer.pieces_known is None:
            return SupplyManifest()
        if answer.pieces_known > known:
            return FetchManifest()
        return None

    def assigned(self, assignment: tuple[int, ...]) -> bool:
        """Record the answer's origin assignment; True when it brings pieces we were not
        assigned before (then announce again soon: newcomers may take part of it)."""
        if not assignment:
            return False
        pieces = frozenset(assignment)
        new = not pieces <= self.last_assignment
        if new:
            self.assignments += 1
            self.ask()
        self.last_assignment = pieces
        return new

    def want_more(self) -> None:
        """The origin fetcher ran (or is running) out of assigned pieces."""
        self.ask(urgent=self.assignments == 1)

    # -- dialling ------------------------------------------------------------------------------

    def dials(self, peers: tuple[PeerAddress, ...], busy: int) -> list[Dial]:
        """Which of ``peers`` to dial now, given ``busy`` connections of ours (peers and
        connections not admitted yet; dials under way are counted here)."""
        now = self._clock()
        dials: list[Dial] = []
        for peer in peers:
            if busy + self.dialing + len(dials) >= self.dial_limit:
                break
            key = (peer.host, peer.port)
            last = self._dialed.get(key)
            if last is not None and now - last < REDIAL_S:
                continue
            self._dialed[key] = now
            dials.append(Dial(peer.host, peer.port))
        if len(self._dialed) > MAX_DIALED:
            for old in sorted(self._dialed, key=self._dialed.__getitem__)[: MAX_DIALED // 4]:
                del self._dialed[old]
        self.dialing += len(dials)
        return dials

    def dial_finished(self) -> None:
        self.dialing = max(0, self.dialing - 1)
