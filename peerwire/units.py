"""Human spellings of rates, sizes and durations, as operators type them on the command line.

The project's one implementation of these conventions:

* Rates (``parse_rate``, bytes per second): ``20M`` is 20 MiB/s. ``K``, ``M``, ``G``, ``T`` are
  binary multiples (1024) of bytes per second; ``KB``/``KiB``, ``MB``/``MiB``, ... are accepted as
  the same binary multiples (an operator who writes ``20MB`` means the same as ``20M``), and a
  trailing ``/s`` is allowed (``20 MiB/s``, the spelling ``format_rate`` prints). Bit rates use
  the networking convention of decimal multiples: ``160mbit`` is 160 * 10**6 bits/s =
  20 * 10**6 bytes/s; ``bit``, ``kbit``, ``mbit``, ``gbit``, ``tbit``. ``bps``/``Mbps`` spellings
  are refused on purpose: tools disagree on whether they mean bits or bytes.
* Sizes (``parse_size``, bytes): ``64M``, ``4G``, ``512K``, ``123``; same binary multiples and
  spellings as rates, without ``/s`` and without bits. Fractions are rounded to the nearest byte
  (``1.1G`` is 1181116006 bytes).
* Durations (``parse_duration``, seconds): ``250ms``, ``30s``, ``5m`` (minutes), ``2h``, ``1d``;
  a bare number is seconds. One term only (``90m``, not ``1h30m``).

Suffixes are case-insensitive; whitespace between number and suffix is allowed. Numbers are
plain decimals (``1.5``, ``.5``, ``1048576``): no sign, no exponent, no ``nan``/``inf``.
Every rejection is a ``ValueError`` that quotes the offending text.
"""

from __future__ import annotations

import math
import re
from fractions import Fraction
from typing import Final

KIB: Final = 1024
MIB: Final = 1024 * KIB
GIB: Final = 1024 * MIB
TIB: Final = 1024 * GIB

#: Longest text we try to parse; anything longer is a mistake, not a rate.
MAX_TEXT_CHARS: Final = 64
#: Largest size or rate accepted (8 EiB): beyond it no real link or disk exists.
MAX_BYTES: Final = 2**63 - 1

_NUMBER = re.compile(r"\s*(?P<number>[0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*(?P<suffix>[a-z/]*)\s*")

_BINARY_SUFFIXES: Final[dict[str, int]] = {
    "": 1,
    "b": 1,
    "k": KIB,
    "kb": KIB,
    "kib": KIB,
    "m": MIB,
    "mb": MIB,
    "mib": MIB,
    "g": GIB,
    "gb": GIB,
    "gib": GIB,
    "t": TIB,
    "tb": TIB,
    "tib": TIB,
}

# Bits per second, decimal multiples (tc, iperf, link speeds); value is bits, divided by 8.
_BIT_SUFFIXES: Final[dict[str, int]] = {
    "bit": 1,
    "kbit": 10**3,
    "mbit": 10**6,
    "gbit": 10**9,
    "tbit": 10**12,
}

_DURATION_SUFFIXES: Final[dict[str, int]] = {
    "": 1,
    "s": 1,
    "sec": 1,
    "m": 60,
    "min": 60,
    "h": 3600,
    "d": 86400,
}

_MS_SUFFIX: Final = "ms"

_RATE_UNITS: Final = (("TiB/s", TIB), ("GiB/s", GIB), ("MiB/s", MIB), ("KiB/s", KIB))
_SIZE_UNITS: Final = (("TiB", TIB), ("GiB", GIB), ("MiB", MIB), ("KiB", KIB))


def _split(text: str, what: str) -> tuple[Fraction, str]:
    """The exact number and the lower-cased suffix of ``text``, or a ``ValueError`` naming it."""
    if not isinstance(text, str):
        raise TypeError(f"{what} must be a str, got {type(text).__name__}")
    if len(text) > MAX_TEXT_CHARS:
        raise ValueError(f"{what} {text[:MAX_TEXT_CHARS]!r}... is longer than {MAX_TEXT_CHARS}")
    stripped = text.strip()
    if not stripped:
        raise ValueError(f"{what} is empty: {text!r}")
    if stripped.startswith("-"):
        raise ValueError(f"{what} {text!r} is negative")
    match = _NUMBER.fullmatch(text.lower())
    if match is None:
        raise ValueError(f"{what} {text!r} is not a number with an optional unit (e.g. '20M')")
    return Fraction(match["number"]), match["suffix"]


def _unknown(what: str, text: str, suffix: str, known: str) -> ValueError:
    return ValueError(f"{what} {text!r} has unknown unit {suffix!r} (known: {known})")


def parse_rate(text: str) -> float:
    """Bytes per second written as ``20M``, ``1.5M``, ``500K``, ``1048576`` or ``160mbit``.

    The rate must be positive: "no limit" is the absence of a rate, not zero.
    """
    number, suffix = _split(text, "rate")
    bare = suffix.removesuffix("/s")
    if bare in _BINARY_SUFFIXES:
        value = number * _BINARY_SUFFIXES[bare]
    elif suffix in _BIT_SUFFIXES:
        value = number * _BIT_SUFFIXES[suffix] / 8
    else:
        known = "K, M, G, T (binary bytes/s, also KiB, MB, MiB/s), kbit, mbit, gbit (decimal)"
        raise _unknown("rate", text, suffix, known)
    if value <= 0:
        raise ValueError(f"rate {text!r} must be positive")
    if value > MAX_BYTES:
        raise ValueError(f"rate {text!r} is larger than {MAX_BYTES} bytes/s")
    return float(value)


def parse_size(text: str) -> int:
    """Bytes written as ``64M``, ``4G``, ``512K`` or ``123``, rounded to the nearest byte."""
    number, suffix = _split(text, "size")
    if suffix not in _BINARY_SUFFIXES:
        raise _unknown("size", text, suffix, "K, M, G, T (binary, also KB, KiB, MB, MiB, ...)")
    value = round(number * _BINARY_SUFFIXES[suffix])
    if value > MAX_BYTES:
        raise ValueError(f"size {text!r} is larger than {MAX_BYTES} bytes")
    return value


def parse_duration(text: str) -> float:
    """Seconds written as ``250ms``, ``1.5s``, ``30s``, ``5m``, ``2h``, ``1d`` or a bare number."""
    number, suffix = _split(text, "duration")
    if suffix == _MS_SUFFIX:
        value = number / 1000
    elif suffix in _DURATION_SUFFIXES:
        value = number * _DURATION_SUFFIXES[suffix]
    else:
        raise _unknown("duration", text, suffix, "ms, s, m (minutes), h, d")
    seconds = float(value)
    if not math.isfinite(seconds):
        raise ValueError(f"duration {text!r} is too large")
    return seconds


def _format(value: float, units: tuple[tuple[str, int], ...], base_unit: str) -> str:
    for name, multiple in units:
        # Compare after rounding, so 1048575.9 reads "1.0 MiB", not "1024.0 KiB"; whole bytes
        # below one KiB are exact as they are ("1023 B").
        if value >= multiple or (multiple > KIB and round(value / multiple, 1) >= 1):
            return f"{value / multiple:.1f} {name}"
    return f"{value:.0f} {base_unit}"


def format_rate(rate_bps: float | None) -> str:
    """``20.0 MiB/s`` for people; ``None`` (no limit) is ``unlimited``. ``parse_rate`` reads it."""
    if rate_bps is None:
        return "unlimited"
    if not math.isfinite(rate_bps) or rate_bps < 0:
        raise ValueError(f"rate_bps must be finite and >= 0, got {rate_bps!r}")
    return _format(rate_bps, _RATE_UNITS, "B/s")


def format_size(size_bytes: int) -> str:
    """``64.0 MiB`` for people, ``512 B`` below one KiB. ``parse_size`` reads it back."""
    if size_bytes < 0:
        raise ValueError(f"size_bytes must be >= 0, got {size_bytes}")
    return _format(size_bytes, _SIZE_UNITS, "B")


def share_percent(from_peers_bytes: int, from_origin_bytes: int) -> tuple[int, int] | None:
    """Whole percentages (peers, origin) of the bytes received, summing to 100; None if none."""
    received = from_peers_bytes + from_origin_bytes
    if received <= 0:
        return None
    peers = round(100 * from_peers_bytes / received)
    return peers, 100 - peers


def format_eta(seconds: float) -> str:
    """``0:42``, ``12:05``, ``1:02:03``: a clock people read at a glance."""
    whole = max(0, round(seconds))
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def format_elapsed(seconds: float) -> str:
    """``3.2 s`` below a minute, then ``2 min 5 s``, then ``1 h 2 min``."""
    if seconds < 59.95:
        return f"{max(seconds, 0.0):.1f} s"
    whole = round(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours} h {minutes} min" if hours else f"{minutes} min {secs} s"
