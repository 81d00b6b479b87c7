"""Hostile and malformed input against a real ``dftracker serve`` process on 127.0.0.1 (issue #8).

Every case gets the answer the tracker documents (``tracker/routes.py``, ``tracker/server.py``):
a refused announce or scrape is HTTP 200 with a bencoded dict holding only ``failure reason``
(BEP 3); a request HTTP cannot parse is a 400 and that connection is closed; an oversized head is
414 (request line) or 431 (headers), an oversized body 413; a head not finished within
``head_timeout_s`` of its first byte is dropped. After every test the process must be healthy:
still running, ``/healthz`` answers, a valid announce from a second client gets a proper peer
list, and nothing was logged as a traceback.

One tracker process serves the whole module; its timeouts are shortened through a config file so
that the slow-sender cases finish in a few seconds.
"""

from __future__ import annotations

import os
import select
import socket
import struct
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote_from_bytes

import bencodepy
import psutil
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.helpers import raw_http
from tests.helpers.raw_http import Reply, get, parse_replies
from tests.integration.trackers import Tracker, tracker_process

pytestmark = pytest.mark.integration

#: Seconds a blocking socket waits for the tracker before the test calls it a hang.
IO_TIMEOUT_S = 10.0
#: The shortened HTTP bounds of the module's tracker (see ``tracker/config.py``).
HEAD_TIMEOUT_S = 1.0
MAX_HEAD_BYTES = 16 * 1024
MAX_BODY_BYTES = 64 * 1024
#: How long a slow sender may survive the head timeout (sweeps run once a second; a loaded CI
#: machine is slow): a bound for "it was closed", not a timing assertion.
DROP_WITHIN_S = 20.0


@pytest.fixture(scope="module")
def tracker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tracker]:
    config = tmp_path_factory.mktemp("hostile-tracker") / "tracker.toml"
    config.write_text(
        "[tracker]\n"
        f'head_timeout_s = "{HEAD_TIMEOUT_S}s"\n'
        'keepalive_timeout_s = "5s"\n'
        f"max_head_bytes = {MAX_HEAD_BYTES}\n"
        f"max_body_bytes = {MAX_BODY_BYTES}\n"
    )
    with tracker_process("--config", str(config)) as running:
        yield running


@pytest.fixture(autouse=True)
def still_healthy(tracker: Tracker) -> Iterator[None]:
    """After each test: alive, ``/healthz`` ok, announces work, no traceback logged."""
    logged_before = len(tracker.stderr())
    yield
    assert_healthy(tracker)
    logged = tracker.stderr()[logged_before:]
    assert "Traceback" not in logged, logged


# -- talking to the tracker ---------------------------------------------------------------------


def parse_answers(data: bytes) -> list[Reply]:
    """Every response in ``data``; the tracker frames each by its Content-Length (a HEAD answer
    has it but no body). ValueError unless ``data`` is exactly a sequence of well-formed
    HTTP/1.1 responses."""
    return parse_replies(data, require_length=True)


def talk(port: int, data: bytes, *, half_close: bool = True) -> bytes:
    return raw_http.talk(port, data, timeout_s=IO_TIMEOUT_S, half_close=half_close)


def answers_to(port: int, data: bytes) -> list[Reply]:
    return parse_answers(talk(port, data))


def decode(body: bytes) -> dict[bytes, Any]:
    document = bencodepy.Bencode().decode(body)
    assert isinstance(document, dict), body
    return document


def announce_query(**params: bytes | None) -> bytes:
    """A valid announce query with ``params`` replaced (bytes values are sent as is, already
    encoded) or removed (None). Binary ids are percent-encoded."""
    values: dict[str, bytes | None] = {
        "info_hash": _q(os.urandom(20)),
        "peer_id": _q(os.urandom(20)),
        "port": b"6881",
        "uploaded": b"0",
        "downloaded": b"0",
        "left": b"1000",
        "compact": b"1",
    }
    values.update(params)
    return b"&".join(
        name.encode() + b"=" + value for name, value in values.items() if value is not None
    )


def _q(raw: bytes) -> bytes:
    return quote_from_bytes(raw, safe="").encode()


def announce(port: int, query: bytes) -> dict[bytes, Any]:
    (answer,) = answers_to(port, get(b"/announce?" + query))
    assert answer.status == 200
    return decode(answer.body)


def compact_peers(document: dict[bytes, Any]) -> set[tuple[str, int]]:
    raw = document[b"peers"]
    assert isinstance(raw, bytes) and len(raw) % 6 == 0, raw
    return {
        (socket.inet_ntoa(raw[i : i + 4]), struct.unpack(">H", raw[i + 4 : i + 6])[0])
        for i in range(0, len(raw), 6)
    }


def assert_healthy(tracker: Tracker) -> None:
    assert tracker.process.poll() is None, f"tracker died:\n{tracker.stderr()}"
    (health,) = answers_to(tracker.port, get(b"/healthz"))
    assert (health.status, health.body) == (200, b"ok\n")
    task = _q(os.urandom(20))
    first = announce(tracker.port, announce_query(info_hash=task, port=b"7001"))
    assert b"failure reason" not in first, first
    second = announce(tracker.port, announce_query(info_hash=task, port=b"7002"))
    assert b"failure reason" not in second, second
    assert compact_peers(second) == {("127.0.0.1", 7001)}


def refusal(port: int, query: bytes) -> str:
    """The ``failure reason`` of an announce the tracker must refuse (HTTP 200, BEP 3)."""
    document = announce(port, query)
    assert set(document) == {b"failure reason"}, document
    reason = document[b"failure reason"]
    assert isinstance(reason, bytes)
    return reason.decode()


# -- malformed announces: HTTP 200 and a bencoded failure reason ------------------------------

MALFORMED_ANNOUNCES: list[tuple[str, dict[str, bytes | None], str]] = [
    ("no info_hash", {"info_hash": None}, "missing parameter 'info_hash'"),
    ("no peer_id", {"peer_id": None}, "missing parameter 'peer_id'"),
    ("no port", {"port": None}, "missing parameter 'port'"),
    ("escape not hex", {"info_hash": b"%zz" + b"a" * 19}, "malformed %-escape"),
    ("escape cut short", {"info_hash": b"a" * 19 + b"%4"}, "malformed %-escape"),
    ("lone percent", {"peer_id": b"%"}, "malformed %-escape"),
    ("escaped percent sign", {"info_hash": b"%%41" + b"a" * 19}, "malformed %-escape"),
    ("escape in a name", {"po%rt": b"1"}, "malformed %-escape"),
    ("port not a number", {"port": b"http"}, "'port'"),
    ("port negative", {"port": b"-1"}, "'port'"),
    ("port plus sign", {"port": b"+1"}, "'port'"),
    ("port hex", {"port": b"0x1a"}, "'port'"),
    ("port fraction", {"port": b"1.5"}, "'port'"),
    ("port empty", {"port": b""}, "'port'"),
    ("port with space", {"port": b"%201"}, "'port'"),
    ("port with NUL", {"port": b"1%00"}, "'port'"),
    ("port above 65535", {"port": b"65536"}, "'port' must be in 0..65535"),
    ("port overflowing", {"port": b"9" * 30}, "'port'"),
    ("port unicode digits", {"port": b"%D9%A1"}, "'port'"),
    ("uploaded negative", {"uploaded": b"-1"}, "'uploaded'"),
    ("uploaded exponent", {"uploaded": b"1e9"}, "'uploaded'"),
    ("uploaded overflowing", {"uploaded": b"1" + b"0" * 25}, "'uploaded'"),
    ("downloaded not a number", {"downloaded": b"lots"}, "'downloaded'"),
    ("left negative", {"left": b"-5"}, "'left'"),
    ("left NaN", {"left": b"NaN"}, "'left'"),
    ("left overflowing", {"left": b"9" * 21}, "'left'"),
    ("info_hash 19 bytes", {"info_hash": b"a" * 19}, "'info_hash' must be 20 bytes, not 19"),
    ("info_hash 21 bytes", {"info_hash": b"a" * 21}, "'info_hash' must be 20 bytes, not 21"),
    ("info_hash empty", {"info_hash": b""}, "'info_hash' must be 20 bytes, not 0"),
    ("info_hash 20 chars as 60", {"info_hash": b"%2541" * 20}, "'info_hash' must be 20 bytes"),
    ("peer_id 19 bytes", {"peer_id": _q(b"\x00" * 19)}, "'peer_id' must be 20 bytes, not 19"),
    ("peer_id 21 bytes", {"peer_id": _q(b"\xff" * 21)}, "'peer_id' must be 20 bytes, not 21"),
    ("peer_id empty", {"peer_id": b""}, "'peer_id' must be 20 bytes, not 0"),
    ("numwant huge", {"numwant": str(10**30).encode()}, "'numwant'"),
    ("numwant negative", {"numwant": b"-1"}, "'numwant'"),
    ("event unknown", {"event": b"paused"}, "'event'"),
    ("event in capitals", {"event": b"STARTED"}, "'event'"),
    ("event with NUL", {"event": b"started%00"}, "'event'"),
    ("zone not UTF-8", {"df_zone": b"%ff%fe"}, "'df_zone' must be UTF-8"),
    ("zone too long", {"df_zone": b"z" * 65}, "'df_zone'"),
    ("key too long", {"key": b"k" * 65}, "'key'"),
    ("auth wrong length", {"df_auth": b"a" * 31}, "'df_auth'"),
]


@pytest.mark.parametrize(
    ("params", "reason"),
    [pytest.param(params, reason, id=name) for name, params, reason in MALFORMED_ANNOUNCES],
)
def test_malformed_announce_gets_a_bencoded_failure_reason(
    tracker: Tracker, params: dict[str, bytes | None], reason: str
) -> None:
    assert reason in refusal(tracker.port, announce_query(**params))


def test_failure_reason_never_echoes_a_long_client_parameter(tracker: Tracker) -> None:
    name = b"x" * 5000 + b"%zz"
    text = refusal(tracker.port, announce_query() + b"&" + name + b"=1")
    assert "malformed %-escape" in text
    assert len(text) < 200


def test_too_many_parameters_is_refused(tracker: Tracker) -> None:
    assert "too many query parameters" in refusal(tracker.port, b"&".join([b"a=1"] * 65))


def test_empty_and_degenerate_queries_are_refused(tracker: Tracker) -> None:
    for query in (b"", b"&&&", b"===", b"info_hash", b"info_hash&peer_id&port"):
        reason = refusal(tracker.port, query)
        assert "info_hash" in reason, (query, reason)


def test_binary_ids_with_nul_and_non_utf8_bytes_are_valid(tracker: Tracker) -> None:
    task = b"\x00" * 10 + b"\xff\xfe" * 5
    first = announce(
        tracker.port, announce_query(info_hash=_q(task), peer_id=_q(b"\x00" * 20), port=b"7101")
    )
    assert b"failure reason" not in first
    second = announce(tracker.port, announce_query(info_hash=_q(task), port=b"7102"))
    assert compact_peers(second) == {("127.0.0.1", 7101)}


def test_repeated_parameters_keep_the_first_value(tracker: Tracker) -> None:
    task = _q(os.urandom(20))
    query = announce_query(info_hash=task, port=b"7201") + b"&port=not-a-port&info_hash=short"
    assert b"failure reason" not in announce(tracker.port, query)
    second = announce(tracker.port, announce_query(info_hash=task, port=b"7202"))
    assert compact_peers(second) == {("127.0.0.1", 7201)}


def test_huge_numwant_within_the_digit_bound_is_capped_not_refused(tracker: Tracker) -> None:
    task = _q(os.urandom(20))
    announce(tracker.port, announce_query(info_hash=task, port=b"7301"))
    document = announce(tracker.port, announce_query(info_hash=task, numwant=b"9" * 20))
    assert compact_peers(document) == {("127.0.0.1", 7301)}


def test_twenty_digit_counters_are_accepted_and_stats_still_render(tracker: Tracker) -> None:
    big = b"9" * 20  # above 2**64: kept as a Python int, never packed into a fixed width
    query = announce_query(uploaded=big, downloaded=big, left=big, df_load=big, df_origin=big)
    assert b"failure reason" not in announce(tracker.port, query)
    for target in (b"/stats?peers=1000", b"/metrics"):
        (answer,) = answers_to(tracker.port, get(target))
        assert answer.status == 200, target


@pytest.mark.parametrize(
    "query",
    [b"", b"info_hash=short", b"info_hash=%zz", b"info_hash=" + b"%41" * 20 + b"&" * 200],
    ids=["full scrape", "short hash", "bad escape", "many empty params"],
)
def test_malformed_scrape_gets_a_bencoded_failure_reason(tracker: Tracker, query: bytes) -> None:
    (answer,) = answers_to(tracker.port, get(b"/scrape?" + query))
    assert answer.status == 200
    document = decode(answer.body)
    assert set(document) <= {b"failure reason", b"files"}, document


@pytest.mark.parametrize(
    ("target", "status"),
    [
        (b"/stats?task=zz", 400),
        (b"/stats?peers=1e9", 400),
        (b"/stats?peers=" + b"9" * 7, 400),
        (b"/tasks/" + b"zz" * 20, 400),
        (b"/tasks/../../etc/passwd", 400),
        (b"/tasks/" + b"ab" * 20 + b"/../../x", 404),
        (b"/nowhere", 404),
        (b"*", 404),
        (b"http://elsewhere.invalid/announce", 404),
    ],
)
def test_other_bad_targets_get_a_4xx(tracker: Tracker, target: bytes, status: int) -> None:
    (answer,) = answers_to(tracker.port, get(target))
    assert answer.status == status


def test_bad_json_bodies_get_400(tracker: Tracker) -> None:
    task = b"ab" * 20
    for method, path, body in (
        (b"PUT", b"/tasks/" + task, b"{x}"),
        (b"PUT", b"/tasks/" + task, b"[" * 10_000),
        (b"POST", b"/tasks/" + task + b"/reports", b"[" * 3000),
        (b"POST", b"/tasks/" + task + b"/reports", b"\xff\xfe"),
    ):
        head = method + b" " + path + b" HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % len(body)
        (answer,) = answers_to(tracker.port, head + body)
        assert answer.status == 400, (method, path, body[:10])


# -- malformed HTTP: 400 (or 414/431/413) and that connection closed ------------------------------


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GET /announce?info_hash=\x00 HTTP/1.1\r\n\r\n",
        b"GET /announce?info_hash=\xff\xfe HTTP/1.1\r\n\r\n",
        b"GET /healthz HTTP/9.9\r\n\r\n",
        b"BREW /healthz HTTP/1.1\r\n\r\n",
        b"get /healthz HTTP/1.1\r\n\r\n",
        b"GET /healthz HTTP/1.1 trailing\r\n\r\n",
        b"GET /healthz HTTP/1.1\nHost: bare-lf\n\n",
        b"GET /healthz HTTP/1.1\r\nno colon here\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nX: folded\r\n continued\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nX: a\rb\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
        b"GET /healthz HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n",
        b"GET /healthz HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(range(32)),
        b"\x00" * 64,
    ],
    ids=[
        "raw NUL in target",
        "raw non-UTF-8 in target",
        "unknown HTTP version",
        "unknown method",
        "lower-case method",
        "extra word in request line",
        "bare LF line ends",
        "header without colon",
        "obs-fold",
        "CR inside a value",
        "two Content-Lengths",
        "Content-Length and chunked",
        "non-chunked Transfer-Encoding",
        "negative Content-Length",
        "TLS ClientHello",
        "NUL bytes",
    ],
)
def test_malformed_http_gets_400_and_close(tracker: Tracker, request_bytes: bytes) -> None:
    # talk() only returns once the tracker closed (or reset) the connection.
    (answer,) = answers_to(tracker.port, request_bytes)
    assert answer.status == 400
    assert answer.header(b"connection") == b"close"


def test_giant_request_line_gets_414(tracker: Tracker) -> None:
    (answer,) = answers_to(tracker.port, get(b"/announce?" + b"a" * (MAX_HEAD_BYTES + 1)))
    assert answer.status == 414


def test_giant_header_gets_431(tracker: Tracker) -> None:
    (answer,) = answers_to(tracker.port, get(b"/healthz", b"X-Big: " + b"a" * MAX_HEAD_BYTES))
    assert answer.status == 431


def test_thousands_of_small_headers_get_431(tracker: Tracker) -> None:
    headers = [b"X-%d: v" % n for n in range(4000)]
    (answer,) = answers_to(tracker.port, get(b"/healthz", *headers))
    assert answer.status == 431


def test_many_headers_within_the_bound_are_fine(tracker: Tracker) -> None:
    headers = [b"X-%d: v" % n for n in range(500)]
    (answer,) = answers_to(tracker.port, get(b"/healthz", *headers))
    assert (answer.status, answer.body) == (200, b"ok\n")


def test_body_on_a_get_is_read_and_ignored_keeping_the_connection_in_step(
    tracker: Tracker,
) -> None:
    body = b"announce me\r\n\r\nGET /nowhere HTTP/1.1\r\n\r\n"  # looks like a request: is not
    first = get(b"/healthz", b"Content-Length: %d" % len(body)) + body
    chunked = get(b"/announce?" + announce_query(), b"Transfer-Encoding: chunked")
    chunked += b"5\r\nhello\r\n0\r\n\r\n"
    answers = answers_to(tracker.port, first + chunked + get(b"/healthz"))
    assert [a.status for a in answers] == [200, 200, 200]
    assert answers[0].body == answers[2].body == b"ok\n"
    assert b"interval" in decode(answers[1].body)


def test_body_over_the_bound_gets_413(tracker: Tracker) -> None:
    body = b"x" * (MAX_BODY_BYTES + 1)
    (answer,) = answers_to(tracker.port, get(b"/healthz", b"Content-Length: %d" % len(body)) + body)
    assert answer.status == 413


def test_pipelined_garbage_after_a_valid_request_gets_its_answer_then_400(
    tracker: Tracker,
) -> None:
    valid = get(b"/announce?" + announce_query())
    answers = answers_to(tracker.port, valid + get(b"/healthz") + b"\x00\x01garbage\r\n\r\n")
    assert [a.status for a in answers] == [200, 200, 400]
    assert b"interval" in decode(answers[0].body)


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"CONNECT 127.0.0.1:1 HTTP/1.1\r\nHost: 127.0.0.1:1\r\n\r\n",
        get(b"/healthz", b"Connection: Upgrade", b"Upgrade: websocket"),
        get(b"/healthz", b"Connection: Upgrade, HTTP2-Settings", b"Upgrade: h2c"),
    ],
    ids=["CONNECT", "Upgrade websocket", "Upgrade h2c"],
)
def test_upgrade_or_connect_gets_exactly_one_answer(tracker: Tracker, request_bytes: bytes) -> None:
    answers = answers_to(tracker.port, request_bytes)
    assert len(answers) == 1, [a.status for a in answers]
    assert 200 <= answers[0].status < 500


def test_upgrade_is_ignored_and_ends_the_connection(tracker: Tracker) -> None:
    upgrade = get(b"/healthz", b"Connection: Upgrade", b"Upgrade: h2c")
    answers = answers_to(tracker.port, upgrade + get(b"/nowhere"))
    assert [(a.status, a.body) for a in answers] == [(200, b"ok\n")]  # nothing parsed after it
    assert answers[0].header(b"connection") == b"close"


def test_upgrade_with_a_body_gets_400_not_an_answer_without_its_body(tracker: Tracker) -> None:
    body = b'{"length": 1}'
    head = b"PUT /tasks/" + b"ab" * 20 + b" HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n"
    request = head + b"Content-Length: %d\r\n\r\n" % len(body) + body
    (answer,) = answers_to(tracker.port, request)
    assert answer.status == 400
    assert b"Upgrade" in answer.body


# -- connections that misbehave ------------------------------------------------------------------


def _closed(sock: socket.socket) -> bool:
    """True once the tracker closed or reset ``sock`` (without blocking)."""
    readable, _, _ = select.select([sock], [], [], 0)
    if not readable:
        return False
    try:
        return sock.recv(65536) == b""
    except (ConnectionResetError, BrokenPipeError):
        return True


def test_slow_senders_are_dropped_by_the_head_timeout_while_others_are_served(
    tracker: Tracker,
) -> None:
    trickle = b"GET /healthz HTTP/1.1\r\nX-Slow: " + b"a" * 10_000  # never finishes
    body_head = b"PUT /tasks/" + b"cd" * 20 + b" HTTP/1.1\r\nContent-Length: 10000\r\n\r\n{"
    slow_heads = [socket.create_connection(("127.0.0.1", tracker.port)) for _ in range(3)]
    slow_body = socket.create_connection(("127.0.0.1", tracker.port))
    slow_body.sendall(body_head)
    open_socks = {*slow_heads, slow_body}
    served = 0
    started = time.monotonic()
    try:
        offset = 0
        while open_socks and time.monotonic() - started < DROP_WITHIN_S:
            for sock in list(open_socks):
                if _closed(sock):
                    open_socks.discard(sock)
                    continue
                try:
                    sock.send(trickle[offset : offset + 1] if sock in slow_heads else b" ")
                except OSError:
                    open_socks.discard(sock)
            offset += 1
            (answer,) = answers_to(tracker.port, get(b"/healthz"))  # others are not blocked
            assert answer.status == 200
            served += 1
            time.sleep(0.05)
        assert not open_socks, f"{len(open_socks)} slow connections still open"
        assert served > 1
    finally:
        for sock in (*slow_heads, slow_body):
            sock.close()


def test_half_closed_connections(tracker: Tracker) -> None:
    # The whole request, then FIN: answered, then closed.
    (answer,) = answers_to(tracker.port, get(b"/announce?" + announce_query()))
    assert b"interval" in decode(answer.body)
    # Half a request, then FIN: closed, with no answer or with a 400.
    for partial in (b"GET /announce?info_hash=", b"GET /healthz HTTP/1.1\r\nHost: x\r\n", b"G"):
        assert [a.status for a in answers_to(tracker.port, partial)] in ([], [400])
    # A request with a body cut short by FIN.
    cut = b"PUT /tasks/" + b"ef" * 20 + b" HTTP/1.1\r\nContent-Length: 100\r\n\r\n{"
    assert [a.status for a in answers_to(tracker.port, cut)] in ([], [400])


def test_hundreds_of_connections_opened_and_dropped_leak_nothing(tracker: Tracker) -> None:
    process = psutil.Process(tracker.process.pid)
    fds_before = process.num_fds()
    request = get(b"/announce?" + announce_query())
    socks: list[socket.socket] = []
    for n in range(300):
        sock = socket.create_connection(("127.0.0.1", tracker.port), timeout=IO_TIMEOUT_S)
        if n % 3 == 1:
            sock.sendall(request[: n % len(request)])
        elif n % 3 == 2:
            sock.sendall(request)  # never reads its answer
        socks.append(sock)
    for n, sock in enumerate(socks):
        if n % 2:  # half of them with a reset instead of a FIN
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
    assert_healthy(tracker)
    deadline = time.monotonic() + DROP_WITHIN_S
    while process.num_fds() > fds_before + 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert process.num_fds() <= fds_before + 2, "the tracker kept dropped connections open"


# -- properties ----------------------------------------------------------------------------------

_URL_SAFE = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~!$&'()*+,;=:@/?%"
_NAMES = ["info_hash", "peer_id", "port", "uploaded", "downloaded", "left", "event", "numwant"]
_NAMES += ["compact", "no_peer_id", "key", "ip", "df_have", "df_zone", "df_load", "df_auth"]

url_safe_query = st.lists(st.sampled_from(list(_URL_SAFE)), max_size=300).map(bytes)
structured_query = st.lists(
    st.tuples(
        st.one_of(st.sampled_from(_NAMES), st.text(max_size=8)).map(
            lambda name: quote_from_bytes(name.encode(), safe="").encode()
        ),
        st.one_of(
            st.binary(min_size=18, max_size=22).map(_q),
            st.integers(-(10**25), 10**25).map(lambda n: str(n).encode()),
            url_safe_query.map(lambda q: q[:30]),
        ),
    ),
    max_size=12,
).map(lambda pairs: b"&".join(name + b"=" + value for name, value in pairs))

PROPERTY_SETTINGS = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@PROPERTY_SETTINGS
@given(query=st.one_of(url_safe_query, structured_query))
def test_any_well_formed_query_gets_200_with_bencoded_answer_or_failure(
    tracker: Tracker, query: bytes
) -> None:
    (answer,) = answers_to(tracker.port, get(b"/announce?" + query))
    assert answer.status == 200
    document = decode(answer.body)
    assert b"failure reason" in document or b"interval" in document, document
    assert tracker.process.poll() is None


@PROPERTY_SETTINGS
@given(query=st.binary(max_size=400))
def test_arbitrary_query_bytes_get_a_well_formed_answer_or_a_close(
    tracker: Tracker, query: bytes
) -> None:
    parse_answers(talk(tracker.port, get(b"/announce?" + query)))  # [] means: closed
    assert tracker.process.poll() is None


@PROPERTY_SETTINGS
@given(
    data=st.one_of(
        st.binary(max_size=600),
        st.lists(
            st.sampled_from(
                [
                    b"GET ",
                    b"HEAD ",
                    b"PUT ",
                    b"/announce?",
                    b"/healthz",
                    b"/tasks/",
                    b"/stats",
                    b" HTTP/1.1",
                    b" HTTP/1.0",
                    b"\r\n",
                    b"\r\n\r\n",
                    b"Content-Length: 4",
                    b"Transfer-Encoding: chunked",
                    b"Connection: close",
                    b"4\r\nabcd\r\n0\r\n",
                    b"Upgrade: x",
                    b":",
                    b"%",
                    b"\x00",
                    b"\xff",
                    b" ",
                ]
            ),
            max_size=30,
        ).map(b"".join),
    )
)
def test_arbitrary_request_bytes_get_well_formed_answers_or_a_close(
    tracker: Tracker, data: bytes
) -> None:
    parse_answers(talk(tracker.port, data))
    assert tracker.process.poll() is None
