"""``SerfCoordinator``: the tracker interface (``peerwire.coordination``) answered from gossip.

The download engine and the task core are the same as with a tracker; only the answers come
from elsewhere. ``announce`` is answered by this node's own ``ClusterView`` (peers, the
rendezvous assignment, how many digests can be had) and publishes what this node holds;
``get_manifest`` serves the geometry and digests the node learned, asking holders by Serf query
for the digests it lacks; ``put_manifest`` and ``report_pieces`` record this node's own
description and origin reads and publish the geometry (``df-length``); ``service_down``
publishes ``df-removed``.

Trust: without the cluster secret, whatever came from gossip is a claim (``vouched`` False: the
task core checks it against the origin, ``peerwire.believing``). With the secret, every event
and answer carries the secret's tag, checked on arrival, and the gossip itself is encrypted
with a key derived from the secret: ``vouched`` is True.

Several downloads of one process (dfdaemon) share one ``SerfNode``: each gets its own
``SerfCoordinator``, whose ``close`` leaves the node running unless it owns it (a plain dfget).
"""

from __future__ import annotations

import asyncio
import logging
import time

from dfget.coordinators import serfwire as wire
from dfget.coordinators.serfnode import SerfNode, SerfNodeError
from dfget.coordinators.serfrpc import SerfRpcError
from peerwire.coordination import (
    AnnounceAnswer,
    PeerAddress,
    Progress,
    TaskManifestDoc,
    TrackerUnavailable,
)
from peerwire.ids import PeerId, TaskId
from peerwire.manifest import ManifestConflict

log = logging.getLogger(__name__)

#: Digest queries under way at once for one manifest.
PARALLEL_QUERIES = 4


class SerfCoordinator:
    """``Coordinator`` for one download, on a (shared) ``SerfNode``."""

    def __init__(self, node: SerfNode, *, owns_node: bool = False) -> None:
        self.node = node
        self.vouched = node.vouched
        self._owns = owns_node
        self._manifest_locks: dict[bytes, asyncio.Lock] = {}

    async def _ready(self) -> SerfNode:
        node = self.node
        try:
            await node.start()
        except SerfNodeError as exc:
            raise TrackerUnavailable(f"serf: {exc}") from None
        return node

    # -- announces ----------------------------------------------------------------------------

    async def announce(self, task: TaskId, progress: Progress, event: str = "") -> AnnounceAnswer:
        node = await self._ready()
        key = task.raw
        try:
            if node.set_port(progress.port, progress.load):
                await node.push_tags()  # others must know where to dial before they hear of us
            local = node.local.get(key)
            if local is None:
                from dfget.coordinators.serfnode import LocalTask

                local = node.local[key] = LocalTask()
            local.flags = (wire.FLAG_SOURCE if progress.can_source else 0) | (
                wire.FLAG_COMPLETE if progress.left_bytes == 0 else 0
            )
            joined_ms = local.counters[3] or int(time.time() * 1000)
            local.counters = (
                progress.downloaded_bytes,
                progress.uploaded_bytes,
                progress.origin_bytes,
                joined_ms,
            )
            if not local.start_sent:
                await node.publish(wire.EVENT_START, [key, local.flags, joined_ms])
                local.start_sent = True
                node.ask_holders_soon(key)  # the next announces list who holds what
            answer = node.view.announce(key, progress, event, joined_ms)
            if event == "completed":
                await node.publish_have(key, local)
        except SerfRpcError as exc:
            raise TrackerUnavailable(f"serf: {exc}") from None
        return answer

    async def service_down(self, task: TaskId, progress: Progress) -> None:
        node = self.node
        local = node.local.pop(task.raw, None)
        node.view.leave(task.raw)
        if local is not None and local.start_sent:
            try:
                await node.publish(wire.EVENT_REMOVED, [task.raw])
            except SerfRpcError as exc:
                raise TrackerUnavailable(f"serf: {exc}") from None

    # -- manifests ----------------------------------------------------------------------------

    async def get_manifest(self, task: TaskId) -> TaskManifestDoc | None:
        node = await self._ready()
        lock = self._manifest_locks.setdefault(task.raw, asyncio.Lock())
        async with lock:
            try:
                state = node.view.tasks.get(task.raw)
                if state is None or state.geometry is None:
                    await self._ask_geometry(task.raw)
                await self._fill_digests(task.raw)
            except SerfRpcError as exc:
                raise TrackerUnavailable(f"serf: {exc}") from None
        return self._doc(task.raw)

    def _doc(self, key: bytes) -> TaskManifestDoc | None:
        state = self.node.view.tasks.get(key)
        if state is None or state.geometry is None:
            return None
        geometry = state.geometry
        return TaskManifestDoc(
            url=geometry.url,
            total_length=geometry.total_length,
            piece_length=geometry.piece_length,
            piece_sha256=tuple(state.digests.get(i) for i in range(geometry.num_pieces)),
            validator=geometry.validator,
            ranges=geometry.ranges,
        )

    async def _ask_geometry(self, key: bytes) -> None:
        """Ask the task's members for its geometry (none known: nobody is asked, and this
        node describes the task from its own probe of the origin, as the first peer does with
        a tracker)."""
        node = self.node
        state = node.view.tasks.get(key)
        members = [n for n in (state.holders if state else {}) if n != node.me][:3]
        if not members:
            return  # nobody said it takes part: this node describes the task itself
        for envelope in await node.ask(wire.QUERY_MANIFEST, [key], members, 1):
            try:
                geometry = wire.parse_geometry(envelope.body)
            except wire.Rejected as exc:
                node.counters.rejected[exc.reason] += 1
                continue
            if geometry.task == key:
                node.view.learn_geometry(geometry, believed=self.vouched)

    async def _fill_digests(self, key: bytes) -> None:
        """Ask holders for the digests this node lacks (a few queries at once)."""
        node = self.node
        wanted = node.view.wanted_digests(key)
        if wanted:
            log.debug("serf: asking for digests %s", wanted)
        limit = asyncio.Semaphore(PARALLEL_QUERIES)

        async def one(first: int, count: int, holder: str) -> None:
            async with limit:
                for envelope in await node.ask(
                    wire.QUERY_DIGESTS, [key, first, count], [holder], 1
                ):
                    try:
                        found = wire.parse_digests_answer(envelope.body, key, first)
                    except wire.Rejected as exc:
                        node.counters.rejected[exc.reason] += 1
                        continue
                    node.view.learn_digests(key, found)
                    log.debug("serf: %s answered %d digests from %d", holder, len(found), first)

        await asyncio.gather(*(one(*w) for w in wanted))

    async def put_manifest(self, task: TaskId, manifest: TaskManifestDoc) -> TaskManifestDoc:
        """This node's description of the task (its own probe of the origin): it replaces a
        claim; one of another geometry than a vouched one is a ``ManifestConflict``."""
        node = await self._ready()
        key = task.raw
        geometry = wire.Geometry(
            key,
            manifest.total_length,
            manifest.piece_length,
            manifest.validator,
            manifest.ranges,
            manifest.url,
        )
        state = node.view.task(key)
        known = state.geometry
        if (
            known is not None
            and state.geometry_believed
            and (known.total_length, known.piece_length, known.validator)
            != (geometry.total_length, geometry.piece_length, geometry.validator)
        ):
            raise ManifestConflict(
                f"the cluster's manifest of {task.hex()} has length {known.total_length} and "
                f"validator {known.validator!r}"
            )
        node.view.learn_geometry(geometry, believed=True)
        for index, digest in enumerate(manifest.piece_sha256):
            if digest is not None:
                state.digests[index] = digest
                state.believed.add(index)
        try:
            await node.publish(wire.EVENT_LENGTH, wire.length_body(geometry, 400))
        except SerfRpcError as exc:
            raise TrackerUnavailable(f"serf: {exc}") from None
        doc = self._doc(key)
        assert doc is not None
        return doc

    async def report_piece(self, task: TaskId, piece_index: int, sha256: bytes) -> None:
        await self.report_pieces(task, {piece_index: sha256})

    async def report_pieces(self, task: TaskId, digests: dict[int, bytes]) -> None:
        """Digests of pieces this node read from the origin: they stand; one that contradicts
        a digest learned from the cluster is a ``ManifestConflict`` (as a tracker's 409)."""
        state = self.node.view.task(task.raw)
        conflicts = [
            index
            for index, digest in digests.items()
            if state.digests.get(index) not in (None, digest)
        ]
        for index, digest in digests.items():
            state.digests[index] = digest
            state.believed.add(index)
        local = self.node.local.get(task.raw)
        if local is not None:
            local.unsent_digests.update(digests)
        if conflicts:
            raise ManifestConflict(
                f"pieces {conflicts[:5]} of {task.hex()}: the cluster said other digests"
            )

    async def report_error(
        self, task: TaskId, reporter: PeerId, peer: PeerAddress, reason: str
    ) -> None:
        """Counted; a refuted manifest drops what this node learned of the task from others."""
        kind = reason.split(":", 1)[0][:32]
        self.node.counters.reports[kind] += 1
        if kind == "manifest_refuted":
            state = self.node.view.tasks.get(task.raw)
            if state is not None:
                state.digests = {i: d for i, d in state.digests.items() if i in state.believed}
                if not state.geometry_believed:
                    state.geometry = None

    async def close(self) -> None:
        if self._owns:
            await self.node.close()
