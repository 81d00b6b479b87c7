"""PieceStore: verified writes at offsets, resume, finalize by rename, reads for upload.

The store keeps no digest list: each ``verify``/``commit_piece`` is handed the piece's expected
sha256 (here, the manifest's), and resuming re-verifies against the digests given to ``create``.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import random
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from peerwire.bitfield import Bitfield
from peerwire.ids import TaskId
from peerwire.manifest import Manifest
from peerwire.storage import (
    PARTIAL_SUFFIX,
    RECORD_SUFFIX,
    DigestMismatchError,
    IncompleteError,
    PieceMissingError,
    PieceStore,
    StorageError,
    StoreClosedError,
)

PIECE = 1024
REPO_ROOT = Path(__file__).resolve().parents[2]


def content(size_bytes: int, seed: int = 1) -> bytes:
    return random.Random(seed).randbytes(size_bytes)


def manifest_of(data: bytes, piece_length: int = PIECE) -> Manifest:
    digests = tuple(
        hashlib.sha256(data[start : start + piece_length]).digest()
        for start in range(0, len(data), piece_length)
    )
    return Manifest(TaskId(b"\x07" * 20), len(data), piece_length, digests)


def piece(data: bytes, index: int, piece_length: int = PIECE) -> bytes:
    return data[index * piece_length : (index + 1) * piece_length]


def partial_of(output: Path) -> Path:
    return output.with_name(output.name + PARTIAL_SUFFIX)


def record_of(output: Path) -> Path:
    return output.with_name(output.name + RECORD_SUFFIX)


def expected(manifest: Manifest, index: int) -> bytes:
    """The digest of piece ``index`` in a complete manifest."""
    digest = manifest.piece_sha256[index]
    assert digest is not None
    return digest


DATA = content(5 * PIECE + 100)  # six pieces, the last 100 bytes
MANIFEST = manifest_of(DATA)
DIGESTS = tuple(expected(MANIFEST, index) for index in range(MANIFEST.num_pieces))


def commit(store: PieceStore, *indices: int, data: bytes = DATA) -> None:
    """Commit pieces of ``data`` against the store's manifest digests, each one accepted."""
    for index in indices:
        digest = expected(store.manifest, index)
        assert store.commit_piece(index, piece(data, index), digest) == digest


def test_pieces_committed_out_of_order_finalize_to_the_exact_bytes(tmp_path: Path) -> None:
    output = tmp_path / "out.bin"
    with PieceStore.create(output, MANIFEST) as store:
        assert partial_of(output).stat().st_size == len(DATA)  # preallocated
        commit(store, 5, 2, 0, 4)
        # the buffer types a caller might hold, unchanged by the store
        assert store.commit_piece(1, bytearray(piece(DATA, 1)), DIGESTS[1]) == DIGESTS[1]
        assert store.commit_piece(3, memoryview(piece(DATA, 3)), DIGESTS[3]) == DIGESTS[3]
        assert not output.exists()
        assert store.have == Bitfield.full(6)
        assert store.finalize(hashlib.sha256(DATA).digest()) == output
        assert store.data_path == output
        assert store.read_block(5, 0, 100) == DATA[-100:]  # seeds from the final file
    assert output.read_bytes() == DATA
    assert not partial_of(output).exists()
    assert not record_of(output).exists()


def test_verify_rejects_a_single_flipped_bit_and_wrong_sizes(tmp_path: Path) -> None:
    good = piece(DATA, 2)
    flipped = bytearray(good)
    flipped[517] ^= 0x10
    with PieceStore.create(tmp_path / "out", MANIFEST) as store:
        assert store.verify(2, good, DIGESTS[2])
        assert store.verify(2, memoryview(good), DIGESTS[2])
        assert not store.verify(2, flipped, DIGESTS[2])
        assert not store.verify(2, good[:-1], DIGESTS[2])
        assert not store.verify(2, good + b"\0", DIGESTS[2])
        assert not store.verify(1, good, DIGESTS[1])
        with pytest.raises(IndexError):
            store.verify(6, good, DIGESTS[2])
        assert not store.has_piece(2)  # verifying writes nothing


def test_verify_checks_the_size_of_the_piece_at_the_index_and_the_given_digest(
    tmp_path: Path,
) -> None:
    last = piece(DATA, 5)  # 100 bytes
    with PieceStore.create(tmp_path / "out", MANIFEST) as store:
        assert store.verify(5, last, DIGESTS[5])
        assert not store.verify(5, last, DIGESTS[4])  # the digest handed in decides
        # The right digest, but the buffer is not the size of the piece at that index.
        assert not store.verify(4, last, DIGESTS[5])
        assert not store.verify(5, piece(DATA, 4), DIGESTS[4])


def test_verify_without_a_known_digest_never_accepts(tmp_path: Path) -> None:
    with PieceStore.create(tmp_path / "out", MANIFEST) as store:
        for data in (piece(DATA, 2), piece(DATA, 2)[:-1], b""):
            assert not store.verify(2, data, None)  # type: ignore[arg-type]


def test_commit_of_a_corrupt_piece_writes_nothing(tmp_path: Path) -> None:
    output = tmp_path / "out"
    flipped = bytearray(piece(DATA, 2))
    flipped[0] ^= 1
    with PieceStore.create(output, MANIFEST) as store:
        record_before = record_of(output).read_bytes()
        assert store.commit_piece(2, flipped, DIGESTS[2]) is None
        assert not store.has_piece(2)
        on_disk = partial_of(output).read_bytes()[2 * PIECE : 3 * PIECE]
        assert on_disk == bytes(PIECE)
        assert record_of(output).read_bytes() == record_before


def test_commit_against_another_pieces_digest_writes_nothing(tmp_path: Path) -> None:
    output = tmp_path / "out"
    with PieceStore.create(output, MANIFEST) as store:
        assert store.commit_piece(2, piece(DATA, 2), DIGESTS[3]) is None
        assert store.commit_piece(2, piece(DATA, 2)[:-1], DIGESTS[2]) is None  # short
        assert store.commit_piece(5, piece(DATA, 4), DIGESTS[4]) is None  # too long for 5
        assert len(store.have) == 0
        assert partial_of(output).read_bytes() == bytes(len(DATA))


def test_commit_of_trusted_bytes_computes_records_and_returns_their_digest(
    tmp_path: Path,
) -> None:
    output = tmp_path / "out"
    with PieceStore.create(output, MANIFEST) as store:
        assert store.commit_piece(4, piece(DATA, 4), None) == DIGESTS[4]
        assert store.commit_piece(5, bytearray(piece(DATA, 5)), None) == DIGESTS[5]
        assert list(store.have) == [4, 5]
        assert store.read_block(4, 0, PIECE) == piece(DATA, 4)
    with PieceStore.create(output, MANIFEST) as resumed:  # recorded under their digests
        assert list(resumed.have) == [4, 5]


def test_commit_of_trusted_bytes_of_the_wrong_size_writes_nothing(tmp_path: Path) -> None:
    output = tmp_path / "out"
    with PieceStore.create(output, MANIFEST) as store:
        assert store.commit_piece(0, piece(DATA, 0)[:-1], None) is None
        assert store.commit_piece(5, piece(DATA, 4), None) is None  # a full piece for the last
        assert len(store.have) == 0
        assert partial_of(output).read_bytes() == bytes(len(DATA))


def test_commit_of_a_piece_already_verified_keeps_its_bytes(tmp_path: Path) -> None:
    output = tmp_path / "out"
    with PieceStore.create(output, MANIFEST) as store:
        commit(store, 1)
        assert store.commit_piece(1, piece(DATA, 1), DIGESTS[1]) == DIGESTS[1]  # a second copy
        assert store.commit_piece(1, piece(DATA, 2), DIGESTS[1]) is None
        store.commit_piece(1, piece(DATA, 2), None)  # trusted bytes: still not written over
        assert store.read_block(1, 0, PIECE) == piece(DATA, 1)
    assert record_of(output).stat().st_size == 40 + 8  # recorded once


def test_interrupted_download_resumes_with_its_verified_pieces(tmp_path: Path) -> None:
    output = tmp_path / "out"
    store = PieceStore.create(output, MANIFEST)
    commit(store, 0, 3, 5)
    store.close()  # interrupted: no finalize
    assert not output.exists()
    with PieceStore.create(output, MANIFEST) as resumed:
        assert list(resumed.have) == [0, 3, 5]
        assert resumed.read_block(3, 0, PIECE) == piece(DATA, 3)
        with pytest.raises(PieceMissingError):
            resumed.read_block(1, 0, 1)
        commit(resumed, 1, 2, 4)
        resumed.finalize()
    assert output.read_bytes() == DATA


def test_resume_false_starts_over(tmp_path: Path) -> None:
    output = tmp_path / "out"
    with PieceStore.create(output, MANIFEST) as store:
        commit(store, 0, 1)
    with PieceStore.create(output, MANIFEST, resume=False) as fresh:
        assert len(fresh.have) == 0
    assert partial_of(output).read_bytes() == bytes(len(DATA))


def test_recorded_piece_corrupted_on_disk_is_dropped_on_resume(tmp_path: Path) -> None:
    output = tmp_path / "out"
    with PieceStore.create(output, MANIFEST) as store:
        commit(store, 0, 1, 2)
    with partial_of(output).open("r+b") as stream:
        stream.seek(PIECE + 10)
        stream.write(b"\xff")
    with PieceStore.create(output, MANIFEST) as resumed:
        assert list(resumed.have) == [0, 2]
    with PieceStore.create(output, MANIFEST) as again:  # the record was rewritten without it
        assert list(again.have) == [0, 2]


def test_record_for_another_manifest_is_discarded(tmp_path: Path) -> None:
    output = tmp_path / "out"
    with PieceStore.create(output, MANIFEST) as store:
        commit(store, 0, 1, 2)
    other_data = content(len(DATA), seed=2)
    other = manifest_of(other_data)
    with PieceStore.create(output, other) as store:
        assert len(store.have) == 0
        commit(store, 0, data=other_data)
    with PieceStore.create(output, other) as store:
        assert list(store.have) == [0]


def test_torn_record_tail_is_ignored_and_later_appends_stay_aligned(tmp_path: Path) -> None:
    output = tmp_path / "out"
    with PieceStore.create(output, MANIFEST) as store:
        commit(store, 0, 1)
    with record_of(output).open("ab") as stream:
        stream.write(b"\x00\x00\x00")  # a torn entry
    with PieceStore.create(output, MANIFEST) as store:
        assert list(store.have) == [0, 1]
        commit(store, 4)
    with record_of(output).open("ab") as stream:
        stream.write(bytes(8))  # a whole entry of zeros, as a crash can leave
    with PieceStore.create(output, MANIFEST) as store:
        assert list(store.have) == [0, 1, 4]


def test_record_without_partial_file_starts_fresh(tmp_path: Path) -> None:
    output = tmp_path / "out"
    with PieceStore.create(output, MANIFEST) as store:
        commit(store, 0, 1)
    partial_of(output).unlink()
    with PieceStore.create(output, MANIFEST) as store:
        assert len(store.have) == 0


def test_whole_file_digest_mismatch_keeps_output_path_absent(tmp_path: Path) -> None:
    output = tmp_path / "out"
    output.write_bytes(b"old version")
    wrong = hashlib.sha256(b"something else").digest()
    with PieceStore.create(output, MANIFEST) as store:
        commit(store, *range(6))
        with pytest.raises(DigestMismatchError) as caught:
            store.finalize(wrong)
        assert caught.value.expected == wrong
        assert caught.value.actual == hashlib.sha256(DATA).digest()
        assert caught.value.piece_index is None
        assert output.read_bytes() == b"old version"  # untouched, never partial data
        assert partial_of(output).read_bytes() == DATA  # left for inspection


def test_file_digest_follows_the_verified_prefix_whatever_the_commit_order(
    tmp_path: Path,
) -> None:
    output = tmp_path / "out"
    with PieceStore.create(output, MANIFEST) as store:
        commit(store, 0, 3, 5)
    with PieceStore.create(output, MANIFEST) as store:  # resumed: 0, 3, 5 verified already
        store.track_file_digest()
        for index in (4, 1, 2):
            assert store.file_digest() is None
            commit(store, index)
        assert store.file_digest() == hashlib.sha256(DATA).digest()
        wrong = hashlib.sha256(b"another blob").digest()
        with pytest.raises(DigestMismatchError) as caught:
            store.finalize(wrong)
        assert caught.value.actual == hashlib.sha256(DATA).digest()
        store.finalize(hashlib.sha256(DATA).digest())
    assert output.read_bytes() == DATA


def test_file_digest_of_commits_from_many_threads(tmp_path: Path) -> None:
    data = content(64 * PIECE + 1, seed=5)
    manifest = manifest_of(data)
    jobs = [
        (index, piece(data, index), expected(manifest, index))
        for index in range(manifest.num_pieces)
    ] * 2
    random.Random(6).shuffle(jobs)
    with PieceStore.create(tmp_path / "out", manifest) as store:
        store.track_file_digest()
        with ThreadPoolExecutor(max_workers=8) as pool:
            results = list(pool.map(lambda job: store.commit_piece(*job), jobs))
        assert results == [digest for _, _, digest in jobs]
        assert store.file_digest() == hashlib.sha256(data).digest()


def test_file_digest_is_none_unless_tracked(tmp_path: Path) -> None:
    with PieceStore.create(tmp_path / "out", MANIFEST) as store:
        commit(store, *range(6))
        assert store.file_digest() is None
        store.track_file_digest()  # late: hashes what is verified already, from the file
        assert store.file_digest() == hashlib.sha256(DATA).digest()


def test_finalize_before_all_pieces_fails_and_writes_nothing_to_output(tmp_path: Path) -> None:
    output = tmp_path / "out"
    with PieceStore.create(output, MANIFEST) as store:
        commit(store, 0, 1, 2, 3, 4)
        with pytest.raises(IncompleteError, match="1 pieces"):
            store.finalize()
    assert not output.exists()


def test_discard_removes_partial_and_record(tmp_path: Path) -> None:
    output = tmp_path / "out"
    store = PieceStore.create(output, MANIFEST)
    commit(store, 0)
    store.discard()
    assert sorted(tmp_path.iterdir()) == []


def test_zero_length_file_finalizes_to_an_empty_file(tmp_path: Path) -> None:
    output = tmp_path / "empty"
    with PieceStore.create(output, manifest_of(b"")) as store:
        assert store.have.is_complete()
        store.finalize(hashlib.sha256(b"").digest())
    assert output.read_bytes() == b""


def test_read_block_boundaries(tmp_path: Path) -> None:
    with PieceStore.create(tmp_path / "out", MANIFEST) as store:
        commit(store, 0, 5)
        assert store.read_block(0, 0, PIECE) == piece(DATA, 0)
        assert store.read_block(0, PIECE - 1, 1) == DATA[PIECE - 1 : PIECE]
        assert store.read_block(5, 99, 1) == DATA[-1:]
        assert store.block_offset(5, 99, 1) == len(DATA) - 1
        buffer = bytearray(300)
        assert store.read_block_into(0, 200, memoryview(buffer)[100:]) == 200
        assert buffer[100:] == DATA[200:400]
        assert buffer[:100] == bytes(100)
        for index, begin, length in [(0, PIECE - 1, 2), (5, 99, 2), (5, 100, 1), (0, -1, 1),
                                     (0, 0, 0), (6, 0, 1), (-1, 0, 1)]:  # fmt: skip
            with pytest.raises(ValueError, match="outside"):
                store.read_block(index, begin, length)
        with pytest.raises(PieceMissingError):
            store.read_block(1, 0, 1)
        with pytest.raises(PieceMissingError):
            store.block_offset(1, 0)


def test_read_span_reads_across_verified_pieces_in_one_go(tmp_path: Path) -> None:
    with PieceStore.create(tmp_path / "out", MANIFEST) as store:
        commit(store, 1, 2, 3, 5)
        assert store.read_span(PIECE + 7, 2 * PIECE) == DATA[PIECE + 7 : 3 * PIECE + 7]
        assert store.read_span(5 * PIECE, len(DATA) - 5 * PIECE) == DATA[5 * PIECE :]
        with pytest.raises(PieceMissingError, match=r"\[4\]"):
            store.read_span(3 * PIECE, 2 * PIECE + 1)  # touches piece 4 by one byte
        with pytest.raises(PieceMissingError, match=r"\[0\]"):
            store.read_span(PIECE - 1, 2)
        for offset, length in [(-1, 1), (0, 0), (len(DATA) - 1, 2)]:
            with pytest.raises(ValueError, match="outside"):
                store.read_span(offset, length)


def test_open_span_lends_the_descriptor_for_verified_bytes_only(tmp_path: Path) -> None:
    store = PieceStore.create(tmp_path / "out", MANIFEST)
    commit(store, 1, 2)
    with store.open_span(PIECE + 10, PIECE) as fd:
        assert os.pread(fd, PIECE, PIECE + 10) == DATA[PIECE + 10 : 2 * PIECE + 10]
    with pytest.raises(PieceMissingError, match=r"\[3\]"):
        store.open_span(2 * PIECE, PIECE + 1).__enter__()
    store.close()
    with pytest.raises(StoreClosedError):
        store.open_span(PIECE, 1).__enter__()


def test_block_offset_and_data_fd_serve_sendfile(tmp_path: Path) -> None:
    with PieceStore.create(tmp_path / "out", MANIFEST) as store:
        commit(store, 2)
        with (tmp_path / "sent").open("wb") as sink:
            offset = store.block_offset(2, 24, 1000)
            assert os.sendfile(sink.fileno(), store.data_fd, offset, 1000) == 1000
    assert (tmp_path / "sent").read_bytes() == piece(DATA, 2)[24:1024]


def test_reads_after_close_are_refused(tmp_path: Path) -> None:
    store = PieceStore.create(tmp_path / "out", MANIFEST)
    commit(store, 0)
    store.close()
    store.close()  # idempotent
    with pytest.raises(ValueError, match="closed"):
        store.read_block(0, 0, 1)
    with pytest.raises(ValueError, match="closed"):
        _ = store.data_fd


def test_write_piece_writes_unrecorded_and_refuses_verified_pieces(tmp_path: Path) -> None:
    output = tmp_path / "out"
    with PieceStore.create(output, MANIFEST) as store:
        store.write_piece(1, piece(DATA, 1))
        assert not store.has_piece(1)
        assert partial_of(output).read_bytes()[PIECE : 2 * PIECE] == piece(DATA, 1)
        with pytest.raises(ValueError, match="whole piece"):
            store.write_piece(1, b"short")
        commit(store, 0)
        with pytest.raises(ValueError, match="verified"):
            store.write_piece(0, piece(DATA, 0))


def test_concurrent_commits_from_many_threads_all_land(tmp_path: Path) -> None:
    data = content(64 * PIECE + 1, seed=3)
    manifest = manifest_of(data)
    output = tmp_path / "out"
    corrupt = bytearray(piece(data, 7))
    corrupt[3] ^= 0x80
    jobs = [
        (index, piece(data, index), expected(manifest, index))
        for index in range(manifest.num_pieces)
    ] * 2
    jobs += [(7, bytes(corrupt), expected(manifest, 7))] * 5
    random.Random(4).shuffle(jobs)
    with PieceStore.create(output, manifest) as store:
        with ThreadPoolExecutor(max_workers=8) as pool:
            results = list(pool.map(lambda job: store.commit_piece(*job), jobs))
        assert results.count(None) == 5
        accepted = [(job, digest) for job, digest in zip(jobs, results, strict=True) if digest]
        assert all(digest == job[2] for job, digest in accepted)
        assert store.have.is_complete()
    record_size = record_of(output).stat().st_size
    assert record_size == 40 + 8 * manifest.num_pieces  # each piece recorded exactly once
    with PieceStore.create(output, manifest) as store:
        assert store.have.is_complete()
        store.finalize(hashlib.sha256(data).digest())
    assert output.read_bytes() == data


def test_second_download_to_the_same_output_is_refused(tmp_path: Path) -> None:
    output = tmp_path / "out"
    with PieceStore.create(output, MANIFEST):
        with pytest.raises(StorageError) as caught:
            PieceStore.create(output, MANIFEST)
        assert caught.value.errno == errno.EWOULDBLOCK
        assert caught.value.path == partial_of(output)


def test_open_complete_seeds_a_finished_file_read_only(tmp_path: Path) -> None:
    path = tmp_path / "seed"
    path.write_bytes(DATA)
    with PieceStore.open_complete(path, MANIFEST, verify=True) as store:
        assert store.have.is_complete()
        assert store.read_block(4, 10, 20) == DATA[4 * PIECE + 10 : 4 * PIECE + 30]
        # already there: nothing to do, nothing written
        assert store.commit_piece(4, piece(DATA, 4), DIGESTS[4]) == DIGESTS[4]
        assert store.is_finalized
        with pytest.raises(ValueError, match="read-only"):
            store.write_piece(4, piece(DATA, 4))
        with pytest.raises(ValueError, match="read-only"):
            store.finalize()
        store.discard()  # closes, never deletes a complete file
    assert path.read_bytes() == DATA


def test_open_complete_checks_size_and_optionally_every_piece(tmp_path: Path) -> None:
    path = tmp_path / "seed"
    path.write_bytes(DATA[:-1])
    with pytest.raises(ValueError, match="manifest says"):
        PieceStore.open_complete(path, MANIFEST)
    corrupted = bytearray(DATA)
    corrupted[3 * PIECE] ^= 1
    path.write_bytes(corrupted)
    PieceStore.open_complete(path, MANIFEST).close()  # default: trusted, not hashed
    with pytest.raises(DigestMismatchError) as caught:
        PieceStore.open_complete(path, MANIFEST, verify=True)
    assert caught.value.piece_index == 3
    with pytest.raises(StorageError) as missing:
        PieceStore.open_complete(tmp_path / "absent", MANIFEST)
    assert missing.value.errno == errno.ENOENT


def test_create_refuses_a_digest_list_of_another_length(tmp_path: Path) -> None:
    for digests in (DIGESTS[:-1], (*DIGESTS, DIGESTS[0]), ()):
        with pytest.raises(ValueError, match="digests for 6 pieces"):
            PieceStore.create(tmp_path / "out", MANIFEST, digests=digests)
    assert list(tmp_path.iterdir()) == []  # refused before any file was made


def test_resume_reverifies_against_the_digests_given_to_create(tmp_path: Path) -> None:
    output = tmp_path / "out"
    with PieceStore.create(output, MANIFEST) as store:
        commit(store, 0, 1, 2)
    # The caller's list decides which recorded pieces are re-verified and kept.
    changed = list(DIGESTS)
    changed[1] = hashlib.sha256(b"not piece 1").digest()
    with PieceStore.create(output, MANIFEST, digests=changed) as store:
        assert list(store.have) == [0, 2]
    with PieceStore.create(output, MANIFEST, digests=DIGESTS) as store:
        assert list(store.have) == [0, 2]  # the record was rewritten without piece 1


def test_output_in_missing_directory_is_a_storage_error(tmp_path: Path) -> None:
    with pytest.raises(StorageError) as caught:
        PieceStore.create(tmp_path / "nope" / "out", MANIFEST)
    assert caught.value.errno == errno.ENOENT
    assert caught.value.path == tmp_path / "nope" / ("out" + PARTIAL_SUFFIX)


# RLIMIT_FSIZE makes writes past the limit fail with EFBIG (Python ignores SIGXFSZ), which is as
# close to a full disk as an unprivileged test gets.
_CHILD = """
import json, resource, sys
from peerwire.manifest import Manifest
from peerwire.storage import PieceStore, StorageError
output, limit, pieces = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3])
manifest = Manifest.from_json(sys.stdin.read())
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
result = {"committed": []}
try:
    store = PieceStore.create(output, manifest)
    for index, hex_data in pieces:
        store.commit_piece(index, bytes.fromhex(hex_data), manifest.piece_sha256[index])
        result["committed"].append(index)
except StorageError as exc:
    result.update(errno=exc.errno, disk_full=exc.is_disk_full, path=str(exc.path))
print(json.dumps(result))
"""


def run_limited(
    output: Path, limit_bytes: int, pieces: list[tuple[int, bytes]]
) -> dict[str, object]:
    argv = [sys.executable, "-c", _CHILD, str(output), str(limit_bytes)]
    argv.append(json.dumps([[index, data.hex()] for index, data in pieces]))
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    done = subprocess.run(
        argv, input=MANIFEST.to_json(), capture_output=True, text=True, env=env, timeout=60,
        check=True,
    )  # fmt: skip
    result: dict[str, object] = json.loads(done.stdout)
    return result


def test_disk_full_while_writing_a_piece_is_a_precise_error(tmp_path: Path) -> None:
    output = tmp_path / "out"
    PieceStore.create(output, MANIFEST).close()  # preallocated without a limit
    # The limit falls inside piece 1: its pwrite comes up short, then fails.
    pieces = [(0, piece(DATA, 0)), (1, piece(DATA, 1))]
    result = run_limited(output, PIECE + PIECE // 2, pieces)
    assert result == {
        "committed": [0],
        "errno": errno.EFBIG,
        "disk_full": True,
        "path": str(partial_of(output)),
    }
    with PieceStore.create(output, MANIFEST) as store:
        assert list(store.have) == [0]


def test_disk_full_while_preallocating_leaves_no_partial_file(tmp_path: Path) -> None:
    output = tmp_path / "out"
    result = run_limited(output, 2 * PIECE, [])
    assert result["errno"] == errno.EFBIG
    assert result["disk_full"] is True
    assert result["path"] == str(partial_of(output))
    assert sorted(tmp_path.iterdir()) == []


def test_partial_file_is_sparse_unless_preallocated(tmp_path: Path) -> None:
    big = Manifest(TaskId(b"\x01" * 20), 64 * 1024 * 1024, 1024 * 1024, (b"\x00" * 32,) * 64)
    with PieceStore.create(tmp_path / "sparse.bin", big):
        sparse = partial_of(tmp_path / "sparse.bin").stat()
    with PieceStore.create(tmp_path / "full.bin", big, preallocate=True):
        full = partial_of(tmp_path / "full.bin").stat()
    assert sparse.st_size == full.st_size == 64 * 1024 * 1024
    assert sparse.st_blocks * 512 < 1024 * 1024  # nothing allocated yet
    assert full.st_blocks * 512 >= 64 * 1024 * 1024


def test_download_larger_than_the_free_space_is_refused_up_front(tmp_path: Path) -> None:
    free_bytes = os.statvfs(tmp_path).f_bavail * os.statvfs(tmp_path).f_frsize
    piece_length = 64 * 1024 * 1024
    pieces = free_bytes // piece_length + 2
    huge = Manifest(
        TaskId(b"\x02" * 20), pieces * piece_length, piece_length, (b"\x00" * 32,) * pieces
    )
    with pytest.raises(StorageError) as caught:
        PieceStore.create(tmp_path / "huge.bin", huge)
    assert caught.value.is_disk_full
    assert "not enough space" in str(caught.value)
    assert list(tmp_path.iterdir()) == []  # no partial file, no record left behind
