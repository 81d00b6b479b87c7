"""The piece digests of one task as this peer knows them: the list every received piece is
checked against.

A task fetched by URL starts with its geometry and few or no digests; they arrive during the
download (from the tracker's manifest, or computed from the pieces this peer reads from the
origin itself). ``DigestBook`` is that list and nothing else: it does no I/O and is owned by
the task core (one thread). The piece store (``peerwire.storage``) is handed the digest of each
piece it commits; it keeps none of its own.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Final

SHA256_BYTES: Final = 32


class DigestBook:
    """One digest (or None: not known yet) per piece of a task."""

    __slots__ = ("_digests", "_known")

    def __init__(self, num_pieces: int, digests: Iterable[bytes | None] = ()) -> None:
        known = list(digests)
        if known and len(known) != num_pieces:
            raise ValueError(f"{len(known)} digests for {num_pieces} pieces")
        self._digests: list[bytes | None] = known or [None] * num_pieces
        for index, digest in enumerate(self._digests):
            if digest is not None:
                _check(index, digest)
        self._known = sum(digest is not None for digest in self._digests)

    def __len__(self) -> int:
        return len(self._digests)

    def get(self, index: int) -> bytes | None:
        """The digest of piece ``index``, or None while unknown; IndexError outside the task."""
        if index < 0:
            raise IndexError(f"piece {index} is outside the task")
        return self._digests[index]

    @property
    def known(self) -> int:
        """How many pieces' digests are known."""
        return self._known

    @property
    def complete(self) -> bool:
        return self._known == len(self._digests)

    def snapshot(self) -> tuple[bytes | None, ...]:
        return tuple(self._digests)

    def unknown(self, indices: Iterable[int]) -> list[int]:
        """Those of ``indices`` whose digest is not known."""
        digests = self._digests
        return [index for index in indices if digests[index] is None]

    def learn(self, index: int, digest: bytes) -> bool:
        """Record the digest of piece ``index``. True when it was new, False when the same one
        was known; ValueError when it contradicts the known one (the caller decides whom to
        believe) or is not a sha256."""
        _check(index, digest)
        known = self.get(index)
        if known == digest:
            return False
        if known is not None:
            raise ValueError(f"piece {index}: digest {digest.hex()} contradicts {known.hex()}")
        self._digests[index] = digest
        self._known += 1
        return True

    def learn_many(self, digests: Sequence[bytes | None] | dict[int, bytes]) -> list[int]:
        """``learn`` for several pieces (a list by index, None skipped, or a dict); returns the
        indices that were new. Contradictions are skipped and reported by ``ValueError`` after
        the others were learned."""
        items = digests.items() if isinstance(digests, dict) else enumerate(digests)
        learned: list[int] = []
        conflicts: list[str] = []
        for index, digest in items:
            if digest is None:
                continue
            try:
                if self.learn(index, digest):
                    learned.append(index)
            except (ValueError, IndexError) as exc:
                conflicts.append(str(exc))
        if conflicts:
            raise DigestConflict(learned, conflicts)
        return learned


class DigestConflict(ValueError):
    """Some digests contradicted the known ones; ``learned`` lists those that were new."""

    def __init__(self, learned: list[int], conflicts: list[str]) -> None:
        super().__init__("; ".join(conflicts[:3]) + (" ..." if len(conflicts) > 3 else ""))
        self.learned = learned
        self.conflicts = conflicts


def _check(index: int, digest: bytes) -> None:
    if not isinstance(digest, bytes) or len(digest) != SHA256_BYTES:
        raise ValueError(f"piece {index}: a digest must be 32 bytes, got {digest!r:.40}")
