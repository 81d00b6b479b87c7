"""TaskCore, downloading: interest, requests, the pipeline, verification, strikes and bans,
endgame, timeouts, chokes and rejects, the task-wide bounds, a rate-limited download."""

from __future__ import annotations

from dataclasses import replace

import pytest

from peerwire import messages as m
from peerwire.commands import Close, PieceDone, ReportPeer, Send, Verify
from peerwire.downloading import MAX_PIECES_VERIFYING
from tests.peerwire.test_core import (
    BLOCK,
    CONFIG,
    DATA,
    LARGE_ONLY,
    PIECE,
    Harness,
    pid,
    piece_requests,
    req,
    requests,
    seeded_leecher,
    verifies,
)

#: A pipeline of exactly one piece (four blocks), whatever the rate.
FIXED4 = replace(CONFIG, min_pipeline_depth=4, pipeline_depth=4)


# -- interest ----------------------------------------------------------------------------------


def test_interest_follows_the_pieces_a_peer_has_that_we_lack() -> None:
    h = Harness(have=[0, 1])
    h.admit("p", 2)
    assert h.receive("p", m.HaveNone()) == []
    assert h.receive("p", m.Have(1)) == []  # we have it
    assert h.receive("p", m.Have(2)) == [Send("p", [m.Interested()])]
    assert h.receive("p", m.Have(3)) == []  # interested already


def test_interest_ends_when_the_last_piece_a_peer_could_give_is_verified() -> None:
    h = Harness(config=FIXED4)
    h.admit("p", 2)
    h.receive("p", m.Bitfield(b"\x80"), m.Unchoke())  # piece 0 only
    commands = h.serve("p", piece_requests(h, 0))
    (verify,) = verifies(commands)
    assert h.check(verify) == [Send("p", [m.NotInterested()]), PieceDone(0)]


def test_no_requests_while_choked_or_not_interested() -> None:
    h = Harness()
    h.admit("p", 2)
    assert h.receive("p", m.Unchoke()) == []  # nothing it has that we want
    assert h.receive("p", m.Choke(), m.Have(0)) == [Send("p", [m.Interested()])]
    # Interested but choked: nothing asked until the unchoke.
    assert h.receive("p", m.Unchoke()) == [Send("p", [req(h, 0, 0), req(h, 0, 1)])]


# -- the pipeline ------------------------------------------------------------------------------


def test_the_pipeline_starts_at_min_depth_and_grows_with_the_measured_rate() -> None:
    data = DATA * 8  # 64 pieces, 256 blocks
    h = Harness(data)
    assert requests(seeded_leecher(h)) == [req(h, 0, 0), req(h, 0, 1)]
    h.clock.advance(0.05)
    # One block in: no rate yet (a sample needs a pipeline's worth), the slot is refilled.
    assert requests(h.receive("s", h.piece(0, 0))) == [req(h, 0, 2)]
    h.clock.advance(0.05)
    # Two blocks of 16 bytes in 0.1 s: 320 B/s, 20 blocks a second (target 1 s): depth 20.
    commands = h.receive("s", h.piece(0, 1))
    assert h.core._peers["s"].pipeline.rate_bps == pytest.approx(320)
    assert len(requests(commands)) == 19
    assert h.core.scheduler.inflight("s") == 20


def test_the_pipeline_never_exceeds_pipeline_depth() -> None:
    h = Harness(DATA * 8, config=replace(CONFIG, pipeline_depth=6))
    seeded_leecher(h)
    h.clock.advance(0.001)
    h.receive("s", h.piece(0, 0))
    h.clock.advance(0.001)
    h.receive("s", h.piece(0, 1))  # 16 kB/s: a thousand blocks a second
    assert h.core.scheduler.inflight("s") == 6


# -- verification ------------------------------------------------------------------------------


def test_a_complete_piece_is_verified_against_its_digest_then_announced() -> None:
    h = Harness(config=FIXED4)
    commands = seeded_leecher(h)
    commands = h.serve("s", requests(commands))
    (verify,) = verifies(commands)
    assert (verify.index, bytes(verify.buffer), verify.expected) == (0, DATA[:PIECE], h.digests[0])
    assert requests(commands) == piece_requests(h, 1)  # refilled block by block
    assert h.check(verify) == [PieceDone(0)]
    assert h.stored[:PIECE] == DATA[:PIECE]
    assert 0 in h.core.have and h.core.stats.pieces_verified == 1


def test_the_verify_backlog_bound_holds_requests_until_a_piece_is_checked() -> None:
    h = Harness(config=FIXED4)
    outstanding = requests(seeded_leecher(h))
    pending: list[Verify] = []
    while outstanding:
        commands = h.receive("s", h.piece(outstanding[0].index, outstanding[0].begin // BLOCK))
        outstanding = outstanding[1:] + requests(commands)
        pending += verifies(commands)
    # Four pieces wait for verification: the blocks asked before the bound was hit came in,
    # nothing more was asked.
    assert [v.index for v in pending] == list(range(MAX_PIECES_VERIFYING))
    assert h.core.scheduler.inflight("s") == 0
    assert h.fire(h.clock() + 0.5) == []  # the tick does not lift the bound either
    # One checked: the backlog is under the bound, a pipeline's worth is asked again.
    assert h.check(pending[0]) == [
        PieceDone(0),
        Send("s", [req(h, 4, 3), req(h, 5, 0), req(h, 5, 1), req(h, 5, 2)]),
    ]


def test_a_piece_failing_verification_is_asked_again_and_its_sender_gets_a_strike() -> None:
    h = Harness(config=FIXED4)
    h.admit("p", 2)
    h.receive("p", m.Bitfield(b"\x80"), m.Unchoke())  # piece 0 only
    (verify,) = verifies(h.serve("p", piece_requests(h, 0), corrupt=True))
    assert h.check(verify) == [Send("p", piece_requests(h, 0))]
    assert h.core._peers["p"].strikes == 1
    assert h.core.stats.pieces_failed == 1 and 0 not in h.core.have
    (verify,) = verifies(h.serve("p", piece_requests(h, 0)))
    assert h.check(verify) == [Send("p", [m.NotInterested()]), PieceDone(0)]


def test_a_peer_that_alone_sent_ban_after_bad_pieces_corrupt_pieces_is_banned_and_reported() -> (
    None
):
    h = Harness(config=FIXED4)  # ban_after_bad_pieces=2
    h.admit("liar", 2)
    h.receive("liar", m.Bitfield(b"\xc0"), m.Unchoke())  # pieces 0 and 1
    first = verifies(h.serve("liar", piece_requests(h, 0), corrupt=True))
    second = verifies(h.serve("liar", piece_requests(h, 1), corrupt=True))
    assert h.check(first[0]) == [Send("liar", piece_requests(h, 0))]  # a strike: asked again
    reason = "sent 2 corrupt pieces"
    assert h.check(second[0]) == [
        ReportPeer(pid(2), "10.0.0.2:6881", reason),
        Close("liar", f"banned: {reason}"),
    ]
    assert h.core.stats.peers_banned == [str(pid(2))]
    assert h.core.peer_count == 0
    assert h.handshake("again", 2) is False  # refused when met again
    assert h.take() == []


def test_pieces_failing_after_a_ban_do_not_ban_or_report_again() -> None:
    h = Harness(config=replace(FIXED4, ban_after_bad_pieces=1))
    h.admit("liar", 2)
    h.receive("liar", m.Bitfield(b"\xc0"), m.Unchoke())
    first = verifies(h.serve("liar", piece_requests(h, 0), corrupt=True))
    second = verifies(h.serve("liar", piece_requests(h, 1), corrupt=True))
    assert [type(c) for c in h.check(first[0])] == [ReportPeer, Close]
    assert h.check(second[0]) == []
    assert h.core.stats.peers_banned == [str(pid(2))]
    assert h.core.stats.pieces_failed == 2


def test_a_piece_from_several_senders_that_fails_blames_none_of_them() -> None:
    h = Harness(config=replace(CONFIG, ban_after_bad_pieces=1))
    for conn, peer in (("a", 2), ("b", 3)):
        h.admit(conn, peer)
        h.receive(conn, m.Bitfield(b"\x80"))  # piece 0 only
    assert requests(h.receive("a", m.Unchoke())) == [req(h, 0, 0), req(h, 0, 1)]
    assert requests(h.receive("b", m.Unchoke())) == [req(h, 0, 2), req(h, 0, 3)]
    h.serve("a", [req(h, 0, 0), req(h, 0, 1)], corrupt=True)
    (verify,) = verifies(h.serve("b", [req(h, 0, 2), req(h, 0, 3)]))
    commands = h.check(verify)
    assert not any(isinstance(c, ReportPeer | Close) for c in commands)
    assert sorted(r.begin for r in requests(commands)) == [0, 16, 32, 48]  # asked again
    assert h.core.peer_count == 2 and h.core.stats.pieces_failed == 1


def test_blocks_of_a_banned_peer_are_dropped_from_unfinished_pieces() -> None:
    h = Harness(config=replace(CONFIG, ban_after_bad_pieces=1, min_pipeline_depth=5))
    h.admit("liar", 2)
    h.receive("liar", m.HaveAll())
    asked = requests(h.receive("liar", m.Unchoke()))
    assert asked == [*piece_requests(h, 0), req(h, 1, 0)]
    (verify,) = verifies(h.serve("liar", [asked[4], *asked[:4]], corrupt=True))
    h.check(verify)  # banned; its block of piece 1 is open again
    h.admit("honest", 3)
    h.receive("honest", m.HaveAll())
    assert requests(h.receive("honest", m.Unchoke()))[:1] == [req(h, 1, 0)]


# -- endgame -----------------------------------------------------------------------------------


def test_endgame_duplicates_a_block_and_cancels_the_copy_that_lost() -> None:
    h = Harness(DATA[:PIECE], config=replace(CONFIG, endgame_patience_s=0))  # one piece
    for conn, peer in (("a", 2), ("b", 3)):
        h.admit(conn, peer)
        h.receive(conn, m.HaveAll())
    assert requests(h.receive("a", m.Unchoke())) == [req(h, 0, 0), req(h, 0, 1)]
    assert requests(h.receive("b", m.Unchoke())) == [req(h, 0, 2), req(h, 0, 3)]
    assert h.core.scheduler.in_endgame
    # A block in from a: its free slot takes a duplicate of b's oldest request.
    assert h.receive("a", h.piece(0, 0)) == [Send("a", [req(h, 0, 2)])]
    # a's copy wins: b is sent a cancel, and its freed slot duplicates what a still has.
    assert h.receive("a", h.piece(0, 2)) == [
        Send("b", [m.Cancel(0, 32, 16)]),
        Send("b", [req(h, 0, 1)]),
        Send("a", [req(h, 0, 3)]),
    ]
    # b's late copy of block 2 is not used.
    assert h.receive("b", h.piece(0, 2)) == []
    assert h.core.stats.wasted_bytes == BLOCK


def test_endgame_waits_for_a_request_to_be_overdue_before_duplicating_it() -> None:
    h = Harness(DATA[:PIECE], config=replace(CONFIG, endgame_patience_s=5.0))
    for conn, peer in (("a", 2), ("b", 3)):
        h.admit(conn, peer)
        h.receive(conn, m.HaveAll())
    h.receive("a", m.Unchoke())
    h.receive("b", m.Unchoke())
    assert h.receive("a", h.piece(0, 0)) == []  # b's requests are fresh
    assert requests(h.fire(h.clock() + 5.0)) == [req(h, 0, 2)]


# -- timeouts, chokes and rejects --------------------------------------------------------------


def test_a_request_unanswered_for_request_timeout_s_is_cancelled_and_asked_elsewhere() -> None:
    config = replace(CONFIG, request_timeout_s=10.0, endgame_patience_s=100.0)
    h = Harness(DATA[:PIECE], config=config)
    start = h.clock()
    seeded_leecher(h, "slow", 2)
    h.clock.advance(1.0)
    h.admit("other", 3)
    h.receive("other", m.HaveAll())
    assert requests(h.receive("other", m.Unchoke())) == [req(h, 0, 2), req(h, 0, 3)]
    fired = h.run_until(start + 10.5)
    assert [(t - start, c) for t, c in fired if isinstance(c, Send)] == [
        (10.0, Send("slow", [m.Cancel(0, 0, 16)])),
        (10.0, Send("slow", [m.Cancel(0, 16, 16)])),
    ]
    # other's pipeline is full; its next free slot takes a timed-out block, slow is not
    # asked again for them (cool-down).
    assert requests(h.receive("other", h.piece(0, 2))) == [req(h, 0, 0)]
    assert h.core.scheduler.inflight("slow") == 0


def test_a_choke_without_fast_voids_our_requests_and_the_unchoke_asks_them_again() -> None:
    h = Harness()
    h.admit("p", 2, reserved=LARGE_ONLY)
    h.receive("p", m.Bitfield(b"\xff"))
    assert requests(h.receive("p", m.Unchoke())) == [req(h, 0, 0), req(h, 0, 1)]
    assert h.receive("p", m.Choke()) == []  # no cancel: BEP 3 drops them at the sender
    assert h.core.scheduler.inflight("p") == 0
    assert requests(h.receive("p", m.Unchoke())) == [req(h, 0, 0), req(h, 0, 1)]


def test_a_choke_with_fast_keeps_our_requests_until_rejected() -> None:
    h = Harness()
    seeded_leecher(h, "p")
    assert h.receive("p", m.Choke()) == []
    assert h.core.scheduler.inflight("p") == 2
    assert h.receive("p", m.Unchoke()) == []  # still in flight: nothing new
    # A rejected block is not asked of the same peer again for a while: the next one is.
    assert h.receive("p", m.RejectRequest(0, 0, 16)) == [Send("p", [req(h, 0, 2)])]
    assert h.receive("p", m.Choke(), m.RejectRequest(0, 16, 16)) == []  # choked: nothing asked


def test_a_rejected_block_is_asked_of_the_same_peer_again_once_its_cooldown_ends() -> None:
    h = Harness(DATA[:PIECE], config=replace(CONFIG, request_timeout_s=10.0))  # the cooldown
    start = h.clock()
    seeded_leecher(h, "p")
    assert h.receive("p", m.RejectRequest(0, 0, 16)) == [Send("p", [req(h, 0, 2)])]
    assert requests(h.serve("p", [req(h, 0, 1), req(h, 0, 2)])) == [req(h, 0, 3)]
    assert h.serve("p", [req(h, 0, 3)]) == []  # only the rejected block is left
    assert h.run_until(start + 9.9) == []
    assert h.run_until(start + 10.0) == [(start + 10.0, Send("p", [req(h, 0, 0)]))]


def test_a_block_cut_off_by_its_connection_closing_is_asked_of_another_peer() -> None:
    h = Harness(DATA[:PIECE])
    seeded_leecher(h, "a", 2)
    h.admit("b", 3)
    h.receive("b", m.HaveAll())
    h.receive("b", m.Unchoke())  # blocks 2 and 3
    h.serve("b", [req(h, 0, 2)])
    assert h.core.block_sink("a", 0, 0, 16) is not None  # its payload is being read ...
    h.core.peer_closed("a", "reset")  # ... when the connection dies
    # Both of a's blocks are open again; b has one free slot, then the next.
    assert h.take() == [Close("a", "reset"), Send("b", [req(h, 0, 1)])]
    assert h.receive("b", h.piece(0, 3)) == [Send("b", [req(h, 0, 0)])]


def test_a_rejected_block_goes_to_another_peer() -> None:
    h = Harness(DATA[:PIECE])
    seeded_leecher(h, "a", 2)
    h.admit("b", 3)
    h.receive("b", m.HaveAll())
    h.receive("b", m.Unchoke())  # blocks 2 and 3
    h.receive("b", h.piece(0, 2))  # b's free slot: nothing open to ask (endgame waits)
    assert h.receive("a", m.RejectRequest(0, 0, 16)) == [Send("b", [req(h, 0, 0)])]


# -- task-wide bounds --------------------------------------------------------------------------


def test_requests_in_flight_stay_under_max_inflight_bytes_with_many_peers() -> None:
    h = Harness(config=replace(CONFIG, max_inflight_bytes=3 * BLOCK))
    seeded_leecher(h, "a", 2)
    assert requests(seeded_leecher(h, "b", 3)) == [req(h, 0, 2)]  # 3 blocks in flight
    assert h.core.scheduler.total_inflight() == 3
    # An arrival at a frees room: the bound was hit, so every peer is refilled.
    assert requests(h.receive("a", h.piece(0, 0))) == [req(h, 0, 3)]
    assert h.core.scheduler.total_inflight() == 3


def test_room_under_max_inflight_bytes_freed_by_an_arrival_goes_to_a_peer_held_at_the_bound() -> (
    None
):
    h = Harness(config=replace(CONFIG, max_inflight_bytes=2 * BLOCK))
    h.admit("a", 2)
    h.receive("a", m.Bitfield(b"\x80"), m.Unchoke())  # piece 0 only: blocks 0 and 1 asked
    h.admit("b", 3)
    assert h.receive("b", m.HaveAll(), m.Unchoke()) == [Send("b", [m.Interested()])]  # held
    assert requests(h.serve("a", [req(h, 0, 0), req(h, 0, 1)])) == [req(h, 0, 2), req(h, 0, 3)]
    # a has nothing more to give: the room its block frees is b's at once, not at the tick.
    assert h.receive("a", h.piece(0, 2)) == [Send("b", [req(h, 1, 0)])]


def test_a_stock_peer_is_not_asked_for_blocks_larger_than_16_kib() -> None:
    big = replace(CONFIG, block_bytes=32 * 1024)
    h = Harness(config=big)
    h.admit("stock", 2, reserved=m.reserved_with(m.FAST_EXTENSION_BIT))
    assert h.receive("stock", m.HaveAll()) == [Send("stock", [m.Interested()])]
    assert h.receive("stock", m.Unchoke()) == []


# -- a rate-limited download -------------------------------------------------------------------


def test_a_rate_limited_download_sends_one_request_at_a_time_at_the_buckets_pace() -> None:
    h = Harness(rate_bps=BLOCK)  # one block a second
    start = h.clock()
    assert requests(seeded_leecher(h)) == [req(h, 0, 0)]
    assert h.core.deadline == start + 0.5  # the first tick, then the bucket's time
    assert h.fire(start + 0.5) == []  # a tick in between asks nothing
    assert h.core.deadline == start + 1.0  # the refill waits for the bucket
    assert requests(h.fire(start + 1.0)) == [req(h, 0, 1)]  # pipeline of two now full
    assert h.core.deadline == start + 1.5  # the next tick; the arrival refills
    h.clock.now_s = start + 1.2
    assert h.receive("s", h.piece(0, 0)) == []  # the bucket is in debt until 2.0
    assert h.fire(start + 1.5) == []
    assert h.core.deadline == start + 2.0
    assert requests(h.fire(start + 2.0)) == [req(h, 0, 2)]
    assert h.core.scheduler.inflight("s") == 2
