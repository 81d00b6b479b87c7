"""The set of pieces a peer has, kept in the BEP 3 wire layout so sending it costs nothing."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from peerwire.errors import ProtocolError

# Set bits per byte value, so counting a received bitfield is one pass over its bytes.
_POPCOUNT = bytes(bin(value).count("1") for value in range(256))


def _byte_length(num_pieces: int) -> int:
    return (num_pieces + 7) // 8


class Bitfield:
    """Set of piece indices ``0..num_pieces-1``.

    BEP 3: "The high bit in the first byte corresponds to piece index 0. ... Spare bits at the
    end are set to zero." The bytes are stored in exactly that layout; the number of set bits is
    kept up to date on every change so ``len()`` and ``is_complete()`` are O(1).
    """

    __slots__ = ("_bits", "_count", "_num_pieces")

    def __init__(self, num_pieces: int) -> None:
        if num_pieces < 0:
            raise ValueError(f"num_pieces must be >= 0, got {num_pieces}")
        self._num_pieces = num_pieces
        self._bits = bytearray(_byte_length(num_pieces))
        self._count = 0

    @classmethod
    def full(cls, num_pieces: int) -> Bitfield:
        """Every piece set (a seed, or BEP 6 ``have all``)."""
        bitfield = cls(num_pieces)
        whole_bytes, spare = divmod(num_pieces, 8)
        bitfield._bits[:whole_bytes] = b"\xff" * whole_bytes
        if spare:
            bitfield._bits[whole_bytes] = (0xFF << (8 - spare)) & 0xFF
        bitfield._count = num_pieces
        return bitfield

    @classmethod
    def from_bytes(cls, payload: bytes, num_pieces: int) -> Bitfield:
        """Parse the payload of a BEP 3 ``bitfield`` message.

        Raises ProtocolError when the length is not ``ceil(num_pieces / 8)`` or a spare bit past
        the last piece is set (BEP 3: "Clients should drop the connection if they receive
        bitfields that are not of the correct size, or if the bitfield has any of the spare bits
        set").
        """
        expected = _byte_length(num_pieces)
        if len(payload) != expected:
            raise ProtocolError(
                f"bitfield is {len(payload)} bytes, expected {expected} for {num_pieces} pieces"
            )
        spare = expected * 8 - num_pieces
        if spare and payload[-1] & ((1 << spare) - 1):
            raise ProtocolError(f"bitfield has spare bits set past piece {num_pieces - 1}")
        bitfield = cls(num_pieces)
        bitfield._bits[:] = payload
        bitfield._count = sum(_POPCOUNT[value] for value in payload)
        return bitfield

    @property
    def num_pieces(self) -> int:
        return self._num_pieces

    def to_bytes(self) -> bytes:
        """The BEP 3 wire form (spare bits zero)."""
        return bytes(self._bits)

    def __contains__(self, index: object) -> bool:
        if not isinstance(index, int) or not 0 <= index < self._num_pieces:
            return False
        return bool(self._bits[index >> 3] & (0x80 >> (index & 7)))

    def select(self, indices: Iterable[int]) -> list[int]:
        """Those of ``indices`` that are set, in their order: one pass without a method call per
        index (the picker's candidates, asked for at every request refill)."""
        bits, count = self._bits, self._num_pieces
        return [i for i in indices if 0 <= i < count and bits[i >> 3] & (0x80 >> (i & 7))]

    def add(self, index: int) -> None:
        """Set piece ``index``; IndexError when it is not a piece of this task."""
        self._check_index(index)
        mask = 0x80 >> (index & 7)
        byte = self._bits[index >> 3]
        if not byte & mask:
            self._bits[index >> 3] = byte | mask
            self._count += 1

    def discard(self, index: int) -> None:
        """Clear piece ``index`` if set; out-of-range indices are ignored, as for ``set``."""
        if not 0 <= index < self._num_pieces:
            return
        mask = 0x80 >> (index & 7)
        byte = self._bits[index >> 3]
        if byte & mask:
            self._bits[index >> 3] = byte & ~mask
            self._count -= 1

    def __len__(self) -> int:
        return self._count

    def is_complete(self) -> bool:
        return self._count == self._num_pieces

    def __iter__(self) -> Iterator[int]:
        """Set piece indices, ascending."""
        for byte_index, byte in enumerate(self._bits):
            if byte:
                base = byte_index << 3
                for bit in range(8):
                    if byte & (0x80 >> bit):
                        yield base + bit

    def missing(self) -> Iterator[int]:
        """Unset piece indices, ascending."""
        num_pieces = self._num_pieces
        for byte_index, byte in enumerate(self._bits):
            if byte != 0xFF:
                base = byte_index << 3
                for bit in range(min(8, num_pieces - base)):
                    if not byte & (0x80 >> bit):
                        yield base + bit

    def copy(self) -> Bitfield:
        clone = Bitfield(self._num_pieces)
        clone._bits[:] = self._bits
        clone._count = self._count
        return clone

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Bitfield):
            return NotImplemented
        return self._num_pieces == other._num_pieces and self._bits == other._bits

    __hash__ = None  # type: ignore[assignment]  # mutable, so unhashable

    def __repr__(self) -> str:
        return f"Bitfield({self._count}/{self._num_pieces})"

    def _check_index(self, index: int) -> None:
        if not 0 <= index < self._num_pieces:
            raise IndexError(f"piece index {index} out of range 0..{self._num_pieces - 1}")
