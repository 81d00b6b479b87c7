"""The record of verified pieces kept beside a partial download, so that it can resume.

Format (append-only, crash-tolerant): a 40-byte header, ``DFPIECE1`` then the manifest's
``content_digest``, followed by 8-byte entries, ``>I`` piece index and the first 4 bytes of that
piece's sha256. A torn last entry (short, or zero-filled by a crash) fails its check and is
ignored; a header for another manifest means the record (and its partial file) are worthless.
Functions here raise plain ``OSError``; ``storage`` wraps them with the path and operation.
"""

from __future__ import annotations

import hashlib
import logging
import os
import struct
from collections.abc import Callable, Sequence
from pathlib import Path

from peerwire.bitfield import Bitfield
from peerwire.manifest import Manifest

log = logging.getLogger(__name__)

_RECORD_MAGIC = b"DFPIECE1"
_RECORD_HEADER_BYTES = len(_RECORD_MAGIC) + 32
_ENTRY = struct.Struct(">I4s")


def record_entry(index: int, digest: bytes) -> bytes:
    """The 8 bytes appended when piece ``index`` is verified (one atomic ``O_APPEND`` write)."""
    return _ENTRY.pack(index, digest[:4])


def read_record(path: Path, header: bytes, digests: Sequence[bytes | None]) -> set[int] | None:
    """Piece indices the record lists under ``header`` whose check matches a known digest;
    None when the record is absent or was written for other content (another header)."""
    limit = _RECORD_HEADER_BYTES + 2 * _ENTRY.size * len(digests) + _ENTRY.size
    try:
        with open(path, "rb") as stream:
            raw = stream.read(limit + 1)
    except FileNotFoundError:
        return None
    if len(raw) > limit or raw[:_RECORD_HEADER_BYTES] != header:
        log.info("discarding %s: written for other content", path)
        return None
    indices: set[int] = set()
    body = memoryview(raw)[_RECORD_HEADER_BYTES:]
    for start in range(0, body.nbytes - _ENTRY.size + 1, _ENTRY.size):
        index, check = _ENTRY.unpack_from(body, start)
        if index < len(digests):
            digest = digests[index]
            if digest is not None and digest[:4] == check:
                indices.add(index)
    return indices


def write_record(
    path: Path,
    header: bytes,
    digests: Sequence[bytes | None],
    have: Bitfield,
    open_file: Callable[[Path, int], int] | None = None,
) -> int:
    """Write a fresh record listing ``have`` (atomically, via rename); return an append fd.
    Every piece in ``have`` must have a known digest. ``open_file(path, flags)`` creates the
    scratch file (its mode and group), ``os.open`` with mode 0666 by default."""
    entries = []
    for index in have:
        digest = digests[index]
        if digest is None:
            raise ValueError(f"piece {index} is verified but its digest is unknown")
        entries.append(record_entry(index, digest))
    content = header + b"".join(entries)
    scratch = path.with_name(path.name + ".tmp")
    try:
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC
        fd = open_file(scratch, flags) if open_file else os.open(scratch, flags, 0o666)
        with os.fdopen(fd, "wb") as stream:
            stream.write(content)
        os.replace(scratch, path)
        return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
    except OSError:
        scratch.unlink(missing_ok=True)
        raise


def record_header(manifest: Manifest, *, open_digests: bool = False) -> bytes:
    """What ties a record to its content. A complete manifest: its ``content_digest``. An open
    one (digests learned during the download): the task id and geometry, which do not change
    as digests arrive; each entry's digest check still guards every recorded piece."""
    if not open_digests:
        return _RECORD_MAGIC + manifest.content_digest()
    identity = hashlib.sha256(b"peerwire-open-record-v1")
    identity.update(manifest.task_id.raw)
    identity.update(struct.pack(">QQ", manifest.total_length, manifest.piece_length))
    return _RECORD_MAGIC + identity.digest()
