"""dfdaemon's configuration: the node daemon's options (``DaemonConfig``) and its registry
mirror / HTTP proxy's (``ProxyConfig``), from flags > ``DFDAEMON_*`` variables > a TOML file.

``SETTINGS`` declares them (``peerwire.settings``): the setting ``cache_size`` is the flag
``--cache-size``, the variable ``DFDAEMON_CACHE_SIZE`` and the key ``cache_size`` of the file
(``--config``, else ``$DFDAEMON_CONFIG``; top-level keys or a ``[dfdaemon]`` table). The proxy's
settings are named ``proxy_*`` and may sit in a ``[proxy]`` table (``[proxy] head_timeout`` is
``proxy_head_timeout``, ``DFDAEMON_PROXY_HEAD_TIMEOUT``). Sizes read like ``10G``, rates like
``20M`` or ``160mbit``, durations like ``24h``; a TOML number is bytes, bytes/s or seconds.
The former names with a unit (``cache_size_bytes``, ``[proxy] head_timeout_s``, ...) still
work, with a notice.

* ``proxy_registries``: which upstream a containerd ``?ns=<registry host>`` names. TOML:
  ``[proxy.registries]`` with ``"docker.io" = "https://registry-1.docker.io"``; environment: a
  JSON object; flag: ``--registry HOST=URL`` (repeatable). The host of ``registry_mirror`` is
  always allowed. Any other ``ns`` is refused (403): the proxy is not an open relay.
* ``proxy_rules``: HTTP proxy mode (absolute-form requests and CONNECT). Each is a regex searched
  in the request URL and an action, ``swarm`` (GET bodies come through the daemon) or ``direct``
  (passed through). The first match decides; no match is refused (403). TOML:
  ``rules = [{regex = "...", action = "swarm"}]`` in ``[proxy]``; environment: the same as a
  JSON list; flag: ``--proxy-rule ACTION=REGEX`` (repeatable).
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal
from urllib.parse import urlsplit

from dfget.coordinators.serfoptions import SerfOptions
from dfget.coordinators.serfsettings import coordinator_setting, serf_settings
from dfget.handoff import default_socket
from peerwire import settingkinds as kinds
from peerwire.settings import CLUSTER_SECRET, Loaded, Setting, Settings
from proxy.cache import group_id
from tracker.urls import tracker_base_url

ENV_PREFIX: Final = "DFDAEMON_"
CONFIG_ENV: Final = "DFDAEMON_CONFIG"
ACTIONS: Final = ("swarm", "direct")
#: A registry host as containerd names it in ``ns``: DNS name or IPv4, or [IPv6], then a port.
HOST_RE: Final = re.compile(
    r"(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)*"
    r"|\[[0-9a-f:.]{2,45}\])(?::[0-9]{1,5})?"
)
#: Most rules and registries accepted: the table is searched for every request.
MAX_RULES: Final = 256
MAX_REGISTRIES: Final = 256


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "dragonfly" / "dfdaemon"


@dataclass(frozen=True, slots=True)
class DaemonConfig:
    """The node daemon's options (peer, cache, limits, local API), validated in one place."""

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
    #: A group that may read the cache (files 0640, directories 0750, group-owned); None:
    #: owner-only (0600 and 0700).
    cache_group: str | None = None
    #: Decentralized mode (``--coordinator serf``): the node's Serf agent and discovery; the
    #: trackers are then not used. None: the trackers (or none).
    serf: SerfOptions | None = None
    #: ``/stats`` (for dftop) and ``/metrics`` over TCP in decentralized mode; None: off.
    stats_host: str = "127.0.0.1"
    stats_port: int | None = None

    def __post_init__(self) -> None:
        problems = []
        for name in ("proxy_port", "peer_port", "stats_port"):
            if not 0 <= (getattr(self, name) or 0) <= 65535:
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
        if self.cache_group is not None:
            try:
                group_id(self.cache_group)
            except ValueError as exc:
                problems.append(f"cache_group: {exc}")
        if problems:
            raise ValueError("; ".join(problems))


Action = Literal["swarm", "direct"]


@dataclass(frozen=True, slots=True)
class ProxyRule:
    pattern: re.Pattern[str]
    action: Action


@dataclass(frozen=True, slots=True)
class ProxyConfig:
    """The registry mirror / HTTP proxy's options, validated in one place; ``host``, ``port``
    and ``upstream`` come from the daemon's ``proxy_host``, ``proxy_port``, ``registry_mirror``."""

    host: str = "127.0.0.1"
    port: int = 65001
    #: The default upstream registry of origin-form ``/v2/`` requests (``registry_mirror``).
    upstream: str | None = None
    #: ``ns`` host -> upstream base URL (no trailing slash), in addition to ``upstream``'s host.
    registries: tuple[tuple[str, str], ...] = ()
    rules: tuple[ProxyRule, ...] = ()
    #: Request line plus headers, at most (else 414 or 431).
    max_head_bytes: int = 64 * 1024
    #: A request's head must arrive within this of its first byte.
    head_timeout_s: float = 30.0
    #: An idle kept-alive connection, or a request body that stalls this long, is closed.
    keepalive_timeout_s: float = 60.0
    #: A client that reads nothing of its response for this long is dropped.
    send_timeout_s: float = 60.0
    max_connections: int = 1024
    #: Request body bytes held between the client and the upstream before reading pauses.
    body_buffer_bytes: int = 1 << 20
    upstream_connect_timeout_s: float = 30.0
    #: Longest silence of the upstream while it sends a response.
    upstream_read_timeout_s: float = 120.0
    #: A CONNECT tunnel with no byte either way for this long is closed.
    tunnel_idle_timeout_s: float = 300.0
    upstream_connections: int = 256
    allowed_ns: dict[str, str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        problems = []
        if not 0 <= self.port <= 65535:
            problems.append("port must be in 0..65535")
        for name in ("max_head_bytes", "max_connections", "body_buffer_bytes"):
            if getattr(self, name) <= 0:
                problems.append(f"{name} must be positive")
        if self.upstream_connections <= 0:
            problems.append("upstream_connections must be positive")
        for name in (
            "head_timeout_s",
            "keepalive_timeout_s",
            "send_timeout_s",
            "upstream_connect_timeout_s",
            "upstream_read_timeout_s",
            "tunnel_idle_timeout_s",
        ):
            value = getattr(self, name)
            if not (value > 0 and math.isfinite(value)):
                problems.append(f"{name} must be a positive duration")
        if len(self.rules) > MAX_RULES or len(self.registries) > MAX_REGISTRIES:
            problems.append(f"at most {MAX_RULES} rules and {MAX_REGISTRIES} registries")
        allowed: dict[str, str] = {}
        for host, url in self.registries:
            if not HOST_RE.fullmatch(host):
                problems.append(f"registry host {host!r} is not host[:port] in lower case")
            allowed[host] = url
        if self.upstream is not None:
            netloc = urlsplit(self.upstream).netloc.lower()
            allowed.setdefault(netloc, self.upstream)
            if netloc == "registry-1.docker.io":
                allowed.setdefault("docker.io", self.upstream)  # what containerd calls it
        if problems:
            raise ValueError("; ".join(problems))
        object.__setattr__(self, "allowed_ns", allowed)


def registry_url(raw: str) -> str:
    """An upstream base URL: http(s), a host, no query; returned without a trailing slash."""
    text = raw.strip().rstrip("/")
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
        raise ValueError(f"registry URL must be http(s)://HOST[:PORT][/PATH], not {raw!r}")
    return text


def parse_rule(regex: Any, action: Any) -> ProxyRule:
    if action not in ACTIONS:
        raise ValueError(f"rule action must be one of {', '.join(ACTIONS)}, not {action!r}")
    if not isinstance(regex, str) or not regex:
        raise ValueError(f"rule regex must be a non-empty string, not {regex!r}")
    try:
        pattern = re.compile(regex)
    except re.error as exc:
        raise ValueError(f"rule regex {regex!r}: {exc}") from None
    return ProxyRule(pattern, action)


def _rules(raw: Any) -> tuple[ProxyRule, ...]:
    """A list of ``{regex, action}`` tables or ``"ACTION=REGEX"`` strings."""
    if not isinstance(raw, list):
        raise ValueError("rules must be a list")
    rules = []
    for item in raw:
        if isinstance(item, dict):
            unknown = set(item) - {"regex", "action"}
            if unknown:
                raise ValueError(f"rule has unknown keys {sorted(unknown)}")
            rules.append(parse_rule(item.get("regex"), item.get("action")))
        elif isinstance(item, str):
            action, sep, regex = item.partition("=")
            if not sep:
                raise ValueError(f"rule {item!r} is not ACTION=REGEX")
            rules.append(parse_rule(regex, action.strip()))
        else:
            raise ValueError(f"rule {item!r} is neither a table nor ACTION=REGEX")
    return tuple(rules)


def _registries(raw: Any) -> tuple[tuple[str, str], ...]:
    """A table ``{host: url}`` or a list of ``"HOST=URL"`` strings."""
    if isinstance(raw, dict):
        pairs = list(raw.items())
    elif isinstance(raw, list):
        pairs = []
        for item in raw:
            host, sep, url = str(item).partition("=")
            if not sep:
                raise ValueError(f"registry {item!r} is not HOST=URL")
            pairs.append((host, url))
    else:
        raise ValueError("registries must be a table of HOST = URL")
    result = []
    for host, url in pairs:
        name = str(host).strip().lower()
        if not HOST_RE.fullmatch(name):
            raise ValueError(f"registry host {host!r} is not host[:port]")
        result.append((name, registry_url(str(url))))
    return tuple(result)


def _trackers(raw: object) -> tuple[str, ...]:
    """Comma-separated text or a TOML list of tracker base or announce URLs."""
    items = [kinds.parse_text(item) for item in raw] if isinstance(raw, list) else [raw]
    urls = [url for item in items for url in kinds.parse_text(item).split(",") if url.strip()]
    return tuple(tracker_base_url(url) for url in urls)


def _upstream(raw: object) -> str:
    return registry_url(kinds.parse_text(raw))


def _show_rules(value: Any) -> str:
    return ", ".join(f"{rule.action}={rule.pattern.pattern}" for rule in value)


def _show_registries(value: Any) -> str:
    return ", ".join(f"{host}={url}" for host, url in value)


_D = DaemonConfig()
_P = ProxyConfig()
_UNLIMITED = kinds.optional(kinds.RATE, "unlimited", "none", "")


def _daemon(name: str, kind: kinds.Kind, help: str, field: str = "", **extra: Any) -> Setting:
    """A daemon setting; a field with a unit (``cache_size_bytes``) is also its former name."""
    target = field or name
    aliases = (field,) if field else ()
    return Setting(name, kind, help, getattr(_D, target), field=target, aliases=aliases, **extra)


def _proxy(name: str, kind: kinds.Kind, help: str, field: str, **extra: Any) -> Setting:
    """A ``proxy_*`` setting of ``ProxyConfig.<field>``; a field with a unit is a former name."""
    aliases = () if field == name else ("proxy_" + field,)
    return Setting(
        "proxy_" + name, kind, help, getattr(_P, field), field=field, group="proxy",
        aliases=aliases, **extra,
    )  # fmt: skip


SETTINGS: Final = Settings(
    "dfdaemon",
    ENV_PREFIX,
    [
        _daemon(
            "tracker", kinds.Kind(_trackers, ",".join, "URL[,URL...]"),
            "tracker base or announce URLs, tried in turn (none: straight from the origin)",
        ),
        _daemon("proxy_host", kinds.TEXT, "registry mirror / HTTP proxy address",
                metavar="ADDRESS"),
        _daemon("proxy_port", kinds.INT, "registry mirror / HTTP proxy port"),
        _daemon("peer_host", kinds.TEXT, "address of the host's peer port", metavar="ADDRESS"),
        _daemon("peer_port", kinds.INT, "the host's peer port (0: any free port)"),
        _daemon(
            "registry_mirror", kinds.Kind(_upstream, kinds.show_plain, "URL"),
            "upstream registry of the mirror, e.g. https://registry-1.docker.io",
        ),
        _daemon(
            "cache_dir", kinds.PATH, "cache directory (owner-only)",
            default_text="$XDG_CACHE_HOME/dragonfly/dfdaemon",
        ),
        _daemon(
            "cache_group", kinds.optional(kinds.TEXT, ""),
            "a group that may read the cache: its files 0640 and directories 0750, group-owned "
            "(default: owner-only, 0600 and 0700)",
            metavar="GROUP",
        ),
        _daemon("cache_size", kinds.SIZE, "cache quota, e.g. 20G", "cache_size_bytes"),
        _daemon("cache_ttl", kinds.DURATION, "drop tasks unused this long, e.g. 24h",
                "cache_ttl_s"),
        _daemon("gc_interval", kinds.DURATION, "time between garbage collections", "gc_interval_s"),
        _daemon(
            "host_rate", _UNLIMITED, "download limit of the whole host, e.g. 100M",
            "host_rate_bps",
        ),
        _daemon(
            "upload_rate", _UNLIMITED, "upload limit of the whole host, e.g. 50M",
            "upload_rate_bps",
        ),
        _daemon(
            "socket", kinds.PATH, "local API socket that dfget hands downloads to",
            default_text=str(default_socket()),
        ),
        _daemon("zone", kinds.TEXT, "this host's zone (rack, datacenter) for peer selection"),
        _daemon(
            "secret_file", kinds.SECRET_FILE,
            "the cluster secret (else DRAGONFLY_SECRET); see SECURITY.md",
        ),
        coordinator_setting(""),
        *serf_settings("serf", example="--join 10.0.0.5:7946"),
        _daemon("stats_host", kinds.TEXT, "address of --stats-port", metavar="ADDRESS"),
        _daemon(
            "stats_port", kinds.optional(kinds.PORT, "off", "none", ""),
            "with --coordinator serf: serve /stats (dftop --tracker http://HOST:PORT) and "
            "/metrics on this TCP port (0: any free one)",
        ),
        _proxy(
            "registries", kinds.Kind(_registries, _show_registries, "HOST=URL"),
            "a registry containerd may name with ?ns=HOST, and its URL (repeatable; the "
            "variable is a JSON object)",
            "registries", flag="--registry", action="append", json_env=True,
        ),
        _proxy(
            "rules", kinds.Kind(_rules, _show_rules, "ACTION=REGEX"),
            "HTTP proxy mode: URLs matching REGEX go 'swarm' or 'direct' (repeatable, first "
            "match wins, no match is refused; the variable is a JSON list)",
            "rules", flag="--proxy-rule", action="append", json_env=True,
        ),
        _proxy("max_head", kinds.SIZE, "request line and headers, at most (414/431)",
               "max_head_bytes"),
        _proxy("head_timeout", kinds.DURATION, "a request's head must arrive within",
               "head_timeout_s"),
        _proxy("keepalive_timeout", kinds.DURATION,
               "idle kept-alive connections and stalled request bodies closed after",
               "keepalive_timeout_s"),
        _proxy("send_timeout", kinds.DURATION, "a client that reads nothing is dropped after",
               "send_timeout_s"),
        _proxy("max_connections", kinds.INT, "open connections at most (then 503)",
               "max_connections"),
        _proxy("body_buffer", kinds.SIZE, "request body buffered per push before reading pauses",
               "body_buffer_bytes"),
        _proxy("upstream_connect_timeout", kinds.DURATION, "connecting to an upstream, at most",
               "upstream_connect_timeout_s"),
        _proxy("upstream_read_timeout", kinds.DURATION,
               "longest silence of an upstream sending a response", "upstream_read_timeout_s"),
        _proxy("tunnel_idle_timeout", kinds.DURATION,
               "a CONNECT tunnel idle this long is closed", "tunnel_idle_timeout_s"),
        _proxy("upstream_connections", kinds.INT, "connections to upstreams, at most",
               "upstream_connections"),
        CLUSTER_SECRET,
    ],
    tables=("dfdaemon",),
)  # fmt: skip


def load_config(
    flags: Mapping[str, Any], environ: Mapping[str, str], config_file: Path | None
) -> tuple[DaemonConfig, ProxyConfig, Loaded]:
    """The daemon's and the proxy's options: flags (by setting name) > ``environ`` > the file
    (``config_file``, else ``$DFDAEMON_CONFIG``), and the merge they came from.

    ``peerwire.settings.SettingsError`` (a ValueError) names the source of a bad value."""
    loaded = SETTINGS.load(flags, environ, SETTINGS.find_config_file(config_file, environ))
    daemon = loaded.build(DaemonConfig)
    if loaded.values["coordinator"] == "serf":
        daemon = dataclasses.replace(daemon, serf=loaded.build(SerfOptions, "serf"))
    proxy = loaded.build(
        ProxyConfig,
        "proxy",
        host=daemon.proxy_host,
        port=daemon.proxy_port,
        upstream=daemon.registry_mirror,
    )
    return daemon, proxy, loaded
