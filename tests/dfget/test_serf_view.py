"""The cluster view of one node: announce answers from gossip, the rendezvous split of origin
pieces, and what a failed member changes - with a fake clock, no Serf."""

from __future__ import annotations

from dfget.coordinators.serfview import (
    COHORT_GOSSIP_MS,
    COHORT_MS,
    DIGEST_GRACE_S,
    SETTLE_S,
    TAG_PORT,
    ClusterView,
    full_mask,
    mask_of,
)
from dfget.coordinators.serfwire import FLAG_COMPLETE, FLAG_SOURCE, Geometry, HaveNews
from peerwire.coordination import Progress
from peerwire.ids import PeerId

TASK = bytes(20)
PIECES = 200
GEOMETRY = Geometry(TASK, PIECES * 1024, 1024, None, True, "http://o/f")


#: Until then nobody reads the origin: its own settle time, and the cohort closed.
READY_S = max(SETTLE_S, (COHORT_MS + COHORT_GOSSIP_MS) / 1000)


class Clock:
    """The monotonic clock of the views; ``wall`` is the clock ``joined_ms`` comes from (the
    task starts at 1.0 s of it)."""

    now = 100.0

    def __call__(self) -> float:
        return self.now

    def wall(self) -> float:
        return self.now - 99.0


def progress(have: bytes | None = None, left: int | None = None) -> Progress:
    return Progress(
        peer_id=PeerId.generate(),
        port=7000,
        have=have if have is not None else bytes(PIECES // 8),
        left_bytes=PIECES * 1024 if left is None else left,
    )


def cluster(names: list[str], clock: Clock) -> dict[str, ClusterView]:
    """One view per node, each knowing every member as alive and in the task."""
    views = {}
    for me in names:
        view = ClusterView(me, clock, wall=clock.wall)
        for index, name in enumerate(names):
            view.member(name, f"127.0.0.{index + 1}", "alive", {TAG_PORT: "7000"})
            view.started(name, TASK, FLAG_SOURCE, seq=1, joined_ms=1000)
        view.learn_geometry(GEOMETRY, believed=True)
        views[me] = view
    return views


def assignments(views: dict[str, ClusterView]) -> dict[str, set[int]]:
    return {
        name: set(view.announce(TASK, progress(), "").assignment) for name, view in views.items()
    }


def test_each_missing_piece_goes_to_exactly_one_node_after_the_settle_time() -> None:
    clock = Clock()
    views = cluster(["a", "b", "c", "d"], clock)
    assert all(not pieces for pieces in assignments(views).values())  # settling
    clock.now += READY_S
    shares = assignments(views)
    assert set().union(*shares.values()) == set(range(PIECES))
    assert sum(len(s) for s in shares.values()) == PIECES  # disjoint
    assert all(shares.values())


def test_a_late_joiner_reads_nothing_from_the_origin_and_moves_no_share() -> None:
    clock = Clock()
    views = cluster(["a", "b"], clock)
    assignments(views)
    clock.now += READY_S
    before = assignments(views)
    for view in views.values():
        view.member("late", "127.0.0.9", "alive", {TAG_PORT: "7000"})
        view.started("late", TASK, FLAG_SOURCE, seq=1, joined_ms=int(clock.wall() * 1000))
    late = ClusterView("late", clock, wall=clock.wall)
    for index, name in enumerate(["a", "b"]):
        late.member(name, f"127.0.0.{index + 1}", "alive", {TAG_PORT: "7000"})
        late.started(name, TASK, FLAG_SOURCE, seq=1, joined_ms=1000)
    late.learn_geometry(GEOMETRY, believed=True)
    late.announce(TASK, progress(), "started")
    clock.now += READY_S
    assert late.announce(TASK, progress(), "").assignment == ()
    assert assignments(views) == before


def test_a_failed_member_s_share_and_what_only_it_held_move_to_the_others_at_once() -> None:
    clock = Clock()
    views = cluster(["a", "b", "c"], clock)
    assignments(views)  # each takes part from now
    clock.now += READY_S
    before = assignments(views)
    # c read its share from the origin (nobody else holds it), then fails.
    held = sorted(before["c"])[: len(before["c"]) // 2]
    have = bytearray(PIECES // 8)
    for index in held:
        have[index // 8] |= 0x80 >> (index % 8)
    for name in ("a", "b"):
        views[name].have(
            "c", HaveNews(TASK, FLAG_SOURCE, len(held), PIECES, bytes(have), ()), reset=False, seq=2
        )
    assert not (assignments({"a": views["a"]})["a"] & set(held))  # c holds them: nobody reads them
    for name in ("a", "b"):
        views[name].member("c", "127.0.0.3", "failed", {})
    after = assignments({"a": views["a"], "b": views["b"]})
    assert after["a"] | after["b"] == set(range(PIECES))
    assert not after["a"] & after["b"]
    assert views["a"].reassigned == len(before["c"])
    assert "c" not in {p.host for p in views["a"].announce(TASK, progress(), "").peers}


def test_an_older_have_arriving_late_adds_pieces_but_does_not_undo_completion() -> None:
    clock = Clock()
    view = cluster(["a", "b"], clock)["a"]
    everything = (full_mask(PIECES)).to_bytes(PIECES // 8, "big")
    complete = HaveNews(TASK, FLAG_SOURCE | FLAG_COMPLETE, PIECES, PIECES, everything, ())
    older = HaveNews(TASK, FLAG_SOURCE, 3, PIECES, None, ((0, 3),))
    view.have("b", complete, reset=False, seq=10)
    view.have("b", older, reset=False, seq=9)
    holding = view.tasks[TASK].holders["b"]
    assert holding.flags & FLAG_COMPLETE and holding.mask == mask_of(everything)
    answer = view.announce(TASK, progress(), "")
    assert answer.complete == 1 and answer.pieces_known == 0  # no digest came with the events
    clock.now += DIGEST_GRACE_S
    assert view.announce(TASK, progress(), "").pieces_known == PIECES  # ask the holder now


def test_without_a_geometry_the_answer_asks_for_one_and_holders_are_asked_for_digests() -> None:
    clock = Clock()
    view = ClusterView("a", clock)
    view.member("b", "127.0.0.2", "alive", {TAG_PORT: "7001"})
    assert view.announce(TASK, progress(), "started").pieces_known is None
    view.learn_geometry(GEOMETRY, believed=False)
    view.have("b", HaveNews(TASK, FLAG_SOURCE, 30, PIECES, None, ((0, 30),)), reset=False, seq=1)
    view.learn_digests(TASK, {i: bytes([i]) * 32 for i in range(5)})  # df-digests: 5 came
    assert view.wanted_digests(TASK) == []  # the rest may still be on their way
    assert view.announce(TASK, progress(), "").pieces_known == 5
    clock.now += DIGEST_GRACE_S
    wanted = view.wanted_digests(TASK)
    assert [(first, holder) for first, _, holder in wanted] == [(0, "b"), (20, "b")]
    answer = view.announce(TASK, progress(), "")
    assert answer.pieces_known == 30
    assert [(p.host, p.port) for p in answer.peers] == [("127.0.0.2", 7001)]
