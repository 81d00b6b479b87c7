from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from peerwire.bitfield import Bitfield
from peerwire.errors import ProtocolError


def test_bitfield_high_bit_of_first_byte_is_piece_zero() -> None:
    bitfield = Bitfield(10)
    bitfield.add(0)
    bitfield.add(9)
    assert bitfield.to_bytes() == bytes([0b1000_0000, 0b0100_0000])


@pytest.mark.parametrize(
    ("num_pieces", "wire"),
    [
        (0, b""),
        (1, b"\x80"),
        (8, b"\xff"),
        (9, b"\xff\x80"),
        (13, b"\xff\xf8"),
        (16, b"\xff\xff"),
    ],
)
def test_full_bitfield_sets_every_piece_and_no_spare_bit(num_pieces: int, wire: bytes) -> None:
    bitfield = Bitfield.full(num_pieces)
    assert bitfield.to_bytes() == wire
    assert len(bitfield) == num_pieces
    assert bitfield.is_complete()
    assert list(bitfield.missing()) == []


def test_empty_bitfield_misses_every_piece() -> None:
    bitfield = Bitfield(11)
    assert len(bitfield) == 0
    assert not bitfield.is_complete()
    assert list(bitfield.missing()) == list(range(11))
    assert bitfield.to_bytes() == b"\x00\x00"


def test_zero_piece_bitfield_is_complete() -> None:
    assert Bitfield(0).is_complete()


@pytest.mark.parametrize(
    ("payload", "num_pieces"),
    [(b"", 1), (b"\x00", 9), (b"\x00\x00", 8), (b"\x00\x00\x00", 16)],
)
def test_from_bytes_rejects_wrong_length(payload: bytes, num_pieces: int) -> None:
    with pytest.raises(ProtocolError, match="expected"):
        Bitfield.from_bytes(payload, num_pieces)


@pytest.mark.parametrize(("payload", "num_pieces"), [(b"\x01", 7), (b"\xff\x40", 9), (b"\x01", 1)])
def test_from_bytes_rejects_spare_bits(payload: bytes, num_pieces: int) -> None:
    with pytest.raises(ProtocolError, match="spare"):
        Bitfield.from_bytes(payload, num_pieces)


def test_from_bytes_counts_and_lists_pieces() -> None:
    bitfield = Bitfield.from_bytes(b"\xa0\x80", 9)
    assert len(bitfield) == 3
    assert list(bitfield) == [0, 2, 8]
    assert list(bitfield.missing()) == [1, 3, 4, 5, 6, 7]


def test_contains_is_false_out_of_range() -> None:
    bitfield = Bitfield.full(4)
    assert 3 in bitfield
    assert 4 not in bitfield
    assert -1 not in bitfield


def test_add_out_of_range_raises_index_error() -> None:
    bitfield = Bitfield(4)
    with pytest.raises(IndexError):
        bitfield.add(4)
    with pytest.raises(IndexError):
        bitfield.add(-1)


def test_add_and_discard_are_idempotent_and_keep_count() -> None:
    bitfield = Bitfield(5)
    bitfield.add(2)
    bitfield.add(2)
    assert len(bitfield) == 1
    bitfield.discard(2)
    bitfield.discard(2)
    bitfield.discard(99)
    assert len(bitfield) == 0


def test_copy_is_independent_and_equal() -> None:
    bitfield = Bitfield(12)
    bitfield.add(3)
    clone = bitfield.copy()
    assert clone == bitfield
    clone.add(4)
    assert clone != bitfield
    assert 4 not in bitfield


def test_equality_depends_on_piece_count() -> None:
    assert Bitfield(7) != Bitfield(8)
    assert Bitfield(7) != b"\x00"


@given(st.integers(0, 200), st.sets(st.integers(0, 199)))
def test_bitfield_round_trips_and_matches_a_set(num_pieces: int, drawn: set[int]) -> None:
    pieces = {index for index in drawn if index < num_pieces}
    bitfield = Bitfield(num_pieces)
    for index in pieces:
        bitfield.add(index)
    assert list(bitfield) == sorted(pieces)
    assert list(bitfield.missing()) == sorted(set(range(num_pieces)) - pieces)
    assert len(bitfield) == len(pieces)
    assert bitfield.is_complete() == (len(pieces) == num_pieces)
    parsed = Bitfield.from_bytes(bitfield.to_bytes(), num_pieces)
    assert parsed == bitfield
    assert len(parsed) == len(pieces)


def test_select_keeps_the_set_indices_in_their_order() -> None:
    bitfield = Bitfield(20)
    for index in (0, 3, 9, 19):
        bitfield.add(index)
    assert bitfield.select([19, 1, 3, 0, 9, 10]) == [19, 3, 0, 9]
    assert bitfield.select([-1, 20, 1000, 3]) == [3]  # outside the task: never set
    assert bitfield.select([]) == []
    assert Bitfield.full(20).select(range(25)) == list(range(20))
