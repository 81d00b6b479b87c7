"""Parsing and formatting of rates, sizes and durations."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from peerwire.units import (
    GIB,
    KIB,
    MAX_BYTES,
    MIB,
    format_rate,
    format_size,
    parse_duration,
    parse_rate,
    parse_size,
)


@pytest.mark.parametrize(
    ("text", "rate_bps"),
    [
        ("20M", 20 * MIB),
        ("20m", 20 * MIB),
        ("1.5M", 1.5 * MIB),
        ("500K", 500 * KIB),
        ("1048576", 1048576),
        ("1G", GIB),
        ("20MiB", 20 * MIB),
        ("20MB", 20 * MIB),
        ("20 MiB/s", 20 * MIB),
        ("20M/s", 20 * MIB),
        ("  20M  ", 20 * MIB),
        (".5K", 512),
        ("160mbit", 20_000_000),
        ("160Mbit", 20_000_000),
        ("2mbit", 250_000),
        ("800kbit", 100_000),
        ("1gbit", 125_000_000),
        ("8bit", 1),
    ],
)
def test_parse_rate_reads_binary_bytes_and_decimal_bits(text: str, rate_bps: float) -> None:
    assert parse_rate(text) == rate_bps


@pytest.mark.parametrize(
    ("text", "size_bytes"),
    [
        ("64M", 64 * MIB),
        ("4G", 4 * GIB),
        ("4g", 4 * GIB),
        ("512K", 512 * KIB),
        ("512KiB", 512 * KIB),
        ("123", 123),
        ("123B", 123),
        ("0", 0),
        ("1.5K", 1536),
        ("1.1G", 1181116006),  # 1181116006.4 rounded to the nearest byte
        ("2T", 2 * 1024 * GIB),
    ],
)
def test_parse_size_reads_binary_multiples(text: str, size_bytes: int) -> None:
    assert parse_size(text) == size_bytes


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("30s", 30.0),
        ("5m", 300.0),
        ("5min", 300.0),
        ("2h", 7200.0),
        ("1d", 86400.0),
        ("250ms", 0.25),
        ("1.5s", 1.5),
        ("10", 10.0),
        ("0", 0.0),
        ("2H", 7200.0),
    ],
)
def test_parse_duration_reads_common_units(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("-5M", "negative"),
        ("0", "positive"),
        ("0M", "positive"),
        ("20X", "unknown unit 'x'"),
        ("20mbps", "unknown unit 'mbps'"),
        ("20M/h", "unknown unit 'm/h'"),
        ("nan", "not a number"),
        ("inf", "not a number"),
        ("1e6", "not a number"),
        ("M", "not a number"),
        ("1.2.3M", "not a number"),
        ("9" * 80, "longer than"),
        ("99999999999T", "larger than"),
    ],
)
def test_parse_rate_rejects_bad_text_quoting_it(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as caught:
        parse_rate(text)
    assert repr(text[:64]) in str(caught.value)


@pytest.mark.parametrize(
    "text", ["", "-1", "4X", "4mbit", "4M/s", "nan", "inf", "1e3", "99999999999T"]
)
def test_parse_size_rejects_bad_text(text: str) -> None:
    with pytest.raises(ValueError, match="size"):
        parse_size(text)


@pytest.mark.parametrize("text", ["", "-1s", "5y", "5M/s", "nan", "inf", "1h30m"])
def test_parse_duration_rejects_bad_text(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


def test_parsers_refuse_non_strings() -> None:
    with pytest.raises(TypeError):
        parse_rate(20)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("rate_bps", "text"),
    [
        (20 * MIB, "20.0 MiB/s"),
        (1.5 * MIB, "1.5 MiB/s"),
        (512, "512 B/s"),
        (0, "0 B/s"),
        (2 * GIB, "2.0 GiB/s"),
        (MIB - 0.1, "1.0 MiB/s"),
        (None, "unlimited"),
    ],
)
def test_format_rate_picks_the_largest_readable_unit(rate_bps: float | None, text: str) -> None:
    assert format_rate(rate_bps) == text


@pytest.mark.parametrize(
    ("size_bytes", "text"),
    [(64 * MIB, "64.0 MiB"), (1023, "1023 B"), (1536, "1.5 KiB"), (4 * GIB, "4.0 GiB")],
)
def test_format_size_picks_the_largest_readable_unit(size_bytes: int, text: str) -> None:
    assert format_size(size_bytes) == text


@pytest.mark.parametrize("bad", [-1.0, math.nan, math.inf])
def test_format_rate_rejects_impossible_rates(bad: float) -> None:
    with pytest.raises(ValueError, match="rate_bps"):
        format_rate(bad)


def _unit_of(text: str) -> float:
    """The multiple of the unit ``format_*`` chose, i.e. the weight of its last printed digit."""
    return {"B": 1, "KiB": KIB, "MiB": MIB, "GiB": GIB, "TiB": 1024 * GIB}[
        text.split()[1].removesuffix("/s")
    ]


@given(st.integers(min_value=0, max_value=MAX_BYTES // 2))
def test_format_size_reads_back_within_its_printed_precision(size_bytes: int) -> None:
    text = format_size(size_bytes)
    unit = _unit_of(text)
    precision = 0.5 if unit == 1 else 0.05 * unit
    assert abs(parse_size(text) - size_bytes) <= precision + 0.5


@given(st.floats(min_value=1.0, max_value=2.0**50, allow_nan=False, allow_infinity=False))
def test_format_rate_reads_back_within_its_printed_precision(rate_bps: float) -> None:
    text = format_rate(rate_bps)
    unit = _unit_of(text)
    precision = 0.5 if unit == 1 else 0.05 * unit
    assert abs(parse_rate(text) - rate_bps) <= precision * (1 + 1e-9)


@given(st.integers(min_value=0, max_value=2**32), st.sampled_from(["", "K", "M", "G"]))
def test_parse_size_multiplies_whole_numbers_exactly(number: int, suffix: str) -> None:
    multiple = {"": 1, "K": KIB, "M": MIB, "G": GIB}[suffix]
    assert parse_size(f"{number}{suffix}") == number * multiple
    assert parse_size(f"{number}{suffix.lower()}") == number * multiple


@given(
    st.integers(min_value=1, max_value=10**9),
    st.sampled_from(["bit", "kbit", "mbit", "gbit"]),
)
def test_parse_rate_bit_rates_are_decimal_bits_over_eight(number: int, suffix: str) -> None:
    multiple = {"bit": 1, "kbit": 10**3, "mbit": 10**6, "gbit": 10**9}[suffix]
    assert parse_rate(f"{number}{suffix}") == number * multiple / 8
    assert parse_rate(f"{number}{suffix.upper()}") == parse_rate(f"{number}{suffix}")


@given(st.text(max_size=80))
def test_garbage_gives_a_value_or_a_value_error_and_nothing_else(text: str) -> None:
    for parse in (parse_rate, parse_size, parse_duration):
        try:
            value = parse(text)
        except ValueError:
            continue
        assert math.isfinite(value)
        assert value >= 0


@given(st.from_regex(r"\A[0-9]{1,6}(\.[0-9]{1,3})?(k|m|g|kib|mib|mb|kbit|mbit)?\Z", fullmatch=True))
def test_well_formed_rates_parse_to_positive_numbers_or_say_why_not(text: str) -> None:
    try:
        value = parse_rate(text)
    except ValueError as error:
        assert "must be positive" in str(error)  # only an all-zero number may be refused
        assert float(text.rstrip("kmgibt")) == 0
    else:
        assert value > 0
        assert parse_rate(text.upper()) == value
