"""A small asyncio HTTP/1.1 client: what dfget needs of HTTP, and nothing that costs at import.

dfget talks HTTP to three parties: its trackers (``dfget/coordinators/http.py``), the origin
(``dfget/origin.py``) and the host's dfdaemon over a unix socket (``dfget/handoff.py``).
aiohttp did it, but importing it costs a short download more CPU than the download itself
(about a hundred modules, and two TLS contexts built at import, each loading the CA bundle).
This module imports in a few milliseconds; responses are parsed by httptools (llhttp, the
parser the tracker and dfdaemon serve with), never by hand.

* ``HttpClient.request`` sends one request and returns the ``Response`` once its head has
  arrived; the body is read from it as a stream (``read``, ``readinto``, ``read_all``).
  Release it (``async with``, ``release`` or reading to the end) to let its connection be
  reused; ``close`` drops the connection.
* Connections are kept alive in a small pool per (scheme, host, port), or per unix socket path,
  reused only after a complete response, dropped on any error or after ``IDLE_S`` idle. A
  request that meets a kept-alive connection the server closed meanwhile (nothing answered) is
  sent again once on a new one: one not sent yet, or of an idempotent method (RFC 9110 9.2.2).
* Redirects (301, 302, 303, 307, 308) are followed for GET and HEAD when asked, up to a limit;
  ``Response.url`` is the final URL, ``Response.redirects`` the number followed. A caller's
  ``Authorization`` goes only to the origin (scheme, host, port) of the URL it was given for.
* ``https`` uses a default ``ssl.SSLContext`` made on first use (or the one given); bodies are
  never decoded (no ``Accept-Encoding`` is sent unless the caller sends one).
* Timeouts: ``connect_timeout_s`` for the connection (TLS handshake included), ``read_timeout_s``
  for each wait for data (the head, then every read of the body); None waits forever.

Errors are ``HttpClientError``: ``InvalidURL`` (and ``InvalidRequest``), ``ConnectError``,
``ConnectionLost`` (closed before the response ended), ``HttpTimeout``, ``TooManyRedirects``,
``ProtocolError`` (a malformed response), ``BodyTooLarge``. Callers map them to their own.
"""

from __future__ import annotations

import asyncio
import re
from collections import deque
from collections.abc import Iterable
from typing import TYPE_CHECKING, Final, cast
from urllib.parse import quote, unquote, urljoin, urlsplit

import httptools
from multidict import CIMultiDict, CIMultiDictProxy

if TYPE_CHECKING:
    import ssl

#: Body bytes buffered per connection before reading from the socket pauses (then resumes
#: below ``LOW_WATER``).
HIGH_WATER: Final = 512 * 1024
LOW_WATER: Final = 128 * 1024
#: Largest response head (status line and headers) accepted.
MAX_HEAD_BYTES: Final = 64 * 1024
#: An idle kept-alive connection older than this is not reused (servers close theirs).
IDLE_S: Final = 15.0
MAX_IDLE_PER_HOST: Final = 8
REDIRECT_STATUSES: Final = frozenset({301, 302, 303, 307, 308})
_IDEMPOTENT: Final = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS"})
USER_AGENT: Final = "dfget"
_TOKEN: Final = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_BAD_VALUE: Final = re.compile(r"[\r\n\x00]")
_PLAIN_TARGET: Final = re.compile(r"[!#-;=?-\[\]_a-z~]*")  # printable ASCII but " < > \ ^ ` { | }
_TARGET_SAFE: Final = "!#$%&'()*+,/:;=?@[]~"
#: Headers the client writes itself (framing and the connection are its business).
_OWN_HEADERS: Final = frozenset({"content-length", "transfer-encoding", "connection"})


class HttpClientError(Exception):
    """Any failure of a request; the subclasses say which."""


class InvalidRequest(HttpClientError, ValueError):
    """A request that cannot be sent as given (a header with a line break, say)."""


class InvalidURL(InvalidRequest):
    """Not an absolute http:// or https:// URL."""


class ConnectError(HttpClientError):
    """No connection could be made (refused, unreachable, name unknown, TLS handshake failed)."""


class ConnectionLost(HttpClientError):
    """The connection closed or broke before the response was complete."""


class HttpTimeout(HttpClientError, TimeoutError):
    """No connection within the connect timeout, or no data within the read timeout."""


class TooManyRedirects(HttpClientError):
    """More redirects than allowed."""


class ProtocolError(HttpClientError):
    """The server's bytes are not a well-formed HTTP/1.1 response."""


class BodyTooLarge(HttpClientError):
    """``read_all`` met a body larger than its limit."""


_ssl_context: ssl.SSLContext | None = None


def default_ssl_context() -> ssl.SSLContext:
    """The system's trust store, certificates verified; made once, on first https use."""
    global _ssl_context
    if _ssl_context is None:
        import ssl

        _ssl_context = ssl.create_default_context()
    return _ssl_context


class _Target:
    """An absolute URL taken apart for a request."""

    def __init__(self, url: str) -> None:
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError as exc:
            raise InvalidURL(f"invalid URL {url!r}: {exc}") from None
        self.scheme = parts.scheme.lower()
        if self.scheme not in ("http", "https"):
            raise InvalidURL(f"not an http:// or https:// URL: {url!r}")
        host = parts.hostname
        if not host:
            raise InvalidURL(f"URL without a host: {url!r}")
        self.url, self.host = url, host
        default_port = 443 if self.scheme == "https" else 80
        self.port = default_port if port is None else port
        try:
            name = host if host.isascii() else host.encode("idna").decode("ascii")
            name = f"[{host}]" if ":" in host else name
        except UnicodeError as exc:
            raise InvalidURL(f"invalid host name in {url!r}: {exc}") from None
        self.host_header = name if self.port == default_port else f"{name}:{self.port}"
        self.origin = (self.scheme, host, self.port)
        target = parts.path or "/"
        if parts.query:
            target += "?" + parts.query
        self.target = target if _PLAIN_TARGET.fullmatch(target) else quote(target, _TARGET_SAFE)
        self.authorization: str | None = None
        if parts.username is not None or parts.password is not None:
            import base64

            pair = f"{unquote(parts.username or '')}:{unquote(parts.password or '')}"
            self.authorization = "Basic " + base64.b64encode(pair.encode()).decode("ascii")


class _Connection(asyncio.Protocol):
    """One connection: feeds httptools, buffers the body, wakes the reader (one request at a
    time; a new parser for each response)."""

    def __init__(self, client: HttpClient, key: tuple[object, ...]) -> None:
        self.client, self.key = client, key
        self.loop = loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle = True
        self.idle_since = loop.time()
        self.buffer: deque[bytes] = deque()
        self.offset = 0  # into buffer[0]
        self.buffered = 0
        self._paused = False
        self._waiter: asyncio.Future[bool] | None = None
        self._begin(head_only=False)

    def _begin(self, head_only: bool) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.head_only = head_only
        self.head_done = self.complete = self._interim = False
        self.keep_alive, self.sent = True, False
        self.received = self.head_bytes = 0
        self.error: HttpClientError | None = None
        self.status = 0
        self.reason = bytearray()
        self.headers: CIMultiDict[str] = CIMultiDict()
        self.close_delimited = False

    def start(self, head_only: bool, request: bytes) -> None:
        """Send ``request``; the response is read from this connection from now on."""
        assert self.transport is not None
        self.idle = False
        self._begin(head_only)
        if self.closed:
            raise ConnectionLost("the server closed the connection before the request")
        self.transport.write(request)
        self.sent = True

    # -- asyncio.Protocol ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses

    def data_received(self, data: bytes) -> None:
        if self.idle or self.complete:
            self.drop()  # bytes nobody asked for: this connection is not reusable
            return
        self.received += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self.drop(ProtocolError("the server switched protocols"))
        except httptools.HttpParserError as exc:
            self.drop(ProtocolError(f"malformed response: {exc}"))
        if self.head_bytes > MAX_HEAD_BYTES or (
            not self.head_done and self.received > MAX_HEAD_BYTES
        ):  # the reader has not seen this head yet: it fails even if the body is all here
            self.error = ProtocolError(f"response head larger than {MAX_HEAD_BYTES} bytes")
            self.drop()
        self._wake()

    def eof_received(self) -> bool:
        return False  # close the transport: connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.client._forget(self)
        if not self.closed and not self.idle and not self.complete:  # closed by the server
            if self.head_done and self.close_delimited:
                self.complete, self.keep_alive = True, False  # the close ends this body
            elif self.received == 0:
                self.error = ConnectionLost("the server closed the connection without answering")
            else:
                where = "body" if self.head_done else "head"
                self.error = ConnectionLost(f"the connection closed in the middle of the {where}")
            if exc is not None and self.error is not None:
                self.error.__cause__ = exc
        self.closed = True
        self._wake()

    # -- httptools callbacks ---------------------------------------------------------------

    def on_status(self, status: bytes) -> None:
        self.reason += status

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self.head_done:  # trailers after a chunked body are not headers
            self.head_bytes += len(name) + len(value) + 4
            self.headers.add(name.decode("latin-1"), value.decode("latin-1"))

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if 100 <= status < 200:  # interim (100 Continue, 103 Early Hints): the real one follows
            self._interim = True
            self.headers, self.reason = CIMultiDict(), bytearray()
            return
        self.status, self.head_done = status, True
        self.keep_alive = self.parser.should_keep_alive()
        chunked = "chunked" in self.headers.get("Transfer-Encoding", "").lower()
        self.close_delimited = not chunked and "Content-Length" not in self.headers
        if self.head_only or status in (204, 304):
            self.complete = True  # no body, whatever the headers say (RFC 9112 6.3)
            self.close_delimited = False

    def on_body(self, body: bytes) -> None:
        if self.complete:  # bytes after a body-less answer (HEAD): not ours to read
            self.keep_alive = False
            return
        self.buffer.append(body)
        self.buffered += len(body)
        if self.buffered >= HIGH_WATER and not self._paused and not self.closed:
            assert self.transport is not None
            self._paused = True
            self.transport.pause_reading()

    def on_message_complete(self) -> None:
        if self._interim:
            self._interim = False
            return
        self.complete = True

    # -- for the reader ------------------------------------------------------------------

    def drop(self, error: HttpClientError | None = None) -> None:
        """Close the connection; a response not complete yet fails with ``error``."""
        if not self.idle and not self.complete and self.error is None:
            self.error = error or ConnectionLost("the connection was closed before the end")
        self.keep_alive = False
        if not self.closed:
            self.closed = True
            if self.transport is not None:
                self.transport.close()
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(True)

    async def wait(self, timeout_s: float | None) -> None:
        """Until more data, the end or an error; ``HttpTimeout`` (and the connection dropped)
        when nothing comes within ``timeout_s``."""
        waiter: asyncio.Future[bool] = self.loop.create_future()
        self._waiter = waiter
        timer = None
        if timeout_s is not None:
            timer = self.loop.call_later(timeout_s, _expire, waiter)
        try:
            arrived = await waiter
        finally:
            self._waiter = None
            if timer is not None:
                timer.cancel()
        if not arrived:
            error = HttpTimeout(f"no data from the server within {timeout_s:g}s")
            self.drop(error)
            raise error

    def take(self, size: int) -> bytes:
        """Up to ``size`` buffered body bytes (a whole chunk without a copy when it fits)."""
        chunk = self.buffer[0]
        end = self.offset + size
        data = chunk[self.offset : end]  # the chunk itself, no copy, when all of it fits
        if end >= len(chunk):
            self.buffer.popleft()
            self.offset = 0
        else:
            self.offset = end
        self._consumed(len(data))
        return data

    def take_into(self, view: memoryview) -> int:
        """Copy buffered body bytes into ``view``, as many as fit; how many."""
        copied = 0
        while self.buffer and copied < len(view):
            chunk = self.buffer[0]
            size = min(len(chunk) - self.offset, len(view) - copied)
            view[copied : copied + size] = memoryview(chunk)[self.offset : self.offset + size]
            copied += size
            self.offset += size
            if self.offset == len(chunk):
                self.buffer.popleft()
                self.offset = 0
        self._consumed(copied)
        return copied

    def _consumed(self, size: int) -> None:
        self.buffered -= size
        if self._paused and self.buffered <= LOW_WATER and not self.closed:
            assert self.transport is not None
            self._paused = False
            self.transport.resume_reading()


def _expire(waiter: asyncio.Future[bool]) -> None:
    if not waiter.done():
        waiter.set_result(False)


class Response:
    """A response whose head has arrived; the body is read from it as it comes."""

    def __init__(
        self, client: HttpClient, connection: _Connection, url: str, read_timeout_s: float | None
    ) -> None:
        self._client, self._connection = client, connection
        self._read_timeout_s = read_timeout_s
        self._released = self._ended = False
        self.status = connection.status
        self.reason = connection.reason.decode("latin-1").strip()
        self.headers: CIMultiDictProxy[str] = CIMultiDictProxy(connection.headers)
        #: The URL this response answers (after redirects).
        self.url = url
        #: Redirects followed to get here.
        self.redirects = 0

    async def __aenter__(self) -> Response:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.release()

    @property
    def complete(self) -> bool:
        """Whether the whole body has been read."""
        if self._released:
            return self._ended
        return self._connection.complete and not self._connection.buffer

    async def _more(self) -> bool:
        """Wait until body bytes are buffered (True) or the body has ended (False)."""
        connection = self._connection
        while not self._released and not connection.buffer:
            if connection.error is not None:
                raise connection.error
            if connection.complete:
                self.release()
                break
            await connection.wait(self._read_timeout_s)
        if not self._released:
            return True
        if self._ended:
            return False
        raise ConnectionLost("the response was closed before the end of its body")

    async def read(self, size: int = 1 << 16) -> bytes:
        """Up to ``size`` bytes of the body as soon as some are there; b"" at its end."""
        if size <= 0:
            raise ValueError(f"size must be > 0, got {size}")
        if not await self._more():
            return b""
        return self._connection.take(size)

    async def readinto(self, view: memoryview | bytearray) -> int:
        """Body bytes copied into ``view`` as soon as some are there; how many (0 at the end)."""
        if not await self._more():
            return 0
        return self._connection.take_into(memoryview(view).cast("B"))

    async def read_all(self, limit: int) -> bytes:
        """The whole body; ``BodyTooLarge`` (and the connection dropped) beyond ``limit``."""
        length = self.headers.get("Content-Length", "")
        if length.isdigit() and int(length) > limit:
            self.close()
            raise BodyTooLarge(f"body of {length} bytes, more than {limit}")
        chunks: list[bytes] = []
        total = 0
        while chunk := await self.read(max(limit - total + 1, 1)):
            total += len(chunk)
            if total > limit:
                self.close()
                raise BodyTooLarge(f"body larger than {limit} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    def release(self) -> None:
        """Done with this response: its connection is reused if the body was read to the end,
        else dropped."""
        if not self._released:
            self._ended = self.complete
            self._released = True
            self._client._release(self._connection, reusable=self._ended)

    def discard(self) -> None:
        """Done with this response without reading its body: the connection is reused when the
        whole body has already arrived (a redirect's), else dropped."""
        connection = self._connection
        if connection.complete and connection.error is None:
            while connection.buffer:
                connection.take(len(connection.buffer[0]))
        self.release()

    def close(self) -> None:
        """Drop the connection now, whatever was read."""
        if not self._released:
            self._ended = self.complete
            self._released = True
            self._client._release(self._connection, reusable=False)


class HttpClient:
    """HTTP/1.1 requests over a pool of kept-alive connections; over ``unix_socket`` (a path)
    for every URL when given. Not bound to an event loop until the first request; use it from
    one loop only. ``close`` drops every connection."""

    def __init__(
        self,
        *,
        unix_socket: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
        max_idle_per_host: int = MAX_IDLE_PER_HOST,
    ) -> None:
        self._unix_socket = unix_socket
        self._ssl_context = ssl_context
        self._max_idle = max_idle_per_host
        self._idle: dict[tuple[object, ...], list[_Connection]] = {}
        self._connections: set[_Connection] = set()
        self.closed = False

    async def request(
        self,
        method: str,
        url: str,
        *,
        headers: Iterable[tuple[str, str]] = (),
        body: bytes | None = None,
        follow_redirects: bool = False,
        max_redirects: int = 10,
        connect_timeout_s: float | None = 30.0,
        read_timeout_s: float | None = 30.0,
    ) -> Response:
        """Send ``method url`` and return the response once its head is in."""
        if self.closed:
            raise RuntimeError("HttpClient is closed")
        method = method.upper()
        given = list(headers)
        target = _Target(url)
        first_origin = target.origin
        redirects = 0
        while True:
            # The caller's Authorization belongs to the origin of the URL it gave, not elsewhere.
            sent = given
            if target.origin != first_origin:
                sent = [(n, v) for n, v in given if n.lower() != "authorization"]
            response = await self._send(
                method, target, sent, body, connect_timeout_s, read_timeout_s
            )
            response.redirects = redirects
            location = response.headers.get("Location")
            if (
                not follow_redirects
                or response.status not in REDIRECT_STATUSES
                or method not in ("GET", "HEAD")
                or location is None
            ):
                return response
            response.discard()
            redirects += 1
            if redirects > max_redirects:
                raise TooManyRedirects(f"more than {max_redirects} redirects from {url}")
            target = _Target(urljoin(target.url, location.strip()))

    async def _send(
        self,
        method: str,
        target: _Target,
        headers: list[tuple[str, str]],
        body: bytes | None,
        connect_timeout_s: float | None,
        read_timeout_s: float | None,
    ) -> Response:
        request = _request_bytes(method, target, headers, body)
        for attempt in (1, 2):
            connection, reused = await self._acquire(target, connect_timeout_s)
            try:
                connection.start(method == "HEAD", request)
                while connection.error is None and not connection.head_done:
                    await connection.wait(read_timeout_s)
                if connection.error is not None:
                    raise connection.error
            except ConnectionLost:
                connection.drop()
                stale = reused and attempt == 1 and connection.received == 0
                if stale and (method in _IDEMPOTENT or not connection.sent):
                    continue  # the server had closed this idle connection: try a new one
                raise
            except BaseException:
                connection.drop()
                raise
            return Response(self, connection, target.url, read_timeout_s)
        raise AssertionError("unreachable: the second attempt returns or raises")

    async def _acquire(self, target: _Target, timeout_s: float | None) -> tuple[_Connection, bool]:
        """An idle connection for ``target`` (reused: True), else a new one."""
        unix = self._unix_socket
        key: tuple[object, ...] = ("unix", unix) if unix is not None else target.origin
        idle = self._idle.get(key)
        loop = asyncio.get_running_loop()
        while idle:
            connection = idle.pop()
            if not connection.closed and loop.time() - connection.idle_since < IDLE_S:
                return connection, True
            connection.drop()
        where = unix if unix is not None else target.host_header
        try:
            async with asyncio.timeout(timeout_s):
                if unix is not None:
                    _, connection = await loop.create_unix_connection(
                        lambda: _Connection(self, key), unix
                    )
                else:
                    tls = target.scheme == "https"
                    _, connection = await loop.create_connection(
                        lambda: _Connection(self, key),
                        target.host,
                        target.port,
                        ssl=(self._ssl_context or default_ssl_context()) if tls else None,
                        server_hostname=target.host if tls else None,
                    )
        except TimeoutError:
            raise HttpTimeout(f"no connection to {where} within {timeout_s:g}s") from None
        except OSError as exc:
            raise ConnectError(f"cannot connect to {where}: {exc}") from exc
        self._connections.add(connection)
        return connection, False

    def _release(self, connection: _Connection, reusable: bool) -> None:
        idle = self._idle.setdefault(connection.key, [])
        if (
            reusable
            and connection.keep_alive
            and connection.error is None
            and not connection.closed
            and not self.closed
            and len(idle) < self._max_idle
        ):
            connection.idle = True
            connection.idle_since = connection.loop.time()
            idle.append(connection)
        else:
            connection.drop()

    def _forget(self, connection: _Connection) -> None:
        """A connection closed: out of the pool."""
        self._connections.discard(connection)
        idle = self._idle.get(connection.key)
        if idle and connection in idle:
            idle.remove(connection)

    async def close(self) -> None:
        """Drop every connection, idle or in use; no request may follow."""
        self.closed = True
        for connection in list(self._connections):
            connection.drop()
        self._connections.clear()
        self._idle.clear()


def _request_bytes(
    method: str, target: _Target, headers: list[tuple[str, str]], body: bytes | None
) -> bytes:
    """The request head (and body) as sent: ``Host``, ``User-Agent`` and ``Accept`` unless the
    caller gave them, ``Content-Length`` whenever there is a body or the method expects one."""
    if not _TOKEN.fullmatch(method):
        raise InvalidRequest(f"invalid method {method!r}")
    lines = [f"{method} {target.target} HTTP/1.1"]
    names: set[str] = set()
    for name, value in headers:
        if not _TOKEN.fullmatch(name) or _BAD_VALUE.search(value):
            raise InvalidRequest(f"invalid header {name!r}: {value!r}")
        lower = name.lower()
        if lower not in _OWN_HEADERS:
            names.add(lower)
            lines.append(f"{name}: {value}")
    if "host" not in names:
        lines.insert(1, f"Host: {target.host_header}")
    if "user-agent" not in names:
        lines.append(f"User-Agent: {USER_AGENT}")
    if "accept" not in names:
        lines.append("Accept: */*")
    if "authorization" not in names and target.authorization is not None:
        lines.append(f"Authorization: {target.authorization}")
    if body is not None or method in ("POST", "PUT", "PATCH"):
        lines.append(f"Content-Length: {len(body or b'')}")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode()
    return head + body if body else head
