"""TaskCore, the other direction: ``have`` batching, serving requests, upload slots and their
rotation, keep-alives and idle peers."""

from __future__ import annotations

from dataclasses import replace

from peerwire import messages as m
from peerwire.commands import Close, PieceDone, Send, WakeUploader
from peerwire.layout import Block
from peerwire.ratelimit import TokenBucket
from tests.peerwire.test_core import (
    CONFIG,
    LARGE_ONLY,
    Cmd,
    Harness,
    piece_requests,
    req,
    seeded_leecher,
    verifies,
)

FIXED4 = replace(CONFIG, min_pipeline_depth=4, pipeline_depth=4)


def leecher_with_piece_0_done(h: Harness) -> None:
    """Piece 0 from the seed on "s", verified now (its ``have``s are owed)."""
    seeded_leecher(h, "s")
    (verify,) = verifies(h.serve("s", piece_requests(h, 0)))
    assert h.check(verify) == [PieceDone(0)]


# -- have batching -----------------------------------------------------------------------------


def test_haves_wait_up_to_have_delay_s_then_go_out_together() -> None:
    h = Harness(config=FIXED4)
    h.admit("x", 3)
    h.receive("x", m.HaveNone())
    start = h.clock()
    seeded_leecher(h, "s")
    for index in (0, 1):
        (verify,) = verifies(h.serve("s", piece_requests(h, index)))
        assert h.check(verify) == [PieceDone(index)]  # nothing sent yet
        h.clock.advance(0.25)
    # The first verified piece set the deadline: both go out then, in one message run.
    assert h.run_until(start + 0.999) == []
    assert h.run_until(start + 1.0) == [(start + 1.0, Send("x", [m.Have(0), m.Have(1)]))]
    assert h.run_until(start + 10.0) == []  # once


def test_haves_go_out_earlier_with_our_requests() -> None:
    h = Harness(config=FIXED4)
    h.admit("p", 3)
    assert h.receive("p", m.Bitfield(b"\x01")) == [Send("p", [m.Interested()])]  # piece 7
    leecher_with_piece_0_done(h)
    assert h.receive("p", m.Unchoke()) == [Send("p", [m.Have(0), *piece_requests(h, 7)])]
    assert h.run_until(h.clock() + 2.0) == []  # nothing left owed


def test_haves_go_out_earlier_with_an_upload() -> None:
    h = Harness(have=[7], config=FIXED4)
    h.admit("x", 3)
    h.receive("x", m.HaveNone())
    assert h.receive("x", m.Interested()) == [Send("x", [m.Unchoke()])]
    leecher_with_piece_0_done(h)
    assert h.receive("x", req(h, 7, 0)) == [WakeUploader("x")]
    block = h.core.next_upload("x")
    assert block == Block(7, 0, 16)
    assert h.core.upload_starting("x", block) is True
    assert h.take() == [Send("x", [m.Have(0)])]  # ahead of the block
    assert h.run_until(h.clock() + 2.0) == []


def test_haves_never_go_to_a_peer_that_has_the_piece() -> None:
    h = Harness(config=FIXED4)
    h.admit("x", 3)
    h.receive("x", m.HaveNone())
    h.admit("y", 4)
    h.receive("y", m.HaveNone())
    leecher_with_piece_0_done(h)  # the seed "s" has it: never owed
    assert h.receive("y", m.Have(0)) == []  # y got it meanwhile
    flush = h.clock() + CONFIG.have_delay_s
    assert h.run_until(flush) == [(flush, Send("x", [m.Have(0)]))]


# -- serving requests --------------------------------------------------------------------------


def test_a_request_from_an_unchoked_peer_wakes_its_uploader() -> None:
    h = Harness(have=range(8))
    assert h.admit("x", 3) == [Send("x", [m.HaveAll()])]
    assert h.receive("x", m.Interested()) == [Send("x", [m.Unchoke()])]
    assert h.receive("x", m.Request(0, 0, 16)) == [WakeUploader("x")]
    assert h.core.next_upload("x") == Block(0, 0, 16)
    assert h.core.upload_starting("x", Block(0, 0, 16)) is True
    h.core.block_uploaded("x", Block(0, 0, 16))
    assert h.core.next_upload("x") is None
    assert h.core.stats.uploaded_bytes == 16
    assert h.take() == []


def test_next_upload_rejects_requests_for_pieces_we_lack() -> None:
    h = Harness(have=[0])
    h.admit("x", 3)
    h.receive("x", m.Interested(), m.Request(0, 0, 16), m.Request(1, 0, 16), m.Request(0, 16, 16))
    assert h.core.next_upload("x") == Block(0, 0, 16)
    assert h.take() == []
    assert h.core.next_upload("x") == Block(0, 16, 16)
    assert h.take() == [Send("x", [m.RejectRequest(1, 0, 16)])]
    assert h.core.next_upload("x") is None


def test_requests_we_cannot_serve_are_dropped_silently_for_a_stock_peer() -> None:
    h = Harness(have=[0])
    h.admit("x", 3, reserved=LARGE_ONLY)
    h.receive("x", m.Interested())
    assert h.receive("x", m.Request(1, 0, 16)) == [WakeUploader("x")]
    assert h.core.next_upload("x") is None
    assert h.take() == []


def test_a_request_while_we_choke_is_rejected_with_fast_and_dropped_without() -> None:
    h = Harness(have=[0])
    h.admit("fast", 3)
    h.admit("stock", 4, reserved=LARGE_ONLY)
    assert h.receive("fast", m.Request(0, 0, 16)) == [Send("fast", [m.RejectRequest(0, 0, 16)])]
    h.receive("stock", m.Request(0, 0, 16))
    assert h.core.next_upload("fast") is None and h.core.next_upload("stock") is None
    assert h.take() == []


def test_a_request_dropped_while_we_choke_a_stock_peer_wakes_no_uploader() -> None:
    h = Harness(have=[0])
    h.admit("stock", 4, reserved=LARGE_ONLY)
    assert h.receive("stock", m.Request(0, 0, 16)) == []


def test_a_cancel_of_a_queued_request_is_rejected_and_not_served() -> None:
    h = Harness(have=[0])
    h.admit("x", 3)
    h.receive("x", m.Interested(), m.Request(0, 0, 16), m.Request(0, 16, 16))
    assert h.receive("x", m.Cancel(0, 0, 16)) == [Send("x", [m.RejectRequest(0, 0, 16)])]
    assert h.core.next_upload("x") == Block(0, 16, 16)
    assert h.core.next_upload("x") is None


def test_a_choke_rejects_every_queued_request_with_fast() -> None:
    h = Harness(have=[0])
    h.admit("x", 3)
    h.receive("x", m.Interested(), m.Request(0, 0, 16), m.Request(0, 16, 16))
    assert h.receive("x", m.NotInterested()) == [
        Send("x", [m.Choke(), m.RejectRequest(0, 0, 16), m.RejectRequest(0, 16, 16)])
    ]
    assert h.core.next_upload("x") is None


def test_a_choke_drops_queued_requests_silently_without_fast() -> None:
    h = Harness(have=[0])
    h.admit("x", 3, reserved=LARGE_ONLY)
    h.receive("x", m.Interested(), m.Request(0, 0, 16))
    assert h.receive("x", m.NotInterested()) == [Send("x", [m.Choke()])]
    assert h.core.next_upload("x") is None


def test_upload_starting_refuses_a_block_after_a_choke_and_rejects_it() -> None:
    h = Harness(have=[0])
    h.admit("x", 3)
    h.receive("x", m.Interested(), m.Request(0, 0, 16))
    block = h.core.next_upload("x")
    assert block == Block(0, 0, 16)
    # Choked while the upload limit held the block: the choke did not see it (dequeued).
    assert h.receive("x", m.NotInterested()) == [Send("x", [m.Choke()])]
    assert h.core.upload_starting("x", block) is False
    assert h.take() == [Send("x", [m.RejectRequest(0, 0, 16)])]


def test_upload_starting_for_a_peer_that_left_is_refused() -> None:
    h = Harness(have=[0])
    h.admit("x", 3)
    h.receive("x", m.Interested(), m.Request(0, 0, 16))
    block = h.core.next_upload("x")
    assert block is not None
    h.core.peer_closed("x", "gone")
    assert h.core.upload_starting("x", block) is False
    assert h.core.next_upload("x") is None


# -- upload slots ------------------------------------------------------------------------------


def test_a_peer_waits_for_an_upload_slot_and_gets_the_one_a_peer_gives_up() -> None:
    h = Harness(have=range(8), config=replace(CONFIG, max_unchoked=1))
    h.admit("a", 2)
    h.admit("b", 3)
    assert h.receive("a", m.Interested()) == [Send("a", [m.Unchoke()])]
    assert h.receive("b", m.Interested()) == []  # every slot taken
    assert h.receive("a", m.NotInterested()) == [Send("a", [m.Choke()]), Send("b", [m.Unchoke()])]


def test_a_peer_leaving_frees_its_upload_slot() -> None:
    h = Harness(have=range(8), config=replace(CONFIG, max_unchoked=1))
    h.admit("a", 2)
    h.admit("b", 3)
    h.receive("a", m.Interested())
    h.receive("b", m.Interested())
    h.core.peer_closed("a", "gone")
    assert h.take() == [Close("a", "gone"), Send("b", [m.Unchoke()])]


def test_upload_slots_rotate_every_rotate_s_while_someone_waits() -> None:
    config = replace(CONFIG, max_unchoked=1, rotate_s=5.0)
    h = Harness(have=range(8), config=config)
    start = h.clock()
    h.admit("a", 2)
    h.admit("b", 3)
    h.receive("a", m.Interested(), m.Request(0, 0, 16))
    h.receive("b", m.Interested())
    assert h.run_until(start + 10.0) == [
        (start + 5.0, Send("a", [m.Choke(), m.RejectRequest(0, 0, 16)])),
        (start + 5.0, Send("b", [m.Unchoke()])),
        (start + 10.0, Send("b", [m.Choke()])),
        (start + 10.0, Send("a", [m.Unchoke()])),
    ]


def test_upload_slots_do_not_rotate_when_nobody_waits() -> None:
    h = Harness(have=range(8), config=replace(CONFIG, max_unchoked=2, rotate_s=5.0))
    start = h.clock()
    for conn, peer in (("a", 2), ("b", 3)):
        h.admit(conn, peer)
        h.receive(conn, m.Interested())
    assert h.run_until(start + 20.0) == []


# -- keep-alive and idle peers -----------------------------------------------------------------


def test_a_silent_connection_gets_keepalives_and_is_closed_after_idle_timeout_s() -> None:
    h = Harness()
    start = h.clock()
    h.admit("p", 2)
    keepalive = Send("p", [m.KeepAlive()])
    assert [(t - start, c) for t, c in h.run_until(start + 125.0)] == [
        (30.5, keepalive),  # more than keepalive_interval_s (30) since we last sent
        (61.0, keepalive),
        (91.5, keepalive),
        (120.5, Close("p", "idle for 120s")),  # nothing received for idle_timeout_s (120)
    ]
    assert h.core.peer_count == 0


def test_a_peer_sending_keepalives_is_not_idle() -> None:
    h = Harness(config=replace(CONFIG, keepalive_interval_s=1000.0))
    start = h.clock()
    h.admit("p", 2)
    for minute in range(1, 6):
        assert h.run_until(start + 60.0 * minute) == []
        h.receive("p", m.KeepAlive())
    assert h.core.peer_count == 1


def test_what_we_send_defers_the_keepalive() -> None:
    h = Harness(have=[0])
    start = h.clock()
    h.admit("p", 2)
    h.clock.now_s = start + 20.0
    assert h.receive("p", m.Interested()) == [Send("p", [m.Unchoke()])]
    assert [(t - start, c) for t, c in h.run_until(start + 60.0)] == [
        (50.5, Send("p", [m.KeepAlive()]))
    ]


# -- one uploader for every peer -----------------------------------------------------------------


def interested_peers(h: Harness, *conns: str) -> None:
    for number, conn in enumerate(conns, start=3):
        h.admit(conn, number)
        assert h.receive(conn, m.Interested()) == [Send(conn, [m.Unchoke()])]


def test_the_request_for_the_rarest_piece_goes_first() -> None:
    h = Harness(have=[0, 1])
    interested_peers(h, "a", "b", "c")
    h.receive("c", m.Have(0))  # one of our peers holds piece 0 too, none holds piece 1
    assert h.receive("a", m.Request(0, 0, 16)) == [WakeUploader("a")]
    assert h.receive("b", m.Request(1, 0, 16)) == [WakeUploader("b")]
    assert h.receive("a", m.Request(0, 16, 16)) == []  # "a" is waiting already
    assert h.receive("b", m.Request(1, 16, 16)) == []
    anyone = lambda conn: False  # noqa: E731
    assert h.core.choose_upload(anyone) == ("b", Block(1, 0, 16))
    assert h.core.choose_upload(anyone) == ("b", Block(1, 16, 16))
    assert h.core.choose_upload(anyone) == ("a", Block(0, 0, 16))
    assert h.core.choose_upload(anyone) == ("a", Block(0, 16, 16))
    assert h.core.choose_upload(anyone) is None
    assert h.receive("a", m.Request(0, 0, 16)) == [WakeUploader("a")]  # waiting again


def test_peers_asking_for_equally_rare_pieces_take_turns() -> None:
    h = Harness(have=[0])
    interested_peers(h, "a", "b")
    h.receive("a", m.Request(0, 0, 16), m.Request(0, 16, 16))
    h.receive("b", m.Request(0, 0, 16), m.Request(0, 16, 16))
    served = [h.core.choose_upload(lambda conn: False) for _ in range(5)]
    assert served == [
        ("a", Block(0, 0, 16)),
        ("b", Block(0, 0, 16)),
        ("a", Block(0, 16, 16)),
        ("b", Block(0, 16, 16)),
        None,
    ]


def test_a_peer_whose_socket_is_full_is_passed_over_not_forgotten() -> None:
    h = Harness(have=[0, 1])
    interested_peers(h, "a", "b")
    h.receive("a", m.Request(1, 0, 16))  # no other peer has 1: "a" would go first
    h.receive("b", m.Request(0, 0, 16))
    assert h.core.choose_upload(lambda conn: conn == "a") == ("b", Block(0, 0, 16))
    assert h.core.choose_upload(lambda conn: conn == "a") is None
    assert h.core.choose_upload(lambda conn: False) == ("a", Block(1, 0, 16))


def test_a_closed_peer_leaves_the_uploaders_line() -> None:
    h = Harness(have=[0])
    interested_peers(h, "a", "b")
    h.receive("a", m.Request(0, 0, 16))
    h.receive("b", m.Request(0, 0, 16))
    h.core.peer_closed("a", "gone")
    h.take()
    assert h.core.choose_upload(lambda conn: False) == ("b", Block(0, 0, 16))
    assert h.core.choose_upload(lambda conn: False) is None


# -- a busy uplink refuses what others can serve -------------------------------------------------


def busy_uploader() -> Harness:
    """We hold pieces 0 and 1 and upload 8 B/s (16 bytes of requests queued is enough); "c"
    and "d" hold piece 0 too; "a" has two requests for piece 1 queued."""
    h = Harness(have=[0, 1])
    h.core.upload_bucket = TokenBucket(8.0, clock=h.clock)
    interested_peers(h, "a", "b")
    for conn, number in (("c", 7), ("d", 8)):
        h.admit(conn, number)
        h.receive(conn, m.Have(0))
    h.receive("a", m.Request(1, 0, 16), m.Request(1, 16, 16))
    h.take()
    return h


def test_a_busy_uplink_refuses_a_request_others_can_serve() -> None:
    h = busy_uploader()
    assert h.receive("b", m.Request(0, 0, 16)) == [Send("b", [m.RejectRequest(0, 0, 16)])]
    assert h.core.stats.requests_shed == 1
    # Piece 1 is ours alone: queued, however busy we are.
    assert h.receive("b", m.Request(1, 0, 16)) == [WakeUploader("b")]


def test_a_busy_uplink_refuses_a_piece_it_already_sent_twice() -> None:
    h = Harness(have=[0, 1])
    h.core.upload_bucket = TokenBucket(8.0, clock=h.clock)
    interested_peers(h, "a", "b", "e")
    for conn in ("a", "e"):
        h.receive(conn, m.Request(1, 0, 16))
        choice = h.core.choose_upload(lambda other: False)
        assert choice == (conn, Block(1, 0, 16))
        assert h.core.upload_starting(*choice)
        h.core.block_uploaded(*choice)
    h.receive("a", m.Request(0, 0, 16), m.Request(0, 16, 16))  # busy now: 32 bytes queued
    h.take()
    # Nobody else is known to hold piece 1, but the two who got it will pass it on.
    assert h.receive("b", m.Request(1, 0, 16)) == [Send("b", [m.RejectRequest(1, 0, 16)])]


def test_an_idle_uplink_serves_everything() -> None:
    h = Harness(have=[0, 1])
    h.core.upload_bucket = TokenBucket(8.0, clock=h.clock)
    interested_peers(h, "b")
    for conn, number in (("c", 7), ("d", 8)):
        h.admit(conn, number)
        h.receive(conn, m.Have(0))
    assert h.receive("b", m.Request(0, 0, 16)) == [WakeUploader("b")]
    assert h.core.stats.requests_shed == 0


def requests_in(commands: list[Cmd]) -> list[m.Request]:
    return [
        message
        for c in commands
        if isinstance(c, Send)
        for message in c.messages
        if isinstance(message, m.Request)
    ]


def test_a_rejected_request_gives_its_bytes_back_to_the_download_limit() -> None:
    h = Harness(rate_bps=16.0)  # a block a second
    assert h.bucket is not None
    sent = requests_in(seeded_leecher(h, "s"))
    assert sent  # paid for as they went out
    tokens = h.bucket.available_bytes()
    first = sent[0]
    again = requests_in(h.receive("s", m.RejectRequest(first.index, first.begin, first.length)))
    # The clock stood still: the refund is all that changed, less what was asked anew.
    assert h.bucket.available_bytes() == tokens + first.length - sum(r.length for r in again)
