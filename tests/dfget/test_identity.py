"""Task identity: URL normalisation, filters, tag, digest; headers never matter."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dfget.identity import normalize_url, parse_digest, task_id_for
from peerwire.ids import TaskId

DIGEST = hashlib.sha256(b"hello").digest()


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("HTTP://Example.COM/a/B.bin", "http://example.com/a/B.bin"),
        ("http://example.com:80/x", "http://example.com/x"),
        ("https://example.com:443/x", "https://example.com/x"),
        ("http://example.com:443/x", "http://example.com:443/x"),
        ("https://example.com:80/x", "https://example.com:80/x"),
        ("http://example.com:8080/x", "http://example.com:8080/x"),
        ("http://example.com/x#part-2", "http://example.com/x"),
        ("http://example.com", "http://example.com/"),
        ("http://example.com/x?", "http://example.com/x"),
        ("http://[::1]:80/x", "http://[::1]/x"),
        ("http://[FE80::1]:8000/x", "http://[fe80::1]:8000/x"),
        ("http://user:pw@Host.example/x", "http://host.example/x"),
        ("http://example.com/A%2Fb/../c", "http://example.com/A%2Fb/../c"),
    ],
)
def test_normalize_url_vectors(url: str, expected: str) -> None:
    assert normalize_url(url) == expected


def test_filters_remove_named_parameters_and_keep_order_and_bytes_of_the_rest() -> None:
    url = "https://s3.example/b/k?z=1&X-Amz-Signature=abc&a=%2F+x&X-Amz-Date=2024&m"
    assert normalize_url(url, ["X-Amz-Signature", "X-Amz-Date"]) == (
        "https://s3.example/b/k?z=1&a=%2F+x&m"
    )


def test_filters_are_exact_and_case_sensitive() -> None:
    url = "http://h/x?sig=1&Sig=2&signature=3"
    assert normalize_url(url, ["sig"]) == "http://h/x?Sig=2&signature=3"


def test_filter_matches_a_percent_encoded_name() -> None:
    assert normalize_url("http://h/x?X%2DSig=1&a=2", ["X-Sig"]) == "http://h/x?a=2"


def test_filtering_every_parameter_drops_the_question_mark() -> None:
    assert normalize_url("http://h/x?e=1&s=2", ["e", "s"]) == "http://h/x"


def test_filter_removes_repeated_parameters() -> None:
    assert normalize_url("http://h/x?s=1&a=1&s=2", ["s"]) == "http://h/x?a=1"


@pytest.mark.parametrize(
    "url",
    [
        "ftp://example.com/x",
        "file:///etc/passwd",
        "example.com/x",
        "http:///x",
        "http://example.com:99999/x",
        "http://example.com/a b",
        "http://example.com/a\nb",
        "http://example.com/" + "a" * 40_000,
    ],
)
def test_normalize_url_rejects_bad_urls(url: str) -> None:
    with pytest.raises(ValueError, match="URL"):
        normalize_url(url)


def test_task_id_without_digest_follows_the_documented_formula() -> None:
    url = "HTTP://Example.com:80/f.bin?sig=x&v=1#frag"
    normalized = b"http://example.com/f.bin?v=1"
    expected = hashlib.sha256(b"dragonfly-task\0url\0" + normalized + b"\0" + b"t1").digest()[:20]
    assert task_id_for(url, filters=["sig"], tag="t1") == TaskId(expected)


def test_task_id_pinned_vector() -> None:
    # Pinned so that a change of the formula (which splits swarms across versions) is noticed.
    assert (
        task_id_for("http://example.com/f.bin").hex()
        == (hashlib.sha256(b"dragonfly-task\0url\0http://example.com/f.bin\0").hexdigest()[:40])
    )
    assert task_id_for("http://example.com/f.bin").hex() == (
        "bf26090ad012e1e544698968de345399afdeda76"
    )


def test_task_id_with_digest_follows_the_documented_formula() -> None:
    expected = hashlib.sha256(b"dragonfly-task\0sha256:" + DIGEST.hex().encode()).digest()[:20]
    assert task_id_for("http://a/x", digest_sha256=DIGEST) == TaskId(expected)
    assert expected.hex() == "4077284f133d5ecda23637a6251c198437f96524"


def test_equivalent_urls_are_one_task() -> None:
    a = task_id_for("HTTP://Example.com:80/f?s=1&v=2#x", filters=["s"])
    b = task_id_for("http://example.com/f?v=2", filters=["s"])
    assert a == b


def test_unfiltered_parameters_make_another_task() -> None:
    assert task_id_for("http://h/f?v=1") != task_id_for("http://h/f?v=2")
    assert task_id_for("http://h/f?a=1&b=2") != task_id_for("http://h/f?b=2&a=1")


def test_tag_changes_the_id() -> None:
    assert task_id_for("http://h/f", tag="a") != task_id_for("http://h/f", tag="b")
    assert task_id_for("http://h/f", tag="") != task_id_for("http://h/f", tag="a")


def test_tag_cannot_be_confused_with_the_url() -> None:
    # The NUL separator: URL "…/f" + tag "x" must not equal URL "…/fx" (a URL cannot hold NUL).
    assert task_id_for("http://h/f", tag="x") != task_id_for("http://h/fx")


def test_digest_is_the_identity_whatever_the_url_filters_and_tag() -> None:
    one = task_id_for("http://registry-a/v2/x/blobs/1", digest_sha256=DIGEST)
    two = task_id_for(
        "https://mirror-b:8443/y?sig=1", filters=["sig"], tag="t", digest_sha256=DIGEST
    )
    assert one == two
    assert one != task_id_for("http://registry-a/v2/x/blobs/1")


def test_digest_task_still_validates_the_url() -> None:
    with pytest.raises(ValueError, match="http"):
        task_id_for("ftp://h/x", digest_sha256=DIGEST)


def test_digest_of_wrong_length_is_refused() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        task_id_for("http://h/x", digest_sha256=b"\x00" * 20)


def test_headers_never_enter_the_identity() -> None:
    # task_id_for has no headers parameter at all: the only way to keep them out for good.
    with pytest.raises(TypeError):
        task_id_for("http://h/x", headers=(("Authorization", "Bearer a"),))  # type: ignore[call-arg]


@given(
    params=st.lists(
        st.tuples(st.sampled_from(["a", "b", "sig", "exp", "Sig"]), st.text("xyz09%", max_size=4)),
        max_size=8,
    )
)
def test_filtering_keeps_exactly_the_unfiltered_items_in_order(
    params: list[tuple[str, str]],
) -> None:
    items = [f"{name}={value}" for name, value in params]
    url = "http://h/p" + ("?" + "&".join(items) if items else "")
    kept = [
        item for item, (name, _) in zip(items, params, strict=True) if name not in {"sig", "exp"}
    ]
    expected = "http://h/p" + ("?" + "&".join(kept) if kept else "")
    assert normalize_url(url, ["sig", "exp"]) == expected


def test_parse_digest_reads_either_case() -> None:
    assert parse_digest("sha256:" + DIGEST.hex()) == DIGEST
    assert parse_digest("SHA256:" + DIGEST.hex().upper()) == DIGEST


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("md5:" + "0" * 32, "only sha256 is supported"),
        ("sha512:" + "0" * 128, "only sha256 is supported"),
        (DIGEST.hex(), "sha256:<64 hex digits>"),
        ("sha256:" + "0" * 63, "64 hex digits"),
        ("sha256:" + "0" * 65, "64 hex digits"),
        ("sha256:" + "g" * 64, "64 hex digits"),
        ("sha256:", "64 hex digits"),
    ],
)
def test_parse_digest_rejects_with_a_clear_message(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_digest(text)
