"""A small real upstream registry (aiohttp.web) and a byte-exact HTTP/1.1 client for the tests.

The upstream records what reached it (``Upstream.seen``: method, path with query, headers as
received) and counts blob GETs, so a test can tell what the proxy forwarded and what it served
from the daemon. Private blobs need ``Authorization: Basic dXNlcjpwYXNz`` (user:pass).
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import json
import os
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web
from multidict import CIMultiDict

GOOD_AUTH = "Basic dXNlcjpwYXNz"
GZIPPED_MANIFEST = gzip.compress(b'{"schemaVersion": 2}')
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class Blob:
    path: Path
    digest: str
    private: bool = False
    #: GETs with a Range header are refused (403): the daemon's download fails at once.
    no_ranges: bool = False


@dataclass
class Upstream:
    root: Path
    blobs: dict[str, Blob] = field(default_factory=dict)
    seen: list[tuple[str, str, list[tuple[str, str]]]] = field(default_factory=list)
    #: The client's port of each request in ``seen``: which connection it came on.
    client_ports: list[int] = field(default_factory=list)
    blob_gets: Counter[str] = field(default_factory=Counter)
    port: int = 0
    runner: web.AppRunner | None = None

    def add_blob(self, name: str, size_bytes: int, **flags: bool) -> Blob:
        data = os.urandom(size_bytes)
        path = self.root / name
        path.write_bytes(data)
        blob = Blob(path, "sha256:" + hashlib.sha256(data).hexdigest(), **flags)
        self.blobs[blob.digest] = blob
        return blob

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._record])
        app.router.add_get("/v2/", self.ping)
        app.router.add_route("*", "/v2/echo/manifests/{ref}", self.echo)
        app.router.add_get("/v2/gz/manifests/{ref}", self.gzipped)
        app.router.add_get("/v2/moved/manifests/{ref}", self.moved)
        app.router.add_route("*", "/v2/{name:.+}/blobs/uploads/{upload}", self.upload)
        app.router.add_get("/v2/{name:.+}/blobs/{digest}", self.blob)
        app.router.add_get("/files/{file}", self.file)
        return app

    @web.middleware
    async def _record(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.raw_headers]
        self.seen.append((request.method, request.raw_path, headers))
        peer = request.transport.get_extra_info("peername") if request.transport else None
        self.client_ports.append(peer[1] if peer else 0)
        return await handler(request)

    async def start(self) -> None:
        self.runner = web.AppRunner(self.app(), access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def close(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    async def ping(self, _: web.Request) -> web.Response:
        return web.json_response({}, headers={"Docker-Distribution-API-Version": "registry/2.0"})

    async def echo(self, request: web.Request) -> web.Response:
        method, raw_path, headers = self.seen[-1]
        body = await request.read()
        document = {"method": method, "path": raw_path, "headers": headers, "body": len(body)}
        return web.json_response(document)

    async def gzipped(self, _: web.Request) -> web.Response:
        headers = CIMultiDict(
            [
                ("Content-Encoding", "gzip"),
                ("Content-Type", "application/vnd.oci.image.manifest.v1+json"),
                ("X-Multi", "one"),
                ("X-Multi", "two"),
            ]
        )
        return web.Response(body=GZIPPED_MANIFEST, headers=headers)

    async def moved(self, _: web.Request) -> web.Response:
        return web.Response(status=307, headers={"Location": "/v2/echo/manifests/other?x=%2F"})

    async def upload(self, request: web.Request) -> web.Response:
        hasher, length = hashlib.sha256(), 0
        async for chunk in request.content.iter_any():
            hasher.update(chunk)
            length += len(chunk)
        document = {
            "sha256": hasher.hexdigest(),
            "length": length,
            "content_length": request.headers.get("Content-Length"),
            "chunked": "chunked" in request.headers.get("Transfer-Encoding", ""),
        }
        return web.json_response(document, status=201)

    async def blob(self, request: web.Request) -> web.StreamResponse:
        blob = self.blobs.get(request.match_info["digest"])
        if request.method == "GET":
            self.blob_gets[request.match_info["digest"]] += 1
        if blob is None:
            return web.json_response({"errors": [{"code": "BLOB_UNKNOWN"}]}, status=404)
        if blob.private and request.headers.get("Authorization") != GOOD_AUTH:
            headers = CIMultiDict(
                [
                    ("WWW-Authenticate", 'Basic realm="fake"'),
                    ("WWW-Authenticate", 'Bearer realm="http://auth.invalid/token"'),
                ]
            )
            body = {"errors": [{"code": "UNAUTHORIZED"}]}
            return web.json_response(body, status=401, headers=headers)
        if blob.no_ranges and request.method == "GET" and "Range" in request.headers:
            return web.Response(status=403, text="no ranges here")
        return web.FileResponse(blob.path, headers={"Docker-Content-Digest": blob.digest})

    async def file(self, request: web.Request) -> web.StreamResponse:
        path = self.root / request.match_info["file"]
        if not path.is_file():
            raise web.HTTPNotFound()
        return web.FileResponse(path)


@dataclass
class Reply:
    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        return next((v for n, v in self.headers if n.lower() == name.lower()), None)

    def all(self, name: str) -> list[str]:
        return [v for n, v in self.headers if n.lower() == name.lower()]

    def json(self) -> dict[str, object]:
        document: dict[str, object] = json.loads(self.body)
        return document


async def read_reply(reader: asyncio.StreamReader, *, head: bool = False) -> Reply:
    """One response, framed as RFC 9112 6.3 says (HEAD: no body; length; chunked; close)."""
    raw = await reader.readuntil(b"\r\n\r\n")
    lines = raw.decode("latin-1").split("\r\n")[:-2]
    _, status, reason = lines[0].split(" ", 2)
    headers = [(n, v.strip()) for n, _, v in (line.partition(":") for line in lines[1:])]
    reply = Reply(int(status), reason, headers, b"")
    if head or reply.status in (204, 304):
        return reply
    if reply.header("Content-Length") is not None:
        reply.body = await reader.readexactly(int(reply.header("Content-Length") or 0))
    elif (reply.header("Transfer-Encoding") or "").lower() == "chunked":
        parts = []
        while True:
            size = int((await reader.readuntil(b"\r\n")).strip(), 16)
            parts.append(await reader.readexactly(size + 2))
            if size == 0:
                break
        reply.body = b"".join(part[:-2] for part in parts)
    else:
        reply.body = await reader.read()
    return reply


async def exchange(port: int, data: bytes, *, head: bool = False) -> Reply:
    """Send raw ``data`` on a new connection and read one response."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        return await read_reply(reader, head=head)
    finally:
        writer.close()
        await writer.wait_closed()


def get(target: str, *headers: str, method: str = "GET", host: str = "mirror") -> bytes:
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}", "Connection: close", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()
