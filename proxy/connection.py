"""One client connection of the proxy: HTTP/1.1 parsed by httptools, bounded, streamed both ways.

A reader task feeds the parser and queues each request as soon as its head is complete; the
connection's own task answers them one at a time, in order (pipelining works), while the reader
keeps streaming the current request's body to it. Bounds: the head at most ``max_head_bytes``
(414/431) within ``head_timeout_s`` of its first byte; a body buffered up to
``body_buffer_bytes`` before reading pauses; an idle kept-alive connection or a stalled body
closed after ``keepalive_timeout_s``; a client that reads nothing for ``send_timeout_s`` dropped.

A TLS ClientHello (first byte 0x16, RFC 8446 5.1 content type "handshake") on this plain port is
refused by closing at once, without a word in HTTP: clients such as skopeo with ``insecure``
try TLS first and fall back to plain HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import threading
from collections import deque
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Final

import httptools

from proxy.body import Body, BodyAborted
from proxy.config import ProxyConfig
from proxy.routes import check_header
from proxy.sendfile import FileRegion, send_region

log = logging.getLogger(__name__)

READ_BYTES: Final = 64 * 1024
#: How often the reader looks at its deadlines; a timeout fires up to this much late.
SWEEP_S: Final = 1.0
#: Requests parsed ahead of the one being answered before reading pauses.
MAX_PIPELINED: Final = 16
TLS_HANDSHAKE: Final = 0x16
_ASCII_DIGITS: Final = re.compile(r"[0-9]+")


@dataclass
class Request:
    method: str
    target: str
    http_version: str
    headers: list[tuple[str, str]]
    body: Body
    keep_alive: bool = True
    #: CONNECT: bytes the client sent after the head, the start of the tunnel.
    tunnel_data: bytes = b""

    def header(self, name: str) -> str | None:
        lower = name.lower()
        return next((v for n, v in self.headers if n.lower() == lower), None)


@dataclass(frozen=True, slots=True)
class Failure:
    """The request stream broke (malformed, too large): answer ``status`` and close."""

    status: int
    message: str


@dataclass
class _Parsing:
    url: bytearray = field(default_factory=bytearray)
    headers: list[tuple[str, str]] = field(default_factory=list)
    head_bytes: int = 0
    request: Request | None = None


class _TooLarge(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


class _BadFraming(Exception):
    """The head does not say where the body ends: 400 and close, nothing forwarded."""


Handler = Callable[[Request, "Connection"], Awaitable[bool]]


class Connection:
    """Owns one socket; ``handler(request, connection)`` answers, returning False to close."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        config: ProxyConfig,
        handler: Handler,
    ) -> None:
        self.reader, self.writer = reader, writer
        self._config = config
        self._handler = handler
        self._parser = httptools.HttpRequestParser(self)
        self._parsing = _Parsing()
        self._pending: deque[Request | Failure] = deque()
        self._queued = asyncio.Event()
        self._dequeued = asyncio.Event()
        self._reader_done = False
        self._loop = asyncio.get_running_loop()
        self._busy = False
        self._head_deadline: float | None = None
        self._idle_since = self._loop.time()
        self._last_data = self._idle_since
        self._in_body: Body | None = None
        self._started = False
        self._first = True

    # -- the connection's lifetime -----------------------------------------------------------

    async def run(self) -> None:
        reading = asyncio.create_task(self._read_loop())
        try:
            while True:
                item = await self._next()
                if item is None:
                    return
                if isinstance(item, Failure):
                    await self.respond(item.status, item.message, keep_alive=False)
                    return
                self._busy = True
                try:
                    keep = await self._handler(item, self)
                finally:
                    self._busy = False
                    self._idle_since = self._loop.time()
                if not (keep and item.keep_alive and item.body.complete):
                    return
        finally:
            reading.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reading

    async def _next(self) -> Request | Failure | None:
        while not self._pending:
            if self._reader_done:
                return None
            self._queued.clear()
            await self._queued.wait()
        self._dequeued.set()
        return self._pending.popleft()

    def _push(self, item: Request | Failure) -> None:
        self._pending.append(item)
        self._queued.set()

    async def _read_loop(self) -> None:
        try:
            while True:
                try:
                    data = await asyncio.wait_for(self.reader.read(READ_BYTES), SWEEP_S)
                except TimeoutError:
                    if self._expired():
                        log.debug("proxy: closing a connection: deadline passed")
                        self.writer.transport.abort()
                        return
                    continue
                if not data:
                    if self._in_body is not None:
                        self._in_body.fail(BodyAborted("client closed mid-body"))
                    return
                self._last_data = self._loop.time()
                if self._first:
                    self._first = False
                    if data[0] == TLS_HANDSHAKE:
                        log.debug("proxy: TLS ClientHello on the plain port: closing")
                        self.writer.transport.abort()
                        return
                if not self._feed(data):
                    return
                if self._in_body is not None:
                    await self._in_body.wait_below(self._config.body_buffer_bytes)
                while len(self._pending) >= MAX_PIPELINED:
                    self._dequeued.clear()
                    await self._dequeued.wait()
        except OSError as exc:
            log.debug("proxy: client connection failed: %s", exc)
            if self._in_body is not None:
                self._in_body.fail(exc)
        finally:
            self._reader_done = True
            self._queued.set()

    def _feed(self, data: bytes) -> bool:
        """Parse ``data``; False when reading must stop (error, upgrade, last request)."""
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            request = self._parsing.request
            if request is None:
                self._push(Failure(400, "bad upgrade\n"))
            elif request.method == "CONNECT":
                request.tunnel_data = data[int(exc.args[0]) :]
                request.keep_alive = False
                self._push(request)
            else:
                # Upgrade is hop-by-hop and is not forwarded; the parser stops after it.
                request.keep_alive = False
            return False
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            if isinstance(cause, _TooLarge):
                self._fail(cause.status, "request too large\n")
            elif isinstance(cause, _BadFraming):
                self._fail(400, f"{cause}\n")
            else:
                self._fail(400, "bad request\n")
            return False
        except _TooLarge as exc:
            self._fail(exc.status, "request too large\n")
            return False
        except httptools.HttpParserError as exc:
            log.debug("proxy: malformed request: %s", exc)
            self._fail(400, "malformed HTTP request\n")
            return False
        request = self._parsing.request
        return not (request is not None and request.body.complete and not request.keep_alive)

    def _fail(self, status: int, message: str) -> None:
        if self._in_body is not None:
            self._in_body.fail(BodyAborted(message.strip()))
            return  # the handler sees the broken body; the connection then closes
        self._push(Failure(status, message))

    def _expired(self) -> bool:
        now = self._loop.time()
        if self._head_deadline is not None:
            return now > self._head_deadline
        if self._in_body is not None:
            return now > self._last_data + self._config.keepalive_timeout_s
        if self._busy or self._pending:
            return False
        return now > self._idle_since + self._config.keepalive_timeout_s

    # -- httptools callbacks -------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._parsing = _Parsing()
        self._head_deadline = self._loop.time() + self._config.head_timeout_s

    def on_url(self, url: bytes) -> None:
        self._parsing.url += url
        self._parsing.head_bytes += len(url)
        if self._parsing.head_bytes > self._config.max_head_bytes:
            raise _TooLarge(414)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._parsing.head_bytes += len(name) + len(value) + 4
        if self._parsing.head_bytes > self._config.max_head_bytes:
            raise _TooLarge(431)
        # RFC 9110 5.5: leading and trailing whitespace (OWS) is not part of a field value.
        field_value = value.strip(b" \t").decode("latin-1")
        self._parsing.headers.append((name.decode("latin-1"), field_value))

    def on_headers_complete(self) -> None:
        self._head_deadline = None
        parser, parsing = self._parser, self._parsing
        method = parser.get_method().decode("ascii", "replace")
        lowered = {n.lower(): v for n, v in parsing.headers}
        codings = [
            coding.strip().lower()
            for name, value in parsing.headers
            if name.lower() == "transfer-encoding"
            for coding in value.split(",")
        ]
        if codings and codings[-1] != "chunked":
            # RFC 9112 6.3: the body's length cannot be known. Raised here, before the request
            # is queued; llhttp would only refuse it after this callback returns.
            raise _BadFraming("Transfer-Encoding must end in chunked")
        chunked = bool(codings)
        length = lowered.get("content-length", "0")
        expected = chunked or (_ASCII_DIGITS.fullmatch(length) is not None and int(length) > 0)
        request = Request(
            method=method,
            target=parsing.url.decode("latin-1"),
            http_version=parser.get_http_version(),
            headers=parsing.headers,
            body=Body(expected),
            keep_alive=parser.should_keep_alive(),
        )
        if expected and lowered.get("expect", "").lower() == "100-continue":
            request.body.on_first_read = self._continue
        parsing.request = request
        if expected:
            self._in_body = request.body
        if method != "CONNECT":
            self._push(request)

    def on_body(self, body: bytes) -> None:
        if self._in_body is not None:
            self._in_body.feed(body)

    def on_message_complete(self) -> None:
        request = self._parsing.request
        if request is not None:
            request.keep_alive = request.keep_alive and self._parser.should_keep_alive()
            request.body.finish()
        self._in_body = None

    # -- answering -------------------------------------------------------------------------------

    async def _continue(self) -> None:
        await self.send(b"HTTP/1.1 100 Continue\r\n\r\n")

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await asyncio.wait_for(self.writer.drain(), self._config.send_timeout_s)

    async def start(
        self,
        request: Request,
        status: int,
        headers: list[tuple[str, str]],
        *,
        reason: str | None = None,
        content_length: int | None = None,
        body: bool = True,
    ) -> bool:
        """Send the status line and headers; True when the body goes chunked.

        With ``body`` False (HEAD, 204, 304) ``headers`` go out as given, Content-Length
        included. Otherwise framing headers are ours: Content-Length when known, else chunked
        (HTTP/1.1) or the end of the connection (HTTP/1.0).
        """
        self._started = True
        lines = [f"HTTP/1.1 {status} {reason or _reason(status)}"]
        for name, value in headers:
            if body and name.lower() in ("content-length", "transfer-encoding"):
                continue
            check_header(name, value)
            lines.append(f"{name}: {value}")
        chunked = False
        if body:
            if content_length is not None:
                lines.append(f"Content-Length: {content_length}")
            elif request.http_version == "1.1":
                lines.append("Transfer-Encoding: chunked")
                chunked = True
            else:
                request.keep_alive = False
        if not request.keep_alive:
            lines.append("Connection: close")
        elif request.http_version == "1.0":
            lines.append("Connection: keep-alive")
        await self.send(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        return chunked

    async def write_body(self, chunk: bytes, chunked: bool) -> None:
        if not chunk:
            return
        await self.send(b"%x\r\n%s\r\n" % (len(chunk), chunk) if chunked else chunk)

    async def send_file(self, region: FileRegion, executor: Executor) -> None:
        """Send ``region`` with ``os.sendfile`` from a thread of ``executor``: the bytes never
        pass through Python and the event loop goes on meanwhile. For a body sent as is (with a
        Content-Length, not chunked). Cancelled, the thread stops within ``SEND_STEP_S``."""
        transport = self.writer.transport
        # The thread writes to the socket itself: whatever the transport still holds goes first.
        low, high = transport.get_write_buffer_limits()
        transport.set_write_buffer_limits(high=0)
        try:
            await asyncio.wait_for(self.writer.drain(), self._config.send_timeout_s)
        finally:
            transport.set_write_buffer_limits(high=high, low=low)
        # Its own descriptor: if this connection is closed meanwhile, the thread never writes
        # to a number the process has given to something else.
        sock_fd = os.dup(transport.get_extra_info("socket").fileno())
        stop = threading.Event()
        try:
            await self._loop.run_in_executor(
                executor, send_region, region, sock_fd, self._config.send_timeout_s, stop
            )
        finally:
            stop.set()

    async def end_body(self, chunked: bool) -> None:
        if chunked:
            await self.send(b"0\r\n\r\n")

    async def respond(
        self,
        status: int,
        text: str,
        *,
        request: Request | None = None,
        headers: list[tuple[str, str]] | None = None,
        keep_alive: bool = True,
        head: bool = False,
    ) -> None:
        """A short plain-text answer of the proxy's own."""
        body = text.encode()
        target = request or Request("GET", "", "1.1", [], Body(False))
        target.keep_alive = target.keep_alive and keep_alive
        fields = [("Content-Type", "text/plain; charset=utf-8"), *(headers or [])]
        await self.start(target, status, fields, content_length=len(body))
        if not head:
            await self.send(body)

    def abort(self) -> None:
        """Break the connection (a response cannot be finished: the client must retry)."""
        self.writer.transport.abort()


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"
