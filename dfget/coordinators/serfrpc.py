"""A client of the Serf agent's RPC: msgpack over TCP, as the agent documents it.

Serf (HashiCorp's gossip library and agent) does membership, failure detection and the
propagation of user events and queries; this project never re-implements any of it and talks
to the local agent only. The protocol (Serf's ``docs/agent/rpc``): every request is a msgpack
header ``{"Command", "Seq"}``, followed by a body for the commands that take one; every
response is a header ``{"Seq", "Error"}``, followed by a body for the commands that return one.
``Seq`` pairs a response with its request, so requests may overlap. ``stream`` and ``query``
answer once with a bare header and then keep sending header + record pairs under the same
``Seq`` (events; a query's acks, responses and ``done``) until stopped or done.

``SerfRpc`` is that, on asyncio: one reader task dispatches what arrives by ``Seq``. A lost
connection fails every waiting call with ``SerfRpcError`` and ends every stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, Final

import msgpack

log = logging.getLogger(__name__)

#: The one IPC version Serf agents speak (handshake ``Version``).
IPC_VERSION: Final = 1
#: A command the agent does not answer within this long is a failure.
CALL_TIMEOUT_S: Final = 10.0
#: Records queued for a stream or query the caller has not read yet, at most (a stream is
#: read by one loop that does not block; past this the oldest are dropped and counted).
MAX_QUEUED: Final = 65536
#: Largest single message accepted from the agent.
MAX_MESSAGE_BYTES: Final = 16 * 1024 * 1024

#: Commands whose response carries a body, also with an ``Error`` (the others answer with a
#: header alone), and the errors the agent answers before looking at a command (no body).
_BODY_ANSWERS: Final = frozenset(
    {"members", "members-filtered", "join", "stats", "list-keys", "install-key", "use-key",
     "remove-key", "get-coordinate"}
)  # fmt: skip
_BARE_ERRORS: Final = frozenset(
    {"Handshake required", "Authentication required", "Unsupported command"}
)


class SerfRpcError(Exception):
    """The agent refused a command (its ``Error``), or cannot be reached."""


@dataclass(frozen=True, slots=True)
class Member:
    """One member as the agent reports it (``members``, member events)."""

    name: str
    addr: str
    port: int
    tags: dict[str, str]
    #: ``alive``, ``leaving``, ``left``, ``failed``.
    status: str

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Member:
        raw = record.get("Addr") or b""
        addr = _ip_text(bytes(raw)) if isinstance(raw, bytes | bytearray) else str(raw)
        tags = record.get("Tags") or {}
        return cls(
            name=str(record.get("Name", "")),
            addr=addr,
            port=int(record.get("Port", 0)),
            tags={str(k): str(v) for k, v in tags.items()} if isinstance(tags, dict) else {},
            status=str(record.get("Status", "")),
        )


def _ip_text(raw: bytes) -> str:
    import ipaddress

    if len(raw) == 16 and raw[:12] == b"\0" * 10 + b"\xff\xff":
        raw = raw[12:]  # an IPv4 address in Go's 16-byte form
    try:
        return str(ipaddress.ip_address(raw))
    except ValueError:
        return ""


@dataclass(slots=True)
class _Stream:
    """Records arriving under one ``Seq`` (a ``stream`` subscription or a ``query``)."""

    queue: asyncio.Queue[dict[str, Any] | None] = field(
        default_factory=lambda: asyncio.Queue(MAX_QUEUED)
    )
    acknowledged: bool = False
    #: Nobody reads it any more: what still arrives is parsed and dropped (a query until its
    #: ``done``, a subscription until ``stop`` is answered).
    abandoned: bool = False
    dropped: int = 0


class SerfRpc:
    """One connection to a Serf agent's RPC address."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self._seq = itertools.count(1)
        self._calls: dict[int, tuple[asyncio.Future[Any], bool]] = {}
        self._streams: dict[int, _Stream] = {}
        self._unpacker = msgpack.Unpacker(raw=False, max_buffer_size=MAX_MESSAGE_BYTES)
        self._closed = False
        self._reading = asyncio.create_task(self._read_loop())
        #: Called once when the connection is lost (not when closed by ``close``).
        self.on_lost: Callable[[str], None] | None = None

    @classmethod
    async def connect(
        cls, host: str, port: int, *, auth_key: str | None = None, timeout_s: float = 5.0
    ) -> SerfRpc:
        """Connect and handshake (and ``auth`` when the agent wants an RPC key)."""
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout_s)
        except (OSError, TimeoutError) as exc:
            raise SerfRpcError(f"no Serf agent RPC at {host}:{port}: {exc}") from exc
        rpc = cls(reader, writer)
        try:
            await rpc.call("handshake", {"Version": IPC_VERSION})
            if auth_key:
                await rpc.call("auth", {"AuthKey": auth_key})
        except BaseException:
            await rpc.close()
            raise
        return rpc

    @property
    def closed(self) -> bool:
        return self._closed

    # -- requests ------------------------------------------------------------------------------

    def _send(self, command: str, body: dict[str, Any] | None) -> int:
        if self._closed:
            raise SerfRpcError("the Serf RPC connection is closed")
        seq = next(self._seq)
        data = msgpack.packb({"Command": command, "Seq": seq}, use_bin_type=True)
        if body is not None:
            data += msgpack.packb(body, use_bin_type=True)
        self._writer.write(data)
        return seq

    async def call(self, command: str, body: dict[str, Any] | None = None) -> Any:
        """One command and its answer (the response body, or None)."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        seq = self._send(command, body)
        self._calls[seq] = (future, command in _BODY_ANSWERS)
        try:
            return await asyncio.wait_for(future, CALL_TIMEOUT_S)
        except TimeoutError as exc:
            raise SerfRpcError(f"the Serf agent did not answer {command!r}") from exc
        finally:
            self._calls.pop(seq, None)

    async def members(self) -> list[Member]:
        answer = await self.call("members")
        return [Member.from_record(m) for m in (answer or {}).get("Members") or []]

    async def event(self, name: str, payload: bytes, *, coalesce: bool = False) -> None:
        await self.call("event", {"Name": name, "Payload": payload, "Coalesce": coalesce})

    async def join(self, addresses: list[str], *, replay: bool = False) -> int:
        answer = await self.call("join", {"Existing": addresses, "Replay": replay})
        return int((answer or {}).get("Num", 0))

    async def force_leave(self, node: str) -> None:
        await self.call("force-leave", {"Node": node})

    async def tags(self, tags: dict[str, str], delete: list[str] | None = None) -> None:
        await self.call("tags", {"Tags": tags, "DeleteTags": delete or []})

    async def stats(self) -> dict[str, Any]:
        answer = await self.call("stats")
        return answer if isinstance(answer, dict) else {}

    async def list_keys(self) -> dict[str, Any]:
        answer = await self.call("list-keys")
        return answer if isinstance(answer, dict) else {}

    async def respond(self, query_id: int, payload: bytes) -> None:
        await self.call("respond", {"ID": query_id, "Payload": payload})

    async def leave(self) -> None:
        await self.call("leave")

    async def stream(self, types: str) -> tuple[int, AsyncIterator[dict[str, Any]]]:
        """Subscribe to events (``member-join,user:NAME,query:NAME``...): the stream's ``Seq``
        (for ``stop``) and the records as they arrive; the iterator ends with the connection."""
        seq, records = await self._open("stream", {"Type": types})
        return seq, records

    async def stop(self, seq: int) -> None:
        stream = self._streams.get(seq)
        if stream is not None:
            stream.abandoned = True
            _put(stream, None)
        with contextlib.suppress(SerfRpcError):
            await self.call("stop", {"Stop": seq})
        self._streams.pop(seq, None)

    async def query(
        self,
        name: str,
        payload: bytes,
        *,
        nodes: list[str] | None = None,
        tags: dict[str, str] | None = None,
        timeout_s: float = 0.0,
    ) -> AsyncIterator[tuple[str, bytes]]:
        """Start a query; yields ``(node, payload)`` for each response until ``done``. Acks are
        not asked for. ``timeout_s`` 0 is the agent's default (it grows with the cluster)."""
        body: dict[str, Any] = {
            "FilterNodes": nodes or [],
            "FilterTags": tags or {},
            "RequestAck": False,
            "RelayFactor": 0,
            "Timeout": int(timeout_s * 1e9),
            "Name": name,
            "Payload": payload,
        }
        seq, records = await self._open("query", body)
        return _responses(self, seq, records)

    async def _open(
        self, command: str, body: dict[str, Any]
    ) -> tuple[int, AsyncIterator[dict[str, Any]]]:
        stream = _Stream()
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        seq = self._send(command, body)
        self._streams[seq] = stream
        self._calls[seq] = (future, False)
        try:
            await asyncio.wait_for(future, CALL_TIMEOUT_S)
        except BaseException:
            self._streams.pop(seq, None)
            raise
        finally:
            self._calls.pop(seq, None)
        return seq, _records(stream)

    # -- the reader ----------------------------------------------------------------------------

    async def _read_loop(self) -> None:
        reason = "the agent closed the connection"
        pending_header: dict[str, Any] | None = None
        try:
            while True:
                data = await self._reader.read(1 << 16)
                if not data:
                    break
                self._unpacker.feed(data)
                for obj in self._unpacker:
                    if pending_header is not None:
                        self._deliver(pending_header, obj)
                        pending_header = None
                        continue
                    if not isinstance(obj, dict) or "Seq" not in obj:
                        raise SerfRpcError(f"unexpected message from the agent: {obj!r:.80}")
                    if self._wants_body(obj):
                        pending_header = obj
                    else:
                        self._deliver(obj, None)
        except (OSError, SerfRpcError, ValueError, msgpack.UnpackException) as exc:
            reason = f"the Serf RPC connection failed: {exc}"
        except asyncio.CancelledError:
            reason = "closed"
        self._fail_all(reason)

    def _wants_body(self, header: dict[str, Any]) -> bool:
        seq = header.get("Seq")
        if not isinstance(seq, int):
            return False
        stream = self._streams.get(seq)
        if stream is not None and stream.acknowledged and not header.get("Error"):
            return True
        call = self._calls.get(seq)
        return call is not None and call[1] and header.get("Error") not in _BARE_ERRORS

    def _deliver(self, header: dict[str, Any], body: Any) -> None:
        seq = int(header["Seq"])
        error = str(header.get("Error") or "")
        stream = self._streams.get(seq)
        if stream is not None and stream.acknowledged:
            if not isinstance(body, dict):
                return
            if stream.abandoned:
                if body.get("Type") == "done":
                    self._streams.pop(seq, None)
                return
            _put(stream, body)
            return
        if stream is not None and not error:
            # Acknowledged here, not when the caller wakes: its first records may follow in
            # the same read, and they carry a body.
            stream.acknowledged = True
        call = self._calls.get(seq)
        if call is None or call[0].done():
            return
        if error:
            call[0].set_exception(SerfRpcError(error))
        else:
            call[0].set_result(body)

    def release(self, seq: int, done: bool) -> None:
        """The reader of a query is gone: forget it when it is done, else drop what still comes
        until its ``done``."""
        if done:
            self._streams.pop(seq, None)
        elif (stream := self._streams.get(seq)) is not None:
            stream.abandoned = True

    def _fail_all(self, reason: str) -> None:
        was_open = not self._closed
        self._closed = True
        for future, _ in list(self._calls.values()):
            if not future.done():
                future.set_exception(SerfRpcError(reason))
        for stream in self._streams.values():
            _put(stream, None)
        self._streams.clear()
        self._writer.close()
        if was_open and reason != "closed" and self.on_lost is not None:
            self.on_lost(reason)

    async def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._reading.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reading
        with contextlib.suppress(OSError):
            await self._writer.wait_closed()


def _put(stream: _Stream, record: dict[str, Any] | None) -> None:
    try:
        stream.queue.put_nowait(record)
    except asyncio.QueueFull:
        stream.dropped += 1
        if record is None:  # the end must get through: make room for it
            stream.queue.get_nowait()
            stream.queue.put_nowait(None)


async def _records(stream: _Stream) -> AsyncIterator[dict[str, Any]]:
    while (record := await stream.queue.get()) is not None:
        yield record


async def _responses(
    rpc: SerfRpc, seq: int, records: AsyncIterator[dict[str, Any]]
) -> AsyncIterator[tuple[str, bytes]]:
    done = False
    try:
        async for record in records:
            kind = record.get("Type")
            if kind == "done":
                done = True
                return
            payload = record.get("Payload")
            if kind == "response" and isinstance(payload, bytes):
                yield str(record.get("From", "")), payload
    finally:
        rpc.release(seq, done)
