"""Piece storage of one task: verified pieces written at their offsets, resumable, read for upload.

A download goes to ``<output>.dfpart`` (sparse, or preallocated on request) and a small record
``<output>.dfpart.pieces`` (``peerwire.piecerecord``) lists the pieces verified so far.
The output path only ever holds the complete, verified file; ``finalize``
checks the optional whole-file digest, fsyncs and renames the partial file into place. A failed
download never leaves data there. Pieces are not fsynced one by one, so a crash may keep a
record entry whose data never reached the disk: every recorded piece is therefore re-verified
when a download resumes. The store keeps no digest list of its own: each commit is handed the
piece's expected digest (``peerwire.digests`` holds the list).

Threads: ``verify`` and ``commit_piece`` may run in worker threads (``run_in_executor``) while the
event loop reads blocks for uploads. Hashing and ``pwrite`` release the GIL and run unlocked;
the verified-piece set and the record file are changed under one lock; the whole-file digest
(``track_file_digest``) advances under its own. ``close``, ``discard`` and ``finalize`` wait
for reads and writes in flight. Do not call them, or the constructors, concurrently with each
other. ``data_fd`` is only valid until ``close``.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import logging
import os
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from peerwire.bitfield import Bitfield
from peerwire.layout import MIB, Block
from peerwire.manifest import Manifest
from peerwire.piecerecord import read_record, record_entry, record_header, write_record
from peerwire.storagefile import (
    DigestMismatchError,
    FilePolicy,
    IncompleteError,
    InOrderDigest,
    PieceMissingError,
    StorageError,
    StoreClosedError,
    file_sha256,
    fsync_directory,
    pread_exactly,
    reverify,
    set_length,
    wrap,
)

log = logging.getLogger(__name__)

#: Files created as any program's output is: 0666 less the umask, the creator's group.
DEFAULT_FILES = FilePolicy()

__all__ = [
    "PARTIAL_SUFFIX",
    "RECORD_SUFFIX",
    "Buffer",
    "DigestMismatchError",
    "FilePolicy",
    "IncompleteError",
    "PieceMissingError",
    "PieceStore",
    "StorageError",
    "StoreClosedError",
]

PARTIAL_SUFFIX = ".dfpart"
RECORD_SUFFIX = ".dfpart.pieces"
#: Read size for the whole-file digest in ``finalize``.
_HASH_READ_BYTES = 4 * MIB

#: What piece data may arrive in; nothing is copied (``collections.abc.Buffer`` needs 3.12).
Buffer = bytes | bytearray | memoryview


class PieceStore:
    """The data file of one task plus the set of its verified pieces. Use the constructors."""

    def __init__(
        self,
        manifest: Manifest,
        data_path: Path,
        output_path: Path,
        data_fd: int,
        record_fd: int | None,
        have: Bitfield,
    ) -> None:
        self._manifest = manifest
        self._layout = manifest.layout
        self._data_path = data_path
        self._output_path = output_path
        self._fd = data_fd
        self._record_fd = record_fd  # None once the file is complete: read-only seeding
        self._have = have
        self._state = threading.Condition(threading.Lock())
        self._in_flight = 0
        self._closed = False
        # The whole file's sha256, advanced in order as pieces are verified (``track_file_digest``).
        self._file_digest: InOrderDigest | None = None

    # -- construction -------------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        output_path: str | os.PathLike[str],
        manifest: Manifest,
        *,
        resume: bool = True,
        preallocate: bool = False,
        open_digests: bool = False,
        digests: Sequence[bytes | None] | None = None,
        files: FilePolicy = DEFAULT_FILES,
    ) -> PieceStore:
        """Start (or, with ``resume``, continue) downloading ``manifest`` towards ``output_path``.

        ``files`` says how the partial file and its record are created (mode, group).
        The partial file is sparse by default, after a check that the file system has room for
        what is still missing (a full disk is refused up front, with the figures). With
        ``preallocate`` the blocks are reserved (``posix_fallocate``): no other writer can take
        the space meanwhile, but on tmpfs that zeroes every page before the first byte arrives
        (a quarter second per GiB here), which is why it is not the default.

        An existing partial file and record for the same manifest content are reopened and each
        recorded piece re-verified; anything else there is replaced. The partial file is locked
        (``flock``) so a second downloader of the same output fails fast with EWOULDBLOCK.

        ``open_digests``: the manifest's digests may be unknown (None) and are learned during the
        download (``peerwire.digests``; each commit is handed its piece's digest); the resume
        record is then tied to the task id and geometry, and a recorded piece whose digest is
        not in ``digests`` (default: the manifest's) on resume is fetched again. Without it the
        manifest must be complete.
        """
        if not open_digests and not manifest.is_complete:
            raise ValueError("manifest has unknown digests: use open_digests=True")
        output = Path(output_path)
        header = record_header(manifest, open_digests=open_digests)
        digests = list(manifest.piece_sha256 if digests is None else digests)
        if len(digests) != manifest.num_pieces:
            raise ValueError(f"{len(digests)} digests for {manifest.num_pieces} pieces")
        partial = output.with_name(output.name + PARTIAL_SUFFIX)
        record = output.with_name(output.name + RECORD_SUFFIX)
        try:
            fd = files.open(partial, os.O_RDWR)
        except OSError as exc:
            raise wrap(exc, "open partial file", partial) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            raise wrap(exc, "lock partial file (another download of it running?)", partial) from exc
        recorded: set[int] | None = None
        try:
            try:
                recorded = read_record(record, header, digests) if resume else None
            except OSError as exc:
                raise wrap(exc, "read piece record", record) from exc
            if recorded is None:
                have = Bitfield(manifest.num_pieces)
                set_length(fd, 0, partial, preallocate=False)
            else:
                have = reverify(fd, partial, manifest.layout, digests, recorded)
                log.info("resuming %s: %d of %d pieces verified", output, len(have), len(recorded))
            set_length(fd, manifest.total_length, partial, preallocate=preallocate)
            try:
                record_fd = write_record(record, header, digests, have, files.open)
            except OSError as exc:
                raise wrap(exc, "write piece record", record) from exc
        except BaseException:
            os.close(fd)
            if recorded is None:  # nothing worth keeping: leave no debris behind
                partial.unlink(missing_ok=True)
                record.unlink(missing_ok=True)
            raise
        return cls(manifest, partial, output, fd, record_fd, have)

    @classmethod
    def open_complete(
        cls, path: str | os.PathLike[str], manifest: Manifest, *, verify: bool = False
    ) -> PieceStore:
        """Open a finished file, read-only, to seed it: every piece counts as verified.

        The size is always checked. ``verify`` re-hashes every piece first (DigestMismatchError
        for the first bad one); it is off by default because the file was verified when it was
        finalized, and hashing gigabytes at ~1 GB/s would delay every seeder start.
        """
        data_path = Path(path)
        try:
            fd = os.open(data_path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise wrap(exc, "open complete file", data_path) from exc
        try:
            size = os.fstat(fd).st_size
            if size != manifest.total_length:
                raise ValueError(
                    f"{data_path}: {size} bytes, manifest says {manifest.total_length}"
                )
            if verify:
                reverify(
                    fd,
                    data_path,
                    manifest.layout,
                    list(manifest.piece_sha256),
                    range(manifest.num_pieces),
                    raise_on_bad=True,
                )
        except BaseException:
            os.close(fd)
            raise
        return cls(manifest, data_path, data_path, fd, None, Bitfield.full(manifest.num_pieces))

    # -- state --------------------------------------------------------------------------------

    @property
    def manifest(self) -> Manifest:
        return self._manifest

    @property
    def data_path(self) -> Path:
        """Where the data is now: the partial file, or the output once finalized."""
        return self._data_path

    @property
    def output_path(self) -> Path:
        return self._output_path

    @property
    def have(self) -> Bitfield:
        """A snapshot (a copy) of the verified pieces."""
        with self._state:
            return self._have.copy()

    def has_piece(self, index: int) -> bool:
        with self._state:
            return index in self._have

    # -- verification and writing -------------------------------------------------------------

    def verify(self, index: int, data: Buffer, expected: bytes) -> bool:
        """True when ``data`` is exactly piece ``index``: its size, and ``expected`` sha256.

        Thread-safe; hashes the caller's buffer once, in place (no copy). IndexError for an
        index outside the task; a buffer must be C-contiguous.
        """
        return (digest := self._hash(index, data)) is not None and digest == expected

    def _hash(self, index: int, data: Buffer) -> bytes | None:
        """sha256 of ``data`` when it has piece ``index``'s size, else None."""
        size = self._layout.piece_size(index)
        with memoryview(data) as view:
            if view.nbytes != size:
                return None
            return hashlib.sha256(view).digest()

    @property
    def is_finalized(self) -> bool:
        """The file is complete and at its output path (``finalize`` ran, or ``open_complete``)."""
        return self._record_fd is None

    def write_piece(self, index: int, data: Buffer) -> None:
        """Write the whole piece at its offset, unverified and unrecorded (``commit_piece`` does
        both). Refuses verified pieces, so an uploader never sees their bytes change."""
        self._check_writable()
        if self.has_piece(index):
            raise ValueError(f"piece {index} is verified; refusing to overwrite it")
        self._write(index, data)

    def commit_piece(self, index: int, data: Buffer, expected: bytes | None) -> bytes | None:
        """Verify, write, record; returns the piece's digest, or None when ``data`` is not
        piece ``index`` (nothing written).

        Thread-safe (meant for a worker thread). ``expected`` is the piece's known sha256; None
        means ``data`` comes from a source trusted as it is (this peer's own origin read): its
        digest is computed and returned, for the caller to learn. A piece already verified is
        not written again. StorageError when the write or the record append fails; the piece is
        then not verified.
        """
        digest = self._hash(index, data)
        if digest is None or (expected is not None and digest != expected):
            return None
        if self.has_piece(index):
            return digest
        self._check_writable()
        self._write(index, data)
        entry = record_entry(index, digest)
        with self._using_fd(), self._state:
            if index in self._have:
                return digest
            assert self._record_fd is not None
            try:
                os.write(self._record_fd, entry)  # O_APPEND, 8 bytes: one atomic append
            except OSError as exc:
                raise wrap(exc, f"record piece {index}", self._record_path) from exc
            self._have.add(index)
        self._advance_file_digest(index, data)
        return digest

    def _write(self, index: int, data: Buffer) -> None:
        offset = self._layout.piece_offset(index)
        with memoryview(data) as raw, raw.cast("B") as view, self._using_fd():
            if view.nbytes != self._layout.piece_size(index):
                raise ValueError(f"piece {index}: {view.nbytes} bytes, expected a whole piece")
            done = 0
            try:
                while done < view.nbytes:  # pwrite may write less (signals, RLIMIT_FSIZE)
                    done += os.pwrite(self._fd, view[done:], offset + done)
            except OSError as exc:
                message = f"write piece {index} at offset {offset + done}"
                raise wrap(exc, message, self._data_path) from exc

    # -- the whole file's digest --------------------------------------------------------------

    def track_file_digest(self) -> None:
        """Hash the whole file as it is verified, in order: each piece that extends the
        verified prefix is hashed from the bytes being committed (pieces verified ahead of the
        prefix are read back when it reaches them). ``finalize`` then checks an expected digest
        without reading the file again, and ``file_digest`` is known as soon as the last piece
        is committed. Call once, before the download (pieces already verified are hashed now).
        """
        if self._file_digest is None:
            self._file_digest = InOrderDigest(self._layout)
        self._advance_file_digest(-1, b"")

    def file_digest(self) -> bytes | None:
        """The sha256 of the whole file once every piece is verified and ``track_file_digest``
        hashed it; None before (or when not tracked)."""
        return None if self._file_digest is None else self._file_digest.digest()

    def _advance_file_digest(self, index: int, data: Buffer) -> None:
        if self._file_digest is not None:
            self._file_digest.advance(index, data, self.has_piece, self._read_piece)

    def _read_piece(self, index: int, into: memoryview) -> None:
        with self._using_fd():
            try:
                pread_exactly(self._fd, into, self._layout.piece_offset(index))
            except OSError as exc:
                raise wrap(exc, f"hash piece {index}", self._data_path) from exc

    # -- reading for uploads ------------------------------------------------------------------

    def block_offset(self, index: int, begin: int, length: int | None = None) -> int:
        """File offset of a block of a verified piece, for ``os.sendfile(sock, data_fd, ...)``.

        ValueError when the block (``length`` bytes, or just ``begin`` when omitted) is not inside
        the piece; PieceMissingError when the piece is not verified.
        """
        block = Block(index, begin, 1 if length is None else length)
        if not self._layout.contains(block):
            raise ValueError(f"block {block} lies outside the task's pieces")
        if not self.has_piece(index):
            raise PieceMissingError(f"piece {index} is not verified in {self._data_path}")
        return self._layout.piece_offset(index) + begin

    @property
    def data_fd(self) -> int:
        """The data file descriptor (for ``os.sendfile``); valid until ``close``."""
        if self._closed:
            raise StoreClosedError(f"the store of {self._data_path} is closed")
        return self._fd

    def read_block(self, index: int, begin: int, length: int) -> bytes:
        """``length`` bytes of verified piece ``index`` from ``begin``: one pread, one buffer."""
        offset = self.block_offset(index, begin, length)
        with self._using_fd():
            try:
                data = os.pread(self._fd, length, offset)
            except OSError as exc:
                raise wrap(exc, f"read piece {index} at offset {offset}", self._data_path) from exc
        if len(data) != length:  # a regular file reads short only at its end: truncated under us
            raise StorageError(errno.EIO, f"file ends inside piece {index}", self._data_path)
        return data

    def read_span(self, offset: int, length: int) -> bytes:
        """``length`` bytes of the file from ``offset``, every piece they touch verified: one
        pread however many pieces (a reader streaming the file in order)."""
        with self.open_span(offset, length) as fd:
            try:
                data = os.pread(fd, length, offset)
            except OSError as exc:
                raise wrap(exc, f"read {length} bytes at offset {offset}", self._data_path) from exc
        if len(data) != length:
            raise StorageError(
                errno.EIO, f"file ends inside span {offset}+{length}", self._data_path
            )
        return data

    @contextmanager
    def open_span(self, offset: int, length: int) -> Iterator[int]:
        """The data descriptor, kept open while the caller reads ``length`` bytes from
        ``offset`` itself (``os.sendfile``); every piece they touch is verified. ValueError
        outside the task, PieceMissingError, StoreClosedError."""
        if offset < 0 or length < 1 or offset + length > self._layout.total_length:
            raise ValueError(f"span {offset}+{length} lies outside the task's bytes")
        first = offset // self._layout.piece_length
        last = (offset + length - 1) // self._layout.piece_length
        missing = [i for i in range(first, last + 1) if not self.has_piece(i)]
        if missing:
            raise PieceMissingError(f"pieces {missing} are not verified in {self._data_path}")
        with self._using_fd():
            yield self._fd

    def read_block_into(self, index: int, begin: int, buffer: Buffer) -> int:
        """Fill the caller's writable buffer from verified piece ``index`` at ``begin``."""
        with memoryview(buffer) as raw, raw.cast("B") as view:
            offset = self.block_offset(index, begin, view.nbytes)
            with self._using_fd():
                try:
                    pread_exactly(self._fd, view, offset)
                except OSError as exc:
                    message = f"read piece {index} at offset {offset}"
                    raise wrap(exc, message, self._data_path) from exc
            return view.nbytes

    # -- the end of a download ----------------------------------------------------------------

    def finalize(self, expected_sha256: bytes | None = None) -> Path:
        """Move the verified file to the output path; the store then serves from there.

        IncompleteError unless every piece is verified. With ``expected_sha256``, the whole
        file's digest is checked first (the one ``track_file_digest`` computed, else the file is
        hashed now): DigestMismatchError on a mismatch, leaving the partial file and record
        in place for inspection and nothing at the output path. Then fsync, an atomic rename
        (replacing any old file there), fsync of the directory, and the record is removed.
        """
        self._check_writable()
        if expected_sha256 is not None and len(expected_sha256) != hashlib.sha256().digest_size:
            raise ValueError(f"expected_sha256 must be 32 bytes, got {len(expected_sha256)}")
        with self._state:
            missing = self._have.num_pieces - len(self._have)
        if missing:
            raise IncompleteError(f"{self._data_path}: {missing} pieces not verified yet")
        with self._using_fd():
            if expected_sha256 is not None:
                actual = self.file_digest() or file_sha256(
                    self._fd, self._manifest.total_length, self._data_path
                )
                if actual != expected_sha256:
                    raise DigestMismatchError(self._data_path, expected_sha256, actual)
            try:
                os.fsync(self._fd)
                os.replace(self._data_path, self._output_path)
                fsync_directory(self._output_path.parent)
            except OSError as exc:
                raise wrap(exc, "finalize", self._data_path) from exc
        with self._state:
            record_fd, self._record_fd = self._record_fd, None
            self._data_path = self._output_path
        if record_fd is not None:
            os.close(record_fd)
        self._record_path.unlink(missing_ok=True)
        log.info("finalized %s (%d bytes)", self._output_path, self._manifest.total_length)
        return self._output_path

    def discard(self) -> None:
        """Close and delete the partial file and record. A complete file is only closed."""
        partial = self._record_fd is not None
        self.close()
        if partial:
            self._data_path.unlink(missing_ok=True)
            self._record_path.unlink(missing_ok=True)

    def close(self) -> None:
        """Wait for reads and writes in flight, then close the files (left on disk; resumable).
        Idempotent."""
        with self._state:
            if self._closed:
                return
            self._closed = True
            while self._in_flight:
                self._state.wait()
            fds = [self._fd] if self._record_fd is None else [self._fd, self._record_fd]
        for fd in fds:
            os.close(fd)

    def __enter__(self) -> PieceStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"PieceStore({str(self._data_path)!r}, {len(self._have)}/{self._have.num_pieces})"

    # -- helpers ------------------------------------------------------------------------------

    @property
    def _record_path(self) -> Path:
        return self._output_path.with_name(self._output_path.name + RECORD_SUFFIX)

    def _check_writable(self) -> None:
        if self._record_fd is None:
            raise ValueError(f"{self._data_path} is complete and read-only")

    @contextmanager
    def _using_fd(self) -> Iterator[None]:
        """Keep the descriptors open while an operation uses them (``close`` waits)."""
        with self._state:
            if self._closed:
                raise StoreClosedError(f"the store of {self._data_path} is closed")
            self._in_flight += 1
        try:
            yield
        finally:
            with self._state:
                self._in_flight -= 1
                if not self._in_flight:
                    self._state.notify_all()
