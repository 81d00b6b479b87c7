"""dftop's options: the trackers to watch and how often, from flags > ``DFTOP_*`` > a TOML file.

The setting ``refresh`` is the flag ``--refresh``, the variable ``DFTOP_REFRESH`` and the key
``refresh`` of the file (``--config`` or ``$DFTOP_CONFIG``; top-level keys or a ``[dftop]``
table). The trackers also come from ``DFGET_TRACKER`` when ``DFTOP_TRACKER`` is unset, so one
variable serves both programs. Kept apart from ``tracker.top`` so that reading the options
imports no HTTP client.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from peerwire import settingkinds as kinds
from peerwire.settings import CLUSTER_SECRET, ArgumentParser, Loaded, Setting, Settings
from tracker.urls import tracker_base_url

DEFAULT_TRACKER: Final = "http://127.0.0.1:6969"
#: Trackers re-read their peers' announces every few seconds: refreshing faster shows nothing new.
DEFAULT_REFRESH_S: Final = 0.5
MIN_REFRESH_S: Final = 0.1
MAX_REFRESH_S: Final = 3600.0
MAX_TRACKERS: Final = 16


@dataclass(frozen=True, slots=True)
class TopConfig:
    """Every option of dftop, validated in one place."""

    trackers: tuple[str, ...] = (DEFAULT_TRACKER,)
    refresh_s: float = DEFAULT_REFRESH_S
    once: bool = False

    def __post_init__(self) -> None:
        if not 1 <= len(self.trackers) <= MAX_TRACKERS:
            raise ValueError(f"give 1 to {MAX_TRACKERS} trackers, not {len(self.trackers)}")
        if not MIN_REFRESH_S <= self.refresh_s <= MAX_REFRESH_S:
            raise ValueError(
                f"refresh must be from {MIN_REFRESH_S:g}s to {MAX_REFRESH_S:g}s, "
                f"not {self.refresh_s:g}s"
            )


def parse_trackers(text: str) -> tuple[str, ...]:
    """``a,b/announce`` -> base URLs, deduplicated, in order; ValueError names a bad one."""
    bases = [tracker_base_url(part) for part in text.split(",") if part.strip()]
    if not bases:
        raise ValueError(f"no tracker URL in {text!r}")
    return tuple(dict.fromkeys(bases))


def _trackers(raw: object) -> tuple[str, ...]:
    """Comma-separated text, or a TOML list of URLs."""
    if isinstance(raw, list):
        return parse_trackers(",".join(kinds.parse_text(item) for item in raw))
    return parse_trackers(kinds.parse_text(raw))


SETTINGS: Final = Settings(
    "dftop",
    "DFTOP_",
    [
        Setting(
            "tracker",
            kinds.Kind(_trackers, ",".join, "URL[,URL...]"),
            "tracker base or announce URL(s), comma-separated, tried in turn",
            (DEFAULT_TRACKER,),
            field="trackers",
            other_env=("DFGET_TRACKER",),
        ),
        Setting(
            "refresh",
            kinds.DURATION,
            "time between refreshes, e.g. 0.5s, 2s",
            DEFAULT_REFRESH_S,
            field="refresh_s",
        ),
        Setting(
            "once", kinds.BOOL, "print one frame and exit (for scripts)", False, action="switch"
        ),
        CLUSTER_SECRET,
    ],
    tables=("dftop",),
)


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog="dftop",
        description=(
            "Live view of a dftracker's swarms: tasks, peers, traffic. Each option --some-name "
            "is also the variable DFTOP_SOME_NAME and the key some_name of a TOML file "
            "(--config; top-level or under [dftop]); flags win over the environment over the "
            "file. Keys: j/k or arrows select a task, q quits."
        ),
    )
    SETTINGS.add_arguments(parser)
    return parser


def load(argv: list[str] | None, environ: Mapping[str, str]) -> tuple[TopConfig, Loaded, bool]:
    """The config, the merge it came from, and whether ``--print-config`` was given.

    ``peerwire.settings.SettingsError`` for any bad argument, variable, file or secret."""
    args = build_parser().parse_args(argv)
    loaded = SETTINGS.load(vars(args), environ, SETTINGS.find_config_file(args.config, environ))
    return loaded.build(TopConfig), loaded, bool(args.print_config)


def parse_args(argv: list[str] | None, environ: Mapping[str, str]) -> TopConfig:
    """The config from flags, then the environment, then the file, then defaults."""
    return load(argv, environ)[0]
