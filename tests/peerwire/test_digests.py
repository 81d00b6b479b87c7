"""DigestBook (peerwire.digests): the piece digests of one task as this peer knows them.

A task fetched by URL starts with few or no digests (an open manifest) and learns them during
the download, from the tracker's manifest or from pieces read from the origin. The book is
that list alone; the piece store is handed each piece's digest (test_storage.py,
test_open_manifest.py).
"""

from __future__ import annotations

import hashlib

import pytest

from peerwire.digests import SHA256_BYTES, DigestBook, DigestConflict
from peerwire.ids import TaskId
from peerwire.manifest import Manifest

NUM_PIECES = 6
DIGESTS = tuple(hashlib.sha256(bytes([index])).digest() for index in range(NUM_PIECES))
OTHER = hashlib.sha256(b"another piece").digest()


def knowing(*indices: int) -> tuple[bytes | None, ...]:
    """The digest list with only those of ``indices`` known."""
    return tuple(d if i in indices else None for i, d in enumerate(DIGESTS))


# -- what a book knows ---------------------------------------------------------------------------


def test_new_book_knows_no_digest() -> None:
    book = DigestBook(NUM_PIECES)
    assert len(book) == NUM_PIECES
    assert book.known == 0
    assert not book.complete
    assert book.snapshot() == (None,) * NUM_PIECES
    assert all(book.get(index) is None for index in range(NUM_PIECES))


def test_book_knows_what_its_manifest_knows() -> None:
    manifest = Manifest(TaskId(b"\x07" * 20), NUM_PIECES * 1024, 1024, knowing(1, 3))
    book = DigestBook(manifest.num_pieces, manifest.piece_sha256)
    assert book.snapshot() == manifest.piece_sha256
    assert book.get(1) == DIGESTS[1]
    assert book.get(0) is None
    assert book.known == 2
    assert not book.complete


def test_book_of_every_digest_is_complete() -> None:
    book = DigestBook(NUM_PIECES, DIGESTS)
    assert book.complete
    assert book.known == NUM_PIECES
    assert book.unknown(range(NUM_PIECES)) == []


def test_book_of_no_piece_is_complete() -> None:
    book = DigestBook(0)
    assert len(book) == 0
    assert book.complete
    assert book.snapshot() == ()


def test_book_refuses_a_digest_list_of_another_length() -> None:
    with pytest.raises(ValueError, match="5 digests for 6 pieces"):
        DigestBook(NUM_PIECES, DIGESTS[:5])
    with pytest.raises(ValueError, match="7 digests for 6 pieces"):
        DigestBook(NUM_PIECES, (*DIGESTS, None))


def test_book_takes_its_digests_from_any_iterable() -> None:
    book = DigestBook(NUM_PIECES, iter(knowing(0, 5)))
    assert book.snapshot() == knowing(0, 5)


@pytest.mark.parametrize(
    "bad",
    [b"", b"\x01" * 31, b"\x01" * 33, DIGESTS[0].hex(), bytearray(DIGESTS[0])],
    ids=["empty", "31-bytes", "33-bytes", "hex-text", "bytearray"],
)
def test_book_refuses_a_digest_that_is_not_a_sha256(bad: object) -> None:
    digests: list[object] = list(knowing(0))
    digests[4] = bad
    with pytest.raises(ValueError, match="piece 4: a digest must be 32 bytes"):
        DigestBook(NUM_PIECES, digests)  # type: ignore[arg-type]


def test_get_outside_the_task_is_an_index_error() -> None:
    with pytest.raises(IndexError):
        DigestBook(NUM_PIECES).get(NUM_PIECES)


def test_unknown_lists_the_pieces_without_a_digest_in_the_order_asked() -> None:
    book = DigestBook(NUM_PIECES, knowing(1, 3))
    assert book.unknown([5, 1, 0, 3, 2]) == [5, 0, 2]
    assert book.unknown([]) == []
    assert book.unknown(iter([1, 3])) == []
    book.learn(5, DIGESTS[5])
    assert book.unknown(range(NUM_PIECES)) == [0, 2, 4]


def test_snapshot_does_not_follow_later_learning() -> None:
    book = DigestBook(NUM_PIECES)
    before = book.snapshot()
    book.learn(0, DIGESTS[0])
    assert before == (None,) * NUM_PIECES
    assert book.snapshot()[0] == DIGESTS[0]
    assert isinstance(book.snapshot(), tuple)


def test_book_does_not_follow_the_list_it_was_built_from() -> None:
    digests = list(knowing(2))
    book = DigestBook(NUM_PIECES, digests)
    digests[0] = DIGESTS[0]
    book.learn(3, DIGESTS[3])
    assert book.get(0) is None
    assert digests[3] is None


# -- learning one digest -------------------------------------------------------------------------


def test_learn_new_same_and_contradicting() -> None:
    book = DigestBook(NUM_PIECES)
    assert book.learn(2, DIGESTS[2]) is True
    assert book.get(2) == DIGESTS[2]
    assert book.learn(2, DIGESTS[2]) is False
    with pytest.raises(ValueError, match="piece 2") as caught:
        book.learn(2, DIGESTS[3])
    assert DIGESTS[3].hex() in str(caught.value) and DIGESTS[2].hex() in str(caught.value)
    assert book.get(2) == DIGESTS[2]  # the first one stays
    assert book.known == 1
    assert book.snapshot() == knowing(2)


def test_learn_contradicting_a_digest_given_at_the_start_keeps_that_one() -> None:
    book = DigestBook(NUM_PIECES, knowing(4))
    with pytest.raises(ValueError, match="contradicts"):
        book.learn(4, OTHER)
    assert book.get(4) == DIGESTS[4]
    assert book.known == 1


def test_learning_every_digest_completes_the_book() -> None:
    book = DigestBook(NUM_PIECES, knowing(0, 1, 2, 3, 4))
    assert not book.complete
    assert book.learn(5, DIGESTS[5])
    assert book.complete
    assert book.snapshot() == DIGESTS


@pytest.mark.parametrize(
    "bad", [b"", DIGESTS[0][:20], DIGESTS[0] + b"\x00", DIGESTS[0].hex()], ids=len
)
def test_learn_refuses_a_digest_that_is_not_a_sha256(bad: bytes) -> None:
    book = DigestBook(NUM_PIECES)
    with pytest.raises(ValueError, match=f"{SHA256_BYTES} bytes"):
        book.learn(0, bad)
    assert book.get(0) is None
    assert book.known == 0


def test_learn_of_a_bad_digest_for_a_known_piece_is_refused_as_such() -> None:
    book = DigestBook(NUM_PIECES, knowing(0))
    with pytest.raises(ValueError, match="32 bytes"):
        book.learn(0, DIGESTS[0][:31])
    assert book.get(0) == DIGESTS[0]


def test_learn_outside_the_task_is_an_index_error() -> None:
    book = DigestBook(NUM_PIECES)
    with pytest.raises(IndexError):
        book.learn(NUM_PIECES, DIGESTS[0])
    assert book.known == 0


# -- learning many -------------------------------------------------------------------------------


def test_learn_many_from_a_list_skips_unknown_entries_and_returns_the_new_ones() -> None:
    book = DigestBook(NUM_PIECES, knowing(1))
    assert book.learn_many(knowing(0, 1, 4)) == [0, 4]
    assert book.snapshot() == knowing(0, 1, 4)
    assert book.learn_many(knowing(0, 1, 4)) == []  # nothing new the second time
    assert book.known == 3


def test_learn_many_from_a_dict_by_index() -> None:
    book = DigestBook(NUM_PIECES)
    assert book.learn_many({5: DIGESTS[5], 2: DIGESTS[2]}) == [5, 2]
    assert book.snapshot() == knowing(2, 5)
    assert book.learn_many({}) == []


def test_learn_many_contradiction_raises_after_the_others_were_learned() -> None:
    book = DigestBook(NUM_PIECES, knowing(1, 3))
    incoming = list(knowing(0, 2, 5))
    incoming[1] = OTHER  # contradicts the known digest of piece 1
    incoming[3] = DIGESTS[3]  # the same one: not new, not a conflict
    with pytest.raises(DigestConflict, match="piece 1") as caught:
        book.learn_many(incoming)
    assert isinstance(caught.value, ValueError)  # callers catching ValueError still do
    assert caught.value.learned == [0, 2, 5]
    assert len(caught.value.conflicts) == 1
    assert book.snapshot() == knowing(0, 1, 2, 3, 5)
    assert book.get(1) == DIGESTS[1]  # the known digest stays


def test_learn_many_reports_every_conflict_and_names_the_first_three() -> None:
    book = DigestBook(NUM_PIECES, knowing(0, 1, 2, 3, 4))
    with pytest.raises(DigestConflict) as caught:
        book.learn_many({index: OTHER for index in range(5)} | {5: DIGESTS[5]})
    conflict = caught.value
    assert conflict.learned == [5]
    assert len(conflict.conflicts) == 5
    message = str(conflict)
    assert all(f"piece {index}:" in message for index in range(3))
    assert "piece 3:" not in message and message.endswith(" ...")
    assert book.snapshot() == DIGESTS


def test_learn_many_with_a_bad_digest_learns_the_others_and_reports_it() -> None:
    book = DigestBook(NUM_PIECES)
    with pytest.raises(DigestConflict, match="32 bytes") as caught:
        book.learn_many({0: DIGESTS[0], 1: b"\x01" * 31, 2: DIGESTS[2]})
    assert caught.value.learned == [0, 2]
    assert book.snapshot() == knowing(0, 2)
