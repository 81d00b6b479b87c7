"""The queries of a ``SerfNode``: answering other nodes' (``df-q-*``), asking its own.

A mixin of ``dfget.coordinators.serfnode.SerfNode`` (the attributes it uses are the node's,
declared below). Every query and answer is sealed and opened by the node's ``Codec``: with the
cluster secret an answer's tag covers the query it answers, and an answer whose sender is not
the node Serf says it came from is dropped (``impersonated``). A node answers only with what
it believes: digests of pieces it read or verified, a geometry it described or was vouched for.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any, Final

from dfget.coordinators import serfwire as wire
from dfget.coordinators.serfrpc import SerfRpc, SerfRpcError
from dfget.coordinators.serfview import ClusterView, bit_count

if TYPE_CHECKING:
    from dfget.coordinators.serfnode import LocalTask, SerfCounters

log = logging.getLogger(__name__)

#: A query waits this long for its answers at most.
QUERY_TIMEOUT_S: Final = 1.5


class Queries:
    view: ClusterView
    codec: wire.Codec
    counters: SerfCounters
    local: dict[bytes, LocalTask]

    # Provided by the node.
    def rpc_or_fail(self) -> SerfRpc:
        raise NotImplementedError

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None: ...

    def _ask_have_later(self, sender: str, task: bytes) -> None: ...

    # -- answering -----------------------------------------------------------------------------

    async def _answer(self, name: str, query_id: int, payload: bytes) -> None:
        try:
            envelope = self.codec.open(name, payload)
            body = (
                None if envelope.sender == self.view.me else self._answer_body(name, envelope.body)
            )
        except wire.Rejected as exc:
            self.counters.rejected[exc.reason] += 1
            return
        if body is None:
            return
        answer = self.codec.seal_answer(name, payload, body)
        with contextlib.suppress(SerfRpcError):
            await self.rpc_or_fail().respond(query_id, answer)
            self.counters.queries_answered[name] += 1

    def _answer_body(self, name: str, body: list[Any]) -> list[Any] | None:
        task = wire.task_of(body)
        state = self.view.tasks.get(task)
        if state is None or state.geometry is None:
            return None
        num_pieces = state.geometry.num_pieces
        if name == wire.QUERY_MANIFEST:
            if not state.geometry_believed:
                return None  # only what this node read itself, or was vouched for
            return wire.length_body(state.geometry, wire.ANSWER_LIMIT - 100)
        mine = state.holders.get(self.view.me)
        if name == wire.QUERY_HOLDERS:
            local = self.local.get(task)
            if mine is None or local is None:
                return None
            full: bytes | None = mine.mask.to_bytes(bit_count(num_pieces) // 8, "big")
            if full is not None and len(full) > wire.BITFIELD_PER_ANSWER:
                full = None  # the asker sees it holds more than it says: it asks df-q-have
            held = mine.mask.bit_count()
            return wire.have_body(task, local.flags, held, num_pieces, full, [], local.counters)
        if name == wire.QUERY_HAVE:
            (offset,) = wire.query_fields(body, 1)
            if mine is None:
                return None
            bitfield = mine.mask.to_bytes(bit_count(num_pieces) // 8, "big")
            return [task, num_pieces, offset, bitfield[offset : offset + wire.BITFIELD_PER_ANSWER]]
        if name == wire.QUERY_DIGESTS:
            first, count = wire.query_fields(body, 2)
            count = min(count, wire.DIGESTS_PER_ANSWER, max(0, num_pieces - first))
            return [
                task,
                first,
                [
                    state.digests.get(i, b"") if i in state.believed else b""
                    for i in range(first, first + count)
                ],
            ]
        return None

    # -- asking --------------------------------------------------------------------------------

    async def ask(
        self, name: str, body: list[Any], nodes: list[str] | None, want: int
    ) -> list[wire.Envelope]:
        """A query; the envelopes of the first ``want`` answers that open (checked)."""
        payload = self.codec.seal(name, body)
        self.counters.queries_sent[name] += 1
        answers: list[wire.Envelope] = []
        responses = await self.rpc_or_fail().query(
            name, payload, nodes=nodes, timeout_s=QUERY_TIMEOUT_S
        )
        try:
            async for node, answer in responses:
                try:
                    envelope = self.codec.open_answer(name, payload, answer)
                except wire.Rejected as exc:
                    self.counters.rejected[exc.reason] += 1
                    continue
                if envelope.sender != node:
                    self.counters.rejected["impersonated"] += 1
                    continue
                answers.append(envelope)
                if len(answers) >= want:
                    break
        finally:
            await responses.aclose()  # type: ignore[attr-defined]
        if not answers:
            self.counters.query_failures += 1
        return answers

    async def ask_holders(self, task: bytes) -> None:
        """Who holds what of ``task``: every node taking part answers (a newcomer's question)."""
        try:
            answers = await self.ask(wire.QUERY_HOLDERS, [task], None, 1 << 20)
        except SerfRpcError as exc:
            log.debug("serf: holders of %s: %s", task.hex(), exc)
            return
        for envelope in answers:
            try:
                news = wire.parse_have(envelope.body)
            except wire.Rejected as exc:
                self.counters.rejected[exc.reason] += 1
                continue
            if news.task == task and self.view.have(
                envelope.sender, news, reset=False, seq=envelope.seq
            ):
                self._ask_have_later(envelope.sender, task)

    def ask_holders_soon(self, task: bytes) -> None:
        self._spawn(self.ask_holders(task))

    async def ask_have(self, sender: str, task: bytes) -> None:
        state = self.view.tasks.get(task)
        if state is None or state.geometry is None:
            return
        size = bit_count(state.geometry.num_pieces) // 8
        for offset in range(0, size, wire.BITFIELD_PER_ANSWER):
            try:
                answers = await self.ask(wire.QUERY_HAVE, [task, offset], [sender], 1)
                for envelope in answers:
                    _, chunk = wire.parse_have_answer(envelope.body, task, offset)
                    self.view.bitfield_part(sender, task, offset, chunk)
            except (SerfRpcError, wire.Rejected) as exc:
                log.debug("serf: have of %s: %s", sender, exc)
                return
