"""How a download gets its task's manifest from a real tracker (``dfget.engine._manifest``).

When the caller knows the origin already (dfdaemon's HEAD of a registry blob), the manifest is
offered at once (PUT) instead of asked for first: the tracker's manifest GET counter shows it.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from dfget.engine import download
from dfget.identity import task_id_for
from dfget.options import DownloadOptions, DownloadResult, OriginInfo
from dfget.origin import Origin
from peerwire.layout import STANDARD_BLOCK_BYTES, choose_piece_length
from tests.helpers.origin_server import OriginServer, origin_process
from tests.integration.trackers import Tracker, tracker_process

SIZE = 1 << 20
DATA = os.urandom(SIZE)


@pytest.fixture
def origin(tmp_path: Path) -> Iterator[OriginServer]:
    root = tmp_path / "origin"
    root.mkdir()
    (root / "file.bin").write_bytes(DATA)
    with origin_process(root) as running:
        yield running


@pytest.fixture
def tracker() -> Iterator[Tracker]:
    with tracker_process("--interval", "2s") as running:
        yield running


def manifest_counts(tracker: Tracker) -> dict[str, float]:
    """``manifest_gets``/``manifest_puts`` by result, from the tracker's /metrics."""
    counts: dict[str, float] = {}
    pattern = r'dragonfly_tracker_(manifest_(?:gets|puts))_total\{result="(\w+)"\} (\S+)'
    for match in re.finditer(pattern, tracker.get("/metrics").decode()):
        counts[f"{match[1]}.{match[2]}"] = float(match[3])
    return counts


def fetch(url: str, output: Path, tracker: Tracker, info: OriginInfo | None) -> DownloadResult:
    async def main() -> DownloadResult:
        options = DownloadOptions(
            url=url, output=output, trackers=(tracker.base_url,), origin_info=info, seed_time_s=0
        )
        return await download(options)

    return asyncio.run(main())


def probe(url: str) -> OriginInfo:
    async def main() -> OriginInfo:
        async with Origin(url) as origin:
            return await origin.probe()

    return asyncio.run(main())


def test_a_known_origin_offers_its_manifest_without_asking_first(
    tmp_path: Path, origin: OriginServer, tracker: Tracker
) -> None:
    url = f"{origin.base_url}/files/file.bin"
    result = fetch(url, tmp_path / "out.bin", tracker, probe(url))
    assert (
        hashlib.sha256((tmp_path / "out.bin").read_bytes()).digest()
        == hashlib.sha256(DATA).digest()
    )
    counts = manifest_counts(tracker)
    assert counts["manifest_gets.missing"] == counts["manifest_gets.found"] == 0
    assert counts["manifest_puts.ok"] >= 1
    assert result.manifest is not None and result.manifest.piece_length == choose_piece_length(SIZE)


def test_without_a_known_origin_the_manifest_is_asked_for_first(
    tmp_path: Path, origin: OriginServer, tracker: Tracker
) -> None:
    fetch(f"{origin.base_url}/files/file.bin", tmp_path / "out.bin", tracker, None)
    assert manifest_counts(tracker)["manifest_gets.missing"] == 1


def test_an_offer_that_conflicts_takes_the_trackers_manifest(
    tmp_path: Path, origin: OriginServer, tracker: Tracker
) -> None:
    """Another peer made the task's manifest with other pieces (another version's piece size):
    the offer is refused and the download follows the tracker's manifest."""
    url = f"{origin.base_url}/files/file.bin"
    info = probe(url)
    theirs = 4 * choose_piece_length(SIZE)
    assert theirs > STANDARD_BLOCK_BYTES
    document = {
        "url": url,
        "total_length": SIZE,
        "piece_length": theirs,
        "validator": info.validator,
        "ranges": True,
        "piece_sha256": [None] * (SIZE // theirs),
    }
    task = task_id_for(url).raw.hex()
    request = urllib.request.Request(
        f"{tracker.base_url}/tasks/{task}", data=json.dumps(document).encode(), method="PUT"
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200
    result = fetch(url, tmp_path / "out.bin", tracker, info)
    assert (tmp_path / "out.bin").read_bytes() == DATA
    assert result.manifest is not None and result.manifest.piece_length == theirs
    counts = manifest_counts(tracker)
    assert counts["manifest_puts.conflict"] == 1 and counts["manifest_gets.found"] >= 1
