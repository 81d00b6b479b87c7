"""Flags, ``DFGET_*`` environment variables and a TOML file -> one ``DownloadOptions``.

Every option can be set in three places; the first that sets it wins (``peerwire.settings``):

1. the command-line flag (``--rate 20M``);
2. the environment variable ``DFGET_<NAME>`` (``DFGET_RATE=20M``); an empty variable is unset;
3. the TOML file: ``--config FILE``, else ``$DFGET_CONFIG``, else
   ``$XDG_CONFIG_HOME/dfget/config.toml`` (``~/.config/dfget/config.toml``) when it exists;
   top-level keys (or a ``[dfget]`` table) named like the flags (``rate``, ``header``,
   ``no_back_to_source``).

A source replaces, it never merges: ``-H`` on the command line replaces every header of the
file. Rates read like ``20M`` (MiB/s) or ``160mbit``, durations like ``30s`` or ``5m``
(``peerwire.units``); in TOML a bare number is bytes/s or seconds. ``--rate unlimited`` and
``--timeout none`` lift a limit the file or the environment set. The former keys ``headers``
and ``back_to_source`` (the opposite of ``no_back_to_source``) still work, with a notice.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final
from urllib.parse import unquote, urlsplit

from dfget.coordinators.serfoptions import SerfOptions
from dfget.coordinators.serfsettings import coordinator_setting, serf_settings
from dfget.identity import normalize_url, parse_digest
from dfget.options import DEFAULT_SEED_TIME_S, DownloadOptions
from peerwire import settingkinds as kinds
from peerwire.auth import load_secret
from peerwire.settings import CLUSTER_SECRET, Loaded, Setting, Settings, SettingsError
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


def _timeout(value: object) -> float:
    """A positive duration (``none``, no limit, is ``optional``'s)."""
    seconds = kinds.parse_duration_value(value)
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


def _show_headers(value: Any) -> str:
    """Header names only: their values often carry credentials."""
    return ", ".join(f"{name}: <hidden>" for name, _ in value)


def _show_digest(value: Any) -> str:
    return "" if value is None else "sha256:" + value.hex()


def _user_file(environ: Mapping[str, str]) -> Path:
    config_home = environ.get("XDG_CONFIG_HOME")
    if not config_home:
        home = environ.get("HOME")
        config_home = str((Path(home) if home else Path.home()) / ".config")
    return Path(config_home) / "dfget" / "config.toml"


_D = "download"
_LIST = "URL[,URL...]"
SETTINGS: Final = Settings(
    "dfget",
    ENV_PREFIX,
    [
        Setting(
            "tracker",
            kinds.Kind(_trackers, ",".join, _LIST),
            "tracker base or announce URL, tried in turn, e.g. --tracker "
            "http://t1:6969,http://t2:6969/announce (repeatable)",
            (),
            default_text="none: straight from the origin",
            field="trackers",
            group=_D,
            action="append",
        ),
        Setting(
            "rate",
            kinds.optional(kinds.RATE, "unlimited"),
            "download limit of this task, peers and origin together, e.g. --rate 20M "
            "(20 MiB/s) or --rate 160mbit",
            field="rate_bps",
            group=_D,
        ),
        Setting(
            "upload_rate",
            kinds.optional(kinds.RATE, "unlimited"),
            "upload limit to other peers, e.g. --upload-rate 10M",
            field="upload_rate_bps",
            group=_D,
        ),
        Setting(
            "digest",
            kinds.Kind(_digest, _show_digest, "sha256:HEX"),
            "expected sha256 of the whole file, checked before PATH appears; also the task's "
            "identity, e.g. --digest sha256:9f86d0...0a08",
            field="digest_sha256",
            group=_D,
        ),
        Setting(
            "header",
            kinds.Kind(_headers, _show_headers, "'Name: value'"),
            "header sent to the origin, never part of the task identity, e.g. "
            "-H 'Authorization: Bearer TOKEN' (repeatable; the variable takes one per line)",
            (),
            field="headers",
            group=_D,
            short="-H",
            action="append",
            aliases=("headers",),
        ),
        Setting(
            "filter",
            kinds.Kind(_filters, ",".join, "PARAM[,PARAM...]"),
            "query parameters left out of the task identity (signatures, expiries), e.g. "
            "--filter Signature,Expires (repeatable)",
            (),
            field="filters",
            group=_D,
            action="append",
        ),
        Setting(
            "tag",
            kinds.Kind(_label, str, "TAG"),
            "part of the task identity: the same URL with another tag is another task, "
            "e.g. --tag v2",
            "",
            group=_D,
        ),
        Setting(
            "zone",
            kinds.Kind(_label, str, "LABEL"),
            "where this host is (rack, datacenter); the tracker prefers peers of the same "
            "zone, e.g. --zone rack-12",
            "",
            group=_D,
        ),
        Setting(
            "seed_time",
            kinds.DURATION,
            "keep uploading this long after the download, e.g. --seed-time 5m; 0 leaves at "
            "once (a burst of hosts arrives within a minute)",
            DEFAULT_SEED_TIME_S,
            field="seed_time_s",
            group=_D,
        ),
        Setting(
            "no_back_to_source",
            kinds.BOOL,
            "never download from the origin directly when the tracker or the swarm fails; "
            "fail with exit code 6 instead",
            False,
            field="back_to_source",
            group=_D,
            action="switch",
            negate=True,
            inverse_aliases=("back_to_source",),
        ),
        Setting(
            "timeout",
            kinds.optional(kinds.Kind(_timeout, kinds.show_duration, "DURATION"), "none"),
            "give up after this long, seeding excluded, e.g. --timeout 10m",
            field="timeout_s",
            group=_D,
        ),
        Setting(
            "peer_port",
            kinds.PORT,
            "TCP port other peers connect to, e.g. --peer-port 65000 (0: any free port)",
            0,
            group=_D,
        ),
        Setting(
            "secret_file",
            kinds.SECRET_FILE,
            f"the cluster secret (at least 16 bytes) when the swarm uses one; else {SECRET_ENV} "
            "(the secret itself)",
            field=None,
        ),
        coordinator_setting(" (with no dfdaemon running; the daemon's own when it runs)"),
        *serf_settings("serf", example="--join 10.0.0.5:7946,10.0.0.6:7946"),
        Setting(
            "quiet",
            kinds.BOOL,
            "no progress display (errors and the summary line are still printed)",
            False,
            group="ui",
            short="-q",
            action="switch",
        ),
        CLUSTER_SECRET,
    ],
    tables=("dfget",),
    user_file=_user_file,
    user_file_text="~/.config/dfget/config.toml",
)
#: Flags that are not settings: the download's URL and output, and the command's own.
_OTHER_FLAGS: Final = frozenset({"url", "output", "config", "print_config", "verbose"})


def find_config_file(flag: Path | None, environ: Mapping[str, str]) -> Path | None:
    """``--config``, else ``$DFGET_CONFIG``, else the per-user file when it exists, else None.

    A file named explicitly must exist (``load`` says so); the per-user default is optional.
    """
    return SETTINGS.find_config_file(flag, environ)


def default_output(url: str) -> Path:
    """The last path segment of ``url`` (percent-decoded) in the current directory.

    ``index.html`` when the path ends in ``/`` or the segment would not be a plain file name
    (``..``, or a decoded ``/``): a URL must never choose a path outside the directory.
    """
    name = unquote(urlsplit(url).path.rpartition("/")[2])
    if name in ("", ".", "..") or any(char in name for char in "/\\\0"):
        name = DEFAULT_OUTPUT_NAME
    return Path(name)


def load(
    args: argparse.Namespace | Mapping[str, Any],
    environ: Mapping[str, str],
    config_file: Path | None,
) -> tuple[Loaded, dict[str, Any]]:
    """Merge flags > environment > file; the merge and the flags (by argparse ``dest``)."""
    flags = dict(vars(args) if isinstance(args, argparse.Namespace) else args)
    unknown = sorted(set(flags) - set(SETTINGS.by_name) - _OTHER_FLAGS)
    if unknown:
        raise SettingsError(f"unknown options: {', '.join(unknown)}")
    return SETTINGS.load(flags, environ, config_file), flags


def options_from(loaded: Loaded, flags: Mapping[str, Any]) -> tuple[DownloadOptions, UiOptions]:
    """The download's options and the UI's from a merge and the flags ``url``, ``output`` and
    ``verbose``; SettingsError names the source of a bad value."""
    url = flags.get("url")
    if not isinstance(url, str):
        raise SettingsError("the following arguments are required: URL")
    secret: bytes | None = loaded.values["secret"]
    if loaded.is_set("secret_file"):
        try:
            secret = load_secret(str(loaded.values["secret_file"]), None)
        except (OSError, ValueError) as exc:
            raise loaded.error("secret_file", str(exc)) from None
    try:
        normalize_url(url, loaded.values["filter"])
    except ValueError as exc:
        raise SettingsError(f"URL={url!r}: {exc}") from None
    output = flags.get("output")
    if output is None:
        output_path = default_output(url)
    else:
        output_path = Path(output)
        if str(output).endswith("/") or output_path.is_dir():
            output_path = output_path / default_output(url)
    verbose = flags.get("verbose") or 0
    if not isinstance(verbose, int) or verbose < 0:
        raise SettingsError(f"verbose must be a count >= 0, not {verbose!r}")
    serf = loaded.build(SerfOptions, "serf") if loaded.values["coordinator"] == "serf" else None
    download = loaded.build(
        DownloadOptions, "download", url=url, output=output_path, secret=secret, serf=serf
    )
    return download, loaded.build(UiOptions, "ui", verbose=verbose)


def build_options(
    args: argparse.Namespace | Mapping[str, Any],
    environ: Mapping[str, str],
    config_file: Path | None,
) -> tuple[DownloadOptions, UiOptions]:
    """Merge flags > environment > file into the download's options and the UI's.

    ``args`` holds flags by argparse ``dest`` (``url``, ``output``, ``rate``, ``header``, ...);
    None means "not given". SettingsError (a ValueError) names the source and the value of any
    bad setting.
    """
    loaded, flags = load(args, environ, config_file)
    return options_from(loaded, flags)
