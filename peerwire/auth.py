"""The cluster secret's proofs, in one place: announces, the tracker's JSON API and its answers,
peer handshakes.

Only processes that hold the secret may announce, change a task's manifest or report a peer;
the tracker's manifests come back with its own proof; peers prove it to each other before any
piece moves (``auth_proof``). Every proof is HMAC-SHA256 with a context string of its own, so
no proof of one kind passes for another.

* **Announces**: the peer appends ``df_seq`` (a number it never uses twice, growing), ``df_ts``
  (unix seconds) and, last, ``df_auth``: the HMAC of every byte of the query before it
  (``sign_announce``). Every field is covered, whatever its order or spelling. The tracker
  refuses a time more than ``MAX_SKEW_S`` from its clock and a ``df_seq`` not above the last
  one it accepted from that peer, so nothing captured can be replayed or altered.
* **API requests** (``PUT``/``POST``, and ``GET`` of a manifest): ``X-DF-Auth:
  <unix seconds>:<nonce hex>:<hex HMAC>`` over the method, the target (path and query), the
  time, the nonce and the sha256 of the body. The tracker remembers the nonces it accepted
  within ``MAX_SKEW_S`` (``NonceCache``) and refuses a second use.
* **Answers** to an authenticated manifest request: ``X-DF-Auth-Answer: <hex HMAC>`` over the
  request's nonce, the status and the sha256 of the body (``answer_mac``): a peer believes a
  manifest only from a tracker that holds the secret, and only the answer to its own request.

Stock BitTorrent clients cannot use a tracker that has a secret. Without a secret nothing is
checked (SECURITY.md says what that exposes).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct
from collections import OrderedDict
from typing import Final

from peerwire.ids import PeerId, TaskId

#: How far a request's time may be from the tracker's clock.
MAX_SKEW_S: Final = 300
ANNOUNCE_CONTEXT: Final = b"dragonfly-announce-v2\0"
API_CONTEXT: Final = b"dragonfly-api-v2\0"
ANSWER_CONTEXT: Final = b"dragonfly-answer-v2\0"
PEER_CONTEXT: Final = b"peerwire-auth-v1\0"
AUTH_HEADER: Final = "X-DF-Auth"
ANSWER_HEADER: Final = "X-DF-Auth-Answer"
#: The announce parameter carrying the proof; it comes last, after everything it covers.
AUTH_PARAM: Final = b"&df_auth="
NONCE_BYTES: Final = 16


def _mac(secret: bytes, *parts: bytes) -> bytes:
    return hmac.new(secret, b"".join(parts), hashlib.sha256).digest()


# -- announces ----------------------------------------------------------------------------------


def sign_announce(secret: bytes, query: str, seq: int, ts: int) -> str:
    """``query`` with ``df_seq``, ``df_ts`` and, last, ``df_auth`` (raw HMAC bytes,
    percent-encoded like ``info_hash``) over every byte before it."""
    signed = f"{query}&df_seq={seq}&df_ts={ts}"
    mac = _mac(secret, ANNOUNCE_CONTEXT, signed.encode("ascii"))
    return signed + "&df_auth=" + "".join(f"%{byte:02x}" for byte in mac)


def check_announce(
    secret: bytes, query: bytes, ts: int | None, mac: bytes | None, now_s: float
) -> str | None:
    """None when the raw announce ``query`` carries a valid proof made within ``MAX_SKEW_S``
    (``ts`` and ``mac`` as parsed from it); otherwise why not (the failure reason). The
    sequence number is the swarm's to check: it knows the peer."""
    if ts is None or mac is None:
        return "this tracker requires the cluster secret (df_ts and df_auth missing)"
    at = query.rfind(AUTH_PARAM)
    if at < 0 or b"&" in query[at + len(AUTH_PARAM) :]:
        return "df_auth must be the last parameter of the announce"
    if abs(now_s - ts) > MAX_SKEW_S:
        return "df_ts is too far from the tracker's clock"
    if not hmac.compare_digest(mac, _mac(secret, ANNOUNCE_CONTEXT, query[:at])):
        return "df_auth does not match: wrong cluster secret, or the announce was altered"
    return None


# -- the JSON API -------------------------------------------------------------------------------


def new_nonce() -> bytes:
    return os.urandom(NONCE_BYTES)


def api_mac(secret: bytes, method: str, target: str, ts: int, nonce: bytes, body: bytes) -> bytes:
    return _mac(
        secret,
        API_CONTEXT,
        method.upper().encode(),
        b"\0",
        target.encode(),
        b"\0",
        struct.pack(">Q", ts),
        nonce,
        hashlib.sha256(body).digest(),
    )


def api_header(secret: bytes, method: str, target: str, ts: int, nonce: bytes, body: bytes) -> str:
    """The ``X-DF-Auth`` value of a request to ``target`` (path and query, as sent)."""
    return f"{ts}:{nonce.hex()}:{api_mac(secret, method, target, ts, nonce, body).hex()}"


class NonceCache:
    """The API nonces accepted within the last ``MAX_SKEW_S``: a second use is a replay. Bounded:
    past ``capacity`` the oldest are forgotten (a replay of one of those still needs its time
    within the skew window, and the store it targets refuses most repeats anyway)."""

    def __init__(self, capacity: int = 200_000) -> None:
        self.capacity = capacity
        self._seen: OrderedDict[bytes, float] = OrderedDict()

    def __len__(self) -> int:
        return len(self._seen)

    def first_use(self, nonce: bytes, now_s: float) -> bool:
        """Record ``nonce``; False when it was seen before (a replay)."""
        seen = self._seen
        while seen:
            oldest, when = next(iter(seen.items()))
            if now_s - when <= MAX_SKEW_S and len(seen) < self.capacity:
                break
            del seen[oldest]
        if nonce in seen:
            return False
        seen[nonce] = now_s
        return True


def parse_api_header(header: str | None) -> tuple[int, bytes, bytes] | str:
    """``(ts, nonce, mac)`` of an ``X-DF-Auth`` value, or why it is not one."""
    if not header:
        return f"this tracker requires the cluster secret ({AUTH_HEADER} missing)"
    parts = header.split(":")
    try:
        if len(parts) != 3:
            raise ValueError(header)
        ts, nonce, mac = int(parts[0]), bytes.fromhex(parts[1]), bytes.fromhex(parts[2])
    except ValueError:
        return f"{AUTH_HEADER} must be <unix seconds>:<nonce hex>:<hex>"
    if len(nonce) != NONCE_BYTES:
        return f"{AUTH_HEADER} nonce must be {NONCE_BYTES} bytes"
    return ts, nonce, mac


def check_api(
    secret: bytes,
    method: str,
    target: str,
    header: str | None,
    body: bytes,
    now_s: float,
    nonces: NonceCache,
) -> str | None:
    """None when an API request is authentic and new; otherwise why not."""
    parsed = parse_api_header(header)
    if isinstance(parsed, str):
        return parsed
    ts, nonce, mac = parsed
    if abs(now_s - ts) > MAX_SKEW_S:
        return f"{AUTH_HEADER} time is too far from the tracker's clock"
    if not hmac.compare_digest(mac, api_mac(secret, method, target, ts, nonce, body)):
        return f"{AUTH_HEADER} does not match: wrong cluster secret, or the request was altered"
    if not nonces.first_use(nonce, now_s):
        return f"{AUTH_HEADER} was used before: a replayed request"
    return None


def answer_mac(secret: bytes, nonce: bytes, status: int, body: bytes) -> str:
    """The ``X-DF-Auth-Answer`` value of the answer to the request that carried ``nonce``."""
    return _mac(
        secret, ANSWER_CONTEXT, nonce, struct.pack(">H", status), hashlib.sha256(body).digest()
    ).hex()


def check_answer(secret: bytes, nonce: bytes, status: int, body: bytes, header: str | None) -> bool:
    """Whether an answer carries the tracker's proof for our request's ``nonce``."""
    if not header:
        return False
    return hmac.compare_digest(header.strip(), answer_mac(secret, nonce, status, body))


# -- peers --------------------------------------------------------------------------------------


def auth_proof(secret: bytes, task_id: TaskId, nonce: bytes, prover: PeerId) -> bytes:
    """What a peer sends to prove it holds the cluster secret: bound to the task, to the
    challenger's fresh nonce (no replay) and to the prover's own id (no reflection)."""
    return _mac(secret, PEER_CONTEXT, task_id.raw, nonce, prover.raw)


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
