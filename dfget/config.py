"""Flags, ``DFGET_*`` environment variables and a TOML file -> one ``DownloadOptions``.

Every option can be set in three places; the first that sets it wins (DESIGN.md):

1. the command-line flag (``--rate 20M``);
2. the environment variable ``DFGET_<NAME>`` (``DFGET_RATE=20M``); an empty variable is unset;
3. the TOML file: ``--config FILE``, else ``$DFGET_CONFIG``, else
   ``$XDG_CONFIG_HOME/dfget/config.toml`` (``~/.config/dfget/config.toml``) when it exists.

A source replaces, it never merges: ``-H`` on the command line replaces every header of the
file. Rates read like ``20M`` (MiB/s) or ``160mbit``, durations like ``30s`` or ``5m``
(``peerwire.units``); in TOML a bare number is bytes/s or seconds. ``--rate unlimited`` and
``--timeout none`` lift a limit the file or the environment set.
"""

from __future__ import annotations

import argparse
import math
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final
from urllib.parse import unquote, urlsplit

from dfget.identity import normalize_url, parse_digest
from dfget.options import DownloadOptions
from peerwire.auth import load_secret as _load_secret
from peerwire.units import parse_duration, parse_rate
from tracker.urls import tracker_base_url

ENV_PREFIX: Final = "DFGET_"
#: The cluster secret itself (every component reads it), when not given as a file.
SECRET_ENV: Final = "DRAGONFLY_SECRET"
CONFIG_ENV: Final = "DFGET_CONFIG"
#: Name of the output when the URL's path ends in ``/``, as wget and curl do.
DEFAULT_OUTPUT_NAME: Final = "index.html"
#: Bounds on what one download carries: trackers, filters, headers, label lengths.
MAX_LIST_ITEMS: Final = 64
MAX_HEADER_CHARS: Final = 8 * 1024
MAX_LABEL_CHARS: Final = 256

# RFC 9110 section 5.1: a field name is a token.
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
#: Headers dfget sets itself: a user's value would break Range requests or message framing.
_RESERVED_HEADERS: Final = frozenset(
    {"range", "if-range", "content-length", "transfer-encoding", "connection", "upgrade", "te"}
)
_TRUE: Final = frozenset({"1", "true", "yes", "on"})
_FALSE: Final = frozenset({"0", "false", "no", "off"})


@dataclass(frozen=True, slots=True)
class UiOptions:
    """How the command talks to its user (not part of the download itself)."""

    quiet: bool = False
    #: 0 warnings, 1 info, 2 or more debug logging.
    verbose: int = 0


def _strings(value: object, what: str) -> list[str]:
    """A TOML list of strings, an ``append`` flag's list, or one string, as a list."""
    items = value if isinstance(value, list | tuple) else [value]
    if not all(isinstance(item, str) for item in items):
        raise ValueError(f"expected {what} as a string or a list of strings, not {value!r:.100}")
    return list(items)


def _comma_list(value: object, what: str) -> list[str]:
    names = [
        name.strip() for item in _strings(value, what) for name in item.split(",") if name.strip()
    ]
    if len(names) > MAX_LIST_ITEMS:
        raise ValueError(f"more than {MAX_LIST_ITEMS} {what}s")
    return names


def _trackers(value: object) -> tuple[str, ...]:
    """Comma-separated (or listed) tracker base or announce URLs, as base URLs, deduplicated."""
    bases = [tracker_base_url(url) for url in _comma_list(value, "tracker URL")]
    return tuple(dict.fromkeys(bases))


def _filters(value: object) -> tuple[str, ...]:
    return tuple(dict.fromkeys(_comma_list(value, "query parameter name")))


def _rate(value: object) -> float | None:
    """``20M``, ``160mbit``, ``unlimited`` (None); a TOML number is bytes/s."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"rate must be a positive number of bytes/s, not {value!r}")
        return float(value)
    if not isinstance(value, str):
        raise ValueError(f"expected a rate such as '20M', not {value!r:.100}")
    if value.strip().lower() == "unlimited":
        return None
    return parse_rate(value)


def _seconds(value: object) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str):
        seconds = parse_duration(value)
    else:
        raise ValueError(f"expected a duration such as '30s', not {value!r:.100}")
    if not (math.isfinite(seconds) and seconds >= 0):
        raise ValueError(f"duration must be a finite number of seconds >= 0, not {value!r}")
    return seconds


def _timeout(value: object) -> float | None:
    """A positive duration, or ``none`` for no limit."""
    if isinstance(value, str) and value.strip().lower() == "none":
        return None
    seconds = _seconds(value)
    if seconds <= 0:
        raise ValueError("timeout must be positive (or 'none' for no limit)")
    return seconds


def _digest(value: object) -> bytes:
    if not isinstance(value, str):
        raise ValueError(f"expected a digest such as 'sha256:<64 hex digits>', not {value!r:.100}")
    return parse_digest(value)


def parse_header(text: str) -> tuple[str, str]:
    """``'Name: value'`` -> ``(name, value)``; ValueError for anything that could inject.

    The name must be an RFC 9110 token; surrounding whitespace of the value is dropped. CR, LF
    and NUL are refused in either (header injection). Headers dfget sets itself (Range,
    Content-Length, ...) are refused with a reason rather than silently overridden.
    """
    if len(text) > MAX_HEADER_CHARS:
        raise ValueError(f"header longer than {MAX_HEADER_CHARS} characters: {text[:60]!r}...")
    if any(char in text for char in "\r\n\0"):
        raise ValueError(f"header must not contain CR, LF or NUL: {text[:100]!r}")
    name, colon, value = text.partition(":")
    if not colon:
        raise ValueError(f"header must be written 'Name: value', not {text[:100]!r}")
    if not _TOKEN.fullmatch(name):
        raise ValueError(f"header name {name[:100]!r} is not a valid HTTP field name")
    if name.lower() in _RESERVED_HEADERS:
        raise ValueError(f"header {name!r} is set by dfget itself and cannot be given")
    return name, value.strip(" \t")


def _headers(value: object) -> tuple[tuple[str, str], ...]:
    """One header per list item, or several in one string separated by newlines (environment)."""
    if isinstance(value, str):
        lines = [line for line in value.split("\n") if line.strip()]
    else:
        lines = _strings(value, "headers")
    if len(lines) > MAX_LIST_ITEMS:
        raise ValueError(f"more than {MAX_LIST_ITEMS} headers")
    return tuple(parse_header(line) for line in lines)


def _label(value: object) -> str:
    """``--tag`` and ``--zone``: short printable text."""
    if not isinstance(value, str):
        raise ValueError(f"expected a string, not {value!r:.100}")
    if len(value) > MAX_LABEL_CHARS:
        raise ValueError(f"longer than {MAX_LABEL_CHARS} characters")
    if not value.isprintable():
        raise ValueError(f"must be printable text, not {value!r:.100}")
    return value


def _bool(value: object) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise ValueError(f"expected true or false, not {value!r:.100}")


def _secret_file(value: object) -> bytes:
    """The cluster secret from a file (peerwire.auth.load_secret's rules)."""
    return _load_secret(str(value), None) or b""


def _port(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError(f"expected a port number, not {value!r:.100}")
    try:
        port = int(value)
    except ValueError:
        raise ValueError(f"expected a port number, not {value!r:.100}") from None
    if not 0 <= port <= 65535:
        raise ValueError(f"port {port} is not in 0..65535 (0 = any free port)")
    return port


@dataclass(frozen=True, slots=True)
class _Setting:
    #: Field of ``DownloadOptions`` or ``UiOptions``.
    target: str
    #: argparse ``dest`` and how the flag is spelled in messages.
    dest: str
    flag: str
    env: str
    key: str
    convert: Callable[[object], Any]
    #: The flag and the variable say "no" (``--no-back-to-source``); the TOML key says "yes".
    negated: bool = False


_SETTINGS: Final = (
    _Setting("trackers", "tracker", "--tracker", "DFGET_TRACKER", "tracker", _trackers),
    _Setting("rate_bps", "rate", "--rate", "DFGET_RATE", "rate", _rate),
    _Setting(
        "upload_rate_bps", "upload_rate", "--upload-rate", "DFGET_UPLOAD_RATE", "upload_rate", _rate
    ),
    _Setting("digest_sha256", "digest", "--digest", "DFGET_DIGEST", "digest", _digest),
    _Setting("headers", "header", "-H/--header", "DFGET_HEADER", "headers", _headers),
    _Setting("filters", "filter", "--filter", "DFGET_FILTER", "filter", _filters),
    _Setting("tag", "tag", "--tag", "DFGET_TAG", "tag", _label),
    _Setting("zone", "zone", "--zone", "DFGET_ZONE", "zone", _label),
    _Setting("seed_time_s", "seed_time", "--seed-time", "DFGET_SEED_TIME", "seed_time", _seconds),
    _Setting(
        "back_to_source",
        "no_back_to_source",
        "--no-back-to-source",
        "DFGET_NO_BACK_TO_SOURCE",
        "back_to_source",
        _bool,
        negated=True,
    ),
    _Setting("timeout_s", "timeout", "--timeout", "DFGET_TIMEOUT", "timeout", _timeout),
    _Setting("quiet", "quiet", "--quiet", "DFGET_QUIET", "quiet", _bool),
    _Setting("peer_port", "peer_port", "--peer-port", "DFGET_PEER_PORT", "peer_port", _port),
    _Setting(
        "secret", "secret_file", "--secret-file", "DFGET_SECRET_FILE", "secret_file", _secret_file
    ),
)
_TOML_KEYS: Final = frozenset(setting.key for setting in _SETTINGS)
_FLAG_KEYS: Final = frozenset(setting.dest for setting in _SETTINGS) | {
    "url",
    "output",
    "config",
    "verbose",
}
_UI_FIELDS: Final = frozenset({"quiet"})


def find_config_file(flag: Path | None, environ: Mapping[str, str]) -> Path | None:
    """``--config``, else ``$DFGET_CONFIG``, else the per-user file when it exists, else None.

    A file named explicitly must exist (``build_options`` says so); the per-user default is
    optional.
    """
    if flag is not None:
        return flag
    if environ.get(CONFIG_ENV):
        return Path(environ[CONFIG_ENV])
    config_home = environ.get("XDG_CONFIG_HOME")
    if not config_home:
        home = environ.get("HOME")
        config_home = str((Path(home) if home else Path.home()) / ".config")
    default = Path(config_home) / "dfget" / "config.toml"
    return default if default.is_file() else None


def _read_file(path: Path) -> dict[str, Any]:
    try:
        document = tomllib.loads(path.read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ValueError(f"config file {path}: {exc}") from exc
    unknown = sorted(set(document) - _TOML_KEYS)
    if unknown:
        raise ValueError(
            f"config file {path}: unknown keys {', '.join(map(repr, unknown))} "
            f"(known: {', '.join(sorted(_TOML_KEYS))})"
        )
    return document


def default_output(url: str) -> Path:
    """The last path segment of ``url`` (percent-decoded) in the current directory.

    ``index.html`` when the path ends in ``/`` or the segment would not be a plain file name
    (``..``, or a decoded ``/``): a URL must never choose a path outside the directory.
    """
    name = unquote(urlsplit(url).path.rpartition("/")[2])
    if name in ("", ".", "..") or any(char in name for char in "/\\\0"):
        name = DEFAULT_OUTPUT_NAME
    return Path(name)


def _convert(setting: _Setting, raw: object, source: str) -> Any:
    try:
        value = setting.convert(raw)
    except ValueError as exc:
        raise ValueError(f"{source}: {exc}") from None
    return value


def build_options(
    args: argparse.Namespace | Mapping[str, Any],
    environ: Mapping[str, str],
    config_file: Path | None,
) -> tuple[DownloadOptions, UiOptions]:
    """Merge flags > environment > file into the download's options and the UI's.

    ``args`` holds flags by argparse ``dest`` (``url``, ``output``, ``rate``, ``header``, ...);
    None means "not given". ValueError names the source and the option of any bad value.
    """
    flags = dict(vars(args) if isinstance(args, argparse.Namespace) else args)
    unknown = sorted(set(flags) - _FLAG_KEYS)
    if unknown:
        raise ValueError(f"unknown options: {', '.join(unknown)}")
    url = flags.get("url")
    if not isinstance(url, str):
        raise ValueError("a URL to download is required")
    document = _read_file(config_file) if config_file is not None else {}
    values: dict[str, Any] = {}
    for setting in _SETTINGS:
        if flags.get(setting.dest) is not None:
            value = _convert(setting, flags[setting.dest], setting.flag)
            values[setting.target] = not value if setting.negated else value
        elif environ.get(setting.env):
            value = _convert(setting, environ[setting.env], setting.env)
            values[setting.target] = not value if setting.negated else value
        elif setting.key in document:
            source = f"config file {config_file}: {setting.key}"
            values[setting.target] = _convert(setting, document[setting.key], source)
    if "secret" not in values and environ.get(SECRET_ENV):
        values["secret"] = _load_secret(None, environ[SECRET_ENV])
    ui_values = {name: values.pop(name) for name in _UI_FIELDS if name in values}
    normalize_url(url, values.get("filters", ()))
    output = flags.get("output")
    if output is None:
        output_path = default_output(url)
    else:
        output_path = Path(output)
        if str(output).endswith("/") or output_path.is_dir():
            output_path = output_path / default_output(url)
    verbose = flags.get("verbose") or 0
    if not isinstance(verbose, int) or verbose < 0:
        raise ValueError(f"verbose must be a count >= 0, not {verbose!r}")
    return (
        DownloadOptions(url=url, output=output_path, **values),
        UiOptions(verbose=verbose, **ui_values),
    )
