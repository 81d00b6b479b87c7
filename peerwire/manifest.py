"""The task manifest: the piece geometry of a file and the sha256 of every piece.

Whoever fetches a piece from the origin reports its sha256; the list
of digests is how every peer verifies every piece it receives. This module holds that list as a
frozen value, its JSON form (what the tracker serves), and a builder that hashes a local file.
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass
from os import PathLike
from typing import Any

from peerwire.ids import TaskId
from peerwire.layout import MIB, PieceLayout

SHA256_BYTES = 32
#: JSON format version written by ``to_json`` and the only one ``from_json`` accepts.
MANIFEST_VERSION = 1
#: Largest piece we handle: ``PieceStore.commit_piece`` holds whole pieces in memory.
MAX_PIECE_LENGTH = 64 * MIB
#: Bound on pieces per task (a 64 MiB JSON manifest at most); sizes that need more must use
#: larger pieces (``layout.choose_piece_length`` keeps typical tasks to about 500).
MAX_PIECES = 1 << 20
#: Bound on the total length: 1 PiB.
MAX_TOTAL_LENGTH = 1 << 50
MAX_URL_CHARS = 8192
# 64 hex characters, two quotes and a comma per digest, plus the other fields.
MAX_JSON_BYTES = MAX_PIECES * (2 * SHA256_BYTES + 3) + MAX_URL_CHARS + 1024
#: Read size for hashing the file in ``build_manifest`` when pieces are small.
_MIN_READ_BYTES = 1 * MIB

_HEX_DIGITS = frozenset("0123456789abcdef")
#: Stands for an unknown digest in ``content_digest`` (33 bytes: no sha256 can equal it).
_UNKNOWN_DIGEST = b"\xff" * (SHA256_BYTES + 1)
_REQUIRED_KEYS = frozenset({"version", "task_id", "total_length", "piece_length", "piece_sha256"})
_ALL_KEYS = _REQUIRED_KEYS | {"url"}


class ManifestConflict(ValueError):
    """Two accounts of one task's manifest disagree (its geometry, its origin validator, or a
    piece's digest): the tracker refuses such an update (HTTP 409), and a peer that is told of
    one learns that its account is not the task's."""


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class Manifest:
    """What a peer needs to verify a task's data: geometry plus one sha256 per piece.

    ``url`` is informational (where the origin copy lives); it is not part of the content and
    so not part of ``content_digest``. A digest may be ``None``: not known yet. That is the
    normal state of a task fetched by URL, whose digests arrive from the tracker as peers fetch
    pieces from the origin (``Manifest.open`` makes one with none known); a ``PieceStore``
    created with ``open_digests=True`` learns them as they come.
    """

    task_id: TaskId
    total_length: int
    piece_length: int
    piece_sha256: tuple[bytes | None, ...]
    url: str | None = None

    @classmethod
    def open(
        cls, task_id: TaskId, total_length: int, piece_length: int, url: str | None = None
    ) -> Manifest:
        """A manifest of known geometry and no known digest."""
        count = PieceLayout(total_length, piece_length).num_pieces
        return cls(task_id, total_length, piece_length, (None,) * count, url)

    def __post_init__(self) -> None:
        if not isinstance(self.task_id, TaskId):
            raise ValueError(f"task_id must be a TaskId, got {type(self.task_id).__name__}")
        if not _is_int(self.total_length) or not 0 <= self.total_length <= MAX_TOTAL_LENGTH:
            raise ValueError(f"total_length must be an int in 0..{MAX_TOTAL_LENGTH}")
        if not _is_int(self.piece_length) or not 0 < self.piece_length <= MAX_PIECE_LENGTH:
            raise ValueError(
                f"piece_length must be an int in 1..{MAX_PIECE_LENGTH}, got {self.piece_length!r}"
            )
        if not isinstance(self.piece_sha256, tuple):
            raise ValueError("piece_sha256 must be a tuple of 32-byte digests")
        num_pieces = self.layout.num_pieces
        if num_pieces > MAX_PIECES:
            raise ValueError(f"{num_pieces} pieces exceeds the limit of {MAX_PIECES}")
        if len(self.piece_sha256) != num_pieces:
            raise ValueError(
                f"piece_sha256 has {len(self.piece_sha256)} digests, "
                f"the layout has {num_pieces} pieces"
            )
        for index, digest in enumerate(self.piece_sha256):
            if digest is None:
                continue
            if not isinstance(digest, bytes) or len(digest) != SHA256_BYTES:
                raise ValueError(f"piece_sha256[{index}] must be {SHA256_BYTES} bytes or None")
        if self.url is not None and (
            not isinstance(self.url, str) or len(self.url) > MAX_URL_CHARS
        ):
            raise ValueError(f"url must be None or a string of at most {MAX_URL_CHARS} characters")

    @property
    def layout(self) -> PieceLayout:
        return PieceLayout(self.total_length, self.piece_length)

    @property
    def num_pieces(self) -> int:
        return len(self.piece_sha256)

    @property
    def is_complete(self) -> bool:
        """Every piece digest is known."""
        return None not in self.piece_sha256

    def content_digest(self) -> bytes:
        """sha256 over the geometry and the piece digests: equal exactly when the content is.

        Used by ``PieceStore`` to tie a partial download to the manifest it was written for. The
        task id and url are left out, so the same content reached another way still resumes.
        """
        hasher = hashlib.sha256(b"peerwire-manifest-v1")
        hasher.update(struct.pack(">QQ", self.total_length, self.piece_length))
        for digest in self.piece_sha256:
            hasher.update(_UNKNOWN_DIGEST if digest is None else digest)
        return hasher.digest()

    def to_json(self) -> str:
        """Compact JSON with hex digests; ``from_json`` reads it back exactly."""
        document = {
            "version": MANIFEST_VERSION,
            "task_id": self.task_id.hex(),
            "total_length": self.total_length,
            "piece_length": self.piece_length,
            "piece_sha256": [None if d is None else d.hex() for d in self.piece_sha256],
            "url": self.url,
        }
        return json.dumps(document, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes) -> Manifest:
        """Parse ``to_json`` output, strictly: ValueError naming the first problem found.

        Rejected: text over ``MAX_JSON_BYTES``, invalid JSON, duplicate or unknown keys, another
        ``version``, non-integer or out-of-range lengths (booleans and floats included), digests
        that are not 64 lowercase hex characters, a digest count that does not match the layout.
        ``url`` may be absent or null.
        """
        if len(text) > MAX_JSON_BYTES:
            raise ValueError(f"manifest: {len(text)} bytes exceeds the limit of {MAX_JSON_BYTES}")
        try:
            document = json.loads(text, object_pairs_hook=_reject_duplicate_keys)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ValueError(f"manifest: not valid JSON: {exc}") from exc
        if not isinstance(document, dict):
            raise ValueError("manifest: top level must be a JSON object")
        missing = _REQUIRED_KEYS - document.keys()
        if missing:
            raise ValueError(f"manifest: missing keys {sorted(missing)}")
        unknown = document.keys() - _ALL_KEYS
        if unknown:
            raise ValueError(f"manifest: unknown keys {sorted(unknown)}")
        if document["version"] != MANIFEST_VERSION or not _is_int(document["version"]):
            raise ValueError(f"manifest: unsupported version {document['version']!r}")
        for key in ("total_length", "piece_length"):
            if not _is_int(document[key]):
                raise ValueError(f"manifest: {key} must be an integer, got {document[key]!r:.40}")
        digests = document["piece_sha256"]
        if not isinstance(digests, list):
            raise ValueError("manifest: piece_sha256 must be a list")
        url = document.get("url")
        if url is not None and not isinstance(url, str):
            raise ValueError("manifest: url must be a string or null")
        try:
            return cls(
                task_id=TaskId(_from_hex(document["task_id"], 20, "task_id")),
                total_length=document["total_length"],
                piece_length=document["piece_length"],
                piece_sha256=tuple(
                    None if item is None else _from_hex(item, SHA256_BYTES, f"piece_sha256[{i}]")
                    for i, item in enumerate(digests)
                ),
                url=url,
            )
        except ValueError as exc:
            if str(exc).startswith("manifest:"):
                raise
            raise ValueError(f"manifest: {exc}") from exc


def _reject_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"manifest: duplicate key {key!r}")
        result[key] = value
    return result


def _from_hex(value: object, size_bytes: int, field: str) -> bytes:
    """Lowercase hex of exactly ``size_bytes`` bytes (``bytes.fromhex`` alone allows spaces)."""
    if (
        not isinstance(value, str)
        or len(value) != 2 * size_bytes
        or not _HEX_DIGITS.issuperset(value)
    ):
        raise ValueError(
            f"manifest: {field} must be {2 * size_bytes} lowercase hex digits, got {value!r:.80}"
        )
    return bytes.fromhex(value)


def local_task_id(piece_sha256: tuple[bytes | None, ...]) -> TaskId:
    """Default id of a local file: sha256 over the concatenated piece digests, first 20 bytes.

    Two hosts that build a manifest of the same bytes with the same piece length agree on it, so
    seeding a local file needs no coordination. (Files fetched by URL use the URL-derived id of
    ``dfget.identity`` instead; this is only the fallback of ``build_manifest``.)
    """
    hasher = hashlib.sha256()
    for digest in piece_sha256:
        hasher.update(_UNKNOWN_DIGEST if digest is None else digest)
    return TaskId(hasher.digest()[:20])


def build_manifest(
    path: str | PathLike[str],
    piece_length: int,
    task_id: TaskId | None = None,
    *,
    url: str | None = None,
) -> Manifest:
    """Hash the file at ``path`` piece by piece and return its manifest.

    Reads go into one reused buffer of at least 1 MiB (whole pieces at a time when pieces are
    larger), so memory stays flat and every byte is hashed straight from that buffer. The file is
    read to its end; ``total_length`` is what was read. ``task_id`` defaults to
    ``local_task_id`` of the digests. OSError from opening or reading propagates unchanged.
    """
    if not _is_int(piece_length) or not 0 < piece_length <= MAX_PIECE_LENGTH:
        raise ValueError(f"piece_length must be an int in 1..{MAX_PIECE_LENGTH}")
    buffer = memoryview(bytearray(max(piece_length, _MIN_READ_BYTES)))
    digests: list[bytes] = []
    total_length = 0
    hasher = hashlib.sha256()
    in_piece = 0  # bytes of the current piece hashed so far
    with open(path, "rb", buffering=0) as stream:
        while True:
            count = stream.readinto(buffer)
            if not count:
                break
            total_length += count
            start = 0
            while start < count:
                take = min(piece_length - in_piece, count - start)
                hasher.update(buffer[start : start + take])
                in_piece += take
                start += take
                if in_piece == piece_length:
                    digests.append(hasher.digest())
                    if len(digests) > MAX_PIECES:
                        raise ValueError(f"{path}: more than {MAX_PIECES} pieces; use larger ones")
                    hasher = hashlib.sha256()
                    in_piece = 0
    if in_piece:
        digests.append(hasher.digest())
    piece_sha256 = tuple(digests)
    return Manifest(
        task_id=task_id if task_id is not None else local_task_id(piece_sha256),
        total_length=total_length,
        piece_length=piece_length,
        piece_sha256=piece_sha256,
        url=url,
    )
