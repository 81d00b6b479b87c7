"""dfget.httpclient against real servers on 127.0.0.1: the project's origin, and small asyncio
servers written here that answer with exact bytes (chunked, redirects, a close mid-body, a
malformed status line, silence, TLS, a unix socket)."""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import ssl
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
import uvloop

from dfget.httpclient import (
    HIGH_WATER,
    BodyTooLarge,
    ConnectError,
    ConnectionLost,
    HttpClient,
    HttpTimeout,
    InvalidRequest,
    InvalidURL,
    ProtocolError,
    Response,
    TooManyRedirects,
)
from tests.conftest import require_program
from tests.helpers.origin_server import OriginServer, origin_process

T = TypeVar("T")
DATA = os.urandom(3 * 1024 * 1024 + 17)


LOOPS = {"asyncio": asyncio.run, "uvloop": uvloop.run}  # dfget runs on uvloop
_runner: list[Callable[[Coroutine[Any, Any, Any]], Any]] = [asyncio.run]


@pytest.fixture(autouse=True, params=sorted(LOOPS))
def event_loop_kind(request: pytest.FixtureRequest) -> Iterator[None]:
    _runner[0] = LOOPS[request.param]
    yield
    _runner[0] = asyncio.run


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    result: T = _runner[0](coroutine)
    return result


@dataclass
class Seen:
    """One request as the server read it."""

    method: str
    target: str
    headers: dict[str, str]
    body: bytes
    connection: int


#: Answers one request by writing to the stream; returns False to close the connection.
Answer = Callable[[Seen, asyncio.StreamWriter], Awaitable[bool]]


@dataclass
class Server:
    port: int = 0
    connections: int = 0
    requests: list[Seen] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


async def read_request(reader: asyncio.StreamReader, connection: int) -> Seen | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    line, *lines = head.decode("latin-1").split("\r\n")[:-2]
    method, target, _ = line.split(" ")
    headers = {}
    for header in lines:
        name, _, value = header.partition(":")
        headers[name.lower()] = value.strip()
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return Seen(method, target, headers, body, connection)


@asynccontextmanager
async def serving(answer: Answer, unix_path: str | None = None) -> AsyncIterator[Server]:
    state = Server()

    async def on_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        number = state.connections
        state.connections += 1
        try:
            while (request := await read_request(reader, number)) is not None:
                state.requests.append(request)
                if not await answer(request, writer):
                    break
        finally:
            writer.close()

    if unix_path is not None:
        server = await asyncio.start_unix_server(on_connection, unix_path)
    else:
        server = await asyncio.start_server(on_connection, "127.0.0.1", 0)
        state.port = server.sockets[0].getsockname()[1]
    try:
        yield state
    finally:
        server.close()
        await server.wait_closed()


def answer_with(raw: bytes, keep: bool = True) -> Answer:
    async def answer(_: Seen, writer: asyncio.StreamWriter) -> bool:
        writer.write(raw)
        await writer.drain()
        return keep

    return answer


def ok(body: bytes, *headers: str) -> bytes:
    head = "".join(f"{h}\r\n" for h in headers)
    return f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\n{head}\r\n".encode() + body


def moved(status: int, location: str, body: bytes = b"") -> bytes:
    head = f"HTTP/1.1 {status} Moved\r\nLocation: {location}\r\nContent-Length: {len(body)}\r\n"
    return head.encode() + b"\r\n" + body


async def fetch(client: HttpClient, url: str, **kwargs: Any) -> tuple[Response, bytes]:
    response = await client.request(kwargs.pop("method", "GET"), url, **kwargs)
    async with response:
        return response, await response.read_all(1 << 30)


@asynccontextmanager
async def client_for(**kwargs: Any) -> AsyncIterator[HttpClient]:
    client = HttpClient(**kwargs)
    try:
        yield client
    finally:
        await client.close()


# -- against the project's origin ------------------------------------------------------------


@pytest.fixture(scope="module")
def origin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OriginServer]:
    directory = tmp_path_factory.mktemp("origin")
    (directory / "data.bin").write_bytes(DATA)
    with origin_process(directory) as server:
        yield server


def test_a_body_streams_whole_and_the_connection_is_reused(origin: OriginServer) -> None:
    async def main() -> tuple[bytes, bytes, int]:
        async with client_for() as client:
            _, whole = await fetch(client, f"{origin.base_url}/files/data.bin")
            response = await client.request(
                "GET", f"{origin.base_url}/files/data.bin", headers=[("Range", "bytes=5-1000004")]
            )
            async with response:
                assert response.status == 206
                assert response.headers["content-range"] == f"bytes 5-1000004/{len(DATA)}"
                buffer = bytearray(1_000_000)
                view, filled = memoryview(buffer), 0
                while count := await response.readinto(view[filled:]):
                    filled += count
                assert filled == len(buffer) and response.complete
            return whole, bytes(buffer), len(client._connections)

    whole, ranged, connections = run(main())
    assert whole == DATA
    assert ranged == DATA[5:1_000_005]
    assert connections == 1


def test_read_returns_at_most_what_is_asked_then_empty_at_the_end(origin: OriginServer) -> None:
    async def main() -> list[int]:
        async with client_for() as client:
            response = await client.request("GET", f"{origin.base_url}/files/data.bin")
            sizes = []
            async with response:
                while chunk := await response.read(100_000):
                    sizes.append(len(chunk))
                assert await response.read(10) == b""
            return sizes

    sizes = run(main())
    assert sum(sizes) == len(DATA) and max(sizes) <= 100_000


def test_head_has_no_body_even_with_a_length(origin: OriginServer) -> None:
    async def main() -> tuple[Response, bytes, bytes, int]:
        async with client_for() as client:
            head, body = await fetch(client, f"{origin.base_url}/files/data.bin", method="HEAD")
            _, after = await fetch(client, f"{origin.base_url}/files/data.bin")
            return head, body, after, len(client._connections)

    head, body, after, connections = run(main())
    assert head.status == 200 and head.headers["Content-Length"] == str(len(DATA))
    assert body == b"" and after == DATA
    assert connections == 1  # the HEAD's connection served the GET


# -- framing, interim answers, the pool ------------------------------------------------------


def test_chunked_body_with_extensions_and_trailers() -> None:
    chunked = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5;name=value\r\nhello\r\n1\r\n \r\n5\r\nworld\r\n0\r\nX-Trailer: t\r\n\r\n"
    )

    async def main() -> tuple[bytes, bytes, int, str | None]:
        async with serving(answer_with(chunked)) as server, client_for() as client:
            response, first = await fetch(client, server.url + "/a")
            _, second = await fetch(client, server.url + "/b")
            return first, second, server.connections, response.headers.get("X-Trailer")

    assert run(main()) == (b"hello world", b"hello world", 1, None)


def test_a_body_delimited_by_the_close_is_read_to_the_end_and_not_reused() -> None:
    async def main() -> tuple[bytes, bytes, int]:
        answer = answer_with(b"HTTP/1.1 200 OK\r\n\r\n" + DATA[:100_000], keep=False)
        async with serving(answer) as server, client_for() as client:
            _, first = await fetch(client, server.url)
            _, second = await fetch(client, server.url)
            return first, second, server.connections

    assert run(main()) == (DATA[:100_000], DATA[:100_000], 2)


def test_interim_no_content_and_not_modified_answers() -> None:
    answers = {
        "/continue": b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"
        + ok(b"final", "X-Final: 1"),
        "/204": b"HTTP/1.1 204 No Content\r\nX-A: 1\r\n\r\n",
        "/304": b'HTTP/1.1 304 Not Modified\r\nETag: "e"\r\n\r\n',
    }

    async def answer(request: Seen, writer: asyncio.StreamWriter) -> bool:
        writer.write(answers[request.target])
        return True

    async def main() -> list[tuple[int, bytes, str | None]]:
        async with serving(answer) as server, client_for() as client:
            seen = []
            for path in ("/continue", "/204", "/304", "/continue"):
                response, body = await fetch(client, server.url + path)
                seen.append((response.status, body, response.headers.get("Link")))
            assert server.connections == 1
            return seen

    final = (200, b"final", None)
    assert run(main()) == [final, (204, b"", None), (304, b"", None), final]


def test_connection_close_and_http_1_0_answers_are_not_reused() -> None:
    async def answer(request: Seen, writer: asyncio.StreamWriter) -> bool:
        if request.target == "/close":
            writer.write(ok(b"x", "Connection: close"))
        else:
            writer.write(b"HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\ny")
        return True  # the client must not send another request on it anyway

    async def main() -> int:
        async with serving(answer) as server, client_for() as client:
            for path in ("/close", "/close", "/old", "/old"):
                await fetch(client, server.url + path)
            return server.connections

    assert run(main()) == 4


def test_a_pooled_connection_the_server_dropped_is_replaced_without_a_word() -> None:
    """The server answers one request per connection but says nothing (no Connection: close):
    the next request meets a closed connection and goes out again on a new one."""

    async def main() -> tuple[list[bytes], int]:
        async with serving(answer_with(ok(b"once"), keep=False)) as server:
            async with client_for() as client:
                bodies = [(await fetch(client, server.url))[1] for _ in range(3)]
            return bodies, server.connections

    assert run(main()) == ([b"once"] * 3, 3)


def test_reading_pauses_the_socket_while_the_reader_lags() -> None:
    big = os.urandom(8 * HIGH_WATER)

    async def main() -> tuple[bytes, int]:
        async with serving(answer_with(ok(big))) as server, client_for() as client:
            response = await client.request("GET", server.url)
            connection = response._connection
            most, parts = 0, []
            async with response:
                while chunk := await response.read(16 * 1024):
                    parts.append(chunk)
                    await asyncio.sleep(0)
                    most = max(most, connection.buffered)
            return b"".join(parts), most

    body, most_buffered = run(main())
    assert body == big
    assert most_buffered <= HIGH_WATER + 256 * 1024  # paused at the mark, plus one socket read


# -- redirects and credentials ---------------------------------------------------------------


def test_redirects_are_followed_for_get_up_to_the_limit() -> None:
    async def answer(request: Seen, writer: asyncio.StreamWriter) -> bool:
        step = int(request.target.rsplit("/", 1)[1])
        if step < 5:
            status = (301, 302, 303, 307, 308)[step]
            location = (
                f"/hop/{step + 1}" if step % 2 else f"http://127.0.0.1:{port[0]}/hop/{step + 1}"
            )
            writer.write(moved(status, location, b"bye"))
        else:
            writer.write(ok(b"arrived"))
        return True

    port = [0]

    async def main() -> None:
        async with serving(answer) as server, client_for() as client:
            port[0] = server.port
            response, body = await fetch(client, server.url + "/hop/0", follow_redirects=True)
            assert (response.status, body, response.redirects) == (200, b"arrived", 5)
            assert response.url == server.url + "/hop/5"
            assert server.connections == 1  # each redirect's body was read: the connection reused
            response, _ = await fetch(client, server.url + "/hop/0")
            assert (response.status, response.headers["Location"]) == (301, f"{server.url}/hop/1")
            post = await client.request("POST", server.url + "/hop/1", follow_redirects=True)
            assert post.status == 302
            post.close()
            with pytest.raises(TooManyRedirects):
                await client.request(
                    "GET", server.url + "/hop/0", follow_redirects=True, max_redirects=4
                )

    run(main())


def test_authorization_goes_only_to_the_origin_it_was_given_for() -> None:
    """Redirected from A to B (another port: another origin) and back to A: B never sees the
    caller's Authorization, A sees it both times. Credentials in a URL become Basic auth."""
    seen: list[tuple[str, str | None]] = []
    ports: dict[str, int] = {}

    def site(name: str) -> Answer:
        async def answer(request: Seen, writer: asyncio.StreamWriter) -> bool:
            seen.append((f"{name}{request.target}", request.headers.get("authorization")))
            if request.target == "/start":
                writer.write(moved(302, f"http://127.0.0.1:{ports['b']}/b"))
            elif request.target == "/b":
                writer.write(moved(307, f"http://127.0.0.1:{ports['a']}/end"))
            else:
                writer.write(ok(b"done"))
            return True

        return answer

    async def main() -> None:
        async with serving(site("a")) as a, serving(site("b")) as b, client_for() as client:
            ports.update(a=a.port, b=b.port)
            headers = [("Authorization", "Bearer secret")]
            response, body = await fetch(
                client, a.url + "/start", headers=headers, follow_redirects=True
            )
            assert (body, response.redirects) == (b"done", 2)
            await fetch(client, f"http://us%40er:p%3Ass@127.0.0.1:{a.port}/creds")

    run(main())
    basic = "Basic " + base64.b64encode(b"us@er:p:ss").decode()
    assert seen == [
        ("a/start", "Bearer secret"),
        ("b/b", None),
        ("a/end", "Bearer secret"),
        ("a/creds", basic),
    ]


# -- what goes on the wire -------------------------------------------------------------------


def test_request_head_and_body_as_sent() -> None:
    async def main() -> list[Seen]:
        async with serving(answer_with(ok(b""))) as server, client_for() as client:
            await fetch(client, server.url + "/a b/\u00fc?q=%2F%ff&x=y z")
            await fetch(client, server.url + "/announce?info_hash=%00%FF", method="PUT", body=b"{}")
            await fetch(client, server.url + "/post", method="POST")
            await fetch(
                client, server.url + "/h", headers=[("Host", "elsewhere"), ("User-Agent", "me")]
            )
            return server.requests

    plain, put, post, own = run(main())
    assert plain.target == "/a%20b/%C3%BC?q=%2F%ff&x=y%20z"
    assert plain.headers["host"].startswith("127.0.0.1:")
    assert (plain.headers["user-agent"], plain.headers["accept"]) == ("dfget", "*/*")
    assert "accept-encoding" not in plain.headers and "content-length" not in plain.headers
    assert (put.method, put.target, put.body) == ("PUT", "/announce?info_hash=%00%FF", b"{}")
    assert put.headers["content-length"] == "2"
    assert post.headers["content-length"] == "0"
    assert (own.headers["host"], own.headers["user-agent"]) == ("elsewhere", "me")


@pytest.mark.parametrize(
    "url", ["ftp://127.0.0.1/x", "http://", "http://127.0.0.1:99999/", "/relative", "127.0.0.1:80"]
)
def test_what_is_not_an_http_url_is_refused_before_any_connection(url: str) -> None:
    async def main() -> None:
        async with client_for() as client:
            await client.request("GET", url)

    with pytest.raises(InvalidURL):
        run(main())


def test_a_header_with_a_line_break_is_refused() -> None:
    async def main() -> None:
        async with serving(answer_with(ok(b""))) as server, client_for() as client:
            with pytest.raises(InvalidRequest):
                await client.request("GET", server.url, headers=[("X", "a\r\nInjected: 1")])
            assert server.connections == 0

    run(main())


# -- failures --------------------------------------------------------------------------------


def test_a_close_in_the_middle_of_the_body_delivers_what_came_then_fails() -> None:
    async def main() -> None:
        raw = b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"x" * 400
        async with serving(answer_with(raw, keep=False)) as server, client_for() as client:
            response = await client.request("GET", server.url)
            received = b""
            with pytest.raises(ConnectionLost, match="middle of the body"):
                while chunk := await response.read():
                    received += chunk
            assert received == b"x" * 400
            response.release()
            assert not client._connections

    run(main())


def test_a_close_before_any_answer_is_connection_lost() -> None:
    async def main() -> None:
        async with serving(answer_with(b"", keep=False)) as server, client_for() as client:
            with pytest.raises(ConnectionLost, match="without answering"):
                await client.request("GET", server.url)

    run(main())


@pytest.mark.parametrize(
    "raw",
    [
        b"HTTP/1.1 2xx Nope\r\n\r\n",
        b"HTTQ/1.1 200 OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"HTTP/1.1 200 OK\r\n" + b"X-Pad: " + b"a" * 70_000 + b"\r\n\r\n",
    ],
    ids=["status", "version", "two-lengths", "bad-chunk", "huge-head"],
)
def test_a_malformed_response_is_a_protocol_error(raw: bytes) -> None:
    async def main() -> None:
        async with serving(answer_with(raw)) as server, client_for() as client:
            with pytest.raises(ProtocolError):
                await fetch(client, server.url)
            assert not client._connections

    run(main())


def test_read_all_refuses_a_body_over_its_limit() -> None:
    chunked = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        + b"a\r\n0123456789\r\n" * 5
        + b"0\r\n\r\n"
    )

    async def main() -> None:
        async with serving(answer_with(ok(b"y" * 100))) as server, client_for() as client:
            response = await client.request("GET", server.url)
            with pytest.raises(BodyTooLarge, match="100 bytes"):
                await response.read_all(99)
            assert (await fetch(client, server.url))[1] == b"y" * 100
        async with serving(answer_with(chunked)) as server, client_for() as client:
            response = await client.request("GET", server.url)
            with pytest.raises(BodyTooLarge):
                await response.read_all(45)
            response = await client.request("GET", server.url)
            assert await response.read_all(50) == b"0123456789" * 5

    run(main())


def test_a_silent_server_is_a_read_timeout_and_a_refused_port_a_connect_error() -> None:
    async def silent(_: Seen, writer: asyncio.StreamWriter) -> bool:
        await asyncio.sleep(30)
        return False

    async def body_stalls(_: Seen, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
        await asyncio.sleep(30)
        return False

    async def main() -> None:
        async with client_for() as client:
            async with serving(silent) as server:
                with pytest.raises(HttpTimeout):
                    await client.request("GET", server.url, read_timeout_s=0.2)
            async with serving(body_stalls) as server:
                response = await client.request("GET", server.url, read_timeout_s=0.2)
                assert await response.read() == b"abc"
                with pytest.raises(HttpTimeout):
                    await response.read()
                response.release()
            with socket.socket() as unused:
                unused.bind(("127.0.0.1", 0))  # bound, not listening: refused
                with pytest.raises(ConnectError, match="cannot connect"):
                    await client.request("GET", f"http://127.0.0.1:{unused.getsockname()[1]}/")
            assert not client._connections

    run(main())


def test_a_connection_not_accepted_in_time_is_a_connect_timeout() -> None:
    """A listener whose accept queue is full drops new SYNs (Linux): the connect hangs."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        fillers = []
        try:
            for _ in range(4):
                filler = socket.socket()
                filler.setblocking(False)
                filler.connect_ex(listener.getsockname())
                fillers.append(filler)

            async def main() -> None:
                async with client_for() as client:
                    port = listener.getsockname()[1]
                    with pytest.raises(HttpTimeout, match="no connection"):
                        await client.request(
                            "GET", f"http://127.0.0.1:{port}/", connect_timeout_s=0.3
                        )

            run(main())
        finally:
            for filler in fillers:
                filler.close()


# -- unix socket, TLS ------------------------------------------------------------------------


def test_requests_over_a_unix_socket_share_one_connection(tmp_path: Path) -> None:
    path = str(tmp_path / "api.sock")

    async def main() -> tuple[list[bytes], int, str]:
        async with serving(answer_with(ok(b"local")), unix_path=path) as server:
            async with client_for(unix_socket=path) as client:
                bodies = [(await fetch(client, "http://dfdaemon/v1/x"))[1] for _ in range(3)]
            return bodies, server.connections, server.requests[0].headers["host"]

    assert run(main()) == ([b"local"] * 3, 1, "dfdaemon")


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    openssl = require_program("openssl")
    directory = tmp_path_factory.mktemp("tls")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=test",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


def test_https_with_a_trusted_certificate_and_refused_without(
    certificate: tuple[Path, Path],
) -> None:
    cert, key = certificate
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(cert, key)

    async def main() -> None:
        tls = await asyncio.start_server(_tls_answer, "127.0.0.1", 0, ssl=server_context)
        url = f"https://127.0.0.1:{tls.sockets[0].getsockname()[1]}/secure"
        try:
            async with client_for(
                ssl_context=ssl.create_default_context(cafile=str(cert))
            ) as client:
                for _ in range(2):
                    response, body = await fetch(client, url)
                    assert (response.status, body) == (200, b"over TLS")
                assert len(client._connections) == 1
            async with client_for() as client:  # the system's trust store: not this certificate
                with pytest.raises(ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
                    await client.request("GET", url)
        finally:
            tls.close()
            await tls.wait_closed()

    run(main())


async def _tls_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while await read_request(reader, 0) is not None:
            writer.write(ok(b"over TLS"))
            await writer.drain()
    except (ssl.SSLError, ConnectionError):
        pass
    finally:
        writer.close()
