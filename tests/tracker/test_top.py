"""dftop: frames rendered from fixture ``/stats`` documents, keys, options, the fetch loop state."""

from __future__ import annotations

import asyncio
import io
import json
import os
import pty
import re
import termios
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from rich.console import Console

from peerwire.settings import SettingsError
from tests.integration.trackers import free_port
from tracker.config import TrackerConfig
from tracker.manifests import ManifestUpdate
from tracker.model import AnnounceRequest
from tracker.swarm import Swarm
from tracker.top import (
    StatsClient,
    StatsUnavailable,
    TopApp,
    cbreak_keys,
    decode_keys,
    main,
)
from tracker.topconfig import DEFAULT_TRACKER, TopConfig, parse_args
from tracker.topview import (
    FIXED_LINES,
    Frame,
    Stats,
    StatsFormatError,
    parse_stats,
    pieces_bar,
    plan_rows,
    render_frame,
    select_neighbour,
    sparkline,
)

MIB = 1024 * 1024
HOT = "ab" * 20
WARM = "cd" * 20
COLD = "ef" * 20


def peer_doc(n: int, **fields: Any) -> dict[str, Any]:
    doc = {
        "id": "2d444630313030" + "2d" + f"{n:024x}",  # "-DF0100-" then n
        "client": "-DF0100-",
        "address": f"10.1.{n // 250}.{n % 250 + 1}:6881",
        "zone": f"rack-{n % 3}",
        "progress": 0.5,
        "have": None,
        "download_bps": 2.0 * MIB,
        "upload_bps": 1.0 * MIB,
        "downloaded_bytes": 0,
        "state": "downloading",
    }
    return {**doc, **fields}


def task_doc(task_id: str, peers: int = 3, **fields: Any) -> dict[str, Any]:
    doc = {
        "id": task_id,
        "url": f"http://origin.test/models/{task_id[:4]}.bin",
        "name": f"{task_id[:4]}.bin",
        "size_bytes": 3 * 1024 * MIB,
        "piece_length": 4 * MIB,
        "pieces": 768,
        "peers": peers,
        "seeds": 1,
        "completion": 0.42,
        "download_bps": 150.0 * MIB,
        "upload_bps": 140.0 * MIB,
        "origin_bytes": 1024 * MIB,
        "peer_bytes": 3072 * MIB,
        "age_s": 125.0,
        "peer_list": [],
        "peer_list_truncated": peers > 0,
    }
    return {**doc, **fields}


def stats_doc(*tasks: dict[str, Any], **totals: Any) -> dict[str, Any]:
    return {
        "tracker": {"uptime_s": 3723.0, "interval_s": 5.0, "now_s": 10.0},
        "totals": {
            "tasks": len(tasks),
            "peers": 612,
            "seeds": 40,
            "download_bps": 1.5 * 1024 * MIB,
            "upload_bps": 1.25 * 1024 * MIB,
            "origin_bytes": 1024 * MIB,
            "peer_bytes": 9 * 1024 * MIB,
            **totals,
        },
        "tasks": list(tasks),
    }


def overview() -> Stats:
    return parse_stats(stats_doc(task_doc(HOT), task_doc(WARM), task_doc(COLD)))


def frame(detail_doc: dict[str, Any] | None = None, **fields: Any) -> Frame:
    detail = parse_stats(stats_doc(detail_doc)).tasks[0] if detail_doc else None
    base: dict[str, Any] = {
        "tracker_url": "http://127.0.0.1:6969",
        "refresh_s": 0.5,
        "overview": overview(),
        "detail": detail,
        "selected_id": HOT,
    }
    return Frame(**{**base, **fields})


def render(shown: Frame, width: int = 120, height: int = 40) -> list[str]:
    console = Console(record=True, width=width, height=height, file=io.StringIO())
    console.print(render_frame(shown, width, height))
    return console.export_text().splitlines()


def line_with(lines: list[str], text: str) -> str:
    return next(line for line in lines if text in line)


# --- what the operator must see -----------------------------------------------------------------


def test_header_shows_totals_rates_and_the_saved_origin_share() -> None:
    lines = render(frame())
    totals = line_with(lines, "tasks")
    assert "3 tasks" in totals and "612 peers" in totals and "40 seeds" in totals
    assert "↓ 1.5 GiB/s" in totals and "↑ 1.2 GiB/s" in totals
    traffic = line_with(lines, "origin traffic saved")
    assert "from origin 1.0 GiB" in traffic and "between peers 9.0 GiB" in traffic
    assert "origin traffic saved: 90%" in traffic  # 9 GiB of 10 came from peers


def test_saved_share_is_a_dash_before_any_byte_moved() -> None:
    lines = render(frame(overview=parse_stats(stats_doc(origin_bytes=0, peer_bytes=0))))
    assert "origin traffic saved: -" in line_with(lines, "origin traffic saved")
    assert "no tasks yet" in "\n".join(lines)


def test_task_row_shows_id_name_size_peers_completion_rate_and_age() -> None:
    row = line_with(render(frame()), HOT[:12])
    assert row.startswith("›" + HOT[:12])  # the selected task is marked
    for text in ("abab.bin", "3.0 GiB", "3/1", "42%", "150.0 MiB/s", "2:05"):
        assert text in row
    assert line_with(render(frame()), WARM[:12]).startswith(" " + WARM[:12])


def test_peer_row_shows_id_address_zone_pieces_rates_and_state() -> None:
    have = "f0" + "00" * 95  # 768 pieces: the first 4 held
    detail = task_doc(HOT, peers=2, pieces=768)
    detail["peer_list"] = [
        peer_doc(7, have="ff" * 96, progress=1.0, state="seeding"),
        peer_doc(8, have=have, progress=4 / 768, state="fetching"),
    ]
    lines = render(frame(detail))
    seed = line_with(lines, "10.1.0.8:6881")
    assert "-DF0100-…000007" in seed and "rack-1" in seed and "seeding" in seed
    assert "█" * 20 in seed and "100%" in seed
    fetcher = line_with(lines, "10.1.0.9:6881")
    assert "from origin" in fetcher and "2.0 MiB/s" in fetcher and "1.0 MiB/s" in fetcher
    assert "░" in fetcher and "█" not in fetcher  # 4 of 768 pieces: a sliver, not a full cell
    assert "peers of " + HOT[:12] in line_with(lines, "peers of")


def test_pieces_bar_downsamples_the_bitfield_high_bit_first() -> None:
    assert pieces_bar(bytes([0xF0]), 8, 0.5, 8) == "████····"
    assert pieces_bar(bytes([0xF0]), 8, 0.5, 4) == "██··"
    assert pieces_bar(bytes([0x80]), 2, 0.5, 4) == "██··"  # more cells than pieces
    assert pieces_bar(bytes([0x80]), 8, 1 / 8, 2) == "░·"  # one of four: the lightest shade
    assert pieces_bar(bytes([0xE0]), 8, 3 / 8, 2) == "▓·"  # three of four: the darkest
    assert pieces_bar(bytes([0xFF, 0xFF]), 9, 1.0, 3) == "███"
    assert pieces_bar(bytes([0x00, 0x7F]), 9, 0.0, 3) == "···"  # BEP 3: spare bits mean nothing


def test_pieces_bar_without_a_bitfield_draws_progress_in_eighths() -> None:
    assert pieces_bar(None, 768, 0.5, 8) == "████····"
    assert pieces_bar(None, None, 1 / 16, 4) == "▎···"
    assert pieces_bar(None, None, 0.0, 3) == "···"


@given(
    st.binary(min_size=1, max_size=40),
    st.integers(min_value=1, max_value=320),
    st.integers(min_value=1, max_value=80),
)
def test_pieces_bar_is_always_the_width_and_full_only_for_held_pieces(
    have: bytes, pieces: int, width: int
) -> None:
    pieces = min(pieces, len(have) * 8)
    bar = pieces_bar(have, pieces, 0.0, width)
    assert len(bar) == width
    value = int.from_bytes(have, "big") >> (len(have) * 8 - pieces)
    if value == (1 << pieces) - 1:
        assert set(bar) == {"█"}
    if value == 0:
        assert set(bar) == {"·"}


def test_sparkline_scales_to_the_peak_and_keeps_the_latest() -> None:
    assert sparkline([0.0, 50.0, 100.0], 10) == "▁▅█"
    assert sparkline([100.0, 0.0, 0.0, 7.0], 2) == "▁█"
    assert sparkline([0.0, 0.0], 5) == "▁▁"
    line = line_with(render(frame(history_bps=(0.0, 2.0 * MIB, 4.0 * MIB))), "throughput")
    assert "▁▅█" in line and "now 4.0 MiB/s" in line and "peak 4.0 MiB/s" in line


def test_narrow_terminal_cuts_lines_and_drops_columns_instead_of_wrapping() -> None:
    detail = task_doc(HOT, peers=3, peer_list=[peer_doc(n) for n in range(3)])
    wide = render(frame(detail))
    assert "ADDRESS" in line_with(wide, "PIECES") and "ZONE" in line_with(wide, "PIECES")
    for width in (40, 60, 80):
        lines = render(frame(detail, status="x" * 200, status_is_error=True), width, 30)
        assert all(len(line) <= width for line in lines), width
        header = line_with(lines, "PIECES")
        assert header.startswith("PEER") and "DONE" in header and "ZONE" not in header
        assert any(line.startswith("-DF0100-…000001") for line in lines)
        assert line_with(lines, "xxx").endswith("…")
    assert len(render(frame(detail), 40, 30)) <= 30


def test_a_600_peer_task_shows_the_rows_that_fit_and_summarises_the_rest() -> None:
    detail = task_doc(HOT, peers=600, seeds=150, peer_list=[peer_doc(n) for n in range(600)])
    lines = render(
        frame(detail, overview=parse_stats(stats_doc(task_doc(HOT, peers=600)))), 120, 30
    )
    assert len(lines) <= 30
    rows = [line for line in lines if line.startswith("-DF0100-")]
    assert len(rows) == 30 - FIXED_LINES - 1  # one task row; every other free line is a peer
    assert f"… {600 - len(rows)} more of 600 peers (150 seeds), best progress first" in lines


def test_row_plan_gives_tasks_a_third_and_peers_only_what_they_need() -> None:
    many = parse_stats(stats_doc(*(task_doc(f"{n:040x}", peers=500) for n in range(50))))
    assert plan_rows(42, many, f"{0:040x}") == (10, 20)
    few_peers = parse_stats(stats_doc(*(task_doc(f"{n:040x}", peers=2) for n in range(50))))
    assert plan_rows(42, few_peers, f"{0:040x}") == (28, 2)
    assert plan_rows(42, parse_stats(stats_doc(task_doc(HOT, peers=500))), HOT) == (1, 29)
    assert plan_rows(5, many, None) == (1, 0)


def test_selected_task_below_the_fold_scrolls_into_view() -> None:
    tasks = [task_doc(f"{n:02x}" * 20) for n in range(40)]
    last = f"{39:02x}" * 20
    lines = render(frame(overview=parse_stats(stats_doc(*tasks)), selected_id=last), 100, 20)
    assert line_with(lines, last[:12]).startswith("›")
    assert "0" * 12 not in "\n".join(lines)
    assert any("more tasks" in line for line in lines)


def test_tracker_unreachable_is_a_status_line_and_the_last_data_stays() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    config = TopConfig((url,), 0.5)
    app = TopApp(config, Console(file=io.StringIO()), ScriptedClient(config, overview()))
    asyncio.run(app.refresh(40))
    assert app.error is None and app.selected_id == HOT
    app.client = StatsClient(config.trackers, timeout_s=5.0)
    asyncio.run(closing(app, app.refresh(40)))
    assert app.error == f"tracker {url} unreachable (ConnectionRefused)"
    lines = render(app.frame())
    assert lines[-1].startswith(f"tracker {url} unreachable (ConnectionRefused), retrying")
    assert "3 tasks" in line_with(lines, "tasks")  # the last answer is still shown
    assert len(app.history_bps) == 1  # no made-up point for the failed refresh


def test_stats_client_reports_each_tracker_it_tried() -> None:
    urls = tuple(f"http://127.0.0.1:{free_port()}" for _ in range(2))
    client = StatsClient(urls)

    async def attempt() -> str:
        try:
            await client.fetch(None, 0)
        except StatsUnavailable as exc:
            return str(exc)
        finally:
            await client.close()
        raise AssertionError("no tracker listens")

    message = asyncio.run(attempt())
    assert message == "; ".join(f"tracker {u} unreachable (ConnectionRefused)" for u in urls)


# --- keys and selection ---------------------------------------------------------------------


def test_keys_decode_letters_and_both_arrow_encodings() -> None:
    assert decode_keys(b"j\x1b[Ak\x1b[BqxQ") == (["down", "up", "up", "down", "quit", "quit"], b"")
    assert decode_keys(b"\x1bOA\x1bOB") == (["up", "down"], b"")
    assert decode_keys(b"j\x1b[") == (["down"], b"\x1b[")  # cut short: kept for the next read
    assert decode_keys(b"\x1b") == ([], b"\x1b")
    assert decode_keys(b"\x1b[" + b"B") == (["down"], b"")
    assert decode_keys(b"\x1b[C\x1bx") == ([], b"")  # right arrow, stray escape: ignored


def test_j_k_up_down_move_the_selection_and_q_quits() -> None:
    config = TopConfig()
    app = TopApp(config, Console(file=io.StringIO()), ScriptedClient(config, overview()))
    asyncio.run(app.refresh(40))
    assert app.selected_id == HOT
    app.on_key("down")
    assert app.selected_id == WARM
    app.on_key("down")
    app.on_key("down")  # clamped at the last task
    assert app.selected_id == COLD
    app.on_key("up")
    assert app.selected_id == WARM
    app.on_key("up")
    assert app.selected_id == HOT
    for key, expected in zip(decode_keys(b"jjk")[0], (WARM, COLD, WARM), strict=True):
        app.on_key(key)
        assert app.selected_id == expected
    assert not app.quitting
    app.on_key("quit")
    assert app.quitting


def test_selection_follows_the_task_not_the_row_and_falls_back_to_the_hottest() -> None:
    tasks = overview().tasks
    assert select_neighbour(tasks, WARM, 1) == COLD
    assert select_neighbour(tasks, HOT, -1) == HOT
    assert select_neighbour(tasks, "gone", 1) == HOT
    assert select_neighbour((), HOT, 1) is None


def test_refresh_asks_for_the_selected_task_with_the_peer_rows_that_fit() -> None:
    config = TopConfig()
    client = ScriptedClient(config, overview())
    app = TopApp(config, Console(file=io.StringIO()), client)
    app.selected_id = WARM
    asyncio.run(app.refresh(40))
    rows = plan_rows(40, overview(), WARM).peer_rows
    assert client.asked == [(None, 0), (WARM, rows)]
    assert app.detail is not None and app.detail.id == WARM


def test_cbreak_keys_delivers_keys_and_restores_the_terminal() -> None:
    master, slave = pty.openpty()
    try:
        before = termios.tcgetattr(slave)
        keys: list[str] = []

        async def session() -> None:
            with cbreak_keys(slave, keys.append):
                assert not termios.tcgetattr(slave)[3] & termios.ECHO
                os.write(master, b"j\x1b[Aq")
                for _ in range(100):
                    if len(keys) == 3:
                        break
                    await asyncio.sleep(0.01)
                raise RuntimeError("leaving on an error")

        with pytest.raises(RuntimeError):
            asyncio.run(session())
        assert keys == ["down", "up", "quit"]
        assert termios.tcgetattr(slave) == before
    finally:
        os.close(master)
        os.close(slave)


# --- documents and options ------------------------------------------------------------------


def test_a_real_swarm_document_parses_and_renders() -> None:
    now = [100.0]
    swarm = Swarm(TrackerConfig(), lambda: now[0])
    task = bytes.fromhex(HOT)
    swarm.put_manifest(task, ManifestUpdate("http://o/files/real.bin", 20 * 16384, 16384, {}))
    for n, have in enumerate((b"\xff\xff\xf0", b"\xf0\x00\x00")):
        swarm.announce(
            AnnounceRequest(
                info_hash=task,
                peer_id=b"-DF0100-" + bytes([n]) * 12,
                port=7000 + n,
                ip4=bytes([127, 0, 0, 1]),
                left_bytes=(20 - bin(int.from_bytes(have, "big")).count("1")) * 16384,
                have=have,
                zone="r1",
            )
        )
    document = json.loads(json.dumps(swarm.stats()))
    stats = parse_stats(document)
    (only,) = stats.tasks
    assert (only.name, only.pieces, only.peers, only.seeds) == ("real.bin", 20, 2, 1)
    assert only.peer_list[0].have == b"\xff\xff\xf0" and only.peer_list[1].progress == 0.2
    lines = render(frame(document["tasks"][0], overview=stats))
    assert "seeding" in line_with(lines, "127.0.0.1:7000")
    assert "20%" in line_with(lines, "127.0.0.1:7001")


@pytest.mark.parametrize(
    ("document", "complaint"),
    [
        ([], "document is not a JSON object"),
        ({"totals": {"peers": "many"}}, "totals field 'peers' is 'many'"),
        ({"totals": {}, "tasks": {}}, "tasks is not a JSON list"),
        ({"totals": {}, "tasks": [{"peers": True}]}, "task field 'peers' is True"),
        ({"totals": {"download_bps": float("nan")}}, "'download_bps' is nan"),
        ({"totals": {}, "tasks": [{"peer_list": [{"have": "xyz"}]}]}, "'have' is not hex"),
    ],
)
def test_a_bad_document_names_the_field(document: object, complaint: str) -> None:
    with pytest.raises(StatsFormatError, match=complaint.replace("(", r"\(")):
        parse_stats(document)


def test_missing_fields_default_and_negative_numbers_clamp() -> None:
    stats = parse_stats({"totals": {"peers": -3}, "tasks": [{"id": HOT, "name": None}]})
    assert stats.totals.peers == 0 and stats.uptime_s == 0.0
    assert stats.tasks[0].name is None and stats.tasks[0].size_bytes is None
    assert "(no manifest)" in line_with(render(frame(overview=stats)), HOT[:12])


def test_options_come_from_flags_then_environment_then_defaults() -> None:
    assert parse_args([], {}) == TopConfig((DEFAULT_TRACKER,), 0.5, False)
    env = {"DFGET_TRACKER": "http://t1:6969/announce,http://t2:6969", "DFTOP_REFRESH": "250ms"}
    assert parse_args([], env) == TopConfig(("http://t1:6969", "http://t2:6969"), 0.25)
    env["DFTOP_TRACKER"] = "http://top:1"
    assert parse_args([], env).trackers == ("http://top:1",)
    flags = ["--tracker", "http://x:2/announce", "--refresh", "2s", "--once"]
    assert parse_args(flags, env) == TopConfig(("http://x:2",), 2.0, True)


def test_options_come_from_a_file_below_the_environment(tmp_path: Path) -> None:
    file = tmp_path / "dftop.toml"
    file.write_text('[dftop]\ntracker = ["http://f1:1", "http://f2:2"]\nrefresh = 3\n')
    config = parse_args(["--config", str(file)], {"DFTOP_REFRESH": ""})
    assert config == TopConfig(("http://f1:1", "http://f2:2"), 3.0)
    config = parse_args([], {"DFTOP_CONFIG": str(file), "DFTOP_REFRESH": "1s"})
    assert config.refresh_s == 1.0


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--refresh", "10ms"], "--refresh='10ms': refresh must be from 0.1s to 3600s, not 0.01s"),
        (["--refresh", "soon"], "--refresh='soon': duration 'soon' is not a number"),
        (["--tracker", "udp://t:1"], "--tracker='udp://t:1': tracker must be an http:// URL"),
        (["--bogus"], "unrecognized arguments: --bogus"),
    ],
)
def test_bad_options_are_one_line_usage_errors(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SettingsError, match="^" + re.escape(message)):
        parse_args(argv, {})
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"dftop: {message}")
    assert err.count("\n") == 1


# --- helpers --------------------------------------------------------------------------------


class ScriptedClient(StatsClient):
    """Answers every fetch from one overview; the selected task's answer is that task alone."""

    def __init__(self, config: TopConfig, stats: Stats) -> None:
        super().__init__(config.trackers)
        self.stats = stats
        self.asked: list[tuple[str | None, int]] = []

    async def fetch(self, task_id: str | None, peers: int) -> Stats:
        self.asked.append((task_id, peers))
        if task_id is None:
            return self.stats
        chosen = tuple(t for t in self.stats.tasks if t.id == task_id)
        return Stats(self.stats.uptime_s, self.stats.totals, chosen)


async def closing(app: TopApp, step: Any) -> None:
    try:
        await step
    finally:
        await app.client.close()
