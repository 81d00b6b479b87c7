"""The record of verified pieces kept beside a partial download, so that it can resume.

Format (append-only, crash-tolerant): a 40-byte header, ``DFPIECE1`` then the manifest's
``content_digest``, followed by 8-byte entries, ``>I`` piece index and the first 4 bytes of that
piece's sha256. A torn last entry (short, or zero-filled by a crash) fails its check and is
ignored; a header for another manifest means the record (and its partial file) are worthless.
Functions here raise plain ``OSError``; ``storage`` wraps them with the path and operation.
"""

from __future__ import annotations

import logging
import os
import struct
from pathlib import Path

from peerwire.bitfield import Bitfield
from peerwire.manifest import Manifest

log = logging.getLogger(__name__)

_RECORD_MAGIC = b"DFPIECE1"
_RECORD_HEADER_BYTES = len(_RECORD_MAGIC) + 32
_ENTRY = struct.Struct(">I4s")


def record_entry(manifest: Manifest, index: int) -> bytes:
    """The 8 bytes appended when piece ``index`` is verified (one atomic ``O_APPEND`` write)."""
    return _ENTRY.pack(index, manifest.piece_sha256[index][:4])


def read_record(path: Path, manifest: Manifest) -> set[int] | None:
    """Piece indices the record lists for ``manifest``; None when absent or for other content."""
    limit = _RECORD_HEADER_BYTES + 2 * _ENTRY.size * manifest.num_pieces + _ENTRY.size
    try:
        with open(path, "rb") as stream:
            raw = stream.read(limit + 1)
    except FileNotFoundError:
        return None
    if len(raw) > limit or raw[:_RECORD_HEADER_BYTES] != _record_header(manifest):
        log.info("discarding %s: written for other content", path)
        return None
    indices: set[int] = set()
    body = memoryview(raw)[_RECORD_HEADER_BYTES:]
    for start in range(0, body.nbytes - _ENTRY.size + 1, _ENTRY.size):
        index, check = _ENTRY.unpack_from(body, start)
        if index < manifest.num_pieces and manifest.piece_sha256[index][:4] == check:
            indices.add(index)
    return indices


def write_record(path: Path, manifest: Manifest, have: Bitfield) -> int:
    """Write a fresh record listing ``have`` (atomically, via rename); return an append fd."""
    content = _record_header(manifest) + b"".join(record_entry(manifest, i) for i in have)
    scratch = path.with_name(path.name + ".tmp")
    try:
        with open(scratch, "wb") as stream:
            stream.write(content)
        os.replace(scratch, path)
        return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
    except OSError:
        scratch.unlink(missing_ok=True)
        raise


def _record_header(manifest: Manifest) -> bytes:
    return _RECORD_MAGIC + manifest.content_digest()
