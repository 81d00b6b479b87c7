"""Per-peer session state (peerwire.session): what the remote side may send, and what we reply.

The task core dispatches each decoded message once, by its type, to one ``receive_*`` method of
the session (keep-alives never reach it); most tests call those methods directly, ``deliver``
does that dispatch for tests that feed a sequence of messages.
"""

from __future__ import annotations

import pytest

from peerwire import messages as m
from peerwire.bitfield import Bitfield
from peerwire.decoder import Decoder
from peerwire.errors import ProtocolError
from peerwire.layout import MAX_BLOCK_BYTES, Block, PieceLayout
from peerwire.session import DEFAULT_MAX_QUEUED_REQUESTS, PeerSession

# Four pieces of 30, 30, 30 and 10 bytes: one bitfield byte, the low four bits spare.
LAYOUT = PieceLayout(total_length=100, piece_length=30)
# Ten pieces: a two-byte bitfield, the low six bits of the second byte spare.
TEN = PieceLayout(total_length=10 * 16, piece_length=16)


def deliver(peer: PeerSession, message: m.Message) -> list[m.Message]:
    """Hand ``message`` to the session's method for its kind; the replies to send back."""
    match message:
        case m.Have(index):
            peer.receive_have(index)
        case m.Piece(index, begin, data):
            peer.receive_piece(Block(index, begin, len(data)))
        case m.Request(index, begin, length):
            return peer.receive_request(Block(index, begin, length))
        case m.Cancel(index, begin, length):
            return peer.receive_cancel(Block(index, begin, length))
        case m.Choke() | m.Unchoke():
            peer.receive_choke(isinstance(message, m.Choke))
        case m.Interested() | m.NotInterested():
            peer.receive_interested(isinstance(message, m.Interested))
        case m.Bitfield() | m.HaveAll() | m.HaveNone():
            peer.receive_availability(message)
        case m.RejectRequest(index, begin, length):
            peer.receive_reject(Block(index, begin, length))
        case _:
            raise AssertionError(f"{message!r} is not for the session")
    return []


def session(
    *,
    fast: bool = False,
    layout: PieceLayout = LAYOUT,
    max_request_bytes: int = MAX_BLOCK_BYTES,
    max_queued_requests: int = DEFAULT_MAX_QUEUED_REQUESTS,
) -> PeerSession:
    return PeerSession(
        layout,
        fast=fast,
        max_request_bytes=max_request_bytes,
        max_queued_requests=max_queued_requests,
    )


def unchoked(
    *,
    fast: bool = False,
    max_request_bytes: int = MAX_BLOCK_BYTES,
    max_queued_requests: int = DEFAULT_MAX_QUEUED_REQUESTS,
) -> PeerSession:
    peer = session(
        fast=fast, max_request_bytes=max_request_bytes, max_queued_requests=max_queued_requests
    )
    assert peer.unchoke() == [m.Unchoke()]
    return peer


def test_session_starts_choked_and_not_interested_both_ways() -> None:
    peer = session()
    assert (peer.am_choking, peer.am_interested) == (True, False)
    assert (peer.peer_choking, peer.peer_interested) == (True, False)
    assert len(peer.peer_has) == 0 and peer.peer_has.num_pieces == 4
    assert not peer.peer_is_seed
    assert peer.next_queued() is None


def test_received_choke_unchoke_interested_not_interested_update_peer_state() -> None:
    peer = session()
    peer.receive_choke(False)
    assert not peer.peer_choking
    peer.receive_interested(True)
    assert peer.peer_interested
    peer.receive_interested(False)
    assert not peer.peer_interested
    peer.receive_choke(True)
    assert peer.peer_choking
    assert (peer.am_choking, peer.am_interested) == (True, False)  # ours untouched


# -- availability: bitfield, have, have-all, have-none --------------------------------------


def test_bitfield_as_first_message_sets_peer_has() -> None:
    peer = session(layout=TEN)
    peer.receive_availability(m.Bitfield(bytes([0b1010_0000, 0b0100_0000])))
    assert list(peer.peer_has) == [0, 2, 9]
    assert not peer.peer_is_seed


def test_full_bitfield_makes_the_peer_a_seed() -> None:
    peer = session()
    peer.receive_availability(m.Bitfield(b"\xf0"))
    assert peer.peer_is_seed


def test_what_we_send_before_the_peers_bitfield_does_not_count_as_its_first_message() -> None:
    # Keep-alives never reach the session (the core drops them), so only messages received
    # through ``receive_*`` count; our own sends do not.
    peer = session(fast=True)
    assert peer.availability_messages(Bitfield.full(4)) == [m.HaveAll()]
    peer.unchoke()
    peer.interested(True)
    peer.choke()
    peer.receive_availability(m.Bitfield(b"\x80"))
    assert list(peer.peer_has) == [0]


@pytest.mark.parametrize(
    "availability",
    [m.Bitfield(b"\x80"), m.HaveAll(), m.HaveNone()],
    ids=["bitfield", "have-all", "have-none"],
)
@pytest.mark.parametrize(
    "earlier",
    [
        m.Have(1),
        m.Unchoke(),
        m.Choke(),
        m.Interested(),
        m.NotInterested(),
        m.Bitfield(b"\x00"),
        m.HaveAll(),
        m.HaveNone(),
        m.Request(0, 0, 10),
        m.Cancel(0, 0, 10),
        m.Piece(0, 0, b"x"),
        m.RejectRequest(0, 0, 10),
    ],
    ids=[
        "have",
        "unchoke",
        "choke",
        "interested",
        "not-interested",
        "bitfield",
        "have-all",
        "have-none",
        "request",
        "cancel",
        "piece",
        "reject",
    ],
)
def test_availability_after_another_message_is_an_error(
    earlier: m.Message, availability: m.Bitfield | m.HaveAll | m.HaveNone
) -> None:
    peer = session(fast=True)
    deliver(peer, earlier)
    with pytest.raises(ProtocolError, match="after other messages"):
        peer.receive_availability(availability)


def test_availability_refused_as_a_second_message_leaves_peer_has_alone() -> None:
    peer = session(fast=True)
    peer.receive_have(1)
    with pytest.raises(ProtocolError, match="Bitfield after other messages"):
        peer.receive_availability(m.Bitfield(b"\xf0"))
    with pytest.raises(ProtocolError, match="HaveAll after other messages"):
        peer.receive_availability(m.HaveAll())
    assert list(peer.peer_has) == [1]


@pytest.mark.parametrize(
    ("layout", "payload"),
    [(LAYOUT, b"\xf8"), (LAYOUT, b"\x01"), (TEN, b"\xff\xe0"), (TEN, b"\x00\x01")],
)
def test_bitfield_with_spare_bits_set_is_an_error(layout: PieceLayout, payload: bytes) -> None:
    with pytest.raises(ProtocolError, match="spare"):
        session(layout=layout).receive_availability(m.Bitfield(payload))


@pytest.mark.parametrize("payload", [b"", b"\xf0\x00", b"\xff" * 100])
def test_bitfield_of_the_wrong_length_is_an_error(payload: bytes) -> None:
    with pytest.raises(ProtocolError, match="bytes"):
        session().receive_availability(m.Bitfield(payload))


def test_have_marks_the_piece() -> None:
    peer = session()
    peer.receive_have(3)
    peer.receive_have(1)
    peer.receive_have(3)
    assert list(peer.peer_has) == [1, 3]


def test_haves_of_every_piece_make_the_peer_a_seed() -> None:
    peer = session()
    for index in range(4):
        assert not peer.peer_is_seed
        peer.receive_have(index)
    assert peer.peer_is_seed


@pytest.mark.parametrize("index", [4, 5, 0xFFFFFFFF, -1])
def test_have_out_of_range_is_an_error(index: int) -> None:
    peer = session()
    with pytest.raises(ProtocolError, match="out of range"):
        peer.receive_have(index)
    assert len(peer.peer_has) == 0


def test_have_all_with_fast_makes_the_peer_a_seed() -> None:
    peer = session(fast=True)
    peer.receive_availability(m.HaveAll())
    assert peer.peer_is_seed and list(peer.peer_has) == [0, 1, 2, 3]


def test_have_none_with_fast_leaves_peer_has_empty_and_have_still_works() -> None:
    peer = session(fast=True)
    peer.receive_availability(m.HaveNone())
    assert len(peer.peer_has) == 0
    peer.receive_have(2)
    assert list(peer.peer_has) == [2]


@pytest.mark.parametrize("availability", [m.HaveAll(), m.HaveNone()], ids=["have-all", "none"])
def test_have_all_and_have_none_without_fast_negotiated_are_errors(
    availability: m.HaveAll | m.HaveNone,
) -> None:
    peer = session(fast=False)
    with pytest.raises(ProtocolError, match="fast extension"):
        peer.receive_availability(availability)
    assert len(peer.peer_has) == 0


def test_reject_request_without_fast_negotiated_is_an_error() -> None:
    with pytest.raises(ProtocolError, match="fast extension"):
        session(fast=False).receive_reject(Block(0, 0, 10))


# -- requests from the peer -----------------------------------------------------------------


@pytest.mark.parametrize(
    "block",
    [
        Block(0, 0, 30),  # a whole piece
        Block(1, 29, 1),  # the last byte of a full piece
        Block(3, 0, 10),  # the whole short last piece
        Block(3, 9, 1),  # its last byte
    ],
)
def test_request_inside_a_piece_is_queued_when_unchoked(block: Block) -> None:
    peer = unchoked()
    assert peer.receive_request(block) == []
    assert list(peer.queued) == [block]


@pytest.mark.parametrize(
    "out_of_range",
    [
        Block(4, 0, 1),  # no such piece
        Block(0xFFFFFFFF, 0, 1),
        Block(0, 0, 31),  # past the end of a full piece
        Block(0, 30, 1),  # begins at the end
        Block(0, 20, 11),
        Block(0, 0, 0),  # zero length
        Block(3, 0, 11),  # past the end of the short last piece
        Block(3, 10, 1),
        Block(3, 5, 0xFFFFFFFF),
    ],
    ids=repr,
)
@pytest.mark.parametrize("fast", [False, True])
def test_request_out_of_range_is_an_error_choked_or_not(out_of_range: Block, fast: bool) -> None:
    with pytest.raises(ProtocolError, match="out of range"):
        session(fast=fast).receive_request(out_of_range)
    peer = unchoked(fast=fast)
    with pytest.raises(ProtocolError, match="out of range"):
        peer.receive_request(out_of_range)
    assert not peer.queued


def test_request_larger_than_the_maximum_is_an_error() -> None:
    peer = unchoked(max_request_bytes=16)
    assert peer.receive_request(Block(0, 0, 16)) == []
    with pytest.raises(ProtocolError, match="exceeds"):
        peer.receive_request(Block(0, 0, 17))
    assert list(peer.queued) == [Block(0, 0, 16)]


def test_requests_while_choking_are_dropped_without_fast() -> None:
    peer = session(fast=False)
    assert peer.receive_request(Block(0, 0, 10)) == []
    assert not peer.queued


def test_requests_while_choking_are_rejected_with_fast() -> None:
    peer = session(fast=True)
    assert peer.receive_request(Block(0, 0, 10)) == [m.RejectRequest(0, 0, 10)]
    assert not peer.queued


def test_duplicate_request_is_queued_once() -> None:
    peer = unchoked()
    peer.receive_request(Block(0, 0, 10))
    peer.receive_request(Block(1, 0, 10))
    assert peer.receive_request(Block(0, 0, 10)) == []
    assert list(peer.queued) == [Block(0, 0, 10), Block(1, 0, 10)]


def test_queued_requests_are_served_oldest_first() -> None:
    peer = unchoked()
    for begin in (20, 0, 10):
        peer.receive_request(Block(2, begin, 10))
    assert [peer.next_queued() for _ in range(4)] == [
        Block(2, 20, 10),
        Block(2, 0, 10),
        Block(2, 10, 10),
        None,
    ]


def test_more_queued_requests_than_the_bound_is_an_error() -> None:
    peer = unchoked(max_queued_requests=3)
    for begin in range(3):
        peer.receive_request(Block(0, begin, 1))
    peer.receive_request(Block(0, 0, 1))  # a duplicate takes no room
    with pytest.raises(ProtocolError, match="queued"):
        peer.receive_request(Block(0, 3, 1))
    assert len(peer.queued) == 3


@pytest.mark.parametrize("fast", [False, True])
def test_requests_over_the_bound_while_choking_are_refused_not_an_error(fast: bool) -> None:
    peer = session(fast=fast, max_queued_requests=1)
    for begin in range(3):  # nothing is queued while choking, so nothing fills the queue
        peer.receive_request(Block(0, begin, 1))
    assert not peer.queued


def test_default_queue_bound_holds() -> None:
    peer = PeerSession(PieceLayout(10_000, 10_000), fast=False)
    peer.unchoke()
    for begin in range(DEFAULT_MAX_QUEUED_REQUESTS):
        peer.receive_request(Block(0, begin, 1))
    with pytest.raises(ProtocolError, match="queued"):
        peer.receive_request(Block(0, DEFAULT_MAX_QUEUED_REQUESTS, 1))
    assert len(peer.queued) == DEFAULT_MAX_QUEUED_REQUESTS


def test_served_request_frees_its_place_in_the_queue() -> None:
    peer = unchoked(max_queued_requests=1)
    peer.receive_request(Block(0, 0, 1))
    assert peer.next_queued() == Block(0, 0, 1)
    peer.receive_request(Block(0, 1, 1))
    assert list(peer.queued) == [Block(0, 1, 1)]


@pytest.mark.parametrize("fast", [False, True])
def test_cancel_removes_the_queued_request(fast: bool) -> None:
    peer = unchoked(fast=fast)
    peer.receive_request(Block(0, 0, 10))
    peer.receive_request(Block(0, 10, 10))
    peer.receive_cancel(Block(0, 0, 10))
    assert list(peer.queued) == [Block(0, 10, 10)]


@pytest.mark.parametrize("fast", [False, True])
def test_cancel_frees_its_place_in_the_queue(fast: bool) -> None:
    peer = unchoked(fast=fast, max_queued_requests=1)
    peer.receive_request(Block(0, 0, 10))
    peer.receive_cancel(Block(0, 0, 10))
    assert peer.receive_request(Block(0, 10, 10)) == []
    assert list(peer.queued) == [Block(0, 10, 10)]


@pytest.mark.parametrize("fast", [False, True])
def test_cancel_of_a_block_not_queued_is_harmless(fast: bool) -> None:
    peer = unchoked(fast=fast)
    peer.receive_request(Block(0, 0, 10))
    assert peer.next_queued() == Block(0, 0, 10)  # already being served
    assert peer.receive_cancel(Block(0, 0, 10)) == []
    assert peer.receive_cancel(Block(3, 0, 10)) == []
    assert peer.receive_cancel(Block(9, 0, 10)) == []  # not even a piece: nothing to do
    assert not peer.queued


def test_cancel_without_fast_gets_no_reply() -> None:
    peer = unchoked(fast=False)
    peer.receive_request(Block(0, 0, 10))
    assert peer.receive_cancel(Block(0, 0, 10)) == []
    assert not peer.queued


def test_cancel_of_a_queued_request_with_fast_is_answered_with_a_reject() -> None:
    peer = unchoked(fast=True)
    peer.receive_request(Block(0, 0, 10))
    assert peer.receive_cancel(Block(0, 0, 10)) == [m.RejectRequest(0, 0, 10)]
    assert not peer.queued
    assert peer.receive_cancel(Block(0, 0, 10)) == []  # answered once only


# -- choking, interest, rejects we send -----------------------------------------------------


def test_choke_with_fast_rejects_every_queued_request_in_order() -> None:
    peer = unchoked(fast=True)
    peer.receive_request(Block(1, 0, 10))
    peer.receive_request(Block(0, 0, 10))
    assert peer.choke() == [m.Choke(), m.RejectRequest(1, 0, 10), m.RejectRequest(0, 0, 10)]
    assert peer.am_choking and not peer.queued
    assert peer.choke() == []


def test_choke_without_fast_drops_the_queue_silently() -> None:
    peer = unchoked(fast=False)
    peer.receive_request(Block(1, 0, 10))
    assert peer.choke() == [m.Choke()]
    assert not peer.queued


def test_requests_after_choking_again_are_refused() -> None:
    peer = unchoked(fast=True)
    peer.choke()
    assert peer.receive_request(Block(0, 0, 10)) == [m.RejectRequest(0, 0, 10)]
    assert not peer.queued


def test_unchoke_and_interest_only_send_on_a_change() -> None:
    peer = session()
    assert peer.unchoke() == [m.Unchoke()]
    assert peer.unchoke() == []
    assert not peer.am_choking
    assert peer.interested(True) == [m.Interested()]
    assert peer.interested(True) == []
    assert peer.am_interested
    assert peer.interested(False) == [m.NotInterested()]
    assert peer.interested(False) == []
    assert not peer.am_interested


@pytest.mark.parametrize(("fast", "reply"), [(True, [m.RejectRequest(0, 0, 10)]), (False, [])])
def test_reject_removes_the_block_and_replies_only_with_fast(
    fast: bool, reply: list[m.Message]
) -> None:
    peer = unchoked(fast=fast)
    peer.receive_request(Block(0, 0, 10))
    assert peer.reject(Block(0, 0, 10)) == reply
    assert not peer.queued


# -- pieces and rejects from the peer -------------------------------------------------------


def test_piece_inside_its_piece_is_accepted() -> None:
    peer = session()
    peer.receive_piece(Block(3, 0, 10))
    peer.receive_piece(Block(0, 29, 1))


@pytest.mark.parametrize(
    "block", [Block(4, 0, 1), Block(3, 5, 6), Block(0, 30, 1), Block(0, 0, 0)], ids=repr
)
def test_piece_out_of_range_is_an_error(block: Block) -> None:
    with pytest.raises(ProtocolError, match="piece out of range"):
        session().receive_piece(block)


def test_reject_request_with_fast_is_accepted_in_range_and_an_error_outside() -> None:
    peer = session(fast=True)
    peer.receive_reject(Block(3, 0, 10))
    with pytest.raises(ProtocolError, match="reject out of range"):
        peer.receive_reject(Block(3, 0, 11))


# -- what we say about our own pieces -------------------------------------------------------


def some(num_pieces: int, *indices: int) -> Bitfield:
    bitfield = Bitfield(num_pieces)
    for index in indices:
        bitfield.add(index)
    return bitfield


@pytest.mark.parametrize(
    ("fast", "have", "expected"),
    [
        (True, Bitfield.full(4), [m.HaveAll()]),
        (True, Bitfield(4), [m.HaveNone()]),
        (True, some(4, 0, 2), [m.Bitfield(b"\xa0")]),
        (False, Bitfield.full(4), [m.Bitfield(b"\xf0")]),
        (False, Bitfield(4), []),
        (False, some(4, 3), [m.Bitfield(b"\x10")]),
    ],
    ids=["fast-all", "fast-none", "fast-some", "all", "none", "some"],
)
def test_availability_messages(fast: bool, have: Bitfield, expected: list[m.Message]) -> None:
    assert session(fast=fast).availability_messages(have) == expected


# -- two sessions talking through the codec, in memory --------------------------------------


def test_two_peers_exchange_a_block_through_the_codec() -> None:
    """A seed and a leecher, each a session plus a decoder, bytes pushed between them."""
    seed, leecher = session(fast=True), session(fast=True)
    to_seed, to_leecher = Decoder(expect_handshake=False), Decoder(expect_handshake=False)

    def send(outgoing: list[m.Message], decoder: Decoder, receiver: PeerSession) -> list[m.Message]:
        decoder.receive_data(b"".join(m.encode(message) for message in outgoing))
        replies: list[m.Message] = []
        while (event := decoder.next_event()) is not None:
            assert not isinstance(event, m.Handshake)
            replies.extend(deliver(receiver, event))
        return replies

    assert send(seed.availability_messages(Bitfield.full(4)), to_leecher, leecher) == []
    assert send(leecher.availability_messages(Bitfield(4)), to_seed, seed) == []
    assert leecher.peer_is_seed and len(seed.peer_has) == 0

    # Choked: the request is rejected straight away (BEP 6).
    request: list[m.Message] = [m.Request(3, 0, 10)]
    rejected = send(request, to_seed, seed)
    assert rejected == [m.RejectRequest(3, 0, 10)]
    assert send(rejected, to_leecher, leecher) == []

    assert send(leecher.interested(True), to_seed, seed) == []
    assert seed.peer_interested
    assert send(seed.unchoke(), to_leecher, leecher) == []
    assert not leecher.peer_choking
    assert send(request, to_seed, seed) == []
    block = seed.next_queued()
    assert block == Block(3, 0, 10)
    piece = m.Piece(block.index, block.begin, b"0123456789")
    assert send([piece], to_leecher, leecher) == []
    assert send([m.Have(3)], to_seed, seed) == []
    assert 3 in seed.peer_has

    # A cancel of a queued request is answered with a reject; the peer then learns it is out.
    assert send(request, to_seed, seed) == []
    cancelled = send([m.Cancel(3, 0, 10)], to_seed, seed)
    assert cancelled == [m.RejectRequest(3, 0, 10)]
    assert send(cancelled, to_leecher, leecher) == []
    assert seed.next_queued() is None
    # A second availability message is a protocol error, through the codec too.
    with pytest.raises(ProtocolError, match="after other messages"):
        send([m.HaveAll()], to_seed, seed)
