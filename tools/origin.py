"""A static-file origin with Range support, for ``make demo`` and the benchmarks.

    python tools/origin.py DIR [--host 127.0.0.1] [--port 0] [--rate 1mbit]

Serves ``DIR/NAME`` at ``/files/NAME`` (aiohttp's file responses: ``Range``, ``ETag``,
``Last-Modified``), prints ``listening http://HOST:PORT`` once ready, and counts what it serves:
``GET /__stats`` answers ``{"bytes_sent": ..., "requests": ..., "bytes_written": ...}`` (body
bytes of every file response, from their Content-Length; with ``--rate``, also the body bytes
written so far, for a timeline). A tool for people and scripts, never imported by the
packages. ``--rate`` paces every response body together (one token bucket for the whole
origin, as a link of that speed would), for benchmarks that give the origin a speed.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import time
from pathlib import Path

from aiohttp import web

from peerwire.ratelimit import AsyncRateLimiter, TokenBucket
from peerwire.units import parse_rate


def build_app(root: Path, rate_bps: float | None = None) -> web.Application:
    counters = {"bytes_sent": 0, "requests": 0, "bytes_written": 0}
    limiter = None
    if rate_bps is not None:
        limiter = AsyncRateLimiter(TokenBucket(rate_bps, clock=time.monotonic))

    async def serve_file(request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        path = (root / name).resolve()
        if path.parent != root.resolve() or not path.is_file():
            raise web.HTTPNotFound(text=f"no such file: {name}\n")
        counters["requests"] += 1
        if limiter is None:
            return web.FileResponse(path)
        return await paced(request, path, limiter, counters)

    async def count(request: web.Request, response: web.StreamResponse) -> None:
        if request.path.startswith("/files/") and request.method == "GET":
            counters["bytes_sent"] += response.content_length or 0

    async def stats(_: web.Request) -> web.Response:
        return web.json_response(counters)

    app = web.Application()
    app.router.add_get("/files/{name}", serve_file)
    app.router.add_get("/__stats", stats)
    app.on_response_prepare.append(count)
    return app


async def paced(
    request: web.Request, path: Path, limiter: AsyncRateLimiter, counters: dict[str, int]
) -> web.StreamResponse:
    """``path`` (or the one ``bytes=FIRST-LAST`` range asked for) written in 16 KiB chunks as
    the origin's bucket allows."""
    size = path.stat().st_size
    first, last = 0, size - 1
    status = 200
    wanted = request.headers.get("Range", "")
    if wanted.startswith("bytes=") and "," not in wanted:
        start, _, end = wanted[len("bytes=") :].partition("-")
        if start.isdigit():
            first = int(start)
            last = min(int(end), size - 1) if end.isdigit() else size - 1
            status = 206
    if status == 206 and first > last:
        raise web.HTTPRequestRangeNotSatisfiable(headers={"Content-Range": f"bytes */{size}"})
    etag = f'"{path.stat().st_mtime_ns:x}-{size:x}"'
    response = web.StreamResponse(status=status, headers={"ETag": etag, "Accept-Ranges": "bytes"})
    response.content_length = last - first + 1
    if status == 206:
        response.headers["Content-Range"] = f"bytes {first}-{last}/{size}"
    await response.prepare(request)
    with path.open("rb") as stream:
        stream.seek(first)
        left = last - first + 1
        while left:
            chunk = stream.read(min(16384, left))
            await limiter.acquire(len(chunk))
            await response.write(chunk)
            counters["bytes_written"] += len(chunk)
            left -= len(chunk)
    await response.write_eof()
    return response


async def main_async(args: argparse.Namespace) -> None:
    rate = parse_rate(args.rate) if args.rate else None
    runner = web.AppRunner(build_app(Path(args.dir), rate), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, args.host, args.port)
    await site.start()
    port = runner.addresses[0][1]  # the port it got (--port 0 picks a free one)
    print(f"listening http://{args.host}:{port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    await runner.cleanup()


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("dir", help="directory whose files are served at /files/NAME")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--rate", help="pace every response together, e.g. 1mbit or 2M")
    asyncio.run(main_async(parser.parse_args()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
