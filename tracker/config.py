"""Every option of ``dftracker serve``, its default, and its validation, in one frozen object.

Sources, highest first: command-line flags, ``DFTRACKER_<FIELD>`` environment variables, a TOML
file (``--config``; top-level keys or a ``[tracker]`` table, field names as below). Durations
are written ``5s``, ``250ms``, ``2m``; sizes ``16K``, ``8M``.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

ENV_PREFIX = "DFTRACKER_"


@dataclass(frozen=True, slots=True)
class TrackerConfig:
    """Options of the tracker. Limits bound memory; see the README's tracker section."""

    host: str = "127.0.0.1"
    port: int = 6969
    #: BEP 3 ``interval``: how often peers re-announce.
    interval_s: float = 5.0
    #: BEP 3 ``min interval``; our peers re-announce early (when an assignment is done) no more
    #: often than this.
    min_interval_s: float = 1.0
    #: A peer silent for this many intervals is dropped (soft state).
    peer_timeout_intervals: float = 3.0
    #: Peers in an answer when the client does not say ``numwant``, and the cap when it does.
    numwant_default: int = 50
    numwant_max: int = 200
    #: Memory bounds: tasks tracked, peers per task.
    max_tasks: int = 100_000
    max_peers_per_task: int = 10_000
    #: Honour the ``ip``/``ipv4``/``ipv6`` announce parameters (behind a NAT or a proxy that the
    #: operator trusts). Off: the address is the connection's source address.
    trust_ip_param: bool = False
    #: Back-to-source: at most this many peers fetch one task from the origin at the same time.
    origin_budget: int = 8
    #: Most pieces handed to one fetcher in one assignment. A fetcher gets its share of the
    #: unassigned pieces (on a first announce over the ``origin_budget`` slots left, later over
    #: the peers that want the file) or what it can fetch in one interval at its rate,
    #: whichever is more, up to this (``tracker.assign``).
    assign_max_pieces: int = 1024
    #: An assignment not reported done within this long is taken back.
    assign_ttl_s: float = 20.0
    #: A peer reported bad is ranked last for this long; reported by this many distinct peers,
    #: it is not handed out at all.
    bad_peer_ttl_s: float = 300.0
    bad_peer_exclude_reports: int = 2
    #: ``/scrape`` without ``info_hash`` (every task) is refused unless enabled.
    full_scrape: bool = False
    max_scrape_hashes: int = 64
    #: HTTP bounds: request line plus headers, body (manifests), time to send the headers,
    #: idle time on a kept-alive connection, open connections.
    max_head_bytes: int = 16 * 1024
    max_body_bytes: int = 8 * 1024 * 1024
    head_timeout_s: float = 10.0
    keepalive_timeout_s: float = 60.0
    max_connections: int = 10_000
    #: A task with no peers left keeps its manifest this long (peers that return find it).
    task_ttl_s: float = 3600.0
    #: File holding the cluster secret (``peerwire.auth``); without it (and without
    #: ``DRAGONFLY_SECRET`` in the environment) announces and manifests are not authenticated.
    secret_file: str | None = None

    def __post_init__(self) -> None:
        problems: list[str] = []
        if not 0 <= self.port <= 65535:
            problems.append(f"port {self.port} is not in 0..65535")
        for name in (
            "interval_s",
            "min_interval_s",
            "peer_timeout_intervals",
            "assign_ttl_s",
            "bad_peer_ttl_s",
            "head_timeout_s",
            "keepalive_timeout_s",
            "task_ttl_s",
        ):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                problems.append(f"{name} must be a positive number of seconds, not {value!r}")
        if self.min_interval_s > self.interval_s:
            problems.append("min_interval_s must not exceed interval_s")
        for name in (
            "numwant_default",
            "numwant_max",
            "max_tasks",
            "max_peers_per_task",
            "origin_budget",
            "assign_max_pieces",
            "bad_peer_exclude_reports",
            "max_scrape_hashes",
            "max_head_bytes",
            "max_body_bytes",
            "max_connections",
        ):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be at least 1")
        if self.numwant_default > self.numwant_max:
            problems.append("numwant_default must not exceed numwant_max")
        if self.max_head_bytes < 1024:
            problems.append("max_head_bytes below 1K cannot hold a BitTorrent announce")
        if problems:
            raise ValueError("; ".join(problems))

    @property
    def peer_timeout_s(self) -> float:
        return self.interval_s * self.peer_timeout_intervals


_DURATION = re.compile(r"\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*(ms|s|m|h|d|)\s*")
_DURATION_UNITS = {"ms": 0.001, "": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_SIZE = re.compile(r"\s*([0-9]+)\s*(k|m|g|kib|mib|gib|kb|mb|gb|b|)\s*", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}


def parse_duration(text: str) -> float:
    """``5s``, ``250ms``, ``2m``, ``1h``, ``1d`` or bare seconds; ValueError quoting the text."""
    match = _DURATION.fullmatch(text.lower())
    if match is None:
        raise ValueError(f"not a duration: {text!r} (examples: 5s, 250ms, 2m)")
    return float(match.group(1)) * _DURATION_UNITS[match.group(2)]


def parse_size(text: str) -> int:
    """``16K``, ``8M``, ``1G`` (binary multiples) or bare bytes; ValueError quoting the text."""
    match = _SIZE.fullmatch(text)
    if match is None:
        raise ValueError(f"not a size: {text!r} (examples: 16K, 8M)")
    return int(match.group(1)) * _SIZE_UNITS[match.group(2).lower()[:1]]


def _convert(name: str, kind: type, value: Any) -> Any:
    """One option from text (flags, environment) or TOML into its field's type."""
    if kind is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"{name}: expected true or false, not {value!r}")
    if kind is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        return parse_duration(str(value))
    if kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if name.endswith("_bytes"):
            return parse_size(str(value))
        try:
            return int(str(value).strip())
        except ValueError:
            raise ValueError(f"{name}: expected an integer, not {value!r}") from None
    return str(value)


_FIELD_TYPES: dict[str, type] = {
    f.name: {"bool": bool, "float": float, "int": int}.get(str(f.type), str)
    for f in fields(TrackerConfig)
}


def load_config(
    flags: Mapping[str, Any],
    environ: Mapping[str, str] | None = None,
    config_file: Path | None = None,
) -> TrackerConfig:
    """Merge file < environment < flags into a validated config; ValueError names the source."""
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    if config_file is not None:
        try:
            document = tomllib.loads(config_file.read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ValueError(f"config file {config_file}: {exc}") from exc
        table = document.get("tracker", document)
        if not isinstance(table, dict):
            raise ValueError(f"config file {config_file}: [tracker] must be a table")
        for key, raw in table.items():
            if key not in _FIELD_TYPES:
                raise ValueError(f"config file {config_file}: unknown option {key!r}")
            values[key] = _convert(f"{config_file}: {key}", _FIELD_TYPES[key], raw)
    for key, kind in _FIELD_TYPES.items():
        raw_env = environ.get(ENV_PREFIX + key.upper())
        if raw_env is not None:
            values[key] = _convert(ENV_PREFIX + key.upper(), kind, raw_env)
    for key, raw in flags.items():
        if raw is None:
            continue
        if key not in _FIELD_TYPES:
            raise ValueError(f"unknown option {key!r}")
        values[key] = _convert(f"--{key.replace('_', '-')}", _FIELD_TYPES[key], raw)
    return dataclasses.replace(TrackerConfig(), **values)
