"""``dftop``: the live swarm view of a tracker, in the terminal (issue #6).

    dftop [--tracker URL] [--refresh 1s] [--once]

Every refresh asks the tracker for ``GET /stats?peers=0`` (every task, hottest first, no peers)
and ``GET /stats?task=<selected>&peers=<rows that fit>`` (the selected task's best peers), so
the work per refresh stays small however many peers a swarm has. ``tracker.topview`` draws the
frame; this module owns the rest: options, the HTTP client, the state between refreshes, the
keyboard (cbreak mode on the tty, read with ``loop.add_reader``) and the full-screen ``Live``.
The terminal is given back (termios restored, main screen, cursor) on ``q``, on Ctrl-C and on
errors. A tracker that cannot be reached is a status line and a retry at the next refresh,
never a traceback; ``--once`` prints one frame and exits 1 in that case.

Options come from flags, ``DFTOP_*`` variables and a TOML file (``tracker.topconfig``).
Trackers are base or announce URLs, comma-separated, tried in turn.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import os
import signal
import sys
import termios
import time
import tty
from collections.abc import Callable, Iterator, Mapping
from typing import Final

import aiohttp
from rich.console import Console
from rich.live import Live

from peerwire.settings import SettingsError
from tracker.topconfig import TopConfig, load
from tracker.topview import (
    Frame,
    Stats,
    StatsFormatError,
    TaskStats,
    parse_stats,
    plan_rows,
    render_frame,
    select_neighbour,
)

FETCH_TIMEOUT_S: Final = 5.0
#: Largest ``/stats`` answer read (1000 tasks or 1000 peers with bitfields stay well below).
MAX_ANSWER_BYTES: Final = 32 * 1024 * 1024
#: Refreshes of throughput history kept for the sparkline (wider than any terminal).
HISTORY_POINTS: Final = 512
#: ``--once`` on a pipe has no screen height; this many lines make one frame.
ONCE_HEIGHT: Final = 60
#: Escape sequences of the arrow keys (normal and application cursor mode) and plain keys.
KEYS: Final[Mapping[bytes, str]] = {
    b"\x1b[A": "up",
    b"\x1bOA": "up",
    b"\x1b[B": "down",
    b"\x1bOB": "down",
    b"k": "up",
    b"j": "down",
    b"q": "quit",
    b"Q": "quit",
}


class StatsUnavailable(Exception):
    """No tracker gave a usable ``/stats`` answer; ``str()`` says what each one did."""


def describe_failure(exc: BaseException) -> str:
    """A short reason for a status line: ``ConnectionRefused``, ``timed out``, ``HTTP 503``."""
    if isinstance(exc, aiohttp.ClientConnectorError):
        return exc.os_error.__class__.__name__.removesuffix("Error")
    if isinstance(exc, TimeoutError):
        return "timed out"
    return exc.__class__.__name__.removesuffix("Error")


class StatsClient:
    """``GET /stats`` from the first of ``trackers`` that answers (the last good one first)."""

    def __init__(self, trackers: tuple[str, ...], timeout_s: float = FETCH_TIMEOUT_S) -> None:
        self.trackers = trackers
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None
        self._preferred = 0

    @property
    def tracker_url(self) -> str:
        """The tracker answering (or asked first next)."""
        return self.trackers[self._preferred]

    async def fetch(self, task_id: str | None, peers: int) -> Stats:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        target = f"/stats?peers={max(0, peers)}" + (f"&task={task_id}" if task_id else "")
        problems: list[str] = []
        for step in range(len(self.trackers)):
            index = (self._preferred + step) % len(self.trackers)
            url = self.trackers[index]
            try:
                document = await self._get_json(url + target)
            except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                problems.append(f"tracker {url} unreachable ({describe_failure(exc)})")
                continue
            except ValueError as exc:  # HTTP status, body too large, not JSON
                problems.append(f"tracker {url} answered badly ({exc})")
                continue
            try:
                stats = parse_stats(document)
            except StatsFormatError as exc:
                problems.append(f"tracker {url} answered badly ({exc})")
                continue
            self._preferred = index
            return stats
        raise StatsUnavailable("; ".join(problems))

    async def _get_json(self, url: str) -> object:
        assert self._session is not None
        async with self._session.get(url, allow_redirects=False) as response:
            if response.status != 200:
                raise ValueError(f"HTTP {response.status}")
            body = bytearray()
            # StreamReader.read(n) may return part of the body: read it chunk by chunk.
            async for chunk in response.content.iter_chunked(64 * 1024):
                body += chunk
                if len(body) > MAX_ANSWER_BYTES:
                    raise ValueError(f"answer larger than {MAX_ANSWER_BYTES} bytes")
        return json.loads(body, parse_constant=_no_constant)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def _no_constant(name: str) -> object:
    raise ValueError(f"not JSON: {name}")  # NaN and Infinity are not rates


def decode_keys(data: bytes) -> tuple[list[str], bytes]:
    """Key names in ``data`` and the start of an escape sequence cut short (kept for later).

    Unknown bytes and sequences are skipped; the rest kept is at most two bytes.
    """
    keys: list[str] = []
    at = 0
    while at < len(data):
        if data[at] == 0x1B:
            sequence = data[at : at + 3]
            if len(sequence) < 3 and (sequence in (b"\x1b", b"\x1b[", b"\x1bO")):
                return keys, sequence
            if sequence in KEYS:
                keys.append(KEYS[sequence])
                at += 3
                continue
            at += 1
            continue
        key = KEYS.get(data[at : at + 1])
        if key is not None:
            keys.append(key)
        at += 1
    return keys, b""


@contextlib.contextmanager
def cbreak_keys(fd: int, on_key: Callable[[str], None]) -> Iterator[None]:
    """Keys of the tty ``fd`` to ``on_key`` while inside; termios restored on the way out."""
    loop = asyncio.get_running_loop()
    saved = termios.tcgetattr(fd)
    pending = b""

    def readable() -> None:
        nonlocal pending
        try:
            data = os.read(fd, 64)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:  # the terminal went away: stop listening
            loop.remove_reader(fd)
            return
        keys, pending = decode_keys(pending + data)
        for key in keys:
            on_key(key)

    try:
        tty.setcbreak(fd, termios.TCSANOW)  # no echo, no line buffering; Ctrl-C still signals
        loop.add_reader(fd, readable)
        yield
    finally:
        loop.remove_reader(fd)
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


class TopApp:
    """The state between refreshes (last answers, selection, history) and the live loop."""

    def __init__(
        self,
        config: TopConfig,
        console: Console,
        client: StatsClient | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.console = console
        self.client = client if client is not None else StatsClient(config.trackers)
        self._clock = clock
        self.overview: Stats | None = None
        self.detail: TaskStats | None = None
        self.selected_id: str | None = None
        self.history_bps: collections.deque[float] = collections.deque(maxlen=HISTORY_POINTS)
        self.error: str | None = None
        self._updated_at: float | None = None
        self._live: Live | None = None
        self._wake = asyncio.Event()
        self._quit = asyncio.Event()

    @property
    def quitting(self) -> bool:
        return self._quit.is_set()

    def frame(self) -> Frame:
        if self.error is not None:
            status, is_error = f"{self.error}, retrying", True
            if self._updated_at is not None:
                status += f" (showing data of {self._clock() - self._updated_at:.0f} s ago)"
        else:
            status, is_error = "", False
        return Frame(
            tracker_url=self.client.tracker_url,
            refresh_s=self.config.refresh_s,
            overview=self.overview,
            detail=self.detail,
            selected_id=self.selected_id,
            history_bps=tuple(self.history_bps),
            status=status,
            status_is_error=is_error,
        )

    async def refresh(self, height: int) -> None:
        """Fetch the overview, then the selected task's peers; on failure keep the last data."""
        try:
            overview = await self.client.fetch(None, peers=0)
            ids = [t.id for t in overview.tasks]
            if self.selected_id not in ids:
                self.selected_id = ids[0] if ids else None
            detail = None
            if self.selected_id is not None:
                rows = plan_rows(height, overview, self.selected_id).peer_rows
                found = (await self.client.fetch(self.selected_id, peers=rows)).tasks
                detail = found[0] if found else None
        except StatsUnavailable as exc:
            self.error = str(exc)
            return
        self.overview, self.detail, self.error = overview, detail, None
        self._updated_at = self._clock()
        self.history_bps.append(overview.totals.download_bps)

    def on_key(self, key: str) -> None:
        """Move the selection (drawn at once, its peers fetched at once) or quit."""
        if key == "quit":
            self._quit.set()
            self._wake.set()
            return
        tasks = self.overview.tasks if self.overview else ()
        chosen = select_neighbour(tasks, self.selected_id, -1 if key == "up" else 1)
        if chosen != self.selected_id:
            self.selected_id = chosen
            self.draw()
            self._wake.set()

    def draw(self) -> None:
        if self._live is not None:
            width, height = self.console.size
            self._live.update(render_frame(self.frame(), width, height), refresh=True)

    async def run_live(self) -> None:
        """Full-screen refresh loop until ``q`` (or a signal ends the program)."""
        loop = asyncio.get_running_loop()
        with contextlib.ExitStack() as stack:
            stdin = sys.stdin.fileno() if sys.stdin is not None else -1
            if stdin >= 0 and os.isatty(stdin):
                stack.enter_context(cbreak_keys(stdin, self.on_key))
            self._live = stack.enter_context(
                Live(
                    console=self.console,
                    screen=True,
                    auto_refresh=False,
                    redirect_stdout=False,
                    redirect_stderr=False,
                )
            )
            loop.add_signal_handler(signal.SIGWINCH, self.draw)
            stack.callback(loop.remove_signal_handler, signal.SIGWINCH)
            stack.callback(setattr, self, "_live", None)
            self.draw()
            while not self._quit.is_set():
                deadline = loop.time() + self.config.refresh_s
                self._wake.clear()
                fetching = asyncio.ensure_future(self.refresh(self.console.size.height))
                quitting = asyncio.ensure_future(self._quit.wait())
                try:
                    await asyncio.wait({fetching, quitting}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    for future in (fetching, quitting):
                        future.cancel()
                if self._quit.is_set():
                    break
                self.draw()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), max(0.0, deadline - loop.time()))


async def _run(config: TopConfig) -> int:
    if config.once:
        console = Console(highlight=False)
        if not console.is_terminal and "LINES" not in os.environ:
            console.height = ONCE_HEIGHT
        app = TopApp(config, console)
        try:
            await app.refresh(console.height)
        finally:
            await app.client.close()
        if app.error is not None:
            print(f"dftop: {app.error}", file=sys.stderr)
            return 1
        console.print(render_frame(app.frame(), console.width, console.height))
        return 0
    console = Console(highlight=False)
    if not console.is_terminal:
        print(
            "dftop: the live view needs a terminal; use --once for a single frame", file=sys.stderr
        )
        return 2
    app = TopApp(config, console)
    try:
        await app.run_live()
    finally:
        await app.client.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    try:
        config, loaded, print_config = load(argv, os.environ)
    except SettingsError as exc:
        print(f"dftop: {exc}", file=sys.stderr)
        return 2
    for notice in loaded.notices:
        print(f"dftop: {notice}", file=sys.stderr)
    if print_config:
        print("\n".join(loaded.describe({"": config})))
        return 0
    try:
        return asyncio.run(_run(config))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
