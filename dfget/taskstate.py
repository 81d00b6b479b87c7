"""A running task read from outside: progress snapshots for displays, why its missing pieces
are missing (a stall's message), and the digests it believes saved beside its partial file."""

from __future__ import annotations

import asyncio
import time
from typing import Final

from dfget.options import DownloadOptions, ProgressReport
from dfget.taskmanifest import public_url, save_digests
from peerwire.ids import TaskId
from peerwire.shell import TaskShell


class ProgressMeter:
    """Progress snapshots of one download, with its rate over about the last second."""

    def __init__(self) -> None:
        self._window = (time.monotonic(), 0)
        self._rate_bps = 0.0

    def report(self, shell: TaskShell | None, phase: str) -> ProgressReport:
        if shell is None:
            return ProgressReport(None, 0, 0, 0, 0, 0, 0.0, phase)
        core = shell.core
        now, done = time.monotonic(), done_bytes(shell)
        since, done_then = self._window
        if now - since >= 1.0:
            self._rate_bps = (done - done_then) / (now - since)
            self._window = (now, done)
        return ProgressReport(
            total_bytes=core.layout.total_length,
            done_bytes=done,
            from_peers_bytes=core.stats.downloaded_bytes,
            from_origin_bytes=core.stats.origin_bytes,
            uploaded_bytes=core.stats.uploaded_bytes,
            peers=core.peer_count,
            rate_bps=self._rate_bps,
            phase=phase,
        )


def done_bytes(shell: TaskShell) -> int:
    core = shell.core
    layout, have = core.layout, core.have
    done = len(have) * layout.piece_length
    last = layout.num_pieces - 1
    if last >= 0 and last in have:
        done -= layout.piece_length - layout.piece_size(last)
    return done


def missing_summary(shell: TaskShell) -> str:
    """Why the missing pieces are missing, for a stall message."""
    core = shell.core
    missing = list(core.have.missing())
    no_digest = len(core.digests.unknown(missing))
    nobody = sum(core.scheduler.availability(i) == 0 for i in missing)
    return (
        f"{len(missing)} pieces missing: {no_digest} without a known digest, "
        f"{nobody} that no connected peer has, {len(core.origin_claimed)} claimed for the "
        f"origin; {core.peer_count} peers connected"
    )


#: How often learned digests are saved beside the partial file.
SAVE_DIGESTS_S: Final = 2.0


class DigestSaver:
    """Saves the digests a download believes beside its partial file, every ``SAVE_DIGESTS_S``
    when they changed: an interrupted download resumes its recorded pieces even without a
    tracker."""

    def __init__(self, options: DownloadOptions, task_id: TaskId) -> None:
        self._options, self._task_id = options, task_id
        self.saved_known = 0

    async def loop(self, shell: TaskShell) -> None:
        while True:
            await asyncio.sleep(SAVE_DIGESTS_S)
            self.save(shell)

    def save(self, shell: TaskShell) -> None:
        core = shell.core
        if shell.store.is_finalized or core.digests.known == self.saved_known:
            return
        options = self._options
        save_digests(
            options.output,
            self._task_id,
            core.layout,
            core.digests,
            public_url(options),
            options.files,
        )
        self.saved_known = core.digests.known
