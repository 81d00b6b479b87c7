"""The payloads of decentralized mode: sealed and opened, and every way one is refused."""

from __future__ import annotations

import msgpack
import pytest

from dfget.coordinators import serfwire as wire

TASK = bytes(range(20))
SECRET = b"0123456789abcdef0123456789abcdef"


class Clock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def codec(node: str, secret: bytes | None = SECRET, clock: Clock | None = None) -> wire.Codec:
    return wire.Codec(node, wire.event_key(secret) if secret else None, clock or Clock())


def test_a_sealed_event_opens_with_its_sender_and_body() -> None:
    payload = codec("a").seal(wire.EVENT_START, [TASK, wire.FLAG_SOURCE, 1234])
    envelope = codec("b").open(wire.EVENT_START, payload)
    assert envelope.sender == "a" and envelope.body == [TASK, wire.FLAG_SOURCE, 1234]
    assert wire.parse_start(envelope.body) == (TASK, wire.FLAG_SOURCE, 1234)
    assert wire.fits_event(wire.EVENT_START, payload)


def test_keys_follow_the_secret_and_serf_takes_the_gossip_key() -> None:
    import base64

    assert len(base64.b64decode(wire.gossip_key(SECRET))) == 32
    assert wire.gossip_key(SECRET) != wire.gossip_key(SECRET[::-1])
    assert wire.event_key(SECRET) != base64.b64decode(wire.gossip_key(SECRET))


@pytest.mark.parametrize(
    "tamper",
    [
        lambda p: p[:-1] + bytes([p[-1] ^ 1]),  # the tag
        lambda p: p[:5] + bytes([p[5] ^ 1]) + p[6:],  # the body
        lambda p: p[:-16],  # no tag at all
    ],
)
def test_with_the_secret_an_altered_or_untagged_payload_is_refused(tamper: object) -> None:
    payload = codec("a").seal(wire.EVENT_HAVE, [TASK])
    with pytest.raises(wire.Rejected) as caught:
        codec("b").open(wire.EVENT_HAVE, tamper(payload))  # type: ignore[operator]
    assert caught.value.reason in ("unauthenticated", "malformed")


def test_a_payload_of_another_secret_or_none_is_refused() -> None:
    for sender in (codec("a", b"another secret of sixteen+ bytes"), codec("a", None)):
        payload = sender.seal(wire.EVENT_START, [TASK, 1])
        with pytest.raises(wire.Rejected, match="unauthenticated"):
            codec("b").open(wire.EVENT_START, payload)


def test_a_tag_does_not_carry_over_to_another_event_name() -> None:
    payload = codec("a").seal(wire.EVENT_START, [TASK, 1])
    with pytest.raises(wire.Rejected, match="unauthenticated"):
        codec("b").open(wire.EVENT_REMOVED, payload)


def test_a_replayed_payload_is_refused_and_out_of_order_ones_are_not() -> None:
    sender, receiver = codec("a"), codec("b")
    first = sender.seal(wire.EVENT_HAVE, [TASK])
    second = sender.seal(wire.EVENT_HAVE, [TASK])
    receiver.open(wire.EVENT_HAVE, second)
    receiver.open(wire.EVENT_HAVE, first)  # gossip delivers in any order
    with pytest.raises(wire.Rejected, match="replayed"):
        receiver.open(wire.EVENT_HAVE, first)


def test_a_payload_stamped_far_from_the_receivers_clock_is_refused() -> None:
    payload = codec("a", clock=Clock(1_800_000_000.0)).seal(wire.EVENT_START, [TASK, 1])
    late = codec("b", clock=Clock(1_800_000_000.0 + wire.SKEW_S + 1))
    with pytest.raises(wire.Rejected, match="stale"):
        late.open(wire.EVENT_START, payload)


def test_an_answer_is_bound_to_its_query() -> None:
    asker, holder = codec("a"), codec("b")
    query = asker.seal(wire.QUERY_DIGESTS, [TASK, 0, 2])
    other = asker.seal(wire.QUERY_DIGESTS, [TASK, 0, 2])
    answer = holder.seal_answer(wire.QUERY_DIGESTS, query, [TASK, 0, [b"\1" * 32, b""]])
    opened = asker.open_answer(wire.QUERY_DIGESTS, query, answer)
    assert wire.parse_digests_answer(opened.body, TASK, 0) == {0: b"\1" * 32}
    with pytest.raises(wire.Rejected, match="unauthenticated"):
        asker.open_answer(wire.QUERY_DIGESTS, other, answer)


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"\xc1",
        msgpack.packb([2, "a", 1, 1, []]),
        msgpack.packb({"not": "a list"}),
        msgpack.packb([1, "", 1, 1, []]),
        msgpack.packb([1, "a", -1, 1, []]),
        msgpack.packb([1, "a", 1, 1, "body"]),
    ],
)
def test_malformed_payloads_are_refused_without_a_secret_too(payload: bytes) -> None:
    with pytest.raises(wire.Rejected):
        codec("b", None).open(wire.EVENT_HAVE, payload)


def test_have_bodies_round_trip_and_bad_ones_are_refused() -> None:
    body = wire.have_body(TASK, 1, 3, 10, None, [(0, 2), (7, 1)], (5, 6, 7, 8))
    news = wire.parse_have(body)
    assert news.runs == ((0, 2), (7, 1)) and news.held == 3 and news.origin == 7
    assert news.joined_ms == 8
    full = wire.parse_have(wire.have_body(TASK, 3, 10, 10, b"\xff\xc0", [], (0, 0, 0, 0)))
    assert full.bitfield == b"\xff\xc0"
    for bad in (
        wire.have_body(TASK, 1, 11, 10, None, [], (0, 0, 0, 0)),  # holds more than there is
        wire.have_body(TASK, 1, 1, 10, None, [(9, 2)], (0, 0, 0, 0)),  # a run past the end
        wire.have_body(TASK, 1, 1, 10, b"\xff", [], (0, 0, 0, 0)),  # a bitfield too short
        [b"short", 1, 1, 10, 1, [], [0, 0, 0, 0]],
        [TASK, 1, 1, 10, 1, [], [0, 0, 0]],  # the counters of version 1 are four
    ):
        with pytest.raises(wire.Rejected, match="malformed"):
            wire.parse_have(bad)


def test_a_length_body_drops_a_url_that_does_not_fit() -> None:
    geometry = wire.Geometry(TASK, 10 << 20, 1 << 16, '"etag"', True, "http://o/" + "x" * 600)
    body = wire.length_body(geometry, 400)
    assert body[5] == "" and wire.parse_geometry(body).total_length == 10 << 20
    payload = codec("a").seal(wire.EVENT_LENGTH, body)
    assert wire.fits_event(wire.EVENT_LENGTH, payload)
