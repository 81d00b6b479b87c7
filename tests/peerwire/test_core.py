"""TaskCore without sockets: events in, exact commands out, on a fake clock.

In the style of h11's and Kraken's scheduler tests: a ``Harness`` holds one core, feeds it
events (handshakes, messages built with ``peerwire.messages``, the timer) and returns the
commands it emitted; it carries out a ``Verify`` itself (sha256 of the buffer, then
``piece_checked``). A ``Net`` joins harnesses by in-memory connections (FIFO queues of
messages, an uploader per woken connection) so whole downloads run between cores. No thread,
no sleep, no event loop. The other ``test_core_*`` modules and ``test_admission`` /
``test_membership`` use these helpers.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Hashable, Iterable, Sequence

import pytest

from peerwire import messages as m
from peerwire.bitfield import Bitfield
from peerwire.commands import (
    Close,
    Command,
    Send,
    Verify,
    WakeUploader,
)
from peerwire.core import TaskCore
from peerwire.digests import DigestBook
from peerwire.ids import PeerId, TaskId
from peerwire.layout import Block, PieceLayout
from peerwire.ratelimit import TokenBucket
from peerwire.wireconfig import WireConfig

TASK = TaskId(b"T" * 20)
PIECE = 64
BLOCK = 16  # four blocks per piece
FAST_LARGE = m.reserved_with(m.FAST_EXTENSION_BIT, m.LARGE_BLOCKS_BIT)
LARGE_ONLY = m.reserved_with(m.LARGE_BLOCKS_BIT)
#: Sequential picking makes the pieces asked for predictable; nothing else is changed.
CONFIG = WireConfig(block_bytes=BLOCK, picker_policy="sequential", random_first_pieces=0)

Cmd = Command[Hashable]


def pid(n: int) -> PeerId:
    return PeerId(bytes([n]) * 20)


def make_data(num_pieces: int = 8, last: int = 40) -> bytes:
    """``num_pieces`` pieces, the last one ``last`` bytes (three blocks: 16, 16, 8)."""
    size = PIECE * (num_pieces - 1) + last
    return bytes((i * 7 + i // 251) % 256 for i in range(size))


DATA = make_data()


class FakeClock:
    def __init__(self, now_s: float = 1000.0) -> None:
        self.now_s = now_s

    def __call__(self) -> float:
        return self.now_s

    def advance(self, seconds: float) -> None:
        self.now_s += seconds


def digests_of(data: bytes) -> list[bytes]:
    return [hashlib.sha256(data[i : i + PIECE]).digest() for i in range(0, len(data), PIECE)]


class Harness:
    """One core, its clock and the bytes it stored."""

    def __init__(
        self,
        data: bytes = DATA,
        *,
        have: Iterable[int] = (),
        known: Iterable[int] | None = None,
        config: WireConfig = CONFIG,
        secret: bytes | None = None,
        rate_bps: float | None = None,
        peer_id: PeerId | None = None,
        clock: FakeClock | None = None,
    ) -> None:
        self.data = data
        self.clock = clock or FakeClock()
        self.layout = PieceLayout(len(data), PIECE)
        n = self.layout.num_pieces
        self.digests = digests_of(data)
        bits = Bitfield(n)
        self.stored = bytearray(len(data))
        for index in have:
            bits.add(index)
            self.stored[self.span(index)] = data[self.span(index)]
        known_set = set(range(n)) if known is None else set(known) | set(bits)
        book = DigestBook(n, [d if i in known_set else None for i, d in enumerate(self.digests)])
        self.bucket = None if rate_bps is None else TokenBucket(rate_bps, clock=self.clock)
        self.core: TaskCore[Hashable] = TaskCore(
            self.layout,
            bits,
            book,
            task_id=TASK,
            peer_id=peer_id or pid(1),
            clock=self.clock,
            config=config,
            rng=random.Random(0),
            secret=secret,
            download_bucket=self.bucket,
        )

    def span(self, index: int) -> slice:
        return slice(index * PIECE, index * PIECE + self.layout.piece_size(index))

    def take(self) -> list[Cmd]:
        return self.core.take_commands()

    # -- events --------------------------------------------------------------------------------

    def handshake(
        self,
        conn: Hashable,
        peer: int,
        *,
        reserved: bytes = FAST_LARGE,
        outgoing: bool = False,
    ) -> bool:
        """The remote handshake of peer ``pid(peer)`` on ``conn``; the core's verdict."""
        return self.core.peer_connected(
            conn,
            m.Handshake(reserved, TASK, pid(peer)),
            outgoing=outgoing,
            address=f"10.0.0.{peer}:6881",
        )

    def admit(self, conn: Hashable, peer: int, *, reserved: bytes = FAST_LARGE) -> list[Cmd]:
        """A peer admitted on ``conn``; the commands that followed (our availability)."""
        assert self.handshake(conn, peer, reserved=reserved) is True
        return self.take()

    def receive(self, conn: Hashable, *messages: m.Message) -> list[Cmd]:
        """Messages from ``conn`` as the shell delivers them (a piece's payload into the
        buffer ``block_sink`` names first); the commands that followed."""
        for message in messages:
            if isinstance(message, m.Piece):
                sink = self.core.block_sink(conn, message.index, message.begin, len(message.data))
                if sink is not None:
                    sink[:] = message.data
            self.core.message_received(conn, message)
        return self.take()

    def piece(self, index: int, k: int, *, corrupt: bool = False) -> m.Piece:
        """The ``piece`` message of block ``k`` of piece ``index`` (zeros when ``corrupt``)."""
        block = self.block(index, k)
        start = index * PIECE + block.begin
        data = self.data[start : start + block.length]
        return m.Piece(index, block.begin, bytes(len(data)) if corrupt else data)

    def block(self, index: int, k: int) -> Block:
        return self.layout.blocks(index, BLOCK)[k]

    def serve(self, conn: Hashable, requests: Iterable[m.Request], **kw: bool) -> list[Cmd]:
        """Answer ``requests`` with their blocks; the commands that followed."""
        out: list[Cmd] = []
        for r in requests:
            out += self.receive(conn, self.piece(r.index, r.begin // BLOCK, **kw))
        return out

    def check(self, verify: Verify, *, ok: bool | None = None) -> list[Cmd]:
        """Carry out a ``Verify``: hash, store, ``piece_checked`` (``ok`` overrides the hash)."""
        digest = hashlib.sha256(verify.buffer).digest()
        good = digest == verify.expected if ok is None else ok
        if good:
            self.stored[self.span(verify.index)] = verify.buffer
        self.core.piece_checked(verify.index, verify.buffer, digest if good else None)
        return self.take()

    def check_all(self, commands: Sequence[Cmd]) -> list[Cmd]:
        """Carry out every ``Verify`` among ``commands``; the commands that followed."""
        out: list[Cmd] = []
        for command in commands:
            if isinstance(command, Verify):
                out += self.check(command)
        return out

    def fire(self, at: float) -> list[Cmd]:
        """Set the clock to ``at`` and fire the timer once."""
        self.clock.now_s = at
        self.core.timer_fired()
        return self.take()

    def run_until(self, until: float) -> list[tuple[float, Cmd]]:
        """Fire the timer at every deadline up to ``until`` as the shell would; what came out,
        with when."""
        out: list[tuple[float, Cmd]] = []
        for _ in range(100_000):
            if self.core.deadline > until:
                break
            self.clock.now_s = max(self.clock.now_s, self.core.deadline)
            self.core.timer_fired()
            out += [(self.clock.now_s, c) for c in self.take()]
        else:
            raise AssertionError("the deadline does not move")
        self.clock.now_s = until
        return out


# -- command helpers ---------------------------------------------------------------------------


def sent(commands: Iterable[Cmd], conn: Hashable | None = None) -> list[m.Message]:
    """Every message sent (to ``conn``), in order."""
    return [
        message
        for c in commands
        if isinstance(c, Send) and (conn is None or c.conn == conn)
        for message in c.messages
    ]


def requests(commands: Iterable[Cmd], conn: Hashable | None = None) -> list[m.Request]:
    return [x for x in sent(commands, conn) if isinstance(x, m.Request)]


def verifies(commands: Iterable[Cmd]) -> list[Verify]:
    return [c for c in commands if isinstance(c, Verify)]


def req(h: Harness, index: int, k: int) -> m.Request:
    block = h.block(index, k)
    return m.Request(block.index, block.begin, block.length)


def piece_requests(h: Harness, index: int) -> list[m.Request]:
    return [req(h, index, k) for k in range(len(h.layout.blocks(index, BLOCK)))]


def seeded_leecher(h: Harness, conn: Hashable = "s", peer: int = 2) -> list[Cmd]:
    """Admit a fast seed on ``conn`` that unchokes us; the commands of its unchoke."""
    h.admit(conn, peer)
    assert h.receive(conn, m.HaveAll()) == [Send(conn, [m.Interested()])]
    return h.receive(conn, m.Unchoke())


# -- in-memory connections between cores -------------------------------------------------------


#: What a connection delivers after its last message when the other end closed it.
EOF = object()


class Net:
    """Harnesses on one clock, joined by connections that deliver messages in order (TCP):
    a close reaches the other end after what was sent before it, like a FIN."""

    def __init__(self, clock: FakeClock, *, step_s: float = 0.001) -> None:
        self.clock = clock
        self.step_s = step_s
        self.nodes: list[Harness] = []
        #: (harness, conn) -> (the other harness, its conn), while open at that end
        self.links: dict[tuple[int, Hashable], tuple[Harness, Hashable]] = {}
        self.queues: dict[tuple[int, Hashable], list[object]] = {}
        self.log: dict[int, list[Cmd]] = {}
        self.closed: list[tuple[Hashable, str]] = []

    def add(self, h: Harness) -> Harness:
        assert h.clock is self.clock
        self.nodes.append(h)
        self.log[id(h)] = []
        return h

    def connect(self, a: Harness, a_conn: Hashable, b: Harness, b_conn: Hashable) -> None:
        """``a`` dials ``b``: both handshakes cross (``a``'s connection is outgoing)."""
        self.links[(id(a), a_conn)] = (b, b_conn)
        self.links[(id(b), b_conn)] = (a, a_conn)
        self.queues[(id(a), a_conn)] = []
        self.queues[(id(b), b_conn)] = []
        a.core.connection_opened(a_conn)
        hs_a = m.Handshake(a.core.reserved, TASK, a.core.peer_id)
        hs_b = m.Handshake(b.core.reserved, TASK, b.core.peer_id)
        if not b.core.peer_connected(b_conn, hs_a, outgoing=False, address="a"):
            self.close(b, b_conn, "refused")
        if not a.core.peer_connected(a_conn, hs_b, outgoing=True, address="b"):
            self.close(a, a_conn, "refused")

    def close(self, h: Harness, conn: Hashable, reason: str) -> None:
        """``h`` closes ``conn``: gone at once there, at the other end once delivered."""
        link = self.links.pop((id(h), conn), None)
        if link is None:
            return
        other, other_conn = link
        self.closed.append((conn, reason))
        self.queues[(id(other), other_conn)].append(EOF)
        h.core.peer_closed(conn, reason)

    def pump(self) -> bool:
        """Carry out what every core asked; False when none asked anything."""
        busy = False
        for h in self.nodes:
            busy |= self._carry_out(h)
        return busy

    def deliver(self, h: Harness, conn: Hashable, count: int = 1) -> None:
        """The next ``count`` messages arriving on ``conn`` at ``h`` (then everyone's pump)."""
        for _ in range(count):
            self._deliver(h, conn)
            self.pump()

    def _deliver(self, h: Harness, conn: Hashable) -> None:
        message = self.queues[(id(h), conn)].pop(0)
        if message is EOF:
            if self.links.pop((id(h), conn), None) is not None:
                h.core.peer_closed(conn, "closed by the remote")
            return
        assert isinstance(message, m.Message)
        if isinstance(message, m.Piece):
            sink = h.core.block_sink(conn, message.index, message.begin, len(message.data))
            if sink is not None:
                sink[:] = message.data
        h.core.message_received(conn, message)

    def _carry_out(self, h: Harness) -> bool:
        busy = False
        woken: list[Hashable] = []
        while commands := h.take():
            busy = True
            for c in commands:
                if isinstance(c, Send):
                    self._send(h, c.conn, list(c.messages))
                elif isinstance(c, Close):
                    self.close(h, c.conn, c.reason)
                elif isinstance(c, Verify):
                    digest = hashlib.sha256(c.buffer).digest()
                    good = digest == c.expected
                    if good:
                        h.stored[h.span(c.index)] = c.buffer
                    h.core.piece_checked(c.index, c.buffer, digest if good else None)
                elif isinstance(c, WakeUploader):
                    woken.append(c.conn)
                else:
                    self.log[id(h)].append(c)
            for conn in woken:
                self._upload(h, conn)
            woken.clear()
        return busy

    def _send(self, h: Harness, conn: Hashable, messages: list[m.Message]) -> None:
        link = self.links.get((id(h), conn))
        if link is not None:
            other, other_conn = link
            self.queues[(id(other), other_conn)].extend(messages)

    def _upload(self, h: Harness, conn: Hashable) -> None:
        """The uploader of ``conn``: serve what is queued (haves owed go first)."""
        while (block := h.core.next_upload(conn)) is not None:
            if not h.core.upload_starting(conn, block):
                continue
            for c in h.take():  # the haves owed, then the block
                assert isinstance(c, Send)
                self._send(h, c.conn, list(c.messages))
            start = block.index * PIECE + block.begin
            payload = bytes(h.stored[start : start + block.length])
            self._send(h, conn, [m.Piece(block.index, block.begin, payload)])
            h.core.block_uploaded(conn, block)

    def run(self, *, max_steps: int = 100_000) -> None:
        """Deliver every message, one per connection per step, until nothing moves."""
        for _ in range(max_steps):
            busy = self.pump()
            for (key, conn), queue in list(self.queues.items()):
                if queue and (key, conn) in self.links:
                    self._deliver(next(n for n in self.nodes if id(n) == key), conn)
                    busy = True
            self.clock.advance(self.step_s)
            for h in self.nodes:
                if h.core.deadline <= self.clock.now_s:
                    h.core.timer_fired()
            busy |= self.pump()
            if not busy:
                return
        raise AssertionError("the swarm does not settle")


# -- one dispatch ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        (m.KeepAlive(), []),
        (m.Choke(), []),
        (m.Unchoke(), []),  # not interested: nothing to ask
        (m.Interested(), [Send("p", [m.Unchoke()])]),
        (m.NotInterested(), []),  # choked already
        (m.Have(3), [Send("p", [m.Interested()])]),
        (m.Bitfield(b"\x10"), [Send("p", [m.Interested()])]),
        (m.HaveAll(), [Send("p", [m.Interested()])]),
        (m.HaveNone(), []),
        (m.Request(0, 0, BLOCK), [Send("p", [m.RejectRequest(0, 0, BLOCK)])]),  # choked
        (m.Cancel(0, 0, BLOCK), []),
        (m.Piece(0, 0, DATA[:BLOCK]), []),  # unsolicited: dropped
    ],
    ids=lambda x: type(x).__name__ if not isinstance(x, list) else "",
)
def test_every_message_type_reaches_its_handler(message: m.Message, expected: list[Cmd]) -> None:
    h = Harness()
    h.admit("p", 2)
    assert h.receive("p", message) == expected
    assert h.core.peer_count == 1


def test_each_handler_applies_its_message_to_the_session() -> None:
    h = Harness(have=[0])
    h.admit("p", 2)
    session = h.core._peers["p"].session
    h.receive("p", m.HaveNone(), m.Have(5), m.Interested())
    assert (list(session.peer_has), session.peer_interested, session.am_choking) == (
        [5],
        True,
        False,
    )
    assert h.receive("p", m.Request(0, 16, 16)) == [WakeUploader("p")]
    assert h.receive("p", m.Cancel(0, 16, 16)) == [Send("p", [m.RejectRequest(0, 16, 16)])]
    h.receive("p", m.Unchoke())
    assert session.peer_choking is False
    h.receive("p", m.Choke(), m.NotInterested())
    assert (session.peer_choking, session.peer_interested, session.am_choking) == (
        True,
        False,
        True,
    )


WITHOUT_FAST = "without the fast extension (BEP 6) negotiated"


@pytest.mark.parametrize(
    ("reserved", "messages", "reason"),
    [
        (FAST_LARGE, [m.Choke(), m.Bitfield(b"\xff")], "Bitfield after other messages"),
        (FAST_LARGE, [m.NotInterested(), m.HaveAll()], "HaveAll after other messages"),
        (LARGE_ONLY, [m.HaveNone()], f"have none {WITHOUT_FAST}"),
        (LARGE_ONLY, [m.HaveAll()], f"have all {WITHOUT_FAST}"),
        (LARGE_ONLY, [m.RejectRequest(0, 0, 16)], f"reject request {WITHOUT_FAST}"),
        (FAST_LARGE, [m.Request(8, 0, 16)], "request out of range: piece 8 begin 0 length 16"),
        (FAST_LARGE, [m.Request(7, 32, 16)], "request out of range: piece 7 begin 32 length 16"),
        (FAST_LARGE, [m.Have(8)], "have for piece 8 out of range"),
        (FAST_LARGE, [m.Bitfield(b"\xff\x00")], "bitfield is 2 bytes, expected 1 for 8 pieces"),
        (FAST_LARGE, [m.AuthChallenge(bytes(16))], "unexpected AuthChallenge after admission"),
        (FAST_LARGE, [m.AuthProof(bytes(32))], "unexpected AuthProof after admission"),
    ],
    ids=lambda x: x if isinstance(x, str) else "",
)
def test_a_message_the_peer_may_not_send_closes_only_its_connection(
    reserved: bytes, messages: list[m.Message], reason: str
) -> None:
    h = Harness()
    h.admit("bad", 2, reserved=reserved)
    h.admit("good", 3)
    h.receive("good", m.HaveAll())  # we are interested in it; it chokes us
    commands = h.receive("bad", *messages)
    assert commands == [Close("bad", f"protocol error: {reason}")]
    assert h.core.peer_ids() == [pid(3)]
    h.core.peer_closed("bad", "closed")  # the shell's report of the close changes nothing
    assert h.take() == []
    assert h.receive("good", m.Unchoke()) == [Send("good", [req(h, 0, 0), req(h, 0, 1)])]


def test_a_bitfield_after_a_keepalive_is_still_the_first_message() -> None:
    h = Harness()
    h.admit("p", 2)
    assert h.receive("p", m.KeepAlive(), m.Bitfield(b"\x01")) == [Send("p", [m.Interested()])]


def test_messages_of_a_connection_that_is_not_a_peer_are_ignored() -> None:
    h = Harness()
    assert h.receive("stranger", m.HaveAll(), m.Unchoke(), m.Request(0, 0, 16)) == []
    assert h.core.block_sink("stranger", 0, 0, 16) is None


def test_close_closes_every_connection_and_later_events_emit_nothing() -> None:
    h = Harness()
    seeded_leecher(h, "s")
    h.core.connection_opened("dialled")
    h.core.close()
    assert h.take() == [Close("dialled", "task closing"), Close("s", "task closing")]
    assert h.handshake("late", 5) is False
    h.core.piece_checked(0, bytearray(PIECE), None)
    assert h.take() == []


def test_after_close_the_timer_emits_nothing() -> None:
    h = Harness(have=[0])
    h.admit("p", 2)
    h.core.swarm.start()
    h.core.close()
    h.take()
    assert h.run_until(h.clock() + 60.0) == []
