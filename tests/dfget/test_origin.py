"""dfget.origin against a real origin process (tests/helpers/origin_server.py) on 127.0.0.1."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import socket
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar

import aiohttp
import pytest

from dfget.errors import OriginChanged, OriginError
from dfget.httpclient import HttpClient
from dfget.options import OriginInfo
from dfget.origin import Origin
from peerwire.layout import PieceLayout
from peerwire.ratelimit import AsyncRateLimiter, TokenBucket
from tests.helpers.origin_server import OriginServer, origin_process, parse_range

T = TypeVar("T")
PIECE_BYTES = 256 * 1024
DATA = os.urandom(4 * PIECE_BYTES + 12345)
QUICK_S = 0.001


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coroutine)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OriginServer]:
    directory = tmp_path_factory.mktemp("origin")
    (directory / "data.bin").write_bytes(DATA)
    (directory / "empty.bin").write_bytes(b"")
    # Same length, other content and mtime: only the validator tells the versions apart.
    (directory / "same.bin").write_bytes(b"a" * 1000)
    (directory / "same.bin.v2").write_bytes(b"b" * 1000)
    os.utime(directory / "same.bin", (1_600_000_000, 1_600_000_000))
    with origin_process(directory) as origin:
        yield origin


@pytest.fixture(autouse=True)
def fresh_counters(server: OriginServer) -> None:
    server.reset()


def requests_to(server: OriginServer, path: str) -> int:
    count: int = server.stats()["requests_by_path"].get(path, 0)
    return count


async def probe(url: str, **kwargs: Any) -> OriginInfo:
    async with Origin(url, **kwargs) as origin:
        return await origin.probe()


def info_for(server: OriginServer, path: str) -> OriginInfo:
    """A probe of ``/files/data.bin``, pointed at ``path`` for the requests that follow."""
    info = run(probe(f"{server.base_url}/files/data.bin"))
    return dataclasses.replace(info, url=server.base_url + path)


def test_probe_reports_length_validator_and_range_support(server: OriginServer) -> None:
    async def main() -> tuple[OriginInfo, Origin]:
        async with Origin(f"{server.base_url}/files/data.bin") as origin:
            return await origin.probe(), origin

    info, origin = run(main())
    assert info.accepts_ranges
    assert info.total_length == len(DATA)
    assert info.validator is not None and info.validator.startswith('"')  # the strong ETag
    assert info.url == f"{server.base_url}/files/data.bin"
    assert (origin.requests, origin.bytes_fetched) == (1, 1)


def test_probe_without_range_support_takes_content_length_and_reads_no_body(
    server: OriginServer,
) -> None:
    async def main() -> tuple[OriginInfo, int]:
        async with Origin(f"{server.base_url}/norange/data.bin") as origin:
            return await origin.probe(), origin.bytes_fetched

    info, fetched = run(main())
    assert not info.accepts_ranges
    assert info.total_length == len(DATA)
    assert fetched == 0


def test_probe_of_empty_file_reports_zero_length(server: OriginServer) -> None:
    info = run(probe(f"{server.base_url}/files/empty.bin"))
    assert (info.total_length, info.accepts_ranges) == (0, True)


def test_probe_follows_redirect_and_keeps_final_url(server: OriginServer) -> None:
    async def main() -> tuple[OriginInfo, bytes, int]:
        async with Origin(f"{server.base_url}/redirect/data.bin") as origin:
            info = await origin.probe()
            return info, await origin.fetch_range(0, 100, info), origin.requests

    info, body, sent = run(main())
    assert info.url == f"{server.base_url}/files/data.bin"
    assert body == DATA[:100]
    assert sent == 3  # the redirect, its target, then the range straight at the target
    assert requests_to(server, "/redirect/data.bin") == 1
    assert requests_to(server, "/files/data.bin") == 2


def test_headers_are_sent_on_every_request(server: OriginServer) -> None:
    async def main() -> bytes:
        headers = [("Authorization", "Bearer test")]
        async with Origin(f"{server.base_url}/auth/data.bin", headers) as origin:
            info = await origin.probe()
            return await origin.fetch_range(PIECE_BYTES, 2 * PIECE_BYTES, info)

    assert run(main()) == DATA[PIECE_BYTES : 2 * PIECE_BYTES]


def test_unauthorised_probe_is_final_error_with_status_401(server: OriginServer) -> None:
    with pytest.raises(OriginError) as caught:
        run(probe(f"{server.base_url}/auth/data.bin", backoff_s=QUICK_S))
    assert caught.value.status == 401
    assert not caught.value.retryable
    assert "401" in str(caught.value)
    assert requests_to(server, "/auth/data.bin") == 1


def test_not_found_is_not_retried(server: OriginServer) -> None:
    with pytest.raises(OriginError) as caught:
        run(probe(f"{server.base_url}/files/missing.bin", backoff_s=QUICK_S))
    assert (caught.value.status, caught.value.retryable) == (404, False)
    assert requests_to(server, "/files/missing.bin") == 1


def test_server_error_is_retried_then_reported_with_its_status(server: OriginServer) -> None:
    with pytest.raises(OriginError) as caught:
        run(probe(f"{server.base_url}/status/500", retries=3, backoff_s=QUICK_S))
    assert (caught.value.status, caught.value.retryable) == (500, True)
    assert not isinstance(caught.value, OriginChanged)
    assert requests_to(server, "/status/500") == 4  # retries + 1


def test_flaky_origin_recovers_within_retries(server: OriginServer) -> None:
    info = run(probe(f"{server.base_url}/flaky/2/data.bin", retries=2, backoff_s=QUICK_S))
    assert info.total_length == len(DATA)
    assert requests_to(server, "/flaky/2/data.bin") == 3


def test_refused_connection_is_retried_then_retryable_error_without_status() -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]  # bound, not listening: connections are refused
        with pytest.raises(OriginError) as caught:
            run(probe(f"http://127.0.0.1:{port}/files/data.bin", retries=1, backoff_s=QUICK_S))
    assert (caught.value.status, caught.value.retryable) == (None, True)


def test_stalled_origin_times_out_as_retryable_error(server: OriginServer) -> None:
    info = info_for(server, "/slow/2/data.bin")  # one byte each half second

    async def main() -> bytes:
        async with Origin(info.url, timeout_s=0.1, retries=1, backoff_s=QUICK_S) as origin:
            return await origin.fetch_range(0, 100, info)

    with pytest.raises(OriginError) as caught:
        run(main())
    assert caught.value.retryable
    assert requests_to(server, "/slow/2/data.bin") == 2


@pytest.mark.parametrize("piece_index", [0, 2, 4], ids=["first", "middle", "last"])
def test_fetch_range_returns_exact_bytes_of_a_piece(server: OriginServer, piece_index: int) -> None:
    layout = PieceLayout(len(DATA), PIECE_BYTES)
    start = layout.piece_offset(piece_index)
    end = start + layout.piece_size(piece_index)

    async def main() -> tuple[bytes, int]:
        async with Origin(f"{server.base_url}/files/data.bin") as origin:
            info = await origin.probe()
            return await origin.fetch_range(start, end, info), origin.bytes_fetched

    body, fetched = run(main())
    assert body == DATA[start:end]
    assert fetched == 1 + (end - start)
    assert server.stats()["bytes_sent"] == fetched


def test_fetch_range_of_one_byte_and_of_whole_file(server: OriginServer) -> None:
    async def main() -> tuple[bytes, bytes]:
        async with Origin(f"{server.base_url}/files/data.bin") as origin:
            info = await origin.probe()
            last = await origin.fetch_range(len(DATA) - 1, len(DATA), info)
            return last, await origin.fetch_range(0, len(DATA), info)

    last, whole = run(main())
    assert last == DATA[-1:]
    assert whole == DATA


def test_fetch_range_outside_the_file_is_refused_before_any_request(server: OriginServer) -> None:
    info = info_for(server, "/files/data.bin")

    async def main(start: int, end: int) -> bytes:
        async with Origin(info.url) as origin:
            return await origin.fetch_range(start, end, info)

    for start, end in [(-1, 10), (10, 10), (0, len(DATA) + 1)]:
        with pytest.raises(ValueError):
            run(main(start, end))
    assert requests_to(server, "/files/data.bin") == 1  # the probe only


def test_truncated_range_is_retried_then_retryable_error(server: OriginServer) -> None:
    info = info_for(server, "/truncate/data.bin")

    async def main() -> bytes:
        async with Origin(info.url, retries=2, backoff_s=QUICK_S) as origin:
            try:
                return await origin.fetch_range(0, 1000, info)
            finally:
                assert origin.bytes_fetched <= 3 * 500

    with pytest.raises(OriginError) as caught:
        run(main())
    assert caught.value.retryable
    assert not isinstance(caught.value, OriginChanged)
    assert requests_to(server, "/truncate/data.bin") == 3


PIECE_ENDS = [PIECE_BYTES, 2 * PIECE_BYTES, 3 * PIECE_BYTES, 4 * PIECE_BYTES]


def range_parts(info: OriginInfo, start: int, ends: list[int], **options: Any) -> list[bytes]:
    """Every part of ``fetch_range_parts`` from an ``Origin`` made with ``options``."""

    async def main() -> list[bytes]:
        async with Origin(info.url, **options) as origin:
            return [part async for part in origin.fetch_range_parts(start, ends, info)]

    return run(main())


def test_range_parts_are_yielded_while_the_rest_is_still_on_its_way(server: OriginServer) -> None:
    info = info_for(server, f"/slow/{2 * PIECE_BYTES}/data.bin")

    async def main() -> tuple[list[bytes], list[int]]:
        parts, fetched_then = [], []
        async with Origin(info.url) as origin:
            async for part in origin.fetch_range_parts(0, PIECE_ENDS, info):
                parts.append(part)
                fetched_then.append(origin.bytes_fetched)
        return parts, fetched_then

    parts, fetched_then = run(main())
    assert parts == [DATA[end - PIECE_BYTES : end] for end in PIECE_ENDS]
    assert fetched_then[0] < 2 * PIECE_BYTES  # the first part came long before the last
    assert requests_to(server, f"/slow/{2 * PIECE_BYTES}/data.bin") == 1


def test_a_cut_range_resumes_from_the_first_part_it_lacks(server: OriginServer) -> None:
    info = info_for(server, "/cut/1/data.bin")
    parts = range_parts(info, 0, PIECE_ENDS, retries=1, backoff_s=QUICK_S)
    assert b"".join(parts) == DATA[: 4 * PIECE_BYTES]
    stats = server.stats()
    assert stats["requests_by_path"]["/cut/1/data.bin"] == 2
    # Half the range, then the other half: the two parts that arrived are not fetched again.
    assert stats["by_path"]["/cut/1/data.bin"] == 4 * PIECE_BYTES


def test_parts_that_arrive_renew_the_retries(server: OriginServer) -> None:
    # Three cuts, but the first two bring parts: two retries suffice where a count per range
    # would need three.
    info = info_for(server, "/cut/3/data.bin")
    parts = range_parts(info, 0, PIECE_ENDS, retries=2, backoff_s=QUICK_S)
    assert b"".join(parts) == DATA[: 4 * PIECE_BYTES]
    assert requests_to(server, "/cut/3/data.bin") == 4


def test_range_parts_must_ascend_inside_the_file(server: OriginServer) -> None:
    info = info_for(server, "/files/data.bin")
    for start, ends in ((0, []), (10, [10]), (0, [20, 10]), (0, [10, len(DATA) + 1])):
        with pytest.raises(ValueError):
            range_parts(info, start, ends)
    assert requests_to(server, "/files/data.bin") == 1  # the probe only


def test_changed_length_is_origin_changed_without_retry(server: OriginServer) -> None:
    async def main() -> bytes:
        async with Origin(f"{server.base_url}/mutable/data.bin", backoff_s=QUICK_S) as origin:
            info = await origin.probe()  # the first request: the original
            return await origin.fetch_range(0, 100, info)  # now one byte longer

    with pytest.raises(OriginChanged, match="length"):
        run(main())
    assert requests_to(server, "/mutable/data.bin") == 2


def test_changed_validator_with_same_length_is_origin_changed(server: OriginServer) -> None:
    async def main() -> bytes:
        async with Origin(f"{server.base_url}/mutable/same.bin", backoff_s=QUICK_S) as origin:
            info = await origin.probe()
            return await origin.fetch_range(0, 100, info)

    with pytest.raises(OriginChanged, match="validator"):
        run(main())
    assert requests_to(server, "/mutable/same.bin") == 2


def test_origin_that_stops_honouring_range_is_final_error(server: OriginServer) -> None:
    info = info_for(server, "/norange/data.bin")

    async def main() -> tuple[bytes, int]:
        async with Origin(info.url, backoff_s=QUICK_S) as origin:
            try:
                return await origin.fetch_range(0, 100, info), 0
            finally:
                assert origin.bytes_fetched == 0  # the full body was not read

    with pytest.raises(OriginError, match="stopped honouring Range") as caught:
        run(main())
    assert not isinstance(caught.value, OriginChanged)
    assert not caught.value.retryable
    assert requests_to(server, "/norange/data.bin") == 1


def test_limiter_is_charged_for_every_body_byte(server: OriginServer) -> None:
    info = info_for(server, "/files/data.bin")
    bucket = TokenBucket(1_000_000.0, clock=lambda: 0.0)  # a stopped clock never refills
    waits_s: list[float] = []

    async def fake_sleep(wait_s: float) -> None:
        waits_s.append(wait_s)

    async def main() -> bytes:
        limiter = AsyncRateLimiter(bucket, sleep=fake_sleep)
        async with Origin(info.url, limiter=limiter) as origin:
            return await origin.fetch_range(1000, 1000 + 3 * PIECE_BYTES, info)

    assert run(main()) == DATA[1000 : 1000 + 3 * PIECE_BYTES]
    assert bucket.available_bytes() == -3 * PIECE_BYTES
    assert len(waits_s) == 3 * PIECE_BYTES // (64 * 1024) - 1  # all but the first read wait


def test_stream_yields_the_whole_file_in_bounded_chunks(server: OriginServer) -> None:
    async def main() -> tuple[list[bytes], int]:
        async with Origin(f"{server.base_url}/norange/data.bin") as origin:
            info = await origin.probe()
            chunks = [chunk async for chunk in origin.stream(info, chunk_bytes=100_000)]
            return chunks, origin.bytes_fetched

    chunks, fetched = run(main())
    assert b"".join(chunks) == DATA
    assert max(len(chunk) for chunk in chunks) == 100_000
    assert fetched == len(DATA)


def test_stream_raises_on_truncated_body(server: OriginServer) -> None:
    info = info_for(server, "/truncate/data.bin")
    received: list[bytes] = []

    async def main() -> None:
        async with Origin(info.url) as origin:
            async for chunk in origin.stream(info, chunk_bytes=PIECE_BYTES):
                received.append(chunk)

    with pytest.raises(OriginError) as caught:
        run(main())
    assert caught.value.retryable
    assert not isinstance(caught.value, OriginChanged)
    assert sum(map(len, received)) < len(DATA)
    assert requests_to(server, "/truncate/data.bin") == 1  # no retry inside stream


def test_stream_of_changed_content_is_origin_changed(server: OriginServer) -> None:
    async def main() -> None:
        async with Origin(f"{server.base_url}/mutable/data.bin") as origin:
            info = await origin.probe()
            async for _chunk in origin.stream(info):
                pass

    with pytest.raises(OriginChanged):
        run(main())


def test_caller_client_is_used_left_open_and_its_connections_reused(server: OriginServer) -> None:
    """A node's shared client (``Host.origin_client``): one download's connection to the origin
    serves the next download's requests."""

    async def main() -> tuple[bool, int]:
        client = HttpClient()
        try:
            for _ in range(2):
                async with Origin(f"{server.base_url}/files/data.bin", client=client) as origin:
                    info = await origin.probe()
                    await origin.fetch_range(0, 100, info)
            return client.closed, len(client._connections)
        finally:
            await client.close()

    assert run(main()) == (False, 1)
    assert server.stats()["requests"] == 4


def test_counters_add_up_over_requests(server: OriginServer) -> None:
    async def main() -> tuple[int, int]:
        async with Origin(f"{server.base_url}/files/data.bin") as origin:
            info = await origin.probe()
            await origin.fetch_range(0, 10, info)
            await origin.fetch_range(10, 30, info)
            return origin.requests, origin.bytes_fetched

    assert run(main()) == (3, 1 + 10 + 20)
    stats = server.stats()
    assert (stats["requests"], stats["bytes_sent"]) == (3, 31)


def test_origin_server_parses_one_range_and_ignores_the_rest() -> None:
    assert parse_range("bytes=-10", 100) == (90, 99)
    assert parse_range("bytes=90-", 100) == (90, 99)
    assert parse_range("bytes=90-500", 100) == (90, 99)
    assert parse_range("bytes=100-", 100) == "416"
    assert parse_range("bytes=5-1", 100) is None
    assert parse_range("bytes=0-1,5-6", 100) is None


@pytest.mark.parametrize("delay_ms", [0, 150])
def test_a_range_request_records_how_soon_the_origin_answered(
    server: OriginServer, delay_ms: int
) -> None:
    info = info_for(server, f"/late/{delay_ms}/data.bin")

    async def main() -> float | None:
        async with Origin(info.url) as origin:
            assert origin.response_s is None
            await origin.fetch_range(0, PIECE_BYTES, info)
            return origin.response_s

    answered_s = run(main())
    assert answered_s is not None
    assert delay_ms / 1000 <= answered_s < delay_ms / 1000 + 1.0


def test_url_credentials_go_as_basic_auth_to_their_origin_only() -> None:
    """``user:password@`` in the URL: sent with every request to that origin (the probe and
    the Range requests after it), never to another host a redirect names."""
    seen: dict[str, list[str | None]] = {"a": [], "b": []}

    async def main() -> None:
        async def other(request: aiohttp.web.Request) -> aiohttp.web.Response:
            seen["b"].append(request.headers.get("Authorization"))
            return aiohttp.web.Response(
                status=206, body=b"x", headers={"Content-Range": "bytes 0-0/10"}
            )

        async def own(request: aiohttp.web.Request) -> aiohttp.web.Response:
            seen["a"].append(request.headers.get("Authorization"))
            if request.path == "/away":
                raise aiohttp.web.HTTPFound(f"http://127.0.0.1:{ports['b']}/file")
            return aiohttp.web.Response(
                status=206, body=b"x", headers={"Content-Range": "bytes 0-0/10"}
            )

        ports: dict[str, int] = {}
        runners = []
        for name, handler in (("a", own), ("b", other)):
            app = aiohttp.web.Application()
            app.router.add_get("/{tail:.*}", handler)
            runner = aiohttp.web.AppRunner(app)
            await runner.setup()
            site = aiohttp.web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            ports[name] = runner.addresses[0][1]
            runners.append(runner)
        try:
            base = f"http://us%40er:p%3Ass@127.0.0.1:{ports['a']}"
            async with Origin(base + "/file") as origin:
                info = await origin.probe()
                assert "us%40er" not in info.url and "@" not in origin.url
                await origin.fetch_range(0, 1, info)
            async with Origin(base + "/away") as origin:
                await origin.probe()
        finally:
            for runner in runners:
                await runner.cleanup()

    run(main())
    expected = "Basic " + __import__("base64").b64encode(b"us@er:p:ss").decode()
    assert seen["a"] and all(header == expected for header in seen["a"])
    assert seen["b"] == [None]
