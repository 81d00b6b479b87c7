"""The proxy's HTTP client to upstream registries and origins: a faithful pass-through.

What the client sent is what the upstream gets, except what belongs to one hop (RFC 9110 7.6.1):
``Connection`` and the headers it names, ``Keep-Alive``, ``Proxy-*``, ``TE``, ``Trailer``,
``Transfer-Encoding``, ``Upgrade``. Repeated headers stay repeated and in order (clients send
several ``Accept`` lines; collapsing them changes what a registry answers), ``Authorization``
goes along, ``Host`` names the upstream, and nothing is added (no ``User-Agent``, ``Accept`` or
``Accept-Encoding`` of our own). The URL is sent byte for byte as received (no re-quoting).
Bodies stream both ways and are never decompressed; redirects are returned, not followed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterable, AsyncIterator, Iterable
from contextlib import asynccontextmanager
from typing import Final

import aiohttp
from yarl import URL

log = logging.getLogger(__name__)

HOP_BY_HOP: Final = frozenset(
    {"connection", "keep-alive", "te", "trailer", "transfer-encoding", "upgrade"}
)
#: Headers the client addresses to the proxy itself, never forwarded.
_PROXY_OWN: Final = frozenset({"host", "expect"})
#: Headers aiohttp would add on its own; a faithful proxy sends only what the client sent.
_NO_AUTO_HEADERS: Final = ("User-Agent", "Accept", "Accept-Encoding", "Content-Type")
#: Names the proxy in the upstream's logs on the requests that are its own (permission HEADs).
USER_AGENT: Final = "dragonfly-dfdaemon-proxy"


def end_to_end(headers: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """``headers`` without the hop-by-hop ones, order and repeats kept (RFC 9110 7.6.1)."""
    pairs = list(headers)
    named = {
        token.strip().lower()
        for name, value in pairs
        if name.lower() == "connection"
        for token in value.split(",")
    }
    return [
        (name, value)
        for name, value in pairs
        if (lower := name.lower()) not in HOP_BY_HOP
        and lower not in named
        and not lower.startswith("proxy-")
    ]


def request_headers(headers: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """The client's headers as the upstream gets them (``Host`` is set from the URL)."""
    return [(n, v) for n, v in end_to_end(headers) if n.lower() not in _PROXY_OWN]


def response_headers(response: aiohttp.ClientResponse) -> list[tuple[str, str]]:
    """The upstream's response headers as received, repeats kept, hop-by-hop ones removed."""
    raw = ((n.decode("latin-1"), v.decode("latin-1")) for n, v in response.raw_headers)
    return end_to_end(raw)


def credentials(headers: Iterable[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
    """The client's ``Authorization`` header(s): what the upstream checks for private content."""
    return tuple((n, v) for n, v in headers if n.lower() == "authorization")


class Upstream:
    """One connection pool for every upstream; ``close`` when the proxy stops."""

    def __init__(
        self,
        *,
        connect_timeout_s: float = 30.0,
        read_timeout_s: float = 120.0,
        max_connections: int = 256,
    ) -> None:
        self._timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=connect_timeout_s, sock_read=read_timeout_s
        )
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._max_connections),
                timeout=self._timeout,
                auto_decompress=False,
                skip_auto_headers=_NO_AUTO_HEADERS,
                cookie_jar=aiohttp.DummyCookieJar(),
                raise_for_status=False,
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    @asynccontextmanager
    async def send(
        self,
        method: str,
        url: str,
        headers: Iterable[tuple[str, str]],
        body: AsyncIterable[bytes] | None = None,
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """The upstream's response to one request; ``headers`` are the client's, filtered here.

        ``body`` streams the request body (a push); with the client's ``Content-Length`` kept,
        it goes out with that length, else chunked. Raises ``aiohttp.ClientError``,
        ``TimeoutError`` or ``OSError`` when the upstream cannot be reached or breaks off.
        """
        async with self._client().request(
            method,
            URL(url, encoded=True),
            headers=request_headers(headers),
            data=body,
            allow_redirects=False,
        ) as response:
            yield response

    async def may_read(self, url: str, auth: Iterable[tuple[str, str]]) -> aiohttp.ClientResponse:
        """A ``HEAD`` of ``url`` with the client's credentials only: does the upstream let this
        client read it? Redirects are followed (registries send blobs to storage); the returned
        response is released and has no body; its status and headers answer the question."""
        async with self._client().head(
            URL(url, encoded=True),
            headers=[*auth, ("User-Agent", USER_AGENT)],
            allow_redirects=True,
        ) as response:
            return response

    @staticmethod
    async def body(response: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
        """The response body as it arrives, raw (still compressed if it was)."""
        while chunk := await response.content.readany():
            yield chunk


async def wait_closed(writer: asyncio.StreamWriter) -> None:
    """Close a stream writer, ignoring the errors of an already broken connection."""
    writer.close()
    try:
        await writer.wait_closed()
    except (OSError, RuntimeError) as exc:
        log.debug("closing a broken connection: %s", exc)
