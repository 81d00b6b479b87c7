"""Manifest: validation, the strict JSON form, and building one from a local file."""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from peerwire.ids import TaskId
from peerwire.manifest import (
    MAX_JSON_BYTES,
    Manifest,
    build_manifest,
    local_task_id,
)

TASK = TaskId(bytes(range(20)))


def digests_of(data: bytes, piece_length: int) -> tuple[bytes, ...]:
    return tuple(
        hashlib.sha256(data[start : start + piece_length]).digest()
        for start in range(0, len(data), piece_length)
    )


@st.composite
def manifests(draw: st.DrawFn) -> Manifest:
    piece_length = draw(st.integers(min_value=1, max_value=1 << 20))
    num_pieces = draw(st.integers(min_value=0, max_value=20))
    if num_pieces == 0:
        total_length = 0
    else:
        last = draw(st.integers(min_value=1, max_value=piece_length))
        total_length = (num_pieces - 1) * piece_length + last
    digests = draw(
        st.lists(st.binary(min_size=32, max_size=32), min_size=num_pieces, max_size=num_pieces)
    )
    return Manifest(
        task_id=TaskId(draw(st.binary(min_size=20, max_size=20))),
        total_length=total_length,
        piece_length=piece_length,
        piece_sha256=tuple(digests),
        url=draw(st.none() | st.text(max_size=50)),
    )


@given(manifests())
def test_manifest_json_round_trip_is_exact(manifest: Manifest) -> None:
    assert Manifest.from_json(manifest.to_json()) == manifest
    assert Manifest.from_json(manifest.to_json().encode()) == manifest


def valid_document() -> dict[str, Any]:
    data = b"x" * 10
    return {
        "version": 1,
        "task_id": TASK.hex(),
        "total_length": 10,
        "piece_length": 4,
        "piece_sha256": [digest.hex() for digest in digests_of(data, 4)],
        "url": "http://127.0.0.1/f",
    }


def test_valid_document_parses_and_url_may_be_absent() -> None:
    document = valid_document()
    assert Manifest.from_json(json.dumps(document)).num_pieces == 3
    del document["url"]
    assert Manifest.from_json(json.dumps(document)).url is None


def _set(key: str, value: object) -> dict[str, Any]:
    document = valid_document()
    document[key] = value
    return document


def _without(key: str) -> dict[str, Any]:
    document = valid_document()
    del document[key]
    return document


DIGEST = "ab" * 32
BAD_DOCUMENTS: dict[str, object] = {
    "missing_key": _without("piece_length"),
    "unknown_key": _set("colour", "blue"),
    "future_version": _set("version", 2),
    "boolean_version": _set("version", True),
    "string_length": _set("total_length", "10"),
    "boolean_length": _set("total_length", True),
    "float_length": _set("total_length", 10.0),
    "negative_length": _set("total_length", -1),
    "zero_piece_length": _set("piece_length", 0),
    "huge_piece_length": _set("piece_length", 1 << 40),
    "uppercase_digest": _set("piece_sha256", [DIGEST.upper()] * 3),
    "short_digest": _set("piece_sha256", [DIGEST[:-2]] * 3),
    "digest_with_spaces": _set("piece_sha256", ["ab " * 21 + "a"] * 3),
    "digest_not_string": _set("piece_sha256", [7] * 3),
    "too_few_digests": _set("piece_sha256", [DIGEST] * 2),
    "too_many_digests": _set("piece_sha256", [DIGEST] * 4),
    "digests_not_list": _set("piece_sha256", DIGEST),
    "short_task_id": _set("task_id", "00" * 19),
    "task_id_not_hex": _set("task_id", "zz" * 20),
    "url_not_string": _set("url", 5),
    "top_level_list": [valid_document()],
}


@pytest.mark.parametrize("name", sorted(BAD_DOCUMENTS))
def test_from_json_rejects_malformed_document(name: str) -> None:
    with pytest.raises(ValueError, match=r"^manifest: "):
        Manifest.from_json(json.dumps(BAD_DOCUMENTS[name]))


@pytest.mark.parametrize(
    "text",
    [
        "",
        "{",
        "not json",
        b"\xff\xfe{",
        '{"version": 1, "version": 1}',
        "NaN",
        " " * (MAX_JSON_BYTES + 1),
    ],
)
def test_from_json_rejects_invalid_json_text(text: str | bytes) -> None:
    with pytest.raises(ValueError, match=r"^manifest: "):
        Manifest.from_json(text)


def test_constructor_checks_digest_count_size_and_type() -> None:
    digests = digests_of(b"x" * 10, 4)
    with pytest.raises(ValueError, match="3 pieces"):
        Manifest(TASK, 10, 4, digests[:2])
    with pytest.raises(ValueError, match="32 bytes"):
        Manifest(TASK, 10, 4, (*digests[:2], b"short"))
    with pytest.raises(ValueError, match="tuple"):
        Manifest(TASK, 10, 4, list(digests))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="piece_length"):
        Manifest(TASK, 10, 0, digests)


def test_content_digest_ignores_task_id_and_url_but_not_content() -> None:
    digests = digests_of(b"x" * 10, 4)
    base = Manifest(TASK, 10, 4, digests)
    other_name = Manifest(TaskId(b"\x01" * 20), 10, 4, digests, url="http://127.0.0.1/x")
    other_content = Manifest(TASK, 10, 4, (*digests[:2], hashlib.sha256(b"yy").digest()))
    assert base.content_digest() == other_name.content_digest()
    assert base.content_digest() != other_content.content_digest()


@pytest.mark.parametrize(
    ("size_bytes", "piece_length"),
    [
        (0, 16),
        (1, 16),
        (16, 16),
        (17, 16),
        (1000, 3),
        (5000, 1 << 16),
        (2_600_000, 700_001),  # pieces straddle the 1 MiB read buffer
        (3 * (1 << 20), 1 << 20),
        (2 * (1 << 20) + 5, 2 << 20),  # pieces larger than the minimum read
    ],
)
def test_build_manifest_hashes_each_piece(
    tmp_path: Path, size_bytes: int, piece_length: int
) -> None:
    data = random.Random(size_bytes).randbytes(size_bytes)
    path = tmp_path / "file"
    path.write_bytes(data)
    manifest = build_manifest(path, piece_length, url="http://127.0.0.1/file")
    assert manifest.total_length == size_bytes
    assert manifest.piece_length == piece_length
    assert manifest.piece_sha256 == digests_of(data, piece_length)
    assert manifest.url == "http://127.0.0.1/file"


def test_build_manifest_default_task_id_is_sha256_of_piece_digests(tmp_path: Path) -> None:
    path = tmp_path / "file"
    path.write_bytes(b"abcdefgh" * 100)
    manifest = build_manifest(path, 64)
    expected = hashlib.sha256(b"".join(manifest.piece_sha256)).digest()[:20]
    assert manifest.task_id == TaskId(expected) == local_task_id(manifest.piece_sha256)
    assert build_manifest(path, 64, TASK).task_id == TASK


def test_build_manifest_missing_file_raises_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        build_manifest(tmp_path / "absent", 64)
