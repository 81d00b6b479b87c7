"""The proxy over real sockets on 127.0.0.1, against a real (small) upstream and a real Daemon."""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from proxy.config import DaemonConfig, ProxyConfig, parse_rule
from proxy.daemon import Daemon
from proxy.server import ProxyServer
from tests.proxy.upstream_server import (
    GOOD_AUTH,
    GZIPPED_MANIFEST,
    Upstream,
    exchange,
    get,
    read_reply,
)

MIB = 1 << 20


@dataclass
class Setup:
    upstream: Upstream
    daemon: Daemon
    proxy: ProxyServer

    @property
    def port(self) -> int:
        return self.proxy.port


@asynccontextmanager
async def running(
    tmp_path: Path, rules: tuple[tuple[str, str], ...] = (), **options: object
) -> AsyncIterator[Setup]:
    root = tmp_path / "upstream"
    root.mkdir(exist_ok=True)
    upstream = Upstream(root)
    await upstream.start()
    daemon = Daemon(
        DaemonConfig(
            cache_dir=tmp_path / "cache", socket=tmp_path / "d.sock", peer_host="127.0.0.1"
        )
    )
    await daemon.start()
    config = ProxyConfig(
        port=0,
        upstream=upstream.url,
        rules=tuple(parse_rule(regex, action) for action, regex in rules),
        **options,  # type: ignore[arg-type]
    )
    proxy = ProxyServer(config, daemon, metrics=lambda: b"# metrics\n")
    await proxy.start()
    try:
        yield Setup(upstream, daemon, proxy)
    finally:
        await proxy.close()
        await daemon.close()
        await upstream.close()


def run(tmp_path: Path, body: Callable[[Setup], Awaitable[None]], **kwargs: object) -> None:
    async def main() -> None:
        async with running(tmp_path, **kwargs) as setup:  # type: ignore[arg-type]
            await body(setup)

    asyncio.run(main())


# -- pass-through ----------------------------------------------------------------------------


def test_manifest_passthrough_keeps_repeated_accept_lines_and_authorization(
    tmp_path: Path,
) -> None:
    async def body(s: Setup) -> None:
        reply = await exchange(
            s.port,
            get(
                "/v2/echo/manifests/latest?n=1&x=%2F",
                "Accept: application/vnd.oci.image.manifest.v1+json",
                "Accept: application/vnd.docker.distribution.manifest.v2+json",
                "Authorization: Bearer secret-token",
                "Keep-Alive: timeout=5",
                "Proxy-Authorization: Basic cHJveHk6cHJveHk=",
                "TE: trailers",
                "X-Custom: kept",
            ),
        )
        assert reply.status == 200
        seen = reply.json()
        assert seen["path"] == "/v2/echo/manifests/latest?n=1&x=%2F"
        raw_headers = seen["headers"]
        assert isinstance(raw_headers, list)
        headers = [(str(n).lower(), str(v)) for n, v in raw_headers]
        assert [v for n, v in headers if n == "accept"] == [
            "application/vnd.oci.image.manifest.v1+json",
            "application/vnd.docker.distribution.manifest.v2+json",
        ]
        assert ("authorization", "Bearer secret-token") in headers
        assert ("host", s.upstream.address) in headers
        assert ("x-custom", "kept") in headers
        names = {n for n, _ in headers}
        assert not names & {"keep-alive", "proxy-authorization", "te", "user-agent"}
        assert "accept-encoding" not in names  # nothing added of our own

    run(tmp_path, body)


def test_repeated_response_headers_and_compressed_body_come_back_unchanged(
    tmp_path: Path,
) -> None:
    async def body(s: Setup) -> None:
        reply = await exchange(s.port, get("/v2/gz/manifests/latest", "Accept-Encoding: gzip"))
        assert reply.status == 200
        assert reply.all("X-Multi") == ["one", "two"]
        assert reply.header("Content-Encoding") == "gzip"
        assert reply.body == GZIPPED_MANIFEST  # never decompressed

    run(tmp_path, body)


def test_redirect_location_of_the_upstream_is_kept(tmp_path: Path) -> None:
    async def body(s: Setup) -> None:
        reply = await exchange(s.port, get("/v2/moved/manifests/latest"))
        assert reply.status == 307
        assert reply.header("Location") == "/v2/echo/manifests/other?x=%2F"

    run(tmp_path, body)


def test_unauthorized_answer_passes_through_with_every_www_authenticate(tmp_path: Path) -> None:
    async def body(s: Setup) -> None:
        blob = s.upstream.add_blob("private.bin", 1000, private=True)
        reply = await exchange(s.port, get(f"/v2/lib/blobs/{blob.digest}"))
        assert reply.status == 401
        assert reply.all("WWW-Authenticate") == [
            'Basic realm="fake"',
            'Bearer realm="http://auth.invalid/token"',
        ]
        assert b"UNAUTHORIZED" in reply.body
        assert not s.daemon.entries  # nothing was downloaded for it

    run(tmp_path, body)


def test_push_bodies_stream_to_the_upstream_with_length_or_chunked(tmp_path: Path) -> None:
    async def body(s: Setup) -> None:
        data = bytes(range(256)) * (3 * MIB // 256)
        head = get(
            "/v2/lib/blobs/uploads/abc-123?digest=sha256%3A00",
            f"Content-Length: {len(data)}",
            "Expect: 100-continue",
            method="PUT",
        )
        reader, writer = await asyncio.open_connection("127.0.0.1", s.port)
        writer.write(head)
        assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 100 Continue")
        writer.write(data)
        reply = await read_reply(reader)
        writer.close()
        assert reply.status == 201
        assert reply.json() == {
            "sha256": hashlib.sha256(data).hexdigest(),
            "length": len(data),
            "content_length": str(len(data)),
            "chunked": False,
        }
        chunks = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in (data[:1000], data[1000:]))
        chunked = get("/v2/lib/blobs/uploads/abc-124", "Transfer-Encoding: chunked", method="PATCH")
        reply = await exchange(s.port, chunked + chunks + b"0\r\n\r\n")
        assert reply.json()["sha256"] == hashlib.sha256(data).hexdigest()
        assert reply.json()["chunked"] is True

    run(tmp_path, body)


def test_requests_on_one_connection_are_answered_in_order(tmp_path: Path) -> None:
    async def body(s: Setup) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", s.port)
        one = b"GET /v2/echo/manifests/one HTTP/1.1\r\nHost: m\r\n\r\n"
        two = b"HEAD /v2/echo/manifests/two HTTP/1.1\r\nHost: m\r\n\r\n"
        writer.write(one + two + b"GET /v2/ HTTP/1.1\r\nHost: m\r\nConnection: close\r\n\r\n")
        first = await read_reply(reader)
        second = await read_reply(reader, head=True)
        third = await read_reply(reader)
        assert first.json()["path"] == "/v2/echo/manifests/one"
        assert second.status == 200 and second.header("Content-Length") is not None
        assert third.status == 200 and third.header("Connection") == "close"
        assert await reader.read() == b""
        writer.close()

    run(tmp_path, body)


def test_unreachable_upstream_is_a_502(tmp_path: Path) -> None:
    async def body(s: Setup) -> None:
        await s.upstream.close()
        reply = await exchange(s.port, get("/v2/"))
        assert reply.status == 502

    run(tmp_path, body)


# -- blobs through the daemon -------------------------------------------------------------------


def test_blob_get_comes_through_the_daemon_with_digest_headers(tmp_path: Path) -> None:
    async def body(s: Setup) -> None:
        blob = s.upstream.add_blob("layer.bin", 5 * MIB + 123)
        gets: list[int] = []
        for _ in range(3):
            reply = await exchange(s.port, get(f"/v2/library/app/blobs/{blob.digest}"))
            assert reply.status == 200
            assert reply.body == blob.path.read_bytes()
            assert reply.header("Docker-Content-Digest") == blob.digest
            assert reply.header("Content-Length") == str(5 * MIB + 123)
            assert reply.header("Content-Type") == "application/octet-stream"
            gets.append(s.upstream.blob_gets[blob.digest])
        assert len(s.daemon.entries) == 1
        assert s.daemon.counters.downloads_ok == 1
        assert gets[0] == gets[1] == gets[2]  # later answers: the cache (only a HEAD upstream)
        assert s.proxy.requests_by_route["blob"] == 3

    run(tmp_path, body)


def test_blob_downloads_trust_the_upstream_head_remember_its_speed_and_keep_connections(
    tmp_path: Path,
) -> None:
    async def body(s: Setup) -> None:
        first = s.upstream.add_blob("one.bin", 6 * MIB + 1)
        second = s.upstream.add_blob("two.bin", 6 * MIB + 3)
        for blob in (first, second):
            reply = await exchange(s.port, get(f"/v2/lib/blobs/{blob.digest}"))
            assert reply.status == 200
            assert reply.body == blob.path.read_bytes()

        def ranges_of(digest: str) -> list[tuple[int, int]]:
            found = []
            for method, path, headers in s.upstream.seen:
                value = dict(headers).get("Range")
                if method == "GET" and path.endswith(digest) and value is not None:
                    start, end = value.removeprefix("bytes=").split("-")
                    found.append((int(start), int(end)))
            return found

        # The HEAD that checked the client's access told the length and Range support: no probe.
        assert (0, 0) not in ranges_of(first.digest) + ranges_of(second.digest)
        # The first blob's Range requests start small (the origin's speed is unknown); the
        # second's first one is long, sized for the speed the first one measured.
        first_ranges, second_ranges = ranges_of(first.digest), ranges_of(second.digest)
        piece = first_ranges[0][1] - first_ranges[0][0] + 1
        assert second_ranges[0][1] - second_ranges[0][0] + 1 >= 8 * piece
        assert len(second_ranges) < len(first_ranges)
        # One HTTP client for all tasks: the second blob's requests reuse a connection.
        ports_by_blob = {first.digest: set[int](), second.digest: set[int]()}
        for (method, path, _), port in zip(s.upstream.seen, s.upstream.client_ports, strict=True):
            for digest, ports in ports_by_blob.items():
                if method == "GET" and path.endswith(digest):
                    ports.add(port)
        assert ports_by_blob[first.digest] & ports_by_blob[second.digest]

    run(tmp_path, body)


def test_cached_private_blob_is_refused_to_a_client_without_credentials(tmp_path: Path) -> None:
    async def body(s: Setup) -> None:
        blob = s.upstream.add_blob("secret.bin", 300_000, private=True)
        target = f"/v2/team/secret/blobs/{blob.digest}"
        allowed = await exchange(s.port, get(target, f"Authorization: {GOOD_AUTH}"))
        assert allowed.status == 200 and allowed.body == blob.path.read_bytes()
        assert len(s.daemon.entries) == 1
        for extra in ((), ("Authorization: Basic d3Jvbmc6d3Jvbmc=",)):
            refused = await exchange(s.port, get(target, *extra))
            assert refused.status == 401
            assert blob.path.read_bytes()[:64] not in refused.body
            assert refused.header("WWW-Authenticate") == 'Basic realm="fake"'

    run(tmp_path, body)


def test_blob_range_requests_get_206_with_content_range(tmp_path: Path) -> None:
    async def body(s: Setup) -> None:
        blob = s.upstream.add_blob("ranged.bin", 3 * MIB)
        data = blob.path.read_bytes()
        target = f"/v2/lib/blobs/{blob.digest}"
        size = len(data)
        cases = {
            "bytes=0-99": (0, 100),
            f"bytes={size - 10}-": (size - 10, size),
            "bytes=-5": (size - 5, size),
            f"bytes=1000-{size * 2}": (1000, size),
            "bytes=0-": (0, size),
        }
        for value, (start, end) in cases.items():
            reply = await exchange(s.port, get(target, f"Range: {value}"))
            assert reply.status == 206, value
            assert reply.header("Content-Range") == f"bytes {start}-{end - 1}/{size}", value
            assert reply.body == data[start:end], value
        for value in (f"bytes={size}-", "bytes=9-3", "bytes=x-y"):
            reply = await exchange(s.port, get(target, f"Range: {value}"))
            assert reply.status == 416, value
            assert reply.header("Content-Range") == f"bytes */{size}"
        ignored = await exchange(s.port, get(target, "Range: bytes=0-1,5-6"))
        assert ignored.status == 200 and ignored.body == data
        stale = await exchange(s.port, get(target, "Range: bytes=0-1", 'If-Range: "other"'))
        assert stale.status == 200 and stale.body == data

    run(tmp_path, body)


def test_blob_head_answers_from_the_upstream_without_a_body(tmp_path: Path) -> None:
    async def body(s: Setup) -> None:
        blob = s.upstream.add_blob("head.bin", 4096)
        reader, writer = await asyncio.open_connection("127.0.0.1", s.port)
        target = f"/v2/lib/blobs/{blob.digest}"
        writer.write(f"HEAD {target} HTTP/1.1\r\nHost: m\r\n\r\n".encode())
        reply = await read_reply(reader, head=True)
        assert reply.status == 200
        assert reply.header("Content-Length") == "4096"
        assert reply.header("Docker-Content-Digest") == blob.digest
        # The connection is still in step: the next answer starts right after the head.
        writer.write(b"GET /v2/ HTTP/1.1\r\nHost: m\r\nConnection: close\r\n\r\n")
        assert (await read_reply(reader)).status == 200
        writer.close()
        assert not s.daemon.entries

    run(tmp_path, body)


def test_swarm_failure_before_the_first_byte_falls_back_to_the_upstream(tmp_path: Path) -> None:
    async def body(s: Setup) -> None:
        blob = s.upstream.add_blob("fragile.bin", 200_000, no_ranges=True)
        reply = await exchange(s.port, get(f"/v2/lib/blobs/{blob.digest}"))
        assert reply.status == 200
        assert reply.body == blob.path.read_bytes()
        assert s.proxy.fallbacks["blob"] == 1

    run(tmp_path, body)


@pytest.mark.parametrize("size_bytes", [100_000, 6 * MIB + 5])
def test_a_blob_whose_bytes_miss_the_digest_is_never_delivered_whole(
    tmp_path: Path, size_bytes: int
) -> None:
    # Small: one piece. Large: many pieces stream out while the download hashes the blob.
    async def body(s: Setup) -> None:
        blob = s.upstream.add_blob("liar.bin", size_bytes)
        wrong = "sha256:" + "0" * 64
        s.upstream.blobs[wrong] = blob
        reader, writer = await asyncio.open_connection("127.0.0.1", s.port)
        writer.write(get(f"/v2/lib/blobs/{wrong}"))
        head = await reader.readuntil(b"\r\n\r\n")
        got = await reader.read()
        writer.close()
        if head.startswith(b"HTTP/1.1 200"):
            length = int(re.search(rb"Content-Length: (\d+)", head)[1])  # type: ignore[index]
            assert len(got) < length  # broken off before the end
        else:
            assert not head.startswith(b"HTTP/1.1 2")

    run(tmp_path, body)


def test_a_client_that_leaves_mid_blob_harms_neither_the_download_nor_the_next_client(
    tmp_path: Path,
) -> None:
    async def body(s: Setup) -> None:
        blob = s.upstream.add_blob("big.bin", 12 * MIB + 1)
        reader, writer = await asyncio.open_connection("127.0.0.1", s.port)
        writer.write(get(f"/v2/lib/blobs/{blob.digest}"))
        await reader.readuntil(b"\r\n\r\n")
        await reader.readexactly(MIB)
        writer.transport.abort()  # gone, with most of the blob still to send
        reply = await exchange(s.port, get(f"/v2/lib/blobs/{blob.digest}"))
        assert reply.status == 200
        assert reply.body == blob.path.read_bytes()
        for _ in range(100):  # the stream ends with the last verified piece; finalize follows
            if s.daemon.counters.downloads_ok:
                break
            await asyncio.sleep(0.05)
        assert s.daemon.counters.downloads_ok == 1
        assert s.daemon.counters.downloads_failed == 0

    run(tmp_path, body)


def test_a_slow_reader_gets_every_byte_of_a_blob_in_order(tmp_path: Path) -> None:
    async def body(s: Setup) -> None:
        blob = s.upstream.add_blob("slow-reader.bin", 8 * MIB + 7)
        reader, writer = await asyncio.open_connection("127.0.0.1", s.port)
        writer.write(get(f"/v2/lib/blobs/{blob.digest}"))
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200")
        received = hashlib.sha256()
        count = 0
        while chunk := await reader.read(256 * 1024):  # the proxy's sends wait on a full socket
            received.update(chunk)
            count += len(chunk)
            await asyncio.sleep(0.002)
        writer.close()
        assert count == 8 * MIB + 7
        assert "sha256:" + received.hexdigest() == blob.digest

    run(tmp_path, body)


# -- the connection ---------------------------------------------------------------------------


def test_tls_client_hello_is_refused_by_closing_and_the_port_keeps_serving(
    tmp_path: Path,
) -> None:
    async def body(s: Setup) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", s.port)
        writer.write(bytes.fromhex("160301020001") + b"\x01" * 200)
        assert await reader.read() == b""  # closed, no HTTP answer to a TLS client
        writer.close()
        assert (await exchange(s.port, get("/v2/"))).status == 200

    run(tmp_path, body)


def test_oversized_head_gets_431(tmp_path: Path) -> None:
    async def body(s: Setup) -> None:
        reply = await exchange(s.port, get("/v2/", "X-Big: " + "a" * 5000))
        assert reply.status == 431

    run(tmp_path, body, max_head_bytes=4096)


def test_malformed_request_gets_400(tmp_path: Path) -> None:
    async def body(s: Setup) -> None:
        reply = await exchange(s.port, b"GET /v2/ HTTP/1.1\r\nBad Header\r\n\r\n")
        assert reply.status == 400

    run(tmp_path, body)


def test_traversal_and_foreign_ns_are_refused_without_reaching_the_upstream(
    tmp_path: Path,
) -> None:
    async def body(s: Setup) -> None:
        for target, status in (
            ("/v2/../../etc/passwd/blobs/sha256:" + "a" * 64, 400),
            ("/v2/a/%2e%2e/manifests/latest", 404),
            ("/v2/a/manifests/latest?ns=evil.example", 403),
            ("/v2/a/manifests/latest?ns=%0d%0aX:y", 400),
        ):
            assert (await exchange(s.port, get(target))).status == status, target
        assert not s.upstream.seen

    run(tmp_path, body)


def test_ns_names_the_upstream_and_is_not_forwarded(tmp_path: Path) -> None:
    async def body(s: Setup) -> None:
        ns = s.upstream.address.replace(":", "%3A")
        reply = await exchange(s.port, get(f"/v2/echo/manifests/v1?ns={ns}&n=5"))
        assert reply.status == 200
        assert reply.json()["path"] == "/v2/echo/manifests/v1?n=5"

    run(tmp_path, body)


def test_metrics_and_healthz_are_served_on_the_proxy_port(tmp_path: Path) -> None:
    async def body(s: Setup) -> None:
        assert (await exchange(s.port, get("/metrics"))).body == b"# metrics\n"
        assert (await exchange(s.port, get("/healthz"))).body == b"ok\n"
        assert s.proxy.requests_by_route["metrics"] == 1

    run(tmp_path, body)


# -- HTTP proxy mode ------------------------------------------------------------------------------


async def _echo_server() -> asyncio.Server:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.close()

    return await asyncio.start_server(echo, "127.0.0.1", 0)


def test_connect_is_tunnelled_blind_to_a_host_a_rule_allows(tmp_path: Path) -> None:
    async def main() -> None:
        echo = await _echo_server()
        port = echo.sockets[0].getsockname()[1]
        rules = (("direct", rf"^https://127\.0\.0\.1:{port}/"),)
        async with running(tmp_path, rules=rules) as s:
            reader, writer = await asyncio.open_connection("127.0.0.1", s.port)
            head = f"CONNECT 127.0.0.1:{port} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n"
            writer.write(head.encode() + b"\x16early bytes|")
            reply = await read_reply(reader, head=True)
            assert reply.status == 200
            writer.write(b"more\x00\xff")
            expected = b"\x16early bytes|more\x00\xff"
            got = b""
            while len(got) < len(expected):
                got += await reader.read(100)
            assert got == expected
            writer.close()
            other = await exchange(s.port, b"CONNECT 127.0.0.1:1 HTTP/1.1\r\nHost: x\r\n\r\n")
            assert other.status == 403
            assert s.proxy.requests_by_route["connect"] == 1
        echo.close()

    asyncio.run(main())


def test_absolute_form_requests_follow_the_rules(tmp_path: Path) -> None:
    async def body(s: Setup) -> None:
        (s.upstream.root / "direct.txt").write_bytes(b"direct body")
        blob = s.upstream.add_blob("swarm.bin", 2 * MIB)
        base = s.upstream.url
        direct = await exchange(s.port, get(f"{base}/files/direct.txt"))
        assert direct.status == 200 and direct.body == b"direct body"
        swarm = await exchange(s.port, get(f"{base}/files/swarm.bin"))
        assert swarm.status == 200 and swarm.body == blob.path.read_bytes()
        assert len(s.daemon.entries) == 1
        assert (await exchange(s.port, get("http://elsewhere.invalid/x"))).status == 403
        assert s.proxy.requests_by_route["proxy_swarm"] == 1
        assert s.proxy.requests_by_route["proxy_direct"] == 1

    rules = (("swarm", r"^http://127\.0\.0\.1:\d+/files/swarm"), ("direct", r"^http://127\."))
    run(tmp_path, body, rules=rules)
