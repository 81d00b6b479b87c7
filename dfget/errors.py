"""What can go wrong in a download, and the exit code each failure has on the command line.

Every failure of ``download()`` is one of these (or an ``OSError`` of the local disk), so a
caller - the CLI, the daemon, a library user - can tell them apart without parsing messages.
"""

from __future__ import annotations

from typing import Final

EXIT_OK: Final = 0
#: Anything not listed below: local disk errors, internal errors.
EXIT_ERROR: Final = 1
#: Bad arguments or configuration (argparse uses 2 as well).
EXIT_USAGE: Final = 2
EXIT_DIGEST_MISMATCH: Final = 3
EXIT_ORIGIN: Final = 4
EXIT_TIMEOUT: Final = 5
EXIT_NO_PEERS: Final = 6
#: Interrupted (SIGINT / SIGTERM): verified pieces are kept aside, the same command resumes.
EXIT_INTERRUPTED: Final = 130


class DownloadError(Exception):
    """Base class; ``exit_code`` is what ``dfget`` exits with."""

    exit_code: int = EXIT_ERROR


class DigestMismatch(DownloadError):
    """The whole file's sha256 is not the ``--digest`` asked for; nothing was written at PATH."""

    exit_code = EXIT_DIGEST_MISMATCH


class OriginError(DownloadError):
    """The origin refused or failed; ``status`` is its HTTP status when it answered one."""

    exit_code = EXIT_ORIGIN

    def __init__(self, message: str, status: int | None = None, *, retryable: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.retryable = retryable


class OriginChanged(OriginError):
    """The origin's content changed under the task (length or validator differs)."""


class DownloadTimeout(DownloadError):
    """``--timeout`` passed before the file was complete."""

    exit_code = EXIT_TIMEOUT


class NoPeers(DownloadError):
    """The swarm cannot deliver and back-to-source is disabled (``--no-back-to-source``)."""

    exit_code = EXIT_NO_PEERS


class ManifestRefuted(DownloadError):
    """The coordinator's manifest proved false after pieces had been taken on its word (the
    engine then starts over from the origin alone; a caller streaming the file sees this)."""
