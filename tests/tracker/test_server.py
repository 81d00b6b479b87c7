"""The tracker's HTTP shell over real sockets on 127.0.0.1: keep-alive, close, bounds, timeouts."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
from collections.abc import Awaitable, Callable
from urllib.parse import quote_from_bytes

import bencode
import bencodepy

from tests.helpers.raw_http import get
from tracker.config import TrackerConfig
from tracker.server import TrackerServer

BASE = TrackerConfig(host="127.0.0.1", port=0)


def announce_target(info_hash: bytes, peer_id: bytes, port: int, **extra: str) -> bytes:
    params = {
        "info_hash": quote_from_bytes(info_hash, safe=""),
        "peer_id": quote_from_bytes(peer_id, safe=""),
        "port": str(port),
        "uploaded": "0",
        "downloaded": "0",
        "left": "100",
        "compact": "1",
        **extra,
    }
    return ("/announce?" + "&".join(f"{k}={v}" for k, v in params.items())).encode()


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[bytes, bytes], bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    status_line, *lines = head[:-4].split(b"\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip()
    body = await reader.readexactly(int(headers[b"content-length"]))
    return int(status_line.split()[1]), headers, body


def run_with_tracker(body: Callable[[TrackerServer], Awaitable[None]], **changes: object) -> None:
    async def main() -> None:
        server = TrackerServer(dataclasses.replace(BASE, **changes))  # type: ignore[arg-type]
        await server.start()
        try:
            await asyncio.wait_for(body(server), 30)
        finally:
            for writer in _OPEN:
                writer.close()
            _OPEN.clear()
            await server.close()

    asyncio.run(main())


_OPEN: list[asyncio.StreamWriter] = []


async def connect(server: TrackerServer) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    _OPEN.append(writer)
    return reader, writer


async def closed_by_server(reader: asyncio.StreamReader) -> bool:
    return await asyncio.wait_for(reader.read(1), 10) == b""


def test_keep_alive_serves_several_announces_on_one_connection() -> None:
    async def body(server: TrackerServer) -> None:
        reader, writer = await connect(server)
        task = os.urandom(20)
        for n in range(3):
            writer.write(get(announce_target(task, os.urandom(20), 6881 + n)))
            status, headers, payload = await read_response(reader)
            assert status == 200
            assert b"connection" not in headers
            answer = bencode.decode(payload)
            assert answer["interval"] == 5
            peers = answer["peers"]  # bencode.py gives str when the bytes happen to be UTF-8
            assert len(peers.encode() if isinstance(peers, str) else peers) == 6 * n
        writer.close()

    run_with_tracker(body)


def test_connection_close_is_honoured() -> None:
    async def body(server: TrackerServer) -> None:
        reader, writer = await connect(server)
        writer.write(get(announce_target(os.urandom(20), os.urandom(20), 1), b"Connection: close"))
        status, headers, _ = await read_response(reader)
        assert (status, headers[b"connection"]) == (200, b"close")
        assert await closed_by_server(reader)

    run_with_tracker(body)


def test_http10_closes_unless_keep_alive_asked() -> None:
    async def body(server: TrackerServer) -> None:
        reader, writer = await connect(server)
        writer.write(b"GET /healthz HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        status, headers, _ = await read_response(reader)
        assert (status, headers[b"connection"]) == (200, b"keep-alive")
        writer.write(b"GET /healthz HTTP/1.0\r\n\r\n")
        status, _, payload = await read_response(reader)
        assert (status, payload) == (200, b"ok\n")
        assert await closed_by_server(reader)

    run_with_tracker(body)


def test_pipelined_requests_are_answered_in_order() -> None:
    async def body(server: TrackerServer) -> None:
        reader, writer = await connect(server)
        writer.write(get(b"/healthz") + get(b"/nowhere") + get(b"/healthz"))
        statuses = [(await read_response(reader))[0] for _ in range(3)]
        assert statuses == [200, 404, 200]

    run_with_tracker(body)


def test_announce_path_must_be_exact() -> None:
    async def body(server: TrackerServer) -> None:
        reader, writer = await connect(server)
        target = announce_target(os.urandom(20), os.urandom(20), 1)
        for wrong in (b"/announce/", b"/tracker/announce", b"/ANNOUNCE"):
            writer.write(get(wrong + target[len(b"/announce") :]))
            assert (await read_response(reader))[0] == 404

    run_with_tracker(body)


def test_bad_announce_gets_bencoded_failure_with_200() -> None:
    async def body(server: TrackerServer) -> None:
        reader, writer = await connect(server)
        writer.write(get(b"/announce?info_hash=short&peer_id=x&port=1"))
        status, _, payload = await read_response(reader)
        assert status == 200
        assert b"info_hash" in bencode.decode(payload)["failure reason"].encode()

    run_with_tracker(body)


def test_oversized_head_gets_431_and_close() -> None:
    async def body(server: TrackerServer) -> None:
        reader, writer = await connect(server)
        writer.write(get(b"/healthz", b"X-Big: " + b"a" * 3000))
        status, _, _ = await read_response(reader)
        assert status == 431
        assert await closed_by_server(reader)

    run_with_tracker(body, max_head_bytes=2048)


def test_oversized_url_gets_414() -> None:
    async def body(server: TrackerServer) -> None:
        reader, writer = await connect(server)
        writer.write(get(b"/announce?" + b"a" * 5000))
        assert (await read_response(reader))[0] == 414

    run_with_tracker(body, max_head_bytes=4096)


def test_oversized_body_gets_413() -> None:
    async def body(server: TrackerServer) -> None:
        reader, writer = await connect(server)
        payload = b"{" + b" " * 5000 + b"}"
        writer.write(
            b"PUT /tasks/"
            + b"ab" * 20
            + b" HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % len(payload)
            + payload
        )
        assert (await read_response(reader))[0] == 413

    run_with_tracker(body, max_body_bytes=1024)


def test_client_that_never_finishes_headers_is_dropped() -> None:
    async def body(server: TrackerServer) -> None:
        reader, writer = await connect(server)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: slow\r\n")
        assert await closed_by_server(reader)
        assert not server.connections

    run_with_tracker(body, head_timeout_s=0.2)


def test_idle_keep_alive_connection_is_closed() -> None:
    async def body(server: TrackerServer) -> None:
        reader, writer = await connect(server)
        writer.write(get(b"/healthz"))
        assert (await read_response(reader))[0] == 200
        assert await closed_by_server(reader)

    run_with_tracker(body, keepalive_timeout_s=0.2)


def test_malformed_request_closes_only_that_connection() -> None:
    async def body(server: TrackerServer) -> None:
        good_reader, good_writer = await connect(server)
        bad_reader, bad_writer = await connect(server)
        bad_writer.write(b"\x16\x03\x01\x02\x00garbage that is not http\r\n\r\n")
        status, _, _ = await read_response(bad_reader)
        assert status == 400
        assert await closed_by_server(bad_reader)
        good_writer.write(get(b"/healthz"))
        assert (await read_response(good_reader))[0] == 200

    run_with_tracker(body)


def test_connection_limit_refuses_with_503() -> None:
    async def body(server: TrackerServer) -> None:
        _, first = await connect(server)
        await asyncio.sleep(0.05)
        reader, _ = await connect(server)
        assert (await read_response(reader))[0] == 503
        first.close()

    run_with_tracker(body, max_connections=1)


def test_metrics_count_announces_by_event_and_result() -> None:
    async def body(server: TrackerServer) -> None:
        reader, writer = await connect(server)
        writer.write(get(announce_target(os.urandom(20), os.urandom(20), 1, event="started")))
        await read_response(reader)
        writer.write(get(b"/announce?port=1"))
        await read_response(reader)
        writer.write(get(b"/metrics"))
        status, headers, payload = await read_response(reader)
        text = payload.decode()
        assert status == 200
        assert headers[b"content-type"].startswith(b"text/plain")
        assert 'dragonfly_tracker_announces_total{event="started",result="ok"} 1.0' in text
        assert 'dragonfly_tracker_announces_total{event="invalid",result="failure"} 1.0' in text
        assert "dragonfly_tracker_announce_duration_seconds_count 2.0" in text
        assert "dragonfly_tracker_peers 1.0" in text

    run_with_tracker(body)


def test_head_request_gets_headers_only() -> None:
    async def body(server: TrackerServer) -> None:
        reader, writer = await connect(server)
        writer.write(b"HEAD /healthz HTTP/1.1\r\n\r\n")
        head = await reader.readuntil(b"\r\n\r\n")
        assert b"Content-Length: 3" in head
        writer.write(get(b"/healthz"))
        status, _, payload = await read_response(reader)
        assert (status, payload) == (200, b"ok\n")

    run_with_tracker(body)


def test_ipv6_client_is_handed_out_in_peers6() -> None:
    async def body(server: TrackerServer) -> None:
        reader, writer = await asyncio.open_connection("::1", server.port)
        _OPEN.append(writer)
        task = os.urandom(20)
        writer.write(get(announce_target(task, os.urandom(20), 7001)))
        await read_response(reader)
        writer.write(get(announce_target(task, os.urandom(20), 7002)))
        _, _, payload = await read_response(reader)
        answer = bencodepy.Bencode().decode(payload)
        assert answer[b"peers6"] == bytes(15) + b"\x01" + (7001).to_bytes(2, "big")
        assert answer[b"peers"] == b""

    run_with_tracker(body, host="::1")


def test_scrape_and_stats_over_http() -> None:
    async def body(server: TrackerServer) -> None:
        reader, writer = await connect(server)
        tasks = [os.urandom(20), os.urandom(20)]
        for task in tasks:
            writer.write(get(announce_target(task, os.urandom(20), 7001, left="0")))
            await read_response(reader)
        query = "&".join("info_hash=" + quote_from_bytes(t, safe="") for t in tasks)
        writer.write(get(b"/scrape?" + query.encode()))
        _, _, payload = await read_response(reader)
        files = bencodepy.Bencode().decode(payload)[b"files"]
        assert set(files) == set(tasks)
        assert all(files[t][b"complete"] == 1 for t in tasks)
        writer.write(get(b"/stats?task=" + tasks[0].hex().encode() + b"&peers=5"))
        status, headers, payload = await read_response(reader)
        document = json.loads(payload)
        assert (status, headers[b"content-type"]) == (200, b"application/json")
        assert document["totals"]["tasks"] == 2
        assert [t["id"] for t in document["tasks"]] == [tasks[0].hex()]
        assert document["tasks"][0]["peer_list"][0]["state"] == "seeding"

    run_with_tracker(body)
