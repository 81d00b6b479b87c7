"""The file work under piece storage: its errors, exact reads, sizing a sparse file after a
space check, re-verifying recorded pieces, durable renames."""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import threading
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import NamedTuple

from peerwire.bitfield import Bitfield
from peerwire.layout import MIB, PieceLayout

log = logging.getLogger(__name__)

_DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
#: Read size for the whole-file digest when it was not tracked as pieces arrived.
_HASH_READ_BYTES = 4 * MIB


class FilePolicy(NamedTuple):
    """How a download's files are created: their mode (the umask still applies) and group.
    The default is what any program's output gets; dfdaemon's cache makes them owner-only
    (0600), or group-readable (0640) for a group it was told."""

    mode: int = 0o666
    gid: int | None = None

    def open(self, path: Path, flags: int) -> int:
        """``os.open`` with ``O_CREAT``; a file this call creates gets the group."""
        created = not path.exists()
        fd = os.open(path, flags | os.O_CREAT | os.O_CLOEXEC, self.mode)
        if created and self.gid is not None:
            try:
                os.fchown(fd, -1, self.gid)
            except OSError:
                os.close(fd)
                raise
        return fd


class StorageError(OSError):
    """An I/O operation on a task's files failed; ``errno``, ``path`` and the operation are kept.

    A subclass of OSError so ``except OSError`` still catches it; ``is_disk_full`` tells the
    caller to report "disk full at <path>" rather than a generic failure.
    """

    def __init__(self, error_number: int, message: str, path: str | os.PathLike[str]) -> None:
        super().__init__(error_number, message, os.fspath(path))

    @property
    def path(self) -> Path:
        return Path(self.filename)

    @property
    def is_disk_full(self) -> bool:
        return self.errno in _DISK_FULL_ERRNOS


class PieceMissingError(LookupError):
    """A block of a piece that is not verified here was asked for (a bug: never serve those)."""


class IncompleteError(RuntimeError):
    """``finalize`` was called before every piece was verified."""


class StoreClosedError(ValueError):
    """The store was closed (after ``finalize``, its file is at the output path)."""


class DigestMismatchError(ValueError):
    """Data on disk does not hash to what was expected: the whole file, or one piece."""

    def __init__(
        self, path: Path, expected: bytes, actual: bytes, piece_index: int | None = None
    ) -> None:
        what = "file" if piece_index is None else f"piece {piece_index}"
        super().__init__(f"{path}: {what} sha256 is {actual.hex()}, expected {expected.hex()}")
        self.path = path
        self.expected = expected
        self.actual = actual
        self.piece_index = piece_index


def wrap(exc: OSError, operation: str, path: Path) -> StorageError:
    return StorageError(exc.errno or errno.EIO, f"{operation}: {exc.strerror or exc}", path)


def pread_exactly(fd: int, view: memoryview, offset: int) -> None:
    """Fill ``view`` from ``offset``; a file that ends early was truncated behind our back."""
    done = 0
    while done < view.nbytes:
        count = os.preadv(fd, [view[done:]], offset + done)
        if count == 0:
            raise OSError(errno.EIO, f"unexpected end of file at offset {offset + done}")
        done += count


def set_length(fd: int, length: int, path: Path, *, preallocate: bool) -> None:
    """Make the file exactly ``length`` bytes: reserved blocks, or sparse after a space check."""
    try:
        stat = os.fstat(fd)
        if stat.st_size > length:
            os.ftruncate(fd, length)
        if length > 0 and preallocate:
            try:
                os.posix_fallocate(fd, 0, length)
                return
            except OSError as exc:
                if exc.errno not in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                    raise
        if length > 0:
            check_free_space(fd, length - min(length, stat.st_blocks * 512), path)
            os.ftruncate(fd, length)
    except OSError as exc:
        if isinstance(exc, StorageError):
            raise
        raise wrap(exc, f"make the file {length} bytes", path) from exc


def check_free_space(fd: int, needed_bytes: int, path: Path) -> None:
    """Refuse up front when the file system cannot hold what the download still has to write."""
    fs = os.fstatvfs(fd)
    free_bytes = fs.f_bavail * fs.f_frsize
    if needed_bytes > free_bytes:
        raise StorageError(
            errno.ENOSPC,
            f"not enough space: {needed_bytes} bytes still to write, {free_bytes} free",
            path,
        )


def reverify(
    fd: int,
    path: Path,
    layout: PieceLayout,
    digests: Sequence[bytes | None],
    indices: Iterable[int],
    *,
    raise_on_bad: bool = False,
) -> Bitfield:
    """The subset of ``indices`` whose bytes on disk hash right (one reused piece buffer)."""
    have = Bitfield(layout.num_pieces)
    buffer = memoryview(bytearray(min(layout.piece_length, max(1, layout.total_length))))
    for index in sorted(indices):
        piece = buffer[: layout.piece_size(index)]
        try:
            pread_exactly(fd, piece, layout.piece_offset(index))
        except OSError as exc:
            if exc.errno != errno.EIO:
                raise wrap(exc, f"re-verify piece {index}", path) from exc
            actual = b""  # the file is shorter than the piece: not there
        else:
            actual = hashlib.sha256(piece).digest()
        expected = digests[index]
        if expected is not None and actual == expected:
            have.add(index)
        elif raise_on_bad:
            raise DigestMismatchError(path, expected or b"", actual, index)
        else:
            log.warning("%s: recorded piece %d fails verification; fetching it again", path, index)
    return have


def fsync_directory(path: Path) -> None:
    """Make a rename in ``path`` durable (POSIX: the directory entry lives in the directory)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def file_sha256(fd: int, length: int, path: Path) -> bytes:
    """The sha256 of the first ``length`` bytes of ``fd``, read in large chunks."""
    hasher = hashlib.sha256()
    view = memoryview(bytearray(min(_HASH_READ_BYTES, max(1, length))))
    offset = 0
    while offset < length:
        chunk = view[: min(view.nbytes, length - offset)]
        try:
            pread_exactly(fd, chunk, offset)
        except OSError as exc:
            raise wrap(exc, f"hash file at offset {offset}", path) from exc
        hasher.update(chunk)
        offset += chunk.nbytes
    return hasher.digest()


class InOrderDigest:
    """The sha256 of a whole file, advanced in piece order as pieces are verified: a piece that
    extends the verified prefix is hashed from the bytes being committed, pieces verified ahead
    of the prefix are read back when it reaches them. Thread-safe."""

    def __init__(self, layout: PieceLayout) -> None:
        self._layout = layout
        self._hasher = hashlib.sha256()
        self._hashed_pieces = 0
        self._lock = threading.Lock()

    def advance(
        self,
        index: int,
        data: bytes | bytearray | memoryview,
        has_piece: Callable[[int], bool],
        read_piece: Callable[[int, memoryview], None],
    ) -> None:
        """Piece ``index`` (``data``) was just verified: hash every verified piece that now
        extends the prefix."""
        layout = self._layout
        with self._lock:
            buffer: memoryview | None = None
            while self._hashed_pieces < layout.num_pieces:
                next_index = self._hashed_pieces
                if not has_piece(next_index):
                    return
                if next_index == index:
                    self._hasher.update(data)
                else:
                    if buffer is None:
                        buffer = memoryview(bytearray(layout.piece_length))
                    piece = buffer[: layout.piece_size(next_index)]
                    read_piece(next_index, piece)
                    self._hasher.update(piece)
                self._hashed_pieces += 1

    def digest(self) -> bytes | None:
        """The file's sha256 once every piece was hashed, else None."""
        with self._lock:
            if self._hashed_pieces < self._layout.num_pieces:
                return None
            return self._hasher.digest()
