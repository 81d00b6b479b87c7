"""Piece geometry of a task: how a file of ``total_length`` bytes splits into pieces and blocks."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, NamedTuple

KIB = 1024
MIB = 1024 * KIB

#: Block size every BitTorrent client accepts (BEP 3 practice).
STANDARD_BLOCK_BYTES = 16 * KIB
#: Block size our own peers use between themselves (fewer messages, larger reads).
LARGE_BLOCK_BYTES = 512 * KIB
#: Largest block we serve on request; larger requests are a protocol error of the asker.
MAX_BLOCK_BYTES = 1 * MIB


class Block(NamedTuple):
    """A byte range inside one piece, the unit of ``request``/``piece``/``cancel``.

    A named tuple, not a dataclass: blocks are dictionary keys on every hot path (requests in
    flight, endgame copies, blocks being received), and a tuple hashes and compares in C
    (~35 ns a hash against ~95 for a frozen dataclass's generated ``__hash__``). The field
    ``index`` hides ``tuple.index``, which nothing here uses."""

    index: int  # type: ignore[assignment]
    begin: int
    length: int


@dataclass(frozen=True, slots=True)
class PieceLayout:
    """Split of ``total_length`` bytes into pieces of ``piece_length`` (the last may be short)."""

    total_length: int
    piece_length: int

    def __post_init__(self) -> None:
        if self.total_length < 0:
            raise ValueError(f"total_length must be >= 0, got {self.total_length}")
        if self.piece_length <= 0:
            raise ValueError(f"piece_length must be > 0, got {self.piece_length}")

    @property
    def num_pieces(self) -> int:
        return -(-self.total_length // self.piece_length)

    def piece_offset(self, index: int) -> int:
        self._check_index(index)
        return index * self.piece_length

    def piece_size(self, index: int) -> int:
        self._check_index(index)
        if index == self.num_pieces - 1:
            return self.total_length - index * self.piece_length
        return self.piece_length

    def blocks(self, index: int, block_bytes: int) -> list[Block]:
        """The blocks of piece ``index``, in order, each ``block_bytes`` long but the last."""
        if block_bytes <= 0:
            raise ValueError(f"block_bytes must be > 0, got {block_bytes}")
        size = self.piece_size(index)
        return [
            Block(index, begin, min(block_bytes, size - begin))
            for begin in range(0, size, block_bytes)
        ]

    def contains(self, block: Block) -> bool:
        """True when ``block`` lies inside its piece (the check for a remote ``request``)."""
        if not 0 <= block.index < self.num_pieces or block.length <= 0 or block.begin < 0:
            return False
        return block.begin + block.length <= self.piece_size(block.index)

    def _check_index(self, index: int) -> None:
        if not 0 <= index < self.num_pieces:
            raise IndexError(f"piece index {index} out of range 0..{self.num_pieces - 1}")


#: From this file size on, pieces are at least ``MID_PIECE_BYTES``.
MID_FILE_BYTES: Final = 32 * MIB
#: A download pays a fixed cost per piece (a digest, a write, events, a span sent to a reader),
#: so larger files get fewer, larger pieces (bench/README.md, "Where the defaults come from").
MID_PIECE_BYTES: Final = 512 * KIB


def choose_piece_length(total_length: int, *, target_pieces: int = 500) -> int:
    """A power-of-two piece length giving about ``target_pieces`` pieces, clamped to 16 KiB..16 MiB,
    and at least ``MID_PIECE_BYTES`` from ``MID_FILE_BYTES`` on (64 to 511 pieces below 256 MiB).

    Small files still get hundreds of pieces so a large swarm has something to trade; large files
    do not get so many pieces that bitfields and manifests bloat. (Dragonfly 2 uses the next power
    of two of length/500, clamped to 4-64 MiB; we go down to one standard block so that even a
    4 MiB benchmark file has 256 pieces for 200 peers to trade.)
    """
    wanted = max(1, total_length // max(1, target_pieces))
    if total_length >= MID_FILE_BYTES:
        wanted = max(wanted, MID_PIECE_BYTES)
    length = STANDARD_BLOCK_BYTES
    while length < wanted and length < 16 * MIB:
        length *= 2
    return length


def block_bytes_for_rate(rate_bps: float | None, *, largest: int = LARGE_BLOCK_BYTES) -> int:
    """Block size for a download limited to ``rate_bps``: at most about 50 ms of the rate.

    A block is the unit a limited download books at once, so smaller blocks at low rates keep
    the flow smooth (a 512 KiB block is half a second at 1 MiB/s). A power of two between
    ``STANDARD_BLOCK_BYTES`` and ``largest``; ``largest`` when unlimited.
    """
    if rate_bps is None:
        return largest
    size = STANDARD_BLOCK_BYTES
    while size * 2 <= min(largest, rate_bps * 0.05):
        size *= 2
    return size
