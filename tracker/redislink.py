"""The tracker's connections to Redis: one pipelined lane per Redis node, bounded in time.

Every command of a request goes out on the lane of the node that holds its key, with every
other command issued in the same turn of the event loop: one write and one round trip carry
them all (Redis answers in order). The reply parser is hiredis, the C parser redis-py itself uses;
the URL is read by redis-py (``redis.asyncio.connection.parse_url``), and a Redis Cluster's slot
map comes from redis-py's ``RedisCluster``. redis-py's own command path costs the tracker tens
of microseconds per command (bench/README.md), more than a whole announce of the memory store.

Failures are bounded and said once: a node that cannot be reached, does not answer within
``timeout_s`` or refuses the handshake fails every request on its lane at once with
``StoreUnavailable`` (its text says why, never the password); the lane tries again on the next
request, at most every ``RECONNECT_S`` (doubling to ``RECONNECT_MAX_S``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import ssl
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final, cast

import hiredis
from redis.asyncio.connection import parse_url
from redis.crc import key_slot

log = logging.getLogger(__name__)

RECONNECT_S: Final = 0.25
RECONNECT_MAX_S: Final = 4.0
#: How often overdue replies are looked for.
CHECK_S: Final = 0.1

Arg = bytes | str | int | float
#: What hiredis packs (its stub's spelling).
_Packable = tuple[str | int | float | bytes | memoryview]


class StoreUnavailable(Exception):
    """Redis cannot be reached (or did not answer in time); ``str()`` says which and why."""


class ReplyError(Exception):
    """An error reply of Redis (``-ERR ...``): the command was refused, the link is fine."""


@dataclass(frozen=True, slots=True)
class RedisTarget:
    """Where a Redis is and how to log in, from a ``redis://`` or ``rediss://`` URL."""

    host: str
    port: int
    username: str | None
    password: str | None
    db: int
    tls: ssl.SSLContext | None
    path: str | None = None

    @property
    def shown(self) -> str:
        scheme = "rediss" if self.tls is not None else "redis"
        return self.path or f"{scheme}://{self.host}:{self.port}"

    def at(self, host: str, port: int) -> RedisTarget:
        return RedisTarget(host, port, self.username, self.password, 0, self.tls)


def parse_target(url: str) -> RedisTarget:
    """ValueError (without the password) when ``url`` is not a Redis URL."""
    if not url.startswith(("redis://", "rediss://", "unix://")):
        raise ValueError(
            "must be redis://[[user]:password@]host[:port][/db], rediss://... or unix://"
        )
    try:
        kwargs = parse_url(url)
    except ValueError as exc:
        raise ValueError(str(exc).replace(url, "<url>")) from None
    tls: ssl.SSLContext | None = None
    if url.startswith("rediss://"):
        cafile = kwargs.get("ssl_ca_certs")
        tls = ssl.create_default_context(cafile=None if cafile is None else str(cafile))
        reqs = str(kwargs.get("ssl_cert_reqs") or "required").lower()
        if reqs == "none":
            tls.check_hostname = False
            tls.verify_mode = ssl.CERT_NONE
        elif kwargs.get("ssl_check_hostname") is False:
            tls.check_hostname = False
    return RedisTarget(
        host=str(kwargs.get("host") or "localhost"),
        port=int(kwargs.get("port") or 6379),
        username=kwargs.get("username"),
        password=kwargs.get("password"),
        db=int(kwargs.get("db") or 0),
        tls=tls,
        path=kwargs.get("path"),
    )


class _Lane(asyncio.Protocol):
    """One connection to one Redis node; commands pipelined, replies matched in order."""

    def __init__(self, target: RedisTarget, timeout_s: float, on_state: Callable[[], None]) -> None:
        self.target = target
        self._timeout_s = timeout_s
        self._on_state = on_state
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._reader = hiredis.Reader(replyError=ReplyError)
        #: (future, deadline) of every command sent, in order.
        self._waiting: deque[tuple[asyncio.Future[Any], float]] = deque()
        #: Commands not yet written (while connecting, or until the turn ends).
        self._out: list[bytes] = []
        self._queued: list[asyncio.Future[Any]] = []
        self._flush_scheduled = False
        self._connecting: asyncio.Task[None] | None = None
        self._retry_at = 0.0
        self._backoff_s = RECONNECT_S
        self.problem: str | None = None
        self.round_trips = 0
        self.commands = 0

    # -- sending ------------------------------------------------------------------------------

    def send(self, packed: bytes) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = self._loop.create_future()
        if self._transport is None and self._connecting is None:
            if time.monotonic() < self._retry_at:
                future.set_exception(StoreUnavailable(self._why()))
                return future
            self._connecting = asyncio.ensure_future(self._connect())
        self._out.append(packed)
        self._queued.append(future)
        if not self._flush_scheduled and self._transport is not None:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)
        return future

    def _flush(self) -> None:
        self._flush_scheduled = False
        transport = self._transport
        if transport is None or not self._out:
            return
        deadline = time.monotonic() + self._timeout_s
        transport.write(b"".join(self._out))
        self.round_trips += 1
        self.commands += len(self._out)
        self._waiting.extend((future, deadline) for future in self._queued)
        self._out.clear()
        self._queued.clear()

    # -- connecting ---------------------------------------------------------------------------

    async def _connect(self) -> None:
        target = self.target
        try:
            async with asyncio.timeout(self._timeout_s):
                if target.path is not None:
                    await self._loop.create_unix_connection(lambda: self, target.path)
                else:
                    await self._loop.create_connection(
                        lambda: self,
                        target.host,
                        target.port,
                        ssl=target.tls,
                        server_hostname=target.host if target.tls is not None else None,
                    )
                handshake: list[tuple[Arg, ...]] = []
                if target.password is not None:
                    if target.username:
                        handshake.append(("AUTH", target.username, target.password))
                    else:
                        handshake.append(("AUTH", target.password))
                if target.db:
                    handshake.append(("SELECT", target.db))
                replies = [self._raw(command) for command in handshake]
                for reply in replies:
                    await reply
        except ReplyError as exc:
            self._down(f"{target.shown} refused the login: {str(exc)[:80]}")
        except (OSError, TimeoutError, StoreUnavailable) as exc:
            reason = (
                "no answer" if isinstance(exc, TimeoutError) else str(exc) or type(exc).__name__
            )
            self._down(f"{target.shown}: {reason}")
        else:
            if self.problem is not None:
                log.warning("redis %s is back", target.shown)
            self.problem = None
            self._backoff_s = RECONNECT_S
            self._on_state()
            self._flush()
        finally:
            self._connecting = None

    def _raw(self, command: tuple[Arg, ...]) -> asyncio.Future[Any]:
        """A handshake command: written at once, ahead of everything queued."""
        future: asyncio.Future[Any] = self._loop.create_future()
        assert self._transport is not None
        self._transport.write(hiredis.pack_command(cast(_Packable, command)))
        self._waiting.append((future, time.monotonic() + self._timeout_s))
        return future

    def _why(self) -> str:
        return f"redis unreachable ({self.problem or self.target.shown})"

    def _down(self, reason: str) -> None:
        if self.problem != reason:
            log.warning("redis %s", reason)
        self.problem = reason
        self._retry_at = time.monotonic() + self._backoff_s
        self._backoff_s = min(RECONNECT_MAX_S, self._backoff_s * 2)
        transport, self._transport = self._transport, None
        if transport is not None:
            transport.abort()
        error = StoreUnavailable(self._why())
        for future, _ in self._waiting:
            if not future.done():
                future.set_exception(error)
        for future in self._queued:
            if not future.done():
                future.set_exception(error)
        self._waiting.clear()
        self._queued.clear()
        self._out.clear()
        self._reader = hiredis.Reader(replyError=ReplyError)
        self._on_state()

    def check(self, now: float) -> None:
        """Fail everything when the oldest reply is overdue (the node hangs)."""
        if self._waiting and self._waiting[0][1] < now:
            self._down(f"{self.target.shown}: no answer within {self._timeout_s:g}s")

    def close(self) -> None:
        if self._connecting is not None:
            self._connecting.cancel()
        if self._transport is not None:
            self._transport.close()
            self._transport = None

    # -- asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        reader = self._reader
        reader.feed(data)
        waiting = self._waiting
        try:
            while True:
                reply = reader.gets()
                if reply is False:
                    return
                if not waiting:
                    continue  # nothing asked for this (should not happen)
                future = waiting.popleft()[0]
                if future.done():
                    continue
                if isinstance(reply, ReplyError):
                    future.set_exception(reply)
                else:
                    future.set_result(reply)
        except hiredis.ProtocolError as exc:
            self._down(f"{self.target.shown}: protocol error {exc}")

    def connection_lost(self, exc: Exception | None) -> None:
        if self._transport is not None:
            self._transport = None
            self._down(f"{self.target.shown}: connection lost")


class Script:
    """A Lua script: its source and its SHA1 (``EVALSHA``)."""

    __slots__ = ("sha", "source")

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()


class RedisLink:
    """Lanes to one Redis, or to each master of a Redis Cluster (found with redis-py)."""

    def __init__(self, url: str, timeout_s: float = 2.0) -> None:
        self.target = parse_target(url)
        self.url = url
        self.timeout_s = timeout_s
        self._lanes: dict[tuple[str, int], _Lane] = {}
        self._slots: list[tuple[str, int]] | None = None  # per slot, in a cluster
        self._checker: asyncio.Task[None] | None = None
        self.cluster = False
        self.state_changes = 0

    async def start(self) -> None:
        """Find out whether it is a cluster (and its slot map); StoreUnavailable when not
        reachable now (the tracker starts anyway and keeps trying)."""
        self._checker = asyncio.ensure_future(self._check_loop())
        with contextlib.suppress(StoreUnavailable, ReplyError):
            await self.refresh_slots()

    async def refresh_slots(self) -> None:
        info = await self.command_on(
            self._lane(self.target.host, self.target.port), ("INFO", "cluster")
        )
        if b"cluster_enabled:1" not in info:
            self.cluster = False
            self._slots = None
            return
        from redis.asyncio.cluster import RedisCluster  # only a cluster needs it

        client = RedisCluster(
            host=self.target.host,
            port=self.target.port,
            username=self.target.username,
            password=self.target.password,
            ssl=self.target.tls is not None,
            socket_timeout=self.timeout_s,
            socket_connect_timeout=self.timeout_s,
        )
        try:
            await client.initialize()
            slots: list[tuple[str, int]] = []
            for slot in range(16384):
                node = client.nodes_manager.get_node_from_slot(slot)
                slots.append((str(node.host), int(node.port)))
        finally:
            await client.aclose()
        self.cluster = True
        self._slots = slots

    def _lane(self, host: str, port: int) -> _Lane:
        lane = self._lanes.get((host, port))
        if lane is None:
            target = (
                self.target
                if (host, port) == (self.target.host, self.target.port)
                else self.target.at(host, port)
            )
            lane = self._lanes[(host, port)] = _Lane(target, self.timeout_s, self._changed)
        return lane

    def lane_for(self, key: bytes | str) -> _Lane:
        if self._slots is None:
            return self._lane(self.target.host, self.target.port)
        host, port = self._slots[key_slot(key.encode() if isinstance(key, str) else key)]
        return self._lane(host, port)

    def _changed(self) -> None:
        self.state_changes += 1

    @property
    def problem(self) -> str | None:
        """Why some node is unreachable now, or None."""
        for lane in self._lanes.values():
            if lane.problem is not None:
                return lane.problem
        return None

    @property
    def round_trips(self) -> int:
        return sum(lane.round_trips for lane in self._lanes.values())

    @property
    def commands(self) -> int:
        return sum(lane.commands for lane in self._lanes.values())

    def call(self, key: bytes | str, command: Sequence[Arg]) -> asyncio.Future[Any]:
        """Send ``command`` (which touches ``key``) on its node's lane; the reply's future."""
        return self.lane_for(key).send(hiredis.pack_command(cast(_Packable, tuple(command))))

    async def command_on(self, lane: _Lane, command: Sequence[Arg]) -> Any:
        return await lane.send(hiredis.pack_command(cast(_Packable, tuple(command))))

    async def command(self, key: bytes | str, command: Sequence[Arg]) -> Any:
        """``call`` and wait; a cluster's MOVED re-reads the slot map and tries once more."""
        try:
            return await self.call(key, command)
        except ReplyError as exc:
            if not str(exc).startswith(("MOVED", "ASK")):
                raise
            await self.refresh_slots()
            return await self.call(key, command)

    def eval(self, script: Script, key: str, args: Sequence[Arg]) -> asyncio.Future[Any]:
        """One script call on ``key``'s node. A Redis that lost its scripts (restarted,
        flushed) is sent the source once more; a cluster that moved the slot is asked again
        after the slot map is read anew."""
        out: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        first = self.call(key, ("EVALSHA", script.sha, 1, key, *args))

        def done(future: asyncio.Future[Any]) -> None:
            if out.done():
                return
            exc = future.exception()
            if exc is None:
                out.set_result(future.result())
            elif isinstance(exc, ReplyError) and str(exc).startswith("NOSCRIPT"):
                again = self.call(key, ("EVAL", script.source, 1, key, *args))
                again.add_done_callback(lambda f: _copy(f, out))
            elif isinstance(exc, ReplyError) and str(exc).startswith(("MOVED", "ASK")):
                retry = asyncio.ensure_future(self._moved(script, key, args))
                retry.add_done_callback(lambda f: _copy(f, out))
            else:
                out.set_exception(exc)

        first.add_done_callback(done)
        return out

    async def _moved(self, script: Script, key: str, args: Sequence[Arg]) -> Any:
        await self.refresh_slots()
        return await self.command(key, ("EVAL", script.source, 1, key, *args))

    async def _check_loop(self) -> None:
        while True:
            await asyncio.sleep(CHECK_S)
            now = time.monotonic()
            for lane in list(self._lanes.values()):
                lane.check(now)

    async def close(self) -> None:
        if self._checker is not None:
            self._checker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._checker
        for lane in self._lanes.values():
            lane.close()


def _copy(source: asyncio.Future[Any], target: asyncio.Future[Any]) -> None:
    if target.done():
        return
    exc = source.exception()
    if exc is not None:
        target.set_exception(exc)
    else:
        target.set_result(source.result())
