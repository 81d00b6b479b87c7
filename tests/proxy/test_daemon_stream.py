"""Daemon.open_stream: a task's bytes in order, from a download in progress or from the cache."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

from proxy.config import DaemonConfig
from proxy.daemon import Daemon, FetchRequest
from tests.helpers.origin_server import origin_process
from tests.integration.peers import random_file

MIB = 1 << 20


def test_stream_follows_the_download_then_serves_ranges_from_the_cache(tmp_path: Path) -> None:
    root = tmp_path / "origin"
    root.mkdir()
    source = random_file(root / "blob.bin", 3 * MIB + 12345)
    data = source.read_bytes()
    with origin_process(root) as origin:
        url = f"{origin.base_url}/slow/{4 * MIB}/blob.bin"  # slow enough to stream while it runs
        request = FetchRequest(url=url, digest_sha256=hashlib.sha256(data).digest())

        async def main() -> None:
            config = DaemonConfig(
                cache_dir=tmp_path / "cache", socket=tmp_path / "d.sock", peer_host="127.0.0.1"
            )
            daemon = Daemon(config)
            await daemon.start()
            try:
                loop = asyncio.get_running_loop()
                async with await daemon.open_stream(request) as stream:
                    assert stream.size_bytes == len(data)
                    chunks = stream.chunks()
                    received = await anext(chunks)
                    # Pieces are stored as they arrive, not when a Range request has ended.
                    sent_by_then = (await loop.run_in_executor(None, origin.stats))["bytes_sent"]
                    assert sent_by_then < len(data) // 2
                    received += b"".join([chunk async for chunk in chunks])
                assert received == data
                entry = next(iter(daemon.entries.values()))
                assert entry.busy == 0
                for _ in range(50):  # the download finishes (and keeps seeding) by itself
                    if entry.complete:
                        break
                    await asyncio.sleep(0.1)
                assert entry.complete
                async with await daemon.open_stream(request, start=100, end=MIB + 7) as part:
                    tail = b"".join([chunk async for chunk in part.chunks()])
                assert tail == data[100 : MIB + 7]
                assert daemon.counters.cache_hits == 1
            finally:
                await daemon.close()

        asyncio.run(main())
        # The origin sent the blob once: the ranged read came from the cache.
        assert origin.stats()["bytes_sent"] <= len(data) + 1
