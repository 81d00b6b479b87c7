"""What a request to the proxy is, decided from its method and target alone (pure, no I/O).

Four forms of request target (RFC 9112 3.2) reach the proxy:

* origin-form ``/v2/...``: the registry API of the OCI distribution spec, sent on to an upstream
  registry. Names and digests are checked against the spec's grammar, so nothing like ``..``
  or a percent-encoded slash is ever forwarded; containerd's ``?ns=<registry host>`` picks the
  upstream among the configured ones (else 403) and is removed before forwarding. ``/metrics``
  and ``/healthz`` are the proxy's own.
* absolute-form ``http://host/path``: HTTP proxy mode, decided by the first matching rule.
  The host must be a DNS name, a dotted-quad IPv4 address or a bracketed IPv6 address (what
  the upstream client can reach; anything else is 400, not an upstream failure). A path with a
  dot-segment (``.``/``..``, also percent-encoded) is refused (400), never rewritten: clients
  remove them before sending (RFC 3986 5.2.4), and an upstream that does would serve another
  path than the one the rule allowed. So the URL matched is the URL forwarded.
* authority-form ``host:port`` with CONNECT: a blind tunnel, only where a rule matches.
* anything else: 400.

Also here: the ``Range`` header of a blob GET (RFC 9110 14.2) and header safety checks.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address
from typing import Final
from urllib.parse import unquote, urlsplit

from proxy.config import HOST_RE, ProxyConfig

# OCI distribution spec, "Pulling manifests": <name> is path components joined by "/".
_COMPONENT: Final = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_NAME: Final = rf"{_COMPONENT}(?:/{_COMPONENT})*"
_TAG: Final = r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}"
# OCI image spec, "Digests": algorithm ":" encoded.
_DIGEST: Final = r"[a-z0-9]+(?:[+._-][a-z0-9]+)*:[a-zA-Z0-9=_-]+"
_UPLOAD_ID: Final = r"[A-Za-z0-9][A-Za-z0-9._=-]{0,255}"
_REGISTRY_PATH: Final = re.compile(
    rf"/v2/(?P<name>{_NAME})/(?:"
    rf"manifests/(?P<reference>{_TAG}|{_DIGEST})"
    rf"|blobs/uploads/(?P<upload>{_UPLOAD_ID})?"
    rf"|blobs/(?P<digest>{_DIGEST})"
    rf"|tags/(?P<tags>list)"
    rf"|referrers/(?P<subject>{_DIGEST}))"
)
_SHA256: Final = re.compile(r"sha256:([a-f0-9]{64})")
#: Longest path considered; the spec caps names at 255 characters, so this is generous.
MAX_PATH_CHARS: Final = 2048
MAX_NAME_CHARS: Final = 255
#: Methods passed through to a registry; the spec uses all of them, nothing else.
REGISTRY_METHODS: Final = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_TOKEN: Final = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_FORBIDDEN_IN_VALUE: Final = re.compile(r"[\x00\r\n]")
_ASCII_DIGITS: Final = re.compile(r"[0-9]+")
#: RFC 3986 3.2: host [":" port], with no user info (refused before this is used).
_AUTHORITY: Final = re.compile(r"(?P<host>\[[^\]]*\]|[^:\[\]]*)(?::[0-9]*)?")


@dataclass(frozen=True, slots=True)
class Refused:
    """Answer ``status`` with ``reason`` and forward nothing."""

    status: int
    reason: str
    kind: str = "refused"


@dataclass(frozen=True, slots=True)
class RegistryRoute:
    """A registry API request; ``url`` is where it goes (upstream base + path + query - ns)."""

    kind: str  # ping, catalog, manifest, blob, upload, tags, referrers
    url: str
    name: str | None = None
    #: The blob's sha256 when the path names one: the task identity of a swarm download.
    digest_sha256: bytes | None = None


@dataclass(frozen=True, slots=True)
class ProxyRoute:
    """An absolute-form request (HTTP proxy mode) to ``url``; ``kind`` is the rule's action."""

    kind: str  # proxy_swarm, proxy_direct
    url: str
    digest_sha256: bytes | None = None


@dataclass(frozen=True, slots=True)
class ConnectRoute:
    host: str
    port: int
    kind: str = "connect"


@dataclass(frozen=True, slots=True)
class LocalRoute:
    kind: str  # metrics, healthz


Route = Refused | RegistryRoute | ProxyRoute | ConnectRoute | LocalRoute
#: Every ``kind`` a route can have: the label values of the proxy's request counter.
KINDS: Final = (
    "ping",
    "catalog",
    "manifest",
    "blob",
    "upload",
    "tags",
    "referrers",
    "proxy_swarm",
    "proxy_direct",
    "connect",
    "metrics",
    "healthz",
    "refused",
)


def classify(method: str, target: str, config: ProxyConfig) -> Route:
    """The route of one request (its method and request-target as received)."""
    if _FORBIDDEN_IN_VALUE.search(target) or " " in target:
        return Refused(400, "bad request target")
    if method == "CONNECT":
        return _connect(target, config)
    if target.startswith("/"):
        return _origin_form(method, target, config)
    if target[:8].lower().startswith(("http://", "https://")):
        return _absolute_form(method, target, config)
    return Refused(400, "request target must be /path, an absolute URL, or CONNECT host:port")


def _origin_form(method: str, target: str, config: ProxyConfig) -> Route:
    path, _, query = target.partition("?")
    if path in ("/metrics", "/healthz"):
        if method not in ("GET", "HEAD"):
            return Refused(405, "use GET")
        return LocalRoute(path[1:])
    if not (path == "/v2" or path.startswith("/v2/")):
        return Refused(404, "not found: the mirror serves /v2/")
    if method not in REGISTRY_METHODS:
        return Refused(405, f"method {method} is not part of the registry API")
    if len(path) > MAX_PATH_CHARS:
        return Refused(414, "path too long")
    try:
        upstream, query = _upstream_for(query, config)
    except _Refusal as exc:
        return exc.refused
    url = upstream + path + (f"?{query}" if query else "")
    if path in ("/v2", "/v2/"):
        return RegistryRoute("ping", url)
    if path == "/v2/_catalog":
        return RegistryRoute("catalog", url)
    match = _REGISTRY_PATH.fullmatch(path)
    if match is None:
        if path.startswith("/v2/") and "/blobs/sha256:" in path:
            return Refused(400, "bad digest or repository name")
        return Refused(404, "not a registry API path (bad repository name or digest?)")
    name = match["name"]
    if len(name) > MAX_NAME_CHARS:
        return Refused(400, f"repository name longer than {MAX_NAME_CHARS} characters")
    if match["reference"] is not None:
        return RegistryRoute("manifest", url, name)
    if match["digest"] is not None:
        digest = match["digest"]
        if digest.startswith("sha256:"):
            sha = _SHA256.fullmatch(digest)
            if sha is None:
                return Refused(400, "sha256 digest must be 64 lower-case hex digits")
            return RegistryRoute("blob", url, name, bytes.fromhex(sha[1]))
        return RegistryRoute("blob", url, name)  # another algorithm: passed through
    if match["tags"] is not None:
        return RegistryRoute("tags", url, name)
    if match["subject"] is not None:
        return RegistryRoute("referrers", url, name)
    return RegistryRoute("upload", url, name)


class _Refusal(Exception):
    def __init__(self, refused: Refused) -> None:
        super().__init__(refused.reason)
        self.refused = refused


def _upstream_for(query: str, config: ProxyConfig) -> tuple[str, str]:
    """The upstream base URL and the query without ``ns`` (containerd's registry host)."""
    kept, named = [], []
    for item in query.split("&") if query else ():
        if item.startswith("ns="):
            named.append(unquote(item[3:]).lower())
        else:
            kept.append(item)
    rest = "&".join(kept)
    if len(named) > 1:
        raise _Refusal(Refused(400, "more than one ns parameter"))
    if named:
        host = named[0]
        if not HOST_RE.fullmatch(host):
            raise _Refusal(Refused(400, "ns must name a registry host[:port]"))
        upstream = config.allowed_ns.get(host)
        if upstream is None:
            raise _Refusal(Refused(403, f"registry {host} is not configured on this mirror"))
        return upstream, rest
    if config.upstream is None:
        raise _Refusal(Refused(404, "no upstream registry configured (registry_mirror)"))
    return config.upstream, rest


def _absolute_form(method: str, target: str, config: ProxyConfig) -> Route:
    url = target.partition("#")[0]
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return Refused(400, "bad absolute URL")
    if not parts.hostname or parts.username is not None or port == 0:
        return Refused(400, "absolute URL needs a host (and no user info)")
    # The host as written: urlsplit's hostname is lenient (``127.[::1]`` gives ``::1``).
    authority = _AUTHORITY.fullmatch(parts.netloc.lower())
    if authority is None or not _valid_host(authority["host"]):
        return Refused(400, "absolute URL needs a DNS name, an IPv4 or a [IPv6] address")
    if _has_dot_segment(parts.path):
        return Refused(400, "dot-segments (. or ..) in the path of an absolute URL")
    # RFC 3986 6.2.2.1: scheme and host are case-insensitive; rules see them in lower case.
    rest = url[len(parts.scheme) + 3 + len(parts.netloc) :]
    url = f"{parts.scheme.lower()}://{parts.netloc.lower()}{rest}"
    action = _rule_action(url, config)
    if action is None:
        return Refused(403, "no proxy rule allows this URL")
    if action == "swarm" and method == "GET":
        sha = _blob_digest(parts.path)
        return ProxyRoute("proxy_swarm", url, sha)
    return ProxyRoute("proxy_direct", url)


def _valid_host(host: str) -> bool:
    """``host`` (lower case, IPv6 in brackets, no port) is a DNS name, a dotted-quad IPv4
    address or an IPv6 address: what the upstream client connects to. All-numeric names other
    than a dotted quad (``127.1``, ``127.0.0.1.``) are refused as aiohttp refuses them."""
    if host.startswith("["):
        try:
            IPv6Address(host[1:-1])
        except ValueError:
            return False
        return host.endswith("]")
    if not HOST_RE.fullmatch(host) or ":" in host:
        return False
    if host.replace(".", "").isdigit():  # ASCII here: HOST_RE matched
        try:
            IPv4Address(host)  # rejects leading zeros and values above 255
        except ValueError:
            return False
    return True


def _has_dot_segment(path: str) -> bool:
    """A ``.`` or ``..`` segment in ``path`` once percent-decoded (``%2e`` is ``.``, RFC 3986
    6.2.2.2); ``%2f`` and ``\\`` count as separators too, as some upstreams treat them."""
    decoded = unquote(path).replace("\\", "/")
    return any(segment in (".", "..") for segment in decoded.split("/"))


def _blob_digest(path: str) -> bytes | None:
    """The sha256 of a registry blob path, so a blob fetched via HTTP_PROXY is the same task."""
    match = _REGISTRY_PATH.fullmatch(path)
    if match is None or match["digest"] is None:
        return None
    sha = _SHA256.fullmatch(match["digest"])
    return bytes.fromhex(sha[1]) if sha is not None else None


def _connect(target: str, config: ProxyConfig) -> Route:
    host, sep, port_text = target.rpartition(":")
    if not sep or not _ASCII_DIGITS.fullmatch(port_text) or len(port_text) > 5:
        return Refused(400, "CONNECT needs host:port")
    port = int(port_text)
    host = host.lower()
    if not 0 < port <= 65535 or not _valid_host(host):
        return Refused(400, "CONNECT needs host:port")
    candidate = f"https://{host}/" if port == 443 else f"https://{host}:{port}/"
    if _rule_action(candidate, config) is None:
        return Refused(403, "no proxy rule allows tunnels to this host")
    return ConnectRoute(host.strip("[]"), port)


def _rule_action(url: str, config: ProxyConfig) -> str | None:
    for rule in config.rules:
        if rule.pattern.search(url):
            return rule.action
    return None


# -- Range (RFC 9110 14.2) --------------------------------------------------------------------


class RangeNotSatisfiable(ValueError):
    """Answer 416 with ``Content-Range: bytes */size``."""


@dataclass(frozen=True, slots=True)
class ByteRange:
    """Bytes ``[start, end)`` of a representation of ``size_bytes``."""

    start: int
    end: int
    size_bytes: int

    @property
    def content_range(self) -> str:
        return f"bytes {self.start}-{self.end - 1}/{self.size_bytes}"


#: Digits are unbounded (RFC 9110 14.1.2: a last-pos past the end means "to the end"); the
#: header's length is what is bounded, so ``int`` never sees a huge number.
_RANGE_SPEC: Final = re.compile(r"([0-9]*)-([0-9]*)")
#: A longer ``Range`` header is ignored (the whole blob is sent), as RFC 9110 14.2 permits.
MAX_RANGE_CHARS: Final = 256


def parse_range(value: str | None, size_bytes: int) -> ByteRange | None:
    """The one byte range a ``Range`` header asks for, or None to send the whole blob.

    None for no header, another unit, several ranges or a header over ``MAX_RANGE_CHARS`` (a
    server may answer those with the whole representation, RFC 9110 14.2).
    ``RangeNotSatisfiable`` for a ``bytes`` range that is malformed, reversed (``5-2``), starts
    at or past the end, or asks for an empty suffix. A last-pos past the end means "to the end"
    and a suffix longer than the blob means all of it (RFC 9110 14.1.2).
    """
    if value is None or len(value) > MAX_RANGE_CHARS:
        return None
    unit, sep, spec = value.strip().partition("=")
    if not sep or unit.strip().lower() != "bytes":
        return None
    spec = spec.strip()
    if "," in spec:
        return None
    match = _RANGE_SPEC.fullmatch(spec)
    if match is None or not (match[1] or match[2]):
        raise RangeNotSatisfiable(f"malformed byte range {spec!r}")
    if not match[1]:  # suffix: the last N bytes
        suffix = int(match[2])
        if suffix == 0 or size_bytes == 0:
            raise RangeNotSatisfiable("empty suffix range")
        return ByteRange(max(0, size_bytes - suffix), size_bytes, size_bytes)
    first = int(match[1])
    last = int(match[2]) if match[2] else size_bytes - 1
    if match[2] and last < first:
        raise RangeNotSatisfiable(f"reversed byte range {spec!r}")
    if first >= size_bytes:
        raise RangeNotSatisfiable(f"range starts at {first}, the blob has {size_bytes} bytes")
    return ByteRange(first, min(last, size_bytes - 1) + 1, size_bytes)


def check_header(name: str, value: str) -> None:
    """ValueError unless ``name`` is a token and ``value`` has no CR, LF or NUL (RFC 9110 5.5):
    a header built from anything received must not be able to start another header."""
    if not _TOKEN.fullmatch(name):
        raise ValueError(f"bad header name {name!r}")
    if _FORBIDDEN_IN_VALUE.search(value):
        raise ValueError(f"header {name} has CR, LF or NUL in its value")
