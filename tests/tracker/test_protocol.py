"""tracker.protocol: byte-exact query parsing, announce/scrape values, bencoded answers."""

from __future__ import annotations

import json
import re
import socket
import urllib.parse
from typing import Any

import bencode
import bencodepy
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from tracker.model import (
    AnnounceRequest,
    AnnounceResult,
    Event,
    PeerContact,
    PeerReport,
    ScrapeCounts,
)
from tracker.protocol import (
    MAX_HAVE_BYTES,
    AnnounceError,
    encode_announce,
    encode_failure,
    encode_scrape,
    parse_announce,
    parse_query,
    parse_report,
    parse_scrape,
)

#: bencode.decode turns valid UTF-8 into str; this one keeps every string as bytes.
raw_decode = bencodepy.Bencode().decode

INFO_HASH = bytes.fromhex("1eb0c3ff00252b3d26264155") + b"+=&%\x00 \xff\x7f"
PEER_ID = b"-LT2110-" + b"a1b2c3d4e5f6"
LOOPBACK4 = socket.inet_pton(socket.AF_INET, "127.0.0.1")


def q(data: bytes, *, lower: bool = False, safe: str = "") -> str:
    """Percent-encode like a client: uppercase escapes (aria2) or lowercase (libtorrent)."""
    text = urllib.parse.quote_from_bytes(data, safe=safe)
    return re.sub("%[0-9A-F]{2}", lambda m: m.group().lower(), text) if lower else text


def announce_query(**params: bytes | str) -> bytes:
    """A minimal valid announce, then the given parameters (bytes values are escaped)."""
    base: dict[str, bytes | str] = {"info_hash": INFO_HASH, "peer_id": PEER_ID, "port": "6881"}
    base.update(params)
    parts = []
    for name, value in base.items():
        text = q(value) if isinstance(value, bytes) else value
        parts.append(f"{name}={text}")
    return "&".join(parts).encode()


def announce(query: bytes, remote_ip: str = "127.0.0.1", **kwargs: Any) -> AnnounceRequest:
    return parse_announce(query, remote_ip, **kwargs)


def ip4(text: str) -> bytes:
    return socket.inet_pton(socket.AF_INET, text)


def ip6(text: str) -> bytes:
    return socket.inet_pton(socket.AF_INET6, text)


# --- parse_query ----------------------------------------------------------------------------------


def test_query_splits_on_ampersand_then_first_equals() -> None:
    assert parse_query(b"a=1&b=x=y&c") == [(b"a", b"1"), (b"b", b"x=y"), (b"c", b"")]


def test_query_decodes_escapes_of_either_case_to_exact_bytes() -> None:
    assert parse_query(b"k=%1e%B0%aF%Fa") == [(b"k", b"\x1e\xb0\xaf\xfa")]


def test_query_decodes_nul_and_ff() -> None:
    assert parse_query(b"k=%00%FF%ff") == [(b"k", b"\x00\xff\xff")]


def test_query_keeps_plus_as_plus() -> None:
    assert parse_query(b"k=a+b&%2B=%2b") == [(b"k", b"a+b"), (b"+", b"+")]


def test_query_does_not_decode_utf8() -> None:
    assert parse_query(b"k=%C3%A9&r=\xc3\xa9&x=\xff") == [
        (b"k", b"\xc3\xa9"),
        (b"r", b"\xc3\xa9"),
        (b"x", b"\xff"),
    ]


def test_query_decodes_escapes_in_names() -> None:
    assert parse_query(b"info%5Fhash=1&%26=%3D") == [(b"info_hash", b"1"), (b"&", b"=")]


def test_query_keeps_backslashes_literal() -> None:
    assert parse_query(b"k=\\x41%5C%5Cn\\") == [(b"k", b"\\x41\\\\n\\")]


def test_query_skips_empty_segments_and_keeps_repeats() -> None:
    assert parse_query(b"&a=1&&a=2&") == [(b"a", b"1"), (b"a", b"2")]
    assert parse_query(b"") == []


@pytest.mark.parametrize(
    "raw", [b"k=%G1", b"k=%1G", b"k=%4", b"k=%", b"k=a%%41", b"k=%\\x", b"k=%-1", b"k=% 1"]
)
def test_query_refuses_malformed_escape_naming_the_parameter(raw: bytes) -> None:
    with pytest.raises(AnnounceError, match="malformed %-escape in parameter 'k'"):
        parse_query(raw)


def test_query_refuses_malformed_escape_in_a_name() -> None:
    with pytest.raises(AnnounceError, match="malformed"):
        parse_query(b"a%zz=1")


def test_query_error_never_echoes_long_input() -> None:
    name = b"n" * 1000
    with pytest.raises(AnnounceError) as caught:
        parse_query(name + b"=%zz")
    assert "n" * 41 not in str(caught.value)
    assert len(str(caught.value)) < 100


def test_query_bounds_the_number_of_parameters() -> None:
    assert len(parse_query(b"&".join([b"a=1"] * 64))) == 64
    assert len(parse_query(b"&" * 500 + b"a=1")) == 1  # empty segments do not count
    with pytest.raises(AnnounceError, match="too many query parameters"):
        parse_query(b"&".join([b"a=1"] * 65))
    with pytest.raises(AnnounceError, match="at most 3"):
        parse_query(b"a&b&c&d", max_params=3)


def reference_unquote(text: bytes) -> bytes:
    """The percent-decoding parse_query must match, written the obvious slow way."""
    out = bytearray()
    i = 0
    while i < len(text):
        if text[i] == ord("%"):
            digits = text[i + 1 : i + 3]
            if len(digits) != 2 or not all(c in b"0123456789abcdefABCDEF" for c in digits):
                raise ValueError("bad escape")
            out.append(int(digits, 16))
            i += 3
        else:
            out.append(text[i])
            i += 1
    return bytes(out)


QUERYISH = st.lists(
    st.sampled_from(
        [b"%", b"&", b"=", b"\\", b"\\x", b"+", b"a", b"F", b"0", b"9", b"g", b"\x00", b"\xff"]
    )
    | st.sampled_from([b"%4", b"%4a", b"%E9", b"%5C", b"%25"]),
    max_size=40,
).map(b"".join)


@given(st.one_of(st.binary(max_size=200), QUERYISH))
@example(b"k=\\%41")
@example(b"%\\")
def test_query_raises_only_announce_error_and_matches_reference(raw: bytes) -> None:
    try:
        expected = []
        for segment in raw.split(b"&"):
            if segment:
                name, _, value = segment.partition(b"=")
                expected.append((reference_unquote(name), reference_unquote(value)))
    except ValueError:
        expected = None
    try:
        got = parse_query(raw, max_params=1000)
    except AnnounceError:
        got = None
    assert got == expected


@given(
    st.lists(st.tuples(st.binary(max_size=30), st.binary(max_size=30)), max_size=20),
    st.booleans(),
    st.sampled_from(["", "+", "+/:@!$'()*,;-._~"]),
)
def test_query_round_trips_quoted_bytes(
    pairs: list[tuple[bytes, bytes]], lower: bool, safe: str
) -> None:
    raw = "&".join(
        f"{q(k, lower=lower, safe=safe)}={q(v, lower=lower, safe=safe)}" for k, v in pairs
    )
    assert parse_query(raw.encode()) == pairs


# --- parse_announce: real clients ----------------------------------------------------------------


def test_announce_from_libtorrent_example_query() -> None:
    query = (
        "info_hash=" + q(INFO_HASH, lower=True, safe="-._~") + "&peer_id=-LT2110-a1b2c3d4e5f6"
        "&port=6882&uploaded=0&downloaded=0&left=4194304&corrupt=0&key=35826D99"
        "&event=started&numwant=200&compact=1&no_peer_id=1&redundant=0"
    ).encode()
    assert announce(query) == AnnounceRequest(
        info_hash=INFO_HASH,
        peer_id=PEER_ID,
        port=6882,
        uploaded_bytes=0,
        downloaded_bytes=0,
        left_bytes=4194304,
        event=Event.STARTED,
        numwant=200,
        compact=True,
        no_peer_id=True,
        key=b"35826D99",
        ip4=LOOPBACK4,
    )


def test_announce_from_aria2_with_raw_binary_peer_id_and_key() -> None:
    peer_id = b"A2-1-36-0-" + bytes([0x00, 0xFF, 0x2B, 0x26, 0x3D, 0x25, 0x80, 0x41, 0x7E, 0x20])
    key = b"\x8a\x0f\x00\xfe"
    query = (
        f"info_hash={q(INFO_HASH)}&peer_id={q(peer_id)}&uploaded=0&downloaded=0"
        f"&left=0&compact=1&key={q(key)}&event=stopped&numwant=50&no_peer_id=1&port=6881"
        "&supportcrypto=1"
    ).encode()
    request = announce(query)
    assert request.peer_id == peer_id
    assert request.key == key
    assert request.event is Event.STOPPED
    assert request.left_bytes == 0


def test_announce_from_transmission_with_numwant_80() -> None:
    request = announce(announce_query(numwant="80", supportcrypto="1", event="completed"))
    assert request.numwant == 80
    assert request.event is Event.COMPLETED


def test_announce_ignores_unknown_parameters() -> None:
    plain = announce(announce_query())
    noisy = announce(
        announce_query(
            supportcrypto="1",
            requirecrypto="0",
            corrupt="0",
            redundant="5",
            trackerid="abc",
            cryptoport="6881",
        )
        + b"&weird%00name=%FF&flag"
    )
    assert noisy == plain


def test_announce_defaults_for_a_minimal_query() -> None:
    request = announce(announce_query(), numwant_default=30)
    assert request == AnnounceRequest(
        info_hash=INFO_HASH, peer_id=PEER_ID, port=6881, numwant=30, ip4=LOOPBACK4
    )
    assert request.left_bytes is None
    assert request.compact is True
    assert request.is_ours is False


def test_announce_first_occurrence_of_a_parameter_wins() -> None:
    request = announce(announce_query() + b"&port=1&info_hash=" + q(b"x" * 20).encode())
    assert request.port == 6881
    assert request.info_hash == INFO_HASH


@pytest.mark.parametrize(
    ("value", "event"),
    [
        ("", Event.NONE),
        ("started", Event.STARTED),
        ("completed", Event.COMPLETED),
        ("stopped", Event.STOPPED),
    ],
)
def test_announce_event_values(value: str, event: Event) -> None:
    assert announce(announce_query(event=value)).event is event


def test_announce_accepts_twenty_digit_integers_and_port_bounds() -> None:
    request = announce(announce_query(uploaded="9" * 20, downloaded="007", port="65535"))
    assert request.uploaded_bytes == 10**20 - 1
    assert request.downloaded_bytes == 7
    assert request.port == 65535
    assert announce(announce_query(port="0")).port == 0


def test_announce_numwant_absent_zero_and_capped() -> None:
    assert announce(announce_query()).numwant == 50
    assert announce(announce_query(numwant="0")).numwant == 0
    assert announce(announce_query(numwant="1000"), numwant_max=200).numwant == 200


@pytest.mark.parametrize(
    ("compact", "expected"), [(None, True), ("1", True), ("0", False), ("yes", True)]
)
def test_announce_compact_is_on_unless_zero(compact: str | None, expected: bool) -> None:
    query = announce_query() if compact is None else announce_query(compact=compact)
    assert announce(query).compact is expected


def test_announce_no_peer_id_only_when_one() -> None:
    assert announce(announce_query(no_peer_id="1")).no_peer_id is True
    assert announce(announce_query(no_peer_id="0")).no_peer_id is False
    assert announce(announce_query()).no_peer_id is False


# --- parse_announce: errors -----------------------------------------------------------------------


def query_without(name: str) -> bytes:
    return b"&".join(p for p in announce_query().split(b"&") if not p.startswith(name.encode()))


@pytest.mark.parametrize(
    ("query", "message"),
    [
        (query_without("info_hash"), "missing parameter 'info_hash'"),
        (query_without("peer_id"), "missing parameter 'peer_id'"),
        (query_without("port"), "missing parameter 'port'"),
        (announce_query(info_hash=b"x" * 19), "'info_hash' must be 20 bytes, not 19"),
        (announce_query(info_hash=b"x" * 21), "'info_hash' must be 20 bytes, not 21"),
        (announce_query(info_hash="%1"), "malformed %-escape in parameter 'info_hash'"),
        (announce_query(peer_id=b"-LT2110-"), "'peer_id' must be 20 bytes, not 8"),
        (announce_query(port="65536"), "'port' must be in 0..65535"),
        (announce_query(port="-1"), "'port' must be a decimal integer"),
        (announce_query(port="abc"), "'port' must be a decimal integer"),
        (announce_query(port=""), "'port' must be a decimal integer"),
        (announce_query(uploaded="1.5"), "'uploaded' must be a decimal integer"),
        (announce_query(uploaded="1_000"), "'uploaded' must be a decimal integer"),
        (announce_query(uploaded="+5"), "'uploaded' must be a decimal integer"),
        (announce_query(downloaded="1" * 21), "'downloaded' must be a decimal integer"),
        (announce_query(left="%205"), "'left' must be a decimal integer"),
        (announce_query(left="\u0663".encode()), "'left' must be a decimal integer"),
        (announce_query(event="paused"), "'event' must be started, completed, stopped or empty"),
        (announce_query(event="Started"), "'event' must be"),
        (announce_query(numwant="-1"), "'numwant' must be a decimal integer"),
        (announce_query(numwant="lots"), "'numwant' must be a decimal integer"),
        (announce_query(key=b"k" * 65), "'key' must be at most 64 bytes"),
        (announce_query(df_have=b"\xff" * (MAX_HAVE_BYTES + 1)), "'df_have' must be at most"),
        (announce_query(df_load="x"), "'df_load' must be a decimal integer"),
        (announce_query(df_origin="-3"), "'df_origin' must be a decimal integer"),
        (announce_query(df_zone=b"\xff\xfe"), "'df_zone' must be UTF-8 text"),
        (announce_query(df_zone=b"z" * 65), "'df_zone' must be at most 64 bytes"),
    ],
)
def test_announce_refuses_bad_parameter_naming_it(query: bytes, message: str) -> None:
    with pytest.raises(AnnounceError, match=re.escape(message)):
        announce(query, numwant_max=200_000)


def test_announce_errors_are_valueerrors_short_enough_for_failure_reason() -> None:
    with pytest.raises(ValueError) as caught:
        announce(announce_query(port="9" * 5000))
    assert len(str(caught.value)) < 100
    assert "999999" not in str(caught.value)


# --- parse_announce: addresses --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("remote_ip", "expected4", "expected6"),
    [
        ("127.0.0.1", ip4("127.0.0.1"), None),
        ("::1", None, ip6("::1")),
        ("::ffff:10.0.0.1", ip4("10.0.0.1"), None),
        ("2001:db8::7", None, ip6("2001:db8::7")),
        ("fe80::1%eth0", None, ip6("fe80::1")),
    ],
)
def test_announce_address_comes_from_the_connection(
    remote_ip: str, expected4: bytes | None, expected6: bytes | None
) -> None:
    request = announce(announce_query(), remote_ip)
    assert (request.ip4, request.ip6) == (expected4, expected6)


@pytest.mark.parametrize(
    "params",
    [
        {"ip": "10.9.8.7"},
        {"ip": "not an address!"},
        {"ipv4": "300.1.1.1"},
        {"ipv6": "2001:db8::1"},
        {"ip": "2001:db8::1", "ipv4": "10.1.1.1"},
    ],
)
def test_announce_ignores_address_parameters_unless_trusted(params: dict[str, str]) -> None:
    request = announce(announce_query(**params), "192.0.2.1")
    assert (request.ip4, request.ip6) == (ip4("192.0.2.1"), None)


@pytest.mark.parametrize(
    ("params", "expected4", "expected6"),
    [
        ({"ip": "10.9.8.7"}, ip4("10.9.8.7"), None),
        ({"ip": "10.9.8.7:6881"}, ip4("10.9.8.7"), None),
        ({"ip": "2001:db8::1"}, None, ip6("2001:db8::1")),  # replaces the connection's IPv4
        ({"ip": "[2001:db8::1]:6881"}, None, ip6("2001:db8::1")),
        ({"ip": "::ffff:10.0.0.9"}, ip4("10.0.0.9"), None),
        ({"ip": "tracker.example.com"}, ip4("192.0.2.1"), None),  # hostnames are ignored
        ({"ip": "peer.example:6881"}, ip4("192.0.2.1"), None),
        ({"ip": ""}, ip4("192.0.2.1"), None),
        ({"ipv4": "10.0.0.5:6881"}, ip4("10.0.0.5"), None),
        ({"ipv6": "[2001:db8::2]:6881"}, ip4("192.0.2.1"), ip6("2001:db8::2")),
        ({"ipv6": "2001:db8::3"}, ip4("192.0.2.1"), ip6("2001:db8::3")),
        ({"ipv6": "[2001:db8::4]"}, ip4("192.0.2.1"), ip6("2001:db8::4")),
        ({"ipv6": "::ffff:10.0.0.8"}, ip4("10.0.0.8"), None),
        ({"ip": "2001:db8::1", "ipv4": "10.1.1.1"}, ip4("10.1.1.1"), ip6("2001:db8::1")),
    ],
)
def test_announce_trusted_address_parameters(
    params: dict[str, str], expected4: bytes | None, expected6: bytes | None
) -> None:
    request = announce(announce_query(**params), "192.0.2.1", trust_ip=True)
    assert (request.ip4, request.ip6) == (expected4, expected6)


@pytest.mark.parametrize(
    ("params", "name"),
    [
        ({"ip": "300.1.1.1"}, "ip"),
        ({"ip": "1.2.3"}, "ip"),
        ({"ip": "1.2.3.4:port"}, "ip"),
        ({"ip": "[2001:db8::1"}, "ip"),
        ({"ip": "2001:db8::zz"}, "ip"),
        ({"ipv4": "2001:db8::1"}, "ipv4"),
        ({"ipv4": "peer.example"}, "ipv4"),
        ({"ipv6": "10.0.0.1"}, "ipv6"),
        ({"ipv6": "[2001:db8::1]:x"}, "ipv6"),
        ({"ipv6": "garbage"}, "ipv6"),
    ],
)
def test_announce_refuses_invalid_trusted_address(params: dict[str, str], name: str) -> None:
    with pytest.raises(AnnounceError, match=f"'{name}' is not a valid"):
        announce(announce_query(**params), "192.0.2.1", trust_ip=True)


def test_announce_without_any_usable_address_is_refused() -> None:
    with pytest.raises(AnnounceError, match="IP address"):
        announce(announce_query(), "not-an-ip")
    request = announce(announce_query(ip="10.0.0.1"), "not-an-ip", trust_ip=True)
    assert request.ip4 == ip4("10.0.0.1")


# --- parse_announce: our extensions ---------------------------------------------------------------


def test_announce_extension_parameters() -> None:
    have = b"\x00\xff\x80+%&="
    query = announce_query(
        df_have=have, df_load="3", df_zone="rack-ü".encode(), df_source="1", df_origin="12345"
    )
    request = announce(query)
    assert request.have == have
    assert request.load == 3
    assert request.zone == "rack-ü"
    assert request.can_source is True
    assert request.origin_bytes == 12345
    assert request.is_ours is True


def test_announce_extension_limits_are_inclusive() -> None:
    request = announce(
        announce_query(df_have=b"\xff" * MAX_HAVE_BYTES, df_zone="é" * 32), numwant_max=10
    )
    assert request.have is not None and len(request.have) == MAX_HAVE_BYTES
    assert request.zone == "é" * 32


def test_announce_empty_have_is_ours_and_source_needs_one() -> None:
    request = announce(announce_query(df_have="", df_source="0"))
    assert request.have == b""
    assert request.is_ours is True
    assert request.can_source is False


# --- parse_scrape ---------------------------------------------------------------------------------


def test_scrape_returns_hashes_in_order_without_duplicates() -> None:
    a, b, c = b"a" * 20, INFO_HASH, b"\x00" * 20
    query = f"info_hash={q(a)}&info_hash={q(b, lower=True)}&x=1&info_hash={q(a)}&info_hash={q(c)}"
    assert parse_scrape(query.encode()) == (a, b, c)


def test_scrape_without_hash_asks_for_everything() -> None:
    assert parse_scrape(b"") == ()
    assert parse_scrape(b"passkey=abc") == ()


def test_scrape_refuses_wrong_length_hash() -> None:
    with pytest.raises(AnnounceError, match="'info_hash' must be 20 bytes, not 3"):
        parse_scrape(b"info_hash=abc")


def test_scrape_bounds_the_number_of_hashes() -> None:
    hashes = [bytes([i]) * 20 for i in range(5)]
    query = "&".join(f"info_hash={q(h)}" for h in hashes).encode()
    assert len(parse_scrape(query, max_hashes=5)) == 5
    assert len(parse_scrape(query + b"&" + query, max_hashes=5)) == 5  # repeats are free
    with pytest.raises(AnnounceError, match="too many 'info_hash'"):
        parse_scrape(query, max_hashes=4)


# --- encode_announce ------------------------------------------------------------------------------

PEER_A = PeerContact.make(b"A" * 20, 6881, ip4("10.0.0.1"), None)
PEER_B = PeerContact.make(b"B" * 20, 0x1A2B, ip4("10.0.0.2"), ip6("2001:db8::2"))
PEER_C = PeerContact.make(b"C" * 20, 51413, None, ip6("::1"))


def result(peers: list[PeerContact], **kwargs: Any) -> AnnounceResult:
    return AnnounceResult(
        interval_s=5, min_interval_s=1, complete=2, incomplete=3, peers=peers, **kwargs
    )


def test_encode_compact_ipv4_peers_byte_exact() -> None:
    body = encode_announce(result([PEER_A]), compact=True, no_peer_id=False)
    assert body == (
        b"d8:completei2e10:incompletei3e8:intervali5e12:min intervali1e"
        b"5:peers6:\x0a\x00\x00\x01\x1a\xe1e"
    )


def test_encode_compact_without_peers_still_has_peers_key() -> None:
    body = encode_announce(result([]), compact=True, no_peer_id=True)
    assert body == b"d8:completei2e10:incompletei3e8:intervali5e12:min intervali1e5:peers0:e"


def test_encode_compact_puts_ipv6_in_peers6() -> None:
    body = encode_announce(result([PEER_A, PEER_B, PEER_C]), compact=True, no_peer_id=True)
    decoded = raw_decode(body)
    assert decoded[b"peers"] == b"\x0a\x00\x00\x01\x1a\xe1" + b"\x0a\x00\x00\x02\x1a\x2b"
    assert decoded[b"peers6"] == ip6("2001:db8::2") + b"\x1a\x2b" + ip6("::1") + b"\xc8\xd5"
    assert b"6:peers6" in body


def test_encode_non_compact_lists_one_dict_per_address() -> None:
    body = encode_announce(result([PEER_A, PEER_B, PEER_C]), compact=False, no_peer_id=False)
    assert bencode.decode(body)["peers"] == [
        {"ip": "10.0.0.1", "peer id": "A" * 20, "port": 6881},
        {"ip": "10.0.0.2", "peer id": "B" * 20, "port": 0x1A2B},
        {"ip": "2001:db8::2", "peer id": "B" * 20, "port": 0x1A2B},
        {"ip": "::1", "peer id": "C" * 20, "port": 51413},
    ]
    assert b"peers6" not in body


def test_encode_non_compact_byte_exact_with_binary_peer_id() -> None:
    peer = PeerContact.make(b"\xff" * 20, 80, ip4("1.2.3.4"), None)
    body = encode_announce(result([peer]), compact=False, no_peer_id=False)
    assert body.endswith(b"5:peersld2:ip7:1.2.3.47:peer id20:" + b"\xff" * 20 + b"4:porti80eeee")


def test_encode_non_compact_omits_peer_id_when_asked() -> None:
    body = encode_announce(result([PEER_A]), compact=False, no_peer_id=True)
    assert raw_decode(body)[b"peers"] == [{b"ip": b"10.0.0.1", b"port": 6881}]


def test_encode_extension_keys_only_when_present() -> None:
    plain = raw_decode(encode_announce(result([]), compact=True, no_peer_id=True))
    assert set(plain) == {b"complete", b"incomplete", b"interval", b"min interval", b"peers"}
    body = encode_announce(
        result([], assignment=(3, 7, 9), assignment_ttl_s=20, pieces_known=0),
        compact=True,
        no_peer_id=True,
    )
    decoded = raw_decode(body)
    assert decoded[b"df assign"] == [3, 7, 9]
    assert decoded[b"df assign ttl"] == 20
    assert decoded[b"df known"] == 0
    assert b"9:df assignli3ei7ei9ee13:df assign ttli20e8:df knowni0e" in body


def test_encode_known_without_assignment() -> None:
    body = encode_announce(result([], pieces_known=12), compact=True, no_peer_id=True)
    decoded = raw_decode(body)
    assert decoded[b"df known"] == 12
    assert b"df assign" not in decoded and b"df assign ttl" not in decoded


def test_encode_failure_byte_exact() -> None:
    assert encode_failure("bad request") == b"d14:failure reason11:bad requeste"
    assert encode_failure("é") == b"d14:failure reason2:\xc3\xa9e"


def test_failure_reason_from_a_parse_error_decodes() -> None:
    with pytest.raises(AnnounceError) as caught:
        announce(query_without("port"))
    assert bencode.decode(encode_failure(str(caught.value))) == {
        "failure reason": "missing parameter 'port'"
    }


def test_encode_scrape_byte_exact_and_sorted() -> None:
    first, second = b"\x01" * 20, b"\x00" * 20
    body = encode_scrape({first: ScrapeCounts(1, 2, 3), second: ScrapeCounts(0, 0, 0)})
    assert body == (
        b"d5:filesd20:" + second + b"d8:completei0e10:downloadedi0e10:incompletei0ee"
        b"20:" + first + b"d8:completei1e10:downloadedi3e10:incompletei2eeee"
    )
    assert encode_scrape({}) == b"d5:filesdee"


# --- parse_report ---------------------------------------------------------------------------------

REPORTER = "ab" * 20
BAD_PEER = "CD" * 20


def report(**fields: Any) -> bytes:
    return json.dumps({"reporter": REPORTER, "reason": "bad_piece", **fields}).encode()


def test_report_with_peer_and_address() -> None:
    assert parse_report(report(peer=BAD_PEER, address="10.0.0.1:6881")) == PeerReport(
        reporter=bytes.fromhex(REPORTER),
        reason="bad_piece",
        peer_id=bytes.fromhex(BAD_PEER),
        address="10.0.0.1:6881",
    )


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("[2001:DB8:0::1]:6881", "[2001:db8::1]:6881"),
        ("[::ffff:10.0.0.1]:80", "10.0.0.1:80"),
        ("Peer-7.Example:6881", "peer-7.example:6881"),
        ("192.0.2.9:65535", "192.0.2.9:65535"),
    ],
)
def test_report_address_is_normalised(address: str, expected: str) -> None:
    parsed = parse_report(report(address=address))
    assert parsed.address == expected
    assert parsed.peer_id is None


def test_report_address_matches_peer_contact_address() -> None:
    assert parse_report(report(address=PEER_C.address)).address == PEER_C.address
    assert parse_report(report(address=PEER_B.address)).address == PEER_B.address


def test_report_ignores_unknown_fields() -> None:
    assert parse_report(report(peer=BAD_PEER, piece=4)).peer_id == bytes.fromhex(BAD_PEER)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{not json", "not valid JSON"),
        (b"\xff\xfe\x00", "not valid JSON"),
        (b"[1, 2]", "must be a JSON object"),
        (b'"text"', "must be a JSON object"),
        (json.dumps({"reason": "x", "peer": BAD_PEER}).encode(), "missing 'reporter'"),
        (report(reporter="ab" * 19 + "a", peer=BAD_PEER), "'reporter' must be a peer id"),
        (report(reporter="zz" * 20, peer=BAD_PEER), "'reporter' must be a peer id"),
        (report(reporter="ab " * 13 + "a", peer=BAD_PEER), "'reporter' must be a peer id"),
        (report(reporter=12, peer=BAD_PEER), "'reporter' must be a peer id"),
        (report(peer="cd" * 21), "'peer' must be a peer id"),
        (report(peer=["cd"]), "'peer' must be a peer id"),
        (report(), "one of 'peer' and 'address' is required"),
        (report(address="10.0.0.1"), "'address' must be"),
        (report(address="10.0.0.1:70000"), "'address' must be"),
        (report(address="10.0.0.1:0"), "'address' must be"),
        (report(address="2001:db8::1:80"), "'address' must be"),
        (report(address="[not-v6]:80"), "'address' must be"),
        (report(address="bad host:80"), "'address' must be"),
        (report(address=":80"), "'address' must be"),
        (report(address=6881), "'address' must be"),
        (report(address="a" * 300 + ":80"), "'address' must be"),
        (report(peer=BAD_PEER, reason="r" * 65), "'reason' must be text of 1..64"),
        (report(peer=BAD_PEER, reason=""), "'reason' must be text"),
        (report(peer=BAD_PEER, reason=None), "'reason' must be text"),
        (report(peer=BAD_PEER, reason=7), "'reason' must be text"),
        (b"[" * 3000 + b"]" * 3000, "body larger than"),
        (b"[" * 2000, "nested too deeply"),
    ],
)
def test_report_refuses_bad_body_with_clear_message(body: bytes, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_report(body)


def test_report_reason_of_exactly_64_characters() -> None:
    assert parse_report(report(peer=BAD_PEER, reason="é" * 64)).reason == "é" * 64
