"""The peer wire codec: BEP 3 messages and BEP 6 fast-extension messages, sans-IO.

Bytes in, message events out (``Decoder``); messages in, bytes out (``encode``). Nothing here
touches a socket. The decoder is built for a ``BufferedProtocol`` shell: it hands out the buffer
the next bytes should be read into (``get_buffer``), so block payloads land straight in the piece
buffer the shell supplies, with no intermediate copy.

Framing (BEP 3): a 68-byte handshake, then ``<u32 length><u8 id><payload>`` messages; a zero
length is a keep-alive. The decoder only checks what needs no context: the handshake's protocol
string, lengths against a maximum (before any allocation) and the exact length of fixed-size
messages. Whether a message is legal *now* (a bitfield after other messages, a request out of
range) is ``session``'s business.
"""

from __future__ import annotations

import struct
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum
from typing import Final

from peerwire.errors import LocalProtocolError, ProtocolError
from peerwire.ids import PeerId, TaskId
from peerwire.layout import MAX_BLOCK_BYTES

PROTOCOL_STRING: Final = b"BitTorrent protocol"
HANDSHAKE_PREFIX: Final = bytes([len(PROTOCOL_STRING)]) + PROTOCOL_STRING
HANDSHAKE_LENGTH: Final = 68
RESERVED_LENGTH: Final = 8

# Reserved-bit positions, as (byte index, mask), counting from the first reserved byte.
# BEP 6: fast extension, reserved[7] |= 0x04. BEP 10: extension protocol, reserved[5] |= 0x10.
FAST_EXTENSION_BIT: Final = (7, 0x04)
EXTENSION_PROTOCOL_BIT: Final = (5, 0x10)
# Ours: this peer accepts requests for blocks larger than 16 KiB (up to MAX_BLOCK_BYTES).
LARGE_BLOCKS_BIT: Final = (2, 0x08)

#: Largest message a peer may announce: a piece message of the largest block we ever request.
DEFAULT_MAX_MESSAGE_BYTES: Final = MAX_BLOCK_BYTES + 9


class MessageId(IntEnum):
    CHOKE = 0
    UNCHOKE = 1
    INTERESTED = 2
    NOT_INTERESTED = 3
    HAVE = 4
    BITFIELD = 5
    REQUEST = 6
    PIECE = 7
    CANCEL = 8
    # BEP 6 (fast extension)
    HAVE_ALL = 0x0E
    HAVE_NONE = 0x0F
    REJECT_REQUEST = 0x10


def reserved_with(*bits: tuple[int, int]) -> bytes:
    """Eight reserved bytes with the given ``(byte, mask)`` bits set."""
    reserved = bytearray(RESERVED_LENGTH)
    for byte, mask in bits:
        reserved[byte] |= mask
    return bytes(reserved)


def has_bit(reserved: bytes, bit: tuple[int, int]) -> bool:
    byte, mask = bit
    return bool(reserved[byte] & mask)


@dataclass(frozen=True, slots=True)
class Handshake:
    reserved: bytes
    task_id: TaskId  # the BitTorrent info_hash
    peer_id: PeerId

    def supports(self, bit: tuple[int, int]) -> bool:
        return has_bit(self.reserved, bit)


@dataclass(frozen=True, slots=True)
class KeepAlive:
    pass


@dataclass(frozen=True, slots=True)
class Choke:
    pass


@dataclass(frozen=True, slots=True)
class Unchoke:
    pass


@dataclass(frozen=True, slots=True)
class Interested:
    pass


@dataclass(frozen=True, slots=True)
class NotInterested:
    pass


@dataclass(frozen=True, slots=True)
class Have:
    index: int


@dataclass(frozen=True, slots=True)
class Bitfield:
    """BEP 3 bitfield payload, unchecked: spare bits need the piece count (``session``)."""

    payload: bytes


@dataclass(frozen=True, slots=True)
class Request:
    index: int
    begin: int
    length: int


@dataclass(frozen=True, slots=True)
class Piece:
    """A block. ``data`` may be a view of a buffer the shell owns (see ``Decoder``)."""

    index: int
    begin: int
    data: bytes | bytearray | memoryview


@dataclass(frozen=True, slots=True)
class Cancel:
    index: int
    begin: int
    length: int


@dataclass(frozen=True, slots=True)
class HaveAll:
    pass


@dataclass(frozen=True, slots=True)
class HaveNone:
    pass


@dataclass(frozen=True, slots=True)
class RejectRequest:
    index: int
    begin: int
    length: int


Message = (
    KeepAlive
    | Choke
    | Unchoke
    | Interested
    | NotInterested
    | Have
    | Bitfield
    | Request
    | Piece
    | Cancel
    | HaveAll
    | HaveNone
    | RejectRequest
)
Event = Handshake | Message

_U32 = struct.Struct(">I")
_HEADER = struct.Struct(">IB")
_HAVE = struct.Struct(">IBI")
_TRIPLE = struct.Struct(">IBIII")
_PIECE_HEADER = struct.Struct(">IBII")
_U32_MAX = 0xFFFFFFFF

_KEEP_ALIVE_BYTES = b"\x00\x00\x00\x00"
_NO_PAYLOAD: dict[type, bytes] = {
    Choke: _HEADER.pack(1, MessageId.CHOKE),
    Unchoke: _HEADER.pack(1, MessageId.UNCHOKE),
    Interested: _HEADER.pack(1, MessageId.INTERESTED),
    NotInterested: _HEADER.pack(1, MessageId.NOT_INTERESTED),
    HaveAll: _HEADER.pack(1, MessageId.HAVE_ALL),
    HaveNone: _HEADER.pack(1, MessageId.HAVE_NONE),
}
_TRIPLE_IDS: dict[type, MessageId] = {
    Request: MessageId.REQUEST,
    Cancel: MessageId.CANCEL,
    RejectRequest: MessageId.REJECT_REQUEST,
}


def _u32(value: int, what: str) -> int:
    if not 0 <= value <= _U32_MAX:
        raise LocalProtocolError(f"{what} {value} does not fit in 32 bits")
    return value


def encode_handshake(handshake: Handshake) -> bytes:
    if len(handshake.reserved) != RESERVED_LENGTH:
        raise LocalProtocolError(f"reserved must be 8 bytes, got {len(handshake.reserved)}")
    return HANDSHAKE_PREFIX + handshake.reserved + handshake.task_id.raw + handshake.peer_id.raw


def encode_piece_header(index: int, begin: int, length: int) -> bytes:
    """The 13 bytes before a block's payload; the shell sends the payload itself (sendfile)."""
    return _PIECE_HEADER.pack(
        _u32(9 + length, "piece length"),
        MessageId.PIECE,
        _u32(index, "index"),
        _u32(begin, "begin"),
    )


def encode(message: Message) -> bytes:
    """Wire bytes of one message (BEP 3 / BEP 6 layout)."""
    kind = type(message)
    fixed = _NO_PAYLOAD.get(kind)
    if fixed is not None:
        return fixed
    if isinstance(message, Have):
        return _HAVE.pack(5, MessageId.HAVE, _u32(message.index, "index"))
    if isinstance(message, Request | Cancel | RejectRequest):
        return _TRIPLE.pack(
            13,
            _TRIPLE_IDS[kind],
            _u32(message.index, "index"),
            _u32(message.begin, "begin"),
            _u32(message.length, "length"),
        )
    if isinstance(message, Piece):
        return encode_piece_header(message.index, message.begin, len(message.data)) + bytes(
            message.data
        )
    if isinstance(message, Bitfield):
        return _HEADER.pack(_u32(1 + len(message.payload), "length"), MessageId.BITFIELD) + bytes(
            message.payload
        )
    if isinstance(message, KeepAlive):
        return _KEEP_ALIVE_BYTES
    raise LocalProtocolError(f"cannot encode {message!r}")


#: Returned by ``Decoder.next_event`` when more bytes are needed.
NEED_DATA: Final = None

#: Supplies the buffer a block's payload is received into: ``(index, begin, length)`` to a
#: writable memoryview of exactly ``length`` bytes, or None when the block is not wanted.
BlockSink = Callable[[int, int, int], memoryview | None]

_FIXED_LENGTHS: dict[int, int] = {
    MessageId.CHOKE: 1,
    MessageId.UNCHOKE: 1,
    MessageId.INTERESTED: 1,
    MessageId.NOT_INTERESTED: 1,
    MessageId.HAVE: 5,
    MessageId.REQUEST: 13,
    MessageId.CANCEL: 13,
    MessageId.HAVE_ALL: 1,
    MessageId.HAVE_NONE: 1,
    MessageId.REJECT_REQUEST: 13,
}
_SIMPLE: dict[int, Message] = {
    MessageId.CHOKE: Choke(),
    MessageId.UNCHOKE: Unchoke(),
    MessageId.INTERESTED: Interested(),
    MessageId.NOT_INTERESTED: NotInterested(),
    MessageId.HAVE_ALL: HaveAll(),
    MessageId.HAVE_NONE: HaveNone(),
}
_KEEP_ALIVE = KeepAlive()

_HANDSHAKE, _FRAMES, _PAYLOAD, _SKIP = range(4)
_INITIAL_BUFFER_BYTES = 64 * 1024


class Decoder:
    """Incremental decoder of one direction of a peer connection.

    Feed it either with ``receive_data(bytes)``, or zero-copy: write into ``get_buffer()`` and
    report the count with ``buffer_updated(n)``. Then drain ``next_event()`` until it returns
    ``NEED_DATA``. The stream may be split anywhere. Errors of the remote side raise
    ``ProtocolError``; after one, the decoder is unusable (close the connection).

    A ``Piece`` event's ``data`` is a view of the buffer the sink supplied, or of a fresh buffer
    when there is no sink or it wants no part of that block.
    """

    def __init__(
        self,
        *,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        expect_handshake: bool = True,
        block_sink: BlockSink | None = None,
    ) -> None:
        if max_message_bytes < 13:
            raise ValueError("max_message_bytes must allow at least a request (13 bytes)")
        self._max_message_bytes = max_message_bytes
        self._sink = block_sink
        self._buf = bytearray(max(_INITIAL_BUFFER_BYTES, HANDSHAKE_LENGTH))
        self._view = memoryview(self._buf)
        self._start = 0  # first unparsed byte in _buf
        self._end = 0  # end of received bytes in _buf
        self._state = _HANDSHAKE if expect_handshake else _FRAMES
        self._events: deque[Event] = deque()
        # Payload of the block being received (state _PAYLOAD), or bytes left to skip (_SKIP).
        self._target: memoryview = self._view[:0]
        self._filled = 0
        self._piece_index = 0
        self._piece_begin = 0
        self._skip_left = 0
        self._skip_consumed = 0
        self._scratch: memoryview | None = None
        self._failed: ProtocolError | None = None

    # -- feeding ------------------------------------------------------------------------------

    def get_buffer(self) -> memoryview:
        """Writable space for the next received bytes (never empty)."""
        self._check_usable()
        if self._state == _PAYLOAD:
            return self._target[self._filled :]
        if self._state == _SKIP:
            scratch = self._scratch_space()
            return scratch[: min(len(scratch), self._skip_left)]
        if self._end == len(self._buf):
            self._compact()
        return self._view[self._end :]

    def buffer_updated(self, nbytes: int) -> None:
        """``nbytes`` were written at the start of the last ``get_buffer()``."""
        self._check_usable()
        if nbytes <= 0:
            return
        try:
            if self._state == _PAYLOAD:
                self._filled += nbytes
                if self._filled == len(self._target):
                    self._finish_block()
            elif self._state == _SKIP:
                self._skip_left -= nbytes
                self._skip_consumed += nbytes
                if self._skip_left == 0:
                    self._state = _FRAMES
            else:
                self._end += nbytes
            self._parse()
        except ProtocolError as exc:
            self._failed = exc
            raise

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Copying convenience over ``get_buffer``/``buffer_updated``."""
        view = memoryview(data).cast("B")
        while view:
            buf = self.get_buffer()
            n = min(len(buf), len(view))
            buf[:n] = view[:n]
            view = view[n:]
            self.buffer_updated(n)

    def next_event(self) -> Event | None:
        """The next decoded event, or ``NEED_DATA``."""
        if self._events:
            return self._events.popleft()
        return NEED_DATA

    @property
    def pending_bytes(self) -> int:
        """Received bytes not yet part of a complete event (a partial message)."""
        buffered = self._end - self._start
        if self._state == _PAYLOAD:
            return buffered + 13 + self._filled
        if self._state == _SKIP:
            return buffered + self._skip_consumed
        return buffered

    # -- parsing ------------------------------------------------------------------------------

    def _check_usable(self) -> None:
        if self._failed is not None:
            raise ProtocolError(f"decoder already failed: {self._failed}")

    def _compact(self) -> None:
        """Move the unparsed tail to the front of the buffer; grow it if a frame needs room."""
        size = self._end - self._start
        self._buf[:size] = self._buf[self._start : self._end]
        self._start, self._end = 0, size
        needed = self._frame_bytes_needed()
        if needed > len(self._buf):
            grown = bytearray(max(needed, len(self._buf)))
            grown[:size] = self._buf[:size]
            self._view.release()
            self._buf = grown
            self._view = memoryview(self._buf)

    def _frame_bytes_needed(self) -> int:
        """Bytes the frame at ``_start`` needs in the buffer (its length was already checked)."""
        if self._state == _HANDSHAKE:
            return HANDSHAKE_LENGTH
        if self._end - self._start < 5:
            return 5
        if self._buf[self._start + 4] == MessageId.PIECE:
            return 13  # the payload goes to the block's own buffer
        (length,) = _U32.unpack_from(self._buf, self._start)
        return 4 + int(length)

    def _parse(self) -> None:
        buf = self._buf
        while self._state in (_HANDSHAKE, _FRAMES):
            avail = self._end - self._start
            start = self._start
            if self._state == _HANDSHAKE:
                if avail < HANDSHAKE_LENGTH:
                    seen = buf[start : start + min(avail, len(HANDSHAKE_PREFIX))]
                    if seen != HANDSHAKE_PREFIX[: len(seen)]:
                        raise ProtocolError("not a BitTorrent handshake")
                    return
                self._events.append(self._handshake(start))
                self._start += HANDSHAKE_LENGTH
                self._state = _FRAMES
                continue
            if avail < 4:
                return
            (length,) = _U32.unpack_from(buf, start)
            if length == 0:
                self._events.append(_KEEP_ALIVE)
                self._start += 4
                continue
            if length > self._max_message_bytes:
                raise ProtocolError(
                    f"message length {length} exceeds the maximum {self._max_message_bytes}"
                )
            if avail < 5:
                return
            message_id = buf[start + 4]
            if message_id == MessageId.PIECE:
                if length < 9:
                    raise ProtocolError(f"piece message too short ({length} bytes)")
                if avail < 13:
                    return
                self._start_block(length - 9)
                continue
            expected = _FIXED_LENGTHS.get(message_id)
            if expected is not None and length != expected:
                raise ProtocolError(
                    f"message id {message_id} must be {expected} bytes, not {length}"
                )
            if message_id != MessageId.BITFIELD and expected is None:
                # Unknown id (an extension we did not negotiate): skip it without buffering.
                in_buffer = min(avail - 4, length)
                self._start += 4 + in_buffer
                if in_buffer < length:
                    self._skip_left = length - in_buffer
                    self._skip_consumed = 4 + in_buffer
                    self._state = _SKIP
                    self._start = self._end = 0
                continue
            if avail < 4 + length:
                return
            self._events.append(self._decode_frame(message_id, start + 5, length - 1))
            self._start += 4 + length
        if self._start == self._end:
            self._start = self._end = 0

    def _handshake(self, start: int) -> Handshake:
        buf = self._buf
        if buf[start : start + 20] != HANDSHAKE_PREFIX:
            raise ProtocolError("not a BitTorrent handshake")
        reserved = bytes(buf[start + 20 : start + 28])
        task = TaskId(bytes(buf[start + 28 : start + 48]))
        peer = PeerId(bytes(buf[start + 48 : start + 68]))
        return Handshake(reserved, task, peer)

    def _decode_frame(self, message_id: int, offset: int, size: int) -> Message:
        simple = _SIMPLE.get(message_id)
        if simple is not None:
            return simple
        buf = self._buf
        if message_id == MessageId.HAVE:
            return Have(_U32.unpack_from(buf, offset)[0])
        if message_id == MessageId.BITFIELD:
            return Bitfield(bytes(buf[offset : offset + size]))
        index, begin, length = struct.unpack_from(">III", buf, offset)
        if message_id == MessageId.REQUEST:
            return Request(index, begin, length)
        if message_id == MessageId.CANCEL:
            return Cancel(index, begin, length)
        return RejectRequest(index, begin, length)

    def _start_block(self, block_bytes: int) -> None:
        start = self._start
        index, begin = struct.unpack_from(">II", self._buf, start + 5)
        target = self._sink(index, begin, block_bytes) if self._sink is not None else None
        if target is None:
            # Its own buffer, not shared scratch: several such events may be pending at once.
            # Unwanted blocks are rare (late or duplicate answers) and bounded in size.
            target = memoryview(bytearray(block_bytes))
        elif len(target) != block_bytes:
            raise LocalProtocolError(f"block sink returned {len(target)} bytes, not {block_bytes}")
        self._piece_index, self._piece_begin = index, begin
        self._target = target
        # Bytes of the payload that already arrived with the header.
        have = min(self._end - start - 13, block_bytes)
        target[:have] = self._buf[start + 13 : start + 13 + have]
        self._filled = have
        self._start = start + 13 + have
        self._state = _PAYLOAD
        if self._filled == block_bytes:
            self._finish_block()
        elif self._start == self._end:
            self._start = self._end = 0

    def _finish_block(self) -> None:
        self._events.append(Piece(self._piece_index, self._piece_begin, self._target))
        self._target = self._view[:0]
        self._filled = 0
        self._state = _FRAMES

    def _scratch_space(self) -> memoryview:
        if self._scratch is None:
            self._scratch = memoryview(bytearray(max(self._max_message_bytes, 64 * 1024)))
        return self._scratch
