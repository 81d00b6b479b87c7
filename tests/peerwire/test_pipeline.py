"""peerwire.pipeline: requests in flight sized to about target_s of a peer's delivery."""

from __future__ import annotations

import pytest

from peerwire.pipeline import PipelineSizer

BLOCK = 16 * 1024


def sizer(**kwargs: float) -> PipelineSizer:
    settings: dict[str, float] = {"target_s": 1.0, "window_s": 0.5} | kwargs
    return PipelineSizer(block_bytes=BLOCK, max_depth=32, min_depth=2, **settings)


def feed(pipeline: PipelineSizer, rate_bps: float, seconds: float, start_s: float = 0.0) -> float:
    """Blocks arriving steadily at ``rate_bps`` for ``seconds``; returns the time at the end."""
    now = start_s
    pipeline.requested(now)
    step_s = BLOCK / rate_bps
    while now < start_s + seconds:
        now += step_s
        pipeline.arrived(BLOCK, now)
    return now


def test_the_depth_starts_at_the_minimum() -> None:
    assert sizer().depth() == 2


def test_a_slow_peer_gets_about_target_s_of_its_rate() -> None:
    pipeline = sizer()
    feed(pipeline, 4 * BLOCK, 10.0)  # four blocks a second
    assert pipeline.depth() == 4


def test_a_very_slow_peer_keeps_the_minimum_depth() -> None:
    pipeline = sizer()
    feed(pipeline, BLOCK / 4, 20.0)
    assert pipeline.depth() == 2


def test_a_fast_peer_reaches_the_maximum_within_a_few_samples() -> None:
    pipeline = sizer()
    feed(pipeline, 1e9, 0.001)
    assert pipeline.depth() == 32


def test_the_depth_follows_a_peer_that_slows_down() -> None:
    pipeline = sizer()
    now = feed(pipeline, 1e9, 0.01)
    assert pipeline.depth() == 32
    feed(pipeline, 8 * BLOCK, 20.0, start_s=now)
    assert pipeline.depth() == 8


def test_idle_time_is_not_counted_against_the_rate() -> None:
    pipeline = sizer()
    now = feed(pipeline, 8 * BLOCK, 5.0)
    pipeline.idle()
    now += 60.0  # nothing asked of the peer for a minute
    feed(pipeline, 8 * BLOCK, 2.0, start_s=now)
    assert pipeline.depth() == 8


def test_a_longer_target_asks_for_more() -> None:
    pipeline = sizer(target_s=2.0)
    feed(pipeline, 4 * BLOCK, 10.0)
    assert pipeline.depth() == 8


@pytest.mark.parametrize(
    "kwargs",
    [
        {"block_bytes": 0, "max_depth": 4},
        {"block_bytes": BLOCK, "max_depth": 4, "min_depth": 5},
        {"block_bytes": BLOCK, "max_depth": 4, "min_depth": 0},
        {"block_bytes": BLOCK, "max_depth": 4, "target_s": 0.0},
    ],
)
def test_pipeline_sizer_rejects_invalid_settings(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        PipelineSizer(**kwargs)  # type: ignore[arg-type]
