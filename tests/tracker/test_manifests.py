"""tracker.manifests: parsing PUT bodies, creating, merging (atomically), and the GET document."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from peerwire.manifest import ManifestConflict
from tracker.manifests import (
    MAX_URL_BYTES,
    ManifestError,
    ManifestUpdate,
    TaskManifest,
    parse_manifest_update,
)

KIB = 1024
TASK = bytes(range(20))
URL = "http://127.0.0.1:8000/blob"


def sha(piece_index: int) -> bytes:
    return hashlib.sha256(b"piece %d" % piece_index).digest()


def body(**fields: Any) -> bytes:
    return json.dumps(fields).encode()


def header(total_length: int = 5 * 16 * KIB + 1, piece_length: int = 16 * KIB) -> dict[str, Any]:
    """A six-piece task (the last piece is one byte)."""
    return {"url": URL, "total_length": total_length, "piece_length": piece_length}


def make(digests: dict[int, bytes] | None = None) -> TaskManifest:
    fields = header()
    return TaskManifest.create(
        ManifestUpdate(fields["url"], fields["total_length"], fields["piece_length"], digests or {})
    )


# --- parsing --------------------------------------------------------------------------------


def test_parse_full_list_form_keeps_digests_and_skips_nulls() -> None:
    digests = [sha(0).hex(), None, sha(2).hex().upper(), None, None, sha(5).hex()]
    update = parse_manifest_update(body(task_id=TASK.hex(), **header(), piece_sha256=digests))
    assert update == ManifestUpdate(
        URL, 5 * 16 * KIB + 1, 16 * KIB, {0: sha(0), 2: sha(2), 5: sha(5)}
    )


def test_parse_partial_dict_form_without_header_fields() -> None:
    update = parse_manifest_update(body(piece_sha256={"3": sha(3).hex(), "0": sha(0).hex()}))
    assert update == ManifestUpdate(None, None, None, {3: sha(3), 0: sha(0)})


def test_parse_treats_null_header_fields_as_absent() -> None:
    update = parse_manifest_update(body(url=None, total_length=None, piece_length=None))
    assert update == ManifestUpdate(None, None, None, {})


def test_parse_ignores_task_id_in_the_body() -> None:
    update = parse_manifest_update(body(task_id="not even hex", **header()))
    assert update.url == URL


def test_parse_accepts_an_empty_file_with_no_pieces() -> None:
    update = parse_manifest_update(body(**header(total_length=0), piece_sha256=[]))
    assert update.total_length == 0
    assert TaskManifest.create(update).num_pieces == 0


GOOD_HEX = sha(0).hex()


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"{", "not valid JSON"),
        (b"\xff\xfe\xfa", "not valid JSON"),
        (b"[1, 2]", "JSON object"),
        (b'{"total_length": NaN}', "not valid JSON"),
        (body(total_length=True), "total_length must be an integer"),
        (body(total_length=1.0), "total_length must be an integer"),
        (body(total_length="12"), "total_length must be an integer"),
        (body(total_length=-1), "negative"),
        (body(total_length=1 << 70), "exceeds"),
        (body(piece_length=False), "piece_length must be an integer"),
        (body(piece_length=16 * KIB + 1), "power of two"),
        (body(piece_length=8 * KIB), "power of two"),
        (body(piece_length=128 * KIB * KIB), "power of two"),
        (body(url=""), "url must not be empty"),
        (body(url=7), "url must be a string"),
        (body(url="http://x/" + "a" * MAX_URL_BYTES), "more than"),
        (body(url="http://x/\r\nHost: evil"), "control character"),
        (b'{"url": "http://x/\\ud800"}', "UTF-8"),
        (body(piece_sha256="abc"), "list or an object"),
        (body(**header(), piece_sha256=[None] * 5), "has 5 entries, the task has 6"),
        (body(piece_sha256=[GOOD_HEX[:-1]]), "64 hex digits"),
        (body(piece_sha256=[GOOD_HEX[:-1] + "g"]), "64 hex digits"),
        (body(piece_sha256=[GOOD_HEX[:-2] + " a"]), "64 hex digits"),
        (body(piece_sha256=[42]), "64 hex digits"),
        (body(piece_sha256={"01": GOOD_HEX}), "not a piece index"),
        (body(piece_sha256={"+1": GOOD_HEX}), "not a piece index"),
        (body(piece_sha256={"-1": GOOD_HEX}), "not a piece index"),
        (body(piece_sha256={" 1": GOOD_HEX}), "not a piece index"),
        (body(piece_sha256={"x": GOOD_HEX}), "not a piece index"),
        (body(piece_sha256={"١": GOOD_HEX}), "not a piece index"),  # Arabic-Indic one
        (body(**header(), piece_sha256={"6": GOOD_HEX}), "out of range (0..5)"),
        (body(piece_sha256s=[]), "unknown field(s): piece_sha256s"),
    ],
)
def test_parse_rejects_bad_documents_with_a_precise_message(raw: bytes, message: str) -> None:
    with pytest.raises(ManifestError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_manifest_update(raw)


def test_parse_enforces_the_piece_limit() -> None:
    document = body(url=URL, total_length=5 * 16 * KIB, piece_length=16 * KIB)
    assert parse_manifest_update(document, max_pieces=5).total_length == 5 * 16 * KIB
    with pytest.raises(ManifestError, match="6 pieces exceed the limit of 5"):
        parse_manifest_update(
            body(url=URL, total_length=5 * 16 * KIB + 1, piece_length=16 * KIB), max_pieces=5
        )
    with pytest.raises(ManifestError, match="more than 5 entries"):
        parse_manifest_update(body(piece_sha256=[None] * 6), max_pieces=5)
    with pytest.raises(ManifestError, match="out of range"):
        parse_manifest_update(body(piece_sha256={"5": GOOD_HEX}), max_pieces=5)


# --- create -----------------------------------------------------------------------------------


@pytest.mark.parametrize("missing", ["url", "total_length", "piece_length"])
def test_create_names_each_missing_header_field(missing: str) -> None:
    fields = header()
    del fields[missing]
    with pytest.raises(ManifestError, match=f"needs {missing}"):
        TaskManifest.create(parse_manifest_update(body(**fields)))


def test_create_rejects_a_digest_index_past_the_last_piece() -> None:
    with pytest.raises(ManifestError, match="index 6 is out of range"):
        make({6: sha(6)})


def test_create_rejects_invalid_fields_built_without_the_parser() -> None:
    with pytest.raises(ManifestError, match="power of two"):
        TaskManifest.create(ManifestUpdate(URL, 10, 1000, {}))
    with pytest.raises(ManifestError, match="32 bytes"):
        make({0: b"short"})


def test_create_counts_known_digests_and_answers_each_piece() -> None:
    manifest = make({1: sha(1), 5: sha(5)})
    assert (manifest.num_pieces, manifest.known) == (6, 2)
    assert manifest.digest(1) == sha(1)
    assert manifest.digest(5) == sha(5)
    assert manifest.digest(0) is None
    with pytest.raises(IndexError):
        manifest.digest(6)
    with pytest.raises(IndexError):
        manifest.digest(-1)


def test_manifest_has_no_per_instance_dict() -> None:
    assert not hasattr(make(), "__dict__")


# --- merge ------------------------------------------------------------------------------------


def test_merge_returns_how_many_digests_were_new() -> None:
    manifest = make({0: sha(0)})
    assert manifest.merge(ManifestUpdate(None, None, None, {0: sha(0), 3: sha(3)})) == 1
    assert manifest.merge(ManifestUpdate(None, None, None, {0: sha(0), 3: sha(3)})) == 0
    assert manifest.known == 2
    assert manifest.digest(3) == sha(3)


def test_merge_accepts_equal_header_fields() -> None:
    manifest = make()
    fields = header()
    update = ManifestUpdate(fields["url"], fields["total_length"], fields["piece_length"], {})
    assert manifest.merge(update) == 0


@pytest.mark.parametrize(
    ("update", "field"),
    [
        (ManifestUpdate(None, 7, None, {1: sha(1)}), "total_length"),
        (ManifestUpdate(None, None, 32 * KIB, {1: sha(1)}), "piece_length"),
    ],
)
def test_merge_refuses_a_different_header_field_and_applies_nothing(
    update: ManifestUpdate, field: str
) -> None:
    manifest = make()
    with pytest.raises(ManifestConflict, match=field):
        manifest.merge(update)
    assert manifest.known == 0
    assert manifest.digest(1) is None


def test_merge_conflicting_digest_applies_nothing_of_the_update() -> None:
    manifest = make({2: sha(2)})
    update = ManifestUpdate(None, None, None, {0: sha(0), 2: sha(99), 4: sha(4)})
    with pytest.raises(ManifestConflict, match="piece 2"):
        manifest.merge(update)
    assert manifest.known == 1
    assert manifest.digest(0) is None
    assert manifest.digest(4) is None
    assert manifest.digest(2) == sha(2)


def test_merge_refuses_an_index_past_the_stored_piece_count() -> None:
    manifest = make()
    with pytest.raises(ManifestConflict, match="piece 6 is out of range"):
        manifest.merge(ManifestUpdate(None, None, None, {1: sha(1), 6: sha(6)}))
    assert manifest.digest(1) is None


@given(
    st.dictionaries(st.integers(0, 39), st.integers(0, 3), max_size=40),
    st.lists(st.integers(1, 5), min_size=1, max_size=8),
)
def test_merging_in_any_split_learns_each_digest_once(
    pieces: dict[int, int], cuts: list[int]
) -> None:
    manifest = TaskManifest.create(ManifestUpdate(URL, 40 * 16 * KIB, 16 * KIB, {}))
    items = sorted(pieces)
    learned = 0
    start = 0
    for size in cuts * 10:
        if start >= len(items):
            break
        # Each part repeats the previous part's last piece, which must count as known.
        part = items[max(0, start - 1) : start + size]
        learned += manifest.merge(ManifestUpdate(None, None, None, {i: sha(i) for i in part}))
        start += size
    learned += manifest.merge(ManifestUpdate(None, None, None, {i: sha(i) for i in items}))
    assert learned == manifest.known == len(items)
    assert [manifest.digest(i) is not None for i in range(40)] == [i in pieces for i in range(40)]


# --- the GET document ---------------------------------------------------------------------------


def test_to_json_lists_every_piece_with_null_for_unknown() -> None:
    document = json.loads(make({1: sha(1)}).to_json(TASK))
    assert document == {
        "task_id": TASK.hex(),
        **header(),
        "validator": None,
        "ranges": True,
        "piece_sha256": [None, sha(1).hex(), None, None, None, None],
    }


def test_url_is_informational_the_first_one_is_kept() -> None:
    manifest = make()
    assert manifest.merge(ManifestUpdate("http://127.0.0.1:8000/other", None, None, {1: sha(1)}))
    assert manifest.url == header()["url"]
    assert manifest.digest(1) == sha(1)


def test_validator_and_ranges_are_stored_and_a_changed_validator_conflicts() -> None:
    fields = header()
    manifest = TaskManifest.create(
        ManifestUpdate(
            fields["url"], fields["total_length"], fields["piece_length"], {}, '"v1"', False
        )
    )
    document = json.loads(manifest.to_json(TASK))
    assert (document["validator"], document["ranges"]) == ('"v1"', False)
    assert manifest.merge(ManifestUpdate(None, None, None, {0: sha(0)}, '"v1"')) == 1
    with pytest.raises(ManifestConflict, match="origin changed"):
        manifest.merge(ManifestUpdate(None, None, None, {1: sha(1)}, '"v2"'))
    assert manifest.digest(1) is None


@pytest.mark.parametrize("body", [b'{"validator": 5}', b'{"ranges": "yes"}'])
def test_bad_validator_or_ranges_is_refused(body: bytes) -> None:
    with pytest.raises(ManifestError):
        parse_manifest_update(body)


def test_to_json_escapes_the_url() -> None:
    url = 'http://127.0.0.1/a"b\\c/é'
    manifest = TaskManifest.create(ManifestUpdate(url, 1, 16 * KIB, {}))
    assert json.loads(manifest.to_json(TASK))["url"] == url


@given(
    total_length=st.integers(0, 40 * 16 * KIB),
    piece_length=st.sampled_from([16 * KIB, 32 * KIB, 64 * KIB]),
    known=st.sets(st.integers(0, 39)),
)
def test_to_json_round_trips_through_parse_and_create(
    total_length: int, piece_length: int, known: set[int]
) -> None:
    num_pieces = -(-total_length // piece_length)
    digests = {i: sha(i) for i in known if i < num_pieces}
    original = TaskManifest.create(ManifestUpdate(URL, total_length, piece_length, digests))
    document = original.to_json(TASK)
    copy = TaskManifest.create(parse_manifest_update(document))
    assert copy.to_json(TASK) == document
    assert (copy.num_pieces, copy.known) == (num_pieces, len(digests))
    # The GET document is also a valid PUT for the same task: nothing new, no conflict.
    assert original.merge(parse_manifest_update(document)) == 0
