"""TrackerConfig: defaults, validation, and file < environment < flags."""

from __future__ import annotations

from pathlib import Path

import pytest

from tracker.config import TrackerConfig, load_config, parse_duration, parse_size


def test_defaults_listen_on_loopback_port_6969() -> None:
    config = load_config({}, environ={})
    assert (config.host, config.port, config.interval_s) == ("127.0.0.1", 6969, 5.0)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("5s", 5.0), ("250ms", 0.25), ("2m", 120.0), ("1h", 3600.0), ("1d", 86400.0), ("7", 7.0)],
)
def test_parse_duration_units(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "5x", "-1s", "1h30m", "s"])
def test_parse_duration_rejects_garbage(text: str) -> None:
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration(text)


def test_parse_size_binary_multiples() -> None:
    assert parse_size("16K") == 16384
    assert parse_size("8M") == 8 << 20
    assert parse_size("100") == 100
    with pytest.raises(ValueError, match="not a size"):
        parse_size("8Q")


def test_flags_win_over_environment_over_file(tmp_path: Path) -> None:
    file = tmp_path / "tracker.toml"
    file.write_text('[tracker]\nport = 7000\ninterval_s = "10s"\norigin_budget = 3\n')
    environ = {"DFTRACKER_INTERVAL_S": "20s", "DFTRACKER_ORIGIN_BUDGET": "4"}
    config = load_config({"origin_budget": "5", "port": None}, environ=environ, config_file=file)
    assert config.port == 7000  # file only
    assert config.interval_s == 20.0  # environment over file
    assert config.origin_budget == 5  # flag over both


def test_file_top_level_keys_and_sizes(tmp_path: Path) -> None:
    file = tmp_path / "t.toml"
    file.write_text('max_body_bytes = "1M"\ntrust_ip_param = true\n')
    config = load_config({}, environ={}, config_file=file)
    assert config.max_body_bytes == 1 << 20
    assert config.trust_ip_param is True


def test_unknown_option_in_file_is_named(tmp_path: Path) -> None:
    file = tmp_path / "t.toml"
    file.write_text("prot = 1\n")
    with pytest.raises(ValueError, match="unknown option 'prot'"):
        load_config({}, environ={}, config_file=file)


def test_bad_environment_value_names_the_variable() -> None:
    with pytest.raises(ValueError, match="DFTRACKER_TRUST_IP_PARAM"):
        load_config({}, environ={"DFTRACKER_TRUST_IP_PARAM": "maybe"})


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"port": 70000}, "port 70000"),
        ({"interval_s": 0.0}, "interval_s must be a positive"),
        ({"min_interval_s": 10.0}, "min_interval_s must not exceed"),
        ({"numwant_default": 500}, "numwant_default must not exceed"),
        ({"origin_budget": 0}, "origin_budget must be at least 1"),
        ({"max_head_bytes": 100}, "max_head_bytes below 1K"),
    ],
)
def test_validation_explains_the_problem(changes: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TrackerConfig(**changes)  # type: ignore[arg-type]
