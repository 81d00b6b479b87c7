"""Every option of ``dfdaemon``, its default and its validation; flags > ``DFDAEMON_*`` > TOML.

The TOML file (``--config``, else ``$DFDAEMON_CONFIG``) takes the field names below, top level
or under ``[dfdaemon]``; sizes read like ``10G``, rates like ``20M`` or ``160mbit``, durations
like ``24h``.
"""

from __future__ import annotations

import dataclasses
import math
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from dfget.handoff import default_socket
from peerwire.units import parse_duration, parse_rate, parse_size
from tracker.urls import tracker_base_url

ENV_PREFIX: Final = "DFDAEMON_"
CONFIG_ENV: Final = "DFDAEMON_CONFIG"


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "dragonfly" / "dfdaemon"


@dataclass(frozen=True, slots=True)
class DaemonConfig:
    #: Tracker base URLs, tried in turn; none: every download goes to the origin directly.
    tracker: tuple[str, ...] = ()
    #: The registry mirror / HTTP proxy (loopback by default: exposing it is a choice).
    proxy_host: str = "127.0.0.1"
    proxy_port: int = 65001
    #: The one peer port of this host, shared by every task; other hosts must reach it.
    peer_host: str = "0.0.0.0"
    peer_port: int = 0
    #: Upstream registry of the mirror (``https://registry-1.docker.io``, ``http://127.0.0.1:5000``).
    registry_mirror: str | None = None
    cache_dir: Path = field(default_factory=default_cache_dir)
    #: Garbage collection: least recently used finished tasks go first above this size, and
    #: any finished task unused for ``cache_ttl_s``. Tasks being written or read never go.
    cache_size_bytes: int = 10 << 30
    cache_ttl_s: float = 24 * 3600.0
    gc_interval_s: float = 60.0
    #: Host-wide limits (bytes/s) shared by every task; None = unlimited.
    host_rate_bps: float | None = None
    upload_rate_bps: float | None = None
    #: The local API that ``dfget`` hands downloads to (owner-only permissions).
    socket: Path = field(default_factory=default_socket)
    zone: str = ""
    #: File holding the cluster secret (else ``DRAGONFLY_SECRET``); see peerwire/auth.py.
    secret_file: Path | None = None

    def __post_init__(self) -> None:
        problems = []
        for name in ("proxy_port", "peer_port"):
            if not 0 <= getattr(self, name) <= 65535:
                problems.append(f"{name} must be in 0..65535")
        if self.cache_size_bytes <= 0:
            problems.append("cache_size_bytes must be positive")
        for name in ("cache_ttl_s", "gc_interval_s"):
            value = getattr(self, name)
            if not (value > 0 and math.isfinite(value)):
                problems.append(f"{name} must be a positive duration")
        for name in ("host_rate_bps", "upload_rate_bps"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                problems.append(f"{name} must be positive")
        if problems:
            raise ValueError("; ".join(problems))


def _convert(name: str, raw: Any) -> Any:
    if name == "tracker":
        items = raw if isinstance(raw, list) else str(raw).split(",")
        return tuple(tracker_base_url(str(item)) for item in items if str(item).strip())
    if name in ("proxy_port", "peer_port"):
        return int(raw)
    if name in ("cache_dir", "socket", "secret_file"):
        return Path(str(raw)).expanduser()
    if name == "cache_size_bytes":
        return raw if isinstance(raw, int) else parse_size(str(raw))
    if name in ("cache_ttl_s", "gc_interval_s"):
        return float(raw) if isinstance(raw, int | float) else parse_duration(str(raw))
    if name in ("host_rate_bps", "upload_rate_bps"):
        if str(raw).lower() in ("", "unlimited", "none"):
            return None
        return float(raw) if isinstance(raw, int | float) else parse_rate(str(raw))
    if name == "registry_mirror":
        text = str(raw).rstrip("/")
        if not text.startswith(("http://", "https://")):
            raise ValueError(f"registry_mirror must be an http(s) URL, not {raw!r}")
        return text
    return str(raw)


FIELDS: Final = tuple(f.name for f in dataclasses.fields(DaemonConfig))


def load_config(
    flags: Mapping[str, Any], environ: Mapping[str, str], config_file: Path | None
) -> DaemonConfig:
    """Merge file < environment < flags; ValueError names the source of a bad value."""
    values: dict[str, Any] = {}
    path = config_file or (Path(environ[CONFIG_ENV]) if environ.get(CONFIG_ENV) else None)
    if path is not None:
        try:
            document = tomllib.loads(path.read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ValueError(f"config file {path}: {exc}") from exc
        table = document.get("dfdaemon", document)
        for key, raw in table.items():
            if key == "proxy" and isinstance(raw, dict):
                continue  # the [proxy] table belongs to proxy/config.py
            if key not in FIELDS:
                raise ValueError(f"config file {path}: unknown option {key!r}")
            values[key] = _checked(key, raw, f"{path}: {key}")
    for key in FIELDS:
        raw_env = environ.get(ENV_PREFIX + key.upper())
        if raw_env:
            values[key] = _checked(key, raw_env, ENV_PREFIX + key.upper())
    for key, raw in flags.items():
        if raw is not None:
            values[key] = _checked(key, raw, "--" + key.replace("_", "-"))
    return dataclasses.replace(DaemonConfig(), **values)


def _checked(name: str, raw: Any, source: str) -> Any:
    try:
        return _convert(name, raw)
    except ValueError as exc:
        raise ValueError(f"{source}: {exc}") from None
