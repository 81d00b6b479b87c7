"""Claims: a manifest from a coordinator without the cluster secret is believed only once this
peer's own origin reads agree with it, and dropped whole when one contradicts it."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Hashable

from peerwire import messages as m
from peerwire.bitfield import Bitfield
from peerwire.commands import CheckClaims, ClaimsRefuted, ReportDigests
from peerwire.core import TaskCore
from peerwire.digests import DigestBook, Trust
from tests.peerwire.test_core import (
    CONFIG,
    DATA,
    PIECE,
    TASK,
    FakeClock,
    Harness,
    digests_of,
    pid,
    requests,
    verifies,
)

FORGED = bytes(255 - b for b in DATA)


def claimed(
    data: bytes = DATA, *, have: tuple[int, ...] = (), check: bool = True
) -> tuple[TaskCore[Hashable], list[bytes]]:
    """A core whose every digest is a claim (of ``data``'s pieces)."""
    layout = Harness(data).layout
    digests = digests_of(data)
    bits = Bitfield(layout.num_pieces)
    for index in have:
        bits.add(index)
    core: TaskCore[Hashable] = TaskCore(
        layout,
        bits,
        DigestBook(layout.num_pieces, digests, Trust.CLAIMED),
        task_id=TASK,
        peer_id=pid(1),
        clock=FakeClock(),
        config=CONFIG,
        rng=random.Random(0),
        check_claims=check,
    )
    return core, digests


def origin_read(core: TaskCore[Hashable], index: int, data: bytes = DATA) -> list[int]:
    """Piece ``index`` read from the origin (``data`` is what the origin serves) and stored."""
    piece = data[index * PIECE : (index + 1) * PIECE]
    assert core.origin_expected(index, 1) == [None]  # a claim is not what the origin must match
    return core.origin_stored(index, [len(piece)], [hashlib.sha256(piece).digest()])


def seed_everything(core: TaskCore[Hashable]) -> list[m.Request]:
    """A seed on conn "s" unchokes us; the requests we send it."""
    assert core.peer_connected(
        "s", m.Handshake(core.reserved, TASK, pid(2)), outgoing=True, address="s"
    )
    core.message_received("s", m.HaveAll())
    core.message_received("s", m.Unchoke())
    return requests(core.take_commands(), "s")


def test_claimed_pieces_are_not_asked_of_peers_before_a_check() -> None:
    core, _ = claimed()
    assert core.take_commands() == []
    core.start_claim_check()
    (check,) = core.take_commands()
    assert isinstance(check, CheckClaims) and len(check.pieces) == 1
    assert seed_everything(core) == []  # nothing is believed yet


def test_an_origin_read_matching_the_claim_makes_the_claims_believed() -> None:
    core, _ = claimed()
    core.start_claim_check()
    (check,) = core.take_commands()
    assert isinstance(check, CheckClaims)
    (index,) = check.pieces
    core.claim_for_origin([index])
    assert origin_read(core, index) == []
    assert core.claims_checked and not core.claims_refuted
    assert core.digests.trust(index) is Trust.OWN
    commands = core.take_commands()
    assert any(isinstance(c, ReportDigests) and index in c.digests for c in commands)
    asked = {r.index for r in seed_everything(core)}
    assert asked and index not in asked


def test_an_origin_read_contradicting_the_claim_drops_every_claim() -> None:
    core, _ = claimed(FORGED)  # the coordinator's manifest describes other bytes
    core.start_claim_check()
    (check,) = core.take_commands()
    assert isinstance(check, CheckClaims)
    (index,) = check.pieces
    core.claim_for_origin([index])
    origin_read(core, index)
    assert core.claims_refuted and not core.claims_checked
    refuted = [c for c in core.take_commands() if isinstance(c, ClaimsRefuted)]
    assert len(refuted) == 1 and refuted[0].tainted == ()
    assert core.digests.claimed() == []
    assert core.digests.known == 1 and core.digests.trust(index) is Trust.OWN
    assert index in core.have  # the origin's bytes are kept
    assert seed_everything(core) == []  # no forged digest is left to take pieces on
    # A later copy of the same manifest is not taken again.
    assert core.learn_digests(dict(enumerate(digests_of(FORGED))), Trust.CLAIMED) == 0


def test_pieces_verified_on_a_claim_are_named_when_it_is_refuted_later() -> None:
    h = Harness()
    core, _ = claimed()
    h.core = core
    core.start_claim_check()
    (check,) = core.take_commands()
    first = check.pieces[0]
    core.claim_for_origin([first])
    origin_read(core, first)  # matches: believed
    core.take_commands()
    asked = seed_everything(core)
    other = asked[0].index
    while other not in core.have:  # serve what is asked until that piece is in and verified
        out = h.serve("s", asked)
        h.check_all(verifies(out))
        asked = requests(out, "s")
    assert other in core.claim_verified
    # Then an origin read of another piece contradicts what the manifest claimed for it.
    victim = next(i for i in range(h.layout.num_pieces) if i not in core.have and i != other)
    core.claim_for_origin([victim])
    piece = FORGED[victim * PIECE : (victim + 1) * PIECE]
    core.origin_stored(victim, [len(piece)], [hashlib.sha256(piece).digest()])
    refuted = [c for c in core.take_commands() if isinstance(c, ClaimsRefuted)]
    assert len(refuted) == 1 and other in refuted[0].tainted


def test_a_claim_contradicting_an_own_read_refutes_the_claims() -> None:
    core, _ = claimed()
    core.start_claim_check()
    (check,) = core.take_commands()
    index = check.pieces[0]
    core.claim_for_origin([index])
    origin_read(core, index)
    core.take_commands()
    forged = dict(enumerate(digests_of(FORGED)))
    core.swarm.manifest_trust = Trust.CLAIMED
    core.learn_digests({index: forged[index]}, Trust.CLAIMED)
    assert core.claims_refuted
    assert any(isinstance(c, ClaimsRefuted) for c in core.take_commands())


def test_without_the_origin_to_check_against_claims_are_believed() -> None:
    core, _ = claimed(check=False)
    core.start_claim_check()
    assert core.take_commands() == []
    assert seed_everything(core) != []


def test_an_unreachable_origin_leaves_the_claims_believed_as_they_are() -> None:
    core, _ = claimed()
    core.start_claim_check()
    (check,) = core.take_commands()
    core.claim_for_origin(list(check.pieces))
    core.origin_unreachable()
    core.release_from_origin(list(check.pieces))
    assert not any(isinstance(c, CheckClaims) for c in core.take_commands())
    assert seed_everything(core) != []


def test_an_assigned_origin_read_settles_the_claims_without_a_check_of_its_own() -> None:
    core, _ = claimed()
    core.claim_for_origin([3])  # the coordinator assigned piece 3 to us
    core.start_claim_check()
    assert core.take_commands() == []  # the assigned read will settle it
    origin_read(core, 3)
    assert core.claims_checked


def test_vouched_digests_need_no_check_and_an_origin_read_must_match_them() -> None:
    h = Harness()
    h.core.start_claim_check()
    assert h.take() == []
    assert h.core.origin_expected(0, 2) == h.digests[:2]
