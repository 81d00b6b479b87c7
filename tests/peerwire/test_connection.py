"""PeerConnection, PeerListener, SharedListener and open_connection over real sockets on
127.0.0.1.

No mocks: every test runs one event loop (``run``) holding real task shells
(``peerwire.shell.TaskShell``, the only ``ConnectionOwner``, each around its ``TaskCore``),
listeners on free loopback ports, and, where the remote must misbehave, a ``RawPeer`` that
speaks the wire by hand with ``peerwire.messages``. Waits are on conditions and futures under a
generous cap (``WAIT_S``), so a bug fails a test instead of hanging it; no test asserts on
elapsed time.

The helpers here are shared with ``test_shell.py``, ``test_shell_origin.py`` and
``tests/dfget/test_originfetch.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import random
import struct
from collections.abc import Callable, Coroutine, Iterable, Iterator
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

import pytest
import uvloop

from peerwire import commands as cmd
from peerwire import messages as m
from peerwire.connection import PeerConnection, PeerListener, open_connection, single_task_router
from peerwire.decoder import Decoder
from peerwire.digests import DigestBook
from peerwire.errors import LocalProtocolError
from peerwire.ids import PeerId, TaskId
from peerwire.layout import KIB
from peerwire.manifest import Manifest, build_manifest
from peerwire.peerstate import TaskStats
from peerwire.ratelimit import TokenBucket
from peerwire.shell import SharedListener, TaskShell, open_task
from peerwire.storage import PieceStore
from peerwire.wireconfig import WireConfig

T = TypeVar("T")
E = TypeVar("E")

PIECE_BYTES = 128 * KIB
#: What our tasks request: two blocks per piece. Not smaller, and every piece whole: a block
#: that fits the decoder's 64 KiB buffer next to another message is lost (see test_task.py,
#: ``test_blocks_smaller_than_the_decoder_buffer_are_not_wasted``).
BLOCK_BYTES = 64 * KIB
#: What raw remotes request from our tasks (a stock client's size).
RAW_BLOCK_BYTES = 16 * KIB
#: 37 pieces: a bitfield has 3 spare bits.
NUM_PIECES = 37
FILE_BYTES = NUM_PIECES * PIECE_BYTES
#: Cap on every wait, so a bug fails the test instead of hanging it. Never a timing assertion.
WAIT_S = 10.0
#: Cap for waits that a bug would make endless: keeps a failing suite fast.
SHORT_WAIT_S = 2.0

#: A fast tick; timeouts long enough that a loaded machine does not trip them (the tests of a
#: timeout shorten that one); keep-alive and idle out of the way.
CONFIG = WireConfig(
    block_bytes=BLOCK_BYTES,
    pipeline_depth=8,
    tick_s=0.05,
    handshake_timeout_s=5.0,
    keepalive_interval_s=30.0,
    idle_timeout_s=60.0,
)
#: For the tests of the handshake timeout.
QUICK_HANDSHAKE = replace(CONFIG, handshake_timeout_s=0.3)
FAST_AND_LARGE = m.reserved_with(m.FAST_EXTENSION_BIT, m.LARGE_BLOCKS_BIT)
LARGE_ONLY = m.reserved_with(m.LARGE_BLOCKS_BIT)
NO_BITS = m.reserved_with()
OTHER_TASK = TaskId(b"\x5a" * 20)

LOOPS = {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}


# -- running a test ----------------------------------------------------------------------------


def run(main: Callable[[], Coroutine[Any, Any, T]], *, loop: str = "asyncio") -> T:
    """Run ``main()`` in a fresh event loop; fail on anything sent to the loop's error handler.

    "Task was destroyed but it is pending", "Future exception was never retrieved" and errors in
    callbacks are reported through that handler (logged, not raised), so they are collected here
    (after a garbage collection, which is what triggers the first two) and fail the test.
    """
    errors: list[dict[str, Any]] = []
    with asyncio.Runner(loop_factory=LOOPS[loop]) as runner:
        runner.get_loop().set_exception_handler(lambda _, context: errors.append(context))
        result = runner.run(main())
        gc.collect()
    gc.collect()
    assert not errors, f"event loop errors: {errors}"
    return result


async def wait_until(predicate: Callable[[], object], what: str, timeout_s: float = WAIT_S) -> None:
    """Poll ``predicate`` until it is true; AssertionError naming ``what`` after ``timeout_s``."""

    async def poll() -> None:
        while not predicate():
            await asyncio.sleep(0.01)

    try:
        await asyncio.wait_for(poll(), timeout_s)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


async def wait_done(conn: PeerConnection, timeout_s: float = WAIT_S) -> str:
    """The reason ``conn`` closed with."""
    try:
        return await asyncio.wait_for(asyncio.shield(conn.done), timeout_s)
    except TimeoutError:
        raise AssertionError(f"{conn!r} still open after {timeout_s}s") from None


# -- content and nodes -------------------------------------------------------------------------


@dataclass(frozen=True)
class Content:
    """The file every test distributes, its manifest, and where nodes put their copies."""

    path: Path
    data: bytes
    manifest: Manifest
    directory: Path

    @property
    def task_id(self) -> TaskId:
        return self.manifest.task_id

    def block(self, index: int, begin: int, length: int) -> bytes:
        start = index * self.manifest.piece_length + begin
        return self.data[start : start + length]


def make_content(tmp_path: Path, name: str = "source", *, seed: int = 1) -> Content:
    """37 pieces of random bytes (from ``seed``) in ``tmp_path/name.bin``; the nodes' copies go
    to ``tmp_path/name/``."""
    data = random.Random(seed).randbytes(FILE_BYTES)
    path = tmp_path / f"{name}.bin"
    path.write_bytes(data)
    manifest = build_manifest(path, PIECE_BYTES)
    assert manifest.num_pieces == NUM_PIECES
    directory = tmp_path / name
    directory.mkdir()
    return Content(path, data, manifest, directory)


def make_executor(max_workers: int = 2) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="test-peerwire")


@pytest.fixture
def content(tmp_path: Path) -> Content:
    return make_content(tmp_path)


@pytest.fixture
def executor() -> Iterator[ThreadPoolExecutor]:
    with make_executor() as pool:
        yield pool


@dataclass
class Node:
    """A task shell with its store, the commands it handed on, and, when it listens, its
    listener."""

    shell: TaskShell
    store: PieceStore
    #: Every command the shell did not carry out itself (``on_command``), in order.
    commands: list[cmd.Command[PeerConnection]] = field(default_factory=list)
    listener: PeerListener | None = None
    _address: tuple[str, int] | None = None

    @property
    def address(self) -> tuple[str, int]:
        assert self._address is not None, "this node does not listen"
        return self._address

    @property
    def stats(self) -> TaskStats:
        return self.shell.core.stats

    @property
    def peer_count(self) -> int:
        return self.shell.core.peer_count

    @property
    def verified(self) -> list[int]:
        """The pieces verified and stored, in order (``PieceDone``: the old ``on_piece``)."""
        return [c.index for c in self.commands if isinstance(c, cmd.PieceDone)]

    @property
    def reports(self) -> list[cmd.ReportPeer]:
        """The peers reported as misbehaving (``ReportPeer``: the old ``on_ban``)."""
        return [c for c in self.commands if isinstance(c, cmd.ReportPeer)]

    async def connect(self, other: Node) -> PeerConnection:
        return await self.shell.connect(*other.address)

    async def complete(self, timeout_s: float = WAIT_S) -> None:
        try:
            await asyncio.wait_for(asyncio.shield(self.shell.completed), timeout_s)
        except TimeoutError:
            have, total = len(self.store.have), self.store.manifest.num_pieces
            raise AssertionError(
                f"download incomplete after {timeout_s}s: {have}/{total} pieces, "
                f"{self.peer_count} peers, {self.stats}"
            ) from None


class Swarm:
    """The nodes and raw remotes of one test; everything is closed on exit, in order."""

    def __init__(self, content: Content, executor: Executor) -> None:
        self.content = content
        self.executor = executor
        self._stack = contextlib.AsyncExitStack()

    async def __aenter__(self) -> Swarm:
        await self._stack.__aenter__()
        return self

    async def __aexit__(self, *exc_info: Any) -> bool | None:
        return await self._stack.__aexit__(*exc_info)

    def on_exit(self, callback: Callable[[], Coroutine[Any, Any, object]]) -> None:
        """Await ``callback()`` when the swarm closes (before what was set up earlier)."""
        self._stack.push_async_callback(callback)

    async def node(
        self,
        store: PieceStore,
        *,
        digests: DigestBook | None = None,
        config: WireConfig = CONFIG,
        listen: bool = True,
        peer_id: PeerId | None = None,
        secret: bytes | None = None,
        download_bucket: TokenBucket | None = None,
        upload_bucket: TokenBucket | None = None,
        executor: Executor | None = None,
    ) -> Node:
        """A started shell for ``store``; ``digests`` default to the store's manifest's."""
        self._stack.callback(store.close)  # exit callbacks run last-in first-out
        manifest = store.manifest
        commands: list[cmd.Command[PeerConnection]] = []
        shell = open_task(
            store,
            digests or DigestBook(manifest.num_pieces, manifest.piece_sha256),
            peer_id=peer_id or PeerId.generate(),
            executor=executor or self.executor,
            config=config,
            secret=secret,
            download_bucket=download_bucket,
            upload_bucket=upload_bucket,
            on_command=commands.append,
        )
        self._stack.push_async_callback(shell.close)
        shell.start()
        node = Node(shell, store, commands)
        if listen:
            node.listener = PeerListener(
                single_task_router(shell),
                handshake_timeout_s=config.handshake_timeout_s,
            )
            node._address = await node.listener.start("127.0.0.1", 0)
            self._stack.push_async_callback(node.listener.close)
        return node

    async def seed(self, **kwargs: Any) -> Node:
        store = PieceStore.open_complete(self.content.path, self.content.manifest)
        return await self.node(store, **kwargs)

    async def leecher(self, name: str, *, pieces: Iterable[int] = (), **kwargs: Any) -> Node:
        manifest = self.content.manifest
        store = PieceStore.create(self.content.directory / f"{name}.bin", manifest)
        for index in pieces:
            data = self.content.block(index, 0, manifest.layout.piece_size(index))
            assert store.commit_piece(index, data, manifest.piece_sha256[index])
        kwargs.setdefault("listen", False)
        return await self.node(store, **kwargs)

    async def raw(self, address: tuple[str, int], *, peer_id: PeerId | None = None) -> RawPeer:
        reader, writer = await asyncio.open_connection(*address)
        peer = RawPeer(reader, writer, peer_id or PeerId.generate())
        self._stack.push_async_callback(peer.close)
        return peer

    async def raw_server(self) -> RawServer:
        server = RawServer()
        await server.start()
        self._stack.push_async_callback(server.close)
        return server


# -- scripted remotes --------------------------------------------------------------------------


class RawPeer:
    """A remote scripted by the test: raw asyncio streams, the wire written with ``messages``."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer_id: PeerId
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.peer_id = peer_id
        self.decoder = Decoder()
        self.eof = False

    def handshake(self, task_id: TaskId, reserved: bytes = FAST_AND_LARGE) -> None:
        self.write(m.encode_handshake(m.Handshake(reserved, task_id, self.peer_id)))

    def send(self, *messages: m.Message) -> None:
        self.write(b"".join(m.encode(message) for message in messages))

    def write(self, data: bytes) -> None:
        self.writer.write(data)

    async def receive(self, timeout_s: float = WAIT_S) -> m.Event | None:
        """The next event from the other side; None once it closed the connection."""
        while True:
            event = self.decoder.next_event()
            if event is not None:
                return event
            if self.eof:
                return None
            try:
                data = await asyncio.wait_for(self.reader.read(256 * KIB), timeout_s)
            except ConnectionResetError:
                data = b""
            except TimeoutError:
                raise AssertionError(f"nothing received in {timeout_s}s") from None
            if not data:
                self.eof = True
            else:
                self.decoder.receive_data(data)

    async def expect(
        self, kind: type[E], *, skip: tuple[type, ...] = (m.KeepAlive,), timeout_s: float = WAIT_S
    ) -> E:
        """The next event, which must be a ``kind`` (events of the ``skip`` types are passed)."""
        while True:
            event = await self.receive(timeout_s)
            if event is None:
                raise AssertionError(f"connection closed while expecting {kind.__name__}")
            if isinstance(event, skip) and not isinstance(event, kind):
                continue
            assert isinstance(event, kind), f"expected {kind.__name__}, got {event!r}"
            return event

    async def closed(self, timeout_s: float = WAIT_S) -> list[m.Event]:
        """Read until the other side closes; the events received meanwhile."""
        events: list[m.Event] = []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while (event := await self.receive(max(0.001, deadline - loop.time()))) is not None:
            events.append(event)
        return events

    async def greet(self, task_id: TaskId, reserved: bytes = FAST_AND_LARGE) -> m.Handshake:
        """Handshake with a listener: send ours, return theirs."""
        self.handshake(task_id, reserved)
        return await self.expect(m.Handshake)

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError):
            await self.writer.wait_closed()


class RawServer:
    """A listening socket whose accepted connections are handed to the test as RawPeers."""

    def __init__(self) -> None:
        self._accepted: asyncio.Queue[RawPeer] = asyncio.Queue()
        self._peers: list[RawPeer] = []
        self._server: asyncio.Server | None = None
        self.address = ("127.0.0.1", 0)

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._on_accept, "127.0.0.1", 0)
        self.address = self._server.sockets[0].getsockname()[:2]

    def _on_accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = RawPeer(reader, writer, PeerId.generate(b"-RAW000-"))
        self._peers.append(peer)
        self._accepted.put_nowait(peer)

    async def accept(self) -> RawPeer:
        try:
            return await asyncio.wait_for(self._accepted.get(), WAIT_S)
        except TimeoutError:
            raise AssertionError("no connection arrived") from None

    async def close(self) -> None:
        assert self._server is not None
        self._server.close()
        for peer in self._peers:
            await peer.close()
        await self._server.wait_closed()


async def serve(
    raw: RawPeer,
    content: Content,
    *,
    reserved: bytes = FAST_AND_LARGE,
    corrupt: Callable[[m.Request], bool] = lambda _: False,
    answer: Callable[[m.Request], bool] = lambda _: True,
    seen: list[m.Event] | None = None,
) -> None:
    """Act as a seed on an accepted connection until it closes.

    The remote's handshake is read and answered (``reserved``; have all, or a full bitfield
    without fast); the remote is unchoked when interested. Requests are answered with their
    block, with zeros where ``corrupt`` says so, not at all where ``answer`` says no. ``seen``
    collects every event after the handshake.
    """
    handshake = await raw.expect(m.Handshake)
    raw.handshake(handshake.task_id, reserved)
    fast = m.has_bit(reserved, m.FAST_EXTENSION_BIT)
    raw.send(m.HaveAll() if fast else m.Bitfield(full_bitfield()))
    while (event := await raw.receive()) is not None:
        if seen is not None:
            seen.append(event)
        if isinstance(event, m.Interested):
            raw.send(m.Unchoke())
        elif isinstance(event, m.Request) and answer(event):
            payload = content.block(event.index, event.begin, event.length)
            if corrupt(event):
                payload = bytes(len(payload))
            raw.send(m.Piece(event.index, event.begin, payload))


def full_bitfield() -> bytes:
    """BEP 3 bitfield of all 37 pieces: the 3 spare bits clear."""
    return b"\xff" * 4 + b"\xf8"


# -- open_connection and the handshake ---------------------------------------------------------


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
@pytest.mark.parametrize("remote_bits", [FAST_AND_LARGE, NO_BITS], ids=["fast", "stock"])
def test_open_connection_sends_our_handshake_and_attaches_on_the_answer(
    content: Content, executor: Executor, loop: str, remote_bits: bytes
) -> None:
    async def main() -> None:
        async with Swarm(content, executor) as swarm:
            server = await swarm.raw_server()
            leech = await swarm.leecher("leech")
            conn = await open_connection(leech.shell, *server.address)
            raw = await server.accept()
            sent = await raw.expect(m.Handshake)
            assert sent == m.Handshake(FAST_AND_LARGE, content.task_id, leech.shell.peer_id)
            assert not conn.attached
            with pytest.raises(LocalProtocolError):
                _ = conn.peer_id
            raw.handshake(content.task_id, remote_bits)
            raw.send(m.HaveAll() if remote_bits == FAST_AND_LARGE else m.Unchoke())
            await wait_until(lambda: conn.attached, "the connection to attach")
            assert conn.peer_id == raw.peer_id
            assert conn.supports(m.FAST_EXTENSION_BIT) == (remote_bits == FAST_AND_LARGE)
            assert conn.supports(m.LARGE_BLOCKS_BIT) == (remote_bits == FAST_AND_LARGE)
            assert leech.peer_count == 1
            # BEP 6: an empty peer says "have none" when fast is on; BEP 3 lets it say nothing.
            if remote_bits == FAST_AND_LARGE:
                await raw.expect(m.HaveNone)
                await raw.expect(m.Interested)

    run(main, loop=loop)


@pytest.mark.parametrize("remote_bits", [FAST_AND_LARGE, NO_BITS], ids=["fast", "stock"])
def test_listener_answers_a_known_task_with_handshake_and_availability(
    content: Content, executor: Executor, remote_bits: bytes
) -> None:
    async def main() -> None:
        async with Swarm(content, executor) as swarm:
            seed = await swarm.seed()
            raw = await swarm.raw(seed.address)
            theirs = await raw.greet(content.task_id, remote_bits)
            assert theirs == m.Handshake(FAST_AND_LARGE, content.task_id, seed.shell.peer_id)
            if remote_bits == FAST_AND_LARGE:
                await raw.expect(m.HaveAll)
            else:  # BEP 3 bitfield: all 37 pieces set, the 3 spare bits clear
                bitfield = await raw.expect(m.Bitfield)
                assert bitfield.payload == full_bitfield()
            await wait_until(lambda: seed.peer_count == 1, "the raw peer to attach")

    run(main)


def test_listener_refuses_an_unknown_task_and_keeps_serving(
    content: Content, executor: Executor
) -> None:
    async def main() -> None:
        async with Swarm(content, executor) as swarm:
            seed = await swarm.seed()
            assert seed.listener is not None
            stranger = await swarm.raw(seed.address)
            stranger.handshake(OTHER_TASK)
            assert await stranger.closed() == []  # not even our handshake
            await wait_until(lambda: not seed.listener.connections, "the listener to forget it")  # type: ignore[union-attr]
            leech = await swarm.leecher("leech")
            await leech.connect(seed)
            await leech.complete()
            assert leech.store.finalize().read_bytes() == content.data

    run(main)


def test_listener_closes_a_connection_that_is_not_bittorrent(
    content: Content, executor: Executor
) -> None:
    async def main() -> None:
        async with Swarm(content, executor) as swarm:
            seed = await swarm.seed()
            http = await swarm.raw(seed.address)
            http.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            assert await http.closed() == []
            raw = await swarm.raw(seed.address)
            await raw.greet(content.task_id)
            await raw.expect(m.HaveAll)

    run(main)


# -- SharedListener: one port for every task of a process --------------------------------------


async def shared_listener(swarm: Swarm, *shells: TaskShell) -> SharedListener:
    shared = SharedListener()
    await shared.start("127.0.0.1", 0)
    swarm.on_exit(shared.close)
    for shell in shells:
        shared.add(shell)
    return shared


def test_shared_listener_routes_each_connection_to_the_task_its_handshake_names(
    content: Content, executor: Executor, tmp_path: Path
) -> None:
    other = make_content(tmp_path, "other", seed=2)
    assert other.task_id != content.task_id

    async def main() -> None:
        async with Swarm(content, executor) as swarm, Swarm(other, executor) as other_swarm:
            first = await swarm.seed(listen=False)
            second = await other_swarm.seed(listen=False)
            shared = await shared_listener(swarm, first.shell, second.shell)
            address = ("127.0.0.1", shared.port)
            for node, task_id in ((first, content.task_id), (second, other.task_id)):
                raw = await swarm.raw(address)
                theirs = await raw.greet(task_id)
                assert theirs == m.Handshake(FAST_AND_LARGE, task_id, node.shell.peer_id)
                await raw.expect(m.HaveAll)
            await wait_until(lambda: first.peer_count == second.peer_count == 1, "both attached")
            # Whole downloads of both tasks through the one port.
            leech = await swarm.leecher("leech")
            other_leech = await other_swarm.leecher("leech")
            await leech.shell.connect(*address)
            await other_leech.shell.connect(*address)
            await leech.complete()
            await other_leech.complete()
            assert leech.store.finalize().read_bytes() == content.data
            assert other_leech.store.finalize().read_bytes() == other.data
            assert first.stats.uploaded_bytes == FILE_BYTES
            assert second.stats.uploaded_bytes == FILE_BYTES

    run(main)


def test_shared_listener_refuses_an_unknown_task_and_a_removed_one(
    content: Content, executor: Executor, tmp_path: Path
) -> None:
    other = make_content(tmp_path, "other", seed=2)

    async def main() -> None:
        async with Swarm(content, executor) as swarm, Swarm(other, executor) as other_swarm:
            seed = await swarm.seed(listen=False)
            removed = await other_swarm.seed(listen=False)
            shared = await shared_listener(swarm, seed.shell, removed.shell)
            address = ("127.0.0.1", shared.port)
            stranger = await swarm.raw(address)
            stranger.handshake(OTHER_TASK)
            assert await stranger.closed() == []  # not even our handshake
            # Removing a task that is not the registered one (same task id) changes nothing.
            twin = await swarm.seed(listen=False)
            shared.remove(twin.shell)
            raw = await swarm.raw(address)
            assert (await raw.greet(content.task_id)).peer_id == seed.shell.peer_id
            await raw.expect(m.HaveAll)
            shared.remove(removed.shell)
            late = await swarm.raw(address)
            late.handshake(other.task_id)
            assert await late.closed() == []
            assert removed.peer_count == 0
            await wait_until(lambda: len(shared.listener.connections) == 1, "only one left")
            # The task still registered keeps serving.
            leech = await swarm.leecher("leech")
            await leech.shell.connect(*address)
            await leech.complete()
            assert twin.stats.uploaded_bytes == 0

    run(main)


def test_shared_listener_close_closes_its_connections(content: Content, executor: Executor) -> None:
    async def main() -> None:
        async with Swarm(content, executor) as swarm:
            seed = await swarm.seed(listen=False)
            shared = await shared_listener(swarm, seed.shell)
            raw = await swarm.raw(("127.0.0.1", shared.port))
            await raw.greet(content.task_id)
            await raw.expect(m.HaveAll)
            await wait_until(lambda: seed.peer_count == 1, "the raw peer to attach")
            await shared.close()
            assert await raw.closed() == []
            await wait_until(lambda: seed.peer_count == 0, "the task to hear of it")
            with pytest.raises(OSError):
                await swarm.raw(("127.0.0.1", shared.port))

    run(main)


def test_outgoing_connection_closed_when_the_peer_answers_for_another_task(
    content: Content, executor: Executor
) -> None:
    async def main() -> None:
        async with Swarm(content, executor) as swarm:
            server = await swarm.raw_server()
            leech = await swarm.leecher("leech")
            conn = await leech.shell.connect(*server.address)
            raw = await server.accept()
            await raw.expect(m.Handshake)
            raw.handshake(OTHER_TASK)
            reason = await wait_done(conn)
            assert reason.startswith(f"peer answered for task {OTHER_TASK}")
            assert await raw.closed() == []
            assert leech.peer_count == 0
            assert not conn.attached

    run(main)


def test_connecting_to_ourselves_is_closed_on_both_ends(
    content: Content, executor: Executor
) -> None:
    async def main() -> None:
        async with Swarm(content, executor) as swarm:
            node = await swarm.leecher("self", listen=True)
            listener = node.listener
            assert listener is not None
            conn = await node.connect(node)
            assert await wait_done(conn) == "connected to ourselves"
            await wait_until(lambda: not listener.connections, "the incoming end to close")
            assert node.peer_count == 0

    run(main)


def test_second_connection_from_an_attached_peer_id_is_refused(
    content: Content, executor: Executor
) -> None:
    async def main() -> None:
        async with Swarm(content, executor) as swarm:
            seed = await swarm.seed()
            peer_id = PeerId.generate()
            first = await swarm.raw(seed.address, peer_id=peer_id)
            await first.greet(content.task_id)
            await first.expect(m.HaveAll)
            second = await swarm.raw(seed.address, peer_id=peer_id)
            await second.greet(content.task_id)  # the handshake goes out before the check
            assert await second.closed() == []
            assert seed.peer_count == 1
            first.send(m.Interested())  # the first connection is untouched
            await first.expect(m.Unchoke)
            await first.close()
            await wait_until(lambda: seed.peer_count == 0, "the first connection to go")
            third = await swarm.raw(seed.address, peer_id=peer_id)  # the id is welcome again
            await third.greet(content.task_id)
            await third.expect(m.HaveAll)

    run(main)


def test_two_peers_dialling_each_other_at_once_keep_one_connection(
    content: Content, executor: Executor
) -> None:
    """Both ends keep the connection dialled by the smaller peer id; before, each end could
    refuse the other's connection and close its own, leaving the two peers unconnected."""

    async def main() -> None:
        async with Swarm(content, executor) as swarm:
            for attempt in range(5):
                a = await swarm.leecher(f"a{attempt}", listen=True)
                b = await swarm.leecher(f"b{attempt}", listen=True)
                a_out, b_out = await asyncio.gather(a.connect(b), b.connect(a))
                pair = (a_out, b_out)

                def gave_way(pair: tuple[PeerConnection, ...] = pair) -> bool:
                    return any(c.closed for c in pair)

                await wait_until(gave_way, "a dial to give way")
                await asyncio.sleep(0.2)
                smaller_out = a_out if a.shell.peer_id.raw < b.shell.peer_id.raw else b_out
                other_out = b_out if smaller_out is a_out else a_out
                assert not smaller_out.closed, smaller_out.close_reason
                assert other_out.closed
                assert a.peer_count == b.peer_count == 1

    run(main)


def test_a_task_accepts_peers_past_its_dial_target_up_to_max_peers(
    content: Content, executor: Executor
) -> None:
    """Room above ``dial_peers`` is for newcomers: a task that dials 1 peer still admits a
    second and a third incoming one, and refuses the fourth."""

    async def main() -> None:
        async with Swarm(content, executor) as swarm:
            seed = await swarm.seed(config=replace(CONFIG, dial_peers=1, max_peers=3))
            for _ in range(3):
                raw = await swarm.raw(seed.address)
                await raw.greet(content.task_id)
                await raw.expect(m.HaveAll)
            extra = await swarm.raw(seed.address)
            await extra.greet(content.task_id)
            assert await extra.closed() == []
            assert seed.peer_count == 3

    # By default half the slots are left for peers that come later (see WireConfig).
    assert WireConfig().max_peers >= 2 * WireConfig().dial_peers
    run(main)


def test_max_peers_is_respected_and_a_freed_slot_is_reused(
    content: Content, executor: Executor
) -> None:
    async def main() -> None:
        async with Swarm(content, executor) as swarm:
            seed = await swarm.seed(config=replace(CONFIG, max_peers=2))
            admitted = []
            for _ in range(2):
                raw = await swarm.raw(seed.address)
                await raw.greet(content.task_id)
                await raw.expect(m.HaveAll)
                admitted.append(raw)
            extra = await swarm.raw(seed.address)
            await extra.greet(content.task_id)
            assert await extra.closed() == []
            assert seed.peer_count == 2
            await admitted[0].close()
            await wait_until(lambda: seed.peer_count == 1, "a slot to free")
            late = await swarm.raw(seed.address)
            await late.greet(content.task_id)
            await late.expect(m.HaveAll)
            assert seed.peer_count == 2

    run(main)


def test_outgoing_connection_without_an_answer_is_closed_after_the_handshake_timeout(
    content: Content, executor: Executor
) -> None:
    async def main() -> None:
        async with Swarm(content, executor) as swarm:
            server = await swarm.raw_server()
            leech = await swarm.leecher("leech", config=QUICK_HANDSHAKE)
            conn = await leech.shell.connect(*server.address)
            raw = await server.accept()
            await raw.expect(m.Handshake)  # ... and never answer
            assert await wait_done(conn) == "no handshake in time"
            assert await raw.closed() == []
            assert leech.peer_count == 0

    run(main)


@pytest.mark.parametrize("sent", [b"", m.HANDSHAKE_PREFIX], ids=["silent", "partial-handshake"])
def test_incoming_connection_without_a_handshake_is_closed_after_the_timeout(
    content: Content, executor: Executor, sent: bytes
) -> None:
    async def main() -> None:
        async with Swarm(content, executor) as swarm:
            seed = await swarm.seed(config=QUICK_HANDSHAKE)
            listener = seed.listener
            assert listener is not None
            good = await swarm.raw(seed.address)
            await good.greet(content.task_id)
            await good.expect(m.HaveAll)
            raw = await swarm.raw(seed.address)
            raw.write(sent)
            assert await raw.closed() == []
            await wait_until(lambda: len(listener.connections) == 1, "the listener to forget it")
            good.send(m.Interested())  # an attached connection is not swept
            await good.expect(m.Unchoke)
            assert seed.peer_count == 1

    run(main)


def test_handshake_dripped_byte_by_byte_still_meets_the_deadline(
    content: Content, executor: Executor
) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        async with Swarm(content, executor) as swarm:
            seed = await swarm.seed(config=QUICK_HANDSHAKE)
            raw = await swarm.raw(seed.address)
            handshake = m.encode_handshake(m.Handshake(NO_BITS, content.task_id, raw.peer_id))
            give_up_s = loop.time() + 4 * QUICK_HANDSHAKE.handshake_timeout_s

            def closed() -> bool:  # an orderly EOF, or a reset because we kept writing
                return raw.reader.at_eof() or raw.reader.exception() is not None

            for byte in handshake:
                if closed() or loop.time() > give_up_s:
                    break
                raw.write(bytes([byte]))
                await asyncio.sleep(QUICK_HANDSHAKE.handshake_timeout_s / 3)
            assert closed(), "still open long after the handshake deadline"

    run(main)


# -- protocol errors from a raw remote ---------------------------------------------------------


def _request_flood() -> bytes:
    """An interested peer queueing 257 distinct requests at once (the bound is 256)."""
    per_piece = PIECE_BYTES // RAW_BLOCK_BYTES
    requests = [
        m.Request(i // per_piece, (i % per_piece) * RAW_BLOCK_BYTES, RAW_BLOCK_BYTES)
        for i in range(257)
    ]
    return m.encode(m.Interested()) + b"".join(m.encode(r) for r in requests)


PROTOCOL_ERRORS = {
    "wrong-length-choke": (FAST_AND_LARGE, b"\x00\x00\x00\x02\x00\x00"),
    "huge-length": (FAST_AND_LARGE, struct.pack(">IB", 0x7FFFFFFF, m.MessageId.PIECE)),
    "huge-unknown-message": (FAST_AND_LARGE, struct.pack(">IB", 0xFFFFFFF0, 0x55)),
    "piece-too-short": (FAST_AND_LARGE, struct.pack(">IBI", 5, m.MessageId.PIECE, 0)),
    "bitfield-spare-bits": (FAST_AND_LARGE, m.encode(m.Bitfield(b"\x00" * 4 + b"\x04"))),
    "bitfield-wrong-size": (FAST_AND_LARGE, m.encode(m.Bitfield(b"\x00" * 4))),
    "bitfield-after-interested": (
        FAST_AND_LARGE,
        m.encode(m.Interested()) + m.encode(m.Bitfield(b"\x00" * 5)),
    ),
    "request-piece-out-of-range": (FAST_AND_LARGE, m.encode(m.Request(NUM_PIECES, 0, 16))),
    "request-past-last-piece": (
        FAST_AND_LARGE,
        m.encode(m.Request(NUM_PIECES - 1, PIECE_BYTES - 100, 200)),
    ),
    "request-flood": (FAST_AND_LARGE, _request_flood()),
    "have-out-of-range": (FAST_AND_LARGE, m.encode(m.Have(NUM_PIECES))),
    "bitfield-after-have": (
        FAST_AND_LARGE,
        m.encode(m.Have(0)) + m.encode(m.Bitfield(b"\x00" * 5)),
    ),
    "piece-out-of-range": (FAST_AND_LARGE, m.encode(m.Piece(NUM_PIECES + 3, 0, b"x" * 100))),
    "have-all-without-fast": (LARGE_ONLY, m.encode(m.HaveAll())),
    "reject-without-fast": (LARGE_ONLY, m.encode(m.RejectRequest(0, 0, RAW_BLOCK_BYTES))),
}


@pytest.mark.parametrize("case", PROTOCOL_ERRORS.values(), ids=PROTOCOL_ERRORS.keys())
def test_protocol_error_closes_only_that_connection(
    content: Content, executor: Executor, case: tuple[bytes, bytes]
) -> None:
    reserved, hostile_bytes = case

    async def main() -> None:
        async with Swarm(content, executor) as swarm:
            seed = await swarm.seed()
            leech = await swarm.leecher("leech")
            honest = await leech.connect(seed)
            hostile = await swarm.raw(seed.address)
            await hostile.greet(content.task_id, reserved)
            await hostile.expect(m.HaveAll if reserved == FAST_AND_LARGE else m.Bitfield)
            await wait_until(lambda: seed.peer_count == 2, "both peers attached")
            hostile.write(hostile_bytes)
            await hostile.closed()
            await wait_until(lambda: seed.peer_count == 1, "the hostile peer to be dropped")
            await leech.complete()
            assert not honest.closed
            assert leech.store.finalize().read_bytes() == content.data
            # The listener still takes newcomers.
            other = await swarm.leecher("other")
            conn = await other.connect(seed)
            await wait_until(lambda: conn.attached or conn.closed, "the newcomer's handshake")
            assert conn.attached, conn.close_reason
            await other.complete()

    run(main)


@pytest.mark.parametrize("payload_bytes", [100, 200 * KIB], ids=["small", "larger-than-buffer"])
def test_unknown_message_id_is_skipped_not_closed(
    content: Content, executor: Executor, payload_bytes: int
) -> None:
    async def main() -> None:
        async with Swarm(content, executor) as swarm:
            seed = await swarm.seed()
            raw = await swarm.raw(seed.address)
            await raw.greet(content.task_id)
            await raw.expect(m.HaveAll)
            unknown = struct.pack(">IB", 1 + payload_bytes, 0x14) + b"\xee" * payload_bytes
            raw.write(unknown + m.encode(m.Interested()))
            await raw.expect(m.Unchoke)
            raw.send(m.Request(3, RAW_BLOCK_BYTES, RAW_BLOCK_BYTES))
            piece = await raw.expect(m.Piece)
            assert (piece.index, piece.begin) == (3, RAW_BLOCK_BYTES)
            assert bytes(piece.data) == content.block(3, RAW_BLOCK_BYTES, RAW_BLOCK_BYTES)
            assert seed.peer_count == 1

    run(main)


# -- the connection object ---------------------------------------------------------------------


def test_connection_needs_an_owner_or_a_router_not_both(
    content: Content, executor: Executor
) -> None:
    async def main() -> None:
        async with Swarm(content, executor) as swarm:
            seed = await swarm.seed(listen=False)
            with pytest.raises(ValueError):
                PeerConnection()
            with pytest.raises(ValueError):
                PeerConnection(owner=seed.shell, router=lambda _: seed.shell)

    run(main)


def test_drain_waits_while_writing_is_paused_until_resumed_or_closed(
    content: Content, executor: Executor
) -> None:
    async def main() -> None:
        async with Swarm(content, executor) as swarm:
            server = await swarm.raw_server()
            leech = await swarm.leecher("leech")
            for finish in ("resume", "close"):
                conn = await leech.shell.connect(*server.address)
                await server.accept()
                await conn.drain()  # not paused: returns at once
                conn.pause_writing()
                drained = asyncio.ensure_future(conn.drain())
                await asyncio.sleep(0)
                assert not drained.done()
                if finish == "resume":
                    conn.resume_writing()
                else:
                    conn.close("test")
                await asyncio.wait_for(drained, WAIT_S)
                conn.close("test done")

    run(main)
