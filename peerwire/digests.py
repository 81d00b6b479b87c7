"""The piece digests of one task as this peer knows them, and how far each is believed.

A task fetched by URL starts with its geometry and few or no digests; they arrive during the
download, from the coordinator's manifest or computed from the pieces this peer reads from the
origin itself. ``DigestBook`` is that list and where each digest came from:

* ``OWN``: computed from this peer's own read of the origin - always believed;
* ``VOUCHED``: from a coordinator that proved it holds the cluster secret (its manifests come
  only from members that prove it too), or the content's own description - believed;
* ``CLAIMED``: offered by a coordinator anyone could write to (no secret) - a claim, believed
  only once this peer's own origin reads agree with it (the task core decides when).

An own read that contradicts a claim wins (``ClaimRefuted``): a claim never wins by arriving
first. It does no I/O and is owned by the task core (one thread). The piece store
(``peerwire.storage``) is handed the digest of each piece it commits; it keeps none of its own.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from enum import IntEnum
from typing import Final

SHA256_BYTES: Final = 32


class Trust(IntEnum):
    """How far a digest is believed, least first."""

    CLAIMED = 1
    VOUCHED = 2
    OWN = 3


class DigestConflict(ValueError):
    """Some digests contradicted the known ones; ``learned`` lists those that were new."""

    def __init__(self, learned: list[int], conflicts: list[str]) -> None:
        super().__init__("; ".join(conflicts[:3]) + (" ..." if len(conflicts) > 3 else ""))
        self.learned = learned
        self.conflicts = conflicts


class ClaimRefuted(ValueError):
    """A digest more trusted than a claim contradicts it: the claim is false."""

    def __init__(self, index: int, claimed: bytes, actual: bytes) -> None:
        super().__init__(
            f"piece {index}: the claimed digest {claimed.hex()[:16]}... is not the origin's "
            f"{actual.hex()[:16]}..."
        )
        self.index = index


class DigestBook:
    """One digest (or None: not known yet) per piece of a task, with its ``Trust``."""

    __slots__ = ("_digests", "_known", "_trust")

    def __init__(
        self,
        num_pieces: int,
        digests: Iterable[bytes | None] = (),
        trust: Trust = Trust.VOUCHED,
    ) -> None:
        """``digests``, when given, are one per piece (None: unknown), all of ``trust``."""
        known = list(digests)
        if known and len(known) != num_pieces:
            raise ValueError(f"{len(known)} digests for {num_pieces} pieces")
        self._digests: list[bytes | None] = known or [None] * num_pieces
        self._trust = bytearray(num_pieces)
        for index, digest in enumerate(self._digests):
            if digest is not None:
                _check(index, digest)
                self._trust[index] = trust
        self._known = sum(digest is not None for digest in self._digests)

    def __len__(self) -> int:
        return len(self._digests)

    def get(self, index: int) -> bytes | None:
        """The digest of piece ``index``, or None while unknown; IndexError outside the task."""
        if index < 0:
            raise IndexError(f"piece {index} is outside the task")
        return self._digests[index]

    def trust(self, index: int) -> Trust | None:
        """How far the digest of piece ``index`` is believed (None: unknown)."""
        if index < 0:
            raise IndexError(f"piece {index} is outside the task")
        level = self._trust[index]
        return Trust(level) if level else None

    @property
    def known(self) -> int:
        """How many pieces' digests are known."""
        return self._known

    @property
    def complete(self) -> bool:
        return self._known == len(self._digests)

    def snapshot(self, at_least: Trust = Trust.CLAIMED) -> tuple[bytes | None, ...]:
        """Every digest believed at least ``at_least`` (the others as None)."""
        trust = self._trust
        return tuple(d if trust[i] >= at_least else None for i, d in enumerate(self._digests))

    def unknown(self, indices: Iterable[int]) -> list[int]:
        """Those of ``indices`` whose digest is not known."""
        digests = self._digests
        return [index for index in indices if digests[index] is None]

    def claimed(self) -> list[int]:
        """The pieces whose digest is only a claim."""
        return [i for i, level in enumerate(self._trust) if level == Trust.CLAIMED]

    def learn(self, index: int, digest: bytes, trust: Trust = Trust.VOUCHED) -> bool:
        """Record the digest of piece ``index``. True when it was new, False when the same one
        was known (its trust rises to ``trust`` if that is higher). ``ClaimRefuted`` when a
        more trusted digest contradicts a claim (the claim stays; the caller drops the
        claims), ``ValueError`` for any other contradiction or a digest that is not sha256."""
        _check(index, digest)
        known = self.get(index)
        level = self._trust[index]
        if known == digest:
            self._trust[index] = max(level, trust)
            return False
        if known is not None:
            if level == Trust.CLAIMED and trust > Trust.CLAIMED:
                raise ClaimRefuted(index, known, digest)
            raise ValueError(f"piece {index}: digest {digest.hex()} contradicts {known.hex()}")
        self._digests[index] = digest
        self._trust[index] = trust
        self._known += 1
        return True

    def learn_many(
        self, digests: Sequence[bytes | None] | dict[int, bytes], trust: Trust = Trust.VOUCHED
    ) -> list[int]:
        """``learn`` for several pieces (a list by index, None skipped, or a dict); returns the
        indices that were new. Contradictions are skipped and reported by ``DigestConflict``
        after the others were learned."""
        items = digests.items() if isinstance(digests, dict) else enumerate(digests)
        learned: list[int] = []
        conflicts: list[str] = []
        for index, digest in items:
            if digest is None:
                continue
            try:
                if self.learn(index, digest, trust):
                    learned.append(index)
            except (ValueError, IndexError) as exc:
                conflicts.append(str(exc))
        if conflicts:
            raise DigestConflict(learned, conflicts)
        return learned

    def forget_claims(self) -> list[int]:
        """Drop every digest that is only a claim; returns those pieces (unknown again)."""
        dropped = self.claimed()
        for index in dropped:
            self._digests[index] = None
            self._trust[index] = 0
        self._known -= len(dropped)
        return dropped


def _check(index: int, digest: bytes) -> None:
    if not isinstance(digest, bytes) or len(digest) != SHA256_BYTES:
        raise ValueError(f"piece {index}: a digest must be 32 bytes, got {digest!r:.40}")
