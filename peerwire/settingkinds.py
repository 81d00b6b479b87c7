"""What a setting's value is: how it is read from text or TOML, and how it is shown again.

One grammar everywhere (``peerwire.units``): sizes ``64M``, rates ``20M`` or ``160mbit``,
durations ``250ms``, ``30s``, ``5m``. A TOML number is bytes, bytes/s or seconds. Booleans are
``true``/``false``, ``1``/``0``, ``yes``/``no``, ``on``/``off`` (TOML: ``true``/``false``).
A parser raises ValueError with a message that does not depend on where the value came from;
``peerwire.settings`` adds the source. ``show`` writes a value so that ``parse`` reads it back.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from peerwire.auth import load_secret
from peerwire.units import parse_duration, parse_rate, parse_size

_TRUE: Final = frozenset({"1", "true", "yes", "on"})
_FALSE: Final = frozenset({"0", "false", "no", "off"})
_BINARY: Final = (("T", 1 << 40), ("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10))
_DURATIONS: Final = (("d", 86400), ("h", 3600), ("m", 60))


@dataclass(frozen=True, slots=True)
class Kind:
    """A setting's type: ``parse`` (text from a flag or a variable, or a TOML value) and
    ``show`` (for ``--help`` and ``--print-config``)."""

    parse: Callable[[object], Any]
    show: Callable[[Any], str]
    metavar: str
    #: Never quoted in errors nor shown (``<set>``/``<unset>``): the cluster secret.
    sensitive: bool = False


def _is_number(raw: object) -> bool:
    return isinstance(raw, int | float) and not isinstance(raw, bool)


def _what(raw: object) -> str:
    """How an error names a value of the wrong type."""
    names = {bool: "a boolean", list: "a list", dict: "a table", str: "text"}
    return names.get(type(raw), "a number" if _is_number(raw) else type(raw).__name__)


def parse_bool(raw: object) -> bool:
    if isinstance(raw, bool):
        return raw
    if isinstance(raw, str) and raw.strip().lower() in _TRUE | _FALSE:
        return raw.strip().lower() in _TRUE
    raise ValueError("expected true or false (also 1/0, yes/no, on/off)")


def parse_int(raw: object) -> int:
    if isinstance(raw, int) and not isinstance(raw, bool):
        return raw
    if isinstance(raw, str):
        try:
            return int(raw.strip())
        except ValueError:
            pass
    raise ValueError(f"expected a whole number, not {_what(raw)}")


def parse_number(raw: object) -> float:
    value: float | None = None
    if isinstance(raw, int | float) and not isinstance(raw, bool):
        value = float(raw)
    elif isinstance(raw, str):
        try:
            value = float(raw.strip())
        except ValueError:
            value = None
    if value is None or not math.isfinite(value):
        raise ValueError(f"expected a finite number, not {_what(raw)}")
    return value


def parse_text(raw: object) -> str:
    if not isinstance(raw, str):
        raise ValueError(f"expected text, not {_what(raw)}")
    return raw


def parse_path(raw: object) -> Path:
    if not isinstance(raw, str) or not raw.strip():
        raise ValueError(f"expected a path, not {_what(raw) if raw != '' else 'nothing'}")
    try:
        return Path(raw).expanduser()
    except RuntimeError:  # ~name of no user, or no home directory
        raise ValueError("cannot expand '~': no such user or home directory") from None


def _unit_number(raw: object, what: str, example: str, positive: bool) -> float:
    """A TOML number (bytes, bytes/s, seconds): finite and not negative (or positive)."""
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        raise ValueError(f"expected a {what} such as {example!r}, not {_what(raw)}")
    value = float(raw)
    if not math.isfinite(value):
        raise ValueError(f"{what} {raw!r} is not finite")
    if positive and value <= 0:
        raise ValueError(f"{what} {raw!r} must be positive")
    if value < 0:
        raise ValueError(f"{what} {raw!r} is negative")
    return value


def parse_size_value(raw: object) -> int:
    if isinstance(raw, str):
        return parse_size(raw)
    return round(_unit_number(raw, "size", "64M", positive=False))


def parse_rate_value(raw: object) -> float:
    if isinstance(raw, str):
        return parse_rate(raw)
    return _unit_number(raw, "rate", "20M", positive=True)


def parse_duration_value(raw: object) -> float:
    if isinstance(raw, str):
        return parse_duration(raw)
    return _unit_number(raw, "duration", "30s", positive=False)


def parse_port(raw: object) -> int:
    try:
        port = parse_int(raw)
    except ValueError:
        raise ValueError(f"expected a port number, not {_what(raw)}") from None
    if not 0 <= port <= 65535:
        raise ValueError(f"port {port} is not in 0..65535 (0 = any free port)")
    return port


def parse_secret(raw: object) -> bytes:
    """The cluster secret itself (``DRAGONFLY_SECRET``): at least 16 bytes."""
    return load_secret(None, parse_text(raw)) or b""


def parse_secret_file(raw: object) -> Path:
    """A file holding the cluster secret: readable now, and the secret at least 16 bytes."""
    path = parse_path(raw)
    try:
        load_secret(str(path), None)
    except OSError as exc:
        raise ValueError(f"cannot read the secret file: {exc.strerror or exc}") from None
    return path


def _decimal(value: float) -> str:
    """A float as plain decimals (``parse_*`` read no exponents), without a trailing ``.0``."""
    text = repr(float(value))
    if "e" in text:
        text = format(value, "f")
    return text.removesuffix(".0")


def show_bool(value: Any) -> str:
    return "true" if value else "false"


def show_size(value: Any) -> str:
    """``16K``, ``10G``; bytes when not a whole multiple."""
    for suffix, multiple in _BINARY:
        if value and value % multiple == 0:
            return f"{value // multiple}{suffix}"
    return str(value)


def show_rate(value: Any) -> str:
    if value is None:
        return "unlimited"
    if float(value).is_integer():
        return show_size(int(value))
    return _decimal(value)


def show_duration(value: Any) -> str:
    """``250ms``, ``5s``, ``2m``, ``24h``, ``1.5s``."""
    if value is None:
        return "none"
    if 0 < value < 1:
        return f"{_decimal(value * 1000)}ms"
    for suffix, seconds in _DURATIONS:
        if value and value % seconds == 0:
            return f"{_decimal(value // seconds)}{suffix}"
    return f"{_decimal(value)}s"


def show_plain(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return _decimal(value)
    return str(value)


def optional(kind: Kind, *words: str) -> Kind:
    """``kind`` or None, written as the first of ``words`` (``unlimited``, ``none``)."""

    def parse(raw: object) -> Any:
        if isinstance(raw, str) and raw.strip().lower() in words:
            return None
        return kind.parse(raw)

    def show(value: Any) -> str:
        return words[0] if value is None else kind.show(value)

    return Kind(parse, show, kind.metavar, kind.sensitive)


BOOL: Final = Kind(parse_bool, show_bool, "BOOL")
INT: Final = Kind(parse_int, show_plain, "N")
NUMBER: Final = Kind(parse_number, show_plain, "NUMBER")
TEXT: Final = Kind(parse_text, show_plain, "TEXT")
PATH: Final = Kind(parse_path, show_plain, "PATH")
PORT: Final = Kind(parse_port, show_plain, "PORT")
SIZE: Final = Kind(parse_size_value, show_size, "SIZE")
RATE: Final = Kind(parse_rate_value, show_rate, "RATE")
DURATION: Final = Kind(parse_duration_value, show_duration, "DURATION")
SECRET: Final = Kind(parse_secret, lambda v: "<set>" if v else "<unset>", "SECRET", True)
SECRET_FILE: Final = Kind(parse_secret_file, show_plain, "FILE")
