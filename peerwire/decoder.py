"""The peer wire decoder: bytes in, message events out, sans-IO.

Built for a ``BufferedProtocol`` shell: it hands out the buffer the next bytes should be read
into (``get_buffer``), so block payloads land straight in the piece buffer the shell supplies,
with no intermediate copy. It checks only what needs no context (``peerwire.messages`` has the
layouts): the handshake's protocol string, lengths against a maximum before any allocation, and
the exact length of fixed-size messages.
"""

from __future__ import annotations

import struct
from collections import deque
from collections.abc import Callable
from typing import Final

from peerwire.errors import LocalProtocolError, ProtocolError
from peerwire.ids import PeerId, TaskId
from peerwire.messages import (
    AUTH_NONCE_BYTES,
    AUTH_PROOF_BYTES,
    DEFAULT_MAX_MESSAGE_BYTES,
    HANDSHAKE_LENGTH,
    HANDSHAKE_PREFIX,
    AuthChallenge,
    AuthProof,
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
    MessageId,
    NotInterested,
    Piece,
    RejectRequest,
    Request,
    Unchoke,
)

_U32 = struct.Struct(">I")

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
    MessageId.AUTH_CHALLENGE: 1 + AUTH_NONCE_BYTES,
    MessageId.AUTH_PROOF: 1 + AUTH_PROOF_BYTES,
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
#: Grows when a frame needs more. Block payloads go straight into the sink's buffers, so this
#: holds only headers and small messages; every connection zero-fills it, refused ones too.
_INITIAL_BUFFER_BYTES = 16 * 1024


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
        if message_id == MessageId.AUTH_CHALLENGE:
            return AuthChallenge(bytes(buf[offset : offset + size]))
        if message_id == MessageId.AUTH_PROOF:
            return AuthProof(bytes(buf[offset : offset + size]))
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
