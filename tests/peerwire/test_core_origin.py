"""TaskCore, digests and the origin: pieces of unknown digest are held from the wire until
learned; pieces this peer fetches from the origin itself are claimed, released and stored."""

from __future__ import annotations

import hashlib
from dataclasses import replace

import pytest

from peerwire import messages as m
from peerwire.commands import PieceDone, ReportDigests, Send, TaskDone
from peerwire.coordination import TaskManifestDoc
from peerwire.digests import DigestConflict
from tests.peerwire.test_core import (
    CONFIG,
    DATA,
    PIECE,
    Harness,
    piece_requests,
    req,
    requests,
    seeded_leecher,
    verifies,
)

FIXED4 = replace(CONFIG, min_pipeline_depth=4, pipeline_depth=4)
WRONG = hashlib.sha256(b"not this piece").digest()


# -- digests -----------------------------------------------------------------------------------


def test_pieces_whose_digest_is_unknown_are_not_requested_until_learned() -> None:
    h = Harness(known=[1])
    h.admit("p", 2)
    # It has pieces 0 and 3, whose digests we do not know: still worth being interested in.
    assert h.receive("p", m.Bitfield(b"\x90")) == [Send("p", [m.Interested()])]
    assert h.receive("p", m.Unchoke()) == []
    assert h.core.learn_digests({0: h.digests[0]}) == 1
    assert h.take() == [Send("p", [req(h, 0, 0), req(h, 0, 1)])]


def test_a_seed_of_pieces_of_unknown_digest_only_gets_requests_for_the_known_ones() -> None:
    h = Harness(known=[2, 5], config=FIXED4)
    commands = seeded_leecher(h)
    assert requests(commands) == piece_requests(h, 2)
    commands = h.serve("s", piece_requests(h, 2))
    assert requests(commands) == piece_requests(h, 5)
    h.check_all(commands)
    assert requests(h.serve("s", piece_requests(h, 5))) == []  # nothing else is askable


def test_learning_a_digest_already_known_changes_nothing() -> None:
    h = Harness(known=[0])
    seeded_leecher(h)
    assert h.core.learn_digests({0: h.digests[0]}) == 0
    assert h.take() == []


def test_a_contradicting_digest_raises_after_the_others_were_learned() -> None:
    h = Harness(known=[1], config=FIXED4)
    h.admit("p", 2)
    h.receive("p", m.Bitfield(b"\xc0"), m.Unchoke())  # pieces 0 and 1: asks piece 1
    h.take()
    with pytest.raises(DigestConflict) as raised:
        h.core.learn_digests({0: h.digests[0], 1: WRONG})
    assert raised.value.learned == [0]
    assert h.core.digests.get(0) == h.digests[0]
    assert h.core.digests.get(1) == h.digests[1]  # the known one stays
    assert requests(h.serve("p", piece_requests(h, 1))) == piece_requests(h, 0)  # now askable


def test_a_manifest_from_the_coordinator_teaches_the_digests_we_lacked() -> None:
    h = Harness(known=[1])
    seeded_leecher(h)
    doc = TaskManifestDoc(
        url="http://origin/file",
        total_length=len(DATA),
        piece_length=PIECE,
        piece_sha256=(h.digests[0], WRONG, None, h.digests[3], None, None, None, None),
    )
    assert h.core.swarm.manifest_received(doc) == 2  # 0 and 3; 1 is ours already
    assert [h.core.digests.get(i) for i in (0, 1, 2, 3)] == [
        h.digests[0],
        h.digests[1],
        None,
        h.digests[3],
    ]
    assert h.core.swarm.manifest_received(None) == 0
    short = replace(doc, piece_sha256=doc.piece_sha256[:3])
    assert h.core.swarm.manifest_received(short) == 0  # not this task's geometry


# -- claims ------------------------------------------------------------------------------------


def test_claimed_pieces_are_not_requested_from_peers_until_released() -> None:
    h = Harness()
    assert h.core.claim_for_origin([0, 1]) == [0, 1]
    h.admit("p", 2)
    assert h.receive("p", m.Bitfield(b"\xc0")) == [Send("p", [m.Interested()])]
    assert h.receive("p", m.Unchoke()) == []
    h.core.release_from_origin([1])
    assert h.take() == [Send("p", [req(h, 1, 0), req(h, 1, 1)])]
    assert h.core.origin_claimed == {0}


def test_claim_leaves_pieces_had_or_being_received_from_peers_to_the_wire() -> None:
    h = Harness(have=[3])
    seeded_leecher(h)  # piece 0 asked of the seed
    assert h.core.claim_for_origin([0, 1, 3]) == [1]
    assert h.core.claim_for_origin([1, 2]) == [1, 2]  # claimed again: still ours
    assert h.core.origin_claimed == {1, 2}


def test_release_of_a_claimed_piece_of_unknown_digest_keeps_it_from_the_wire() -> None:
    h = Harness(known=[0])
    h.admit("p", 2)
    h.receive("p", m.Bitfield(b"\x40"), m.Unchoke())  # piece 1 only
    assert h.core.claim_for_origin([1]) == [1]
    h.core.learn_digests({1: h.digests[1]})
    assert requests(h.take()) == []  # learned while claimed: stays claimed
    h.core.claim_for_origin([2])
    h.core.release_from_origin([1, 2])
    assert h.take() == [Send("p", [req(h, 1, 0), req(h, 1, 1)])]
    assert h.core.scheduler.is_held(2)  # released, but its digest is not known


def test_origin_expected_names_the_known_digests_of_a_run() -> None:
    h = Harness(known=[0, 2])
    assert h.core.origin_expected(0, 3) == [h.digests[0], None, h.digests[2]]


# -- pieces stored from the origin -------------------------------------------------------------


def test_origin_stored_learns_digests_reports_them_and_announces_the_pieces() -> None:
    h = Harness(known=[], config=replace(CONFIG, have_delay_s=1.0))
    h.admit("x", 3)
    h.receive("x", m.HaveNone())
    h.core.claim_for_origin([0, 1])
    digests = [h.digests[0], h.digests[1]]
    assert h.core.origin_stored(0, [PIECE, PIECE], list[bytes | None](digests)) == []
    assert h.take() == [PieceDone(0), PieceDone(1), ReportDigests({0: digests[0], 1: digests[1]})]
    assert [h.core.digests.get(i) for i in (0, 1)] == digests
    assert h.core.origin_claimed == set()
    stats = h.core.stats
    assert (stats.origin_pieces, stats.origin_bytes, stats.pieces_verified) == (2, 128, 2)
    flush = h.clock() + 1.0
    assert h.run_until(flush) == [(flush, Send("x", [m.Have(0), m.Have(1)]))]


def test_the_last_piece_from_the_origin_completes_the_task() -> None:
    h = Harness(have=range(7))
    h.core.claim_for_origin([7])
    assert h.core.origin_stored(7, [40], [h.digests[7]]) == []
    assert h.take() == [PieceDone(7), TaskDone(), ReportDigests({7: h.digests[7]})]
    assert h.core.done


def test_origin_stored_returns_the_pieces_that_did_not_match_their_known_digest() -> None:
    h = Harness(known=[0, 1])
    h.admit("p", 2)
    h.receive("p", m.Bitfield(b"\xc0"))
    h.core.claim_for_origin([0, 1])
    h.take()
    assert h.core.origin_stored(0, [PIECE, PIECE], [h.digests[0], None]) == [1]
    # Piece 1 goes back to the wire (its digest is known); nothing is reported of it.
    assert h.take() == [PieceDone(0), ReportDigests({0: h.digests[0]})]
    assert requests(h.receive("p", m.Unchoke())) == [req(h, 1, 0), req(h, 1, 1)]
    assert 1 not in h.core.have and h.core.stats.origin_pieces == 1


def test_origin_stored_skips_a_piece_verified_from_a_peer_meanwhile() -> None:
    h = Harness(config=FIXED4)
    seeded_leecher(h)
    (verify,) = verifies(h.serve("s", piece_requests(h, 0)))
    h.check(verify)
    h.take()
    assert h.core.origin_stored(0, [PIECE], [h.digests[0]]) == []
    assert h.take() == []
    assert (h.core.stats.pieces_verified, h.core.stats.origin_pieces) == (1, 0)


def test_a_peers_copy_checked_after_the_origins_counts_once() -> None:
    h = Harness(config=FIXED4)
    h.admit("p", 2)
    h.receive("p", m.Bitfield(b"\x80"), m.Unchoke())  # piece 0 only
    (verify,) = verifies(h.serve("p", piece_requests(h, 0)))
    assert h.core.origin_stored(0, [PIECE], [h.digests[0]]) == []
    assert h.take() == [
        Send("p", [m.NotInterested()]),
        PieceDone(0),
        ReportDigests({0: h.digests[0]}),
    ]
    assert h.check(verify) == []  # the peer's copy of a piece we have: nothing more
    assert h.core.stats.pieces_verified == 1


def test_a_piece_from_the_origin_cancels_its_requests_still_at_peers() -> None:
    h = Harness(DATA[: 2 * PIECE])
    assert requests(seeded_leecher(h)) == [req(h, 0, 0), req(h, 0, 1)]
    assert h.core.origin_stored(0, [PIECE], [h.digests[0]]) == []
    assert h.take() == [
        Send("s", [m.Cancel(0, 0, 16)]),
        Send("s", [req(h, 1, 0), req(h, 1, 1)]),  # both of its slots are free
        Send("s", [m.Cancel(0, 16, 16)]),
        PieceDone(0),
        ReportDigests({0: h.digests[0]}),
    ]
    # A late answer to a cancelled request is not used.
    assert h.receive("s", h.piece(0, 0)) == []
    assert h.core.stats.wasted_bytes == 16
