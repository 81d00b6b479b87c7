"""proxy.upstream: which headers cross the proxy (RFC 9110 7.6.1)."""

from __future__ import annotations

from proxy.upstream import credentials, end_to_end, request_headers


def test_hop_by_hop_headers_and_those_named_in_connection_are_dropped() -> None:
    headers = [
        ("Accept", "a"),
        ("Connection", "keep-alive, X-Hop"),
        ("X-Hop", "1"),
        ("Keep-Alive", "timeout=5"),
        ("Proxy-Authorization", "Basic x"),
        ("Proxy-Connection", "keep-alive"),
        ("TE", "trailers"),
        ("Trailer", "X"),
        ("Transfer-Encoding", "chunked"),
        ("Upgrade", "h2c"),
        ("Accept", "b"),
        ("Authorization", "Bearer t"),
    ]
    assert end_to_end(headers) == [("Accept", "a"), ("Accept", "b"), ("Authorization", "Bearer t")]


def test_request_headers_leave_host_and_expect_to_the_proxy() -> None:
    headers = [("Host", "mirror:65001"), ("Expect", "100-continue"), ("Accept", "x")]
    assert request_headers(headers) == [("Accept", "x")]


def test_credentials_are_the_authorization_headers_only() -> None:
    headers = [("Cookie", "c"), ("authorization", "Basic a"), ("Accept", "x")]
    assert credentials(headers) == (("authorization", "Basic a"),)
