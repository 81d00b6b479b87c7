"""Piece geometry: pieces, blocks, and the sizes chosen for files and rates."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from peerwire.layout import (
    KIB,
    LARGE_BLOCK_BYTES,
    MIB,
    MID_FILE_BYTES,
    MID_PIECE_BYTES,
    STANDARD_BLOCK_BYTES,
    Block,
    PieceLayout,
    block_bytes_for_rate,
    choose_piece_length,
)


def test_last_piece_is_short_and_blocks_tile_it() -> None:
    layout = PieceLayout(total_length=10 * KIB + 5, piece_length=4 * KIB)
    assert layout.num_pieces == 3
    assert [layout.piece_size(i) for i in range(3)] == [4 * KIB, 4 * KIB, 2 * KIB + 5]
    assert layout.piece_offset(2) == 8 * KIB
    assert layout.blocks(2, 1 * KIB) == [
        Block(2, 0, KIB),
        Block(2, KIB, KIB),
        Block(2, 2 * KIB, 5),
    ]


def test_empty_file_has_no_pieces() -> None:
    assert PieceLayout(0, 16 * KIB).num_pieces == 0


@pytest.mark.parametrize(
    ("block", "inside"),
    [
        (Block(0, 0, 4096), True),
        (Block(2, 2048, 5), True),
        (Block(2, 2048, 6), False),  # past the end of the short last piece
        (Block(3, 0, 1), False),  # no such piece
        (Block(0, 0, 0), False),  # empty
        (Block(0, -1, 2), False),
        (Block(-1, 0, 1), False),
    ],
)
def test_contains_is_the_range_check_for_remote_requests(block: Block, inside: bool) -> None:
    assert PieceLayout(4096 * 2 + 2053, 4096).contains(block) is inside


def test_piece_index_out_of_range_raises() -> None:
    with pytest.raises(IndexError):
        PieceLayout(100, 10).piece_size(10)


@given(st.integers(min_value=1, max_value=1 << 44))
def test_piece_length_is_a_clamped_power_of_two(total: int) -> None:
    length = choose_piece_length(total)
    assert length & (length - 1) == 0
    assert 16 * KIB <= length <= 16 * MIB
    pieces = PieceLayout(total, length).num_pieces
    if total >= MID_FILE_BYTES:
        assert length >= MID_PIECE_BYTES
    if length == MID_PIECE_BYTES and total >= MID_FILE_BYTES:
        assert 64 <= pieces <= 1000
    elif 16 * KIB < length < 16 * MIB:
        assert 250 <= pieces <= 1000


def test_benchmark_sized_files_get_their_piece_counts() -> None:
    assert PieceLayout(4 * MIB, choose_piece_length(4 * MIB)).num_pieces == 256  # run.py
    assert PieceLayout(31 * MIB, choose_piece_length(31 * MIB)).num_pieces == 496
    assert PieceLayout(50 * MIB, choose_piece_length(50 * MIB)).num_pieces == 100  # mirror_pull
    assert PieceLayout(1024 * MIB, choose_piece_length(1024 * MIB)).num_pieces == 256


@pytest.mark.parametrize(
    ("rate_bps", "expected"),
    [
        (None, LARGE_BLOCK_BYTES),
        (100 * KIB, STANDARD_BLOCK_BYTES),  # never below the standard block
        (1 * MIB, 32 * KIB),  # 50 ms of 1 MiB/s is 51 KiB
        (20 * MIB, LARGE_BLOCK_BYTES),
        (1e12, LARGE_BLOCK_BYTES),
    ],
)
def test_block_size_follows_the_rate(rate_bps: float | None, expected: int) -> None:
    assert block_bytes_for_rate(rate_bps) == expected
