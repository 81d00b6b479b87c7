"""dfdaemon's registry mirror and HTTP proxy: what each route does (``routes`` decides which).

* Blob GET (``/v2/<name>/blobs/sha256:<d>``, and GETs that an HTTP-proxy rule sends to the
  swarm): first a ``HEAD`` to the upstream with the client's own ``Authorization``. Anything
  but 2xx means this client may not read it there, so the request is passed through and the
  client gets the upstream's own answer (401 with ``WWW-Authenticate``, 403, 404), even when the
  blob sits in the cache. Then the body comes from ``Daemon.open_stream``: the digest is the
  task identity and the content is verified against it; bytes go out as pieces are verified.
  ``Range`` gets 206 with ``Content-Range`` (416 when unsatisfiable). If the swarm fails before
  the first byte, the request is passed through to the upstream instead (counted in
  ``fallbacks``); after it, the connection is broken off so that the client retries.
* Everything else on ``/v2/`` (ping, manifests, HEAD, tags, pushes) and ``direct`` proxy
  requests: passed through unchanged (``upstream``). Upstream unreachable: 502 (504 on timeout).
  A request body the client malforms or cuts short is its own fault: 400 and close.
* CONNECT: a blind tunnel to a host a rule allows.
* ``/metrics`` (the daemon's Prometheus registry) and ``/healthz``.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Final

import aiohttp

from dfget.errors import DownloadError
from dfget.options import OriginInfo
from dfget.origin import validator_of
from proxy.blobstream import BlobStream, FileSpan
from proxy.body import BodyAborted
from proxy.config import ProxyConfig
from proxy.connection import READ_BYTES, SWEEP_S, Connection, Request
from proxy.daemon import Daemon, FetchRequest
from proxy.routes import (
    KINDS,
    ConnectRoute,
    LocalRoute,
    ProxyRoute,
    RangeNotSatisfiable,
    Refused,
    RegistryRoute,
    classify,
    parse_range,
)
from proxy.upstream import Upstream, credentials, response_headers, wait_closed

log = logging.getLogger(__name__)

METRICS_CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"
_UPSTREAM_ERRORS: Final = (aiohttp.ClientError, OSError, TimeoutError, ValueError)
#: Times a broken blob stream is reopened at its offset before the connection is broken off.
MAX_REOPENS: Final = 2
#: Threads sending blob spans from files (``Connection.send_file``).
SEND_THREADS: Final = 8


class ProxyServer:
    """Owns the listening socket, its connections and the upstream client pool."""

    def __init__(
        self,
        config: ProxyConfig,
        daemon: Daemon | None = None,
        metrics: Callable[[], bytes] | None = None,
    ) -> None:
        self.config = config
        self.daemon = daemon
        self._metrics = metrics
        self.upstream = Upstream(
            connect_timeout_s=config.upstream_connect_timeout_s,
            read_timeout_s=config.upstream_read_timeout_s,
            max_connections=config.upstream_connections,
        )
        #: Requests by route kind (``routes.KINDS``): the proxy's Prometheus counter.
        self.requests_by_route: dict[str, int] = dict.fromkeys(KINDS, 0)
        #: Swarm answers that failed before their first byte and were passed through instead.
        self.fallbacks: dict[str, int] = {"blob": 0, "proxy_swarm": 0}
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        #: Threads that send blob spans with sendfile (a slow client holds one while it reads).
        self._send_executor = ThreadPoolExecutor(SEND_THREADS, thread_name_prefix="proxy-send")

    @property
    def port(self) -> int:
        assert self._server is not None and self._server.sockets
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def url(self) -> str:
        host = self.config.host
        return f"http://[{host}]:{self.port}" if ":" in host else f"http://{host}:{self.port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._accept, self.config.host, self.config.port, backlog=1024
        )

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._send_executor.shutdown(wait=False, cancel_futures=True)
        if self._server is not None:
            await self._server.wait_closed()
        await self.upstream.close()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        if len(self._tasks) >= self.config.max_connections:
            log.warning("proxy: %d connections open: refusing", len(self._tasks))
            writer.write(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n")
            writer.write(b"Connection: close\r\n\r\n")
            await wait_closed(writer)
            return
        self._tasks.add(task)
        try:
            await Connection(reader, writer, self.config, self._handle).run()
        except (OSError, TimeoutError) as exc:
            log.debug("proxy: connection ended: %s", exc)
        except Exception:
            log.exception("proxy: connection handler failed")
        finally:
            self._tasks.discard(task)
            await wait_closed(writer)

    async def _handle(self, request: Request, conn: Connection) -> bool:
        route = classify(request.method, request.target, self.config)
        self.requests_by_route[route.kind] += 1
        head = request.method == "HEAD"
        if isinstance(route, Refused):
            await conn.respond(route.status, route.reason + "\n", request=request, head=head)
            return True
        if isinstance(route, LocalRoute):
            if route.kind == "metrics" and self._metrics is not None:
                body = self._metrics()
                headers = [("Content-Type", METRICS_CONTENT_TYPE)]
                await conn.start(request, 200, headers, content_length=len(body))
                if not head:
                    await conn.send(body)
                return True
            await conn.respond(200, "ok\n", request=request, head=head)
            return True
        if isinstance(route, ConnectRoute):
            return await self._tunnel(request, conn, route)
        swarm = self.daemon is not None and (
            (route.kind == "blob" and request.method == "GET" and route.digest_sha256)
            or route.kind == "proxy_swarm"
        )
        if swarm:
            return await self._swarm(request, conn, route)
        return await self._pass(request, conn, route.url)

    # -- through the swarm -------------------------------------------------------------------

    async def _swarm(
        self, request: Request, conn: Connection, route: RegistryRoute | ProxyRoute
    ) -> bool:
        assert self.daemon is not None
        url, digest = route.url, route.digest_sha256
        auth = credentials(request.headers)
        began = time.monotonic()
        try:
            check = await self.upstream.may_read(url, auth)
        except _UPSTREAM_ERRORS as exc:
            log.warning("proxy: HEAD %s failed: %s", url, exc)
            return await self._pass(request, conn, url)
        checked = time.monotonic()
        if not 200 <= check.status < 300:
            # Not readable with these credentials (or gone): the upstream answers the client.
            return await self._pass(request, conn, url)
        range_header = request.header("Range")
        etag = f'"sha256:{digest.hex()}"' if digest is not None else check.headers.get("ETag")
        if_range = request.header("If-Range")
        if if_range is not None and if_range.strip() != etag:
            range_header = None  # RFC 9110 13.1.5: not the representation asked about
        size_hint = check.content_length
        stream: BlobStream | None = None
        parts: AsyncIterator[FileSpan] | None = None
        try:
            if size_hint is not None:
                parse_range(range_header, size_hint)  # 416 before any download starts
            fetch = FetchRequest(
                url=url,
                headers=auth,
                digest_sha256=digest,
                origin_info=_known_origin(url, check, digest),
            )
            stream = await self.daemon.open_stream(fetch)
            byte_range = parse_range(range_header, stream.size_bytes)
            if byte_range is not None and byte_range.end - byte_range.start != stream.size_bytes:
                whole, stream = stream, None
                whole.close()
                stream = await self.daemon.open_stream(
                    fetch, start=byte_range.start, end=byte_range.end
                )
            parts = stream.spans()
            first = await anext(parts) if stream.length else b""
        except RangeNotSatisfiable as exc:
            if stream is not None:
                stream.close()
            size = stream.size_bytes if stream is not None else size_hint
            await conn.respond(
                416, f"{exc}\n", request=request, headers=[("Content-Range", f"bytes */{size}")]
            )
            return True
        except Exception as exc:  # the swarm path failed before the first byte
            if parts is not None:
                await _aclose(parts)
            if stream is not None:
                stream.close()
            self.fallbacks[route.kind] += 1
            log.warning("proxy: swarm failed for %s, passing through: %s", url, exc)
            return await self._pass(request, conn, url)
        headers = [
            ("Content-Type", "application/octet-stream"),
            ("Accept-Ranges", "bytes"),
        ]
        if digest is not None:
            headers.append(("Docker-Content-Digest", f"sha256:{digest.hex()}"))
        else:
            headers[0] = ("Content-Type", check.headers.get("Content-Type", headers[0][1]))
        if etag is not None:
            headers.append(("ETag", etag))
        if byte_range is not None:
            headers.append(("Content-Range", byte_range.content_range))
        status = 206 if byte_range is not None else 200
        log.debug(
            "proxy: %s: checked upstream in %.1f ms, first part after %.1f ms",
            url,
            1000 * (checked - began),
            1000 * (time.monotonic() - began),
        )
        done = await self._send_stream(request, conn, fetch, stream, parts, first, status, headers)
        log.debug("proxy: %s: sent in %.1f ms", url, 1000 * (time.monotonic() - began))
        return done

    async def _send_stream(
        self,
        request: Request,
        conn: Connection,
        fetch: FetchRequest,
        stream: BlobStream,
        parts: AsyncIterator[FileSpan],
        first: bytes | FileSpan,
        status: int,
        headers: list[tuple[str, str]],
    ) -> bool:
        """Send ``stream`` (its first part already read). A whole blob's last part is held back
        until the blob is known to match its digest: a client never gets all of a wrong blob.
        The download behind the stream usually knows (it hashes the blob in order as pieces
        are verified); otherwise the proxy hashes the bytes on the way. Verified spans of a
        download go out with ``sendfile``. A stream that breaks is reopened from where it
        stopped (``MAX_REOPENS`` times, e.g. when the download finished and its bytes moved to
        the cache); else the connection is broken off so that the client retries."""
        assert self.daemon is not None
        digest = fetch.digest_sha256
        whole = digest is not None and status == 200
        hasher = hashlib.sha256() if whole and not stream.download_checks_digest else None
        offset, end = stream.start + len(first), stream.end
        held, reopens = first, 0
        current: BlobStream | None = stream
        try:
            chunked = await conn.start(request, status, headers, content_length=stream.length)
            while True:
                try:
                    part = await anext(parts)
                except StopAsyncIteration:
                    break
                except (DownloadError, OSError, ValueError) as exc:
                    if reopens == MAX_REOPENS or offset >= end:
                        raise
                    reopens += 1
                    log.info("proxy: blob stream stopped at %d (%s): reopening", offset, exc)
                    await _aclose(parts)
                    assert current is not None
                    current.close()
                    current = None
                    current = await self.daemon.open_stream(fetch, start=offset, end=end)
                    parts = current.spans()
                    continue
                offset += len(part)
                await self._send_part(conn, held, chunked, hasher)
                held = part
            if whole:
                if hasher is not None:
                    held = await _as_bytes(held)
                    await asyncio.get_running_loop().run_in_executor(None, hasher.update, held)
                    matches = hasher.digest() == digest
                else:
                    assert current is not None
                    matches = await current.verified()
                if not matches:
                    raise ValueError("the blob's bytes do not match its digest")
            await self._send_part(conn, held, chunked, None)
        except Exception as exc:  # after the first byte: break off, the client retries
            log.warning("proxy: blob stream broke off: %s", exc)
            conn.abort()
            return False
        finally:
            await _aclose(parts)
            if current is not None:
                current.close()
        return True

    async def _send_part(
        self,
        conn: Connection,
        part: bytes | FileSpan,
        chunked: bool,
        hasher: hashlib._Hash | None,
    ) -> None:
        if isinstance(part, FileSpan):
            if hasher is None and not chunked:
                await conn.send_file(part, self._send_executor)
                return
            part = await _as_bytes(part)
        # Hashed in a thread (hashlib releases the GIL) while the same bytes go out.
        loop = asyncio.get_running_loop()
        hashing = loop.run_in_executor(None, hasher.update, part) if hasher is not None else None
        try:
            await conn.write_body(part, chunked)
        finally:
            if hashing is not None:
                await hashing

    # -- passed through ------------------------------------------------------------------------

    async def _pass(self, request: Request, conn: Connection, url: str) -> bool:
        body = request.body.chunks() if request.body.expected else None
        head = request.method == "HEAD"
        started = False
        try:
            async with self.upstream.send(request.method, url, request.headers, body) as response:
                headers = response_headers(response)
                has_body = not (head or response.status in (204, 304) or response.status < 200)
                chunked = await conn.start(
                    request,
                    response.status,
                    headers,
                    reason=response.reason,
                    content_length=response.content_length,
                    body=has_body,
                )
                started = True
                if has_body:
                    async for chunk in self.upstream.body(response):
                        await conn.write_body(chunk, chunked)
                    await conn.end_body(chunked)
        except (BodyAborted, *_UPSTREAM_ERRORS) as exc:
            # aiohttp reports a body that failed as a connection error of its own (the
            # BodyAborted is only its cause): the body's state says whose fault it was.
            if request.body.failed:
                log.debug("proxy: client broke off its request body: %r", exc)
                if started:
                    conn.abort()
                else:  # RFC 9112 8: an error answer to an incomplete request, then close
                    await conn.respond(
                        400, "bad or incomplete request body\n", request=request, keep_alive=False
                    )
                return False
            if started:
                log.warning("proxy: %s %s broke off: %s", request.method, url, exc)
                conn.abort()
                return False
            status = 504 if isinstance(exc, TimeoutError) else 502
            log.warning("proxy: %s %s: upstream failed: %r", request.method, url, exc)
            await conn.respond(status, f"upstream failed: {exc!r}\n", request=request, head=head)
        return True

    # -- CONNECT ---------------------------------------------------------------------------------

    async def _tunnel(self, request: Request, conn: Connection, route: ConnectRoute) -> bool:
        try:
            upstream_reader, upstream_writer = await asyncio.wait_for(
                asyncio.open_connection(route.host, route.port),
                self.config.upstream_connect_timeout_s,
            )
        except (OSError, TimeoutError) as exc:
            await conn.respond(
                502, f"cannot reach {route.host}:{route.port}: {exc}\n", request=request
            )
            return False
        try:
            await conn.send(b"HTTP/1.1 200 Connection Established\r\n\r\n")
            if request.tunnel_data:
                upstream_writer.write(request.tunnel_data)
            activity = [asyncio.get_running_loop().time()]
            pumps = {
                asyncio.create_task(self._pump(conn.reader, upstream_writer, activity)),
                asyncio.create_task(self._pump(upstream_reader, conn.writer, activity)),
            }
            try:
                while pumps:
                    done, pumps = await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
                    if any(task.exception() is not None for task in done):
                        break  # one side broke: the tunnel is over
            finally:
                for task in pumps:
                    task.cancel()
                await asyncio.gather(*pumps, return_exceptions=True)
        finally:
            await wait_closed(upstream_writer)
        return False

    async def _pump(
        self, source: asyncio.StreamReader, sink: asyncio.StreamWriter, activity: list[float]
    ) -> None:
        """Copy ``source`` to ``sink`` until EOF (then half-close) or both sides are idle."""
        loop = asyncio.get_running_loop()
        idle_s = self.config.tunnel_idle_timeout_s
        while True:
            try:
                data = await asyncio.wait_for(source.read(READ_BYTES), SWEEP_S)
            except TimeoutError:
                if loop.time() - activity[0] > idle_s:
                    raise
                continue
            if not data:
                if sink.can_write_eof():
                    sink.write_eof()
                return
            activity[0] = loop.time()
            sink.write(data)
            await asyncio.wait_for(sink.drain(), idle_s)


def _known_origin(
    url: str, check: aiohttp.ClientResponse, digest: bytes | None
) -> OriginInfo | None:
    """What the upstream's HEAD already told of a blob named by its digest (content that cannot
    change): its length, validator and Range support, so the download need not probe."""
    length = check.content_length
    if digest is None or length is None or "bytes" not in check.headers.get("Accept-Ranges", ""):
        return None
    return OriginInfo(url, length, validator_of(check.headers), accepts_ranges=True)


async def _as_bytes(part: bytes | FileSpan) -> bytes:
    if isinstance(part, bytes):
        return part
    return await asyncio.get_running_loop().run_in_executor(None, part.read)


async def _aclose(chunks: AsyncIterator[bytes] | AsyncIterator[FileSpan]) -> None:
    close = getattr(chunks, "aclose", None)
    if close is not None:
        await close()
