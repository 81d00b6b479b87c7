"""One benchmark client: imports everything first, then downloads when told to, and reports.

    python bench/p2p_client.py --url URL --tracker URL --workdir DIR [--peer-host H]
                               [--rate BYTES_PER_S]

Started by ``bench/run.py``, one per client host (network namespace), it keeps Python's start-up
out of the measured time. It talks JSON lines: on stdout it prints ``{"event": "ready"}`` once
everything is imported, then reads commands on stdin, one per line:

* ``native``: one plain aiohttp GET of the whole file into ``DIR/native.bin`` (resumed with a
  Range request after ``NATIVE_STALL_S`` without a byte, like aria2c or wget);
* ``p2p``: ``dfget.engine.download`` through the tracker into ``DIR/p2p.bin``, then it keeps
  seeding (a seed time longer than any run) until ``stop``, so that early finishers keep serving
  the rest of the swarm;
* ``stop``: ends the running phase (cancels the seeding download), hashes the output and prints
  ``{"event": "result", ...}``, deletes the output;
* ``quit`` or end of input: exit.

When a download completes it prints ``{"event": "done", "phase", "start", "end"}`` at once
(wall-clock ``time.time()`` seconds, the clock every namespace shares). ``end`` is when the
complete file appeared: for P2P the ctime of ``p2p.bin``, which the verified rename sets (read
in dfget's ``on_complete``, called right after it). A failure prints
``{"event": "error", "phase", "error"}``. ``--rate`` (loopback mode) limits both the native
GET and dfget (download and upload) in software; with namespaces the links are shaped by tc.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import encodings.idna  # noqa: F401  (socket imports it at a first connect: not in the timed part)
import gc
import hashlib
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any, Final

import aiohttp
import uvloop

from dfget.engine import download
from dfget.options import DownloadOptions, DownloadResult, ProgressReport
from peerwire.auth import load_secret
from peerwire.ratelimit import AsyncRateLimiter, TokenBucket

#: Seeding lasts until ``stop``; this only bounds a client whose harness vanished.
SEED_FOR_S: Final = 3600.0
CHUNK_BYTES: Final = 64 * 1024
#: The native GET is resumed (Range) after this long without a byte, at most NATIVE_ATTEMPTS
#: times in all (aria2c's default --timeout is 60 s).
NATIVE_STALL_S: Final = 60.0
NATIVE_ATTEMPTS: Final = 10
#: Fractions of the file at which the time is noted (from progress reports, 0.25 s apart).
MARKS: Final = (0.1, 0.25, 0.5, 0.75, 0.9)
#: Every progress report is also kept as ``[seconds since go, done bytes, uploaded bytes,
#: peers]`` (the run's swarm timeline, ``run_report.swarm_timeline``), at most this many.
MAX_TIMELINE: Final = 2400
#: At ``stop``, how long to wait for a progress report taken after it.
FRESH_REPORT_S: Final = 1.0
#: Warnings of dfget kept for the report (fallback to the origin, bans), at most.
MAX_WARNINGS: Final = 20


def emit(event: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while chunk := stream.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


class _Warnings(logging.Handler):
    """Keeps dfget's warnings (a swarm stall that fell back to the origin shows here)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if len(self.messages) < MAX_WARNINGS:
            self.messages.append(f"{record.name}: {record.getMessage()}")


class Client:
    def __init__(self, args: argparse.Namespace, warnings: _Warnings) -> None:
        self.args = args
        self.workdir = Path(args.workdir)
        self.warnings = warnings
        self.phase: str | None = None
        self.task: asyncio.Task[None] | None = None
        self.start = 0.0
        self.end: float | None = None
        self.report: ProgressReport | None = None
        self.marks: dict[str, float] = {}
        self.timeline: list[list[float]] = []
        self.reports = 0
        self.error: str | None = None
        #: Native GETs resumed after a stall (``NATIVE_STALL_S``) in this phase.
        self.native_resumes = 0

    def output(self, phase: str) -> Path:
        return self.workdir / f"{phase}.bin"

    def begin(self, phase: str) -> None:
        self.phase, self.start, self.end, self.error = phase, time.time(), None, None
        self.report, self.marks, self.reports, self.timeline = None, {}, 0, []
        self.native_resumes = 0
        self.warnings.messages.clear()
        runner = self._native() if phase == "native" else self._p2p()
        self.task = asyncio.create_task(self._guard(phase, runner))

    async def _guard(self, phase: str, runner: Any) -> None:
        try:
            await runner
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # reported to the harness, which fails the run with it
            self.error = f"{type(exc).__name__}: {exc}"
            emit({"event": "error", "phase": phase, "error": self.error})

    def _done(self, end: float) -> None:
        self.end = end
        emit({"event": "done", "phase": self.phase, "start": self.start, "end": end})

    async def _native(self) -> None:
        limiter = None
        if self.args.rate:
            limiter = AsyncRateLimiter(TokenBucket(self.args.rate, clock=time.monotonic))
        output = self.output("native")
        # A slow native client is what is measured, but a connection that carries nothing for
        # NATIVE_STALL_S is resumed with a Range request, as aria2c (its --timeout) and wget do:
        # with 200 flows on the origin's link, a flow can lose its packets until TCP gives up
        # (ETIMEDOUT at the origin after ~15 minutes of backoff) and the client never hears.
        timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=None, sock_read=self.args.native_stall
        )
        written = 0
        async with aiohttp.ClientSession(timeout=timeout) as session:
            with output.open("wb") as stream:
                for attempt in range(NATIVE_ATTEMPTS):
                    headers = {"Range": f"bytes={written}-"} if written else {}
                    try:
                        async with session.get(self.args.url, headers=headers) as response:
                            response.raise_for_status()
                            if written and response.status != 206:
                                raise RuntimeError(f"resume got {response.status}, not 206")
                            async for chunk in response.content.iter_chunked(CHUNK_BYTES):
                                if limiter is not None:
                                    await limiter.acquire(len(chunk))
                                stream.write(chunk)
                                written += len(chunk)
                        break
                    except (TimeoutError, aiohttp.ClientPayloadError, aiohttp.ClientOSError):
                        if attempt == NATIVE_ATTEMPTS - 1:
                            raise
                        self.native_resumes += 1
        self._done(time.time())

    async def _p2p(self) -> None:
        rate = self.args.rate or None
        options = DownloadOptions(
            url=self.args.url,
            output=self.output("p2p"),
            trackers=(self.args.tracker,),
            rate_bps=rate,
            upload_rate_bps=self.args.upload_rate or rate,
            seed_time_s=SEED_FOR_S,
            peer_host=self.args.peer_host,
            secret=load_secret(None, os.environ.get("DRAGONFLY_SECRET")),
        )
        output = options.output

        def complete(result: DownloadResult) -> None:
            # Called right after the verified rename, which set ctime: the exact completion
            # time (anything outside [start, now] is not that rename). Never raises into dfget.
            now = time.time()
            try:
                ctime = output.stat().st_ctime
            except OSError:
                ctime = now
            self._done(ctime if self.start <= ctime <= now else now)

        job = asyncio.create_task(
            download(options, on_progress=self._on_progress, on_complete=complete)
        )
        try:
            await job  # it seeds until ``stop`` cancels this
        finally:
            job.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await job

    def _on_progress(self, report: ProgressReport) -> None:
        self.report = report
        self.reports += 1
        now = time.time() - self.start
        if len(self.timeline) < MAX_TIMELINE:
            self.timeline.append(
                [round(now, 3), report.done_bytes, report.uploaded_bytes, report.peers]
            )
        if report.total_bytes:
            fraction = report.done_bytes / report.total_bytes
            for mark in MARKS:
                key = f"{mark:g}"
                if fraction >= mark and key not in self.marks:
                    self.marks[key] = round(now, 3)

    async def stop(self) -> None:
        phase, task = self.phase, self.task
        if phase is None or task is None:
            emit({"event": "result", "phase": None})
            return
        if phase == "p2p" and not task.done():
            # Reports come every 0.25 s: wait for one taken now, after the download completed,
            # so the byte counters are final.
            seen, give_up = self.reports, time.monotonic() + FRESH_REPORT_S
            while self.reports == seen and time.monotonic() < give_up:
                await asyncio.sleep(0.02)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        output = self.output(phase)
        result: dict[str, Any] = {
            "event": "result",
            "phase": phase,
            "start": self.start,
            "end": self.end,
            "error": self.error,
            "warnings": list(self.warnings.messages),
            "marks_s": self.marks,
            "timeline": self.timeline,
            "native_resumes": self.native_resumes,
        }
        if output.exists() and self.end is not None:
            result["bytes"] = output.stat().st_size
            result["sha256"] = await asyncio.to_thread(file_sha256, output)
        if self.report is not None:
            result["from_peers_bytes"] = self.report.from_peers_bytes
            result["from_origin_bytes"] = self.report.from_origin_bytes
            result["uploaded_bytes"] = self.report.uploaded_bytes
            result["last_report"] = {"phase": self.report.phase, "count": self.reports,
                                     "done_bytes": self.report.done_bytes}  # fmt: skip
        for leftover in self.workdir.glob(f"{phase}.bin*"):
            leftover.unlink(missing_ok=True)
        self.phase = self.task = None
        emit(result)


async def main_async(args: argparse.Namespace) -> None:
    warnings = _Warnings()
    logging.getLogger("dfget").addHandler(warnings)
    logging.getLogger("peerwire").addHandler(warnings)
    logging.getLogger("asyncio").addHandler(warnings)  # e.g. a task that died unobserved
    client = Client(args, warnings)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    gc.freeze()  # modules live as long as the process: keep them out of the GC's scans
    emit({"event": "ready", "pid": os.getpid()})
    while line := (await reader.readline()).decode().strip():
        if line in ("native", "p2p"):
            if client.phase is not None:
                await client.stop()
            client.begin(line)
        elif line == "stop":
            await client.stop()
        elif line == "quit":
            break
        else:
            emit({"event": "error", "phase": None, "error": f"unknown command {line!r}"})
    if client.phase is not None:
        await client.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True, help="the file on the origin")
    parser.add_argument("--tracker", required=True, help="tracker base URL")
    parser.add_argument("--workdir", required=True, help="where the downloads are written")
    parser.add_argument("--peer-host", default="0.0.0.0", help="address dfget listens on")
    parser.add_argument("--rate", type=float, default=0.0, help="bytes/s limit; 0 = none")
    parser.add_argument(
        "--upload-rate", type=float, default=0.0, help="dfget's upload limit, bytes/s; 0 = --rate"
    )
    parser.add_argument(
        "--native-stall",
        type=float,
        default=NATIVE_STALL_S,
        help=f"resume the native GET after this many seconds without a byte ({NATIVE_STALL_S:g})",
    )
    parser.add_argument("--log-level", default="WARNING", help="dfget's logging on stderr")
    args = parser.parse_args()
    logging.basicConfig(
        level=args.log_level.upper(),
        stream=sys.stderr,
        format="%(created).3f %(levelname)s %(name)s: %(message)s",
    )
    with contextlib.suppress(KeyboardInterrupt):
        uvloop.run(main_async(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
