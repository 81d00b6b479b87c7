"""Peer selection policy: each criterion alone decides the order; exclusions; spread."""

from __future__ import annotations

import collections
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tracker.model import PeerContact
from tracker.selection import (
    LOAD_UNKNOWN_BUCKET,
    UNRANKED,
    Ranked,
    Ranking,
    load_bucket,
    progress_bucket,
    tier_key,
)

EXCLUDE = 2


def pid(n: int) -> bytes:
    return b"-DF0100-" + struct.pack(">Q", n) + b"\0\0\0\0"


def contact(n: int, port: int = 6881) -> PeerContact:
    return PeerContact.make(pid(n), port, bytes([10, 0, n >> 8 & 255, n & 255]), None)


def add(
    ranking: Ranking,
    n: int,
    *,
    progress: float = 0.0,
    load: int | None = 0,
    bad: int = 0,
    zone: str = "",
    port: int = 6881,
) -> Ranked:
    peer = Ranked(pid(n), contact(n, port), zone)
    ranking.place(peer, progress=progress, load=load, bad_reports=bad)
    return peer


def order(ranking: Ranking, asker: int = 999, zone: str = "", numwant: int = 50) -> list[bytes]:
    return [c.peer_id for c in ranking.select(pid(asker), contact(asker), zone, numwant)]


@pytest.mark.parametrize(
    ("progress", "bucket"),
    [(1.0, 0), (0.99, 1), (0.5, 1), (0.49, 2), (0.001, 2), (0.0, 3)],
)
def test_progress_bucket_boundaries(progress: float, bucket: int) -> None:
    assert progress_bucket(progress) == bucket


@pytest.mark.parametrize(
    ("load", "bucket"),
    [(0, 0), (1, 1), (2, 1), (3, 2), (5, 2), (None, LOAD_UNKNOWN_BUCKET), (6, 3), (11, 3), (12, 4)],
)
def test_load_bucket_boundaries_and_unknown_is_middle(load: int | None, bucket: int) -> None:
    assert load_bucket(load) == bucket
    assert LOAD_UNKNOWN_BUCKET == 2


def test_tier_key_excludes_at_threshold_and_ranks_one_report_after_everything() -> None:
    assert tier_key(1.0, 0, EXCLUDE, EXCLUDE) == UNRANKED
    assert tier_key(1.0, 0, 1, EXCLUDE) > tier_key(0.0, 100, 0, EXCLUDE)


def test_reported_peer_is_listed_last_even_when_complete() -> None:
    ranking = Ranking(exclude_reports=EXCLUDE)
    add(ranking, 1, progress=1.0, bad=1)
    add(ranking, 2, progress=0.0, load=50)
    assert order(ranking) == [pid(2), pid(1)]


def test_peer_reported_by_enough_reporters_is_not_handed_out() -> None:
    ranking = Ranking(exclude_reports=EXCLUDE)
    add(ranking, 1, progress=1.0, bad=EXCLUDE)
    add(ranking, 2)
    assert order(ranking) == [pid(2)]
    assert len(ranking) == 1


def test_more_progress_comes_first() -> None:
    ranking = Ranking(exclude_reports=EXCLUDE)
    add(ranking, 1, progress=0.0)
    add(ranking, 2, progress=0.2)
    add(ranking, 3, progress=1.0)
    add(ranking, 4, progress=0.7)
    assert order(ranking) == [pid(3), pid(4), pid(2), pid(1)]


def test_same_zone_comes_first_when_the_asker_has_a_zone() -> None:
    ranking = Ranking(exclude_reports=EXCLUDE)
    add(ranking, 1, zone="a", load=0)
    add(ranking, 2, zone="b", load=20)
    assert order(ranking, zone="b") == [pid(2), pid(1)]
    assert order(ranking, zone="") == [pid(1), pid(2)]
    assert order(ranking, zone="c") == [pid(1), pid(2)]


def test_zone_does_not_beat_progress() -> None:
    ranking = Ranking(exclude_reports=EXCLUDE)
    add(ranking, 1, zone="a", progress=0.1)
    add(ranking, 2, zone="b", progress=1.0)
    assert order(ranking, zone="a") == [pid(2), pid(1)]


def test_lower_load_comes_first_and_unknown_is_middle() -> None:
    ranking = Ranking(exclude_reports=EXCLUDE)
    add(ranking, 1, load=30)
    add(ranking, 2, load=None)
    add(ranking, 3, load=0)
    assert order(ranking) == [pid(3), pid(2), pid(1)]


def test_asker_is_never_listed_by_id_or_by_address() -> None:
    ranking = Ranking(exclude_reports=EXCLUDE)
    add(ranking, 1)
    add(ranking, 2)
    # another id behind peer 2's address and port
    twin = Ranked(pid(3), PeerContact.make(pid(3), 6881, contact(2).ip4, None), "")
    ranking.place(twin, progress=0.0, load=0, bad_reports=0)
    listed = [c.peer_id for c in ranking.select(pid(2), contact(2), "", 50)]
    assert listed == [pid(1)]
    listed = [c.peer_id for c in ranking.select(pid(1), contact(1), "", 50)]
    assert sorted(listed) == sorted([pid(2), pid(3)])


def test_peer_with_port_zero_is_never_listed_until_it_gives_a_port() -> None:
    ranking = Ranking(exclude_reports=EXCLUDE)
    peer = add(ranking, 1, port=0)
    assert order(ranking) == []
    peer.contact = contact(1, 6881)
    ranking.place(peer, progress=0.0, load=0, bad_reports=0)
    assert order(ranking) == [pid(1)]


def test_numwant_caps_the_answer() -> None:
    ranking = Ranking(exclude_reports=EXCLUDE)
    for n in range(10):
        add(ranking, n)
    assert len(order(ranking, numwant=3)) == 3
    assert order(ranking, numwant=0) == []


def test_replacing_a_peer_moves_it_between_tiers() -> None:
    ranking = Ranking(exclude_reports=EXCLUDE)
    slow = add(ranking, 1, progress=0.1)
    add(ranking, 2, progress=0.6)
    assert order(ranking) == [pid(2), pid(1)]
    ranking.place(slow, progress=1.0, load=0, bad_reports=0)
    assert order(ranking) == [pid(1), pid(2)]
    slow.zone = "z"
    ranking.place(slow, progress=1.0, load=0, bad_reports=0)
    ranking.remove(slow)
    ranking.remove(slow)  # idempotent
    assert order(ranking, zone="z") == [pid(2)]
    assert len(ranking) == 1


def test_two_peers_see_each_other_at_once() -> None:
    ranking = Ranking(exclude_reports=EXCLUDE)
    add(ranking, 1)
    assert order(ranking, asker=1) == []
    add(ranking, 2)
    assert order(ranking, asker=1) == [pid(2)]
    assert order(ranking, asker=2) == [pid(1)]


def test_first_listed_peer_is_spread_over_askers() -> None:
    ranking = Ranking(exclude_reports=EXCLUDE)
    for n in range(100):
        add(ranking, n, progress=1.0)
    firsts = collections.Counter(
        ranking.select(pid(10_000 + a), contact(10_000 + a), "", 5)[0].peer_id for a in range(1000)
    )
    assert max(firsts.values()) <= 50  # no peer first for more than 5% of askers
    assert len(firsts) >= 80


def test_same_asker_sees_a_stable_order() -> None:
    ranking = Ranking(exclude_reports=EXCLUDE)
    for n in range(20):
        add(ranking, n)
    assert order(ranking, asker=500) == order(ranking, asker=500)


def test_rejects_nonsense_threshold() -> None:
    with pytest.raises(ValueError, match="exclude_reports"):
        Ranking(exclude_reports=0)


_peer_state = st.tuples(
    st.floats(min_value=0.0, max_value=1.0),
    st.one_of(st.none(), st.integers(min_value=0, max_value=20)),
    st.integers(min_value=0, max_value=3),
    st.sampled_from(["", "a", "b"]),
    st.sampled_from([0, 6881]),
)


@settings(max_examples=200, deadline=None)
@given(
    ops=st.lists(
        st.tuples(st.integers(min_value=0, max_value=15), st.one_of(st.none(), _peer_state)),
        max_size=60,
    ),
    asker=st.integers(min_value=0, max_value=20),
    asker_zone=st.sampled_from(["", "a", "b"]),
)
def test_ranking_matches_a_full_sort_reference(
    ops: list[tuple[int, tuple[float, int | None, int, str, int] | None]],
    asker: int,
    asker_zone: str,
) -> None:
    """After any place/remove sequence, the answer is exactly the eligible peers, in an order
    that never violates criteria 1-4 (checked against the brute-force sort key)."""
    ranking = Ranking(exclude_reports=EXCLUDE)
    peers: dict[int, Ranked] = {}
    state: dict[int, tuple[float, int | None, int, str, int]] = {}
    for n, new in ops:
        if new is None:
            if n in peers:
                ranking.remove(peers.pop(n))
                del state[n]
            continue
        progress, load, bad, zone, port = new
        peer = peers.get(n)
        if peer is None:
            peer = peers[n] = Ranked(pid(n), contact(n, port), zone)
        peer.contact, peer.zone = contact(n, port), zone
        ranking.place(peer, progress=progress, load=load, bad_reports=bad)
        state[n] = new

    def reference_key(n: int) -> tuple[int, int, int, int]:
        progress, load, bad, zone, _ = state[n]
        away = 0 if asker_zone and zone == asker_zone else 1
        return (1 if bad else 0, progress_bucket(progress), away, load_bucket(load))

    eligible = {
        n for n, (_, _, bad, _, port) in state.items() if n != asker and port and bad < EXCLUDE
    }
    got = [c.peer_id for c in ranking.select(pid(asker), contact(asker), asker_zone, 100)]
    by_id = {pid(n): n for n in state}
    assert sorted(got) == sorted(pid(n) for n in eligible)
    keys = [reference_key(by_id[p]) for p in got]
    assert keys == sorted(keys)
