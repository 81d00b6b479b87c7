"""The proxy's options: the daemon's (address, upstream registry) plus its own ``[proxy]`` table.

Where they come from, weakest first: the TOML file of ``dfdaemon`` (``--config`` or
``$DFDAEMON_CONFIG``; daemon options under ``[dfdaemon]``, these under ``[proxy]``), then
``DFDAEMON_PROXY_<KEY>`` environment variables, then flags (``--registry``, ``--proxy-rule``).

* ``registries``: which upstream a containerd ``?ns=<registry host>`` names. TOML:
  ``[proxy.registries]`` with ``"docker.io" = "https://registry-1.docker.io"``; environment: a
  JSON object; flag: ``--registry HOST=URL`` (repeatable). The host of ``registry_mirror`` is
  always allowed. Any other ``ns`` is refused (403): the proxy is not an open relay.
* ``rules``: HTTP proxy mode (absolute-form requests and CONNECT). Each is a regex searched in the
  request URL and an action, ``swarm`` (GET bodies come through the daemon) or ``direct``
  (passed through). The first match decides; no match is refused (403). TOML:
  ``rules = [{regex = "...", action = "swarm"}]``; environment: the same as a JSON list; flag:
  ``--proxy-rule ACTION=REGEX`` (repeatable).
"""

from __future__ import annotations

import json
import math
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Final, Literal
from urllib.parse import urlsplit

from proxy.daemonconfig import CONFIG_ENV, DaemonConfig

ENV_PREFIX: Final = "DFDAEMON_PROXY_"
ACTIONS: Final = ("swarm", "direct")
#: A registry host as containerd names it in ``ns``: DNS name or IPv4, or [IPv6], then a port.
HOST_RE: Final = re.compile(
    r"(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)*"
    r"|\[[0-9a-f:.]{2,45}\])(?::[0-9]{1,5})?"
)
#: Most rules and registries accepted: the table is searched for every request.
MAX_RULES: Final = 256
MAX_REGISTRIES: Final = 256

Action = Literal["swarm", "direct"]


@dataclass(frozen=True, slots=True)
class ProxyRule:
    pattern: re.Pattern[str]
    action: Action


@dataclass(frozen=True, slots=True)
class ProxyConfig:
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


_NUMBERS: Final = {
    "max_head_bytes": int,
    "max_connections": int,
    "body_buffer_bytes": int,
    "upstream_connections": int,
    "head_timeout_s": float,
    "keepalive_timeout_s": float,
    "send_timeout_s": float,
    "upstream_connect_timeout_s": float,
    "upstream_read_timeout_s": float,
    "tunnel_idle_timeout_s": float,
}
KEYS: Final = ("rules", "registries", *_NUMBERS)


def _convert(key: str, raw: Any) -> Any:
    if key == "rules":
        return _rules(raw)
    if key == "registries":
        return _registries(raw)
    if isinstance(raw, bool):
        raise ValueError("must be a number")
    return _NUMBERS[key](raw)


def _checked(key: str, raw: Any, source: str) -> Any:
    try:
        return _convert(key, raw)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{source}: {exc}") from None


def load_proxy_config(
    daemon: DaemonConfig,
    flags: Mapping[str, Any],
    environ: Mapping[str, str],
    config_file: Path | None,
) -> ProxyConfig:
    """The proxy's options: file < environment < flags (each key replaced as a whole).

    ``flags`` holds ``rules`` and ``registries`` as lists of ``ACTION=REGEX`` / ``HOST=URL``
    (None or empty: not given). ValueError names the source of a bad value.
    """
    values: dict[str, Any] = {}
    path = config_file or (Path(environ[CONFIG_ENV]) if environ.get(CONFIG_ENV) else None)
    if path is not None:
        try:
            document = tomllib.loads(path.read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ValueError(f"config file {path}: {exc}") from exc
        table = document.get("proxy", {})
        if not isinstance(table, dict):
            raise ValueError(f"config file {path}: [proxy] must be a table")
        for key, raw in table.items():
            if key not in KEYS:
                raise ValueError(f"config file {path}: unknown proxy option {key!r}")
            values[key] = _checked(key, raw, f"{path}: proxy.{key}")
    for key in KEYS:
        name = ENV_PREFIX + key.upper()
        text = environ.get(name)
        if not text:
            continue
        if key in ("rules", "registries"):
            try:
                raw_env: Any = json.loads(text)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{name}: not JSON: {exc}") from None
        else:
            raw_env = text
        values[key] = _checked(key, raw_env, name)
    for key in ("rules", "registries"):
        raw_flag = flags.get(key)
        if raw_flag:
            values[key] = _checked(key, list(raw_flag), "--" + _FLAG_NAMES[key])
    base = ProxyConfig(
        host=daemon.proxy_host, port=daemon.proxy_port, upstream=daemon.registry_mirror
    )
    return replace(base, **values)


_FLAG_NAMES: Final = {"rules": "proxy-rule", "registries": "registry"}
