"""peerwire.settings and peerwire.settingkinds: one naming rule, flags > environment > file,
one grammar, errors that name the source and the value."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from peerwire import settingkinds as kinds
from peerwire.settings import ArgumentParser, Loaded, Setting, Settings, SettingsError

SECRET = "s" * 16


@dataclass(frozen=True, slots=True)
class Config:
    cache_size_bytes: int = 10 << 30
    interval_s: float = 5.0
    min_interval_s: float = 1.0
    proxy_port: int = 65001
    verbose_log: bool = False
    back_to_source: bool = True
    rate_bps: float | None = None

    def __post_init__(self) -> None:
        problems = []
        if self.interval_s <= 0:
            problems.append("interval_s must be positive")
        if self.min_interval_s > self.interval_s:
            problems.append("min_interval_s must not exceed interval_s")
        if not 0 <= self.proxy_port <= 65535:
            problems.append(f"proxy_port {self.proxy_port} is not in 0..65535")
        if problems:
            raise ValueError("; ".join(problems))


SETTINGS = Settings(
    "prog",
    "PROG_",
    [
        Setting(
            "cache_size", kinds.SIZE, "cache quota", 10 << 30, field="cache_size_bytes",
            aliases=("cache_size_bytes",),
        ),
        Setting("interval", kinds.DURATION, "interval", 5.0, field="interval_s"),
        Setting("min_interval", kinds.DURATION, "min interval", 1.0, field="min_interval_s"),
        Setting("proxy_port", kinds.INT, "proxy port", 65001),
        Setting("verbose_log", kinds.BOOL, "log more", False, action="switch"),
        Setting(
            "no_back_to_source", kinds.BOOL, "never the origin", False, field="back_to_source",
            negate=True, action="switch", inverse_aliases=("back_to_source",),
        ),
        Setting("rate", kinds.optional(kinds.RATE, "unlimited"), "rate", None, field="rate_bps"),
        Setting("rules", kinds.Kind(list, repr, "RULE"), "rules", [], field=None,
                flag="--rule", action="append", json_env=True),
        Setting("secret", kinds.SECRET, "the secret", None, field=None, flag=None,
                own_env=False, other_env=("SHARED_SECRET",), in_file=False),
    ],
    tables=("prog",),
)  # fmt: skip


def load(
    flags: dict[str, Any] | None = None,
    environ: dict[str, str] | None = None,
    toml: str | None = None,
    tmp_path: Path | None = None,
) -> Loaded:
    path = None
    if toml is not None:
        assert tmp_path is not None
        path = tmp_path / "prog.toml"
        path.write_text(toml)
    return SETTINGS.load(flags or {}, environ or {}, path)


def test_one_name_is_the_flag_the_variable_and_the_key(tmp_path: Path) -> None:
    parser = ArgumentParser(prog="prog")
    SETTINGS.add_arguments(parser)
    flags = vars(parser.parse_args(["--cache-size", "1G"]))
    assert load(flags).values["cache_size"] == 1 << 30
    assert load({}, {"PROG_CACHE_SIZE": "2G"}).values["cache_size"] == 2 << 30
    assert load({}, {}, 'cache_size = "3G"\n', tmp_path).values["cache_size"] == 3 << 30


def test_flags_win_over_the_environment_over_the_file(tmp_path: Path) -> None:
    toml = 'interval = "10s"\nmin_interval = "2s"\nproxy_port = 7000\n'
    loaded = load({"interval": "30s"}, {"PROG_INTERVAL": "20s", "PROG_MIN_INTERVAL": "3s"}, toml,
                  tmp_path)  # fmt: skip
    assert loaded.values["interval"] == 30.0
    assert loaded.values["min_interval"] == 3.0
    assert loaded.values["proxy_port"] == 7000
    assert loaded.source("interval") == "flag --interval"
    assert loaded.source("min_interval") == "env PROG_MIN_INTERVAL"
    assert loaded.source("proxy_port") == f"file {tmp_path / 'prog.toml'}"
    assert loaded.source("rate") == "default"


def test_an_empty_variable_is_unset(tmp_path: Path) -> None:
    loaded = load({}, {"PROG_INTERVAL": "", "SHARED_SECRET": ""}, 'interval = "9s"\n', tmp_path)
    assert loaded.values["interval"] == 9.0
    assert loaded.values["secret"] is None


def test_the_same_bad_value_gives_the_same_message_from_every_source(tmp_path: Path) -> None:
    messages = []
    for flags, environ, toml in [
        ({"interval": "banana"}, {}, None),
        ({}, {"PROG_INTERVAL": "banana"}, None),
        ({}, {}, 'interval = "banana"\n'),
        ({}, {}, '[prog]\ninterval = "banana"\n'),
    ]:
        with pytest.raises(SettingsError) as caught:
            load(flags, environ, toml, tmp_path)
        messages.append(str(caught.value))
    body = "='banana': duration 'banana' is not a number with an optional unit (e.g. '20M')"
    assert messages == [
        "--interval" + body,
        "PROG_INTERVAL" + body,
        f"config file {tmp_path / 'prog.toml'}: interval" + body,
        f"config file {tmp_path / 'prog.toml'}: prog.interval" + body,
    ]


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ("prot = 1\n", "unknown key 'prot' (known: cache_size, interval, min_interval, no_back"),
        ("a = 1\n[prog]\nb = 2\n", "unknown keys 'a', 'prog.b'"),
        ("[proxy]\nport = 1\nhost = 'x'\n", "unknown key 'proxy.host'"),
        ("interval = \n", "not valid TOML: "),
        ("prog = 5\n", "[prog] must be a table, not 5"),
        ("interval = 1\n[prog]\ninterval = 2\n", "prog.interval sets 'interval' again"),
        ("secret = 'x'\n", "unknown key 'secret'"),
    ],
)
def test_file_problems_name_the_file_and_the_key(tmp_path: Path, toml: str, message: str) -> None:
    with pytest.raises(SettingsError) as caught:
        load({}, {}, toml, tmp_path)
    assert str(caught.value).startswith(f"config file {tmp_path / 'prog.toml'}: ")
    assert message in str(caught.value)


def test_an_unreadable_file_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match=r"missing\.toml: cannot read it: No such file"):
        SETTINGS.load({}, {}, tmp_path / "missing.toml")
    (tmp_path / "bin.toml").write_bytes(b"\xff\xfe")
    with pytest.raises(SettingsError, match="not UTF-8"):
        SETTINGS.load({}, {}, tmp_path / "bin.toml")


def test_a_table_is_a_name_prefix(tmp_path: Path) -> None:
    assert load({}, {}, "[proxy]\nport = 7001\n", tmp_path).values["proxy_port"] == 7001
    assert load({}, {}, "[prog.proxy]\nport = 7002\n", tmp_path).values["proxy_port"] == 7002


def test_old_names_still_work_with_one_notice_each(tmp_path: Path) -> None:
    loaded = load({}, {"PROG_CACHE_SIZE_BYTES": "1M"})
    assert loaded.values["cache_size"] == 1 << 20
    assert loaded.notices == ("PROG_CACHE_SIZE_BYTES is deprecated, use PROG_CACHE_SIZE",)
    loaded = load({}, {}, "cache_size_bytes = 1024\nback_to_source = false\n", tmp_path)
    assert loaded.values["cache_size"] == 1024
    assert loaded.values["no_back_to_source"] is True
    assert len(loaded.notices) == 2
    assert "key cache_size_bytes is deprecated, use cache_size" in loaded.notices[0]
    assert "use no_back_to_source (the opposite)" in loaded.notices[1]


def test_the_new_name_wins_over_the_old_one() -> None:
    loaded = load({}, {"PROG_CACHE_SIZE_BYTES": "1M", "PROG_CACHE_SIZE": "2M"})
    assert loaded.values["cache_size"] == 2 << 20
    assert loaded.notices == ()


def test_json_variables_and_repeated_flags() -> None:
    assert load({}, {"PROG_RULES": '["a", "b"]'}).values["rules"] == ["a", "b"]
    assert load({"rules": ["c"]}, {"PROG_RULES": '["a"]'}).values["rules"] == ["c"]
    with pytest.raises(SettingsError, match=r"^PROG_RULES='\[a\]': not JSON: "):
        load({}, {"PROG_RULES": "[a]"})


def test_the_secret_is_checked_but_never_quoted() -> None:
    assert load({}, {"SHARED_SECRET": SECRET}).values["secret"] == SECRET.encode()
    with pytest.raises(SettingsError) as caught:
        load({}, {"SHARED_SECRET": "short"})
    assert str(caught.value) == "SHARED_SECRET: the cluster secret must be at least 16 bytes"


def test_build_passes_only_what_a_source_set() -> None:
    loaded = load({"no_back_to_source": True}, {"PROG_INTERVAL": "10s"})
    assert loaded.build(Config) == Config(interval_s=10.0, back_to_source=False)


def test_validation_errors_are_blamed_on_their_source() -> None:
    with pytest.raises(SettingsError) as caught:
        load({"proxy_port": "70000"}, {"PROG_INTERVAL": "10s"}).build(Config)
    assert str(caught.value) == "--proxy-port='70000': proxy_port 70000 is not in 0..65535"
    with pytest.raises(SettingsError) as caught:
        load({}, {"PROG_INTERVAL": "0"}).build(Config)
    assert str(caught.value).startswith("PROG_INTERVAL='0': interval_s must be positive")


def test_a_combination_that_fails_names_every_source_involved() -> None:
    loaded = load({"min_interval": "4s"}, {"PROG_INTERVAL": "3s"})
    with pytest.raises(SettingsError) as caught:
        loaded.build(Config)
    assert str(caught.value) == (
        "min_interval_s must not exceed interval_s (set by PROG_INTERVAL, --min-interval)"
    )


def test_describe_shows_every_value_and_its_source(tmp_path: Path) -> None:
    loaded = load({"rate": "20M"}, {"SHARED_SECRET": SECRET}, "interval = 120\n", tmp_path)
    lines = loaded.describe({"": loaded.build(Config)})
    assert len(lines) == len(SETTINGS.settings)
    by_name = {line.split(" = ")[0]: line for line in lines}
    assert by_name["rate"].split() == ["rate", "=", "20M", "#", "flag", "--rate"]
    assert by_name["interval"].split() == [
        "interval",
        "=",
        "2m",
        "#",
        "file",
        str(tmp_path / "prog.toml"),
    ]
    assert by_name["cache_size"].split() == ["cache_size", "=", "10G", "#", "default"]
    assert by_name["no_back_to_source"].split()[2] == "false"
    assert by_name["secret"].split() == ["secret", "=", "<set>", "#", "env", "SHARED_SECRET"]
    assert SECRET not in "\n".join(lines)
    assert load().describe({})[-1].split() == ["secret", "=", "<unset>", "#", "default"]


def test_help_names_the_variable_the_key_and_the_default() -> None:
    parser = ArgumentParser(prog="prog")
    SETTINGS.add_arguments(parser)
    text = " ".join(parser.format_help().split())
    assert "cache quota [env PROG_CACHE_SIZE, key cache_size; default 10G]" in text
    assert "--rule RULE" in text
    assert "--print-config" in text
    assert "$PROG_CONFIG" in text


def test_usage_errors_raise_instead_of_exiting() -> None:
    parser = ArgumentParser(prog="prog")
    SETTINGS.add_arguments(parser)
    with pytest.raises(SettingsError, match="unrecognized arguments: --bogus"):
        parser.parse_args(["--bogus"])


def test_config_file_from_flag_then_variable(tmp_path: Path) -> None:
    flag, env_file = tmp_path / "a.toml", tmp_path / "b.toml"
    assert SETTINGS.find_config_file(flag, {"PROG_CONFIG": str(env_file)}) == flag
    assert SETTINGS.find_config_file(None, {"PROG_CONFIG": str(env_file)}) == env_file
    assert SETTINGS.find_config_file(None, {"PROG_CONFIG": ""}) is None


# -- kinds ------------------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["true", "1", "yes", "on", "TRUE", " On "])
def test_true_words(text: str) -> None:
    assert kinds.parse_bool(text) is True


@pytest.mark.parametrize("text", ["false", "0", "no", "off", "No"])
def test_false_words(text: str) -> None:
    assert kinds.parse_bool(text) is False


@pytest.mark.parametrize("raw", ["maybe", "", 1, 0, None])
def test_anything_else_is_not_a_bool(raw: object) -> None:
    with pytest.raises(ValueError, match="expected true or false"):
        kinds.parse_bool(raw)


def test_toml_numbers_are_bytes_rates_and_seconds() -> None:
    assert kinds.parse_size_value(4096) == 4096
    assert kinds.parse_rate_value(1048576) == 1048576.0
    assert kinds.parse_duration_value(90) == 90.0
    assert kinds.parse_duration_value(0.25) == 0.25


@pytest.mark.parametrize(
    ("parse", "raw", "message"),
    [
        (kinds.parse_size_value, -1, "size -1 is negative"),
        (kinds.parse_size_value, True, "expected a size such as '64M', not a boolean"),
        (kinds.parse_rate_value, 0, "rate 0 must be positive"),
        (kinds.parse_rate_value, "0", "rate '0' must be positive"),
        (kinds.parse_duration_value, [1], "expected a duration such as '30s', not a list"),
        (kinds.parse_duration_value, math.inf, "duration inf is not finite"),
        (kinds.parse_int, "12x", "expected a whole number, not text"),
        (kinds.parse_int, 1.5, "expected a whole number, not a number"),
        (kinds.parse_number, "nan", "expected a finite number"),
        (kinds.parse_text, 5, "expected text, not a number"),
        (kinds.parse_port, "70000", "port 70000 is not in 0..65535"),
        (kinds.parse_path, "", "expected a path"),
        (kinds.parse_path, "~no-such-user-here/x", "cannot expand '~'"),
    ],
)
def test_bad_values_say_what_was_expected(parse: Any, raw: object, message: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse(raw)
    assert message in str(caught.value)


def test_optional_words_lift_a_limit() -> None:
    kind = kinds.optional(kinds.RATE, "unlimited", "none")
    assert kind.parse("Unlimited") is None
    assert kind.parse("none") is None
    assert kind.parse("2M") == 2 << 20
    assert kind.show(None) == "unlimited"


def test_secret_file_must_be_readable_and_long_enough(tmp_path: Path) -> None:
    good, short = tmp_path / "good", tmp_path / "short"
    good.write_text(SECRET + "\n")
    short.write_text("x")
    assert kinds.parse_secret_file(str(good)) == good
    with pytest.raises(ValueError, match="at least 16 bytes"):
        kinds.parse_secret_file(str(short))
    with pytest.raises(ValueError, match="cannot read the secret file: No such file"):
        kinds.parse_secret_file(str(tmp_path / "missing"))


@given(st.integers(min_value=0, max_value=2**62))
def test_a_shown_size_reads_back(size: int) -> None:
    assert kinds.parse_size_value(kinds.show_size(size)) == size


@given(st.integers(min_value=1, max_value=10**9).map(lambda ms: ms / 1000))
def test_a_shown_duration_reads_back(seconds: float) -> None:
    assert kinds.parse_duration_value(kinds.show_duration(seconds)) == pytest.approx(seconds)


@given(st.integers(min_value=1, max_value=2**50))
def test_a_shown_rate_reads_back(rate: int) -> None:
    assert kinds.parse_rate_value(kinds.show_rate(float(rate))) == rate
