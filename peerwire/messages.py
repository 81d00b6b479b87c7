"""The peer wire codec: BEP 3 messages and BEP 6 fast-extension messages, sans-IO.

Messages in, bytes out (``encode``); the other direction is ``peerwire.decoder``. Nothing here
touches a socket.

Framing (BEP 3): a 68-byte handshake, then ``<u32 length><u8 id><payload>`` messages; a zero
length is a keep-alive. Whether a message is legal *now* (a bitfield after other messages, a
request out of range) is ``session``'s business.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum
from typing import Final

from peerwire.errors import LocalProtocolError
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
#: Ours: peers prove they hold the cluster secret (``AuthChallenge``/``AuthProof``) before
#: anything else passes between them.
AUTH_BIT: Final = (2, 0x04)
AUTH_NONCE_BYTES: Final = 16
AUTH_PROOF_BYTES: Final = 32

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
    # Ours, only between peers that both set AUTH_BIT (ids outside BEP 3/6/10).
    AUTH_CHALLENGE = 0x1E
    AUTH_PROOF = 0x1F


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


@dataclass(frozen=True, slots=True)
class AuthChallenge:
    """A random nonce the other side must answer with an ``AuthProof``."""

    nonce: bytes


@dataclass(frozen=True, slots=True)
class AuthProof:
    """HMAC-SHA256 under the cluster secret over the task, the challenger's nonce and the
    prover's peer id (``peerwire.auth.auth_proof``)."""

    mac: bytes


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
    | AuthChallenge
    | AuthProof
)
Event = Handshake | Message

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
    if isinstance(message, AuthChallenge):
        if len(message.nonce) != AUTH_NONCE_BYTES:
            raise LocalProtocolError(f"auth nonce must be {AUTH_NONCE_BYTES} bytes")
        return _HEADER.pack(1 + AUTH_NONCE_BYTES, MessageId.AUTH_CHALLENGE) + message.nonce
    if isinstance(message, AuthProof):
        if len(message.mac) != AUTH_PROOF_BYTES:
            raise LocalProtocolError(f"auth proof must be {AUTH_PROOF_BYTES} bytes")
        return _HEADER.pack(1 + AUTH_PROOF_BYTES, MessageId.AUTH_PROOF) + message.mac
    raise LocalProtocolError(f"cannot encode {message!r}")
