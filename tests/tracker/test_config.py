"""TrackerConfig: defaults, validation, and file < environment < flags."""

from __future__ import annotations

from pathlib import Path

import pytest

from tracker.config import SETTINGS, TrackerConfig, load_config


def test_defaults_listen_on_loopback_port_6969() -> None:
    config = load_config({}, environ={})
    assert (config.host, config.port, config.interval_s) == ("127.0.0.1", 6969, 5.0)


@pytest.mark.parametrize(
    ("variable", "text", "field", "value"),
    [
        ("DFTRACKER_MIN_INTERVAL", "250ms", "min_interval_s", 0.25),
        ("DFTRACKER_ASSIGN_TTL", "1.5m", "assign_ttl_s", 90.0),
        ("DFTRACKER_TASK_TTL", "1d", "task_ttl_s", 86400.0),
        ("DFTRACKER_MAX_BODY", "1.5M", "max_body_bytes", 3 << 19),
        ("DFTRACKER_MAX_HEAD", "16KiB", "max_head_bytes", 16384),
        ("DFTRACKER_MAX_HEAD", "2048", "max_head_bytes", 2048),
    ],
)
def test_sizes_and_durations_use_the_one_grammar(
    variable: str, text: str, field: str, value: float
) -> None:
    assert getattr(load_config({}, environ={variable: text}), field) == value


@pytest.mark.parametrize("text", ["5x", "-1s", "1h30m", "s", "banana"])
def test_a_bad_duration_is_refused_naming_the_variable(text: str) -> None:
    with pytest.raises(ValueError, match=f"^DFTRACKER_INTERVAL='{text}': duration"):
        load_config({}, environ={"DFTRACKER_INTERVAL": text})


def test_the_example_of_a_bad_interval() -> None:
    with pytest.raises(ValueError) as caught:
        load_config({}, environ={"DFTRACKER_INTERVAL": "banana"})
    assert str(caught.value) == (
        "DFTRACKER_INTERVAL='banana': duration 'banana' is not a number with an optional unit "
        "(e.g. '20M')"
    )


def test_flags_win_over_environment_over_file(tmp_path: Path) -> None:
    file = tmp_path / "tracker.toml"
    file.write_text('[tracker]\nport = 7000\ninterval = "10s"\norigin_budget = 3\n')
    environ = {"DFTRACKER_INTERVAL": "20s", "DFTRACKER_ORIGIN_BUDGET": "4"}
    config = load_config({"origin_budget": "5", "port": None}, environ=environ, config_file=file)
    assert config.port == 7000  # file only
    assert config.interval_s == 20.0  # environment over file
    assert config.origin_budget == 5  # flag over both


def test_file_top_level_keys_and_sizes(tmp_path: Path) -> None:
    file = tmp_path / "t.toml"
    file.write_text('max_body = "1M"\ntrust_ip_param = true\nmax_head = 2048\n')
    config = load_config({}, environ={}, config_file=file)
    assert config.max_body_bytes == 1 << 20
    assert config.trust_ip_param is True
    assert config.max_head_bytes == 2048  # a TOML number is bytes


def test_empty_variable_is_unset(tmp_path: Path) -> None:
    file = tmp_path / "t.toml"
    file.write_text('interval = "9s"\n')
    config = load_config({}, environ={"DFTRACKER_INTERVAL": ""}, config_file=file)
    assert config.interval_s == 9.0


def test_former_names_with_units_still_work(tmp_path: Path) -> None:
    file = tmp_path / "t.toml"
    file.write_text('[tracker]\ninterval_s = "7s"\nhead_timeout_s = 3\nmax_body_bytes = "1M"\n')
    config = load_config({}, environ={"DFTRACKER_TASK_TTL_S": "2m"}, config_file=file)
    assert (config.interval_s, config.head_timeout_s) == (7.0, 3.0)
    assert (config.max_body_bytes, config.task_ttl_s) == (1 << 20, 120.0)
    loaded = SETTINGS.load({}, {"DFTRACKER_INTERVAL_S": "8s"}, None)
    assert loaded.notices == ("DFTRACKER_INTERVAL_S is deprecated, use DFTRACKER_INTERVAL",)


def test_unknown_option_in_file_is_named(tmp_path: Path) -> None:
    file = tmp_path / "t.toml"
    file.write_text("prot = 1\n")
    with pytest.raises(ValueError, match=r"t\.toml: unknown key 'prot' \(known: .*interval"):
        load_config({}, environ={}, config_file=file)


def test_bad_environment_value_names_the_variable() -> None:
    with pytest.raises(ValueError, match=r"^DFTRACKER_TRUST_IP_PARAM='maybe': expected true"):
        load_config({}, environ={"DFTRACKER_TRUST_IP_PARAM": "maybe"})


def test_a_short_cluster_secret_is_refused_without_quoting_it() -> None:
    with pytest.raises(ValueError) as caught:
        load_config({}, environ={"DRAGONFLY_SECRET": "short"})
    assert str(caught.value) == "DRAGONFLY_SECRET: the cluster secret must be at least 16 bytes"


def test_a_validation_error_names_the_flag() -> None:
    with pytest.raises(ValueError, match=r"^--port='70000': port 70000 is not in 0\.\.65535"):
        load_config({"port": "70000"}, environ={})


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


def test_redis_comes_from_the_flag_the_environment_or_the_file(tmp_path: Path) -> None:
    url = "redis://10.0.0.2:6379/1"
    assert load_config({}, environ={"DFTRACKER_REDIS": url}).redis == url
    config_file = tmp_path / "tracker.toml"
    config_file.write_text(f'redis = "{url}"\nredis_timeout = "500ms"\n')
    config = load_config({}, environ={}, config_file=config_file)
    assert (config.redis, config.redis_timeout_s) == (url, 0.5)
    assert load_config({}, environ={}).redis is None


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:hunter2secret@h:6379/0", "redis://:<hidden>@h:6379/0"),
        ("rediss://alice:hunter2secret@h/2", "rediss://alice:<hidden>@h/2"),
        ("redis://h:6379", "redis://h:6379"),
    ],
)
def test_print_config_never_shows_the_redis_password(url: str, shown: str) -> None:
    loaded = SETTINGS.load({}, {"DFTRACKER_REDIS": url}, None)
    config = loaded.build(TrackerConfig)
    (line,) = [line for line in loaded.describe({"": config}) if line.startswith("redis ")]
    assert line.split("  #")[0].rstrip() == f"redis = {shown}"
    assert line.endswith("# env DFTRACKER_REDIS") and "hunter2" not in line


def test_a_bad_redis_url_is_refused_without_quoting_it() -> None:
    with pytest.raises(ValueError, match=r"^DFTRACKER_REDIS: must be redis://") as refused:
        load_config({}, environ={"DFTRACKER_REDIS": "http://u:hunter2secret@h"})
    assert "hunter2" not in str(refused.value)
