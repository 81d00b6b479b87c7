"""The task core's swarm link and membership: when announces go, what an answer asks of us
(manifests, the origin assignment, dials), and which peers are dialled."""

from __future__ import annotations

from dataclasses import replace

from peerwire.commands import (
    Announce,
    Dial,
    FetchFromOrigin,
    FetchManifest,
    SupplyManifest,
    SwarmRefused,
)
from peerwire.coordination import AnnounceAnswer, PeerAddress
from peerwire.membership import REDIAL_S, RETRY_S, Membership
from tests.peerwire.test_core import CONFIG, DATA, PIECE, Harness, pid

NO_ORIGIN = FetchFromOrigin((), False)


def answer(
    *,
    interval_s: float = 30.0,
    min_interval_s: float = 10.0,
    peers: int | tuple[int, ...] = (),
    assignment: tuple[int, ...] = (),
    pieces_known: int | None = 8,
) -> AnnounceAnswer:
    numbers = range(1, peers + 1) if isinstance(peers, int) else peers
    return AnnounceAnswer(
        interval_s=interval_s,
        min_interval_s=min_interval_s,
        complete=1,
        incomplete=1,
        peers=tuple(PeerAddress(f"10.0.0.{n}", 6881) for n in numbers),
        assignment=assignment,
        pieces_known=pieces_known,
    )


def announces(h: Harness, until: float) -> list[tuple[float, Announce]]:
    """The announces the timer sends up to ``until`` (nothing else happens meanwhile)."""
    out = []
    for when, command in h.run_until(until):
        assert isinstance(command, Announce), command
        out.append((when, command))
    return out


def started(h: Harness) -> float:
    """``swarm.start()`` and its announce, sent now; the time."""
    h.core.swarm.start()
    now = h.clock()
    assert h.core.deadline == now
    assert h.fire(now) == [Announce("started")]
    return now


# -- announce timing ---------------------------------------------------------------------------


def test_nothing_is_announced_before_start_and_started_goes_at_once() -> None:
    h = Harness()
    begin = h.clock()
    assert h.run_until(begin + 60.0) == []
    h.core.swarm.start()
    assert h.core.deadline <= begin + 60.0  # due: the shell's timer fires at once
    assert h.fire(begin + 60.0) == [Announce("started")]
    assert h.run_until(begin + 600.0) == []  # nothing more until it is answered


def test_the_next_announce_goes_at_the_interval() -> None:
    h = Harness(have=[0])
    sent = started(h)
    h.clock.now_s = sent + 0.2
    h.core.swarm.announced(answer(interval_s=30.0, min_interval_s=10.0))
    assert h.take() == [NO_ORIGIN]
    assert announces(h, sent + 30.1) == []
    assert announces(h, sent + 30.2) == [(sent + 30.2, Announce(""))]


def test_a_peer_with_nothing_to_do_announces_again_at_min_interval() -> None:
    h = Harness()  # no piece, no assignment: an assignment may come as a crowd arrives
    sent = started(h)
    h.core.swarm.announced(answer(interval_s=30.0, min_interval_s=10.0))
    h.take()
    assert announces(h, sent + 10.0) == [(sent + 10.0, Announce(""))]


def test_a_new_assignment_asks_for_an_announce_no_sooner_than_min_interval() -> None:
    h = Harness()
    sent = started(h)
    h.clock.now_s = sent + 0.5
    h.core.swarm.announced(answer(assignment=(3, 4)))
    assert h.take() == [FetchFromOrigin((3, 4), False)]
    assert announces(h, sent + 9.9) == []
    assert announces(h, sent + 10.0) == [(sent + 10.0, Announce(""))]


def test_the_first_assignment_done_is_announced_at_once_later_ones_after_min_interval() -> None:
    h = Harness()
    sent = started(h)
    h.core.swarm.announced(answer(assignment=(3, 4)))
    h.take()
    h.clock.now_s = sent + 1.0
    h.core.swarm.origin_wants_more()  # the first assignment is done: urgent
    assert h.core.swarm.deadline == sent + 1.0
    assert h.fire(sent + 1.0) == [Announce("")]
    h.core.swarm.announced(answer(assignment=(5, 6)))  # a second assignment
    assert h.take() == [FetchFromOrigin((5, 6), False)]
    h.clock.now_s = sent + 2.0
    h.core.swarm.origin_wants_more()  # not the first: min interval after the last announce
    assert announces(h, sent + 10.9) == []
    assert announces(h, sent + 11.0) == [(sent + 11.0, Announce(""))]


def test_asking_while_an_announce_is_under_way_sends_one_after_its_answer() -> None:
    h = Harness(have=[0])
    sent = started(h)
    h.core.swarm.origin_wants_more()  # in flight: nothing now
    assert announces(h, sent + 5.0) == []
    h.core.swarm.announced(answer(interval_s=60.0, min_interval_s=10.0))
    h.take()
    assert announces(h, sent + 10.0) == [(sent + 10.0, Announce(""))]


def test_a_failing_coordinator_is_retried_every_retry_s() -> None:
    h = Harness(have=[0])
    sent = started(h)
    h.core.swarm.announce_failed("connection refused")
    assert h.take() == []
    assert announces(h, sent + RETRY_S) == [(sent + RETRY_S, Announce("started"))]
    h.core.swarm.announce_failed("connection refused")
    assert announces(h, sent + 2 * RETRY_S) == [(sent + 2 * RETRY_S, Announce("started"))]
    assert h.core.swarm.membership.failing
    answered = h.clock()
    h.core.swarm.announced(answer(interval_s=30.0, min_interval_s=1.0))
    assert not h.core.swarm.membership.failing
    h.take()
    assert announces(h, answered + 30.0) == [(answered + 30.0, Announce(""))]
    h.core.swarm.announce_failed("timeout")  # registered: retried as often
    assert announces(h, answered + 32.0) == [(answered + 32.0, Announce(""))]


def test_a_refusal_before_registration_is_swarm_refused_and_ends_the_announces() -> None:
    h = Harness()
    sent = started(h)
    h.core.swarm.announce_refused("no cluster secret")
    assert h.take() == [SwarmRefused("no cluster secret")]
    assert h.run_until(sent + 100.0) == []  # ticks only


def test_a_refusal_once_registered_is_retried_like_a_failure() -> None:
    h = Harness(have=[0])
    sent = started(h)
    h.core.swarm.announced(answer(interval_s=30.0, min_interval_s=1.0))
    h.take()
    assert announces(h, sent + 30.0) == [(sent + 30.0, Announce(""))]
    h.core.swarm.announce_refused("overloaded")
    assert h.take() == []
    assert announces(h, sent + 30.0 + RETRY_S) == [(sent + 30.0 + RETRY_S, Announce(""))]


# -- what an answer asks of us -----------------------------------------------------------------


def test_a_coordinator_knowing_more_digests_than_us_is_asked_for_its_manifest() -> None:
    h = Harness(known=[0, 1])
    started(h)
    h.core.swarm.announced(answer(pieces_known=3))
    assert h.take() == [FetchManifest(), NO_ORIGIN]


def test_a_coordinator_knowing_no_more_than_us_is_not_asked() -> None:
    h = Harness(known=[0, 1])
    started(h)
    h.core.swarm.announced(answer(pieces_known=2))
    assert h.take() == [NO_ORIGIN]


def test_a_coordinator_without_a_manifest_is_supplied_ours() -> None:
    h = Harness()
    started(h)
    h.core.swarm.announced(answer(pieces_known=None))
    assert h.take() == [SupplyManifest(), NO_ORIGIN]


def test_the_assignment_goes_to_the_origin_fetcher_with_its_direction() -> None:
    h = Harness()
    started(h)
    h.core.swarm.announced(answer(assignment=(5, 4, 3)))
    assert h.take() == [FetchFromOrigin((5, 4, 3), True)]
    h.core.swarm.announced(answer(assignment=(6,)))
    assert h.take() == [FetchFromOrigin((6,), False)]


def test_progress_says_what_we_have_and_what_is_left() -> None:
    h = Harness(have=[0, 7])  # the last piece is 40 bytes
    h.core.swarm.port = 7000
    progress = h.core.swarm.progress()
    assert (progress.peer_id, progress.port) == (pid(1), 7000)
    assert progress.left_bytes == len(DATA) - PIECE - 40
    assert progress.have == b"\x81" and progress.can_source
    assert Harness(have=range(8)).core.swarm.progress().left_bytes == 0


# -- dialling ----------------------------------------------------------------------------------


def test_dials_are_bounded_by_dial_peers_counting_dials_under_way() -> None:
    h = Harness(config=replace(CONFIG, dial_peers=3))
    started(h)
    h.core.swarm.announced(answer(peers=5))
    assert h.take() == [
        NO_ORIGIN,
        Dial("10.0.0.1", 6881),
        Dial("10.0.0.2", 6881),
        Dial("10.0.0.3", 6881),
    ]
    h.core.swarm.announced(answer(peers=5))
    assert h.take() == [NO_ORIGIN]  # three dials under way
    # Two failed; those left out for want of a slot were not remembered as dialled.
    h.core.swarm.dial_finished()
    h.core.swarm.dial_finished()
    h.core.swarm.announced(answer(peers=5))
    assert h.take() == [NO_ORIGIN, Dial("10.0.0.4", 6881), Dial("10.0.0.5", 6881)]


def test_peers_and_connections_not_yet_admitted_take_dial_slots() -> None:
    h = Harness(config=replace(CONFIG, dial_peers=4))
    h.admit("a", 20)
    h.admit("b", 21)
    h.core.connection_opened("c")
    started(h)
    h.core.swarm.announced(answer(peers=5))
    assert h.take() == [NO_ORIGIN, Dial("10.0.0.1", 6881)]


def test_dial_peers_is_capped_by_max_peers() -> None:
    h = Harness(config=replace(CONFIG, dial_peers=8, max_peers=2))
    started(h)
    h.core.swarm.announced(answer(peers=5))
    assert [c for c in h.take() if isinstance(c, Dial)] == [
        Dial("10.0.0.1", 6881),
        Dial("10.0.0.2", 6881),
    ]


def test_an_address_is_not_dialled_again_within_redial_s() -> None:
    h = Harness()
    sent = started(h)
    h.core.swarm.announced(answer(peers=(1,)))
    assert h.take() == [NO_ORIGIN, Dial("10.0.0.1", 6881)]
    h.core.swarm.dial_finished()  # it failed
    h.clock.now_s = sent + REDIAL_S - 0.1
    h.core.swarm.announced(answer(peers=(1, 2)))
    assert h.take() == [NO_ORIGIN, Dial("10.0.0.2", 6881)]
    h.core.swarm.dial_finished()
    h.clock.now_s = sent + REDIAL_S
    h.core.swarm.announced(answer(peers=(1, 2)))
    assert h.take() == [NO_ORIGIN, Dial("10.0.0.1", 6881)]


def test_an_asked_announce_goes_when_due_with_a_clock_that_moves_at_every_reading() -> None:
    """A real clock is a little later at each reading: an announce asked for is due "now" and
    must go at the next poll, not wait for the interval (one reading of the clock per poll)."""
    readings = iter(range(10_000))
    membership = Membership(clock=lambda: 1000.0 + next(readings) * 1e-6, dial_limit=8)
    first = membership.poll()
    assert first == Announce("started")
    membership.answered(answer(interval_s=60.0), has_pieces=True, complete=False)
    assert membership.poll() is None  # the interval is not over
    membership.ask(urgent=True)
    assert membership.poll() == Announce("")
