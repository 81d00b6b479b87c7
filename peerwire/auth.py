"""The cluster secret's proofs, in one place: announces, the tracker's JSON API, peer handshakes.

Only processes that hold the secret may announce or change a task's manifest, and peers prove it
to each other before any piece moves (``auth_proof``).

When the tracker is started with a secret (``--secret-file``, or ``DRAGONFLY_SECRET``), every
announce must carry ``df_ts`` (unix seconds) and ``df_auth`` (raw HMAC-SHA256 bytes,
percent-encoded like ``info_hash``) over the task, the peer id, the port and the time; every
``PUT``/``POST`` of the JSON API must carry ``X-DF-Auth: <unix seconds>:<hex HMAC-SHA256>`` over
the method, the path, the time and the sha256 of the body. A time more than ``MAX_SKEW_S`` away
from the tracker's clock is refused, so a captured request cannot be replayed later; within that
window a replay only repeats an announce the peer made itself. Stock BitTorrent clients cannot
use a tracker that has a secret. Without a secret nothing is checked (see SECURITY.md for what
that exposes).
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from typing import Final

from peerwire.ids import PeerId, TaskId

#: How far a request's time may be from the tracker's clock.
MAX_SKEW_S: Final = 300
ANNOUNCE_CONTEXT: Final = b"dragonfly-announce-v1\0"
API_CONTEXT: Final = b"dragonfly-api-v1\0"
AUTH_HEADER: Final = "X-DF-Auth"
PEER_CONTEXT: Final = b"peerwire-auth-v1\0"


def announce_mac(secret: bytes, info_hash: bytes, peer_id: bytes, port: int, ts: int) -> bytes:
    message = ANNOUNCE_CONTEXT + info_hash + peer_id + struct.pack(">HQ", port, ts)
    return hmac.new(secret, message, hashlib.sha256).digest()


def api_mac(secret: bytes, method: str, path: str, ts: int, body: bytes) -> bytes:
    message = b"".join(
        (
            API_CONTEXT,
            method.upper().encode(),
            b"\0",
            path.encode(),
            b"\0",
            struct.pack(">Q", ts),
            hashlib.sha256(body).digest(),
        )
    )
    return hmac.new(secret, message, hashlib.sha256).digest()


def api_header(secret: bytes, method: str, path: str, ts: int, body: bytes) -> str:
    return f"{ts}:{api_mac(secret, method, path, ts, body).hex()}"


def check_announce(
    secret: bytes,
    info_hash: bytes,
    peer_id: bytes,
    port: int,
    ts: int | None,
    mac: bytes | None,
    now_s: float,
) -> str | None:
    """None when the announce is authentic; otherwise why not (the failure reason)."""
    if ts is None or mac is None:
        return "this tracker requires the cluster secret (df_ts and df_auth missing)"
    if abs(now_s - ts) > MAX_SKEW_S:
        return "df_ts is too far from the tracker's clock"
    if not hmac.compare_digest(mac, announce_mac(secret, info_hash, peer_id, port, ts)):
        return "df_auth does not match: wrong cluster secret"
    return None


def check_api(
    secret: bytes, method: str, path: str, header: str | None, body: bytes, now_s: float
) -> str | None:
    """None when an API request is authentic; otherwise why not."""
    if not header:
        return f"this tracker requires the cluster secret ({AUTH_HEADER} missing)"
    ts_text, _, mac_hex = header.partition(":")
    try:
        ts = int(ts_text)
        mac = bytes.fromhex(mac_hex)
    except ValueError:
        return f"{AUTH_HEADER} must be <unix seconds>:<hex>"
    if abs(now_s - ts) > MAX_SKEW_S:
        return f"{AUTH_HEADER} time is too far from the tracker's clock"
    if not hmac.compare_digest(mac, api_mac(secret, method, path, ts, body)):
        return f"{AUTH_HEADER} does not match: wrong cluster secret"
    return None


def auth_proof(secret: bytes, task_id: TaskId, nonce: bytes, prover: PeerId) -> bytes:
    """What a peer sends to prove it holds the cluster secret: bound to the task, to the
    challenger's fresh nonce (no replay) and to the prover's own id (no reflection)."""
    message = PEER_CONTEXT + task_id.raw + nonce + prover.raw
    return hmac.new(secret, message, hashlib.sha256).digest()


def load_secret(path: str | None, environ_value: str | None) -> bytes | None:
    """The secret from a file (stripped of surrounding whitespace) or the environment.

    ValueError for an empty or too-short secret: a weak secret is worse than none, because it
    looks like protection.
    """
    if path:
        with open(path, "rb") as stream:
            secret = stream.read().strip()
    elif environ_value:
        secret = environ_value.strip().encode()
    else:
        return None
    if len(secret) < 16:
        raise ValueError("the cluster secret must be at least 16 bytes")
    return secret
