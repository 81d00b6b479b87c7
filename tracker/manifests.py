"""The task manifest: which URL a task is, how it is cut into pieces, and each piece's sha256.

Whoever fetches a piece from the origin reports its digest (``PUT /tasks/<id>``); every other
peer verifies the pieces it receives against this list (ARCHITECTURE.md, "One download"). The
tracker is the one place the digests meet, so it refuses anything that disagrees with what it
already holds: a second, different digest for a piece means someone is wrong or lying, and
taking either silently would let a bad piece spread.

The JSON document (README.md, the tracker's routes)::

    {"task_id": "<40 hex>", "url": "http://...", "total_length": 123, "piece_length": 16384,
     "piece_sha256": ["<64 hex>" or null, ...]}

A ``PUT`` may instead carry ``"piece_sha256": {"<index>": "<64 hex>", ...}`` (some pieces).
Pure: no I/O, no clock.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Final, TypeGuard

from peerwire.manifest import ManifestConflict

#: Piece lengths are powers of two in this range (16 KiB is the BEP 3 block size).
MIN_PIECE_LENGTH: Final = 16 * 1024
MAX_PIECE_LENGTH: Final = 64 * 1024 * 1024
#: Most pieces one manifest may describe (bounds memory: 32 bytes of digest per piece).
MAX_PIECES: Final = 1 << 20
#: Longest URL accepted, in UTF-8 bytes.
MAX_URL_BYTES: Final = 8 * 1024
#: sha256 digest size.
DIGEST_BYTES: Final = 32
_DIGEST_HEX: Final = 2 * DIGEST_BYTES
_KNOWN_KEYS: Final = frozenset(
    {"task_id", "url", "total_length", "piece_length", "piece_sha256", "validator", "ranges"}
)
#: Longest origin validator kept (an ETag or a Last-Modified date).
MAX_VALIDATOR_CHARS: Final = 512
#: Longest decimal piece index accepted as a dict key (1 << 20 has 7 digits).
_MAX_INDEX_DIGITS: Final = 10


class ManifestError(ValueError):
    """The document itself is bad (HTTP 400): not JSON, wrong type, out of range, missing."""


@dataclass(frozen=True, slots=True)
class ManifestUpdate:
    """One parsed ``PUT /tasks/<id>`` body. ``None`` means the field was not in the document."""

    url: str | None
    total_length: int | None
    piece_length: int | None
    #: Piece index -> 32 raw sha256 bytes; only the digests the document states.
    digests: dict[int, bytes]
    #: The origin's ETag (or Last-Modified) when the manifest was made: every fetcher checks
    #: its Range answers against it, so a changed origin is an error, not a mixed file.
    validator: str | None = None
    #: Whether the origin honours Range requests; without, one peer streams the whole file.
    ranges: bool | None = None


def count_pieces(total_length: int, piece_length: int) -> int:
    """ceil(total_length / piece_length); 0 bytes make 0 pieces."""
    return -(-total_length // piece_length)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _is_int(value: object) -> TypeGuard[int]:
    # JSON true/false arrive as Python bools, which are ints; they are not lengths.
    return isinstance(value, int) and not isinstance(value, bool)


def _check_url(value: object) -> str:
    if not isinstance(value, str):
        raise ManifestError("url must be a string")
    if not value:
        raise ManifestError("url must not be empty")
    try:
        size_bytes = len(value.encode("utf-8"))
    except UnicodeEncodeError:
        raise ManifestError("url is not valid UTF-8 (lone surrogate)") from None
    if size_bytes > MAX_URL_BYTES:
        raise ManifestError(f"url is {size_bytes} bytes, more than {MAX_URL_BYTES}")
    if any(ord(char) < 0x20 or ord(char) == 0x7F for char in value):
        raise ManifestError("url contains a control character")
    return _without_credentials(value)


def _without_credentials(url: str) -> str:
    """``url`` without a ``user:password@`` (peers publish URLs without it already; one that
    still carries credentials is not shown to everyone who reads the manifest)."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    authority, slash, path = rest.partition("/")
    if "@" not in authority:
        return url
    return f"{scheme}://{authority.rpartition('@')[2]}{slash}{path}"


def _check_total_length(value: object, max_pieces: int) -> int:
    if not _is_int(value):
        raise ManifestError("total_length must be an integer")
    if value < 0:
        raise ManifestError(f"total_length must not be negative, not {value}")
    if value > max_pieces * MAX_PIECE_LENGTH:
        raise ManifestError(f"total_length {value} exceeds {max_pieces} pieces of the largest size")
    return value


def _check_piece_length(value: object) -> int:
    if not _is_int(value):
        raise ManifestError("piece_length must be an integer")
    if not MIN_PIECE_LENGTH <= value <= MAX_PIECE_LENGTH or value & (value - 1):
        raise ManifestError(
            f"piece_length must be a power of two from {MIN_PIECE_LENGTH} to {MAX_PIECE_LENGTH}, "
            f"not {value}"
        )
    return value


def _check_num_pieces(total_length: int, piece_length: int, max_pieces: int) -> int:
    num_pieces = count_pieces(total_length, piece_length)
    if num_pieces > max_pieces:
        raise ManifestError(f"{num_pieces} pieces exceed the limit of {max_pieces}")
    return num_pieces


def _parse_digest(value: object, piece_index: int) -> bytes | None:
    """A 64-hex-digit string (either case) as 32 bytes; ``null`` is an unknown digest."""
    if value is None:
        return None
    if not isinstance(value, str) or len(value) != _DIGEST_HEX:
        raise ManifestError(f"piece_sha256[{piece_index}] must be {_DIGEST_HEX} hex digits or null")
    try:
        digest = bytes.fromhex(value)
    except ValueError:
        digest = b""
    # fromhex skips whitespace, so a 64-character string with spaces yields fewer bytes.
    if len(digest) != DIGEST_BYTES:
        raise ManifestError(f"piece_sha256[{piece_index}] is not {_DIGEST_HEX} hex digits")
    return digest


def _parse_digests(value: object, num_pieces: int | None, max_pieces: int) -> dict[int, bytes]:
    limit = max_pieces if num_pieces is None else num_pieces
    digests: dict[int, bytes] = {}
    if isinstance(value, list):
        if num_pieces is not None and len(value) != num_pieces:
            raise ManifestError(
                f"piece_sha256 has {len(value)} entries, the task has {num_pieces} pieces"
            )
        if len(value) > max_pieces:
            raise ManifestError(f"piece_sha256 has more than {max_pieces} entries")
        for piece_index, entry in enumerate(value):
            digest = _parse_digest(entry, piece_index)
            if digest is not None:
                digests[piece_index] = digest
        return digests
    if isinstance(value, dict):
        if len(value) > limit:
            raise ManifestError(f"piece_sha256 has more than {limit} entries")
        for key, entry in value.items():
            # Canonical decimal only: int() would also take "+1", " 1", "1_0" and "01".
            if not (
                key.isascii()
                and key.isdigit()
                and len(key) <= _MAX_INDEX_DIGITS
                and (key == "0" or key[0] != "0")
            ):
                raise ManifestError(f"piece_sha256 key {key!r} is not a piece index")
            piece_index = int(key)
            if piece_index >= limit:
                raise ManifestError(
                    f"piece_sha256 index {piece_index} is out of range (0..{limit - 1})"
                )
            digest = _parse_digest(entry, piece_index)
            if digest is not None:
                digests[piece_index] = digest
        return digests
    raise ManifestError("piece_sha256 must be a list or an object of index -> digest")


def parse_manifest_update(body: bytes, *, max_pieces: int = MAX_PIECES) -> ManifestUpdate:
    """Parse and validate a ``PUT /tasks/<id>`` body; ManifestError says what is wrong.

    Checks everything the document alone can tell: types (a JSON ``true`` is not a length),
    ranges, digest syntax, and piece indices against the piece count when the document gives
    both lengths. Whether it agrees with a stored manifest is ``TaskManifest.merge``'s call.
    ``task_id`` is ignored (the path names the task); any other unknown key is refused, so a
    misspelt ``piece_sha256`` cannot silently drop digests. ``null`` counts as absent.
    """
    try:
        document = json.loads(body, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        raise ManifestError(f"body is not valid JSON: {exc}") from None
    if not isinstance(document, dict):
        raise ManifestError("body must be a JSON object")
    unknown = document.keys() - _KNOWN_KEYS
    if unknown:
        raise ManifestError(f"unknown field(s): {', '.join(sorted(unknown))}")

    raw_url = document.get("url")
    url = None if raw_url is None else _check_url(raw_url)
    raw_total = document.get("total_length")
    total_length = None if raw_total is None else _check_total_length(raw_total, max_pieces)
    raw_piece = document.get("piece_length")
    piece_length = None if raw_piece is None else _check_piece_length(raw_piece)
    num_pieces = None
    if total_length is not None and piece_length is not None:
        num_pieces = _check_num_pieces(total_length, piece_length, max_pieces)

    raw_digests = document.get("piece_sha256")
    digests = {} if raw_digests is None else _parse_digests(raw_digests, num_pieces, max_pieces)
    validator = document.get("validator")
    if validator is not None and (
        not isinstance(validator, str)
        or len(validator) > MAX_VALIDATOR_CHARS
        or not validator.isprintable()
    ):
        raise ManifestError(f"validator must be printable text of at most {MAX_VALIDATOR_CHARS}")
    ranges = document.get("ranges")
    if ranges is not None and not isinstance(ranges, bool):
        raise ManifestError("ranges must be true or false")
    return ManifestUpdate(url, total_length, piece_length, digests, validator, ranges)


class TaskManifest:
    """The stored manifest of one task.

    Digests live in one ``bytearray`` of ``num_pieces * 32`` bytes plus a bitmap of which are
    known (BEP 3 bitfield order: piece 0 is the high bit of byte 0), so a million-piece task
    costs about 33 MB and a 500-piece one about 16 KB, with no object per piece.
    """

    __slots__ = (
        "_digests",
        "_have",
        "known",
        "num_pieces",
        "piece_length",
        "ranges",
        "total_length",
        "url",
        "validator",
    )

    url: str
    total_length: int
    piece_length: int
    num_pieces: int
    #: How many digests are known (announce responses send it as ``df known``).
    known: int

    def __init__(self, url: str, total_length: int, piece_length: int, num_pieces: int) -> None:
        """Use ``create``; this constructor trusts its (already validated) arguments."""
        self.url = url
        self.total_length = total_length
        self.piece_length = piece_length
        self.num_pieces = num_pieces
        self.known = 0
        self.validator: str | None = None
        self.ranges = True
        self._digests = bytearray(num_pieces * DIGEST_BYTES)
        self._have = bytearray((num_pieces + 7) // 8)

    @classmethod
    def create(cls, update: ManifestUpdate, *, max_pieces: int = MAX_PIECES) -> TaskManifest:
        """The first manifest of a task; url, total_length and piece_length are required."""
        missing = [
            name
            for name in ("url", "total_length", "piece_length")
            if getattr(update, name) is None
        ]
        if missing:
            raise ManifestError(f"a new manifest needs {', '.join(missing)}")
        url = _check_url(update.url)
        total_length = _check_total_length(update.total_length, max_pieces)
        piece_length = _check_piece_length(update.piece_length)
        num_pieces = _check_num_pieces(total_length, piece_length, max_pieces)
        manifest = cls(url, total_length, piece_length, num_pieces)
        manifest.validator = update.validator
        manifest.ranges = update.ranges is not False
        for piece_index, digest in update.digests.items():
            if not 0 <= piece_index < num_pieces:
                raise ManifestError(
                    f"piece_sha256 index {piece_index} is out of range (0..{num_pieces - 1})"
                )
            _check_digest_size(piece_index, digest)
        for piece_index, digest in update.digests.items():
            manifest._store(piece_index, digest)
        return manifest

    @classmethod
    def from_stored(
        cls,
        url: str,
        total_length: int,
        piece_length: int,
        num_pieces: int,
        validator: str | None,
        ranges: bool,
        digests: bytes,
        known: bytes,
    ) -> TaskManifest:
        """A manifest as a shared store holds it (``tracker.redisstore``): the digests and the
        bitmap of known ones as stored, padded to their full size."""
        manifest = cls(url, total_length, piece_length, num_pieces)
        manifest.validator = validator
        manifest.ranges = ranges
        manifest._digests[: len(digests)] = digests[: len(manifest._digests)]
        manifest._have[: len(known)] = known[: len(manifest._have)]
        manifest.known = int.from_bytes(manifest._have, "big").bit_count()
        return manifest

    def stored_digests(self) -> tuple[bytes, bytes]:
        """(digests, bitmap of the known ones) as a shared store keeps them."""
        return bytes(self._digests), bytes(self._have)

    def merge(self, update: ManifestUpdate) -> int:
        """Apply what ``update`` adds; returns how many digests were new.

        All or nothing: a length or validator that differs from the stored one, a piece index
        past the end, or a digest that differs from the stored digest of that piece raises
        ManifestConflict (naming the field or piece) before anything is written. The url is
        informational: peers may reach the same task through different URLs (a blob from two
        registries, signed URLs with filtered parameters), so the first one is kept.
        """
        if (
            update.validator is not None
            and self.validator is not None
            and update.validator != self.validator
        ):
            raise ManifestConflict(
                f"validator {update.validator!r} differs from the stored {self.validator!r}: "
                "the origin changed under the task"
            )
        for name in ("total_length", "piece_length"):
            given = getattr(update, name)
            if given is not None and given != getattr(self, name):
                raise ManifestConflict(
                    f"{name} {given!r} differs from the stored {getattr(self, name)!r}"
                )
        new: list[tuple[int, bytes]] = []
        for piece_index, digest in update.digests.items():
            if not 0 <= piece_index < self.num_pieces:
                raise ManifestConflict(
                    f"piece {piece_index} is out of range: the task has {self.num_pieces} pieces"
                )
            _check_digest_size(piece_index, digest)
            stored = self.digest(piece_index)
            if stored is None:
                new.append((piece_index, digest))
            elif stored != digest:
                raise ManifestConflict(
                    f"piece {piece_index}: sha256 {digest.hex()} differs from the stored "
                    f"{stored.hex()}"
                )
        for piece_index, digest in new:
            self._store(piece_index, digest)
        return len(new)

    def digest(self, piece_index: int) -> bytes | None:
        """The sha256 of one piece, or None while nobody has reported it."""
        if not 0 <= piece_index < self.num_pieces:
            raise IndexError(f"piece {piece_index} is out of range (0..{self.num_pieces - 1})")
        if not self._have[piece_index >> 3] & (0x80 >> (piece_index & 7)):
            return None
        offset = piece_index * DIGEST_BYTES
        return bytes(self._digests[offset : offset + DIGEST_BYTES])

    def to_json(self, task_id: bytes) -> bytes:
        """The ``GET /tasks/<id>`` document: every piece, ``null`` where the digest is unknown."""
        all_hex = self._digests.hex()
        have = self._have
        entries = [
            f'"{all_hex[i * _DIGEST_HEX : (i + 1) * _DIGEST_HEX]}"'
            if have[i >> 3] & (0x80 >> (i & 7))
            else "null"
            for i in range(self.num_pieces)
        ]
        return (
            f'{{"task_id":"{task_id.hex()}","url":{json.dumps(self.url)},'
            f'"total_length":{self.total_length},"piece_length":{self.piece_length},'
            f'"validator":{json.dumps(self.validator)},'
            f'"ranges":{"true" if self.ranges else "false"},'
            f'"piece_sha256":[{",".join(entries)}]}}'
        ).encode()

    def _store(self, piece_index: int, digest: bytes) -> None:
        offset = piece_index * DIGEST_BYTES
        self._digests[offset : offset + DIGEST_BYTES] = digest
        bit = 0x80 >> (piece_index & 7)
        if not self._have[piece_index >> 3] & bit:
            self._have[piece_index >> 3] |= bit
            self.known += 1

    def __repr__(self) -> str:
        return (
            f"TaskManifest(url={self.url!r}, total_length={self.total_length}, "
            f"piece_length={self.piece_length}, known={self.known}/{self.num_pieces})"
        )


def _check_digest_size(piece_index: int, digest: bytes) -> None:
    if len(digest) != DIGEST_BYTES:
        raise ManifestError(f"piece {piece_index}: a sha256 digest is {DIGEST_BYTES} bytes")
