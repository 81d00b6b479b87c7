"""The peer wire codec (peerwire.messages), h11 style: bytes in, events out, no sockets.

Vectors are written out by hand from the BEP 3 and BEP 6 message layouts, so a codec that agrees
with itself but not with the spec fails here.
"""

from __future__ import annotations

import itertools
import struct
import tracemalloc
from collections.abc import Iterable, Iterator, Sequence

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from peerwire.decoder import NEED_DATA, BlockSink, Decoder
from peerwire.errors import LocalProtocolError, ProtocolError
from peerwire.ids import PeerId, TaskId
from peerwire.layout import MAX_BLOCK_BYTES, MIB
from peerwire.messages import (
    DEFAULT_MAX_MESSAGE_BYTES,
    EXTENSION_PROTOCOL_BIT,
    FAST_EXTENSION_BIT,
    HANDSHAKE_LENGTH,
    LARGE_BLOCKS_BIT,
    Bitfield,
    Cancel,
    Choke,
    Event,
    Handshake,
    Have,
    HaveAll,
    HaveNone,
    Interested,
    KeepAlive,
    Message,
    NotInterested,
    Piece,
    RejectRequest,
    Request,
    Unchoke,
    encode,
    encode_handshake,
    encode_piece_header,
    has_bit,
    reserved_with,
)

# A decoder that hangs (an empty get_buffer(), a loop that consumes nothing) fails fast here.
pytestmark = pytest.mark.timeout(60)

U32_MAX = 0xFFFFFFFF
SMALL_MAX = 1024  # max_message_bytes for tests that build many decoders (small scratch space)

TASK = TaskId(bytes(range(1, 21)))
PEER = PeerId(b"-DF0100-" + b"abcdefghijkl")
# Reserved bytes as a real client sends them: BEP 10 (byte 5, 0x10), BEP 6 (byte 7, 0x04) and
# BEP 5 DHT (byte 7, 0x01), which we do not know but must keep.
RESERVED = bytes.fromhex("00 00 00 00 00 10 00 05")
HANDSHAKE = Handshake(RESERVED, TASK, PEER)
HANDSHAKE_BYTES = (
    b"\x13BitTorrent protocol" + RESERVED + bytes(range(1, 21)) + b"-DF0100-abcdefghijkl"
)

# -- helpers --------------------------------------------------------------------------------


def normalised(event: Event) -> Event:
    """Events comparable by value: a Piece's data (a view into some buffer) copied to bytes."""
    if isinstance(event, Piece):
        return Piece(event.index, event.begin, bytes(event.data))
    return event


def drain(decoder: Decoder) -> list[Event]:
    events: list[Event] = []
    while (event := decoder.next_event()) is not NEED_DATA:
        assert event is not None
        events.append(normalised(event))
    return events


def chunks(data: bytes, cuts: Iterable[int]) -> list[bytes]:
    points = [0, *sorted(cuts), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(points)]


def decode(
    data: bytes,
    cuts: Iterable[int] = (),
    *,
    expect_handshake: bool = True,
    sink: BlockSink | None = None,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
) -> list[Event]:
    """Feed ``data`` cut at ``cuts`` through ``receive_data``, draining after every chunk."""
    decoder = Decoder(
        expect_handshake=expect_handshake, block_sink=sink, max_message_bytes=max_message_bytes
    )
    events: list[Event] = []
    for chunk in chunks(data, cuts):
        decoder.receive_data(chunk)
        events.extend(drain(decoder))
    assert decoder.pending_bytes == 0
    return events


def feed_via_buffer(decoder: Decoder, data: bytes, write_sizes: Iterator[int]) -> list[Event]:
    """Zero-copy feeding: write at most the next size into ``get_buffer()``, then report it."""
    events: list[Event] = []
    pos = 0
    while pos < len(data):
        buf = decoder.get_buffer()
        assert len(buf) > 0, "get_buffer() must never be empty (a read of 0 bytes is EOF)"
        n = min(len(buf), len(data) - pos, next(write_sizes))
        buf[:n] = data[pos : pos + n]
        decoder.buffer_updated(n)
        pos += n
        events.extend(drain(decoder))
    return events


def wire(*messages: Message) -> bytes:
    return b"".join(encode(message) for message in messages)


class PreallocSink:
    """A block sink handing out a fresh, owned buffer for every block (the zero-copy path)."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, int, int]] = []
        self.buffers: list[bytearray] = []

    def __call__(self, index: int, begin: int, length: int) -> memoryview:
        self.calls.append((index, begin, length))
        self.buffers.append(bytearray(length))
        return memoryview(self.buffers[-1])


class ScratchSink:
    """A block sink that wants no block: the decoder must use its scratch space."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, int, int]] = []

    def __call__(self, index: int, begin: int, length: int) -> memoryview | None:
        self.calls.append((index, begin, length))
        return None


SINK_MODES = ["no-sink", "prealloc-sink", "scratch-sink"]


def make_sink(mode: str) -> BlockSink | None:
    if mode == "prealloc-sink":
        return PreallocSink()
    if mode == "scratch-sink":
        return ScratchSink()
    return None


# -- byte-exact vectors (BEP 3, BEP 6) ------------------------------------------------------

VECTORS: list[tuple[Message, str]] = [
    (KeepAlive(), "00000000"),
    (Choke(), "00000001 00"),
    (Unchoke(), "00000001 01"),
    (Interested(), "00000001 02"),
    (NotInterested(), "00000001 03"),
    (Have(5), "00000005 04 00000005"),
    (Have(U32_MAX), "00000005 04 ffffffff"),
    (Bitfield(b"\xff\xe0"), "00000003 05 ffe0"),
    (Bitfield(b""), "00000001 05"),
    (Request(1, 0x4000, 0x4000), "0000000d 06 00000001 00004000 00004000"),
    (Piece(1, 0x4000, b"abc"), "0000000c 07 00000001 00004000 616263"),
    (Piece(0, 0, b""), "00000009 07 00000000 00000000"),
    (Cancel(1, 0x4000, 0x4000), "0000000d 08 00000001 00004000 00004000"),
    (HaveAll(), "00000001 0e"),
    (HaveNone(), "00000001 0f"),
    (RejectRequest(2, 0, 0x4000), "0000000d 10 00000002 00000000 00004000"),
]


@pytest.mark.parametrize(("message", "hex_bytes"), VECTORS, ids=lambda v: repr(v)[:30])
def test_encode_gives_the_spec_bytes(message: Message, hex_bytes: str) -> None:
    assert encode(message) == bytes.fromhex(hex_bytes)


@pytest.mark.parametrize(("message", "hex_bytes"), VECTORS, ids=lambda v: repr(v)[:30])
def test_decode_of_the_spec_bytes_gives_exactly_the_message(
    message: Message, hex_bytes: str
) -> None:
    events = decode(bytes.fromhex(hex_bytes), expect_handshake=False)
    assert events == [message]
    assert type(events[0]) is type(message)


def test_piece_header_is_the_first_13_bytes_of_the_piece_message() -> None:
    assert encode_piece_header(1, 0x4000, 3) == bytes.fromhex("0000000c 07 00000001 00004000")


def test_handshake_encodes_to_68_spec_bytes() -> None:
    encoded = encode_handshake(HANDSHAKE)
    assert encoded == HANDSHAKE_BYTES
    assert len(encoded) == HANDSHAKE_LENGTH == 68
    assert encoded[:20] == bytes([19]) + b"BitTorrent protocol"


def test_handshake_decodes_with_reserved_bits_preserved_and_exposed() -> None:
    events = decode(HANDSHAKE_BYTES)
    assert events == [HANDSHAKE]
    handshake = events[0]
    assert isinstance(handshake, Handshake)
    assert handshake.reserved == RESERVED  # unknown bit 0x01 of byte 7 kept too
    assert handshake.task_id == TASK
    assert handshake.peer_id == PEER
    assert handshake.supports(FAST_EXTENSION_BIT)
    assert handshake.supports(EXTENSION_PROTOCOL_BIT)
    assert not handshake.supports(LARGE_BLOCKS_BIT)


def test_reserved_bit_positions_follow_bep6_bep10_and_ours() -> None:
    assert reserved_with() == bytes(8)
    assert reserved_with(FAST_EXTENSION_BIT) == bytes.fromhex("00000000 00000004")
    assert reserved_with(EXTENSION_PROTOCOL_BIT) == bytes.fromhex("00000000 00100000")
    assert reserved_with(LARGE_BLOCKS_BIT) == bytes.fromhex("00000800 00000000")
    both = reserved_with(FAST_EXTENSION_BIT, LARGE_BLOCKS_BIT)
    assert both == bytes.fromhex("00000800 00000004")
    assert has_bit(both, FAST_EXTENSION_BIT)
    assert has_bit(both, LARGE_BLOCKS_BIT)
    assert not has_bit(both, EXTENSION_PROTOCOL_BIT)


def test_handshake_round_trips_every_reserved_byte_value() -> None:
    for value in range(256):
        reserved = bytes([value]) * 8
        handshake = Handshake(reserved, TASK, PEER)
        assert decode(encode_handshake(handshake)) == [handshake]


def test_handshake_then_messages_in_one_chunk() -> None:
    data = HANDSHAKE_BYTES + bytes.fromhex("00000005 04 00000005 00000000 00000001 01")
    assert decode(data) == [HANDSHAKE, Have(5), KeepAlive(), Unchoke()]


# -- encoding errors ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "message",
    [
        Have(U32_MAX + 1),
        Have(-1),
        Request(U32_MAX + 1, 0, 1),
        Request(0, U32_MAX + 1, 1),
        Request(0, 0, U32_MAX + 1),
        Cancel(0, 0, U32_MAX + 1),
        RejectRequest(0, -1, 1),
        Piece(U32_MAX + 1, 0, b"x"),
        Piece(0, U32_MAX + 1, b"x"),
    ],
    ids=repr,
)
def test_encoding_a_value_over_32_bits_is_a_local_error(message: Message) -> None:
    with pytest.raises(LocalProtocolError, match="32 bits"):
        encode(message)


def test_piece_header_whose_length_overflows_32_bits_is_a_local_error() -> None:
    encode_piece_header(0, 0, U32_MAX - 9)  # the largest that fits
    with pytest.raises(LocalProtocolError):
        encode_piece_header(0, 0, U32_MAX - 8)


@pytest.mark.parametrize("reserved", [b"", bytes(7), bytes(9)])
def test_handshake_with_wrong_reserved_length_is_a_local_error(reserved: bytes) -> None:
    with pytest.raises(LocalProtocolError, match="8 bytes"):
        encode_handshake(Handshake(reserved, TASK, PEER))


def test_encoding_something_that_is_not_a_message_is_a_local_error() -> None:
    with pytest.raises(LocalProtocolError):
        encode(HANDSHAKE)  # type: ignore[arg-type]


# -- split anywhere -------------------------------------------------------------------------

# Every kind of message, an unknown id between them, a piece with a payload and an empty one.
STREAM_MESSAGES: list[Message] = [
    KeepAlive(),
    Bitfield(b"\xa5\x80"),
    Have(7),
    Unchoke(),
    Interested(),
    Request(1, 0x4000, 0x4000),
    Piece(2, 0x8000, bytes(range(40, 60))),
    Cancel(1, 0x4000, 0x4000),
    RejectRequest(3, 0, 0x4000),
    Piece(4, 0, b""),
    HaveAll(),
    HaveNone(),
    NotInterested(),
    Choke(),
    KeepAlive(),
]
STREAM_EVENTS: list[Event] = [HANDSHAKE, *STREAM_MESSAGES]
UNKNOWN_PORT = bytes.fromhex("00000003 09 1ae1")  # BEP 5 port message, not ours to decode
STREAM = HANDSHAKE_BYTES + wire(*STREAM_MESSAGES[:6]) + UNKNOWN_PORT + wire(*STREAM_MESSAGES[6:])

# A short frames-only stream for the exhaustive two-cut test.
SMALL_EVENTS: list[Event] = [Have(1), Piece(2, 3, b"0123456789"), KeepAlive(), Bitfield(b"\xf0")]
SMALL_STREAM = (
    encode(Have(1))
    + bytes.fromhex("00000004 14 000102")  # BEP 10 extended message: skipped
    + wire(Piece(2, 3, b"0123456789"), KeepAlive(), Bitfield(b"\xf0"))
)


@pytest.mark.parametrize("mode", SINK_MODES)
def test_stream_split_at_every_point_gives_the_same_events(mode: str) -> None:
    assert decode(STREAM, sink=make_sink(mode)) == STREAM_EVENTS
    for cut in range(len(STREAM) + 1):
        assert decode(STREAM, [cut], sink=make_sink(mode), max_message_bytes=SMALL_MAX) == (
            STREAM_EVENTS
        ), f"cut at {cut}"


@pytest.mark.parametrize("mode", SINK_MODES)
def test_small_stream_split_at_every_pair_of_points_gives_the_same_events(mode: str) -> None:
    n = len(SMALL_STREAM)
    for first in range(n + 1):
        for second in range(first, n + 1):
            events = decode(
                SMALL_STREAM,
                [first, second],
                expect_handshake=False,
                sink=make_sink(mode),
                max_message_bytes=SMALL_MAX,
            )
            assert events == SMALL_EVENTS, f"cuts at {first}, {second}"


def test_stream_fed_one_byte_at_a_time_through_get_buffer_gives_the_same_events() -> None:
    for mode in SINK_MODES:
        decoder = Decoder(block_sink=make_sink(mode))
        assert feed_via_buffer(decoder, STREAM, itertools.repeat(1)) == STREAM_EVENTS


def test_sink_is_asked_once_per_block_with_its_coordinates() -> None:
    sink = PreallocSink()
    decode(STREAM, range(0, len(STREAM), 3), sink=sink)
    assert sink.calls == [(2, 0x8000, 20), (4, 0, 0)]


def test_piece_payload_lands_in_the_sink_buffer_without_a_copy() -> None:
    sink = PreallocSink()
    decoder = Decoder(expect_handshake=False, block_sink=sink)
    payload = bytes(range(50))
    data = encode(Piece(3, 0x4000, payload)) + encode(Have(9))

    decoder.receive_data(data[:13])  # the header only
    assert sink.calls == [(3, 0x4000, 50)]
    target = sink.buffers[0]
    buf = decoder.get_buffer()
    assert buf.obj is target and len(buf) == 50  # the reader writes straight into the block

    buf[:20] = payload[:20]
    decoder.buffer_updated(20)  # a partial fill
    assert decoder.next_event() is NEED_DATA
    assert target[:20] == payload[:20]
    buf = decoder.get_buffer()
    assert buf.obj is target and len(buf) == 30  # never past the end of the block

    buf[:30] = payload[20:]
    decoder.buffer_updated(30)
    event = decoder.next_event()
    assert isinstance(event, Piece) and isinstance(event.data, memoryview)
    assert event.data.obj is target
    assert (event.index, event.begin, bytes(target)) == (3, 0x4000, payload)

    assert decoder.get_buffer().obj is not target  # the next message goes elsewhere
    decoder.receive_data(data[13 + 50 :])
    assert drain(decoder) == [Have(9)]
    assert bytes(target) == payload


def test_payload_arriving_with_the_header_is_copied_into_the_sink_buffer() -> None:
    sink = PreallocSink()
    decoder = Decoder(expect_handshake=False, block_sink=sink)
    payload = b"abcdefgh"
    decoder.receive_data(encode(Piece(0, 0, payload))[:16])  # header + 3 payload bytes
    assert bytes(sink.buffers[0][:3]) == b"abc"
    assert len(decoder.get_buffer()) == 5
    decoder.receive_data(payload[3:])
    assert drain(decoder) == [Piece(0, 0, payload)]


def test_pieces_without_a_sink_stay_valid_after_more_bytes_arrive() -> None:
    decoder = Decoder(expect_handshake=False)
    decoder.receive_data(encode(Piece(0, 0, b"first")))
    first = decoder.next_event()
    decoder.receive_data(encode(Piece(1, 0, b"later")))
    second = decoder.next_event()
    assert isinstance(first, Piece) and isinstance(second, Piece)
    assert (bytes(first.data), bytes(second.data)) == (b"first", b"later")


def test_scratch_pieces_decoded_from_one_chunk_keep_their_own_data() -> None:
    decoder = Decoder(expect_handshake=False, block_sink=ScratchSink())
    decoder.receive_data(wire(Piece(0, 0, b"AAAA"), Piece(1, 0, b"BBBB")))
    assert drain(decoder) == [Piece(0, 0, b"AAAA"), Piece(1, 0, b"BBBB")]


def test_sink_returning_a_buffer_of_the_wrong_size_is_a_local_error() -> None:
    def bad_sink(index: int, begin: int, length: int) -> memoryview:
        return memoryview(bytearray(length + 1))

    decoder = Decoder(expect_handshake=False, block_sink=bad_sink)
    with pytest.raises(LocalProtocolError):
        decoder.receive_data(encode(Piece(0, 0, b"abc")))


def test_pending_bytes_counts_a_partial_frame() -> None:
    decoder = Decoder(expect_handshake=True)
    decoder.receive_data(HANDSHAKE_BYTES[:67])
    assert decoder.pending_bytes == 67
    decoder.receive_data(HANDSHAKE_BYTES[67:] + encode(Have(3))[:7])
    assert decoder.pending_bytes == 7
    decoder.receive_data(encode(Have(3))[7:])
    assert decoder.pending_bytes == 0
    assert drain(decoder) == [HANDSHAKE, Have(3)]


@pytest.mark.parametrize(
    "partial",
    [encode(Piece(0, 0, b"abcd"))[:13], encode(Piece(0, 0, b"abcd"))[:15], b"\x00\x00\x00\x05\x14"],
    ids=["piece-header", "piece-header-and-2-payload-bytes", "unknown-id-header"],
)
def test_pending_bytes_counts_a_partial_block_or_skipped_message(partial: bytes) -> None:
    decoder = Decoder(expect_handshake=False)
    decoder.receive_data(partial)
    assert decoder.pending_bytes == len(partial)


# -- maximum message length -----------------------------------------------------------------


@pytest.mark.parametrize("announced", [DEFAULT_MAX_MESSAGE_BYTES + 1, 0x80000000, U32_MAX])
@pytest.mark.parametrize("message_id", [5, 7, 0x14])  # bitfield, piece, unknown
def test_huge_length_is_an_error_after_four_bytes_and_allocates_nothing(
    announced: int, message_id: int
) -> None:
    decoder = Decoder()
    decoder.receive_data(HANDSHAKE_BYTES)
    header = struct.pack(">IB", announced, message_id)
    tracemalloc.start()
    try:
        decoder.receive_data(header[:3])  # not yet known: fine
        with pytest.raises(ProtocolError, match="exceeds the maximum"):
            decoder.receive_data(header[3:4])
        _, peak_bytes = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak_bytes < 1 * MIB
    assert drain(decoder) == [HANDSHAKE]


def test_length_over_a_custom_maximum_is_an_error_through_get_buffer() -> None:
    decoder = Decoder(expect_handshake=False, max_message_bytes=64)
    with pytest.raises(ProtocolError):
        feed_via_buffer(decoder, struct.pack(">IB", 65, 5), itertools.repeat(1))


@pytest.mark.parametrize(
    "message",
    [Bitfield(bytes(63)), Piece(1, 2, bytes(range(55))), Request(1, 2, 3)],
    ids=["bitfield", "piece", "request"],
)
def test_lengths_up_to_the_maximum_are_accepted(message: Message) -> None:
    data = encode(message)
    assert len(data) - 4 <= 64
    for cut in range(len(data)):
        assert decode(data, [cut], expect_handshake=False, max_message_bytes=64) == [message]


def test_unknown_message_at_exactly_the_maximum_is_skipped() -> None:
    data = struct.pack(">IB", 64, 0x14) + bytes(63) + encode(Have(1))
    assert decode(data, [30], expect_handshake=False, max_message_bytes=64) == [Have(1)]


def test_largest_block_fits_the_default_maximum() -> None:
    payload = bytes(range(256)) * (MAX_BLOCK_BYTES // 256)
    data = encode(Piece(0, 0, payload))
    assert len(data) - 4 == DEFAULT_MAX_MESSAGE_BYTES
    assert decode(data, [13, 70_000], expect_handshake=False) == [Piece(0, 0, payload)]


def test_maximum_below_a_request_is_refused() -> None:
    with pytest.raises(ValueError):
        Decoder(max_message_bytes=12)


def test_bitfield_larger_than_the_initial_buffer_decodes() -> None:
    payload = bytes(range(256)) * 400  # 100 KiB, more than the 64 KiB the decoder starts with
    data = HANDSHAKE_BYTES + encode(Have(1)) + encode(Bitfield(payload)) + encode(Have(2))
    expected = [HANDSHAKE, Have(1), Bitfield(payload), Have(2)]
    assert decode(data) == expected
    assert decode(data, range(0, len(data), 4093)) == expected
    assert decode(data, [70, 80, 65_536, 65_600]) == expected
    assert feed_via_buffer(Decoder(), data, itertools.repeat(10_000)) == expected


# -- unknown ids, wrong lengths, garbage first ----------------------------------------------


@pytest.mark.parametrize("message_id", [9, 0x0D, 0x11, 0x14, 0xFF])
def test_unknown_ids_are_skipped_and_the_next_message_decodes(message_id: int) -> None:
    data = struct.pack(">IB", 6, message_id) + b"\x01\x02\x03\x04\x05" + encode(Have(4))
    for cut in range(len(data) + 1):
        assert decode(data, [cut], expect_handshake=False) == [Have(4)], f"cut at {cut}"


def test_unknown_id_without_payload_is_skipped() -> None:
    assert decode(bytes.fromhex("00000001 14") + encode(Choke()), expect_handshake=False) == [
        Choke()
    ]


def test_unknown_message_longer_than_the_buffer_is_skipped() -> None:
    body = bytes(range(256)) * 800  # 200 KiB
    data = struct.pack(">IB", 1 + len(body), 0x14) + body + encode(Have(4))
    expected: list[Event] = [Have(4)]
    assert decode(data, expect_handshake=False) == expected
    assert decode(data, range(0, len(data), 7_001), expect_handshake=False) == expected
    decoder = Decoder(expect_handshake=False)
    assert feed_via_buffer(decoder, data, itertools.repeat(3_000)) == expected


FIXED_IDS = {0: 1, 1: 1, 2: 1, 3: 1, 4: 5, 6: 13, 8: 13, 0x0E: 1, 0x0F: 1, 0x10: 13}


@pytest.mark.parametrize(
    ("message_id", "length"),
    [(i, n + d) for i, n in FIXED_IDS.items() for d in (-1, 1) if n + d > 0],
)
def test_fixed_size_message_with_a_wrong_length_is_an_error(message_id: int, length: int) -> None:
    decoder = Decoder(expect_handshake=False)
    header = struct.pack(">IB", length, message_id)
    with pytest.raises(ProtocolError, match="must be"):
        decoder.receive_data(header)  # detected from the header, before the payload


@pytest.mark.parametrize("length", range(1, 9))
def test_piece_shorter_than_its_index_and_begin_is_an_error(length: int) -> None:
    decoder = Decoder(expect_handshake=False)
    with pytest.raises(ProtocolError, match="too short"):
        decoder.receive_data(struct.pack(">IB", length, 7) + bytes(length - 1))


@pytest.mark.parametrize(
    "first_bytes",
    [
        b"\x00\x00\x00\x05\x04\x00\x00\x00\x01",  # a message without a handshake
        b"GET / HTTP/1.1\r\n\r\n",
        b"\x13BitTorrent protocoX",
        b"\x13Bittorrent protocol",
        b"\x12BitTorrent protocol",
        b"\x13BitTorrent",  # right so far, then garbage
    ],
)
def test_bytes_that_are_not_a_handshake_fail_at_the_first_wrong_byte(first_bytes: bytes) -> None:
    data = (first_bytes + b"!" * 68)[:68]
    prefix = b"\x13BitTorrent protocol"
    wrong_at = next(i for i, (a, b) in enumerate(zip(data, prefix, strict=False)) if a != b)
    decoder = Decoder()
    for i in range(wrong_at):
        decoder.receive_data(data[i : i + 1])
    with pytest.raises(ProtocolError, match="handshake"):
        decoder.receive_data(data[wrong_at : wrong_at + 1])


def test_decoder_stays_failed_after_a_protocol_error() -> None:
    decoder = Decoder(expect_handshake=False)
    with pytest.raises(ProtocolError):
        decoder.receive_data(bytes.fromhex("00000002 00 00"))  # a choke two bytes long
    with pytest.raises(ProtocolError, match="already failed"):
        decoder.receive_data(encode(Have(1)))
    with pytest.raises(ProtocolError):
        decoder.get_buffer()
    with pytest.raises(ProtocolError):
        decoder.buffer_updated(1)
    assert decoder.next_event() is NEED_DATA


# -- hypothesis: round trips, random splits, garbage ----------------------------------------

u32 = st.integers(0, U32_MAX)
small_bytes = st.binary(max_size=48)
messages: st.SearchStrategy[Message] = st.one_of(
    st.sampled_from(
        [KeepAlive(), Choke(), Unchoke(), Interested(), NotInterested(), HaveAll(), HaveNone()]
    ),
    st.builds(Have, u32),
    st.builds(Bitfield, small_bytes),
    st.builds(Request, u32, u32, u32),
    st.builds(Piece, u32, u32, small_bytes),
    st.builds(Cancel, u32, u32, u32),
    st.builds(RejectRequest, u32, u32, u32),
)
handshakes = st.builds(
    Handshake,
    st.binary(min_size=8, max_size=8),
    st.builds(TaskId, st.binary(min_size=20, max_size=20)),
    st.builds(PeerId, st.binary(min_size=20, max_size=20)),
)
FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(handshake=handshakes, sequence=st.lists(messages, max_size=12), data=st.data())
def test_random_messages_round_trip_through_random_splits(
    handshake: Handshake, sequence: list[Message], data: st.DataObject
) -> None:
    encoded = encode_handshake(handshake) + wire(*sequence)
    cuts = data.draw(st.lists(st.integers(0, len(encoded)), max_size=8), label="cuts")
    mode = data.draw(st.sampled_from(SINK_MODES), label="sink")
    expected: list[Event] = [handshake, *sequence]
    assert decode(encoded, cuts, sink=make_sink(mode), max_message_bytes=SMALL_MAX) == expected


@FAST
@given(sequence=st.lists(messages, max_size=12), sizes=st.lists(st.integers(1, 40), min_size=1))
def test_random_messages_round_trip_through_partial_buffer_fills(
    sequence: list[Message], sizes: list[int]
) -> None:
    decoder = Decoder(
        expect_handshake=False, block_sink=PreallocSink(), max_message_bytes=SMALL_MAX
    )
    assert feed_via_buffer(decoder, wire(*sequence), itertools.cycle(sizes)) == sequence


def feed_garbage(decoder: Decoder, data: bytes, sizes: Sequence[int]) -> None:
    """Feed until done or a ProtocolError; any other exception fails the test. Bounded loop."""
    pos = 0
    steps = 0
    try:
        while pos < len(data):
            steps += 1
            assert steps <= len(data), "every step must consume at least one byte"
            buf = decoder.get_buffer()
            assert len(buf) > 0
            n = min(len(buf), len(data) - pos, sizes[steps % len(sizes)])
            buf[:n] = data[pos : pos + n]
            decoder.buffer_updated(n)
            pos += n
            drain(decoder)
    except ProtocolError:
        with pytest.raises(ProtocolError):
            decoder.receive_data(b"\x00")


sizes_strategy = st.lists(st.integers(1, 300), min_size=1, max_size=8)
modes_strategy = st.sampled_from(SINK_MODES)
GARBAGE = settings(max_examples=150, deadline=None)


@GARBAGE
@given(garbage=st.binary(max_size=600), sizes=sizes_strategy, mode=modes_strategy)
def test_random_garbage_without_handshake_only_raises_protocol_error(
    garbage: bytes, sizes: list[int], mode: str
) -> None:
    feed_garbage(Decoder(block_sink=make_sink(mode)), garbage, sizes)


@GARBAGE
@given(garbage=st.binary(max_size=600), sizes=sizes_strategy, mode=modes_strategy)
def test_random_garbage_after_handshake_only_raises_protocol_error(
    garbage: bytes, sizes: list[int], mode: str
) -> None:
    feed_garbage(Decoder(block_sink=make_sink(mode)), HANDSHAKE_BYTES + garbage, sizes)


# Frames with plausible lengths and ids but payloads of any size: wrong lengths, short pieces,
# unknown ids, bitfields, reach much deeper into the decoder than uniformly random bytes.
frames = st.lists(
    st.tuples(st.integers(0, 40), st.integers(0, 24) | st.integers(0, 255), small_bytes).map(
        lambda t: struct.pack(">IB", t[0], t[1]) + t[2]
    ),
    max_size=10,
).map(b"".join)


@GARBAGE
@given(garbage=frames, sizes=sizes_strategy, mode=modes_strategy)
def test_frame_shaped_garbage_only_raises_protocol_error(
    garbage: bytes, sizes: list[int], mode: str
) -> None:
    decoder = Decoder(expect_handshake=False, block_sink=make_sink(mode), max_message_bytes=64)
    feed_garbage(decoder, garbage, sizes)


@GARBAGE
@given(
    sequence=st.lists(messages, min_size=1, max_size=8),
    flips=st.lists(st.tuples(st.integers(0, 10_000), st.integers(1, 255)), min_size=1),
    sizes=sizes_strategy,
)
def test_corrupted_valid_stream_only_raises_protocol_error(
    sequence: list[Message], flips: list[tuple[int, int]], sizes: list[int]
) -> None:
    data = bytearray(HANDSHAKE_BYTES + wire(*sequence))
    for position, xor in flips:
        data[position % len(data)] ^= xor
    feed_garbage(Decoder(block_sink=PreallocSink()), bytes(data), sizes)


def test_feed_garbage_lets_other_exceptions_through() -> None:
    """The garbage tests can fail: an exception other than ProtocolError escapes the helper."""

    def broken_sink(index: int, begin: int, length: int) -> memoryview:
        raise RuntimeError("not a protocol error")

    decoder = Decoder(expect_handshake=False, block_sink=broken_sink)
    with pytest.raises(RuntimeError):
        feed_garbage(decoder, encode(Piece(0, 0, b"")), [5])
