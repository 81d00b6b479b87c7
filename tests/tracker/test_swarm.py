"""Swarm semantics, one behaviour per test, with a fake clock; every test runs against both
stores: the in-memory ``Swarm`` and ``RedisSwarm`` on a real ``redis-server``."""

from __future__ import annotations

import dataclasses
import struct
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test

from peerwire.auth import MAX_SKEW_S
from peerwire.manifest import ManifestConflict
from tests.tracker.stores import SyncRedisSwarm
from tracker.config import TrackerConfig
from tracker.manifests import ManifestError, ManifestUpdate
from tracker.model import AnnounceRequest, Event, PeerReport, ScrapeCounts
from tracker.swarm import Replayed, Swarm, SwarmFull

TASK = b"T" * 20
OTHER_TASK = b"U" * 20
PIECE = 16 * 1024
PIECES = 20  # 3 bytes of bitfield, 4 spare bits
TOTAL = PIECES * PIECE


class Clock:
    def __init__(self) -> None:
        self.now_s = 1000.0

    def __call__(self) -> float:
        return self.now_s


def pid(n: int) -> bytes:
    return b"-DF0100-" + struct.pack(">Q", n) + b"\0\0\0\0"


def req(n: int, task: bytes = TASK, **fields: Any) -> AnnounceRequest:
    base = AnnounceRequest(
        info_hash=task, peer_id=pid(n), port=6881, ip4=bytes([127, 0, n >> 8 & 255, n & 255])
    )
    return dataclasses.replace(base, **fields)


def have(*pieces: int, num_pieces: int = PIECES) -> bytes:
    bits = bytearray((num_pieces + 7) // 8)
    for i in pieces:
        bits[i >> 3] |= 0x80 >> (i & 7)
    return bytes(bits)


def manifest(**fields: Any) -> ManifestUpdate:
    base = ManifestUpdate(
        url="http://o/files/a.bin?x=1", total_length=TOTAL, piece_length=PIECE, digests={}
    )
    return dataclasses.replace(base, **fields)


Store = Any  # Swarm or SyncRedisSwarm: the same methods and counters
Make = Callable[..., tuple[Store, Clock]]


@pytest.fixture(params=["memory", "redis"])
def make(request: pytest.FixtureRequest) -> Iterator[Make]:
    """``make(**config)`` -> (store, clock), for each store in turn."""
    made: list[SyncRedisSwarm] = []

    def factory(**config: Any) -> tuple[Store, Clock]:
        clock = Clock()
        if request.param == "memory":
            return Swarm(TrackerConfig(**config), clock), clock
        url = request.getfixturevalue("redis_url")
        store = SyncRedisSwarm(TrackerConfig(**config), clock, url)
        made.append(store)
        return store, clock

    yield factory
    for store in made:
        store.close()


def ids(swarm: Store, n: int, **fields: Any) -> list[bytes]:
    return [c.peer_id for c in swarm.announce(req(n, **fields)).peers]


def task_stats(swarm: Store, task: bytes = TASK) -> dict[str, Any]:
    document = swarm.stats(task)
    assert len(document["tasks"]) == 1
    result: dict[str, Any] = document["tasks"][0]
    return result


def peer_stats(swarm: Store, n: int) -> dict[str, Any]:
    found: list[dict[str, Any]] = [
        p for p in task_stats(swarm)["peer_list"] if p["id"] == pid(n).hex()
    ]
    assert len(found) == 1
    return found[0]


# --- peers in answers --------------------------------------------------------------------


def test_two_peers_see_each_other_and_never_themselves(make: Make) -> None:
    swarm, _ = make()
    assert ids(swarm, 1) == []
    assert ids(swarm, 2) == [pid(1)]
    assert ids(swarm, 1) == [pid(2)]


def test_returning_peer_with_new_port_is_updated_not_duplicated(make: Make) -> None:
    swarm, _ = make()
    swarm.announce(req(1))
    swarm.announce(req(1, port=7000))
    (contact,) = swarm.announce(req(2)).peers
    assert contact.port == 7000
    assert swarm.peer_count == 2


def test_peer_at_the_askers_address_and_port_is_not_returned(make: Make) -> None:
    swarm, _ = make()
    swarm.announce(req(1))
    twin = req(2, ip4=req(1).ip4)
    assert swarm.announce(twin).peers == []


def test_peer_with_port_zero_is_never_handed_out(make: Make) -> None:
    swarm, _ = make()
    swarm.announce(req(1, port=0))
    assert ids(swarm, 2) == []


def test_numwant_caps_the_answer(make: Make) -> None:
    swarm, _ = make()
    for n in range(10):
        swarm.announce(req(n))
    assert len(ids(swarm, 99, numwant=4)) == 4


def test_stopped_removes_the_peer_and_answers_without_peers(make: Make) -> None:
    swarm, _ = make()
    swarm.announce(req(1))
    result = swarm.announce(req(2, event=Event.STOPPED))
    assert result.peers == []
    assert ids(swarm, 3) == [pid(1)]
    assert swarm.peer_count == 2


def test_stopped_for_an_unknown_task_creates_nothing(make: Make) -> None:
    swarm, _ = make()
    result = swarm.announce(req(1, event=Event.STOPPED))
    assert (result.complete, result.incomplete, swarm.task_count) == (0, 0, 0)


def test_task_without_manifest_goes_away_with_its_last_peer(make: Make) -> None:
    swarm, _ = make()
    swarm.announce(req(1))
    swarm.announce(req(1, event=Event.STOPPED))
    assert swarm.task_count == 0


# --- counts and completions ---------------------------------------------------------------


def test_complete_and_incomplete_counts_with_unknown_left_as_incomplete(make: Make) -> None:
    swarm, _ = make()
    swarm.announce(req(1, left_bytes=0))
    swarm.announce(req(2, left_bytes=10))
    result = swarm.announce(req(3))
    assert (result.complete, result.incomplete) == (1, 2)
    assert swarm.seed_count == 1
    assert swarm.scrape((TASK, OTHER_TASK)) == {TASK: swarm.scrape_all(5)[TASK]}
    assert swarm.scrape((TASK,))[TASK].complete == 1


def test_event_completed_counts_once_per_peer(make: Make) -> None:
    swarm, _ = make()
    swarm.announce(req(1, left_bytes=10))
    swarm.announce(req(1, left_bytes=0, event=Event.COMPLETED))
    swarm.announce(req(1, left_bytes=0, event=Event.COMPLETED))
    swarm.announce(req(1, left_bytes=0))
    assert swarm.completions_total == 1
    assert swarm.scrape((TASK,))[TASK].downloaded == 1


def test_left_reaching_zero_counts_as_a_completion_without_event(make: Make) -> None:
    swarm, _ = make()
    swarm.announce(req(1, left_bytes=10))
    swarm.announce(req(1, left_bytes=0))
    assert swarm.completions_total == 1


def test_stopped_with_left_zero_after_downloading_counts_as_a_completion(make: Make) -> None:
    swarm, _ = make()  # aria2c --seed-time=0: never sends completed
    swarm.announce(req(1, left_bytes=10))
    swarm.announce(req(2, left_bytes=10))
    swarm.announce(req(1, left_bytes=0, event=Event.STOPPED))
    assert swarm.completions_total == 1
    assert swarm.scrape((TASK,))[TASK] == ScrapeCounts(complete=0, incomplete=1, downloaded=1)


def test_peer_arriving_complete_is_a_seed_not_a_completion(make: Make) -> None:
    swarm, _ = make()
    swarm.announce(req(1, left_bytes=0, event=Event.STARTED))
    swarm.announce(req(1, left_bytes=0))
    swarm.announce(req(1, left_bytes=0, event=Event.STOPPED))
    assert swarm.completions_total == 0
    assert swarm.seed_count == 0


# --- pieces, progress, rates ---------------------------------------------------------------


def test_progress_from_have_then_from_left_then_from_left_zero(make: Make) -> None:
    swarm, _ = make()
    swarm.announce(req(1, left_bytes=0))
    swarm.announce(req(2, left_bytes=5))
    assert peer_stats(swarm, 1)["progress"] == 1.0
    assert peer_stats(swarm, 2)["progress"] == 0.0
    swarm.put_manifest(TASK, manifest())
    swarm.announce(req(2, left_bytes=TOTAL // 4))
    assert peer_stats(swarm, 2)["progress"] == 0.75
    swarm.announce(req(2, left_bytes=TOTAL // 4, have=have(0, 1)))
    assert peer_stats(swarm, 2)["progress"] == 2 / PIECES


def test_have_of_the_wrong_length_is_ignored_not_fatal(make: Make) -> None:
    swarm, _ = make()
    swarm.put_manifest(TASK, manifest())
    result = swarm.announce(req(1, left_bytes=TOTAL // 2, have=b"\xff" * 9))
    assert result.pieces_known == 0
    assert peer_stats(swarm, 1)["have"] is None
    assert peer_stats(swarm, 1)["progress"] == 0.5


def test_stock_seed_holds_every_piece_and_spare_bits_are_ignored(make: Make) -> None:
    swarm, _ = make()
    swarm.put_manifest(TASK, manifest())
    swarm.announce(req(1, left_bytes=0))
    swarm.announce(req(2, left_bytes=5, have=b"\x00\x00\x0f"))  # spare bits only
    assert task_stats(swarm)["pieces_available"] == PIECES
    assert peer_stats(swarm, 1)["have"] == "fffff0"
    assert peer_stats(swarm, 2)["progress"] == 0.0


def test_available_pieces_shrink_when_a_holder_leaves(make: Make) -> None:
    swarm, _ = make()
    swarm.put_manifest(TASK, manifest())
    swarm.announce(req(1, left_bytes=1, have=have(0, 1)))
    swarm.announce(req(2, left_bytes=1, have=have(1, 2)))
    assert task_stats(swarm)["pieces_available"] == 3
    swarm.announce(req(2, left_bytes=1, event=Event.STOPPED))
    assert task_stats(swarm)["pieces_available"] == 2
    swarm.announce(req(1, left_bytes=1, have=have(5)))  # a peer that lost pieces
    assert task_stats(swarm)["pieces_available"] == 1


def test_rates_come_from_deltas_between_announces(make: Make) -> None:
    swarm, clock = make()
    swarm.announce(req(1, downloaded_bytes=1000, uploaded_bytes=50))
    assert peer_stats(swarm, 1)["download_bps"] == 0.0
    clock.now_s += 2
    swarm.announce(req(1, downloaded_bytes=3000, uploaded_bytes=250))
    assert (peer_stats(swarm, 1)["download_bps"], peer_stats(swarm, 1)["upload_bps"]) == (
        1000.0,
        100.0,
    )
    assert swarm.stats()["totals"]["download_bps"] == 1000.0
    clock.now_s += 2
    swarm.announce(req(1, downloaded_bytes=0, uploaded_bytes=0))  # the client restarted
    assert peer_stats(swarm, 1)["download_bps"] == 0.0


def test_origin_and_peer_bytes_accumulate_and_outlive_the_peer(make: Make) -> None:
    swarm, clock = make()
    swarm.put_manifest(TASK, manifest())
    swarm.announce(req(1, downloaded_bytes=100, origin_bytes=100))  # first: no delta
    clock.now_s += 1
    swarm.announce(req(1, downloaded_bytes=1100, origin_bytes=400))
    clock.now_s += 1
    swarm.announce(req(1, downloaded_bytes=1200, origin_bytes=600, event=Event.STOPPED))
    stats = task_stats(swarm)
    assert (stats["origin_bytes"], stats["peer_bytes"]) == (500, 700)
    assert swarm.stats()["totals"]["origin_bytes"] == 500
    assert stats["download_bps"] == 0.0


# --- back-to-source ------------------------------------------------------------------------


def test_source_peer_gets_an_assignment_with_ttl_and_known_count(make: Make) -> None:
    swarm, _ = make(assign_ttl_s=20.5, assign_max_pieces=2)
    swarm.put_manifest(TASK, manifest(digests={0: b"\1" * 32}))
    result = swarm.announce(req(1, left_bytes=TOTAL, have=have(), can_source=True))
    assert result.assignment == (0, 1)  # rate unknown: two pieces, lowest first
    assert (result.assignment_ttl_s, result.pieces_known) == (20, 1)
    assert swarm.assigned_pieces_total == 2
    assert peer_stats(swarm, 1)["state"] == "fetching"
    assert task_stats(swarm)["source_fetchers"] == 1


def test_no_assignment_without_manifest_permission_or_need(make: Make) -> None:
    swarm, _ = make()
    assert swarm.announce(req(1, left_bytes=5, can_source=True)).pieces_known is None
    assert swarm.announce(req(1, left_bytes=5, can_source=True)).assignment == ()
    swarm.put_manifest(TASK, manifest())
    assert swarm.announce(req(2, left_bytes=5)).assignment == ()
    assert swarm.announce(req(3, left_bytes=0, can_source=True)).assignment == ()


def test_assignments_are_disjoint_and_respect_the_origin_budget(make: Make) -> None:
    swarm, _ = make(origin_budget=2, assign_max_pieces=2)
    swarm.put_manifest(TASK, manifest())
    first = swarm.announce(req(1, left_bytes=TOTAL, have=have(), can_source=True)).assignment
    second = swarm.announce(req(2, left_bytes=TOTAL, have=have(), can_source=True)).assignment
    third = swarm.announce(req(3, left_bytes=TOTAL, have=have(), can_source=True)).assignment
    assert (first, second, third) == ((0, 1), (2, 3), ())


def test_stopped_and_expired_peers_release_their_assignment(make: Make) -> None:
    swarm, clock = make(origin_budget=1, interval_s=5.0, assign_ttl_s=1000.0, assign_max_pieces=2)
    swarm.put_manifest(TASK, manifest())
    swarm.announce(req(1, left_bytes=TOTAL, have=have(), can_source=True))
    swarm.announce(req(1, left_bytes=TOTAL, event=Event.STOPPED))
    assert swarm.announce(req(2, left_bytes=TOTAL, can_source=True)).assignment == (0, 1)
    clock.now_s += 16  # peer_timeout_s = 15
    swarm.announce(req(3, left_bytes=TOTAL, can_source=True))  # budget spent: nothing
    assert swarm.expire() == 1
    assert swarm.peers_expired_total == 1
    assert swarm.announce(req(3, left_bytes=TOTAL, can_source=True)).assignment == (0, 1)


def test_assignment_grows_with_the_peers_rate(make: Make) -> None:
    swarm, clock = make(interval_s=5.0, assign_max_pieces=16)
    swarm.put_manifest(TASK, manifest())
    swarm.announce(req(1, left_bytes=TOTAL, can_source=True, downloaded_bytes=0))
    clock.now_s += 1
    fast = req(1, left_bytes=TOTAL, can_source=True, downloaded_bytes=10 * PIECE)
    assert len(swarm.announce(fast).assignment) == 16  # 10 pieces/s * 5 s, capped


def test_fetched_pieces_leave_the_assignment_and_a_finished_peer_gives_back_the_rest(
    make: Make,
) -> None:
    swarm, _ = make(origin_budget=1, assign_max_pieces=2)
    swarm.put_manifest(TASK, manifest())
    swarm.announce(req(1, left_bytes=TOTAL, have=have(), can_source=True))
    result = swarm.announce(req(1, left_bytes=TOTAL, have=have(0), can_source=True))
    assert result.assignment == (1, 2)
    swarm.announce(req(1, left_bytes=TOTAL, have=have(0), can_source=False))
    assert swarm.announce(req(2, left_bytes=TOTAL, can_source=True)).assignment == (1, 2)


# --- limits --------------------------------------------------------------------------------


def test_new_peer_in_a_full_task_is_answered_but_not_stored(make: Make) -> None:
    swarm, _ = make(max_peers_per_task=2)
    swarm.announce(req(1))
    swarm.announce(req(2))
    assert sorted(ids(swarm, 3)) == [pid(1), pid(2)]
    assert swarm.peer_count == 2
    assert pid(3) not in ids(swarm, 1)


def test_new_task_past_max_tasks_is_refused(make: Make) -> None:
    swarm, _ = make(max_tasks=1)
    swarm.announce(req(1))
    with pytest.raises(SwarmFull, match="too many tasks"):
        swarm.announce(req(1, task=OTHER_TASK))
    with pytest.raises(SwarmFull):
        swarm.put_manifest(OTHER_TASK, manifest())
    swarm.put_manifest(TASK, manifest())  # an existing task is fine


@pytest.mark.parametrize(
    ("interval_s", "min_interval_s", "expected"),
    [(5.0, 1.0, (5, 1)), (2.6, 0.4, (3, 1)), (0.5, 0.2, (1, 1))],
)
def test_intervals_are_rounded_whole_seconds_of_at_least_one(
    interval_s: float, min_interval_s: float, expected: tuple[int, int], make: Make
) -> None:
    swarm, _ = make(interval_s=interval_s, min_interval_s=min_interval_s)
    result = swarm.announce(req(1))
    assert (result.interval_s, result.min_interval_s) == expected


# --- expiry --------------------------------------------------------------------------------


def test_silent_peers_expire_and_counts_follow(make: Make) -> None:
    swarm, clock = make(interval_s=5.0)
    swarm.announce(req(1, left_bytes=0))
    clock.now_s += 10
    swarm.announce(req(2))
    clock.now_s += 5.5  # peer 1 silent 15.5 s > 15 s; peer 2 silent 5.5 s
    assert swarm.expire() == 1
    assert (swarm.peer_count, swarm.seed_count, swarm.task_count) == (1, 0, 1)
    assert ids(swarm, 3) == [pid(2)]


def test_task_without_manifest_and_peers_is_dropped_at_once(make: Make) -> None:
    swarm, clock = make(interval_s=5.0)
    swarm.announce(req(1))
    clock.now_s += 16
    swarm.expire()
    assert swarm.task_count == 0


def test_task_with_manifest_outlives_its_peers_until_task_ttl(make: Make) -> None:
    swarm, clock = make(interval_s=5.0, task_ttl_s=100.0)
    swarm.put_manifest(TASK, manifest())
    swarm.announce(req(1))
    clock.now_s += 16
    swarm.expire()
    assert swarm.get_manifest(TASK) is not None
    clock.now_s += 99
    swarm.expire()
    assert swarm.task_count == 1
    clock.now_s += 2
    swarm.expire()
    assert (swarm.task_count, swarm.get_manifest(TASK)) == (0, None)


# --- manifests -----------------------------------------------------------------------------


def test_put_manifest_creates_merges_and_counts_conflicts(make: Make) -> None:
    swarm, _ = make()
    created = swarm.put_manifest(TASK, manifest(digests={0: b"\1" * 32}))
    stored = swarm.get_manifest(TASK)
    assert stored is not None and stored.to_json(TASK) == created.to_json(TASK)
    merged = swarm.put_manifest(TASK, manifest(url=None, digests={1: b"\2" * 32}))
    assert merged.known == 2
    with pytest.raises(ManifestConflict):
        swarm.put_manifest(TASK, manifest(digests={1: b"\3" * 32}))
    assert swarm.manifest_conflicts_total == 1
    assert swarm.announce(req(1)).pieces_known == 2


def test_invalid_first_manifest_creates_no_task(make: Make) -> None:
    swarm, _ = make()
    with pytest.raises(ManifestError):
        swarm.put_manifest(TASK, manifest(url=None))
    assert swarm.task_count == 0


def test_manifest_put_again_after_a_restart_works_for_a_task_known_by_announces(make: Make) -> None:
    swarm, _ = make()  # a fresh tracker: peers announce first, then PUT what they know
    swarm.announce(req(1, left_bytes=0))
    swarm.put_manifest(TASK, manifest(digests={3: b"\4" * 32}))
    result = swarm.announce(req(1, left_bytes=0))
    assert result.pieces_known == 1
    assert task_stats(swarm)["pieces_available"] == PIECES


# --- reports -------------------------------------------------------------------------------


def test_reported_peer_is_listed_last_and_excluded_by_two_reporters(make: Make) -> None:
    swarm, clock = make(bad_peer_ttl_s=60.0, bad_peer_exclude_reports=2, interval_s=30.0)
    swarm.announce(req(1, left_bytes=0))
    swarm.announce(req(2, left_bytes=10))
    assert ids(swarm, 9) == [pid(1), pid(2)]
    assert swarm.report(TASK, PeerReport(reporter=pid(7), reason="bad_piece", peer_id=pid(1)))
    assert ids(swarm, 9) == [pid(2), pid(1)]
    assert peer_stats(swarm, 1)["reported_bad"] == 1
    address = f"127.0.0.1:{6881}"
    assert swarm.report(TASK, PeerReport(reporter=pid(8), reason="refused", address=address))
    assert ids(swarm, 9) == [pid(2)]
    assert swarm.reports_total == 2
    clock.now_s += 61  # the reports are forgotten; the peers are not yet silent too long
    assert swarm.expire() == 0
    assert ids(swarm, 9) == [pid(1), pid(2)]


def test_report_about_an_unknown_task_or_peer_is_not_found(make: Make) -> None:
    swarm, _ = make()
    swarm.announce(req(1))
    assert not swarm.report(OTHER_TASK, PeerReport(reporter=pid(7), reason="x", peer_id=pid(1)))
    assert not swarm.report(TASK, PeerReport(reporter=pid(7), reason="x", peer_id=pid(5)))
    assert not swarm.report(TASK, PeerReport(reporter=pid(7), reason="x", address="1.2.3.4:1"))


def test_a_peer_cannot_report_itself_out(make: Make) -> None:
    swarm, _ = make(bad_peer_exclude_reports=1)
    swarm.announce(req(1))
    assert swarm.report(TASK, PeerReport(reporter=pid(1), reason="x", peer_id=pid(1)))
    assert ids(swarm, 2) == [pid(1)]


# --- stats ---------------------------------------------------------------------------------

TASK_KEYS = {
    "id", "url", "name", "size_bytes", "piece_length", "pieces", "pieces_known",
    "pieces_available", "peers", "seeds", "completed", "completion", "download_bps",
    "upload_bps", "origin_bytes", "peer_bytes", "age_s", "source_fetchers", "peer_list",
    "peer_list_truncated",
}  # fmt: skip
PEER_KEYS = {
    "id", "client", "address", "zone", "progress", "have", "download_bps", "upload_bps",
    "downloaded_bytes", "uploaded_bytes", "origin_bytes", "left_bytes", "load", "last_seen_s",
    "assigned", "state", "reported_bad",
}  # fmt: skip


def test_stats_document_has_exactly_the_agreed_keys(make: Make) -> None:
    swarm, clock = make()
    swarm.put_manifest(TASK, manifest())
    swarm.announce(req(1, left_bytes=0, zone="rack1", load=3))
    clock.now_s += 2
    document = swarm.stats()
    assert set(document) == {"tracker", "totals", "tasks"}
    assert document["tracker"] == {"uptime_s": 2.0, "interval_s": 5.0, "now_s": 1002.0}
    assert set(document["totals"]) == {
        "tasks", "peers", "seeds", "download_bps", "upload_bps", "origin_bytes", "peer_bytes"
    }  # fmt: skip
    (task,) = document["tasks"]
    assert set(task) == TASK_KEYS
    assert (task["name"], task["url"], task["age_s"]) == ("a.bin", "http://o/files/a.bin?x=1", 2.0)
    (peer,) = task["peer_list"]
    assert set(peer) == PEER_KEYS
    assert (peer["client"], peer["address"], peer["zone"]) == (
        "-DF0100-",
        "127.0.0.1:6881",
        "rack1",
    )
    assert (peer["state"], peer["load"], peer["last_seen_s"]) == ("seeding", 3, 2.0)


def test_stats_lists_hottest_tasks_first_and_filters_by_task(make: Make) -> None:
    swarm, _ = make()
    swarm.announce(req(1, task=OTHER_TASK, left_bytes=0))
    swarm.announce(req(2, left_bytes=5))
    swarm.announce(req(3, left_bytes=5))
    listed = [t["id"] for t in swarm.stats()["tasks"]]
    assert listed == [TASK.hex(), OTHER_TASK.hex()]
    assert [t["id"] for t in swarm.stats(OTHER_TASK)["tasks"]] == [OTHER_TASK.hex()]
    assert swarm.stats(b"V" * 20)["tasks"] == []
    assert len(swarm.stats(tasks_limit=1)["tasks"]) == 1


def test_stats_peer_list_is_best_progress_first_and_truncated(make: Make) -> None:
    swarm, _ = make()
    for n, left in enumerate((5, 0, 7)):
        swarm.announce(req(n, left_bytes=left))
    task = swarm.stats(TASK, peers_limit=2)["tasks"][0]
    assert task["peer_list"][0]["id"] == pid(1).hex()
    assert (len(task["peer_list"]), task["peer_list_truncated"]) == (2, True)
    assert task["completion"] == pytest.approx(1 / 3)


def test_peer_state_is_stalled_when_downloaded_does_not_grow(make: Make) -> None:
    swarm, clock = make(interval_s=5.0)
    swarm.announce(req(1, left_bytes=5, downloaded_bytes=0))
    assert peer_stats(swarm, 1)["state"] == "downloading"
    clock.now_s += 5
    swarm.announce(req(1, left_bytes=5, downloaded_bytes=10))
    clock.now_s += 5
    swarm.announce(req(1, left_bytes=5, downloaded_bytes=10))
    assert peer_stats(swarm, 1)["state"] == "downloading"
    clock.now_s += 5
    assert peer_stats(swarm, 1)["state"] == "stalled"


# --- invariants under any sequence ------------------------------------------------------------


class SwarmMachine(RuleBasedStateMachine):
    """Random announces, stops, reports and expiry; the counters always match the records."""

    make: Make

    def __init__(self) -> None:
        super().__init__()
        self.swarm, self.clock = self.make(origin_budget=3, interval_s=5.0)
        self.swarm.put_manifest(TASK, manifest())
        self.completed: set[int] = set()

    @rule(
        n=st.integers(0, 7),
        left=st.one_of(st.none(), st.sampled_from([0, PIECE, TOTAL])),
        pieces=st.one_of(st.none(), st.sets(st.integers(0, PIECES - 1), max_size=PIECES)),
        event=st.sampled_from(list(Event)),
        source=st.booleans(),
        task=st.sampled_from([TASK, OTHER_TASK]),
    )
    def announce(
        self,
        n: int,
        left: int | None,
        pieces: set[int] | None,
        event: Event,
        source: bool,
        task: bytes,
    ) -> None:
        bitfield = None if pieces is None else have(*pieces)
        result = self.swarm.announce(
            req(n, task=task, left_bytes=left, have=bitfield, event=event, can_source=source)
        )
        assert pid(n) not in [c.peer_id for c in result.peers]

    @rule(seconds=st.floats(0.0, 30.0))
    def time_passes(self, seconds: float) -> None:
        self.clock.now_s += seconds
        self.swarm.expire()

    @rule(n=st.integers(0, 7), reporter=st.integers(0, 7))
    def report(self, n: int, reporter: int) -> None:
        self.swarm.report(TASK, PeerReport(reporter=pid(reporter), reason="x", peer_id=pid(n)))

    @invariant()
    def counters_match_records(self) -> None:
        document = self.swarm.stats(peers_limit=1000)
        tasks = document["tasks"]
        assert document["totals"]["peers"] == sum(t["peers"] for t in tasks)
        assert document["totals"]["seeds"] == sum(t["seeds"] for t in tasks)
        assert self.swarm.task_count == len(tasks)
        for task in tasks:
            assert len(task["peer_list"]) == task["peers"]
            assert task["seeds"] == sum(p["left_bytes"] == 0 for p in task["peer_list"])
            assert task["completed"] <= self.swarm.completions_total

    @invariant()
    def assignments_are_disjoint_and_within_budget(self) -> None:
        peer_list = self.swarm.stats(TASK, peers_limit=1000)["tasks"][0]["peer_list"]
        held = [self.swarm.assignment_of(TASK, bytes.fromhex(p["id"])) for p in peer_list]
        pieces = [i for assignment in held for i in assignment]
        assert len(pieces) == len(set(pieces))
        assert sum(1 for assignment in held if assignment) <= 3
        assert [p["assigned"] for p in peer_list] == [len(a) for a in held]


def test_swarm_state_machine(make: Make) -> None:
    machine = type("Machine", (SwarmMachine,), {"make": staticmethod(make)})
    run_state_machine_as_test(
        machine, settings=settings(max_examples=60, stateful_step_count=30, deadline=None)
    )


def test_origin_without_ranges_gets_one_fetcher_streaming_every_piece(make: Make) -> None:
    swarm, _ = make(origin_budget=4, assign_max_pieces=2)
    swarm.put_manifest(TASK, manifest(ranges=False))
    first = swarm.announce(req(1, have=have(), can_source=True, left_bytes=TOTAL))
    second = swarm.announce(req(2, have=have(), can_source=True, left_bytes=TOTAL))
    assert first.assignment == tuple(range(PIECES))
    assert second.assignment == ()


def test_first_announces_split_the_file_over_the_fetcher_slots_left(make: Make) -> None:
    """A peer's first announce says nothing of how many will follow (the first of a crowd of
    200 sees one contender): each newcomer takes its share over the origin budget's slots
    left, so a crowd's first round puts the whole file on ``origin_budget`` fetchers."""
    swarm, _ = make(origin_budget=4)
    swarm.put_manifest(TASK, manifest())
    first = swarm.announce(req(1, left_bytes=TOTAL, have=have(), can_source=True)).assignment
    assert first == tuple(range(PIECES // 4))
    # One fetcher now: what is left goes over the three slots left.
    second = swarm.announce(req(2, left_bytes=TOTAL, have=have(), can_source=True)).assignment
    third_share = -(-(PIECES - PIECES // 4) // 3)
    assert second == tuple(range(PIECES // 4, PIECES // 4 + third_share))


def test_a_lone_fetcher_is_given_the_whole_file_in_one_round(make: Make) -> None:
    swarm, _ = make(origin_budget=1)
    swarm.put_manifest(TASK, manifest())
    answer = swarm.announce(req(1, left_bytes=TOTAL, have=have(), can_source=True))
    assert answer.assignment == tuple(range(PIECES))


# -- replays (announces with the cluster secret carry df_seq) -----------------------------------


def test_an_announce_whose_seq_is_not_above_the_last_is_a_replay_and_changes_nothing(
    make: Make,
) -> None:
    swarm, _ = make()
    swarm.announce(req(1, seq=5, left_bytes=TOTAL))
    swarm.announce(req(1, seq=6, left_bytes=0))
    for seq in (6, 5, 1):
        with pytest.raises(Replayed):
            swarm.announce(req(1, seq=seq, event=Event.STOPPED, left_bytes=TOTAL))
    assert peer_stats(swarm, 1)["left_bytes"] == 0
    swarm.announce(req(1, seq=7, left_bytes=0))


def test_a_departed_peer_cannot_be_brought_back_by_a_replay_for_the_skew_window(make: Make) -> None:
    swarm, clock = make()
    swarm.announce(req(1, seq=1, event=Event.STARTED))
    swarm.announce(req(1, seq=2, event=Event.STOPPED))
    with pytest.raises(Replayed):
        swarm.announce(req(1, seq=1, event=Event.STARTED))
    clock.now_s += MAX_SKEW_S + 1  # its df_ts would be refused by now; the memory may go
    swarm.announce(req(1, seq=1, event=Event.STARTED))
    assert len(task_stats(swarm)["peer_list"]) == 1


def test_a_silent_peer_dropped_by_expiry_keeps_its_seq_for_a_while(make: Make) -> None:
    swarm, clock = make(interval_s=5.0)
    swarm.announce(req(1, seq=3))
    clock.now_s += 16
    assert swarm.expire() == 1
    with pytest.raises(Replayed):
        swarm.announce(req(1, seq=3))
    swarm.announce(req(1, seq=4))


def test_announces_without_seq_are_not_checked(make: Make) -> None:
    swarm, _ = make()
    swarm.announce(req(1, left_bytes=TOTAL))
    swarm.announce(req(1, left_bytes=TOTAL))
    assert len(task_stats(swarm)["peer_list"]) == 1


def test_scrape_counts_outlive_the_last_peer_for_the_task_ttl(make: Make) -> None:
    swarm, clock = make(interval_s=5.0, task_ttl_s=100.0)  # stock clients: no manifest
    swarm.announce(req(1, left_bytes=10, event=Event.STARTED))
    swarm.announce(req(1, left_bytes=0, event=Event.COMPLETED))
    swarm.announce(req(1, left_bytes=0, event=Event.STOPPED))
    assert swarm.scrape((TASK,)) == {TASK: ScrapeCounts(complete=0, incomplete=0, downloaded=1)}
    clock.now_s += 99
    swarm.expire()
    assert swarm.scrape((TASK,))[TASK].downloaded == 1
    clock.now_s += 2
    swarm.expire()
    assert swarm.scrape((TASK,)) == {}
