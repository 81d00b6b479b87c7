"""The cluster secret's proofs: announces over every field, API requests with nonces, the
tracker's answers, clock skew, replays, wrong secrets, weak secrets."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote_to_bytes

import pytest

from peerwire.auth import (
    MAX_SKEW_S,
    NonceCache,
    answer_mac,
    api_header,
    check_announce,
    check_answer,
    check_api,
    load_secret,
    new_nonce,
    sign_announce,
)

SECRET = b"s3cret-s3cret-s3cret"
QUERY = "info_hash=%54%54&peer_id=%50%50&port=6881&left=100&event=started&df_have=%ff"


def parsed(query: str) -> tuple[bytes, int | None, bytes | None]:
    """What the tracker takes from a query: its bytes, df_ts and df_auth."""
    values = dict(part.split("=", 1) for part in query.split("&"))
    ts = int(values["df_ts"]) if "df_ts" in values else None
    mac = unquote_to_bytes(values["df_auth"]) if "df_auth" in values else None
    return query.encode(), ts, mac


def test_a_signed_announce_passes() -> None:
    query = sign_announce(SECRET, QUERY, seq=7, ts=1000)
    assert query.startswith(QUERY + "&df_seq=7&df_ts=1000&df_auth=")
    assert check_announce(SECRET, *parsed(query), now_s=1010) is None


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("event=started", "event=stopped"),
        ("left=100", "left=0"),
        ("df_have=%ff", "df_have=%00"),
        ("port=6881", "port=6882"),
        ("df_seq=7", "df_seq=8"),
        ("df_ts=1000", "df_ts=1001"),
        ("&df_have=%ff", ""),
    ],
)
def test_changing_any_field_of_a_signed_announce_breaks_its_proof(old: str, new: str) -> None:
    query = sign_announce(SECRET, QUERY, seq=7, ts=1000)
    assert old in query
    altered = query.replace(old, new, 1)
    reason = check_announce(SECRET, *parsed(altered), now_s=1000)
    assert reason is not None and "does not match" in reason


def test_a_parameter_after_the_proof_is_refused() -> None:
    query = sign_announce(SECRET, QUERY, seq=7, ts=1000) + "&event=stopped"
    reason = check_announce(SECRET, query.encode(), 1000, b"\0" * 32, now_s=1000)
    assert reason is not None and "last parameter" in reason


@pytest.mark.parametrize(
    ("secret", "now_s", "reason"),
    [
        (SECRET, 1000 + MAX_SKEW_S + 1, "too far"),
        (SECRET, 1000 - MAX_SKEW_S - 1, "too far"),
        (b"other-secret-other", 1000, "does not match"),
    ],
)
def test_a_stale_or_foreign_announce_proof_is_refused(
    secret: bytes, now_s: float, reason: str
) -> None:
    query = sign_announce(SECRET, QUERY, seq=7, ts=1000)
    result = check_announce(secret, *parsed(query), now_s=now_s)
    assert result is not None and reason in result


def test_an_announce_without_a_proof_is_refused() -> None:
    result = check_announce(SECRET, QUERY.encode(), None, None, now_s=1000)
    assert result is not None and "missing" in result


def test_api_proof_covers_method_target_body_and_time() -> None:
    nonce = new_nonce()
    header = api_header(SECRET, "PUT", "/tasks/ab", 500, nonce, b"{}")
    assert check_api(SECRET, "PUT", "/tasks/ab", header, b"{}", 510, NonceCache()) is None
    for method, target, body in (
        ("POST", "/tasks/ab", b"{}"),
        ("PUT", "/tasks/cd", b"{}"),
        ("PUT", "/tasks/ab?x=1", b"{}"),
        ("PUT", "/tasks/ab", b'{"x":1}'),
    ):
        result = check_api(SECRET, method, target, header, body, 510, NonceCache())
        assert result is not None and "does not match" in result
    result = check_api(
        SECRET, "PUT", "/tasks/ab", header, b"{}", 500 + MAX_SKEW_S + 1, NonceCache()
    )
    assert result is not None and "too far" in result


def test_an_api_request_is_accepted_once() -> None:
    nonces = NonceCache()
    header = api_header(SECRET, "PUT", "/tasks/ab", 500, new_nonce(), b"{}")
    assert check_api(SECRET, "PUT", "/tasks/ab", header, b"{}", 510, nonces) is None
    again = check_api(SECRET, "PUT", "/tasks/ab", header, b"{}", 520, nonces)
    assert again is not None and "replayed" in again


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        (None, "missing"),
        ("", "missing"),
        ("nonsense", "must be"),
        ("500:zz:00", "must be"),
        ("500:00:00", "nonce must be 16 bytes"),
    ],
)
def test_a_malformed_api_proof_is_refused_with_a_reason(header: str | None, reason: str) -> None:
    result = check_api(SECRET, "PUT", "/tasks/ab", header, b"", 500, NonceCache())
    assert result is not None and reason in result


def test_the_nonce_cache_forgets_what_is_older_than_the_skew_window_and_past_its_capacity() -> None:
    nonces = NonceCache(capacity=3)
    assert nonces.first_use(b"a", 0)
    assert not nonces.first_use(b"a", 1)
    assert nonces.first_use(b"b", MAX_SKEW_S + 1)  # "a" is forgotten: its time is refused anyway
    assert nonces.first_use(b"a", MAX_SKEW_S + 2)
    for name in (b"c", b"d", b"e"):
        assert nonces.first_use(name, MAX_SKEW_S + 3)
    assert len(nonces) == 3


def test_an_answer_proof_binds_the_request_nonce_the_status_and_the_body() -> None:
    nonce = new_nonce()
    proof = answer_mac(SECRET, nonce, 200, b"{}")
    assert check_answer(SECRET, nonce, 200, b"{}", proof)
    assert not check_answer(SECRET, new_nonce(), 200, b"{}", proof)
    assert not check_answer(SECRET, nonce, 404, b"{}", proof)
    assert not check_answer(SECRET, nonce, 200, b"{ }", proof)
    assert not check_answer(b"other-secret-other", nonce, 200, b"{}", proof)
    assert not check_answer(SECRET, nonce, 200, b"{}", None)


def test_secret_from_a_file_or_the_environment_and_weak_ones_refused(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    path.write_bytes(SECRET + b"\n")
    assert load_secret(str(path), None) == SECRET
    assert load_secret(None, " env-secret-env-secret ") == b"env-secret-env-secret"
    assert load_secret(None, None) is None
    with pytest.raises(ValueError, match="at least 16"):
        load_secret(None, "short")
