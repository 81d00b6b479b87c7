"""The tracker's BitTorrent face as pure functions: query bytes in, values out, bencode back.

``parse_announce`` / ``parse_scrape`` read the query string of ``GET /announce`` (BEP 3, 7, 23
plus our ``df_*`` extension parameters) and ``GET /scrape`` (BEP 48); ``encode_*`` turn the
swarm's answers into bencoded bodies with the ``bencode.py`` package. ``parse_report`` reads the
JSON body of ``POST /tasks/<id>/reports``. No I/O, no clock: the server calls these.

Everything a client sends is bounded and checked here; a bad announce raises ``AnnounceError``,
whose text goes back verbatim as the bencoded ``failure reason`` (so it names the parameter and
never echoes more than a few bytes of what the client sent).
"""

from __future__ import annotations

import codecs
import ipaddress
import json
from collections.abc import Mapping
from socket import AF_INET, AF_INET6, inet_ntop, inet_pton
from typing import Any, Final

from peerwire import bencoding
from tracker.model import ID_BYTES, AnnounceRequest, AnnounceResult, Event, PeerReport, ScrapeCounts

__all__ = [
    "AnnounceError",
    "encode_announce",
    "encode_failure",
    "encode_scrape",
    "parse_announce",
    "parse_query",
    "parse_report",
    "parse_scrape",
]

#: Integers in a query are ASCII digits only, at most this many (2**64 has 20 digits).
MAX_INT_DIGITS: Final = 20
#: ``df_have`` bitfield: one bit per piece, 1,048,576 pieces at most.
MAX_HAVE_BYTES: Final = 131_072
#: ``df_zone``: a short locality label, in UTF-8 bytes.
MAX_ZONE_BYTES: Final = 64
#: BEP 3 ``key``: clients send 4 to 20 bytes; anything longer is refused (the swarm keeps it).
MAX_KEY_BYTES: Final = 64
#: Longest parameter name quoted back in an error message, in input bytes.
MAX_ECHO_BYTES: Final = 32
#: ``POST /tasks/<id>/reports``: bounds on the JSON body and its fields.
MAX_REPORT_BYTES: Final = 4096
MAX_REASON_CHARS: Final = 64
MAX_ADDRESS_CHARS: Final = 300


class AnnounceError(ValueError):
    """The client's announce or scrape cannot be honoured; ``str(exc)`` is the failure reason.

    BEP 3: a tracker answers a bad request with a dict holding only ``failure reason``, so the
    text is short, names the offending parameter in quotes and never repeats client input.
    """


# --- query strings ------------------------------------------------------------------------------


def _show(name: bytes) -> str:
    """A parameter name fit for an error message: at most ``MAX_ECHO_BYTES`` of it, escaped."""
    shown = name[:MAX_ECHO_BYTES].decode("ascii", "backslashreplace")
    return shown + "..." if len(name) > MAX_ECHO_BYTES else shown


def _unquote(text: bytes, name: bytes) -> bytes:
    """RFC 3986 percent-decoding to bytes: ``%XX`` (either case) -> one byte, the rest as is.

    Unlike ``urllib.parse.unquote_to_bytes``, a ``%`` not followed by two hex digits is an
    error rather than a literal, so a mangled ``info_hash`` is refused instead of misread.
    ``+`` stays ``+``. Done in C by CPython's bytes-escape decoder (what ``pickle`` uses for
    protocol 0 strings): with every ``\\`` doubled, the only escapes left are ``\\\\`` and the
    ``\\xHH`` that each ``%`` became, and a short or non-hex ``\\x`` is a ValueError. About 6x
    faster than a Python loop over the escapes of a 20-byte binary ``info_hash``.
    """
    if b"\\" in text:
        text = text.replace(b"\\", b"\\\\")
    try:
        return codecs.escape_decode(text.replace(b"%", b"\\x"))[0]
    except ValueError:
        raise AnnounceError(f"malformed %-escape in parameter '{_show(name)}'") from None


def parse_query(raw: bytes, *, max_params: int = 64) -> list[tuple[bytes, bytes]]:
    """Split a query string into (name, value) byte pairs, in order, repeats kept.

    Split on ``&``, then on the first ``=`` (a segment without one has the value ``b""``);
    empty segments are skipped. Names and values are percent-decoded byte-exactly: no UTF-8
    decoding and ``+`` stays ``+`` (BitTorrent's ``info_hash`` and ``peer_id`` are binary).
    """
    segments = raw.split(b"&")
    if len(segments) > max_params:
        segments = [segment for segment in segments if segment]
        if len(segments) > max_params:
            raise AnnounceError(f"too many query parameters (at most {max_params})")
    pairs: list[tuple[bytes, bytes]] = []
    append = pairs.append
    for segment in segments:
        if not segment:
            continue
        name, _, value = segment.partition(b"=")
        if b"%" in segment:  # most segments of an announce need no unquoting
            if b"%" in name:
                name = _unquote(name, name)
            if b"%" in value:
                value = _unquote(value, name)
        append((name, value))
    return pairs


def _integer(name: str, raw: bytes) -> int:
    """A non-negative decimal integer: ASCII digits only (no sign, space or ``_``), bounded."""
    if not raw.isdigit() or len(raw) > MAX_INT_DIGITS:
        raise AnnounceError(
            f"'{name}' must be a decimal integer of at most {MAX_INT_DIGITS} digits"
        )
    return int(raw)


# --- addresses ----------------------------------------------------------------------------------

_V4_MAPPED_PREFIX: Final = b"\x00" * 10 + b"\xff\xff"
_IPV4_CHARS: Final = frozenset(b"0123456789.")


def _packed(literal: str) -> tuple[bytes | None, bytes | None]:
    """``(ip4, ip6)`` of one IP literal, an IPv4-mapped IPv6 address counting as IPv4.

    OSError or ValueError when ``literal`` is not an address (``inet_pton`` is strict: no
    ``127.1`` shorthand, no hostnames).
    """
    if ":" not in literal:
        return inet_pton(AF_INET, literal), None
    packed = inet_pton(AF_INET6, literal)
    if packed[:12] == _V4_MAPPED_PREFIX:
        return packed[12:], None
    return None, packed


def _connection_address(remote_ip: str) -> tuple[bytes | None, bytes | None]:
    """The socket's peer address (``::ffff:a.b.c.d`` counts as IPv4); (None, None) if unusable."""
    try:
        # A link-local IPv6 peer may come with a zone (``fe80::1%eth0``): not part of the address.
        return _packed(remote_ip.partition("%")[0])
    except (OSError, ValueError):
        return None, None


def _address_host(name: str, raw: bytes) -> bytes:
    """The address part of a client-supplied ``ip`` / ``ipv4`` / ``ipv6`` value.

    Accepts ``a.b.c.d``, ``a.b.c.d:port``, a bare IPv6 literal and ``[v6]:port`` (BEP 7); the
    port is dropped, since BEP 3 ``port`` is the one other peers dial.
    """
    if raw.startswith(b"["):
        host, bracket, port = raw[1:].partition(b"]")
        if not bracket or (port and not (port[:1] == b":" and port[1:].isdigit())):
            raise AnnounceError(f"'{name}' is not a valid IP address")
        return host
    if raw.count(b":") == 1:
        host, _, port = raw.partition(b":")
        if not port.isdigit():
            raise AnnounceError(f"'{name}' is not a valid IP address")
        return host
    return raw


def _is_hostname(host: bytes) -> bool:
    """Neither an IPv6 literal (has ``:``) nor shaped like dotted IPv4 (digits and dots)."""
    return b":" not in host and not _IPV4_CHARS.issuperset(host)


def _address_literal(name: str, host: bytes) -> tuple[bytes | None, bytes | None]:
    """``(ip4, ip6)`` of a client-supplied literal; AnnounceError naming the parameter."""
    try:
        return _packed(host.decode("ascii"))
    except (OSError, ValueError):
        raise AnnounceError(f"'{name}' is not a valid IP address") from None


def _trusted_address(
    params: Mapping[bytes, bytes], ip4: bytes | None, ip6: bytes | None
) -> tuple[bytes | None, bytes | None]:
    """Apply ``ip``, ``ipv4``, ``ipv6`` from a client the operator trusts (behind a NAT/proxy).

    ``ip`` replaces the connection's address; BEP 3 allows a DNS name there, which is ignored
    (a tracker that resolves client-supplied names can be aimed at third parties). BEP 7
    ``ipv4`` / ``ipv6`` then set their own family.
    """
    raw = params.get(b"ip")
    if raw:
        host = _address_host("ip", raw)
        if not _is_hostname(host):
            ip4, ip6 = _address_literal("ip", host)
    raw = params.get(b"ipv4")
    if raw:
        v4, _ = _address_literal("ipv4", _address_host("ipv4", raw))
        if v4 is None:
            raise AnnounceError("'ipv4' is not a valid IPv4 address")
        ip4 = v4
    raw = params.get(b"ipv6")
    if raw:
        host = _address_host("ipv6", raw)
        if b":" not in host:
            raise AnnounceError("'ipv6' is not a valid IPv6 address")
        v4, v6 = _address_literal("ipv6", host)
        if v6 is None:  # an IPv4-mapped address: the peer is reachable over IPv4
            ip4 = v4
        else:
            ip6 = v6
    return ip4, ip6


# --- announce and scrape ------------------------------------------------------------------------

_EVENTS: Final = {event.value: event for event in Event}


def parse_announce(
    query: bytes,
    remote_ip: str,
    *,
    trust_ip: bool = False,
    numwant_default: int = 50,
    numwant_max: int = 200,
) -> AnnounceRequest:
    """``GET /announce`` query string -> ``AnnounceRequest`` (BEP 3, 7, 23 and ``df_*``).

    The first occurrence of a repeated parameter wins; unknown parameters (``supportcrypto``,
    ``corrupt``, ``trackerid``, ...) are ignored. The peer's address is ``remote_ip``, the
    connection's source; only with ``trust_ip`` do ``ip`` (replaces it), ``ipv4`` and ``ipv6``
    (set that family) count, and then an invalid literal is an error rather than ignored.
    """
    # dict() keeps the last of equal keys; feeding it reversed keeps the first.
    params = dict(reversed(parse_query(query)))
    get = params.get

    info_hash = get(b"info_hash")
    if info_hash is None:
        raise AnnounceError("missing parameter 'info_hash'")
    if len(info_hash) != ID_BYTES:  # BEP 3: the 20-byte SHA-1 of the info dict (our task id)
        raise AnnounceError(f"'info_hash' must be 20 bytes, not {len(info_hash)}")
    peer_id = get(b"peer_id")
    if peer_id is None:
        raise AnnounceError("missing parameter 'peer_id'")
    if len(peer_id) != ID_BYTES:
        raise AnnounceError(f"'peer_id' must be 20 bytes, not {len(peer_id)}")
    raw = get(b"port")
    if raw is None:
        raise AnnounceError("missing parameter 'port'")
    port = _integer("port", raw)
    if port > 65535:
        raise AnnounceError("'port' must be in 0..65535")

    raw = get(b"uploaded")
    uploaded = 0 if raw is None else _integer("uploaded", raw)
    raw = get(b"downloaded")
    downloaded = 0 if raw is None else _integer("downloaded", raw)
    raw = get(b"left")
    left = None if raw is None else _integer("left", raw)
    raw = get(b"event", b"")
    event = _EVENTS.get(raw)
    if event is None:
        raise AnnounceError("'event' must be started, completed, stopped or empty")
    raw = get(b"numwant")
    numwant = numwant_default if raw is None else min(_integer("numwant", raw), numwant_max)
    key = get(b"key")
    if key is not None and len(key) > MAX_KEY_BYTES:
        raise AnnounceError(f"'key' must be at most {MAX_KEY_BYTES} bytes")

    ip4, ip6 = _connection_address(remote_ip)
    if trust_ip:
        ip4, ip6 = _trusted_address(params, ip4, ip6)
    if ip4 is None and ip6 is None:
        raise AnnounceError("cannot tell this peer's IP address")

    have = get(b"df_have")
    if have is not None and len(have) > MAX_HAVE_BYTES:
        raise AnnounceError(f"'df_have' must be at most {MAX_HAVE_BYTES} bytes")
    raw = get(b"df_load")
    load = None if raw is None else _integer("df_load", raw)
    raw = get(b"df_zone")
    zone = ""
    if raw:
        if len(raw) > MAX_ZONE_BYTES:
            raise AnnounceError(f"'df_zone' must be at most {MAX_ZONE_BYTES} bytes")
        try:
            zone = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise AnnounceError("'df_zone' must be UTF-8 text") from None
    raw = get(b"df_origin")
    origin = 0 if raw is None else _integer("df_origin", raw)
    raw = get(b"df_ts")
    auth_ts = None if raw is None else _integer("df_ts", raw)
    raw = get(b"df_seq")
    seq = None if raw is None else _integer("df_seq", raw)
    auth = get(b"df_auth")
    if auth is not None and len(auth) != 32:
        raise AnnounceError("'df_auth' must be 32 bytes (HMAC-SHA256)")

    return AnnounceRequest(
        info_hash=info_hash,
        peer_id=peer_id,
        port=port,
        uploaded_bytes=uploaded,
        downloaded_bytes=downloaded,
        left_bytes=left,
        event=event,
        numwant=numwant,
        compact=get(b"compact") != b"0",  # BEP 23: compact unless told 0
        no_peer_id=get(b"no_peer_id") == b"1",
        key=key,
        ip4=ip4,
        ip6=ip6,
        have=have,
        load=load,
        zone=zone,
        can_source=get(b"df_source") == b"1",
        origin_bytes=origin,
        auth_ts=auth_ts,
        auth=auth,
        seq=seq,
    )


def parse_scrape(query: bytes, *, max_hashes: int = 64) -> tuple[bytes, ...]:
    """BEP 48 ``GET /scrape`` query -> the ``info_hash`` values asked for, in order, unique.

    ``()`` means no ``info_hash`` at all: a full scrape, which the caller may refuse.
    """
    found: dict[bytes, None] = {}
    # Room for the hashes, a few repeats and a few unrelated parameters (a passkey, ...).
    for name, value in parse_query(query, max_params=max_hashes + 16):
        if name != b"info_hash":
            continue
        if len(value) != ID_BYTES:
            raise AnnounceError(f"'info_hash' must be 20 bytes, not {len(value)}")
        found[value] = None
        if len(found) > max_hashes:
            raise AnnounceError(f"too many 'info_hash' (at most {max_hashes})")
    return tuple(found)


def encode_announce(result: AnnounceResult, *, compact: bool, no_peer_id: bool) -> bytes:
    """Bencode the swarm's answer to one announce.

    Compact (BEP 23): ``peers`` is the concatenated 6-byte IPv4 entries (present even when
    empty) and ``peers6`` (BEP 7) the 18-byte IPv6 entries, only when there are any. Otherwise
    (BEP 3) ``peers`` is a list of ``{ip, port, peer id}`` dicts, one per address of a peer,
    ``peer id`` omitted when the client said ``no_peer_id``. ``df *`` keys as the README lists them.
    """
    response: dict[bytes, Any] = {
        b"interval": result.interval_s,
        b"min interval": result.min_interval_s,
        b"complete": result.complete,
        b"incomplete": result.incomplete,
    }
    peers = result.peers
    if compact and result.packed is not None:
        response[b"peers"] = result.packed[0]
        if result.packed[1]:
            response[b"peers6"] = result.packed[1]
    elif compact:
        response[b"peers"] = b"".join([p.compact4 for p in peers if p.compact4 is not None])
        peers6 = b"".join([p.compact6 for p in peers if p.compact6 is not None])
        if peers6:
            response[b"peers6"] = peers6
    else:
        entries: list[dict[bytes, Any]] = []
        for peer in peers:
            for family, packed in ((AF_INET, peer.ip4), (AF_INET6, peer.ip6)):
                if packed is None:
                    continue
                entry: dict[bytes, Any] = {b"ip": inet_ntop(family, packed), b"port": peer.port}
                if not no_peer_id:
                    entry[b"peer id"] = peer.peer_id
                entries.append(entry)
        response[b"peers"] = entries
    if result.assignment:
        response[b"df assign"] = result.assignment
        response[b"df assign ttl"] = result.assignment_ttl_s
    if result.pieces_known is not None:
        response[b"df known"] = result.pieces_known
    encoded: bytes = bencoding.encode(response)
    return encoded


def encode_failure(reason: str) -> bytes:
    """BEP 3: a refusal is a dict holding only ``failure reason`` (sent with HTTP 200)."""
    encoded: bytes = bencoding.encode({b"failure reason": reason})
    return encoded


def encode_scrape(files: Mapping[bytes, ScrapeCounts]) -> bytes:
    """BEP 48: ``{files: {info_hash: {complete, downloaded, incomplete}}}``."""
    encoded: bytes = bencoding.encode(
        {
            b"files": {
                info_hash: {
                    b"complete": counts.complete,
                    b"downloaded": counts.downloaded,
                    b"incomplete": counts.incomplete,
                }
                for info_hash, counts in files.items()
            }
        }
    )
    return encoded


# --- reports (JSON) -----------------------------------------------------------------------------


def _peer_id_field(document: Mapping[str, Any], name: str) -> bytes | None:
    """A 40-hex-digit peer id field as its 20 bytes; None when absent."""
    value = document.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or len(value) != 2 * ID_BYTES:
        raise ValueError(f"report: {name!r} must be a peer id of 40 hex digits")
    try:
        packed = bytes.fromhex(value)
    except ValueError:
        raise ValueError(f"report: {name!r} must be a peer id of 40 hex digits") from None
    if len(packed) != ID_BYTES:  # fromhex skips spaces: "aa bb..." is not 40 hex digits
        raise ValueError(f"report: {name!r} must be a peer id of 40 hex digits")
    return packed


def _address_field(value: Any) -> str:
    """``host:port`` / ``[v6]:port``; IP literals normalised as ``PeerContact.address`` does."""
    problem = "report: 'address' must be 'host:port' or '[ipv6]:port'"
    if not isinstance(value, str) or not 0 < len(value) <= MAX_ADDRESS_CHARS:
        raise ValueError(problem)
    host, colon, port_text = value.rpartition(":")
    if not colon or not (port_text.isascii() and port_text.isdigit()) or len(port_text) > 5:
        raise ValueError(problem)
    port = int(port_text)
    if not 0 < port <= 65535:
        raise ValueError(problem)
    bracketed = host.startswith("[") and host.endswith("]")
    literal = host[1:-1] if bracketed else host
    try:
        address = ipaddress.ip_address(literal)
    except ValueError:
        if bracketed or not (host.isascii() and host.replace(".", "").replace("-", "").isalnum()):
            raise ValueError(problem) from None
        return f"{host.lower()}:{port}"  # a hostname
    if isinstance(address, ipaddress.IPv6Address):
        if not bracketed:
            raise ValueError(problem)
        if address.ipv4_mapped is not None:
            return f"{address.ipv4_mapped}:{port}"
        return f"[{address}]:{port}"
    return f"{address}:{port}"


#: A report's reason when the reporter read from the origin something the task's manifest
#: contradicts (no peer is named: the manifest is the subject).
MANIFEST_REFUTED: Final = "manifest_refuted"


def parse_report(body: bytes) -> PeerReport:
    """``POST /tasks/<id>/reports`` JSON body -> ``PeerReport``; ValueError says what is wrong.

    ``reporter`` (40 hex) and ``reason`` (1..64 characters) are required, and at least one of
    ``peer`` (40 hex) and ``address`` (``host:port``), unless the reason is ``manifest_refuted``
    (the manifest is the subject). Unknown fields are ignored.
    """
    if len(body) > MAX_REPORT_BYTES:
        raise ValueError(f"report: body larger than {MAX_REPORT_BYTES} bytes")
    try:
        document = json.loads(body)
    except RecursionError:
        raise ValueError("report: JSON nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
        raise ValueError(f"report: body is not valid JSON ({exc})") from None
    if not isinstance(document, dict):
        raise ValueError("report: body must be a JSON object")
    reporter = _peer_id_field(document, "reporter")
    if reporter is None:
        raise ValueError("report: missing 'reporter'")
    reason = document.get("reason")
    if not isinstance(reason, str) or not 0 < len(reason) <= MAX_REASON_CHARS:
        raise ValueError(f"report: 'reason' must be text of 1..{MAX_REASON_CHARS} characters")
    peer_id = _peer_id_field(document, "peer")
    raw_address = document.get("address")
    address = None if raw_address is None else _address_field(raw_address)
    if peer_id is None and address is None and not reason.startswith(MANIFEST_REFUTED):
        raise ValueError("report: one of 'peer' and 'address' is required")
    return PeerReport(reporter=reporter, reason=reason, peer_id=peer_id, address=address)
