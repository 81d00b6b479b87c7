"""Task identity: which downloads are the same task, and so share one swarm (step 1 of a download).

Two ``dfget`` runs join the same swarm exactly when their task ids are equal, so the id must be
stable across hosts and blind to what differs between them without changing the bytes:

* With ``--digest sha256:...`` the content digest *is* the identity: the same blob served by two
  registries or mirrors is one task, whatever its URL, filters or tag.
* Otherwise the id covers the normalised URL (``normalize_url``: query parameters named by
  ``--filter``, such as signatures and expiries, removed) and the ``--tag``.
* Headers (authentication, cookies) never enter the identity: hosts with different credentials
  for the same file still share it.

The 20-byte id travels as the BitTorrent ``info_hash`` (BEP 3).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from typing import Final
from urllib.parse import unquote, urlsplit

from peerwire.ids import ID_LENGTH, TaskId

#: Longest URL accepted (signed object-store URLs run to a few KiB; beyond this is a mistake).
MAX_URL_CHARS: Final = 32 * 1024
#: Domain separation: these prefixes make a task id never collide with another use of sha256.
_DIGEST_DOMAIN: Final = b"dragonfly-task\0sha256:"
_URL_DOMAIN: Final = b"dragonfly-task\0url\0"
_DEFAULT_PORTS: Final = {"http": 80, "https": 443}
_SHA256_HEX = re.compile(r"[0-9a-fA-F]{64}")
# RFC 3986 section 2: no spaces or control characters anywhere in a URI.
_FORBIDDEN = re.compile(r"[\x00-\x20\x7f]")


def normalize_url(url: str, filters: Sequence[str] = ()) -> str:
    """The URL as the task identity sees it.

    Scheme and host are lower-cased and a default port (``:80`` for http, ``:443`` for https) is
    dropped (RFC 3986 section 6.2.2-6.2.3: same resource); an empty path becomes ``/``, which
    is what an HTTP client requests anyway. The fragment is dropped: it never reaches the server.
    Query parameters whose name is in ``filters`` are removed - a name matches exactly and case
    sensitively, after percent-decoding, since ``X%2DSig`` and ``X-Sig`` are the same parameter
    to the server. Every other parameter keeps its position and exact spelling: servers may
    treat order and encoding as significant, so we do not rewrite them. User info
    (``user:password@``) is dropped: like headers, credentials never enter the identity.

    ValueError for a URL that is not ``http://`` or ``https://``, has no host, has an invalid
    port, contains spaces or control characters, or is longer than ``MAX_URL_CHARS``.
    """
    if len(url) > MAX_URL_CHARS:
        raise ValueError(f"URL is longer than {MAX_URL_CHARS} characters: {url[:80]!r}...")
    if _FORBIDDEN.search(url):
        raise ValueError(f"URL contains spaces or control characters: {url[:200]!r}")
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS:
        raise ValueError(f"only http:// and https:// URLs can be downloaded, not {url[:200]!r}")
    host = parts.hostname
    if not host:
        raise ValueError(f"URL has no host: {url[:200]!r}")
    try:
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"URL has an invalid port: {url[:200]!r}") from exc
    netloc = f"[{host}]" if ":" in host else host
    if port is not None and port != _DEFAULT_PORTS[scheme]:
        netloc = f"{netloc}:{port}"
    path = parts.path or "/"
    query = _filter_query(parts.query, frozenset(filters))
    return f"{scheme}://{netloc}{path}" + (f"?{query}" if query else "")


def _filter_query(query: str, filters: frozenset[str]) -> str:
    """``query`` without the parameters named in ``filters``; the rest byte for byte, in order."""
    if not query or not filters:
        return query
    kept = [item for item in query.split("&") if unquote(item.partition("=")[0]) not in filters]
    return "&".join(kept)


def task_id_for(
    url: str,
    *,
    filters: Sequence[str] = (),
    tag: str = "",
    digest_sha256: bytes | None = None,
) -> TaskId:
    """The 20-byte task id of a download (see the module docstring for what enters it).

    With a digest: ``sha256(b"dragonfly-task\\0sha256:" + hex digest)[:20]``; URL, filters and tag
    are ignored. Without: ``sha256(b"dragonfly-task\\0url\\0" + normalize_url(url, filters) +
    b"\\0" + tag)[:20]``. The URL is validated either way, so a bad URL fails the same with or
    without ``--digest``.
    """
    normalized = normalize_url(url, filters)
    if digest_sha256 is not None:
        if len(digest_sha256) != hashlib.sha256().digest_size:
            raise ValueError(f"a sha256 digest is 32 bytes, got {len(digest_sha256)}")
        material = _DIGEST_DOMAIN + digest_sha256.hex().encode()
    else:
        material = _URL_DOMAIN + normalized.encode() + b"\0" + tag.encode()
    return TaskId(hashlib.sha256(material).digest()[:ID_LENGTH])


def parse_digest(text: str) -> bytes:
    """``sha256:<64 hex digits>`` (either case) -> the 32 digest bytes; ValueError otherwise."""
    algorithm, colon, value = text.strip().partition(":")
    if not colon:
        raise ValueError(f"digest must be written sha256:<64 hex digits>, not {text[:100]!r}")
    if algorithm.lower() != "sha256":
        raise ValueError(f"digest algorithm {algorithm[:20]!r}: only sha256 is supported")
    if not _SHA256_HEX.fullmatch(value):
        raise ValueError(f"digest {text[:100]!r}: sha256 needs exactly 64 hex digits (0-9, a-f)")
    return bytes.fromhex(value)
