"""What ``dfget`` shows its user: a live progress display on a terminal, one summary line after.

``ProgressDisplay`` draws ``ProgressReport`` snapshots with rich: bytes done of the total, rate,
ETA, connected peers, the share of bytes that came from peers versus the origin, and the phase.
It is fed from the download's ``on_progress`` callback, which runs on the event loop, so it
redraws at most ``min_interval_s`` apart (reports may come faster) and only when the phase
changes otherwise. ``summary_line`` is the one line printed to stderr when the download ends,
on a terminal or not.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from types import TracebackType
from typing import Final

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from dfget.options import DownloadResult, ProgressReport
from peerwire.units import format_elapsed, format_eta, format_rate, format_size, share_percent

#: Fastest redraw: 10 per second is smooth to the eye and cheap for the event loop.
DEFAULT_MIN_INTERVAL_S: Final = 0.1
BAR_WIDTH: Final = 30


def _eta_text(report: ProgressReport) -> str:
    if report.phase in ("seeding", "done"):
        return "complete"
    if report.total_bytes is None or report.rate_bps <= 0:
        return "ETA --:--"
    remaining = max(0, report.total_bytes - report.done_bytes)
    return f"ETA {format_eta(remaining / report.rate_bps)}"


def render_report(report: ProgressReport, label: str = "") -> RenderableType:
    """Two lines: the bar with bytes, rate and ETA; then peers, share, upload and phase."""
    top = Table.grid(padding=(0, 1))
    if report.total_bytes is None:
        bar = ProgressBar(total=None, width=BAR_WIDTH)
        amount = f"{format_size(report.done_bytes)} / ?"
        percent = ""
    else:
        total = max(report.total_bytes, 1)
        bar = ProgressBar(total=total, completed=min(report.done_bytes, total), width=BAR_WIDTH)
        amount = f"{format_size(report.done_bytes)} / {format_size(report.total_bytes)}"
        percent = f"{100 * min(report.done_bytes, total) / total:5.1f}%"
    cells: list[RenderableType] = [bar, percent, amount, format_rate(report.rate_bps)]
    cells.append(_eta_text(report))
    if label:
        cells.insert(0, Text(label, style="bold", overflow="ellipsis", no_wrap=True))
    top.add_row(*cells)
    share = share_percent(report.from_peers_bytes, report.from_origin_bytes)
    share_text = (
        "peers - / origin -" if share is None else f"peers {share[0]}% / origin {share[1]}%"
    )
    bottom = Text.assemble(
        (f"{report.peers} peers", "cyan"),
        "  ",
        share_text,
        f"  uploaded {format_size(report.uploaded_bytes)}",
        "  ",
        (report.phase, "green" if report.phase in ("seeding", "done") else "yellow"),
    )
    return Group(top, bottom)


class ProgressDisplay:
    """A live two-line progress display on a rich ``Console`` (stderr by default).

    Use as a context manager: entering starts the live display, leaving draws the last report
    and gives the terminal back (cursor shown, output below the display), also after Ctrl-C.
    """

    def __init__(
        self,
        console: Console | None = None,
        *,
        label: str = "",
        clock: Callable[[], float] = time.monotonic,
        min_interval_s: float = DEFAULT_MIN_INTERVAL_S,
    ) -> None:
        self.console = console if console is not None else Console(stderr=True)
        self._label = label
        self._clock = clock
        self._min_interval_s = min_interval_s
        self._live = Live(console=self.console, auto_refresh=False, transient=False)
        self._last: ProgressReport | None = None
        self._drawn: ProgressReport | None = None
        self._drawn_at_s = -float("inf")

    def __enter__(self) -> ProgressDisplay:
        self._live.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        try:
            if self._last is not None and self._last is not self._drawn:
                self._draw(self._last)
        finally:
            self._live.stop()

    def update(self, report: ProgressReport) -> None:
        """Take a new snapshot; redraw if the last redraw is old enough or the phase changed."""
        self._last = report
        now_s = self._clock()
        phase_changed = self._drawn is None or self._drawn.phase != report.phase
        if phase_changed or now_s - self._drawn_at_s >= self._min_interval_s:
            self._draw(report)
            self._drawn_at_s = now_s

    def _draw(self, report: ProgressReport) -> None:
        self._drawn = report
        self._live.update(render_report(report, self._label), refresh=True)


def summary_line(result: DownloadResult) -> str:
    """One line for stderr: what was saved, how fast, where the bytes came from.

    e.g. ``dfget: saved out.bin (64.0 MiB) in 3.2 s, 20.0 MiB/s; from peers 52.1 MiB (81%),
    from origin 11.9 MiB (19%), uploaded 40.0 MiB``, then ``, fell back to the origin: <reason>``
    when the swarm could not be used.
    """
    line = f"dfget: saved {result.output} ({format_size(result.size_bytes)}) in "
    line += format_elapsed(result.elapsed_s)
    if result.elapsed_s > 0:
        line += f", {format_rate(result.size_bytes / result.elapsed_s)}"
    if result.from_cache:
        line += "; from dfdaemon's cache"
    else:
        share = share_percent(result.from_peers_bytes, result.from_origin_bytes) or (0, 0)
        line += (
            f"; from peers {format_size(result.from_peers_bytes)} ({share[0]}%), "
            f"from origin {format_size(result.from_origin_bytes)} ({share[1]}%), "
            f"uploaded {format_size(result.uploaded_bytes)}"
        )
    if result.peers_banned:
        count = len(result.peers_banned)
        line += f", banned {count} peer{'s' if count != 1 else ''}"
    if result.fell_back:
        line += ", fell back to the origin"
        if result.fallback_reason:
            line += f": {result.fallback_reason}"
    return line
