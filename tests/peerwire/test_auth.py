"""The cluster secret: announce and API proofs, clock skew, wrong secrets, weak secrets."""

from __future__ import annotations

from pathlib import Path

import pytest

from peerwire.auth import (
    MAX_SKEW_S,
    announce_mac,
    api_header,
    check_announce,
    check_api,
    load_secret,
)

SECRET = b"s3cret-s3cret-s3cret"
TASK, PEER = b"T" * 20, b"P" * 20


def test_a_correct_announce_proof_passes() -> None:
    mac = announce_mac(SECRET, TASK, PEER, 6881, 1000)
    assert check_announce(SECRET, TASK, PEER, 6881, 1000, mac, now_s=1010) is None


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"ts": None}, "missing"),
        ({"mac": None}, "missing"),
        ({"now_s": 1000 + MAX_SKEW_S + 1}, "too far"),
        ({"port": 6882}, "wrong cluster secret"),
        ({"peer_id": b"Q" * 20}, "wrong cluster secret"),
        ({"secret": b"other-secret-other"}, "wrong cluster secret"),
    ],
)
def test_a_wrong_announce_proof_is_refused_with_a_reason(
    changes: dict[str, object], reason: str
) -> None:
    arguments: dict[str, object] = {
        "secret": SECRET,
        "info_hash": TASK,
        "peer_id": PEER,
        "port": 6881,
        "ts": 1000,
        "mac": announce_mac(SECRET, TASK, PEER, 6881, 1000),
        "now_s": 1000.0,
    }
    arguments.update(changes)
    result = check_announce(**arguments)  # type: ignore[arg-type]
    assert result is not None and reason in result


def test_api_proof_covers_method_path_and_body() -> None:
    header = api_header(SECRET, "PUT", "/tasks/ab", 500, b"{}")
    assert check_api(SECRET, "PUT", "/tasks/ab", header, b"{}", 510) is None
    for method, path, body in (
        ("POST", "/tasks/ab", b"{}"),
        ("PUT", "/tasks/cd", b"{}"),
        ("PUT", "/tasks/ab", b'{"x":1}'),
    ):
        assert check_api(SECRET, method, path, header, body, 510) is not None
    assert "missing" in (check_api(SECRET, "PUT", "/tasks/ab", None, b"", 510) or "")
    assert "must be" in (check_api(SECRET, "PUT", "/tasks/ab", "nonsense", b"", 510) or "")


def test_secret_from_a_file_or_the_environment_and_weak_ones_refused(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    path.write_bytes(SECRET + b"\n")
    assert load_secret(str(path), None) == SECRET
    assert load_secret(None, " env-secret-env-secret ") == b"env-secret-env-secret"
    assert load_secret(None, None) is None
    with pytest.raises(ValueError, match="at least 16"):
        load_secret(None, "short")
