"""routes: the classification table, the Range header, header safety - pure, no sockets."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.config import ProxyConfig, parse_rule
from proxy.routes import (
    ByteRange,
    ConnectRoute,
    LocalRoute,
    ProxyRoute,
    RangeNotSatisfiable,
    Refused,
    RegistryRoute,
    check_header,
    classify,
    parse_range,
)

UP = "http://127.0.0.1:5000"
HEX = "ab" * 32
CONFIG = ProxyConfig(
    upstream=UP,
    registries=(("docker.io", "https://registry-1.docker.io"),),
    rules=(
        parse_rule(r"^http://files\.example/", "swarm"),
        parse_rule(r"^https?://registry\.example(:\d+)?/", "direct"),
    ),
)


@pytest.mark.parametrize(
    ("method", "target", "kind", "url"),
    [
        ("GET", "/v2/", "ping", f"{UP}/v2/"),
        ("GET", "/v2", "ping", f"{UP}/v2"),
        ("GET", "/v2/_catalog?n=10", "catalog", f"{UP}/v2/_catalog?n=10"),
        ("GET", "/v2/library/alpine/manifests/3.19", "manifest", None),
        ("HEAD", f"/v2/a/b/c/manifests/sha256:{HEX}", "manifest", None),
        ("GET", f"/v2/lib/blobs/sha256:{HEX}", "blob", None),
        ("DELETE", f"/v2/lib/blobs/sha256:{HEX}", "blob", None),
        ("GET", "/v2/lib/blobs/sha512:" + "c" * 128, "blob", None),
        ("POST", "/v2/my-app/blobs/uploads/", "upload", None),
        ("PATCH", "/v2/my_app/blobs/uploads/4f9a-b2==?_state=x", "upload", None),
        ("GET", "/v2/a.b/tags/list?n=5&last=x", "tags", f"{UP}/v2/a.b/tags/list?n=5&last=x"),
        ("GET", f"/v2/x/referrers/sha256:{HEX}", "referrers", None),
        # Components may be named like API words.
        ("GET", "/v2/blobs/manifests/manifests/latest", "manifest", None),
        ("GET", "/v2/a__b/c--d/manifests/v1", "manifest", None),
    ],
)
def test_registry_paths_are_classified_and_go_to_the_upstream(
    method: str, target: str, kind: str, url: str | None
) -> None:
    route = classify(method, target, CONFIG)
    assert isinstance(route, RegistryRoute)
    assert route.kind == kind
    assert route.url == (url or UP + target)


def test_blob_route_carries_the_digest_as_bytes() -> None:
    route = classify("GET", f"/v2/lib/app/blobs/sha256:{HEX}", CONFIG)
    assert isinstance(route, RegistryRoute)
    assert route.digest_sha256 == bytes.fromhex(HEX)
    assert route.name == "lib/app"
    other = classify("GET", "/v2/lib/blobs/sha512:" + "c" * 128, CONFIG)
    assert isinstance(other, RegistryRoute) and other.digest_sha256 is None


@pytest.mark.parametrize(
    ("target", "status"),
    [
        ("/v2/../secret/manifests/latest", 404),
        ("/v2/a/../../manifests/latest", 404),
        ("/v2/a/%2e%2e/manifests/latest", 404),
        ("/v2/a%2fb/manifests/latest", 404),
        ("/v2/Upper/manifests/latest", 404),
        ("/v2/a//b/manifests/latest", 404),
        ("/v2/a/manifests/", 404),
        ("/v2/a/manifests/-bad", 404),
        ("/v2/a/unknown/thing", 404),
        (f"/v2/lib/blobs/sha256:{HEX[:-1]}", 400),
        (f"/v2/lib/blobs/sha256:{HEX.upper()}", 400),
        (f"/v2/lib/blobs/sha256:{HEX}0", 400),
        (f"/v2/lib/blobs/sha256:{HEX}/../x", 400),
        ("/v2/" + "a" * 256 + "/manifests/x", 400),
        ("/v2/" + "a/" * 1100 + "manifests/x", 414),
        ("/v3/", 404),
        ("/", 404),
        ("/admin", 404),
    ],
)
def test_bad_names_digests_and_paths_are_refused(target: str, status: int) -> None:
    route = classify("GET", target, CONFIG)
    assert isinstance(route, Refused), route
    assert route.status == status


@pytest.mark.parametrize(
    ("target", "result"),
    [
        ("/v2/a/manifests/x?ns=docker.io", "https://registry-1.docker.io/v2/a/manifests/x"),
        ("/v2/a/manifests/x?ns=127.0.0.1%3A5000&n=1", f"{UP}/v2/a/manifests/x?n=1"),
        ("/v2/a/manifests/x?n=1&ns=127.0.0.1:5000&m=2", f"{UP}/v2/a/manifests/x?n=1&m=2"),
        ("/v2/a/manifests/x?ns=DOCKER.IO", "https://registry-1.docker.io/v2/a/manifests/x"),
        ("/v2/a/manifests/x?ns=evil.example", 403),
        ("/v2/a/manifests/x?ns=127.0.0.1:5001", 403),
        ("/v2/a/manifests/x?ns=docker.io&ns=docker.io", 400),
        ("/v2/a/manifests/x?ns=docker.io%0d%0aX-Injected:%20yes", 400),
        ("/v2/a/manifests/x?ns=docker.io/../../", 400),
    ],
)
def test_ns_names_a_configured_upstream_and_is_stripped(target: str, result: str | int) -> None:
    route = classify("GET", target, CONFIG)
    if isinstance(result, str):
        assert isinstance(route, RegistryRoute)
        assert route.url == result
        assert "ns=" not in route.url
    else:
        assert isinstance(route, Refused) and route.status == result


def test_blob_identity_does_not_depend_on_ns() -> None:
    a = classify("GET", f"/v2/lib/blobs/sha256:{HEX}?ns=docker.io", CONFIG)
    b = classify("GET", f"/v2/lib/blobs/sha256:{HEX}", CONFIG)
    assert isinstance(a, RegistryRoute) and isinstance(b, RegistryRoute)
    assert a.digest_sha256 == b.digest_sha256 and a.url != b.url


def test_mirror_without_upstream_refuses_origin_form_without_ns() -> None:
    route = classify("GET", "/v2/", ProxyConfig())
    assert isinstance(route, Refused) and route.status == 404


@pytest.mark.parametrize(
    ("method", "target", "expected"),
    [
        (
            "GET",
            "http://files.example/a.bin",
            ProxyRoute("proxy_swarm", "http://files.example/a.bin"),
        ),
        (
            "HEAD",
            "http://files.example/a.bin",
            ProxyRoute("proxy_direct", "http://files.example/a.bin"),
        ),
        (
            "PUT",
            "http://files.example/a.bin",
            ProxyRoute("proxy_direct", "http://files.example/a.bin"),
        ),
        (
            "GET",
            "http://registry.example/v2/",
            ProxyRoute("proxy_direct", "http://registry.example/v2/"),
        ),
        ("GET", "HTTP://Files.Example/x#frag", ProxyRoute("proxy_swarm", "http://files.example/x")),
        ("GET", "http://other.example/a.bin", Refused(403, "no proxy rule allows this URL")),
        (
            "GET",
            "http://user:pw@files.example/a",
            Refused(400, "absolute URL needs a host (and no user info)"),
        ),
        ("GET", "http:///nohost", Refused(400, "absolute URL needs a host (and no user info)")),
        ("GET", "http://files.example:99999/", Refused(400, "bad absolute URL")),
    ],
)
def test_absolute_form_follows_the_first_matching_rule(
    method: str, target: str, expected: object
) -> None:
    assert classify(method, target, CONFIG) == expected


def test_absolute_form_blob_url_through_the_swarm_keeps_its_digest() -> None:
    config = ProxyConfig(rules=(parse_rule(".", "swarm"),))
    route = classify("GET", f"http://reg.example/v2/a/blobs/sha256:{HEX}", config)
    assert route == ProxyRoute(
        "proxy_swarm", f"http://reg.example/v2/a/blobs/sha256:{HEX}", bytes.fromhex(HEX)
    )


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("registry.example:443", ConnectRoute("registry.example", 443)),
        ("registry.example:8443", ConnectRoute("registry.example", 8443)),
        ("REGISTRY.example:443", ConnectRoute("registry.example", 443)),
        ("elsewhere.example:443", 403),
        ("registry.example", 400),
        ("registry.example:0", 400),
        ("registry.example:65536", 400),
        ("registry.example:44x", 400),
        ("/v2/", 400),
        ("bad host:443", 400),
    ],
)
def test_connect_is_allowed_only_where_a_rule_matches(target: str, expected: object) -> None:
    route = classify("CONNECT", target, CONFIG)
    if isinstance(expected, int):
        assert isinstance(route, Refused) and route.status == expected
    else:
        assert route == expected


@pytest.mark.parametrize(
    ("method", "target", "status"),
    [
        ("OPTIONS", "*", 400),
        ("GET", "ftp://files.example/x", 400),
        ("GET", "files.example/x", 400),
        ("TRACE", "/v2/", 405),
        ("POST", "/metrics", 405),
        ("GET", "/v2/a/manifests/x\r\nX-Injected: 1", 400),
        ("GET", "/v2/a/manifests/x\nX: 1", 400),
    ],
)
def test_other_requests_are_refused(method: str, target: str, status: int) -> None:
    route = classify(method, target, CONFIG)
    assert isinstance(route, Refused) and route.status == status


def test_metrics_and_healthz_are_local() -> None:
    assert classify("GET", "/metrics", CONFIG) == LocalRoute("metrics")
    assert classify("HEAD", "/healthz", CONFIG) == LocalRoute("healthz")


@given(st.text(max_size=300))
def test_classify_never_raises_and_never_forwards_dot_segments(tail: str) -> None:
    route = classify("GET", "/v2/" + tail, CONFIG)
    if isinstance(route, RegistryRoute):
        path = route.url.removeprefix(UP).partition("?")[0]
        assert "/../" not in path + "/" and "/./" not in path + "/"
        assert "%" not in path and "\r" not in route.url and "\n" not in route.url


@given(st.text(alphabet="abc/._-:0123456789", max_size=400))
def test_classify_handles_adversarial_names(tail: str) -> None:
    classify("GET", f"/v2/{tail}/manifests/latest", CONFIG)


# -- Range --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        ("bytes=0-0", ByteRange(0, 1, 100)),
        ("bytes=0-99", ByteRange(0, 100, 100)),
        ("bytes=10-", ByteRange(10, 100, 100)),
        ("bytes=90-1000", ByteRange(90, 100, 100)),
        ("bytes=-10", ByteRange(90, 100, 100)),
        ("bytes=-1000", ByteRange(0, 100, 100)),
        ("Bytes = 5-6", ByteRange(5, 7, 100)),
        ("bytes=0-1,5-6", None),
        ("items=0-1", None),
        ("garbage", None),
    ],
)
def test_range_header_is_read_as_rfc_9110_says(value: str | None, expected: object) -> None:
    assert parse_range(value, 100) == expected


@pytest.mark.parametrize(
    ("value", "size"),
    [
        ("bytes=100-", 100),
        ("bytes=100-200", 100),
        ("bytes=5-2", 100),
        ("bytes=-0", 100),
        ("bytes=-5", 0),
        ("bytes=0-", 0),
        ("bytes=-", 100),
        ("bytes=a-b", 100),
        ("bytes=1-2-3", 100),
        ("bytes=" + "9" * 40 + "-", 100),
        ("bytes=99999999999999999999-", 100),
    ],
)
def test_absurd_ranges_are_not_satisfiable(value: str, size: int) -> None:
    with pytest.raises(RangeNotSatisfiable):
        parse_range(value, size)


def test_content_range_names_the_last_byte_and_the_size() -> None:
    assert ByteRange(10, 20, 100).content_range == "bytes 10-19/100"


@given(st.integers(0, 10**6), st.integers(0, 10**6), st.integers(1, 10**6))
def test_a_satisfiable_range_lies_inside_the_blob(first: int, last: int, size: int) -> None:
    try:
        got = parse_range(f"bytes={first}-{last}", size)
    except RangeNotSatisfiable:
        assert first > last or first >= size
        return
    assert got is not None and 0 <= got.start < got.end <= size


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("X-A", "a\r\nX-B: b"),
        ("X-A", "a\nb"),
        ("X-A", "a\x00"),
        ("X A", "v"),
        ("X:A", "v"),
        ("", "v"),
    ],
)
def test_headers_with_line_breaks_or_bad_names_are_rejected(name: str, value: str) -> None:
    with pytest.raises(ValueError):
        check_header(name, value)


def test_ordinary_headers_pass_the_check() -> None:
    check_header("WWW-Authenticate", 'Bearer realm="https://auth.example/token",scope="a:b"')
