"""The asyncio shell of one peer connection, and the listener that accepts them.

``PeerConnection`` is a ``BufferedProtocol``: the kernel copies received bytes straight into the
decoder's buffer, and block payloads straight into the piece buffer (``Decoder`` asks the task for
it). It does I/O only: handshake exchange, framed reads, writes with backpressure, keep-alive and
idle bookkeeping, a clean close with a reason. What the messages mean is decided by the task it is
attached to (``peerwire.shell.TaskShell``), through the small ``ConnectionOwner`` interface.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable
from typing import Protocol, cast

from peerwire import messages as m
from peerwire.decoder import Decoder
from peerwire.errors import LocalProtocolError, ProtocolError
from peerwire.ids import PeerId, TaskId

log = logging.getLogger(__name__)

#: Our write buffer (above the kernel's) before the writer is paused, and where it resumes.
WRITE_HIGH_WATER_BYTES = 2 * 1024 * 1024
WRITE_LOW_WATER_BYTES = 512 * 1024


class ConnectionOwner(Protocol):
    """The task side of a connection (implemented by ``peerwire.shell.TaskShell``)."""

    task_id: TaskId
    peer_id: PeerId
    reserved: bytes

    def opened(self, conn: PeerConnection) -> None:
        """An outgoing connection is up and our handshake went out."""

    def attach(self, conn: PeerConnection, handshake: m.Handshake) -> bool:
        """The remote handshake arrived; False refuses the peer (the connection is closed)."""

    def block_sink(
        self, conn: PeerConnection, index: int, begin: int, length: int
    ) -> memoryview | None:
        """Where the payload of an arriving block goes (None: scratch, dropped)."""

    def on_message(self, conn: PeerConnection, message: m.Message) -> None:
        """A decoded message from an attached peer (the owner checks it in context)."""

    def read_done(self, conn: PeerConnection) -> None:
        """Every message of the bytes just read was handed over (a point to act on them)."""

    def writable(self, conn: PeerConnection) -> None:
        """Our write buffer drained below the low-water mark after it had filled up."""

    def on_closed(self, conn: PeerConnection, reason: str) -> None:
        """The connection is gone (called once, only for attached connections)."""


#: Finds the task an incoming handshake names; None refuses the connection.
TaskRouter = Callable[[TaskId], ConnectionOwner | None]


class PeerConnection(asyncio.BufferedProtocol):
    """One TCP connection to one peer."""

    def __init__(
        self,
        *,
        owner: ConnectionOwner | None = None,
        router: TaskRouter | None = None,
        max_message_bytes: int = m.DEFAULT_MAX_MESSAGE_BYTES,
    ) -> None:
        if (owner is None) == (router is None):
            raise ValueError("give the owner (outgoing) or a router (incoming), not both")
        self.owner = owner
        self._router = router
        self.outgoing = owner is not None
        self.decoder = Decoder(max_message_bytes=max_message_bytes, block_sink=self._sink)
        self.transport: asyncio.Transport | None = None
        self.remote: m.Handshake | None = None
        self.address = "?"
        self.closed = False
        self.close_reason = ""
        self.connected_s = 0.0
        self.last_received_s = 0.0
        self.last_sent_s = 0.0
        self.attached = False
        self._loop = asyncio.get_running_loop()
        self._writable: asyncio.Future[None] | None = None
        self.done: asyncio.Future[str] = self._loop.create_future()

    @property
    def peer_id(self) -> PeerId:
        if self.remote is None:
            raise LocalProtocolError("peer id asked before the handshake")
        return self.remote.peer_id

    def supports(self, bit: tuple[int, int]) -> bool:
        """Both sides set this reserved bit."""
        assert self.owner is not None and self.remote is not None
        return m.has_bit(self.owner.reserved, bit) and self.remote.supports(bit)

    def __repr__(self) -> str:
        who = str(self.remote.peer_id) if self.remote else "?"
        return f"<PeerConnection {who}@{self.address}>"

    # -- asyncio protocol callbacks ------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.transport.set_write_buffer_limits(WRITE_HIGH_WATER_BYTES, WRITE_LOW_WATER_BYTES)
        peer = transport.get_extra_info("peername")
        if peer:
            self.address = f"{peer[0]}:{peer[1]}"
        self.connected_s = self.last_received_s = self.last_sent_s = self._loop.time()
        if self.owner is not None:
            self._send_handshake()
            self.owner.opened(self)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.decoder.get_buffer()

    def buffer_updated(self, nbytes: int) -> None:
        self.last_received_s = self._loop.time()
        try:
            self.decoder.buffer_updated(nbytes)
            while not self.closed:
                event = self.decoder.next_event()
                if event is None:
                    break
                if isinstance(event, m.Handshake):
                    self._on_handshake(event)
                elif self.owner is not None and self.attached:
                    self.owner.on_message(self, event)
        except ProtocolError as exc:
            self.close(f"protocol error: {exc}")
        if self.attached and self.owner is not None:
            self.owner.read_done(self)

    def eof_received(self) -> bool:
        self.close("peer closed the connection")
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.close(f"connection lost: {exc}" if exc else "connection lost")

    def pause_writing(self) -> None:
        if self._writable is None:
            self._writable = self._loop.create_future()

    def resume_writing(self) -> None:
        if self._writable is not None:
            if not self._writable.done():
                self._writable.set_result(None)
            self._writable = None
        if self.attached and self.owner is not None:
            self.owner.writable(self)

    @property
    def write_paused(self) -> bool:
        """Our write buffer is above the high-water mark (until ``writable``)."""
        return self._writable is not None

    # -- handshake ----------------------------------------------------------------------------

    def _send_handshake(self) -> None:
        assert self.owner is not None
        hs = m.Handshake(self.owner.reserved, self.owner.task_id, self.owner.peer_id)
        self._write(m.encode_handshake(hs))

    def _on_handshake(self, handshake: m.Handshake) -> None:
        if self.owner is None:
            assert self._router is not None
            self.owner = self._router(handshake.task_id)
            if self.owner is None:
                self.close(f"unknown task {handshake.task_id}")
                return
            self._send_handshake()
        elif handshake.task_id != self.owner.task_id:
            self.close(f"peer answered for task {handshake.task_id}, not {self.owner.task_id}")
            return
        if handshake.peer_id == self.owner.peer_id:
            self.close("connected to ourselves")
            return
        self.remote = handshake
        if not self.owner.attach(self, handshake):
            self.close("refused by the task")
            return
        self.attached = True

    def _sink(self, index: int, begin: int, length: int) -> memoryview | None:
        if self.owner is None or not self.attached:
            return None
        return self.owner.block_sink(self, index, begin, length)

    # -- writing ------------------------------------------------------------------------------

    def _write(self, data: bytes | bytearray | memoryview) -> None:
        if self.closed or self.transport is None:
            return
        self.transport.write(data)
        self.last_sent_s = self._loop.time()

    def send(self, messages: Iterable[m.Message]) -> None:
        """Encode and write messages (one write for the batch)."""
        data = b"".join(m.encode(message) for message in messages)
        if data:
            self._write(data)

    def send_block(self, index: int, begin: int, payload: bytes | memoryview) -> None:
        """A piece message: the 13-byte header, then the payload without joining them."""
        if self.closed or self.transport is None:
            return
        self.transport.writelines((m.encode_piece_header(index, begin, len(payload)), payload))
        self.last_sent_s = self._loop.time()

    async def drain(self) -> None:
        """Wait until our write buffer is below the low-water mark (or the connection closed)."""
        while self._writable is not None and not self.closed:
            await asyncio.wait((self._writable, self.done), return_when=asyncio.FIRST_COMPLETED)

    # -- closing ------------------------------------------------------------------------------

    def close(self, reason: str) -> None:
        """Close once, with a reason; the owner hears of it once."""
        if self.closed:
            return
        self.closed = True
        self.close_reason = reason
        log.debug("closing %r: %s", self, reason)
        if self.transport is not None:
            self.transport.abort() if reason.startswith(
                "protocol error"
            ) else self.transport.close()
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)
        if not self.done.done():
            self.done.set_result(reason)
        if self.attached and self.owner is not None:
            self.owner.on_closed(self, reason)


async def open_connection(
    owner: ConnectionOwner, host: str, port: int, *, timeout_s: float = 10.0
) -> PeerConnection:
    """Connect to a peer for ``owner``'s task; the handshake goes out at once."""
    loop = asyncio.get_running_loop()
    _, conn = await asyncio.wait_for(
        loop.create_connection(lambda: PeerConnection(owner=owner), host, port), timeout_s
    )
    return conn


def single_task_router(owner: ConnectionOwner) -> TaskRouter:
    """A router that accepts connections for ``owner``'s task only."""
    return lambda task_id: owner if task_id == owner.task_id else None


class PeerListener:
    """Accepts peer connections for any task the router knows (one port for all tasks).

    An incoming connection that has not sent a valid handshake within ``handshake_timeout_s``
    is closed, so half-open or silent sockets cannot pile up.
    """

    def __init__(
        self,
        router: TaskRouter,
        *,
        handshake_timeout_s: float = 10.0,
        max_message_bytes: int = m.DEFAULT_MAX_MESSAGE_BYTES,
    ) -> None:
        self._router = router
        self._handshake_timeout_s = handshake_timeout_s
        self._max_message_bytes = max_message_bytes
        self._server: asyncio.Server | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self.connections: set[PeerConnection] = set()

    async def start(self, host: str, port: int) -> tuple[str, int]:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._make, host, port, reuse_address=True)
        self._sweeper = loop.create_task(self._sweep_loop())
        sockname = self._server.sockets[0].getsockname()
        return sockname[0], sockname[1]

    def _make(self) -> PeerConnection:
        conn = PeerConnection(router=self._router, max_message_bytes=self._max_message_bytes)
        self.connections.add(conn)
        conn.done.add_done_callback(lambda _: self.connections.discard(conn))
        return conn

    async def _sweep_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self._handshake_timeout_s / 4)
            now_s = loop.time()
            for conn in list(self.connections):
                if not conn.attached and now_s - conn.connected_s > self._handshake_timeout_s:
                    conn.close("no handshake in time")

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        if self._server is not None:
            self._server.close()
        for conn in list(self.connections):
            conn.close("listener closing")
        if self._server is not None:
            await self._server.wait_closed()
