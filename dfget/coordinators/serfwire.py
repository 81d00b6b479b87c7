"""What nodes say to each other over Serf: the user events and queries of decentralized mode,
compact, versioned and - with the cluster secret - authenticated. Pure: bytes in, values out.

Every payload is ``msgpack([VERSION, sender, seq, ts_ms, body])``, followed with the cluster
secret by a 16-byte HMAC-SHA256 tag. User events carry no sender of their own (Serf does not
say who fired one), so the payload names its node; ``seq`` grows with every payload a node
sends and ``ts_ms`` is its clock. The tag covers the event's or query's name too, and an answer's
tag covers the query it answers, so nothing can be moved from one name or query to another.
A receiver with the secret drops a payload whose tag does not verify, whose ``ts_ms`` is more
than ``SKEW_S`` from its own clock, or whose ``(sender, seq)`` it has already accepted
(``ReplayWindow``). Every refusal is a ``Rejected`` with a short reason (counted, never raised
past the node).

Events (Serf's user events: ``UserEventSizeLimit`` is 512 bytes, name included):

* ``df-start`` ``[task, flags, joined_ms]``: the sender takes part in the task since
  ``joined_ms`` (its clock; ``FLAG_SOURCE``: it may read from the origin; ``FLAG_COMPLETE``: it
  holds every piece).
* ``df-have`` ``[task, flags, held, num_pieces, mode, data, counters]``: the pieces it holds.
  ``mode`` 0: ``data`` is its whole bitfield (BEP 3 order); 1: ``data`` lists ``[first, count,
  ...]`` runs of pieces added since its previous event (holding only grows, so runs are
  merged in any order). ``held`` is how many it holds in all: a receiver that knows fewer asks
  the node (``df-q-have``). ``counters``: ``[downloaded, uploaded, origin]`` bytes (for /stats)
  and ``joined_ms``.
* ``df-recover``: the body of ``df-have``; the receiver *replaces* what it knew of the sender
  (a node that rejoins, or restarted, says what it still holds).
* ``df-digests`` ``[task, [index, digest, ...]]``: digests of pieces the sender read from the
  origin itself (``DIGESTS_PER_EVENT`` at most; the origin serves each piece about once, so the
  manifest travels about once). Digests that were missed are asked of a holder
  (``df-q-digests``).
* ``df-removed`` ``[task]``: the sender no longer serves the task.
* ``df-length`` ``[task, total_length, piece_length, validator, ranges, url]``: the task's
  geometry (the manifest without its digests); ``url`` is "" when it did not fit.

Queries (Serf's queries: payload and each answer at most 1024 bytes), answered by the node
the asker names, or by every node that can:

* ``df-q-have`` ``[task, offset]`` -> ``[task, num_pieces, offset, bitfield bytes from offset]``;
* ``df-q-digests`` ``[task, first, count]`` -> ``[task, first, [digest or b"", ...]]``;
* ``df-q-manifest`` ``[task]`` -> the body of ``df-length`` (asked of every node);
* ``df-q-holders`` ``[task]`` -> the body of ``df-have`` (asked of every node by one that
  starts a task: the nodes that take part answer, straight to the asker, so that a newcomer
  learns who holds what without every holder gossiping it again).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import itertools
import time
from dataclasses import dataclass
from typing import Any, Final

import msgpack

VERSION: Final = 1
EVENT_START: Final = "df-start"
EVENT_HAVE: Final = "df-have"
EVENT_RECOVER: Final = "df-recover"
EVENT_REMOVED: Final = "df-removed"
EVENT_DIGESTS: Final = "df-digests"
EVENT_LENGTH: Final = "df-length"
QUERY_HAVE: Final = "df-q-have"
QUERY_DIGESTS: Final = "df-q-digests"
QUERY_MANIFEST: Final = "df-q-manifest"
QUERY_HOLDERS: Final = "df-q-holders"
EVENTS: Final = (
    EVENT_START, EVENT_HAVE, EVENT_RECOVER, EVENT_REMOVED, EVENT_LENGTH, EVENT_DIGESTS
)  # fmt: skip
QUERIES: Final = (QUERY_HAVE, QUERY_DIGESTS, QUERY_MANIFEST, QUERY_HOLDERS)

FLAG_SOURCE: Final = 1
FLAG_COMPLETE: Final = 2
#: Serf's defaults (``UserEventSizeLimit``, ``QueryResponseSizeLimit``): an event's name and
#: payload, and a query answer with Serf's own framing around it.
EVENT_LIMIT: Final = 512
ANSWER_LIMIT: Final = 800
TAG_BYTES: Final = 16
#: A payload stamped further than this from the receiver's clock is refused (with the secret).
SKEW_S: Final = 300.0
#: Sequence numbers remembered per sender, below its highest one.
WINDOW: Final = 4096
TASK_BYTES: Final = 20
DIGEST_BYTES: Final = 32
#: Pieces per ``df-q-digests`` answer: 20 digests and the framing fit ``ANSWER_LIMIT``.
DIGESTS_PER_ANSWER: Final = 20
#: Digests per ``df-digests`` event (with the framing and the tag, within ``EVENT_LIMIT``).
DIGESTS_PER_EVENT: Final = 10
#: Bitfield bytes per ``df-q-have`` answer.
BITFIELD_PER_ANSWER: Final = 640
_COUNTER_MAX: Final = 1 << 62


class Rejected(ValueError):
    """A payload that is dropped: the reason is a short word for the metrics label."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


def _hkdf(secret: bytes, info: bytes, length: int = 32) -> bytes:
    """HKDF-SHA256 (RFC 5869) of the cluster secret, salted with this purpose's label."""
    prk = hmac.new(b"dragonfly serf v1", secret, hashlib.sha256).digest()
    out, block = b"", b""
    for counter in itertools.count(1):
        if len(out) >= length:
            break
        block = hmac.new(prk, block + info + bytes([counter]), hashlib.sha256).digest()
        out += block
    return out[:length]


def gossip_key(secret: bytes) -> str:
    """The key Serf encrypts gossip with (``-encrypt``: 32 bytes, base64), from the secret."""
    return base64.b64encode(_hkdf(secret, b"gossip encryption")).decode()


def event_key(secret: bytes) -> bytes:
    """The key of the HMAC tags on events, queries and answers, from the secret."""
    return _hkdf(secret, b"event authentication")


def rpc_auth_key(secret: bytes) -> str:
    """An RPC auth token for the agent this program starts (``rpc_auth``)."""
    return _hkdf(secret, b"agent rpc").hex()


@dataclass(frozen=True, slots=True)
class Envelope:
    sender: str
    seq: int
    ts_ms: int
    body: list[Any]


class ReplayWindow:
    """The ``(sender, seq)`` pairs accepted lately: each is accepted once."""

    def __init__(self) -> None:
        self._highest: dict[str, int] = {}
        self._seen: dict[str, set[int]] = {}

    def accept(self, sender: str, seq: int) -> bool:
        highest = self._highest.get(sender)
        seen = self._seen.setdefault(sender, set())
        if highest is not None and (seq <= highest - WINDOW or seq in seen):
            return False
        if highest is None or seq > highest:
            self._highest[sender] = seq
            floor = seq - WINDOW
            if len(seen) > 2 * WINDOW:
                seen.difference_update([s for s in seen if s <= floor])
        seen.add(seq)
        return True


class Codec:
    """Seals what this node sends and opens what it receives (``key`` None: no secret)."""

    def __init__(self, node: str, key: bytes | None, clock: Any = time.time) -> None:
        self.node = node
        self.key = key
        self._clock = clock
        #: Grows across restarts too: microseconds of the clock at start.
        self._seq = itertools.count(int(clock() * 1e6))
        self._window = ReplayWindow()

    # -- sending -------------------------------------------------------------------------------

    def seal(self, name: str, body: list[Any], context: bytes = b"") -> bytes:
        packed: bytes = msgpack.packb(
            [VERSION, self.node, next(self._seq), int(self._clock() * 1000), body],
            use_bin_type=True,
        )
        if self.key is None:
            return packed
        return packed + self._tag(name, context, packed)

    def seal_answer(self, name: str, query: bytes, body: list[Any]) -> bytes:
        """An answer to the query payload ``query`` (its tag covers the query)."""
        return self.seal(name, body, b"A" + hashlib.sha256(query).digest())

    def _tag(self, name: str, context: bytes, packed: bytes) -> bytes:
        assert self.key is not None
        message = name.encode() + b"\0" + context + packed
        return hmac.new(self.key, message, hashlib.sha256).digest()[:TAG_BYTES]

    # -- receiving -----------------------------------------------------------------------------

    def open(self, name: str, payload: bytes, context: bytes = b"") -> Envelope:
        """The envelope of a received payload; ``Rejected`` when it is not to be believed."""
        packed = payload
        if self.key is not None:
            if len(payload) <= TAG_BYTES:
                raise Rejected("unauthenticated", "no tag")
            packed, tag = payload[:-TAG_BYTES], payload[-TAG_BYTES:]
            if not hmac.compare_digest(tag, self._tag(name, context, packed)):
                raise Rejected("unauthenticated", "the tag does not verify")
        try:
            outer = msgpack.unpackb(packed, raw=False, strict_map_key=True, max_bin_len=4096)
        except (ValueError, msgpack.UnpackException) as exc:
            raise Rejected("malformed", str(exc)) from None
        if not isinstance(outer, list) or len(outer) != 5:
            raise Rejected("malformed", "not an envelope")
        version, sender, seq, ts_ms, body = outer
        if version != VERSION:
            raise Rejected("version", f"version {version!r}")
        if not isinstance(sender, str) or not sender or len(sender) > 128:
            raise Rejected("malformed", "sender")
        if not _uint(seq) or not _uint(ts_ms) or not isinstance(body, list):
            raise Rejected("malformed", "header fields")
        if self.key is not None:
            if abs(ts_ms / 1000 - self._clock()) > SKEW_S:
                raise Rejected("stale", f"stamped {ts_ms / 1000 - self._clock():+.0f}s off")
            if not context and not self._window.accept(sender, seq):
                raise Rejected("replayed", f"{sender} seq {seq}")
        return Envelope(sender, seq, ts_ms, body)

    def open_answer(self, name: str, query: bytes, payload: bytes) -> Envelope:
        return self.open(name, payload, b"A" + hashlib.sha256(query).digest())


def _uint(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < _COUNTER_MAX


def fits_event(name: str, payload: bytes) -> bool:
    return len(name) + len(payload) <= EVENT_LIMIT


# -- bodies ------------------------------------------------------------------------------------


def parse_start(body: list[Any]) -> tuple[bytes, int, int]:
    """``(task, flags, joined_ms)`` of a ``df-start`` body."""
    task = task_of(body)
    if len(body) != 3 or not _uint(body[1]) or not _uint(body[2]):
        raise Rejected("malformed", "start body")
    return task, body[1], body[2]


def task_of(body: list[Any]) -> bytes:
    """The task id every body starts with."""
    task = body[0] if body else None
    if not isinstance(task, bytes) or len(task) != TASK_BYTES:
        raise Rejected("malformed", "task id")
    return task


@dataclass(frozen=True, slots=True)
class HaveNews:
    """A ``df-have`` or ``df-recover`` body, checked."""

    task: bytes
    flags: int
    held: int
    num_pieces: int
    #: The whole bitfield (mode 0), else None.
    bitfield: bytes | None
    #: Runs ``(first, count)`` added (mode 1).
    runs: tuple[tuple[int, int], ...]
    downloaded: int = 0
    uploaded: int = 0
    origin: int = 0
    #: When the sender joined the task (its clock, ms).
    joined_ms: int = 0


def have_body(
    task: bytes,
    flags: int,
    held: int,
    num_pieces: int,
    bitfield: bytes | None,
    runs: list[tuple[int, int]],
    counters: tuple[int, int, int, int],
) -> list[Any]:
    if bitfield is not None:
        return [task, flags, held, num_pieces, 0, bitfield, list(counters)]
    flat = [n for run in runs for n in run]
    return [task, flags, held, num_pieces, 1, flat, list(counters)]


def parse_have(body: list[Any]) -> HaveNews:
    task = task_of(body)
    if len(body) != 7:
        raise Rejected("malformed", "have body")
    _, flags, held, num_pieces, mode, data, counters = body
    if not (_uint(flags) and _uint(held) and _uint(num_pieces)) or held > num_pieces:
        raise Rejected("malformed", "have counts")
    if num_pieces > 1 << 24:
        raise Rejected("malformed", "too many pieces")
    bitfield: bytes | None = None
    runs: list[tuple[int, int]] = []
    if mode == 0 and isinstance(data, bytes) and len(data) == (num_pieces + 7) // 8:
        bitfield = data
    elif mode == 1 and isinstance(data, list) and len(data) % 2 == 0:
        for first, count in zip(data[::2], data[1::2], strict=True):
            if not (_uint(first) and _uint(count)) or first + count > num_pieces:
                raise Rejected("malformed", "have run")
            runs.append((first, count))
    else:
        raise Rejected("malformed", "have data")
    if not isinstance(counters, list) or len(counters) != 4 or not all(map(_uint, counters)):
        raise Rejected("malformed", "have counters")
    return HaveNews(task, flags, held, num_pieces, bitfield, tuple(runs), *counters)


@dataclass(frozen=True, slots=True)
class Geometry:
    """A ``df-length`` body or a ``df-q-manifest`` answer, checked."""

    task: bytes
    total_length: int
    piece_length: int
    validator: str | None
    ranges: bool
    url: str

    @property
    def num_pieces(self) -> int:
        return -(-self.total_length // self.piece_length)

    def body(self) -> list[Any]:
        return [
            self.task,
            self.total_length,
            self.piece_length,
            self.validator,
            self.ranges,
            self.url,
        ]


def length_body(geometry: Geometry, limit: int) -> list[Any]:
    """The body of ``df-length``, without the URL when it would not fit ``limit`` bytes."""
    body = geometry.body()
    if len(msgpack.packb(body, use_bin_type=True)) > limit:
        body[5] = ""
    return body


def parse_geometry(body: list[Any]) -> Geometry:
    task = task_of(body)
    if len(body) != 6:
        raise Rejected("malformed", "length body")
    _, total, piece_length, validator, ranges, url = body
    if not (_uint(total) and _uint(piece_length)) or piece_length <= 0:
        raise Rejected("malformed", "geometry")
    if -(-total // piece_length) > 1 << 24:
        raise Rejected("malformed", "too many pieces")
    if validator is not None and (not isinstance(validator, str) or len(validator) > 1024):
        raise Rejected("malformed", "validator")
    if not isinstance(ranges, bool) or not isinstance(url, str) or len(url) > 8192:
        raise Rejected("malformed", "ranges or url")
    return Geometry(task, total, piece_length, validator, ranges, url)


def parse_digests_answer(body: list[Any], task: bytes, first: int) -> dict[int, bytes]:
    if task_of(body) != task or len(body) != 3 or body[1] != first:
        raise Rejected("malformed", "digests answer for another range")
    digests = body[2]
    if not isinstance(digests, list) or len(digests) > DIGESTS_PER_ANSWER:
        raise Rejected("malformed", "digest list")
    found: dict[int, bytes] = {}
    for offset, digest in enumerate(digests):
        if not isinstance(digest, bytes) or len(digest) not in (0, DIGEST_BYTES):
            raise Rejected("malformed", "digest")
        if digest:
            found[first + offset] = digest
    return found


def parse_digests_event(body: list[Any]) -> tuple[bytes, dict[int, bytes]]:
    task = task_of(body)
    if len(body) != 2 or not isinstance(body[1], list) or len(body[1]) % 2:
        raise Rejected("malformed", "digests body")
    flat = body[1]
    if len(flat) > 2 * DIGESTS_PER_EVENT:
        raise Rejected("malformed", "too many digests")
    found: dict[int, bytes] = {}
    for index, digest in zip(flat[::2], flat[1::2], strict=True):
        if not _uint(index) or not isinstance(digest, bytes) or len(digest) != DIGEST_BYTES:
            raise Rejected("malformed", "digest")
        found[index] = digest
    return task, found


def parse_have_answer(body: list[Any], task: bytes, offset: int) -> tuple[int, bytes]:
    """``(num_pieces, bitfield bytes from offset)`` of a ``df-q-have`` answer."""
    if task_of(body) != task or len(body) != 4 or body[2] != offset:
        raise Rejected("malformed", "have answer for another range")
    num_pieces, chunk = body[1], body[3]
    if not _uint(num_pieces) or not isinstance(chunk, bytes):
        raise Rejected("malformed", "have answer")
    if offset + len(chunk) > (num_pieces + 7) // 8 or len(chunk) > BITFIELD_PER_ANSWER:
        raise Rejected("malformed", "have answer length")
    return num_pieces, chunk


def query_fields(body: list[Any], count: int) -> list[int]:
    """The unsigned numbers after the task id of a query body."""
    task_of(body)
    numbers = body[1:]
    if len(numbers) != count or not all(map(_uint, numbers)):
        raise Rejected("malformed", "query fields")
    return list(numbers)
