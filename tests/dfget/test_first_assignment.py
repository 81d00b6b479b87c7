"""A lone peer's first origin assignment is only a share of the file, and the rest follows at
once (``dfget.originfetch.OriginFetcher._want_more`` -> ``core.swarm.origin_wants_more()``: the
first assignment done makes the next announce urgent), not at the tracker's ``min interval``.

A first announce tells the tracker nothing of how many peers will follow (the first of a crowd of
200 sees one contender), so it hands out a share over its origin budget (``tracker.assign``).
A real tracker with an origin budget of 8 and a ``min interval`` of 60 s, a real origin, one
dfget: without the early announce the second assignment would come a minute later.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from dfget.engine import download
from dfget.options import DownloadOptions, DownloadResult
from tests.helpers.origin_server import OriginServer, origin_process
from tests.integration.trackers import Tracker, tracker_process

SIZE = 2 << 20
DATA = os.urandom(SIZE)
#: Far below the tracker's min interval: the download must not wait for it.
DOWNLOAD_TIMEOUT_S = 30.0


@pytest.fixture
def origin(tmp_path: Path) -> Iterator[OriginServer]:
    root = tmp_path / "origin"
    root.mkdir()
    (root / "file.bin").write_bytes(DATA)
    with origin_process(root) as running:
        yield running


@pytest.fixture
def tracker() -> Iterator[Tracker]:
    with tracker_process(
        "--interval", "60s", "--min-interval", "60s", "--origin-budget", "8"
    ) as running:
        yield running


def announces(tracker: Tracker) -> float:
    text = tracker.get("/metrics").decode()
    return sum(
        float(count)
        for count in re.findall(r"dragonfly_tracker_announces_total\{[^}]*\} (\S+)", text)
    )


def test_a_lone_peer_asks_for_the_rest_of_the_file_without_waiting_min_interval(
    tmp_path: Path, origin: OriginServer, tracker: Tracker
) -> None:
    output = tmp_path / "out.bin"

    async def main() -> DownloadResult:
        options = DownloadOptions(
            url=f"{origin.base_url}/files/file.bin",
            output=output,
            trackers=(tracker.base_url,),
            seed_time_s=0,
        )
        return await asyncio.wait_for(download(options), DOWNLOAD_TIMEOUT_S)

    result = asyncio.run(main())
    assert hashlib.sha256(output.read_bytes()).digest() == hashlib.sha256(DATA).digest()
    assert result.from_origin_bytes == SIZE
    # started, the early one for the rest of the file, and stopped (at least).
    assert announces(tracker) >= 3
