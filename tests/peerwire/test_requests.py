from __future__ import annotations

import pytest

from peerwire.layout import Block
from peerwire.requests import RequestManager


class FakeClock:
    def __init__(self) -> None:
        self.now_s = 100.0

    def __call__(self) -> float:
        return self.now_s


def make(depth: int = 3, timeout_s: float = 10.0) -> tuple[RequestManager[str], FakeClock]:
    clock = FakeClock()
    return RequestManager(clock=clock, pipeline_depth=depth, timeout_s=timeout_s), clock


B0, B1, B2, B3 = (Block(0, i * 16, 16) for i in range(4))


def test_pipeline_depth_bounds_requests_per_peer() -> None:
    manager, _ = make(depth=2)
    assert manager.free_slots("a") == 2
    manager.add("a", B0)
    manager.add("a", B1)
    assert manager.free_slots("a") == 0
    assert manager.inflight("a") == 2
    with pytest.raises(ValueError, match="full"):
        manager.add("a", B2)
    manager.add("b", B2)  # other peers have their own pipeline
    assert manager.free_slots("b") == 1


def test_same_block_twice_at_one_peer_is_refused() -> None:
    manager, _ = make()
    manager.add("a", B0)
    with pytest.raises(ValueError, match="already in flight"):
        manager.add("a", B0)


def test_duplicates_at_other_peers_are_returned_for_cancel_on_arrival() -> None:
    manager, _ = make()
    for peer in ("a", "b", "c"):
        manager.add(peer, B0)
    manager.add("b", B1)
    assert manager.copies(B0) == 3
    assert manager.arrived("b", B0) == [("a", B0), ("c", B0)]
    assert manager.copies(B0) == 0
    assert manager.inflight("a") == 0
    assert manager.inflight("b") == 1
    assert list(manager.blocks_of("b")) == [B1]


def test_arrival_of_block_never_requested_cancels_the_others() -> None:
    manager, _ = make()
    manager.add("a", B0)
    assert manager.arrived("z", B0) == [("a", B0)]
    assert len(manager) == 0


def test_remove_peer_returns_its_blocks_and_frees_them() -> None:
    manager, _ = make()
    manager.add("a", B0)
    manager.add("a", B1)
    manager.add("b", B1)
    assert manager.remove_peer("a") == [B0, B1]
    assert manager.peers_for(B1) == ("b",)
    assert manager.copies(B0) == 0
    assert manager.remove_peer("a") == []


def test_expire_frees_only_requests_at_least_timeout_old() -> None:
    manager, clock = make(timeout_s=10.0)
    manager.add("a", B0)
    clock.now_s += 4
    manager.add("b", B1)
    clock.now_s += 5.9
    assert manager.expire() == []
    clock.now_s += 0.1
    assert manager.expire() == [("a", B0)]
    assert manager.is_inflight("b", B1)
    assert not manager.is_inflight("a", B0)
    clock.now_s += 4
    assert manager.expire() == [("b", B1)]
    assert len(manager) == 0


def test_discarded_request_does_not_expire() -> None:
    manager, clock = make()
    manager.add("a", B0)
    assert manager.discard("a", B0)
    assert not manager.discard("a", B0)
    clock.now_s += 100
    assert manager.expire() == []


def test_inflight_blocks_lists_copies() -> None:
    manager, _ = make()
    manager.add("a", B0)
    manager.add("b", B0)
    manager.add("b", B3)
    assert dict(manager.inflight_blocks()) == {B0: 2, B3: 1}


@pytest.mark.parametrize(("depth", "timeout_s"), [(0, 1.0), (1, 0.0)])
def test_invalid_settings_are_rejected(depth: int, timeout_s: float) -> None:
    with pytest.raises(ValueError):
        RequestManager(clock=FakeClock(), pipeline_depth=depth, timeout_s=timeout_s)
