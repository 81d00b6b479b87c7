"""The download's client of its coordinator: every call to the tracker interface, in one place.

The task core decides when to announce and what an answer means (``peerwire.swarmlink``);
``SwarmClient`` makes the calls its commands ask for - announce, fetch or supply the manifest,
report origin digests (batched: one request per ``REPORT_EVERY_S`` for every piece stored
meanwhile), report a bad peer - and hands each outcome back to the core. It also says
``completed`` and ``stopped`` when the engine asks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine
from typing import Any, Final

from peerwire import commands as cmd
from peerwire.coordination import (
    Coordinator,
    PeerAddress,
    TaskManifestDoc,
    TrackerError,
    TrackerRefused,
)
from peerwire.manifest import ManifestConflict
from peerwire.shell import TaskShell

log = logging.getLogger(__name__)

#: Origin pieces' digests are reported in batches, at most this often.
REPORT_EVERY_S: Final = 0.1
#: Retry delay of a report the coordinator could not take.
RETRY_S: Final = 2.0
#: ``stopped`` must not hold up an exit for long.
STOPPED_TIMEOUT_S: Final = 3.0


class SwarmClient:
    """Carries out one task's coordinator commands."""

    def __init__(
        self,
        shell: TaskShell,
        coordinator: Coordinator,
        *,
        manifest_doc: Callable[[], TaskManifestDoc],
        on_refused: Callable[[str], None],
        on_conflict: Callable[[Exception], None],
    ) -> None:
        self._shell = shell
        self._core = shell.core
        self.coordinator = coordinator
        self._task_id = shell.task_id
        #: The task's manifest as this peer knows it, to give a coordinator that lost it.
        self._manifest_doc = manifest_doc
        self._on_refused = on_refused
        self._on_conflict = on_conflict
        self._unreported: dict[int, bytes] = {}
        self._reporter: asyncio.Task[None] | None = None
        self._calls: set[asyncio.Task[None]] = set()

    def start(self) -> None:
        """Join the swarm: the first announce goes at once."""
        self._core.swarm.start()
        self._shell.pump()

    def handle(self, command: cmd.Command[Any]) -> bool:
        """Carry out ``command`` if it is a coordinator's; False when it is not."""
        kind = type(command)
        if kind is cmd.Announce:
            assert isinstance(command, cmd.Announce)
            self._call(self._announce(command.event))
        elif kind is cmd.FetchManifest:
            self._call(self._learn_manifest())
        elif kind is cmd.SupplyManifest:
            self._call(self._supply_manifest())
        elif kind is cmd.ReportDigests:
            assert isinstance(command, cmd.ReportDigests)
            self._unreported.update(command.digests)
            if self._reporter is None or self._reporter.done():
                self._reporter = asyncio.create_task(self._report_soon())
        elif kind is cmd.ReportPeer:
            assert isinstance(command, cmd.ReportPeer)
            self._call(self._report_peer(command))
        elif kind is cmd.SwarmRefused:
            assert isinstance(command, cmd.SwarmRefused)
            self._on_refused(command.reason)
        else:
            return False
        return True

    def _call(self, coroutine: Coroutine[object, object, None]) -> None:
        task = asyncio.create_task(coroutine)
        self._calls.add(task)
        task.add_done_callback(self._calls.discard)

    async def _announce(self, event: str) -> None:
        swarm = self._core.swarm
        try:
            answer = await self.coordinator.announce(self._task_id, swarm.progress(), event)
        except TrackerRefused as exc:
            swarm.announce_refused(str(exc))
        except TrackerError as exc:
            swarm.announce_failed(str(exc))
        else:
            swarm.announced(answer)
        self._shell.pump()

    async def _learn_manifest(self) -> None:
        try:
            doc = await self.coordinator.get_manifest(self._task_id)
        except TrackerError as exc:
            log.warning("cannot fetch the manifest: %s", exc)
            return
        learned = self._core.swarm.manifest_received(doc)
        self._shell.pump()
        if learned:
            log.debug("learned %d digests from the coordinator", learned)

    async def _supply_manifest(self) -> None:
        try:
            await self.coordinator.put_manifest(self._task_id, self._manifest_doc())
            log.info("supplied the task manifest to the coordinator (it had none)")
        except (TrackerError, ManifestConflict) as exc:
            log.warning("cannot supply the manifest to the coordinator: %s", exc)

    async def _report_peer(self, command: cmd.ReportPeer) -> None:
        host, _, port = command.address.rpartition(":")
        subject = PeerAddress(host or "?", int(port) if port.isdigit() else 0, command.peer_id.raw)
        try:
            await self.coordinator.report_error(
                self._task_id, self._core.peer_id, subject, "bad_piece"
            )
            log.info("reported peer %s to the coordinator: %s", subject.host, command.reason)
        except TrackerError as exc:
            log.warning("cannot report a bad peer: %s", exc)

    def report_manifest(self, reason: str) -> None:
        """Tell the coordinator its manifest for the task is false (this peer's origin reads
        contradict it)."""
        self._call(self._report_manifest(reason))

    async def _report_manifest(self, reason: str) -> None:
        try:
            await self.coordinator.report_error(
                self._task_id, self._core.peer_id, PeerAddress("", 0), f"manifest_refuted: {reason}"
            )
        except TrackerError as exc:
            log.warning("cannot report the refuted manifest: %s", exc)

    async def _report_soon(self) -> None:
        # Pieces stored while a report is on its way go in the next one: loop until none are
        # left (no other reporter starts while this one runs).
        delay_s = REPORT_EVERY_S
        while self._unreported:
            await asyncio.sleep(delay_s)
            delay_s = REPORT_EVERY_S if await self.flush_reports() else RETRY_S

    async def flush_reports(self) -> bool:
        """Send the digests of origin pieces not reported yet (one request). False when the
        coordinator could not be reached: the batch is kept for the next attempt."""
        if not self._unreported:
            return True
        batch, self._unreported = self._unreported, {}
        try:
            await self.coordinator.report_pieces(self._task_id, batch)
        except ManifestConflict as exc:
            self._on_conflict(exc)
        except TrackerError as exc:
            log.warning("cannot report %d pieces (will retry): %s", len(batch), exc)
            self._unreported = batch | self._unreported
            return False
        return True

    async def completed(self) -> None:
        """The file is complete and in place: say so (a failure to is only logged)."""
        await self.flush_reports()
        with contextlib.suppress(TrackerError):
            await self.coordinator.announce(self._task_id, self._core.swarm.progress(), "completed")

    async def close(self) -> None:
        """Stop calling; flush the reports and announce ``stopped`` (each briefly)."""
        self._core.swarm.stop()
        calls = list(self._calls)
        if self._reporter is not None:
            calls.append(self._reporter)
        for call in calls:
            call.cancel()
        await asyncio.gather(*calls, return_exceptions=True)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.flush_reports(), STOPPED_TIMEOUT_S)
        if self._core.swarm.membership.registered:
            with contextlib.suppress(TrackerError, TimeoutError):
                await asyncio.wait_for(
                    self.coordinator.service_down(self._task_id, self._core.swarm.progress()),
                    STOPPED_TIMEOUT_S,
                )
