"""The progress display and the summary line."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from rich.console import Console

from dfget.options import DownloadResult, ProgressReport
from dfget.progress import ProgressDisplay, summary_line
from peerwire.units import format_elapsed, format_eta, share_percent

MIB = 1024 * 1024


def report(**changes: object) -> ProgressReport:
    values: dict[str, object] = {
        "total_bytes": 64 * MIB,
        "done_bytes": 16 * MIB,
        "from_peers_bytes": 13 * MIB,
        "from_origin_bytes": 3 * MIB,
        "uploaded_bytes": 2 * MIB,
        "peers": 7,
        "rate_bps": 8.0 * MIB,
        "phase": "downloading",
    }
    values.update(changes)
    return ProgressReport(**values)  # type: ignore[arg-type]


class FakeClock:
    def __init__(self) -> None:
        self.now_s = 0.0

    def __call__(self) -> float:
        return self.now_s


def recording_console() -> Console:
    return Console(file=io.StringIO(), force_terminal=True, width=120, record=True)


def test_display_shows_bytes_rate_eta_peers_share_and_phase() -> None:
    console = recording_console()
    with ProgressDisplay(console, label="model.bin") as display:
        display.update(report())
    text = console.export_text()
    assert "model.bin" in text
    assert "16.0 MiB / 64.0 MiB" in text
    assert "25.0%" in text
    assert "8.0 MiB/s" in text
    assert "ETA 0:06" in text  # 48 MiB left at 8 MiB/s
    assert "7 peers" in text
    assert "peers 81% / origin 19%" in text
    assert "uploaded 2.0 MiB" in text
    assert "downloading" in text


def test_display_with_unknown_total_and_no_bytes_yet() -> None:
    console = recording_console()
    with ProgressDisplay(console) as display:
        display.update(
            report(
                total_bytes=None,
                done_bytes=0,
                from_peers_bytes=0,
                from_origin_bytes=0,
                rate_bps=0.0,
                phase="starting",
            )
        )
    text = console.export_text()
    assert "0 B / ?" in text
    assert "ETA --:--" in text
    assert "peers - / origin -" in text
    assert "starting" in text


def test_display_says_complete_when_seeding() -> None:
    console = recording_console()
    with ProgressDisplay(console) as display:
        display.update(report(done_bytes=64 * MIB, phase="seeding"))
    text = console.export_text()
    assert "100.0%" in text
    assert "complete" in text
    assert "seeding" in text


def test_display_redraws_at_most_every_interval_but_always_on_a_phase_change() -> None:
    console = recording_console()
    clock = FakeClock()
    display = ProgressDisplay(console, clock=clock, min_interval_s=0.5)
    with display:
        display.update(report(done_bytes=1 * MIB))
        clock.now_s = 0.1
        display.update(report(done_bytes=2 * MIB))  # too soon: not drawn
        assert "2.0 MiB / 64.0 MiB" not in console.export_text(clear=False)
        display.update(report(done_bytes=3 * MIB, phase="verifying"))  # phase change: drawn
        assert "3.0 MiB / 64.0 MiB" in console.export_text(clear=False)
        clock.now_s = 0.7
        display.update(report(done_bytes=4 * MIB, phase="verifying"))
        assert "4.0 MiB / 64.0 MiB" in console.export_text(clear=False)
        clock.now_s = 0.8
        display.update(report(done_bytes=5 * MIB, phase="verifying"))
    # Leaving draws the last report even if it was throttled.
    assert "5.0 MiB / 64.0 MiB" in console.export_text()


def test_display_gives_the_terminal_back_after_an_interrupt() -> None:
    console = recording_console()
    with pytest.raises(KeyboardInterrupt), ProgressDisplay(console) as display:
        display.update(report())
        raise KeyboardInterrupt
    output = console.file.getvalue()  # type: ignore[attr-defined]
    assert output.endswith("\x1b[?25h")  # cursor shown again
    assert not console.is_alt_screen


@pytest.mark.parametrize(
    ("peers", "origin", "expected"),
    [(0, 0, None), (1, 0, (100, 0)), (0, 5, (0, 100)), (521, 119, (81, 19)), (1, 2, (33, 67))],
)
def test_share_percent_sums_to_100(
    peers: int, origin: int, expected: tuple[int, int] | None
) -> None:
    assert share_percent(peers, origin) == expected


@pytest.mark.parametrize(
    ("seconds", "text"), [(0, "0:00"), (42.4, "0:42"), (725, "12:05"), (3723, "1:02:03")]
)
def test_format_eta(seconds: float, text: str) -> None:
    assert format_eta(seconds) == text


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0.0, "0.0 s"),
        (3.21, "3.2 s"),
        (59.99, "1 min 0 s"),
        (125, "2 min 5 s"),
        (3720, "1 h 2 min"),
    ],
)
def test_format_elapsed(seconds: float, text: str) -> None:
    assert format_elapsed(seconds) == text


def result(**changes: object) -> DownloadResult:
    values: dict[str, object] = {
        "output": Path("out.bin"),
        "size_bytes": 64 * MIB,
        "elapsed_s": 3.2,
        "from_peers_bytes": int(52.1 * MIB),
        "from_origin_bytes": int(11.9 * MIB),
        "uploaded_bytes": 40 * MIB,
        "fell_back": False,
    }
    values.update(changes)
    return DownloadResult(**values)  # type: ignore[arg-type]


def test_summary_line_says_where_the_bytes_came_from() -> None:
    assert summary_line(result()) == (
        "dfget: saved out.bin (64.0 MiB) in 3.2 s, 20.0 MiB/s; from peers 52.1 MiB (81%), "
        "from origin 11.9 MiB (19%), uploaded 40.0 MiB"
    )


def test_summary_line_says_why_it_fell_back() -> None:
    line = summary_line(
        result(
            from_peers_bytes=0,
            from_origin_bytes=64 * MIB,
            uploaded_bytes=0,
            fell_back=True,
            fallback_reason="tracker unreachable",
        )
    )
    assert line.endswith(
        "from peers 0 B (0%), from origin 64.0 MiB (100%), uploaded 0 B, "
        "fell back to the origin: tracker unreachable"
    )
    assert "\n" not in line


def test_summary_line_counts_banned_peers_and_survives_zero_elapsed() -> None:
    line = summary_line(result(elapsed_s=0.0, peers_banned=("10.0.0.1:6881",)))
    assert "in 0.0 s;" in line
    assert ", banned 1 peer" in line
    assert "fell back" not in line


def test_summary_line_of_a_resumed_download_with_nothing_received() -> None:
    line = summary_line(result(from_peers_bytes=0, from_origin_bytes=0, uploaded_bytes=0))
    assert "from peers 0 B (0%), from origin 0 B (0%)" in line


def test_summary_line_of_a_copy_from_the_daemons_cache() -> None:
    line = summary_line(result(from_peers_bytes=0, from_origin_bytes=0, from_cache=True))
    assert line.endswith("; from dfdaemon's cache")
    assert "from peers" not in line
