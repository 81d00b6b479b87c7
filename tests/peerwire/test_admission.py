"""Admission through the task core: max_peers, bans, one connection per peer id when two peers
dial each other, the cluster-secret exchange, handshake and authentication timeouts."""

from __future__ import annotations

import itertools
from dataclasses import replace

import pytest

from peerwire import messages as m
from peerwire.auth import auth_proof
from peerwire.commands import Close, Command, Send
from peerwire.ids import PeerId
from tests.peerwire.test_core import (
    CONFIG,
    DATA,
    FAST_LARGE,
    TASK,
    FakeClock,
    Harness,
    Net,
    pid,
)

SECRET = b"s" * 32
AUTH = m.reserved_with(m.FAST_EXTENSION_BIT, m.LARGE_BLOCKS_BIT, m.AUTH_BIT)


def challenge_of(commands: list[Command[object]], conn: object) -> bytes:
    """The nonce of the ``AuthChallenge`` we sent on ``conn``."""
    (command,) = commands
    assert isinstance(command, Send) and command.conn == conn
    (message,) = command.messages
    assert isinstance(message, m.AuthChallenge)
    return message.nonce


def proof(nonce: bytes, prover: PeerId, secret: bytes = SECRET) -> m.AuthProof:
    return m.AuthProof(auth_proof(secret, TASK, nonce, prover))


# -- limits and bans ---------------------------------------------------------------------------


def test_at_most_max_peers_are_admitted_and_a_leaving_peer_frees_a_place() -> None:
    h = Harness(config=replace(CONFIG, max_peers=2))
    assert h.admit("a", 2) == [Send("a", [m.HaveNone()])]
    h.admit("b", 3)
    assert h.handshake("c", 4) is False
    assert h.take() == []
    h.core.peer_closed("a", "gone")
    h.take()
    assert h.handshake("c", 4) is True
    assert sorted(h.core.peer_ids()) == [pid(3), pid(4)]


def test_a_banned_peer_id_is_refused() -> None:
    h = Harness()
    h.core.admission.ban(pid(5))
    assert h.handshake("x", 5) is False
    assert h.take() == [] and h.core.peer_count == 0
    assert h.handshake("y", 6) is True


def test_our_availability_goes_out_at_admission() -> None:
    assert Harness().admit("p", 2) == [Send("p", [m.HaveNone()])]
    assert Harness(have=range(8)).admit("p", 2) == [Send("p", [m.HaveAll()])]
    assert Harness(have=[0, 7]).admit("p", 2) == [Send("p", [m.Bitfield(b"\x81")])]
    stock = m.reserved_with(m.LARGE_BLOCKS_BIT)
    assert Harness().admit("p", 2, reserved=stock) == []  # BEP 3: nothing to say
    assert Harness(have=range(8)).admit("p", 2, reserved=stock) == [
        Send("p", [m.Bitfield(b"\xff")])
    ]


def test_a_second_connection_of_an_admitted_peer_in_the_same_direction_is_refused() -> None:
    for ours in (1, 9):  # whether we are the smaller peer id or not
        h = Harness(peer_id=pid(ours))
        h.admit("first", 5)
        assert h.handshake("second", 5) is False
        assert h.take() == []
        assert h.core.peer_count == 1


# -- two peers dialling each other -------------------------------------------------------------


@pytest.mark.parametrize(
    ("order_at_a", "order_at_b"),
    list(itertools.product(["12", "21"], repeat=2)),
)
def test_when_two_peers_dial_each_other_the_one_the_smaller_id_dialled_survives_at_both_ends(
    order_at_a: str, order_at_b: str
) -> None:
    """A (id 1) dials B (id 9) on connection 1, B dials A on connection 2; each end sees the
    two handshakes in either order. Both keep connection 1, whatever the order."""
    a, b = Harness(peer_id=pid(1)), Harness(peer_id=pid(9))
    gone: dict[str, set[str]] = {"a": set(), "b": set()}
    for name, h, order, other, dialled in (
        ("a", a, order_at_a, 9, "1"),
        ("b", b, order_at_b, 1, "2"),
    ):
        for conn in order:
            if not h.handshake(conn, other, outgoing=conn == dialled):
                gone[name].add(conn)  # refused: the shell closes it
            for command in h.take():
                if isinstance(command, Close):
                    assert command.reason == "duplicate connection (both peers dialled)"
                    gone[name].add(command.conn)
    assert gone == {"a": {"2"}, "b": {"2"}}
    assert a.core.peer_ids() == [pid(9)] and b.core.peer_ids() == [pid(1)]


def test_two_cores_dialling_each_other_keep_the_connection_the_smaller_id_dialled() -> None:
    clock = FakeClock()
    net = Net(clock)
    a = net.add(Harness(have=range(8), peer_id=pid(1), clock=clock))
    b = net.add(Harness(peer_id=pid(9), clock=clock))
    net.connect(b, "b2", a, "a2")  # b dials first
    net.connect(a, "a1", b, "b1")
    net.run()
    duplicate = "duplicate connection (both peers dialled)"
    assert sorted(net.closed) == [("a2", duplicate), ("b2", duplicate)]
    assert (a.core.peer_count, b.core.peer_count) == (1, 1)
    assert bytes(b.stored) == DATA


def test_the_connection_displaced_by_a_duplicate_leaves_nothing_behind() -> None:
    b = Harness(peer_id=pid(9))
    b.handshake("2", 1, outgoing=True)  # ours, dialled by the larger id
    b.receive("2", m.HaveAll(), m.Unchoke())
    assert b.core.scheduler.inflight("2") == 2
    assert b.handshake("1", 1, outgoing=False) is True  # dialled by the smaller id: kept
    commands = b.take()
    assert commands[0] == Close("2", "duplicate connection (both peers dialled)")
    assert commands[1:] == [Send("1", [m.HaveNone()])]
    assert b.core.scheduler.inflight("2") == 0
    b.core.peer_closed("2", "closed")  # the shell reports the close: nothing more
    assert b.take() == [] and b.core.peer_ids() == [pid(1)]
    assert b.receive("1", m.HaveAll())[0] == Send("1", [m.Interested()])


# -- the cluster secret ------------------------------------------------------------------------


def test_a_peer_is_admitted_only_after_its_proof_of_the_secret_checks_out() -> None:
    h = Harness(secret=SECRET, peer_id=pid(1))
    assert h.handshake("p", 2, reserved=AUTH) is True
    nonce = challenge_of(h.take(), "p")
    assert len(nonce) == m.AUTH_NONCE_BYTES
    assert h.core.peer_count == 0 and h.core.connecting_count == 1
    # Its challenge is answered with our proof; a keep-alive meanwhile is fine.
    theirs = bytes(range(16))
    assert h.receive("p", m.AuthChallenge(theirs), m.KeepAlive()) == [
        Send("p", [proof(theirs, pid(1))])
    ]
    assert h.core.peer_count == 0
    assert h.receive("p", proof(nonce, pid(2))) == [Send("p", [m.HaveNone()])]
    assert (h.core.peer_count, h.core.connecting_count) == (1, 0)
    assert h.receive("p", m.HaveAll()) == [Send("p", [m.Interested()])]


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        (proof(bytes(16), pid(2)), "wrong cluster secret"),  # not our nonce
        ("other secret", "wrong cluster secret"),
        ("proof of another id", "wrong cluster secret"),
        (m.HaveAll(), "message before authentication"),
        (m.Interested(), "message before authentication"),
    ],
)
def test_a_wrong_proof_or_a_message_before_the_proof_closes(message: object, reason: str) -> None:
    h = Harness(secret=SECRET)
    h.handshake("p", 2, reserved=AUTH)
    nonce = challenge_of(h.take(), "p")
    if message == "other secret":
        message = proof(nonce, pid(2), secret=b"x" * 32)
    elif message == "proof of another id":
        message = proof(nonce, pid(3))
    assert isinstance(message, m.AuthProof | m.HaveAll | m.Interested)
    assert h.receive("p", message) == [Close("p", reason)]
    assert (h.core.peer_count, h.core.connecting_count) == (0, 0)
    assert h.receive("p", proof(nonce, pid(2))) == []  # forgotten


def test_a_connection_closed_while_authenticating_is_forgotten() -> None:
    h = Harness(secret=SECRET)
    h.handshake("p", 2, reserved=AUTH)
    nonce = challenge_of(h.take(), "p")
    h.core.peer_closed("p", "reset")
    assert h.take() == [] and h.core.connecting_count == 0
    assert h.receive("p", proof(nonce, pid(2))) == [] and h.core.peer_count == 0


def test_a_peer_without_the_auth_bit_is_refused_when_we_have_a_secret() -> None:
    h = Harness(secret=SECRET)
    assert h.handshake("p", 2, reserved=FAST_LARGE) is False
    assert h.take() == [] and h.core.connecting_count == 0


def test_without_a_secret_a_peer_setting_the_auth_bit_is_admitted_at_once() -> None:
    h = Harness()
    assert h.admit("p", 2, reserved=AUTH) == [Send("p", [m.HaveNone()])]


def test_a_proven_peer_is_refused_when_the_task_filled_up_meanwhile() -> None:
    h = Harness(secret=SECRET, config=replace(CONFIG, max_peers=1))
    assert h.handshake("p", 2, reserved=AUTH) is True
    nonce_p = challenge_of(h.take(), "p")
    assert h.handshake("q", 3, reserved=AUTH) is True  # nobody admitted yet
    nonce_q = challenge_of(h.take(), "q")
    assert h.receive("p", proof(nonce_p, pid(2))) == [Send("p", [m.HaveNone()])]
    assert h.receive("q", proof(nonce_q, pid(3))) == [Close("q", "refused by the task")]
    assert h.core.peer_ids() == [pid(2)]


def test_two_cores_with_the_same_secret_admit_each_other_and_trade() -> None:
    clock = FakeClock()
    net = Net(clock)
    seed = net.add(Harness(have=range(8), peer_id=pid(1), secret=SECRET, clock=clock))
    leech = net.add(Harness(peer_id=pid(2), secret=SECRET, clock=clock))
    net.connect(leech, "to-seed", seed, "to-leech")
    net.run()
    assert bytes(leech.stored) == DATA and net.closed == []


def test_two_cores_with_different_secrets_close_the_connection() -> None:
    clock = FakeClock()
    net = Net(clock)
    a = net.add(Harness(have=range(8), peer_id=pid(1), secret=SECRET, clock=clock))
    b = net.add(Harness(peer_id=pid(2), secret=b"t" * 32, clock=clock))
    net.connect(b, "b-a", a, "a-b")
    net.run()
    assert sorted(net.closed) == [("a-b", "wrong cluster secret"), ("b-a", "wrong cluster secret")]
    assert a.core.peer_count == b.core.peer_count == 0


def test_with_a_secret_two_peers_dialling_each_other_keep_one_connection() -> None:
    clock = FakeClock()
    net = Net(clock)
    a = net.add(Harness(peer_id=pid(1), secret=SECRET, clock=clock))
    b = net.add(Harness(peer_id=pid(9), secret=SECRET, clock=clock))
    net.connect(a, "a1", b, "b1")  # connection 1, dialled by a (the smaller id)
    net.connect(b, "b2", a, "a2")  # connection 2, dialled by b
    net.pump()  # four challenges on their way
    net.deliver(b, "b1")  # a's challenge on 1: b's proof follows it
    net.deliver(a, "a1", 2)  # b's challenge, then b's proof on 1: a admits b on 1
    net.deliver(a, "a2")  # b's challenge on 2: a's proof follows
    net.deliver(b, "b2", 2)  # a's challenge and proof on 2: b admits a on 2
    # The proofs still under way on the other connection arrive before either close.
    net.deliver(a, "a2")
    net.deliver(b, "b1")
    net.run()
    assert (a.core.peer_count, b.core.peer_count) == (1, 1)


# -- timeouts ----------------------------------------------------------------------------------


def test_a_dialled_connection_without_a_handshake_in_time_is_closed() -> None:
    h = Harness()  # handshake_timeout_s=10, a tick every 0.5 s
    start = h.clock()
    h.core.connection_opened("d")
    assert h.core.connecting_count == 1
    assert h.run_until(start + 10.0) == []
    assert h.run_until(start + 10.5) == [(start + 10.5, Close("d", "no handshake in time"))]
    assert h.core.connecting_count == 0
    assert h.run_until(start + 30.0) == []


def test_a_handshake_in_time_stops_the_handshake_timeout() -> None:
    h = Harness(config=replace(CONFIG, keepalive_interval_s=100.0))
    start = h.clock()
    h.core.connection_opened("d")
    h.clock.now_s = start + 9.0
    assert h.handshake("d", 2, outgoing=True) is True
    h.take()
    assert h.run_until(start + 30.0) == []
    assert h.core.peer_count == 1


def test_a_connection_not_proving_the_secret_in_time_is_closed() -> None:
    h = Harness(secret=SECRET)
    start = h.clock()
    h.handshake("p", 2, reserved=AUTH)
    h.take()
    h.receive("p", m.AuthChallenge(bytes(16)))  # it answers nothing
    assert h.run_until(start + 10.5) == [(start + 10.5, Close("p", "no authentication in time"))]
    assert h.core.connecting_count == 0
