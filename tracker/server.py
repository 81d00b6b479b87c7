"""The tracker's only asyncio module: HTTP/1.1 connections on uvloop, parsed by httptools.

Everything a request means is decided by ``Routes`` synchronously, so responses leave in request
order (pipelining works) and no request waits on another. This module enforces the HTTP bounds
of ``TrackerConfig``: request line plus headers at most ``max_head_bytes`` (else 431), a body at
most ``max_body_bytes`` (else 413), headers complete within ``head_timeout_s`` of the first byte
(a client that never finishes them is dropped), an idle kept-alive connection closed after
``keepalive_timeout_s``, at most ``max_connections`` open. Keep-alive and ``Connection: close``
both work (HTTP/1.0 too). A malformed request gets a 400 and that connection is closed.

Every request gets exactly one response. ``Upgrade`` is not supported: the header is ignored
and the request answered in HTTP/1.1 (RFC 9110 7.8 lets a server ignore it), but it is the last
request of its connection (``Connection: close``), because httptools stops parsing at an upgrade
and skips the request's body. So an upgrade request that announces a body gets a 400 (its body
was never read), and CONNECT, which only a proxy serves, gets the 404 of an unknown target.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import time
from collections import deque
from collections.abc import Callable
from typing import Final, cast

import httptools

from peerwire.auth import load_secret
from tracker.config import TrackerConfig
from tracker.metrics import make_registry, render
from tracker.redislink import RedisLink, ReplyError, StoreUnavailable
from tracker.redisstore import MAINTAIN_S, TOTALS_EVERY, RedisSwarm
from tracker.routes import Response, Routes
from tracker.swarm import Swarm

log = logging.getLogger(__name__)

_REASONS: Final = {
    200: b"OK",
    400: b"Bad Request",
    404: b"Not Found",
    405: b"Method Not Allowed",
    408: b"Request Timeout",
    409: b"Conflict",
    413: b"Content Too Large",
    414: b"URI Too Long",
    431: b"Request Header Fields Too Large",
    500: b"Internal Server Error",
    503: b"Service Unavailable",
}
#: The cluster secret itself, when not in a file (``--secret-file``).
SECRET_ENV: Final = "DRAGONFLY_SECRET"
METRICS_CONTENT_TYPE: Final = b"text/plain; version=0.0.4; charset=utf-8"
#: How often deadlines are checked; a timeout fires up to this much late.
SWEEP_S: Final = 1.0
#: Answers a connection may have waiting (pipelined requests) before its reading pauses.
MAX_PENDING: Final = 64


class _RequestTooLarge(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


class TrackerServer:
    """Owns the listening socket, the connections, the expiry sweep and shutdown."""

    def __init__(self, config: TrackerConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        secret = load_secret(config.secret_file, os.environ.get(SECRET_ENV))
        self.swarm: Swarm | None = None
        self.shared: RedisSwarm | None = None
        self.link: RedisLink | None = None
        if config.redis is None:
            self.swarm = Swarm(config, clock)
            self.routes = Routes(config, self.swarm, secret=secret)
        else:
            # Trackers sharing Redis share its times: the wall clock, not each one's monotonic.
            self.link = RedisLink(config.redis, config.redis_timeout_s)
            self.shared = RedisSwarm(config, self.link)
            self.routes = Routes(config, None, secret=secret, shared=self.shared)
        self.registry = make_registry(self.routes)
        self.connections: set[HttpConnection] = set()
        self._server: asyncio.Server | None = None
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def port(self) -> int:
        assert self._server is not None and self._server.sockets
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: HttpConnection(self), self.config.host, self.config.port, backlog=1024
        )
        self._tasks.append(asyncio.create_task(self._sweep_connections()))
        if self.link is not None:
            await self.link.start()
            self._tasks.append(asyncio.create_task(self._maintain_shared()))
        else:
            self._tasks.append(asyncio.create_task(self._expire_peers()))

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in self._tasks:
            task.cancel()
        for connection in list(self.connections):
            connection.close()
        if self._server is not None:
            await self._server.wait_closed()
        self._tasks.clear()
        if self.link is not None:
            await self.link.close()

    def metrics_response(self) -> Response:
        return Response(200, render(self.registry), METRICS_CONTENT_TYPE)

    async def _sweep_connections(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(SWEEP_S)
            now = loop.time()
            for connection in [c for c in self.connections if c.deadline < now]:
                connection.timed_out()

    async def _expire_peers(self) -> None:
        assert self.swarm is not None
        period_s = max(self.config.interval_s / 2, 0.5)
        while True:
            await asyncio.sleep(period_s)
            removed = self.swarm.expire()
            if removed:
                log.info("expired %d silent peers", removed)

    async def _maintain_shared(self) -> None:
        """The shared store's index and heartbeat every second, the cluster's totals every ten
        seconds (and at once), its sweep every interval (by one tracker of the cluster at a
        time). Redis away is logged by the link, once; this only tries again."""
        assert self.shared is not None
        sweep_every = max(1, round(self.config.interval_s / MAINTAIN_S))
        turn = -1
        while True:
            await asyncio.sleep(MAINTAIN_S)
            turn += 1
            try:
                await self.shared.maintain(
                    totals=turn % TOTALS_EVERY == 0, sweep=turn % sweep_every == 0
                )
            except (StoreUnavailable, ReplyError) as exc:
                log.debug("store maintenance skipped: %s", exc)


class HttpConnection(asyncio.Protocol):
    """One client connection: feeds httptools, answers each complete request in order."""

    def __init__(self, server: TrackerServer) -> None:
        self._server = server
        self._config = server.config
        self._routes = server.routes
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._loop = asyncio.get_event_loop()
        self._remote_ip = ""
        self._url = b""
        self._auth_header: str | None = None
        #: The head has a Transfer-Encoding or a non-zero Content-Length.
        self._announces_body = False
        self._body: list[bytes] = []
        self._head_bytes = 0
        self._body_bytes = 0
        self._paused = False
        #: Answers not written yet, in request order (with the shared store an answer may
        #: wait for Redis while the next request's is ready): (answer, method, keep-alive,
        #: HTTP/1.0 keep-alive).
        self._pending: deque[tuple[Response | asyncio.Future[Response], bytes, bool, bool]] = (
            deque()
        )
        self._reading_paused = False
        self.deadline = 0.0

    # --- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        transport = cast(asyncio.Transport, transport)
        self._transport = transport
        peer = transport.get_extra_info("peername")
        self._remote_ip = str(peer[0]) if peer else ""
        if len(self._server.connections) >= self._config.max_connections:
            log.warning("connection limit %d reached: refusing", self._config.max_connections)
            transport.write(_response(503, b"too many connections\n", b"text/plain", False, False))
            transport.close()
            return
        self._server.connections.add(self)
        self.deadline = self._loop.time() + self._config.head_timeout_s

    def connection_lost(self, exc: Exception | None) -> None:
        self._server.connections.discard(self)
        self._transport = None
        # The parser calls back into this object: without the cycle, a closed connection is
        # freed by its reference count, also once the collector froze it (steady_collector).
        self._parser = _CLOSED_PARSER

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except _RequestTooLarge as exc:
            self._fail(exc.status, b"request too large\n")
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            if isinstance(cause, _RequestTooLarge):
                self._fail(cause.status, b"request too large\n")
            else:
                log.exception("tracker: request handler failed")
                self._fail(400, b"bad request\n")
        except httptools.HttpParserUpgrade:
            # on_message_complete has answered the request and closed: parsing stops here.
            log.debug("upgrade or CONNECT from %s: answered, connection closed", self._remote_ip)
            self.close()
        except httptools.HttpParserError as exc:
            log.debug("malformed request from %s: %s", self._remote_ip, exc)
            self._fail(400, b"malformed HTTP request\n")

    def pause_writing(self) -> None:
        # The client does not read its answers: stop reading its requests until it does.
        if self._transport is not None:
            self._paused = True
            self._transport.pause_reading()

    def resume_writing(self) -> None:
        if self._transport is not None and self._paused:
            self._paused = False
            self._transport.resume_reading()

    # --- httptools callbacks -----------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._url = b""
        self._auth_header = None
        self._announces_body = False
        self._body = []
        self._head_bytes = 0
        self._body_bytes = 0
        self.deadline = self._loop.time() + self._config.head_timeout_s

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._head_bytes += len(url)
        if self._head_bytes > self._config.max_head_bytes:
            raise _RequestTooLarge(414)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_bytes += len(name) + len(value) + 4
        if self._head_bytes > self._config.max_head_bytes:
            raise _RequestTooLarge(431)
        if len(name) == 9 and name.lower() == b"x-df-auth":
            self._auth_header = value.decode("latin-1")
        elif len(name) == 14 and name.lower() == b"content-length":
            self._announces_body = self._announces_body or value.strip(b" \t0") != b""
        elif len(name) == 17 and name.lower() == b"transfer-encoding":
            self._announces_body = True

    def on_body(self, body: bytes) -> None:
        self._body_bytes += len(body)
        if self._body_bytes > self._config.max_body_bytes:
            raise _RequestTooLarge(413)
        self._body.append(body)

    def on_message_complete(self) -> None:
        transport = self._transport
        if transport is None:
            return
        method = self._parser.get_method()
        upgrade = self._parser.should_upgrade()
        keep_alive = self._parser.should_keep_alive() and not upgrade
        path = self._url.partition(b"?")[0]
        answer: Response | asyncio.Future[Response]
        if upgrade and self._announces_body:
            answer = Response(400, b"Upgrade with a request body is not supported\n")
        elif path == b"/metrics" and method in (b"GET", b"HEAD"):
            answer = self._server.metrics_response()
        else:
            answer = self._routes.handle(
                method, self._url, b"".join(self._body), self._remote_ip, self._auth_header
            )
        http10_keep_alive = keep_alive and self._parser.get_http_version() == "1.0"
        if type(answer) is Response and not self._pending:
            self._write(answer, method, keep_alive, http10_keep_alive)
            return
        self._pending.append((answer, method, keep_alive, http10_keep_alive))
        if not isinstance(answer, Response):
            answer.add_done_callback(self._answered)
        if len(self._pending) >= MAX_PENDING and not self._reading_paused:
            self._reading_paused = True
            transport.pause_reading()
        self._answered(None)

    def _answered(self, _: object) -> None:
        """Write every answer that is ready, in request order."""
        pending = self._pending
        while pending and self._transport is not None:
            answer, method, keep_alive, http10_keep_alive = pending[0]
            if not isinstance(answer, Response):
                if not answer.done():
                    return
                answer = answer.result()
            pending.popleft()
            self._write(answer, method, keep_alive, http10_keep_alive)
        if self._reading_paused and len(pending) < MAX_PENDING // 2 and self._transport:
            self._reading_paused = False
            if not self._paused:
                self._transport.resume_reading()

    def _write(
        self, response: Response, method: bytes, keep_alive: bool, http10_keep_alive: bool
    ) -> None:
        transport = self._transport
        if transport is None:
            return
        body = b"" if method == b"HEAD" else response.body
        transport.write(
            _response(
                response.status,
                body,
                response.content_type,
                keep_alive,
                http10_keep_alive,
                content_length=len(response.body),
                extra=response.headers,
            )
        )
        if not keep_alive:
            self._pending.clear()
            transport.close()
            return
        self.deadline = self._loop.time() + self._config.keepalive_timeout_s

    # --- errors and deadlines ------------------------------------------------------------------

    def _fail(self, status: int, message: bytes) -> None:
        if self._transport is not None:
            self._transport.write(_response(status, message, b"text/plain", False, False))
            self._transport.close()
            self._transport = None
        self._server.connections.discard(self)

    def timed_out(self) -> None:
        """Headers not finished in time, or idle too long after a response: drop it."""
        log.debug("closing connection from %s: deadline passed", self._remote_ip)
        if self._transport is not None:
            self._transport.abort()
        self._server.connections.discard(self)

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()


def _response(
    status: int,
    body: bytes,
    content_type: bytes,
    keep_alive: bool,
    http10_keep_alive: bool,
    *,
    content_length: int | None = None,
    extra: bytes = b"",
) -> bytes:
    length = len(body) if content_length is None else content_length
    connection = b"" if keep_alive and not http10_keep_alive else b"Connection: close\r\n"
    if http10_keep_alive:
        connection = b"Connection: keep-alive\r\n"
    return b"HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n%s%s\r\n%s" % (
        status,
        _REASONS.get(status, b"Unknown"),
        content_type,
        length,
        extra,
        connection,
        body,
    )


#: What a closed connection's parser is (nothing calls back into the connection).
_CLOSED_PARSER: Final = httptools.HttpRequestParser(object())
#: A frozen object is never collected: all are thawed and collected this often.
THAW_S: Final = 3600.0


def steady_collector() -> None:
    """Keep the cyclic collector's pauses short while the swarm is large.

    A full collection walks every tracked object: with 100,000 peers that took 30-85 ms here,
    an answer held up that long (bench/README.md). The swarm's records form no cycles (they
    are freed by their reference counts), so after each full collection what survived is
    frozen (``gc.freeze``) and the next one walks only what was made since. Once every
    ``THAW_S`` everything is thawed and collected, so cyclic garbage frozen by chance (an
    exception's traceback) is not kept for ever.
    """
    last_thaw = [time.monotonic()]

    def after(phase: str, info: dict[str, int]) -> None:
        if phase != "stop" or info.get("generation") != 2:
            return
        now = time.monotonic()
        if now - last_thaw[0] >= THAW_S:
            last_thaw[0] = now
            gc.unfreeze()  # the next full collection walks everything once
        else:
            gc.freeze()

    gc.callbacks.append(after)


async def serve(
    config: TrackerConfig, ready: Callable[[TrackerServer], None] | None = None
) -> None:
    """Run until SIGINT or SIGTERM, then close every connection and return."""
    server = TrackerServer(config)
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        if ready is not None:
            ready(server)
        await stop.wait()
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
        log.info("shutting down")
        await server.close()
