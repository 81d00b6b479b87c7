"""``SerfNode``: this process's part in a decentralized cluster, through its Serf agent.

One per process (dfdaemon shares it between every download; a plain dfget has its own): the
RPC connection to the agent (``serfrpc``), the agent itself with ``--serf-agent auto``
(``serfagent``), the event stream that keeps the ``ClusterView`` current, the publisher that
sends this node's news (``serfwire``: start, have, digests, recover, removed, length), the
answers to other nodes' queries (``serfqueries``), and discovery. ``SerfCoordinator``
(``serfcoordinator``) is the tracker interface the download engine calls, on top of it.

What this node holds of a task is published at most once per ``PUBLISH_S``: the whole bitfield
when it fits an event, else the runs added since the last event (what still does not fit goes
next time, and a receiver that counts fewer pieces than the sender says it holds asks it with
``df-q-have``); it is published again ``REFRESH_S`` after the last news even when unchanged
(gossip may lose an event). The digests of this node's origin reads go out as ``df-digests``
in the same cycle. A node that starts a task asks who holds what (``df-q-holders``). When a
member joins (a newcomer, or one back after a failure) and when this node's own agent
connection comes back, every task this node takes part in is published again as
``df-recover``, so that the rest know what it holds after its restart. A malformed, stale,
replayed or unauthenticated payload is dropped and counted (``SerfCounters.rejected``), never
raised.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from dfget.coordinators import serfwire as wire
from dfget.coordinators.serfagent import SerfAgent
from dfget.coordinators.serfdiscovery import Discovery, resolve
from dfget.coordinators.serfoptions import SerfOptions, split_host_port
from dfget.coordinators.serfqueries import Queries
from dfget.coordinators.serfrpc import SerfRpc, SerfRpcError
from dfget.coordinators.serfview import (
    TAG_LOAD,
    TAG_PORT,
    TAG_ZONE,
    ClusterView,
    bit_count,
    pieces_of,
    runs_mask,
    runs_of,
)

log = logging.getLogger(__name__)

PUBLISH_S: Final = 0.25
#: The load tag changes gossip a member update: not more often than this.
TAG_EVERY_S: Final = 5.0
#: Membership upkeep (rejoin when alone, DNS when the cluster shrank) runs this often.
MEMBERSHIP_EVERY_S: Final = 2.0
#: A member that seems to hold more than its events said is asked at most this often.
ASK_HAVE_EVERY_S: Final = 3.0
RECONNECT_PAUSE_S: Final = 1.0
#: What a node holds is published again this long after its last news even when unchanged:
#: gossip may lose an event (a partition, an agent restart), and a seed's news never changes.
REFRESH_S: Final = 30.0


class SerfNodeError(Exception):
    """The node cannot take part (no agent, an agent without the cluster secret's key)."""


@dataclass
class SerfCounters:
    events_sent: Counter[str] = field(default_factory=Counter)
    events_received: Counter[str] = field(default_factory=Counter)
    event_bytes_sent: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    queries_sent: Counter[str] = field(default_factory=Counter)
    queries_answered: Counter[str] = field(default_factory=Counter)
    query_failures: int = 0
    reports: Counter[str] = field(default_factory=Counter)
    reconnects: int = 0


@dataclass(slots=True)
class LocalTask:
    """A task this node takes part in, as last announced, and what of it was published."""

    flags: int = wire.FLAG_SOURCE
    #: ``[downloaded, uploaded, origin]`` bytes and when this node joined the task (ms).
    counters: tuple[int, int, int, int] = (0, 0, 0, 0)
    published_mask: int = 0
    published_flags: int = -1
    start_sent: bool = False
    recover: bool = False
    #: Digests of this node's origin reads not published yet.
    unsent_digests: dict[int, bytes] = field(default_factory=dict)
    published_at: float = -1e9


class SerfNode(Queries):
    """This node in the cluster: agent, RPC, view, publisher, query answers, discovery."""

    def __init__(
        self,
        options: SerfOptions,
        *,
        secret: bytes | None = None,
        directory: Path | None = None,
        zone: str = "",
    ) -> None:
        self.options = options
        self.secret = secret
        self.zone = zone
        self.vouched = secret is not None
        self.agent: SerfAgent | None = None
        #: A directory this node made for its agent (a plain dfget's), removed at close.
        self._scratch: Path | None = None
        if options.agent == "auto":
            if directory is None:
                directory = self._scratch = Path(tempfile.mkdtemp(prefix="dfget-serf-"))
            self.agent = SerfAgent(options, directory, secret, on_restart=self._agent_restarted)
        self.rpc: SerfRpc | None = None
        self.view = ClusterView("")
        self.codec = wire.Codec("", wire.event_key(secret) if secret else None)
        self.counters = SerfCounters()
        self.local: dict[bytes, LocalTask] = {}
        self.discovery = (
            Discovery(options.discover, options.discover_dns) if options.discover else None
        )
        self._port = 0
        self._load = 0
        self._tags_sent: dict[str, str] = {}
        self._tags_at = -1e9
        self._loops: list[asyncio.Task[None]] = []
        self._calls: set[asyncio.Task[None]] = set()
        self._reconnecting: asyncio.Task[None] | None = None
        self._start_lock = asyncio.Lock()
        self._started = False
        self._closed = False
        self._recover_all = False

    @property
    def me(self) -> str:
        return self.view.me

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the agent (auto), connect, join; idempotent. SerfNodeError when it cannot."""
        async with self._start_lock:
            if self._started:
                return
            if self.agent is not None:
                from dfget.coordinators.serfagent import SerfAgentError

                try:
                    await self.agent.start()
                except SerfAgentError as exc:
                    raise SerfNodeError(str(exc)) from None
            try:
                await self._connect()
            except SerfRpcError as exc:
                await self._stop_agent()
                raise SerfNodeError(str(exc)) from None
            except SerfNodeError:
                await self._stop_agent()
                raise
            self._started = True
            await self._join(first=True)
            self._loops = [
                asyncio.create_task(self._publish_loop()),
                asyncio.create_task(self._membership_loop()),
            ]

    async def _connect(self) -> None:
        host, port = split_host_port(self.options.rpc)
        rpc = await SerfRpc.connect(host, port)
        try:
            stats = await rpc.stats()
            name = str((stats.get("agent") or {}).get("name") or "")
            if not name:
                raise SerfNodeError(f"the Serf agent at {self.options.rpc} did not say its name")
            if self.secret is not None:
                await self._check_key(rpc)
            if name != self.view.me:
                self.view = ClusterView(name)
                self.codec = wire.Codec(name, self.codec.key)
            types = ",".join(
                ["member-join", "member-leave", "member-failed", "member-update", "member-reap"]
                + [f"user:{name}" for name in wire.EVENTS]
                + [f"query:{name}" for name in wire.QUERIES]
            )
            _, records = await rpc.stream(types)
            for member in await rpc.members():
                self.view.member(member.name, member.addr, member.status, member.tags)
        except BaseException:
            await rpc.close()
            raise
        rpc.on_lost = self._lost
        self.rpc = rpc
        self._tags_sent = {}
        self._loops.append(asyncio.create_task(self._event_loop(records)))
        await self._push_tags(force=True)
        log.info("serf: node %s, %d members", self.me, self.view.alive_count)

    async def _check_key(self, rpc: SerfRpc) -> None:
        key = wire.gossip_key(self.secret or b"")
        try:
            keys = (await rpc.list_keys()).get("Keys") or {}
        except SerfRpcError as exc:
            keys = {}
            log.debug("serf list-keys: %s", exc)
        if key not in keys:
            raise SerfNodeError(
                f"the Serf agent at {self.options.rpc} does not encrypt gossip with the key of "
                "the cluster secret: start it with -encrypt (the key is printed by dfdaemon "
                "--print-serf-key), or use --serf-agent auto"
            )

    async def close(self) -> None:
        """Stop publishing and answering; leave (the agent we started); close the RPC."""
        self._closed = True
        tasks = [*self._loops, *self._calls]
        if self._reconnecting is not None:
            tasks.append(self._reconnecting)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self.rpc is not None:
            await self.rpc.close()
        await self._stop_agent()

    async def _stop_agent(self) -> None:
        if self.agent is not None:
            await self.agent.stop()
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)

    def _lost(self, reason: str) -> None:
        if self._closed or (self._reconnecting is not None and not self._reconnecting.done()):
            return
        log.warning("serf: %s; reconnecting", reason)
        self._reconnecting = asyncio.create_task(self._reconnect())

    def _agent_restarted(self) -> None:
        self._lost("the Serf agent was restarted")

    async def _reconnect(self) -> None:
        while not self._closed:
            await asyncio.sleep(RECONNECT_PAUSE_S)
            try:
                await self._connect()
            except (SerfRpcError, SerfNodeError) as exc:
                log.debug("serf: reconnect failed: %s", exc)
                continue
            self.counters.reconnects += 1
            for local in self.local.values():
                local.start_sent = False
                local.recover = True
            await self._join(first=True)
            return

    def rpc_or_fail(self) -> SerfRpc:
        rpc = self.rpc
        if rpc is None or rpc.closed:
            raise SerfRpcError(f"no connection to the Serf agent at {self.options.rpc}")
        return rpc

    # -- membership ----------------------------------------------------------------------------

    async def _join(self, *, first: bool = False) -> None:
        addresses = list(self.options.join)
        if self.discovery is not None and (first or self.discovery.due(self.view.alive_count)):
            found = await resolve(self.discovery.target, self.discovery.server)
            self.discovery.resolved(found)
            log.info("serf: %s resolves to %s", self.discovery.target, ", ".join(found) or "none")
            known = {m.addr for m in self.view.members.values() if m.status == "alive"}
            addresses += [a for a in found if split_host_port(a)[0] not in known]
        if not addresses:
            return
        try:
            joined = await self.rpc_or_fail().join(addresses)
        except SerfRpcError as exc:
            log.warning("serf: cannot join %s: %s", ", ".join(addresses), exc)
            return
        log.info("serf: joined %d of %s", joined, ", ".join(addresses))

    async def _membership_loop(self) -> None:
        while True:
            await asyncio.sleep(MEMBERSHIP_EVERY_S)
            alone = self.view.alive_count <= 1
            due = self.discovery is not None and self.discovery.due(self.view.alive_count)
            if due or (alone and self.options.join):
                with contextlib.suppress(SerfRpcError):
                    await self._join()

    # -- receiving -----------------------------------------------------------------------------

    async def _event_loop(self, records: Any) -> None:
        async for record in records:
            try:
                self._on_record(record)
            except wire.Rejected as exc:
                self.counters.rejected[exc.reason] += 1
                log.debug("serf: dropped %s: %s", record.get("Name"), exc)

    def _on_record(self, record: dict[str, Any]) -> None:
        kind = str(record.get("Event", ""))
        if kind.startswith("member-"):
            self._on_members(kind, record.get("Members") or [])
            return
        name, payload = record.get("Name"), record.get("Payload")
        if not isinstance(name, str) or not isinstance(payload, bytes):
            raise wire.Rejected("malformed", "record without a name or payload")
        if kind == "query":
            query_id = record.get("ID")
            if isinstance(query_id, int):
                self._spawn(self._answer(name, query_id, payload))
            return
        envelope = self.codec.open(name, payload)
        if envelope.sender == self.me:
            return
        self.counters.events_received[name] += 1
        body = envelope.body
        if name == wire.EVENT_START:
            task, flags, joined_ms = wire.parse_start(body)
            self.view.started(envelope.sender, task, flags, envelope.seq, joined_ms)
        elif name in (wire.EVENT_HAVE, wire.EVENT_RECOVER):
            news = wire.parse_have(body)
            reset = name == wire.EVENT_RECOVER
            if self.view.have(envelope.sender, news, reset=reset, seq=envelope.seq):
                self._ask_have_later(envelope.sender, news.task)
        elif name == wire.EVENT_REMOVED:
            self.view.removed(envelope.sender, wire.task_of(body))
        elif name == wire.EVENT_LENGTH:
            self.view.learn_geometry(wire.parse_geometry(body), believed=self.vouched)
        elif name == wire.EVENT_DIGESTS:
            task, found = wire.parse_digests_event(body)
            self.view.learn_digests(task, found)

    def _on_members(self, kind: str, records: list[Any]) -> None:
        from dfget.coordinators.serfrpc import Member

        for raw in records:
            if not isinstance(raw, dict):
                continue
            member = Member.from_record(raw)
            if kind == "member-reap":
                self.view.forget(member.name)
                continue
            before = self.view.member(member.name, member.addr, member.status, member.tags)
            if kind == "member-join" and member.name != self.me and before != "alive":
                self._recover_all = True  # tell the newcomer what this node holds

    def _ask_have_later(self, sender: str, task: bytes) -> None:
        state = self.view.tasks.get(task)
        holding = state.holders.get(sender) if state else None
        if holding is None or self.view.now() - holding.asked_at < ASK_HAVE_EVERY_S:
            return
        holding.asked_at = self.view.now()
        self._spawn(self.ask_have(sender, task))

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.create_task(coroutine)
        self._calls.add(task)
        task.add_done_callback(self._calls.discard)

    # -- publishing ----------------------------------------------------------------------------

    async def publish(self, name: str, body: list[Any]) -> bool:
        """Fire one event; False when it does not fit (nothing sent)."""
        payload = self.codec.seal(name, body)
        if not wire.fits_event(name, payload):
            return False
        await self.rpc_or_fail().event(name, payload)
        self.counters.events_sent[name] += 1
        self.counters.event_bytes_sent += len(name) + len(payload)
        return True

    def set_port(self, port: int, load: int) -> bool:
        """The peer port and load to carry in the tags; True when the port is new."""
        new = port != self._port
        self._port, self._load = port, load
        return new

    async def push_tags(self) -> None:
        await self._push_tags(force=True)

    async def _push_tags(self, *, force: bool = False) -> None:
        tags = {TAG_PORT: str(self._port), TAG_LOAD: str(self._load)}
        if self.zone:
            tags[TAG_ZONE] = self.zone
        if not self._port:
            del tags[TAG_PORT]
        if tags == self._tags_sent:
            return
        now = self.view.now()
        changed = {k for k in tags if tags[k] != self._tags_sent.get(k)}
        if not force and changed <= {TAG_LOAD} and now - self._tags_at < TAG_EVERY_S:
            return
        await self.rpc_or_fail().tags(tags)
        self._tags_sent, self._tags_at = tags, now

    async def _publish_loop(self) -> None:
        while True:
            await asyncio.sleep(PUBLISH_S)
            if self.rpc is None or self.rpc.closed:
                continue
            recover_all, self._recover_all = self._recover_all, False
            try:
                await self._push_tags()
                for task, local in list(self.local.items()):
                    if recover_all:
                        local.recover = True
                    await self.publish_have(task, local)
            except SerfRpcError as exc:
                log.debug("serf: publishing: %s", exc)

    async def publish_digests(self, task: bytes, local: LocalTask) -> None:
        """The digests of this node's origin reads, ``DIGESTS_PER_EVENT`` an event."""
        while local.unsent_digests:
            batch = sorted(local.unsent_digests.items())[: wire.DIGESTS_PER_EVENT]
            flat = [value for item in batch for value in item]
            if not await self.publish(wire.EVENT_DIGESTS, [task, flat]):
                log.warning("serf: a digests event does not fit: left to queries")
                local.unsent_digests.clear()
                return
            for index, _ in batch:
                local.unsent_digests.pop(index, None)

    async def publish_have(self, task: bytes, local: LocalTask) -> None:
        """This node's news of ``task``, if any (see the module docstring)."""
        state = self.view.tasks.get(task)
        mine = state.holders.get(self.me) if state else None
        if state is None or mine is None or state.geometry is None:
            return
        await self.publish_digests(task, local)
        recover = local.recover
        stale = self.view.now() - local.published_at > REFRESH_S
        unchanged = mine.mask == local.published_mask and local.flags == local.published_flags
        if not recover and unchanged and not stale:
            return
        num_pieces = state.geometry.num_pieces
        name = wire.EVENT_RECOVER if recover else wire.EVENT_HAVE
        held = mine.mask.bit_count()
        bitfield = mine.mask.to_bytes(bit_count(num_pieces) // 8, "big")
        body = wire.have_body(task, local.flags, held, num_pieces, bitfield, [], local.counters)
        sent_mask = mine.mask
        if not await self.publish(name, body):
            fresh = mine.mask if recover else mine.mask & ~local.published_mask
            runs = runs_of(pieces_of(fresh, num_pieces))
            while True:
                body = wire.have_body(
                    task, local.flags, held, num_pieces, None, runs, local.counters
                )
                if await self.publish(name, body) or not runs:
                    break
                runs = runs[: len(runs) * 3 // 4]
            sent_mask = runs_mask(runs, num_pieces) | (0 if recover else local.published_mask)
        local.published_mask, local.published_flags = sent_mask, local.flags
        local.recover, local.published_at = False, self.view.now()
