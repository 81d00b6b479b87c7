"""Every option of ``dftracker serve``, its default, and its validation, in one frozen object.

``SETTINGS`` declares how users write them (``peerwire.settings``): the setting ``interval`` is
the flag ``--interval``, the variable ``DFTRACKER_INTERVAL`` and the key ``interval`` of the TOML
file (``--config`` or ``$DFTRACKER_CONFIG``; top-level keys or a ``[tracker]`` table). Flags win
over the environment over the file. Durations read ``5s``, ``250ms``, ``2m``; sizes ``16K``,
``8M`` (``peerwire.units``). The former names with a unit (``interval_s``, ``max_body_bytes``)
still work, with a notice.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from peerwire import settingkinds as kinds
from peerwire.settings import CLUSTER_SECRET, Setting, Settings
from tracker.redislink import parse_target

ENV_PREFIX: Final = "DFTRACKER_"


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
    #: Keep the swarm in this Redis (``redis://[user:password@]host:port/db``, ``rediss://``
    #: for TLS), shared with every tracker given the same URL; None: in this process's memory.
    redis: str | None = None
    #: A Redis that does not answer within this long is unavailable (the request is refused).
    redis_timeout_s: float = 2.0

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
            "redis_timeout_s",
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


_D = TrackerConfig()


def _renamed(name: str, kind: kinds.Kind, help: str, field: str) -> Setting:
    """A setting whose config field carries its unit; the field's name is the former key."""
    return Setting(name, kind, help, getattr(_D, field), field=field, aliases=(field,))


def _plain(name: str, kind: kinds.Kind, help: str, **extra: Any) -> Setting:
    return Setting(name, kind, help, getattr(_D, name), **extra)


def _parse_redis(raw: object) -> str:
    url = kinds.parse_text(raw).strip()
    parse_target(url)  # ValueError (without the URL) when it is not one
    return url


def show_redis(value: object) -> str:
    """The URL without its password (``--print-config``, ``--help``)."""
    if not value:
        return ""
    text = str(value)
    scheme, sep, rest = text.partition("://")
    authority, slash, path = rest.partition("/")
    if sep and "@" in authority:
        user, _, host = authority.rpartition("@")
        name = user.partition(":")[0]
        authority = f"{name}:<hidden>@{host}" if ":" in user else f"<hidden>@{host}"
    return f"{scheme}{sep}{authority}{slash}{path}"


#: Sensitive: an error never quotes the URL (it may hold a password); shown without it.
_REDIS: Final = kinds.Kind(_parse_redis, show_redis, "URL", True)

_SECRET_FILE: Final = kinds.Kind(
    lambda raw: str(kinds.parse_secret_file(raw)), kinds.show_plain, "FILE"
)

SETTINGS: Final = Settings(
    "dftracker",
    ENV_PREFIX,
    [
        _plain(
            "host", kinds.TEXT, "address to listen on (0.0.0.0: every interface)", metavar="ADDRESS"
        ),
        _plain("port", kinds.INT, "TCP port; 0 picks a free one"),
        _renamed("interval", kinds.DURATION, "announce interval told to peers", "interval_s"),
        _renamed("min_interval", kinds.DURATION, "BEP 3 min interval", "min_interval_s"),
        _plain(
            "peer_timeout_intervals", kinds.NUMBER, "a peer silent this many intervals is dropped"
        ),
        _plain("numwant_default", kinds.INT, "peers in an answer when the client does not ask"),
        _plain("numwant_max", kinds.INT, "most peers in one answer"),
        _plain("max_tasks", kinds.INT, "tasks tracked at most"),
        _plain("max_peers_per_task", kinds.INT, "peers stored per task at most"),
        _plain(
            "trust_ip_param",
            kinds.BOOL,
            "use the ip/ipv4/ipv6 announce parameters (only behind a trusted NAT or proxy)",
            action="switch",
        ),
        _plain(
            "origin_budget",
            kinds.INT,
            "peers of one task fetching from the origin at once; about origin bandwidth / peer "
            "bandwidth",
        ),
        _plain("assign_max_pieces", kinds.INT, "most pieces in one origin assignment"),
        _renamed(
            "assign_ttl",
            kinds.DURATION,
            "take back origin assignments not done within",
            "assign_ttl_s",
        ),
        _renamed(
            "bad_peer_ttl",
            kinds.DURATION,
            "a peer reported bad is ranked last this long",
            "bad_peer_ttl_s",
        ),
        _plain(
            "bad_peer_exclude_reports",
            kinds.INT,
            "reported bad by this many distinct peers: not handed out at all",
        ),
        _plain(
            "full_scrape",
            kinds.BOOL,
            "answer /scrape without info_hash with every task (up to max_scrape_hashes)",
            action="switch",
        ),
        _plain("max_scrape_hashes", kinds.INT, "most info_hash in one /scrape"),
        _renamed(
            "max_head", kinds.SIZE, "request line and headers, at most (431/414)", "max_head_bytes"
        ),
        _renamed(
            "max_body", kinds.SIZE, "request body (manifests), at most (413)", "max_body_bytes"
        ),
        _renamed(
            "head_timeout",
            kinds.DURATION,
            "headers must arrive within this of the first byte",
            "head_timeout_s",
        ),
        _renamed(
            "keepalive_timeout",
            kinds.DURATION,
            "idle kept-alive connections closed after",
            "keepalive_timeout_s",
        ),
        _plain("max_connections", kinds.INT, "open connections at most (then 503)"),
        _renamed(
            "task_ttl",
            kinds.DURATION,
            "a task with no peers keeps its manifest this long",
            "task_ttl_s",
        ),
        Setting(
            "secret_file",
            _SECRET_FILE,
            "the cluster secret (else DRAGONFLY_SECRET): announces and manifest updates must "
            "prove they hold it; see SECURITY.md",
        ),
        Setting(
            "redis",
            _REDIS,
            "keep the swarm in this Redis, shared by every tracker given it: "
            "redis://[[user]:password@]host[:port][/db], rediss:// (TLS) or unix://PATH "
            "(default: in this process's memory)",
        ),
        _renamed(
            "redis_timeout",
            kinds.DURATION,
            "a Redis that does not answer within this is unavailable",
            "redis_timeout_s",
        ),
        CLUSTER_SECRET,
    ],
    tables=("tracker",),
)


def load_config(
    flags: Mapping[str, Any],
    environ: Mapping[str, str] | None = None,
    config_file: Path | None = None,
) -> TrackerConfig:
    """Merge file < environment < flags (by setting name) into a validated config.

    ``peerwire.settings.SettingsError`` (a ValueError) names the source of a bad value.
    """
    environ = os.environ if environ is None else environ
    return SETTINGS.load(flags, environ, config_file).build(TrackerConfig)
