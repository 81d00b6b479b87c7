"""Open manifests: digests unknown at the start and learned during the download.

Covers the three layers in turn: ``Manifest`` (None digests, ``open``, ``is_complete``, JSON),
the resume record (``piecerecord``: a header that does not change as digests arrive, entries
kept only under a known digest) and ``PieceStore`` created with ``open_digests=True``: the store
keeps no digest list (``peerwire.digests.DigestBook`` does, see test_digests.py); a commit is
handed the piece's expected digest, or None for trusted bytes (the origin), whose digest it
computes and returns; a resume re-verifies against the digests the caller knows then.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import replace
from pathlib import Path

import pytest

from peerwire.bitfield import Bitfield
from peerwire.digests import DigestBook
from peerwire.ids import TaskId
from peerwire.manifest import Manifest
from peerwire.piecerecord import read_record, record_entry, record_header, write_record
from peerwire.storage import PARTIAL_SUFFIX, RECORD_SUFFIX, PieceStore

PIECE = 1024
TASK = TaskId(b"\x07" * 20)
OTHER_TASK = TaskId(b"\x08" * 20)
DATA = random.Random(4).randbytes(5 * PIECE + 100)  # six pieces, the last 100 bytes
NUM_PIECES = 6
DIGESTS = tuple(
    hashlib.sha256(DATA[start : start + PIECE]).digest() for start in range(0, len(DATA), PIECE)
)
COMPLETE = Manifest(TASK, len(DATA), PIECE, DIGESTS)
OPEN = Manifest.open(TASK, len(DATA), PIECE)
#: Header bytes of a record: ``DFPIECE1`` and a sha256.
HEADER_BYTES = 40
ENTRY_BYTES = 8


def piece(index: int, data: bytes = DATA) -> bytes:
    return data[index * PIECE : (index + 1) * PIECE]


def knowing(*indices: int, task_id: TaskId = TASK) -> Manifest:
    """The manifest of ``DATA`` with only the digests of ``indices`` known."""
    digests = tuple(d if i in indices else None for i, d in enumerate(DIGESTS))
    return Manifest(task_id, len(DATA), PIECE, digests)


def partial_of(output: Path) -> Path:
    return output.with_name(output.name + PARTIAL_SUFFIX)


def record_of(output: Path) -> Path:
    return output.with_name(output.name + RECORD_SUFFIX)


def pieces_of(store: PieceStore) -> list[int]:
    return list(store.have)


# -- Manifest ------------------------------------------------------------------------------------


def test_manifest_open_has_the_geometry_and_no_known_digest() -> None:
    manifest = Manifest.open(TASK, len(DATA), PIECE, url="http://127.0.0.1/x")
    assert manifest.num_pieces == NUM_PIECES
    assert manifest.piece_sha256 == (None,) * NUM_PIECES
    assert (manifest.task_id, manifest.total_length, manifest.piece_length) == (
        TASK,
        len(DATA),
        PIECE,
    )
    assert manifest.url == "http://127.0.0.1/x"
    assert not manifest.is_complete


def test_manifest_is_complete_only_when_every_digest_is_known() -> None:
    assert COMPLETE.is_complete
    assert not knowing(0, 1, 2, 3, 4).is_complete  # the last one missing
    assert not knowing(1, 2, 3, 4, 5).is_complete  # the first one missing
    assert knowing(*range(NUM_PIECES)) == COMPLETE


def test_open_manifest_json_round_trip_keeps_unknown_digests_as_null() -> None:
    manifest = replace(knowing(1, 4), url="http://127.0.0.1/blob")
    text = manifest.to_json()
    document = json.loads(text)
    assert document["piece_sha256"] == [
        None,
        DIGESTS[1].hex(),
        None,
        None,
        DIGESTS[4].hex(),
        None,
    ]
    assert Manifest.from_json(text) == manifest
    assert Manifest.from_json(text.encode()) == manifest
    assert Manifest.from_json(OPEN.to_json()) == OPEN


def test_manifest_without_any_digest_parses_from_a_document_of_nulls() -> None:
    document = {
        "version": 1,
        "task_id": TASK.hex(),
        "total_length": len(DATA),
        "piece_length": PIECE,
        "piece_sha256": [None] * NUM_PIECES,
    }
    assert Manifest.from_json(json.dumps(document)) == OPEN


@pytest.mark.parametrize("entry", ["", "null", 0, False, [], {}], ids=repr)
def test_from_json_rejects_an_unknown_digest_written_other_than_null(entry: object) -> None:
    document = json.loads(OPEN.to_json())
    document["piece_sha256"][2] = entry
    with pytest.raises(ValueError, match=r"piece_sha256\[2\]"):
        Manifest.from_json(json.dumps(document))


def test_manifest_rejects_a_digest_that_is_neither_32_bytes_nor_none() -> None:
    digests = (None, b"\x01" * 31, *((None,) * 4))
    with pytest.raises(ValueError, match=r"piece_sha256\[1\]"):
        Manifest(TASK, len(DATA), PIECE, digests)


def test_content_digest_tells_unknown_digests_from_known_ones() -> None:
    assert OPEN.content_digest() == Manifest.open(OTHER_TASK, len(DATA), PIECE).content_digest()
    seen = {
        OPEN.content_digest(),
        knowing(0).content_digest(),
        knowing(1).content_digest(),
        knowing(0, 1).content_digest(),
        COMPLETE.content_digest(),
        Manifest.open(TASK, len(DATA) + 1, PIECE).content_digest(),
    }
    assert len(seen) == 6
    # The same digest at another index is other content.
    moved = (None, DIGESTS[0], *((None,) * 4))
    assert Manifest(TASK, len(DATA), PIECE, moved).content_digest() != knowing(0).content_digest()


# -- the resume record ---------------------------------------------------------------------------


def test_open_record_header_depends_on_task_and_geometry_not_on_digests() -> None:
    header = record_header(OPEN, open_digests=True)
    assert len(header) == HEADER_BYTES
    assert header.startswith(b"DFPIECE1")
    assert record_header(knowing(2), open_digests=True) == header
    assert record_header(COMPLETE, open_digests=True) == header
    others = {
        record_header(Manifest.open(OTHER_TASK, len(DATA), PIECE), open_digests=True),
        record_header(Manifest.open(TASK, len(DATA) + 1, PIECE), open_digests=True),
        record_header(Manifest.open(TASK, len(DATA), 2 * PIECE), open_digests=True),
        record_header(COMPLETE),  # a complete manifest's record: tied to its content
    }
    assert header not in others
    assert len(others) == 4


def test_closed_record_header_changes_with_every_digest() -> None:
    assert record_header(COMPLETE) != record_header(knowing(0, 1, 2, 3, 4))
    assert record_header(COMPLETE) == b"DFPIECE1" + COMPLETE.content_digest()


def test_record_entry_is_the_index_and_the_first_four_digest_bytes() -> None:
    entry = record_entry(258, DIGESTS[0])
    assert entry == b"\x00\x00\x01\x02" + DIGESTS[0][:4]
    assert len(entry) == ENTRY_BYTES


def test_read_record_keeps_only_entries_whose_digest_is_known_and_matches(
    tmp_path: Path,
) -> None:
    path = tmp_path / "record"
    header = record_header(OPEN, open_digests=True)
    have = Bitfield(NUM_PIECES)
    for index in (0, 2, 3):
        have.add(index)
    fd = write_record(path, header, DIGESTS, have)
    with open(fd, "wb", closefd=True) as appender:  # an entry that matches no digest
        appender.write(record_entry(5, b"\xee" * 32))
    assert read_record(path, header, DIGESTS) == {0, 2, 3}
    # What a later run knows decides: unknown digests drop their pieces.
    assert read_record(path, header, knowing(0, 3).piece_sha256) == {0, 3}
    assert read_record(path, header, OPEN.piece_sha256) == set()
    # Another digest for a recorded piece: its check does not match.
    changed = list(DIGESTS)
    changed[2] = hashlib.sha256(b"changed at the origin").digest()
    assert read_record(path, header, changed) == {0, 3}


def test_read_record_of_other_content_or_no_record_is_none(tmp_path: Path) -> None:
    path = tmp_path / "record"
    assert read_record(path, record_header(OPEN, open_digests=True), DIGESTS) is None
    fd = write_record(path, record_header(OPEN, open_digests=True), DIGESTS, Bitfield(NUM_PIECES))
    with open(fd, "wb", closefd=True):
        pass
    other = record_header(Manifest.open(OTHER_TASK, len(DATA), PIECE), open_digests=True)
    assert read_record(path, other, DIGESTS) is None
    assert read_record(path, record_header(COMPLETE), DIGESTS) is None


def test_write_record_refuses_a_verified_piece_without_a_digest(tmp_path: Path) -> None:
    path = tmp_path / "record"
    have = Bitfield(NUM_PIECES)
    have.add(1)
    with pytest.raises(ValueError, match="piece 1"):
        write_record(path, record_header(OPEN, open_digests=True), OPEN.piece_sha256, have)
    assert not path.exists()


# -- PieceStore: creation ------------------------------------------------------------------------


def test_create_without_open_digests_refuses_an_incomplete_manifest(tmp_path: Path) -> None:
    output = tmp_path / "out.bin"
    for manifest in (OPEN, knowing(0, 1, 2, 3, 4)):
        with pytest.raises(ValueError, match="open_digests"):
            PieceStore.create(output, manifest)
    assert list(tmp_path.iterdir()) == []  # refused before any file was made


def test_new_open_store_has_no_piece_and_is_not_finalized(tmp_path: Path) -> None:
    output = tmp_path / "out.bin"
    with PieceStore.create(output, knowing(1, 3), open_digests=True) as store:
        assert store.have == Bitfield(NUM_PIECES)
        assert not store.is_finalized
        assert store.data_path == partial_of(output)
    header = record_of(output).read_bytes()
    assert header == record_header(OPEN, open_digests=True)  # no entry, the open header


def test_open_store_verifies_only_against_a_digest_handed_in(tmp_path: Path) -> None:
    with PieceStore.create(tmp_path / "out.bin", OPEN, open_digests=True) as store:
        # Nothing to check against (the caller knows no digest): never verified.
        assert not store.verify(0, piece(0), None)  # type: ignore[arg-type]
        assert not store.verify(5, piece(5)[:-1], None)  # type: ignore[arg-type]
        # A digest the caller learned, though the manifest did not know it.
        assert store.verify(2, piece(2), DIGESTS[2])
        assert not store.verify(2, piece(3), DIGESTS[2])
        assert not store.has_piece(2)


def test_open_store_commits_a_piece_against_a_digest_the_manifest_did_not_know(
    tmp_path: Path,
) -> None:
    output = tmp_path / "out.bin"
    with PieceStore.create(output, OPEN, open_digests=True) as store:
        assert store.commit_piece(2, piece(3), DIGESTS[2]) is None
        assert store.commit_piece(2, piece(2), DIGESTS[2]) == DIGESTS[2]
        assert pieces_of(store) == [2]
        header = record_header(OPEN, open_digests=True)
        assert read_record(record_of(output), header, DIGESTS) == {2}


# -- PieceStore: origin pieces (commit_piece(..., None)) -----------------------------------------


def test_commit_of_trusted_bytes_returns_their_digest_and_records_the_piece(
    tmp_path: Path,
) -> None:
    output = tmp_path / "out.bin"
    with PieceStore.create(output, OPEN, open_digests=True) as store:
        assert store.commit_piece(3, piece(3), None) == DIGESTS[3]
        assert store.commit_piece(5, bytearray(piece(5)), None) == DIGESTS[5]  # the short one
        assert pieces_of(store) == [3, 5]
        assert store.read_block(3, 0, PIECE) == piece(3)
        header = record_header(OPEN, open_digests=True)
        assert read_record(record_of(output), header, DIGESTS) == {3, 5}
    assert partial_of(output).read_bytes()[3 * PIECE : 4 * PIECE] == piece(3)


def test_commit_with_a_known_digest_refuses_wrong_data_and_writes_nothing(
    tmp_path: Path,
) -> None:
    output = tmp_path / "out.bin"
    with PieceStore.create(output, knowing(1), open_digests=True) as store:
        record_before = record_of(output).read_bytes()
        wrong = bytes(PIECE)[:-1] + b"\x01"
        assert store.commit_piece(1, wrong, DIGESTS[1]) is None
        assert not store.has_piece(1)
        assert record_of(output).read_bytes() == record_before
        assert partial_of(output).read_bytes() == bytes(len(DATA))  # still all holes
        assert store.commit_piece(1, piece(1), DIGESTS[1]) == DIGESTS[1]  # the right data is
        assert pieces_of(store) == [1]


def test_commit_of_trusted_bytes_of_the_wrong_size_stores_nothing(tmp_path: Path) -> None:
    output = tmp_path / "out.bin"
    with PieceStore.create(output, OPEN, open_digests=True) as store:
        assert store.commit_piece(0, piece(0)[:-1], None) is None
        assert store.commit_piece(5, piece(4), None) is None  # a full piece for the short one
        assert pieces_of(store) == []
    assert partial_of(output).read_bytes() == bytes(len(DATA))
    assert record_of(output).read_bytes() == record_header(OPEN, open_digests=True)


def test_commit_of_a_piece_already_had_keeps_its_bytes(tmp_path: Path) -> None:
    with PieceStore.create(tmp_path / "out.bin", OPEN, open_digests=True) as store:
        learned = store.commit_piece(0, piece(0), None)
        assert learned == DIGESTS[0]
        assert store.commit_piece(0, piece(1), learned) is None  # contradicts what was learned
        assert store.read_block(0, 0, PIECE) == piece(0)


def test_open_store_finalizes_once_every_piece_is_learned_or_verified(tmp_path: Path) -> None:
    output = tmp_path / "out.bin"
    book = DigestBook(NUM_PIECES, knowing(0, 2, 4).piece_sha256)
    with PieceStore.create(output, knowing(0, 2, 4), open_digests=True) as store:
        for index in (0, 2, 4):
            assert store.commit_piece(index, piece(index), book.get(index)) == DIGESTS[index]
        for index in (1, 3, 5):
            digest = store.commit_piece(index, piece(index), None)
            assert digest is not None
            assert book.learn(index, digest)
        assert book.snapshot() == DIGESTS
        assert not store.is_finalized
        assert store.finalize(hashlib.sha256(DATA).digest()) == output
        assert store.is_finalized
    assert output.read_bytes() == DATA
    assert not record_of(output).exists()


def test_store_opened_complete_is_finalized_with_every_piece(tmp_path: Path) -> None:
    path = tmp_path / "seed.bin"
    path.write_bytes(DATA)
    with PieceStore.open_complete(path, COMPLETE) as store:
        assert store.is_finalized
        assert store.have == Bitfield.full(NUM_PIECES)


# -- PieceStore: resuming an open download -------------------------------------------------------


def start(output: Path, pieces: tuple[int, ...]) -> list[bytes | None]:
    """A first run that knew no digest and took ``pieces`` from the origin, then stopped.
    Returns the digests it learned (what a caller saves for the next run)."""
    book = DigestBook(NUM_PIECES)
    with PieceStore.create(output, OPEN, open_digests=True) as store:
        for index in pieces:
            digest = store.commit_piece(index, piece(index), None)
            assert digest is not None
            book.learn(index, digest)
    return list(book.snapshot())


def test_resume_with_the_digests_learned_last_run_has_the_recorded_pieces(
    tmp_path: Path,
) -> None:
    output = tmp_path / "out.bin"
    learned = start(output, (0, 2, 5))
    with PieceStore.create(output, OPEN, open_digests=True, digests=learned) as store:
        assert pieces_of(store) == [0, 2, 5]
        assert store.read_block(5, 0, 100) == piece(5)


def test_resume_with_a_manifest_knowing_the_digests_has_the_recorded_pieces(
    tmp_path: Path,
) -> None:
    output = tmp_path / "out.bin"
    start(output, (0, 2, 5))
    with PieceStore.create(output, knowing(0, 2, 5), open_digests=True) as store:
        assert pieces_of(store) == [0, 2, 5]
        assert store.read_block(5, 0, 100) == piece(5)
    with PieceStore.create(output, COMPLETE, open_digests=True) as store:
        assert pieces_of(store) == [0, 2, 5]


def test_resume_digests_given_by_the_caller_take_the_place_of_the_manifests(
    tmp_path: Path,
) -> None:
    output = tmp_path / "out.bin"
    start(output, (0, 2, 5))
    # The manifest knows piece 2; the caller's list (which decides) does not.
    caller = list(knowing(0, 5).piece_sha256)
    with PieceStore.create(output, knowing(0, 2, 5), open_digests=True, digests=caller) as store:
        assert pieces_of(store) == [0, 5]


def test_resume_drops_a_recorded_piece_whose_digest_the_caller_does_not_know(
    tmp_path: Path,
) -> None:
    output = tmp_path / "out.bin"
    start(output, (0, 2, 5))
    known = knowing(0, 5).piece_sha256
    with PieceStore.create(output, OPEN, open_digests=True, digests=known) as store:
        assert pieces_of(store) == [0, 5]
        assert not store.has_piece(2)
        # The piece is fetched again like any missing one.
        assert store.commit_piece(2, piece(2), None) == DIGESTS[2]
        assert pieces_of(store) == [0, 2, 5]


def test_resume_drops_a_recorded_piece_whose_digest_the_manifest_does_not_know(
    tmp_path: Path,
) -> None:
    output = tmp_path / "out.bin"
    start(output, (0, 2, 5))
    with PieceStore.create(output, knowing(0, 5), open_digests=True) as store:
        assert pieces_of(store) == [0, 5]


def test_resume_with_no_digest_known_has_nothing(tmp_path: Path) -> None:
    output = tmp_path / "out.bin"
    start(output, (0, 2))
    with PieceStore.create(output, OPEN, open_digests=True) as store:
        assert pieces_of(store) == []
    start(output, (0, 2))
    with PieceStore.create(output, OPEN, open_digests=True, digests=OPEN.piece_sha256) as store:
        assert pieces_of(store) == []


def test_resume_drops_a_recorded_piece_whose_digest_changed(tmp_path: Path) -> None:
    output = tmp_path / "out.bin"
    learned = start(output, (0, 2))
    learned[2] = hashlib.sha256(b"the origin changed").digest()
    with PieceStore.create(output, OPEN, open_digests=True, digests=learned) as store:
        assert pieces_of(store) == [0]
    start(output, (0, 2))
    digests = list(knowing(0, 2).piece_sha256)
    digests[2] = hashlib.sha256(b"the origin changed").digest()
    manifest = Manifest(TASK, len(DATA), PIECE, tuple(digests))
    with PieceStore.create(output, manifest, open_digests=True) as store:
        assert pieces_of(store) == [0]


def test_resume_of_another_task_with_the_same_geometry_starts_over(tmp_path: Path) -> None:
    output = tmp_path / "out.bin"
    learned = start(output, (0, 2))
    other = Manifest.open(OTHER_TASK, len(DATA), PIECE)
    with PieceStore.create(output, other, open_digests=True, digests=learned) as store:
        assert pieces_of(store) == []
    start(output, (0, 2))
    with PieceStore.create(output, knowing(0, 2, task_id=OTHER_TASK), open_digests=True) as store:
        assert pieces_of(store) == []


def test_resume_refuses_a_digest_list_of_another_length(tmp_path: Path) -> None:
    output = tmp_path / "out.bin"
    learned = start(output, (0, 2))
    with pytest.raises(ValueError, match="5 digests for 6 pieces"):
        PieceStore.create(output, OPEN, open_digests=True, digests=learned[:-1])
    with PieceStore.create(output, OPEN, open_digests=True, digests=learned) as store:
        assert pieces_of(store) == [0, 2]  # the refusal left the partial download alone


def test_record_survives_digests_being_learned_between_runs(tmp_path: Path) -> None:
    output = tmp_path / "out.bin"
    start(output, (0,))
    header = record_of(output).read_bytes()[:HEADER_BYTES]
    # Run 2: the tracker's manifest now knows pieces 0 and 1; piece 1 comes from peers, the
    # digest of piece 3 arrives meanwhile, piece 4 is read from the origin.
    book = DigestBook(NUM_PIECES, knowing(0, 1).piece_sha256)
    with PieceStore.create(output, knowing(0, 1), open_digests=True) as store:
        assert pieces_of(store) == [0]
        assert store.commit_piece(1, piece(1), book.get(1)) == DIGESTS[1]
        assert book.learn(3, DIGESTS[3])
        assert store.commit_piece(3, piece(3), book.get(3)) == DIGESTS[3]
        digest = store.commit_piece(4, piece(4), book.get(4))
        assert digest == DIGESTS[4]
        assert book.learn(4, digest)
    assert record_of(output).read_bytes()[:HEADER_BYTES] == header
    # Run 3: the caller knows what run 2 learned; the manifest still only knows 0 and 1.
    with PieceStore.create(
        output, knowing(0, 1), open_digests=True, digests=book.snapshot()
    ) as store:
        assert pieces_of(store) == [0, 1, 3, 4]
    # Run 4: everything known now.
    with PieceStore.create(output, COMPLETE, open_digests=True) as store:
        assert pieces_of(store) == [0, 1, 3, 4]
        for index in (2, 5):
            assert store.commit_piece(index, piece(index), DIGESTS[index]) == DIGESTS[index]
        assert store.finalize() == output
    assert output.read_bytes() == DATA


def test_resume_reverifies_recorded_pieces_against_the_data_on_disk(tmp_path: Path) -> None:
    output = tmp_path / "out.bin"
    learned = start(output, (0, 2))
    with open(partial_of(output), "r+b") as partial:  # lost in a crash after the record entry
        partial.seek(2 * PIECE)
        partial.write(bytes(PIECE))
    with PieceStore.create(output, OPEN, open_digests=True, digests=learned) as store:
        assert pieces_of(store) == [0]
