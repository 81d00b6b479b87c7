"""What the task core believes: the digests it learns, the check of a claim against the origin,
and the pieces this peer reads from the origin itself.

A mixin of ``peerwire.core.TaskCore`` (the attributes it uses are set up by the core and
declared below). A piece is asked of peers only when its digest is *usable*: known, and either
vouched for (``Trust.VOUCHED``, ``Trust.OWN``) or a claim this peer has checked. A claim
(``Trust.CLAIMED``: a manifest from a coordinator without the cluster secret) is checked by this
peer's own origin reads: a piece it was assigned, or one claimed piece chosen at random and read
for the purpose (``CheckClaims``). When the origin's bytes match the claim, the claims are
believed; when they do not, every claim is dropped (``ClaimsRefuted``): the engine takes what is
missing from the origin, and pieces already verified against the claims are not to be kept.
Without the origin to check against (``check_claims`` False: back-to-source disabled), claims
are believed as they come.
"""

from __future__ import annotations

import random
from collections.abc import Hashable
from typing import Generic, TypeVar

from peerwire.commands import CheckClaims, ClaimsRefuted, Command, ReportDigests
from peerwire.digests import ClaimRefuted, DigestBook, DigestConflict, Trust
from peerwire.peerstate import TaskStats
from peerwire.scheduler import Scheduler

C = TypeVar("C", bound=Hashable)


class Believing(Generic[C]):
    """Digests learned and checked; pieces read from the origin."""

    digests: DigestBook
    stats: TaskStats
    scheduler: Scheduler[C]
    origin_claimed: set[int]
    claim_verified: set[int]
    #: Whether claims may be checked against the origin (else they are believed).
    check_claims: bool
    #: A claim was confirmed by an own origin read: claims are believed.
    claims_checked: bool
    #: A claim was contradicted: no claim is believed any more.
    claims_refuted: bool
    _checking: set[int]
    _rng: random.Random
    _out: list[Command[C]]

    # Provided by ``peerwire.downloading.Downloading`` (the core's other half).
    def piece_verified(self, index: int) -> None: ...

    def update_interest(self) -> None: ...

    def _refill_all(self) -> None: ...

    def _drop_buffer(self, index: int) -> None: ...

    def usable(self, index: int) -> bool:
        """Whether a piece received from peers can be checked against a believed digest."""
        trust = self.digests.trust(index)
        if trust is None:
            return False
        return trust >= Trust.VOUCHED or self.claims_checked or not self.check_claims

    def held_at_start(self, missing: list[int]) -> list[int]:
        """The missing pieces peers may not be asked for yet."""
        return [index for index in missing if not self.usable(index)]

    # -- learning ------------------------------------------------------------------------------

    def learn_digests(self, digests: dict[int, bytes], trust: Trust = Trust.VOUCHED) -> int:
        """Digests from the coordinator's manifest: those pieces may be asked of peers once
        their digest is usable. Returns how many were new; a contradiction of a known digest
        raises ``DigestConflict`` after the others were learned (a claim contradicting this
        peer's own read refutes the claims instead)."""
        if trust is Trust.CLAIMED and self.claims_refuted:
            return 0  # that coordinator's manifest was shown false: nothing of it is taken
        try:
            learned = self.digests.learn_many(digests, trust)
        except DigestConflict as exc:
            self._learned(exc.learned)
            if trust is Trust.CLAIMED:
                self._refute(f"the coordinator's manifest contradicts this peer's: {exc}")
                return len(exc.learned)
            raise
        self._learned(learned)
        return len(learned)

    def _learned(self, learned: list[int]) -> None:
        usable = [i for i in learned if self.usable(i)]
        for index in usable:
            if index not in self.origin_claimed:
                self.scheduler.unhold(index)
        if usable:
            self.update_interest()
        if len(usable) < len(learned):
            self.start_claim_check()

    # -- checking claims -----------------------------------------------------------------------

    def start_claim_check(self) -> None:
        """Read one claimed piece from the origin, unless a read that settles it is under way."""
        if not self.check_claims or self.claims_checked or self.claims_refuted or self._checking:
            return
        claimed = [i for i in self.digests.claimed() if i not in self.scheduler.have]
        if not claimed or any(i in self.origin_claimed for i in claimed):
            return  # nothing to check, or an assigned origin read will settle it
        pick = self._rng.choice(claimed)
        self._checking.add(pick)
        self._out.append(CheckClaims((pick,)))

    def _confirm_claims(self) -> None:
        self.claims_checked = True
        self._checking.clear()
        self._learned(self.digests.claimed())

    def origin_unreachable(self) -> None:
        """The origin cannot be reached to check the claims: they are believed as they are
        (the swarm goes on without the origin; SECURITY.md says what that leaves open)."""
        if self.check_claims and not self.claims_checked and not self.claims_refuted:
            self.check_claims = False
            self._checking.clear()
            self._learned(self.digests.claimed())

    def claims_contradicted(self, reason: str) -> None:
        """The coordinator holds another digest than this peer read from the origin (it
        refused our report): its manifest is false where it disagrees."""
        if not self.claims_refuted:
            self._refute(reason)

    def _refute(self, reason: str) -> None:
        """A claim is false: drop them all; the pieces they described wait for the origin."""
        self.claims_refuted = True
        self.claims_checked = False
        self._checking.clear()
        for index in self.digests.forget_claims():
            self.scheduler.hold(index)
        tainted = tuple(sorted(self.claim_verified))
        self._out.append(ClaimsRefuted(reason, tainted))
        self.update_interest()

    # -- the origin ----------------------------------------------------------------------------

    def claim_for_origin(self, indices: list[int]) -> list[int]:
        """Take pieces off the peer wire to fetch them from the origin; returns those taken
        (pieces already had or being received from peers are left to the wire)."""
        taken: list[int] = []
        for index in indices:
            if index in self.origin_claimed:
                taken.append(index)
            elif index not in self.scheduler.have and self.scheduler.hold(index):
                self.origin_claimed.add(index)
                taken.append(index)
                self._drop_buffer(index)  # a stalled piece's partial buffer, if any
        return taken

    def release_from_origin(self, indices: list[int]) -> None:
        """Give claimed pieces back to the peer wire (not fetched after all)."""
        for index in indices:
            if index in self.origin_claimed:
                self.origin_claimed.discard(index)
                self._checking.discard(index)
                if self.usable(index):
                    self.scheduler.unhold(index)
        self._refill_all()
        self.start_claim_check()

    def origin_expected(self, first: int, count: int) -> list[bytes | None]:
        """The digests that pieces ``first`` .. ``first + count - 1`` read from the origin must
        match: the believed ones. None: not known, or only claimed - the origin's bytes are
        taken as they are, and then settle the claim."""
        return [
            self.digests.get(i) if (self.digests.trust(i) or 0) >= Trust.VOUCHED else None
            for i in range(first, first + count)
        ]

    def origin_stored(self, first: int, sizes: list[int], digests: list[bytes | None]) -> list[int]:
        """Pieces read from the origin were committed: each one's digest, or None where the
        bytes did not match a believed digest (nothing stored). Returns those indices."""
        bad: list[int] = []
        report: dict[int, bytes] = {}
        confirmed = refuted = False
        for index, size, digest in zip(
            range(first, first + len(sizes)), sizes, digests, strict=True
        ):
            self.origin_claimed.discard(index)
            self._checking.discard(index)
            if index in self.scheduler.have:
                continue  # it was there before, or a peer's copy was verified meanwhile
            if digest is None:
                if self.usable(index):
                    self.scheduler.unhold(index)
                bad.append(index)
                continue
            was_claim = self.digests.trust(index) is Trust.CLAIMED
            try:
                self.digests.learn(index, digest, Trust.OWN)
            except ClaimRefuted as exc:
                if not refuted:
                    self._refute(f"the origin contradicts the coordinator's manifest: {exc}")
                refuted = True
                self.digests.learn(index, digest, Trust.OWN)
            else:
                confirmed = confirmed or was_claim
            report[index] = digest
            self.stats.origin_pieces += 1
            self.stats.origin_bytes += size
            self.piece_verified(index)
        if report:
            self._out.append(ReportDigests(report))
        if confirmed and not refuted and not self.claims_refuted and not self.claims_checked:
            self._confirm_claims()
        self._refill_all()
        self.start_claim_check()
        return bad
