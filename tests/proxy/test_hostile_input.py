"""Hostile and malformed input against the real proxy (issue #8): a ``ProxyServer`` on a real
socket on 127.0.0.1 with a real ``Daemon`` and the ``upstream_server.py`` registry stand-in, put
together as ``tests/proxy/test_server.py`` does.

Every case gets a 4xx (or the safe answer ``proxy/routes.py`` documents), and nothing is served
that should not be: the stand-in's request log shows what reached the upstream, and a canary
listener on 127.0.0.1, which no ``ns`` and no rule allows, must never see a connection (the proxy
is not an open relay). After every test no file exists outside the cache directory that was not
there before, on-disk cache names are task ids in hex, and the proxy still serves a valid blob.

One proxy serves the whole module, on its own event loop in a thread, so that the blocking
clients below (and Hypothesis) can talk to it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import queue
import re
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy.config import DaemonConfig, ProxyConfig, parse_rule
from proxy.daemon import Daemon
from proxy.routes import Refused, classify
from proxy.server import ProxyServer
from tests.helpers import raw_http
from tests.helpers.raw_http import Reply, parse_replies
from tests.proxy.upstream_server import Blob, Upstream, get

#: Seconds a blocking socket waits for the proxy before the test calls it a hang.
IO_TIMEOUT_S = 15.0
MAX_HEAD_BYTES = 8 * 1024
BLOB_BYTES = 300_000
_HEX_NAME = re.compile(r"[0-9a-f]{40}")


class ErrorLog(logging.Handler):
    """ERROR records of the proxy's loggers: ``log.exception`` is how it reports a crash."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(self.format(record))


ERRORS = ErrorLog()


class Canary:
    """A listener on 127.0.0.1 that nothing may reach through the proxy: counts connections."""

    def __init__(self) -> None:
        self.connections = 0
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        async def accept(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.connections += 1
            writer.close()

        self._server = await asyncio.start_server(accept, "127.0.0.1", 0)

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


@dataclass
class Mirror:
    upstream: Upstream
    daemon: Daemon
    proxy: ProxyServer
    canary: Canary
    #: Where the test's files live; the daemon's are under ``work`` (two levels down, so that a
    #: ``../..`` escaping the cache would still land inside ``root`` and be seen).
    root: Path
    work: Path
    blob: Blob | None = None
    loop: asyncio.AbstractEventLoop | None = None
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def port(self) -> int:
        return self.proxy.port

    @property
    def cache_dir(self) -> Path:
        return self.work / "cache"


@asynccontextmanager
async def serving(root: Path, *rules: tuple[str, str]) -> AsyncIterator[Mirror]:
    """Upstream stand-in, Daemon and ProxyServer as in ``test_server.running``; ``rules`` are
    (action, regex) with ``{up}`` standing for the upstream's port."""
    work = root / "a" / "b"
    (work / "upstream").mkdir(parents=True)
    canary = Canary()
    await canary.start()
    upstream = Upstream(work / "upstream")
    await upstream.start()
    daemon = Daemon(
        DaemonConfig(cache_dir=work / "cache", socket=work / "d.sock", peer_host="127.0.0.1")
    )
    await daemon.start()
    config = ProxyConfig(
        port=0,
        upstream=upstream.url,
        rules=tuple(parse_rule(regex.format(up=upstream.port), a) for a, regex in rules),
        max_head_bytes=MAX_HEAD_BYTES,
    )
    proxy = ProxyServer(config, daemon, metrics=lambda: b"# metrics\n")
    await proxy.start()
    try:
        yield Mirror(upstream, daemon, proxy, canary, root, work)
    finally:
        await proxy.close()
        await daemon.close()
        await upstream.close()
        await canary.close()


@pytest.fixture(scope="module")
def mirror(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mirror]:
    started: queue.Queue[Mirror | BaseException] = queue.Queue()

    async def main() -> None:
        root = tmp_path_factory.mktemp("hostile-mirror")
        async with serving(root, ("direct", r"^http://127\.0\.0\.1:{up}/files/")) as running:
            running.loop = asyncio.get_running_loop()
            started.put(running)
            await running.stop.wait()

    def thread_main() -> None:
        try:
            asyncio.run(main())
        except BaseException as exc:  # handed to the test thread, which raises it
            started.put(exc)

    proxy_log = logging.getLogger("proxy")
    proxy_log.addHandler(ERRORS)
    thread = threading.Thread(target=thread_main, name="hostile-mirror", daemon=True)
    thread.start()
    running = started.get(timeout=60)
    if isinstance(running, BaseException):
        raise running
    try:
        running.blob = running.upstream.add_blob("layer.bin", BLOB_BYTES)
        (running.upstream.root / "x.txt").write_bytes(b"plain file")
        assert_serves_blob(running)  # warm: later checks come from the cache
        yield running
    finally:
        assert running.loop is not None
        running.loop.call_soon_threadsafe(running.stop.set)
        thread.join(30)
        proxy_log.removeHandler(ERRORS)
    if not started.empty():
        failure = started.get()
        assert not isinstance(failure, BaseException), failure


def _files_outside_cache(mirror: Mirror) -> set[Path]:
    skip = (mirror.cache_dir, mirror.upstream.root)
    return {
        path for path in mirror.root.rglob("*") if not any(path.is_relative_to(s) for s in skip)
    }


@pytest.fixture(autouse=True)
def unharmed(mirror: Mirror) -> Iterator[None]:
    """After each test: no new file outside the cache, hex names in it, the canary untouched,
    and a valid blob still served."""
    files_before = _files_outside_cache(mirror)
    errors_before = len(ERRORS.records)
    yield
    assert ERRORS.records[errors_before:] == [], "the proxy logged an error (a crash)"
    assert _files_outside_cache(mirror) == files_before
    names = [path.name for path in mirror.cache_dir.iterdir()]
    assert names and all(_HEX_NAME.fullmatch(name) for name in names), names
    assert mirror.canary.connections == 0, "a request reached a host nothing allows"
    assert_serves_blob(mirror)


# -- a blocking HTTP client -------------------------------------------------------------------


def talk(port: int, data: bytes) -> bytes:
    return raw_http.talk(port, data, timeout_s=IO_TIMEOUT_S)


def ask(mirror: Mirror, data: bytes) -> tuple[Reply, list[tuple[str, str]]]:
    """The one reply to ``data`` and the (method, path) requests it caused at the upstream."""
    seen_before = len(mirror.upstream.seen)
    replies = parse_replies(talk(mirror.port, data))
    assert len(replies) == 1, [r.status for r in replies]
    return replies[0], [(method, path) for method, path, _ in mirror.upstream.seen[seen_before:]]


def assert_serves_blob(mirror: Mirror) -> None:
    blob = mirror.blob
    assert blob is not None
    reply, _ = ask(mirror, get(f"/v2/library/app/blobs/{blob.digest}"))
    assert reply.status == 200
    assert reply.body == blob.path.read_bytes()
    assert reply.header(b"Docker-Content-Digest") == blob.digest.encode()


def assert_refused_locally(mirror: Mirror, data: bytes, status: int) -> Reply:
    entries_before = set(mirror.daemon.entries)
    reply, upstream_saw = ask(mirror, data)
    assert reply.status == status, reply
    assert upstream_saw == [], "a refused request reached the upstream"
    assert set(mirror.daemon.entries) == entries_before, "a refused request started a download"
    return reply


# -- malformed requests ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GET /v2/ HTTP/1.1 extra\r\n\r\n",
        b"get /v2/ HTTP/1.1\r\n\r\n",
        b"GET\t/v2/ HTTP/1.1\r\n\r\n",
        b"BREW /v2/ HTTP/1.1\r\n\r\n",
        b"GET /v2/\xff HTTP/1.1\r\n\r\n",
        b"GET /v2/\x00 HTTP/1.1\r\n\r\n",
        b"GET /v2/ HTTP/1.x\r\n\r\n",
        b"GET /v2/ HTTP/1.1\nHost: m\n\n",
        b"GET /v2/ HTTP/1.1\r\nno colon\r\n\r\n",
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        b"\x00\x01\x02\x03\r\n\r\n",
        b"GET * HTTP/1.1\r\n\r\n",
        b"OPTIONS * HTTP/1.1\r\n\r\n",
        b"GET v2/ HTTP/1.1\r\n\r\n",
        b"GET ftp://127.0.0.1/x HTTP/1.1\r\n\r\n",
    ],
    ids=[
        "extra word",
        "lower-case method",
        "tab separator",
        "unknown method",
        "raw non-UTF-8 in target",
        "raw NUL in target",
        "bad version",
        "bare LF line ends",
        "header without colon",
        "HTTP/2 preface",
        "binary garbage",
        "asterisk-form GET",
        "asterisk-form OPTIONS",
        "relative target",
        "ftp URL",
    ],
)
def test_malformed_request_line_gets_400(mirror: Mirror, request_bytes: bytes) -> None:
    assert_refused_locally(mirror, request_bytes, 400)


# -- traversal in names and digests -----------------------------------------------------------

DIGEST = "sha256:" + "ab" * 32

TRAVERSALS: list[tuple[str, int]] = [
    ("/v2/../files/x.txt", 404),
    ("/v2/lib/../../files/x.txt", 404),
    ("/v2/./lib/manifests/latest", 404),
    ("/v2/%2e%2e/files/x.txt", 404),
    ("/v2/%2E%2E/%2E%2E/files/x.txt", 404),
    (f"/v2/lib/%2e%2e/%2e%2e/blobs/{DIGEST}", 400),
    ("/v2/lib%2f..%2f..%2ffiles/manifests/latest", 404),
    (f"/v2/lib\\..\\..\\files/blobs/{DIGEST}", 400),
    ("/v2/lib/manifests/..%2f..%2ffiles%2fx.txt", 404),
    ("/v2/lib/manifests/..", 404),
    ("/v2/lib/blobs/sha256:..%2f..%2f..%2fetc%2fpasswd", 400),
    ("/v2/lib/blobs/sha256:../../../etc/passwd", 400),
    ("/v2/lib/blobs/uploads/..%2f..%2f", 404),
    ("/v2/lib/blobs/uploads/a/../../../files/x.txt", 404),
    ("/v2/lib/tags/list/../../../files/x.txt", 404),
    ("/v2//etc/passwd/manifests/latest", 404),
    ("//etc/passwd", 404),
    ("/etc/passwd", 404),
    ("/v2/C:%5cWindows/manifests/latest", 404),
    ("/v2/lib%00/manifests/latest", 404),
    (f"/v2/lib%00/blobs/{DIGEST}", 400),
    (f"/v2/{'a' * 300}/blobs/{DIGEST}", 400),
    ("/v2/" + "a/" * 1100 + "manifests/latest", 414),
]


@pytest.mark.parametrize(("target", "status"), TRAVERSALS, ids=[t[:60] for t, _ in TRAVERSALS])
def test_traversal_in_names_and_digests_is_refused_before_the_upstream(
    mirror: Mirror, target: str, status: int
) -> None:
    assert_refused_locally(mirror, get(target), status)


@pytest.mark.parametrize(
    "digest",
    [
        "sha256:" + "AB" * 32,  # upper-case hex
        "sha256:" + "a" * 63,
        "sha256:" + "a" * 65,
        "sha256:" + "z" * 64,
        "sha256:" + "a" * 62 + "-_",
    ],
    ids=["upper-case", "63 digits", "65 digits", "not hex", "not hex but in the grammar"],
)
def test_invalid_sha256_digest_gets_400(mirror: Mirror, digest: str) -> None:
    assert_refused_locally(mirror, get(f"/v2/lib/blobs/{digest}"), 400)


@pytest.mark.parametrize("digest", ["SHA256:" + "ab" * 32, "sha256", "sha256:", ":" + "ab" * 32])
def test_digest_outside_the_grammar_gets_a_4xx(mirror: Mirror, digest: str) -> None:
    reply, upstream_saw = ask(mirror, get(f"/v2/lib/blobs/{digest}"))
    assert 400 <= reply.status < 500
    assert upstream_saw == []


@pytest.mark.parametrize("digest", ["sha512:" + "ab" * 64, "md5:" + "ab" * 16])
def test_other_algorithms_pass_through_unchanged_and_never_reach_the_cache(
    mirror: Mirror, digest: str
) -> None:
    entries_before = set(mirror.daemon.entries)
    reply, upstream_saw = ask(mirror, get(f"/v2/lib/blobs/{digest}"))
    assert reply.status == 404  # the upstream's own answer (documented: passed through)
    assert upstream_saw == [("GET", f"/v2/lib/blobs/{digest}")]
    assert set(mirror.daemon.entries) == entries_before


# -- header injection and framing ------------------------------------------------------------

_UPLOAD = b"PUT /v2/lib/blobs/uploads/abc HTTP/1.1\r\nHost: m\r\n"


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GET /v2/ HTTP/1.1\r\nX-A: one\rInjected: yes\r\n\r\n",
        b"GET /v2/ HTTP/1.1\r\nX-A: one\nInjected: yes\r\n\r\n",
        b"GET /v2/ HTTP/1.1\r\nX-A: one\x00Injected: yes\r\n\r\n",
        b"GET /v2/ HTTP/1.1\r\nX-A: one\r\n Injected: yes\r\n\r\n",
        b"GET /v2/ HTTP/1.1\r\nX-A: one\r\n\tInjected: yes\r\n\r\n",
        b"GET /v2/ HTTP/1.1\r\nX A: one\r\n\r\n",
        b"GET /v2/ HTTP/1.1\r\n: one\r\n\r\n",
        b"GET /v2/ HTTP/1.1\r\nX-A : one\r\n\r\n",
        _UPLOAD + b"Content-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
        _UPLOAD + b"Content-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
        _UPLOAD + b"Content-Length: 3, 3\r\n\r\nabc",
        _UPLOAD + b"Content-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        _UPLOAD + b"Transfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        _UPLOAD + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: gzip\r\n\r\n0\r\n\r\n",
        _UPLOAD + b"Transfer-Encoding: chunked, gzip\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        _UPLOAD + b"Content-Length: -1\r\n\r\n",
        _UPLOAD + b"Content-Length: +3\r\n\r\nabc",
        _UPLOAD + b"Content-Length: 0x3\r\n\r\nabc",
        _UPLOAD + b"Content-Length: 99999999999999999999999\r\n\r\n",
    ],
    ids=[
        "CR in value",
        "LF in value",
        "NUL in value",
        "obs-fold space",
        "obs-fold tab",
        "space in name",
        "empty name",
        "space before colon",
        "two different Content-Lengths",
        "two equal Content-Lengths",
        "Content-Length list",
        "Content-Length then chunked",
        "chunked then Content-Length",
        "chunked not last (two lines)",
        "chunked not last (one line)",
        "negative Content-Length",
        "signed Content-Length",
        "hex Content-Length",
        "overflowing Content-Length",
    ],
)
def test_header_injection_and_ambiguous_framing_get_400(
    mirror: Mirror, request_bytes: bytes
) -> None:
    assert_refused_locally(mirror, request_bytes, 400)


def reply_json_headers(reply: Reply) -> list[tuple[str, str]]:
    """The request headers the echo route of the stand-in saw."""
    document = json.loads(reply.body)
    return [(str(n), str(v)) for n, v in document["headers"]]


def test_percent_encoded_crlf_in_the_query_is_forwarded_still_encoded(mirror: Mirror) -> None:
    target = "/v2/echo/manifests/latest?x=%0d%0aInjected:%20yes"
    reply, upstream_saw = ask(mirror, get(target))
    assert reply.status == 200
    assert upstream_saw == [("GET", target)]
    names = {str(name).lower() for name, _ in reply_json_headers(reply)}
    assert "injected" not in names


@pytest.mark.parametrize(
    "request_bytes",
    [
        _UPLOAD + b"Transfer-Encoding: gzip\r\n\r\nabc",
        _UPLOAD + b"Transfer-Encoding: identity\r\n\r\nabc",
        b"GET /v2/echo/manifests/a HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n",
    ],
    ids=["PUT gzip", "PUT identity", "GET gzip"],
)
def test_non_chunked_transfer_encoding_gets_400_without_reaching_the_upstream(
    mirror: Mirror, request_bytes: bytes
) -> None:
    seen_before = len(mirror.upstream.seen)
    replies = parse_replies(talk(mirror.port, request_bytes))
    assert [r.status for r in replies] == [400]
    assert mirror.upstream.seen[seen_before:] == []


def test_content_length_with_trailing_whitespace_is_not_a_502(mirror: Mirror) -> None:
    reply, _ = ask(mirror, _UPLOAD + b"Content-Length: 3 \r\n\r\nabc")
    assert reply.status == 201, reply


@pytest.mark.parametrize(
    "body",
    [
        b"Transfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
        b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\nzz\r\n",
        b"Transfer-Encoding: chunked\r\n\r\n3\r\nabcXX0\r\n\r\n",
        b"Content-Length: 100\r\n\r\nonly this much",
    ],
    ids=["bad first chunk size", "bad later chunk size", "chunk overrun", "FIN mid-body"],
)
def test_broken_request_body_is_not_blamed_on_the_upstream(mirror: Mirror, body: bytes) -> None:
    statuses = [r.status for r in parse_replies(talk(mirror.port, _UPLOAD + body))]
    assert statuses in ([], [400]), statuses


def test_oversized_heads_get_414_or_431(mirror: Mirror) -> None:
    line = get("/v2/" + "a" * MAX_HEAD_BYTES)
    assert_refused_locally(mirror, line, 414)
    big = get("/v2/", "X-Big: " + "a" * MAX_HEAD_BYTES)
    assert_refused_locally(mirror, big, 431)
    many = get("/v2/", *(f"X-{n}: v" for n in range(2000)))
    assert_refused_locally(mirror, many, 431)


# -- Range ---------------------------------------------------------------------------------------

N = BLOB_BYTES
RANGES: list[tuple[str, int, tuple[int, int] | None]] = [
    ("bytes=-0", 416, None),
    ("bytes=99999999999999999999-", 416, None),
    ("bytes=9999999999999999999-", 416, None),
    (f"bytes={N}-", 416, None),
    ("bytes=5-3", 416, None),
    ("bytes=a-b", 416, None),
    ("bytes=", 416, None),
    ("bytes=--1", 416, None),
    ("bytes=1-2-3", 416, None),
    ("bytes=\u0661-\u0662", 416, None),
    ("bytes=-9999999999999999999", 206, (0, N)),  # a huge suffix: the whole blob
    ("bytes=0-0", 206, (0, 1)),
    (f"bytes={N - 1}-", 206, (N - 1, N)),
    ("bytes=0-1,3-4", 200, (0, N)),  # several ranges: the whole blob (RFC 9110 14.2)
    ("bytes=0-1,0-1,0-1,0-1,0-1,0-1,0-1,0-1,0-1,0-1,0-1,0-1", 200, (0, N)),
    ("items=0-1", 200, (0, N)),  # another unit: ignored
]


@pytest.mark.parametrize(("value", "status", "span"), RANGES, ids=[r[0][:40] for r in RANGES])
def test_absurd_ranges_get_416_or_a_correct_answer(
    mirror: Mirror, value: str, status: int, span: tuple[int, int] | None
) -> None:
    blob = mirror.blob
    assert blob is not None
    path = f"/v2/lib/blobs/{blob.digest}"
    reply, upstream_saw = ask(mirror, get(path, f"Range: {value}"))
    assert reply.status == status
    assert upstream_saw == [("HEAD", path)]  # the permission check only: nothing downloaded
    if span is None:
        assert reply.header(b"Content-Range") == f"bytes */{N}".encode()
        assert len(reply.body) < 100
    else:
        assert reply.body == blob.path.read_bytes()[span[0] : span[1]]
        if status == 206:
            assert reply.header(b"Content-Range") == f"bytes {span[0]}-{span[1] - 1}/{N}".encode()


@pytest.mark.parametrize("value", ["bytes=0-99999999999999999999", "bytes=-99999999999999999999"])
def test_range_with_a_huge_end_means_the_whole_blob(mirror: Mirror, value: str) -> None:
    blob = mirror.blob
    assert blob is not None
    reply, _ = ask(mirror, get(f"/v2/lib/blobs/{blob.digest}", f"Range: {value}"))
    assert reply.status == 206
    assert reply.body == blob.path.read_bytes()


# -- not an open relay -------------------------------------------------------------------------


def _ns_cases(mirror: Mirror) -> list[tuple[str, int]]:
    canary, up = mirror.canary.port, mirror.upstream.port
    return [
        (f"127.0.0.1:{canary}", 403),
        (f"127.0.0.1%3A{canary}", 403),
        (f"localhost:{up}", 403),
        (f"[::1]:{up}", 403),
        ("evil.example", 403),
        ("registry-1.docker.io", 403),
        (f"127.0.0.1:{up}%00", 400),
        (f"127.0.0.1:{up}/", 400),
        (f"127.0.0.1:{up}%0d%0aX:%20y", 400),
        (f"user@127.0.0.1:{canary}", 400),
        ("", 400),
        ("%", 400),
    ]


def test_ns_naming_an_unconfigured_registry_is_refused(mirror: Mirror) -> None:
    for ns, status in _ns_cases(mirror):
        assert_refused_locally(mirror, get(f"/v2/lib/manifests/latest?ns={ns}"), status)
    twice = f"/v2/lib/manifests/latest?ns=127.0.0.1:{mirror.upstream.port}&ns=evil.example"
    assert_refused_locally(mirror, get(twice), 400)


def test_absolute_form_and_connect_to_hosts_no_rule_allows_are_refused(mirror: Mirror) -> None:
    canary, up = mirror.canary.port, mirror.upstream.port
    refused = [
        ("GET", f"http://127.0.0.1:{canary}/files/x.txt", 403),
        ("GET", f"http://127.0.0.1:{canary}/v2/", 403),
        ("GET", f"http://localhost:{up}/files/x.txt", 403),
        ("GET", f"https://127.0.0.1:{up}/files/x.txt", 403),
        ("GET", f"http://127.0.0.1:{up}/v2/", 403),
        ("GET", f"http://127.0.0.1:{canary}#@127.0.0.1:{up}/files/x.txt", 400),
        ("GET", f"http://127.0.0.1:{up}@127.0.0.1:{canary}/files/x.txt", 400),
        ("GET", f"http://127.0.0.1:{up}%40127.0.0.1:{canary}/files/x.txt", 400),
        ("GET", f"http://127.0.0.1:{up}:{canary}/files/x.txt", 400),
        ("POST", f"http://127.0.0.1:{canary}/files/x.txt", 403),
        ("CONNECT", f"127.0.0.1:{canary}", 403),
        ("CONNECT", f"127.0.0.1:{up}", 403),  # the rule is for http://, not tunnels
        ("CONNECT", f"[::1]:{canary}", 403),
        ("CONNECT", "evil.example:443", 403),
        ("CONNECT", "127.0.0.1:0", 400),
        ("CONNECT", "127.0.0.1:99999", 400),
        ("CONNECT", f"http://127.0.0.1:{canary}/", 400),
        ("CONNECT", f"/v2/127.0.0.1:{canary}", 400),
    ]
    for method, target, status in refused:
        data = get(target, method=method) + b"\x16\x03\x01 tunnel bytes"
        assert_refused_locally(mirror, data, status)
    # The one thing the rule allows works (and only that reached the upstream).
    reply, upstream_saw = ask(mirror, get(f"http://127.0.0.1:{up}/files/x.txt"))
    assert (reply.status, reply.body) == (200, b"plain file")
    assert upstream_saw == [("GET", "/files/x.txt")]


def _remove_dot_segments(path: str) -> str:
    """RFC 3986 5.2.4 after decoding ``%2e`` (an unreserved character, 6.2.2.2)."""
    output: list[str] = []
    for segment in unquote(path.partition("?")[0]).split("/")[1:]:
        if segment == "..":
            if output:
                output.pop()
        elif segment != ".":
            output.append(segment)
    return "/" + "/".join(output)


@pytest.mark.parametrize("rest", ["../v2/", "%2e%2e/v2/", "./../v2/", "x/%2E%2E/%2e%2e/v2/"])
def test_dot_segments_do_not_escape_a_rule(mirror: Mirror, rest: str) -> None:
    seen_before = len(mirror.upstream.seen)
    reply, _ = ask(mirror, get(f"http://127.0.0.1:{mirror.upstream.port}/files/{rest}"))
    forwarded = [path for _, path, _ in mirror.upstream.seen[seen_before:]]
    assert all(_remove_dot_segments(path).startswith("/files/") for path in forwarded), forwarded
    assert forwarded or 400 <= reply.status < 500


def test_malformed_absolute_url_allowed_by_a_loose_rule_gets_400(tmp_path: Path) -> None:
    async def main() -> list[int]:
        async with serving(tmp_path, ("direct", r"^http://127\.")) as loose:
            port = loose.port
            statuses = []
            for target in ("http://127.0.0.1.:{up}/files/x.txt", "http://127.[::1]:{up}/x"):
                data = get(target.format(up=loose.upstream.port))
                replies = parse_replies(await asyncio.to_thread(talk, port, data))
                statuses += [r.status for r in replies]
            assert loose.canary.connections == 0
            return statuses

    statuses = asyncio.run(main())
    assert statuses == [400, 400]


@pytest.mark.parametrize("port", ["\u00b2", "1\u00b9", "\u0661\u0662", "\uff18\uff10"])
def test_connect_with_a_non_ascii_digit_port_is_a_400_not_a_crash(port: str) -> None:
    # str.isdigit accepts these; int() does not (superscripts) or reads them as numbers.
    assert classify("CONNECT", f"127.0.0.1:{port}", ProxyConfig()) == Refused(
        400, "CONNECT needs host:port"
    )


# -- property ----------------------------------------------------------------------------------

_FRAGMENTS = [
    b"GET ",
    b"HEAD ",
    b"PUT ",
    b"CONNECT ",
    b"/v2/",
    b"lib/",
    b"blobs/",
    b"manifests/",
    b"sha256:",
    b"ab" * 32,
    b"..",
    b"%2e",
    b"?ns=",
    b"http://127.0.0.1:1/",
    b"127.0.0.1:1",
    b" HTTP/1.1",
    b" HTTP/1.0",
    b"\r\n",
    b"\r\n\r\n",
    b"Content-Length: 3",
    b"Transfer-Encoding: chunked",
    b"Range: bytes=",
    b"-",
    b"0",
    b"Connection: close",
    b"Expect: 100-continue",
    b":",
    b" ",
    b"\x00",
    b"\xff",
]


@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    data=st.one_of(
        st.binary(min_size=1, max_size=600),
        st.lists(st.sampled_from(_FRAGMENTS), min_size=1, max_size=30).map(b"".join),
    )
)
def test_random_request_bytes_get_well_formed_answers_or_a_close(
    mirror: Mirror, data: bytes
) -> None:
    for reply in parse_replies(talk(mirror.port, data)):
        # The upstream is up: a 5xx could only come from the proxy blaming it for the client.
        assert reply.status < 500, reply
    assert mirror.canary.connections == 0
