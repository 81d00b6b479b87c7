"""What ``dftop`` draws, as pure functions: a tracker ``/stats`` document in, rich renderables out.

``parse_stats`` turns the JSON of ``GET /stats`` (schema: ``tracker/stats.py``) into frozen
records, checking types in one place, so a tracker of another version shows up as a clear
``StatsFormatError`` instead of a traceback in the middle of a frame. ``render_frame`` lays one
screen out for a given width and height: title, totals with the share of origin traffic saved,
a throughput sparkline, the tasks table (hottest first, the selected one highlighted) and the
selected task's peers with a bar of the pieces each holds. Every line is cut to the width
(never wrapped) and the tables get only the rows that fit (``plan_rows``), the rest summarised
in one line, so a 600-peer task or an 50-column terminal costs no more than a small one.

No I/O, no clock: ``tracker.top`` fetches, keeps the state and says what time it is.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any, Final, Generic, NamedTuple, TypeVar, cast

from rich.console import Group, JustifyMethod, RenderableType
from rich.table import Table
from rich.text import Text

from peerwire.units import format_eta, format_rate, format_size, share_percent

#: Bounds on what one document may make us hold (the tracker caps ``peers`` at 1000 per task).
MAX_TASKS: Final = 10_000
MAX_PEERS: Final = 1000
#: Longest ``have`` accepted (hex of a 2**20-piece bitfield, the manifest's largest); longer
#: ones are ignored and the bar falls back to ``progress``.
MAX_HAVE_HEX_CHARS: Final = 2 * (1 << 20) // 8
#: Lines of a frame besides the two tables' rows: title, two totals lines, sparkline, blank,
#: tasks header, "more tasks", blank, peers title, peers header, "more peers", status.
FIXED_LINES: Final = 12
SPARK_LEVELS: Final = "▁▂▃▄▅▆▇█"
#: Piece-map cells: none of the cell's pieces held, some (three shades), all.
PIECE_SHADES: Final = "·░▒▓█"
PEER_BAR_MAX: Final = 64
#: Blank columns between two table columns.
COLUMN_GAP: Final = 2
EIGHTHS: Final = " ▏▎▍▌▋▊▉"
STATE_LABELS: Final = {"fetching": "from origin"}
STATE_STYLES: Final = {
    "seeding": "green",
    "downloading": "cyan",
    "fetching": "yellow",
    "stalled": "red",
}


_Row = TypeVar("_Row")
_Record = TypeVar("_Record")


class StatsFormatError(ValueError):
    """The ``/stats`` document is not what ``tracker/stats.py`` describes; says which field."""


# Records of the ``/stats`` document; field names are its keys (``tracker/stats.py``). Every
# number in it is a count, a size, a rate, a fraction or an age: none is below zero.


@dataclass(frozen=True, slots=True)
class PeerStats:
    id: str
    client: str
    address: str
    zone: str
    progress: float
    #: BEP 3 bitfield (piece 0 = high bit of byte 0); None when the tracker does not know it.
    have: bytes | None
    download_bps: float
    upload_bps: float
    state: str


@dataclass(frozen=True, slots=True)
class TaskStats:
    id: str
    name: str | None
    size_bytes: int | None
    pieces: int | None
    peers: int
    seeds: int
    completion: float
    download_bps: float
    origin_bytes: int
    peer_bytes: int
    age_s: float
    peer_list: tuple[PeerStats, ...]


@dataclass(frozen=True, slots=True)
class Totals:
    tasks: int
    peers: int
    seeds: int
    download_bps: float
    upload_bps: float
    origin_bytes: int
    peer_bytes: int


@dataclass(frozen=True, slots=True)
class _Tracker:
    uptime_s: float


@dataclass(frozen=True, slots=True)
class Stats:
    uptime_s: float
    totals: Totals
    tasks: tuple[TaskStats, ...]


@dataclass(frozen=True, slots=True)
class Frame:
    """Everything one screen shows; ``tracker.top`` builds it from its state."""

    tracker_url: str
    refresh_s: float
    #: Every task (hottest first), without peers; None before the first answer.
    overview: Stats | None
    #: The selected task with its best peers; None until fetched.
    detail: TaskStats | None
    selected_id: str | None
    #: Aggregate download rate of the swarm at each past refresh, oldest first.
    history_bps: tuple[float, ...] = ()
    status: str = ""
    status_is_error: bool = False


class RowPlan(NamedTuple):
    task_rows: int
    peer_rows: int


# --- parsing ---------------------------------------------------------------------------------


#: Field annotation -> (JSON types accepted, value when absent or null).
_KINDS: Final[dict[str, tuple[tuple[type, ...], Any]]] = {
    "str": ((str,), ""),
    "str | None": ((str,), None),
    "int": ((int,), 0),
    "int | None": ((int,), None),
    "float": ((int, float), 0.0),
}


def _record(cls: type[_Record], raw: object, what: str, **given: Any) -> _Record:
    """``cls`` from the JSON object ``raw``, fields not in ``given`` read by name and type."""
    record = _mapping(raw, what)
    values = dict(given)
    for item in fields(cls):  # type: ignore[arg-type]
        if item.name in values:
            continue
        kinds, default = _KINDS[str(item.type)]
        value: Any = record.get(item.name)
        if value is None:
            values[item.name] = default
        elif isinstance(value, bool) or not isinstance(value, kinds):
            raise StatsFormatError(f"/stats {what} field {item.name!r} is {value!r:.40}")
        elif kinds[0] is str:
            values[item.name] = value
        else:
            number = cast(float, value)  # int or float: checked just above
            if not math.isfinite(number):
                raise StatsFormatError(f"/stats {what} field {item.name!r} is {value!r}")
            values[item.name] = max(0.0, float(number)) if float in kinds else max(0, int(number))
    return cls(**values)


def _mapping(value: object, what: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise StatsFormatError(f"/stats {what} is not a JSON object")
    return value


def _list(value: object, what: str, limit: int) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise StatsFormatError(f"/stats {what} is not a JSON list")
    return value[:limit]


def _have(text: object) -> bytes | None:
    if not isinstance(text, str) or len(text) > MAX_HAVE_HEX_CHARS:
        return None
    try:
        return bytes.fromhex(text)
    except ValueError as exc:
        raise StatsFormatError(f"/stats peer 'have' is not hex: {text[:40]!r}") from exc


def _task(raw: object) -> TaskStats:
    task = _mapping(raw, "task")
    peers = _list(task.get("peer_list"), "peer_list", MAX_PEERS)
    peer_list = tuple(
        _record(PeerStats, p, "peer", have=_have(_mapping(p, "peer").get("have"))) for p in peers
    )
    return _record(TaskStats, task, "task", peer_list=peer_list)


def parse_stats(document: object) -> Stats:
    """The records of one ``/stats`` document; StatsFormatError names the first bad field."""
    root = _mapping(document, "document")
    tracker = root.get("tracker")
    return Stats(
        uptime_s=_record(_Tracker, tracker, "tracker").uptime_s if tracker else 0.0,
        totals=_record(Totals, root.get("totals"), "totals"),
        tasks=tuple(_task(t) for t in _list(root.get("tasks"), "tasks", MAX_TASKS)),
    )


# --- layout ----------------------------------------------------------------------------------


def plan_rows(height: int, overview: Stats | None, selected_id: str | None) -> RowPlan:
    """Rows for the tasks table and for the peers table in a screen ``height`` lines tall.

    The tasks table gets at least a third of the free lines (all it needs when it needs fewer);
    the selected task's peers get the rest, or only as many as the task has.
    """
    free = max(0, height - FIXED_LINES)
    tasks = overview.tasks if overview is not None else ()
    selected = next((t for t in tasks if t.id == selected_id), None)
    peers_wanted = min(selected.peers if selected else 0, free)
    task_rows = min(len(tasks), max(1, free // 3, free - peers_wanted))
    return RowPlan(task_rows, max(0, free - task_rows))


def select_neighbour(tasks: Sequence[TaskStats], selected_id: str | None, step: int) -> str | None:
    """The id ``step`` rows from the selected task (clamped to the table); the first if none."""
    if not tasks:
        return None
    ids = [t.id for t in tasks]
    if selected_id not in ids:
        return ids[0]
    index = min(len(ids) - 1, max(0, ids.index(selected_id) + step))
    return ids[index]


# --- pieces of a frame ------------------------------------------------------------------------


def pieces_bar(have: bytes | None, pieces: int | None, progress: float, width: int) -> str:
    """``width`` characters: the held pieces downsampled (``·░▒▓█`` per cell) when ``have`` and
    ``pieces`` are known, else a plain bar of ``progress`` in eighths of a cell."""
    if width <= 0:
        return ""
    if have is not None and pieces and len(have) * 8 >= pieces:
        return "".join(_cell(have, pieces, cell, width) for cell in range(width))
    filled_eighths = round(min(1.0, max(0.0, progress)) * width * 8)
    full, part = divmod(filled_eighths, 8)
    bar = "█" * full + (EIGHTHS[part] if part else "")
    return bar + "·" * (width - len(bar))


def _cell(have: bytes, pieces: int, cell: int, width: int) -> str:
    low = cell * pieces // width
    high = max(low + 1, (cell + 1) * pieces // width)
    if low >= pieces:  # more cells than pieces: this cell repeats the last piece
        low, high = pieces - 1, pieces
    first, last = low // 8, (high - 1) // 8
    chunk = int.from_bytes(have[first : last + 1], "big") >> ((last + 1) * 8 - high)
    held = (chunk & ((1 << (high - low)) - 1)).bit_count()  # BEP 3: piece 0 is the high bit
    if held == 0:
        return PIECE_SHADES[0]
    if held == high - low:
        return PIECE_SHADES[-1]
    return PIECE_SHADES[1 + min(2, 3 * held // (high - low))]


def sparkline(values: Sequence[float], width: int) -> str:
    """The last ``width`` values as ``▁..█``, scaled to their own maximum."""
    shown = list(values[-width:]) if width > 0 else []
    peak = max(shown, default=0.0)
    if peak <= 0:
        return SPARK_LEVELS[0] * len(shown)
    top = len(SPARK_LEVELS) - 1
    return "".join(SPARK_LEVELS[min(top, round(v / peak * top))] for v in shown)


def short_peer_id(peer: PeerStats) -> str:
    """Client prefix and the last hex digits: ``-DF0100-…9c41e2``."""
    tail = peer.id[-6:]
    return f"{peer.client}…{tail}" if peer.client else f"{peer.id[:6]}…{tail}"


def saved_share_text(peer_bytes: int, origin_bytes: int) -> str:
    """``origin traffic saved: 92%`` = bytes between peers / all bytes received."""
    share = share_percent(peer_bytes, origin_bytes)
    return f"origin traffic saved: {'-' if share is None else f'{share[0]}%'}"


def plural(count: int, noun: str) -> str:
    """``1 peer``, ``2 peers``."""
    return f"{count} {noun}{'' if count == 1 else 's'}"


def _line(*parts: str | tuple[str, str]) -> Text:
    text = Text.assemble(*parts)
    text.no_wrap, text.overflow = True, "ellipsis"
    return text


def _title(frame: Frame) -> Text:
    uptime = frame.overview.uptime_s if frame.overview else None
    return _line(
        ("dftop", "bold"),
        f"  {frame.tracker_url}",
        f"  up {format_eta(uptime)}" if uptime is not None else "",
        f"  every {frame.refresh_s:g}s",
        ("  ↑/↓ j/k select  q quit", "dim"),
    )


def _totals(frame: Frame) -> list[Text]:
    if frame.overview is None:
        return [_line(("waiting for the tracker's first answer", "dim")), _line("")]
    t = frame.overview.totals
    return [
        _line(
            (plural(t.tasks, "task"), "bold"),
            f"  {plural(t.peers, 'peer')}  {plural(t.seeds, 'seed')}  ",
            ("↓ " + format_rate(t.download_bps), "cyan"),
            "  ",
            ("↑ " + format_rate(t.upload_bps), "magenta"),
        ),
        _line(
            f"from origin {format_size(t.origin_bytes)}  ",
            f"between peers {format_size(t.peer_bytes)}  ",
            (saved_share_text(t.peer_bytes, t.origin_bytes), "bold green"),
        ),
    ]


def _history(frame: Frame, width: int) -> Text:
    label = "throughput "
    values = frame.history_bps
    now = format_rate(values[-1]) if values else "-"
    peak = format_rate(max(values)) if values else "-"
    tail = f"  now {now}  peak {peak}"
    spark = sparkline(values, max(0, width - len(label) - len(tail)))
    return _line(label, (spark, "cyan"), tail)


@dataclass(frozen=True, slots=True)
class _Column(Generic[_Row]):
    """A table column: ``width`` 0 is the one flexible column (``NAME``, ``PIECES``); on a
    narrow terminal the columns of highest ``drop`` go first, ``drop`` 0 ones never."""

    header: str
    width: int
    drop: int
    cell: Callable[[_Row, int], str | Text]
    justify: JustifyMethod = "left"


def _fit_table(
    columns: Sequence[_Column[_Row]], rows: Iterable[_Row], width: int, flex: tuple[int, int]
) -> Table:
    """A borderless table of the columns that fit in ``width``; the flexible one gets the rest,
    within ``flex`` (least, most). Every cell is one line, cut with an ellipsis."""
    kept = list(columns)
    while True:
        spare = width - sum(c.width for c in kept) - COLUMN_GAP * (len(kept) - 1)
        droppable = [c for c in kept if c.drop]
        if spare >= flex[0] or not droppable:
            break
        kept.remove(max(droppable, key=lambda c: c.drop))
    flex_width = max(flex[0], min(flex[1], spare))
    table = Table(box=None, padding=(0, 1), pad_edge=False, show_edge=False, header_style="bold")
    for column in kept:
        table.add_column(
            column.header,
            width=column.width or flex_width,
            no_wrap=True,
            overflow="ellipsis",
            justify=column.justify,
        )
    for row in rows:
        table.add_row(*(c.cell(row, c.width or flex_width) for c in kept))
    return table


def _size_text(size_bytes: int | None) -> str:
    return "?" if size_bytes is None else format_size(size_bytes)


def _task_columns(selected_id: str | None) -> tuple[_Column[TaskStats], ...]:
    def task(t: TaskStats, _: int) -> str:
        return ("›" if t.id == selected_id else " ") + t.id[:12]

    return (
        _Column("TASK", 13, 0, task),
        _Column("NAME", 0, 0, lambda t, _: t.name or "(no manifest)"),
        _Column("SIZE", 10, 3, lambda t, _: _size_text(t.size_bytes), "right"),
        _Column("PEERS/SEEDS", 11, 1, lambda t, _: f"{t.peers}/{t.seeds}", "right"),
        _Column("DONE", 4, 0, lambda t, _: f"{t.completion:.0%}", "right"),
        _Column("↓ RATE", 11, 2, lambda t, _: format_rate(t.download_bps), "right"),
        _Column("AGE", 8, 4, lambda t, _: format_eta(t.age_s), "right"),
    )


def _tasks_table(frame: Frame, width: int, rows: int) -> list[RenderableType]:
    tasks = frame.overview.tasks if frame.overview else ()
    if not tasks:
        return [_line(("no tasks yet", "dim"))]
    ids = [t.id for t in tasks]
    selected = ids.index(frame.selected_id) if frame.selected_id in ids else 0
    start = max(0, selected - rows + 1)  # scroll so the selected task stays visible
    shown = tasks[start : start + rows]
    table = _fit_table(_task_columns(frame.selected_id), shown, width, (10, width))
    table.rows[selected - start].style = "reverse"
    out: list[RenderableType] = [table]
    hidden = len(tasks) - len(shown)
    if hidden > 0:
        out.append(_line((f"… {plural(hidden, 'more task')} (↑/↓ to scroll)", "dim")))
    return out


def _peer_columns(pieces: int | None) -> tuple[_Column[PeerStats], ...]:
    def bar(peer: PeerStats, width: int) -> Text:
        style = STATE_STYLES.get(peer.state, "white")
        return Text(pieces_bar(peer.have, pieces, peer.progress, width), style=style)

    def state(peer: PeerStats, _: int) -> Text:
        label = STATE_LABELS.get(peer.state, peer.state)
        return Text(label, style=STATE_STYLES.get(peer.state, ""))

    return (
        _Column("PEER", 15, 0, lambda p, _: short_peer_id(p)),
        _Column("ADDRESS", 21, 2, lambda p, _: p.address),
        _Column("ZONE", 8, 5, lambda p, _: p.zone or "-"),
        _Column("PIECES", 0, 0, bar),
        _Column("DONE", 4, 0, lambda p, _: f"{p.progress:.0%}", "right"),
        _Column("↓", 11, 3, lambda p, _: format_rate(p.download_bps), "right"),
        _Column("↑", 11, 4, lambda p, _: format_rate(p.upload_bps), "right"),
        _Column("STATE", 11, 1, state),
    )


def _peers_section(frame: Frame, width: int, rows: int) -> list[RenderableType]:
    detail = frame.detail
    if frame.selected_id is None:
        return []
    if detail is None or detail.id != frame.selected_id:
        return [_line((f"peers of {frame.selected_id[:12]}: loading…", "dim"))]
    shown = detail.peer_list[: max(0, rows)]
    title = _line(
        ("peers of ", "bold"),
        (f"{detail.id[:12]} {detail.name or ''}", "bold"),
        f": {plural(detail.peers, 'peer')}, {plural(detail.seeds, 'seed')}, ",
        f"{format_size(detail.peer_bytes)} between peers, ",
        saved_share_text(detail.peer_bytes, detail.origin_bytes),
    )
    if not shown:
        return [title]
    table = _fit_table(_peer_columns(detail.pieces), shown, width, (12, PEER_BAR_MAX))
    out: list[RenderableType] = [title, table]
    hidden = detail.peers - len(shown)
    if hidden > 0:
        seeds = plural(detail.seeds, "seed")
        more = f"… {hidden} more of {detail.peers} peers ({seeds}), best progress first"
        out.append(_line((more, "dim")))
    return out


def render_frame(frame: Frame, width: int, height: int) -> RenderableType:
    """One screen of dftop, at most ``width`` columns and ``height`` lines."""
    width = max(20, width)
    plan = plan_rows(height, frame.overview, frame.selected_id)
    parts: list[RenderableType] = [_title(frame), *_totals(frame), _history(frame, width)]
    parts.append(Text(""))
    parts += _tasks_table(frame, width, max(1, plan.task_rows))
    parts.append(Text(""))
    parts += _peers_section(frame, width, plan.peer_rows)
    if frame.status:
        parts.append(_line((frame.status, "bold red" if frame.status_is_error else "dim")))
    return Group(*parts)
