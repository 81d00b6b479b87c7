"""A static-file origin with Range support, for ``make demo`` and the benchmarks.

    python tools/origin.py DIR [--host 127.0.0.1] [--port 0]

Serves ``DIR/NAME`` at ``/files/NAME`` (aiohttp's file responses: ``Range``, ``ETag``,
``Last-Modified``), prints ``listening http://HOST:PORT`` once ready, and counts what it serves:
``GET /__stats`` answers ``{"bytes_sent": ..., "requests": ...}`` (body bytes of every file
response, from their Content-Length). A tool for people and scripts, never imported by the
packages.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from pathlib import Path

from aiohttp import web


def build_app(root: Path) -> web.Application:
    counters = {"bytes_sent": 0, "requests": 0}

    async def serve_file(request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        path = (root / name).resolve()
        if path.parent != root.resolve() or not path.is_file():
            raise web.HTTPNotFound(text=f"no such file: {name}\n")
        counters["requests"] += 1
        return web.FileResponse(path)

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


async def main_async(args: argparse.Namespace) -> None:
    runner = web.AppRunner(build_app(Path(args.dir)), access_log=None)
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
    asyncio.run(main_async(parser.parse_args()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
