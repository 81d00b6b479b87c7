"""dfget.engine._close_all: a download's cleanup runs every step, even when one is interrupted."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from dfget.host import close_all as _close_all


def test_every_closer_runs_and_the_first_error_is_raised_at_the_end() -> None:
    closed: list[str] = []

    def closer(name: str, error: BaseException | None = None) -> Callable[[], Awaitable[None]]:
        async def close() -> None:
            await asyncio.sleep(0)
            closed.append(name)
            if error is not None:
                raise error

        return close

    async def main() -> None:
        await _close_all(
            closer("peer", asyncio.CancelledError()),  # cancelled while telling the tracker
            None,
            closer("tracker", OSError("second")),
            closer("origin"),
        )

    with pytest.raises(asyncio.CancelledError):
        asyncio.run(main())
    assert closed == ["peer", "tracker", "origin"]


def test_a_task_cancelled_during_its_cleanup_still_closes_what_follows() -> None:
    closed: list[str] = []

    async def slow_close() -> None:
        await asyncio.sleep(10)

    async def origin_close() -> None:
        closed.append("origin")

    async def main() -> None:
        cleanup = asyncio.create_task(_close_all(slow_close, origin_close))
        await asyncio.sleep(0.01)
        cleanup.cancel()
        with pytest.raises(asyncio.CancelledError):
            await cleanup

    asyncio.run(main())
    assert closed == ["origin"]
