"""A real HTTP origin for tests, with Range support and misbehaviours on demand.

Run as a process (``python -m tests.helpers.origin_server --dir DIR [--port 0]``): it prints
``listening http://HOST:PORT`` and serves until SIGTERM. Routes (NAME is a file in DIR):

* ``/files/NAME``       200, or 206 for one ``Range`` (RFC 9110 14.1.2: ``a-b``, ``a-``, ``-n``),
                        416 when unsatisfiable; strong ETag, Last-Modified, Accept-Ranges.
* ``/norange/NAME``     ignores Range: always 200, no Accept-Ranges.
* ``/status/CODE``      answers CODE with a short body.
* ``/flaky/K/NAME``     the first K requests to this path answer 500, then like ``/files``.
* ``/truncate/NAME``    right headers, then half the body, then the connection closes.
* ``/cut/K/NAME``       the first K requests to this path are truncated so, then like ``/files``.
* ``/slow/BPS/NAME``    like ``/files`` at BPS bytes/s.
* ``/late/MS/NAME``     like ``/files``, answered MS milliseconds after the request (latency).
* ``/stall/NAME``       the first request without Range gets half the body, then nothing more
                        on an open connection (a flow starved on a congested link); Range
                        requests are answered like ``/files``.
* ``/mutable/NAME``     like ``/files`` the first time; afterwards NAME.v2 if it exists, else
                        NAME with one byte appended (new length, new ETag).
* ``/redirect/NAME``    302 to ``/files/NAME``.
* ``/auth/NAME``        401 unless ``Authorization: Bearer test``, then like ``/files``.
* ``GET /__stats``      ``{"bytes_sent", "requests", "by_path", "requests_by_path"}``;
  ``POST /__reset`` zeroes them. ``bytes_sent`` counts file body bytes handed to the socket.

``origin_process(directory)`` runs it for a test and stops it afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import signal
import subprocess
import sys
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from email.utils import formatdate
from pathlib import Path
from typing import Any

from aiohttp import web

from tests.helpers.processes import listening_process

SEND_CHUNK_BYTES = 64 * 1024
_RANGE_RE = re.compile(r"bytes=(\d*)-(\d*)")


@dataclass(frozen=True)
class Content:
    """One version of a file: where its bytes are, plus an optional in-memory suffix."""

    path: Path
    size: int
    etag: str
    last_modified: str
    suffix: bytes = b""

    @classmethod
    def of(cls, path: Path, suffix: bytes = b"") -> Content:
        stat = path.stat()
        size = stat.st_size + len(suffix)
        # Strong ETag from size and mtime, as common servers build it.
        return cls(
            path,
            size,
            f'"{size:x}-{stat.st_mtime_ns:x}"',
            formatdate(stat.st_mtime, usegmt=True),
            suffix,
        )

    def read(self, offset: int, size_bytes: int) -> bytes:
        file_size = self.size - len(self.suffix)
        data = b""
        if offset < file_size:
            with self.path.open("rb") as handle:
                handle.seek(offset)
                data = handle.read(min(size_bytes, file_size - offset))
        if len(data) < size_bytes:
            start = max(0, offset - file_size)
            data += self.suffix[start : start + size_bytes - len(data)]
        return data


def parse_range(header: str | None, size: int) -> tuple[int, int] | str | None:
    """``(first, last)`` inclusive for one satisfiable range; None to ignore; "416" otherwise."""
    if header is None:
        return None
    match = _RANGE_RE.fullmatch(header.strip())
    if match is None or (not match[1] and not match[2]):
        return None  # RFC 9110: a server may ignore a Range it does not understand (or multi)
    if not match[1]:  # suffix range: the last n bytes
        length = int(match[2])
        if length == 0 or size == 0:
            return "416"
        return max(0, size - length), size - 1
    first = int(match[1])
    last = int(match[2]) if match[2] else size - 1
    if match[2] and last < first:
        return None  # invalid: ignored
    if first >= size:
        return "416"
    return first, min(last, size - 1)


class OriginState:
    """The server's state: directory, counters, per-path request counts."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory.resolve()
        self.bytes_sent = 0
        self.requests = 0
        self.bytes_by_path: Counter[str] = Counter()
        self.requests_by_path: Counter[str] = Counter()

    def content(self, name: str) -> Content:
        path = (self.directory / name).resolve()
        if path.parent != self.directory or not path.is_file():
            raise web.HTTPNotFound(text=f"no such file: {name}\n")
        return Content.of(path)

    def count_request(self, request: web.Request) -> int:
        """Count one request; returns how many this path has seen, this one included."""
        self.requests += 1
        self.requests_by_path[request.path] += 1
        return self.requests_by_path[request.path]

    async def serve(
        self,
        request: web.Request,
        content: Content,
        *,
        ranges: bool = True,
        rate_bps: float | None = None,
        truncate: bool = False,
        stall: bool = False,
    ) -> web.StreamResponse:
        """Send ``content`` (or the requested range of it), counting body bytes written."""
        first, last = 0, content.size - 1
        response = web.StreamResponse(status=200)
        if ranges:
            response.headers["Accept-Ranges"] = "bytes"
            wanted = parse_range(request.headers.get("Range"), content.size)
            if wanted == "416":
                response = web.StreamResponse(status=416)
                response.headers["Content-Range"] = f"bytes */{content.size}"
                response.content_length = 0
                await response.prepare(request)
                return response
            if isinstance(wanted, tuple):
                first, last = wanted
                response.set_status(206)
                response.headers["Content-Range"] = f"bytes {first}-{last}/{content.size}"
        response.headers["ETag"] = content.etag
        response.headers["Last-Modified"] = content.last_modified
        response.content_type = "application/octet-stream"
        length = last - first + 1
        response.content_length = length
        if truncate or stall:
            response.force_close()
            length //= 2
        await response.prepare(request)
        if request.method == "HEAD":
            return response
        offset = first
        end = first + length
        chunk_bytes = SEND_CHUNK_BYTES
        if rate_bps is not None:
            chunk_bytes = max(1, min(chunk_bytes, int(rate_bps / 20)))
        while offset < end:
            data = content.read(offset, min(chunk_bytes, end - offset))
            try:
                await response.write(data)
            except ConnectionResetError:
                return response  # the client went away (a probe that wanted no body)
            offset += len(data)
            self.bytes_sent += len(data)
            self.bytes_by_path[request.path] += len(data)
            if rate_bps is not None:
                await asyncio.sleep(len(data) / rate_bps)
        if truncate:
            assert request.transport is not None
            request.transport.close()  # the client sees fewer bytes than Content-Length
        while stall and request.transport is not None and not request.transport.is_closing():
            await asyncio.sleep(0.1)  # open and silent until the client gives up
        return response


def build_app(directory: Path) -> web.Application:
    origin = OriginState(directory)

    async def files(request: web.Request) -> web.StreamResponse:
        origin.count_request(request)
        return await origin.serve(request, origin.content(request.match_info["name"]))

    async def norange(request: web.Request) -> web.StreamResponse:
        origin.count_request(request)
        content = origin.content(request.match_info["name"])
        return await origin.serve(request, content, ranges=False)

    async def status(request: web.Request) -> web.StreamResponse:
        origin.count_request(request)
        code = int(request.match_info["code"])
        return web.Response(status=code, text=f"status {code} as asked\n")

    async def flaky(request: web.Request) -> web.StreamResponse:
        seen = origin.count_request(request)
        content = origin.content(request.match_info["name"])
        if seen <= int(request.match_info["k"]):
            return web.Response(status=500, text="flaky: failing on purpose\n")
        return await origin.serve(request, content)

    async def truncate(request: web.Request) -> web.StreamResponse:
        origin.count_request(request)
        content = origin.content(request.match_info["name"])
        return await origin.serve(request, content, truncate=True)

    async def cut(request: web.Request) -> web.StreamResponse:
        seen = origin.count_request(request)
        content = origin.content(request.match_info["name"])
        return await origin.serve(request, content, truncate=seen <= int(request.match_info["k"]))

    async def slow(request: web.Request) -> web.StreamResponse:
        origin.count_request(request)
        content = origin.content(request.match_info["name"])
        rate_bps = float(request.match_info["bps"])
        return await origin.serve(request, content, rate_bps=rate_bps)

    async def late(request: web.Request) -> web.StreamResponse:
        origin.count_request(request)
        content = origin.content(request.match_info["name"])
        await asyncio.sleep(int(request.match_info["ms"]) / 1000)
        return await origin.serve(request, content)

    async def stall(request: web.Request) -> web.StreamResponse:
        origin.count_request(request)
        content = origin.content(request.match_info["name"])
        return await origin.serve(request, content, stall="Range" not in request.headers)

    async def mutable(request: web.Request) -> web.StreamResponse:
        seen = origin.count_request(request)
        name = request.match_info["name"]
        content = origin.content(name)
        if seen > 1:
            v2 = content.path.with_name(content.path.name + ".v2")
            content = Content.of(v2) if v2.is_file() else Content.of(content.path, b"\x00")
        return await origin.serve(request, content)

    async def redirect(request: web.Request) -> web.StreamResponse:
        origin.count_request(request)
        raise web.HTTPFound(f"/files/{request.match_info['name']}")

    async def auth(request: web.Request) -> web.StreamResponse:
        origin.count_request(request)
        if request.headers.get("Authorization") != "Bearer test":
            raise web.HTTPUnauthorized(
                headers={"WWW-Authenticate": 'Bearer realm="origin"'}, text="who are you?\n"
            )
        return await origin.serve(request, origin.content(request.match_info["name"]))

    async def stats(request: web.Request) -> web.StreamResponse:
        return web.json_response(
            {
                "bytes_sent": origin.bytes_sent,
                "requests": origin.requests,
                "by_path": dict(origin.bytes_by_path),
                "requests_by_path": dict(origin.requests_by_path),
            }
        )

    async def reset(request: web.Request) -> web.StreamResponse:
        origin.bytes_sent = 0
        origin.requests = 0
        origin.bytes_by_path.clear()
        origin.requests_by_path.clear()
        return web.json_response({"reset": True})

    app = web.Application()
    app.router.add_get("/files/{name}", files)
    app.router.add_get("/norange/{name}", norange)
    app.router.add_route("*", "/status/{code:\\d{3}}", status)
    app.router.add_get("/flaky/{k:\\d+}/{name}", flaky)
    app.router.add_get("/truncate/{name}", truncate)
    app.router.add_get("/cut/{k:\\d+}/{name}", cut)
    app.router.add_get("/slow/{bps:\\d+}/{name}", slow)
    app.router.add_get("/late/{ms:\\d+}/{name}", late)
    app.router.add_get("/stall/{name}", stall)
    app.router.add_get("/mutable/{name}", mutable)
    app.router.add_get("/redirect/{name}", redirect)
    app.router.add_get("/auth/{name}", auth)
    app.router.add_get("/__stats", stats)
    app.router.add_post("/__reset", reset)
    return app


async def _serve(directory: Path, host: str, port: int) -> None:
    runner = web.AppRunner(build_app(directory), access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound_port = runner.addresses[0][1]
    print(f"listening http://{host}:{bound_port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="HTTP origin for tests (Range, misbehaviours)")
    parser.add_argument("--dir", type=Path, required=True, help="directory of served files")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args(argv)
    asyncio.run(_serve(args.dir, args.host, args.port))


@dataclass
class OriginServer:
    process: subprocess.Popen[str]
    base_url: str

    def stats(self) -> dict[str, Any]:
        with urllib.request.urlopen(self.base_url + "/__stats", timeout=10) as response:
            document: dict[str, Any] = json.loads(response.read())
            return document

    def reset(self) -> None:
        request = urllib.request.Request(self.base_url + "/__reset", method="POST", data=b"")
        with urllib.request.urlopen(request, timeout=10) as response:
            response.read()


@contextlib.contextmanager
def origin_process(directory: Path) -> Iterator[OriginServer]:
    """The origin as a process on a free port of 127.0.0.1; SIGTERM (then SIGKILL) on exit."""
    command = [sys.executable, "-m", "tests.helpers.origin_server", "--dir", str(directory)]
    with listening_process(command, "origin") as (process, url, _):
        yield OriginServer(process, url)


if __name__ == "__main__":
    main()
