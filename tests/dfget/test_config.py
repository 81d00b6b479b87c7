"""build_options: flags > environment > TOML file, every variable and key, and their errors."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest

from dfget.cli import build_parser
from dfget.config import (
    UiOptions,
    build_options,
    default_output,
    find_config_file,
    load,
    options_from,
    parse_header,
)
from dfget.options import DEFAULT_SEED_TIME_S, DownloadOptions

URL = "http://origin.example/files/model.bin"
HEX = hashlib.sha256(b"x").hexdigest()
MIB = 1024 * 1024


def options(
    flags: dict[str, Any] | None = None,
    environ: dict[str, str] | None = None,
    toml: str | None = None,
    tmp_path: Path | None = None,
) -> tuple[DownloadOptions, UiOptions]:
    config_file = None
    if toml is not None:
        assert tmp_path is not None
        config_file = tmp_path / "config.toml"
        config_file.write_text(toml)
    return build_options({"url": URL, **(flags or {})}, environ or {}, config_file)


def test_defaults_without_any_source() -> None:
    download, ui = options()
    assert download == DownloadOptions(url=URL, output=Path("model.bin"))
    assert download.seed_time_s == DEFAULT_SEED_TIME_S
    assert ui == UiOptions(quiet=False, verbose=0)


def test_flags_win_over_environment_over_file(tmp_path: Path) -> None:
    toml = 'rate = "1M"\nupload_rate = "2M"\ntag = "file"\nzone = "file-zone"\n'
    environ = {"DFGET_RATE": "10M", "DFGET_TAG": "env"}
    download, _ = options({"rate": "100M"}, environ, toml, tmp_path)
    assert download.rate_bps == 100 * MIB  # flag over environment and file
    assert download.tag == "env"  # environment over file
    assert download.upload_rate_bps == 2 * MIB  # file only
    assert download.zone == "file-zone"


def test_empty_environment_variable_is_unset(tmp_path: Path) -> None:
    download, _ = options({}, {"DFGET_TAG": ""}, 'tag = "file"\n', tmp_path)
    assert download.tag == "file"


def test_a_source_replaces_lists_rather_than_merging(tmp_path: Path) -> None:
    toml = 'header = ["A: 1", "B: 2"]\nfilter = ["sig"]\n'
    download, _ = options({"header": ["C: 3"]}, {"DFGET_FILTER": "exp"}, toml, tmp_path)
    assert download.headers == (("C", "3"),)
    assert download.filters == ("exp",)


ENV_CASES: list[tuple[str, str, str, object]] = [
    ("DFGET_TRACKER", "http://t1:6969/announce, http://t2:7000", "trackers", None),
    ("DFGET_RATE", "160mbit", "rate_bps", 20_000_000.0),
    ("DFGET_UPLOAD_RATE", "5M", "upload_rate_bps", 5.0 * MIB),
    ("DFGET_DIGEST", "sha256:" + HEX, "digest_sha256", bytes.fromhex(HEX)),
    ("DFGET_HEADER", "Authorization: Bearer t\nX-A:  b \n\n", "headers", None),
    ("DFGET_FILTER", "sig, exp,,sig", "filters", ("sig", "exp")),
    ("DFGET_TAG", "v2", "tag", "v2"),
    ("DFGET_ZONE", "rack-1", "zone", "rack-1"),
    ("DFGET_SEED_TIME", "5m", "seed_time_s", 300.0),
    ("DFGET_NO_BACK_TO_SOURCE", "1", "back_to_source", False),
    ("DFGET_TIMEOUT", "10m", "timeout_s", 600.0),
    ("DFGET_PEER_PORT", "65000", "peer_port", 65000),
]


@pytest.mark.parametrize(("variable", "text", "field", "expected"), ENV_CASES)
def test_every_environment_variable(variable: str, text: str, field: str, expected: object) -> None:
    download, _ = options({}, {variable: text})
    if field == "trackers":
        expected = ("http://t1:6969", "http://t2:7000")
    elif field == "headers":
        expected = (("Authorization", "Bearer t"), ("X-A", "b"))
    assert getattr(download, field) == expected


def test_quiet_from_environment_flag_and_file(tmp_path: Path) -> None:
    assert options({}, {"DFGET_QUIET": "yes"})[1].quiet is True
    assert options({"quiet": True}, {"DFGET_QUIET": "0"})[1].quiet is True
    assert options({}, {"DFGET_QUIET": "off"}, "quiet = true\n", tmp_path)[1].quiet is False
    assert options({}, {}, "quiet = true\n", tmp_path)[1].quiet is True


def test_no_back_to_source_flag_environment_and_file(tmp_path: Path) -> None:
    assert options({"no_back_to_source": True})[0].back_to_source is False
    assert options({}, {}, "back_to_source = false\n", tmp_path)[0].back_to_source is False
    assert options({}, {}, "no_back_to_source = true\n", tmp_path)[0].back_to_source is False
    # The environment says "no" = false, which re-enables what the file disabled.
    environ = {"DFGET_NO_BACK_TO_SOURCE": "false"}
    assert options({}, environ, "back_to_source = false\n", tmp_path)[0].back_to_source is True


def test_every_toml_key(tmp_path: Path) -> None:
    toml = f"""
tracker = ["http://t1:6969", "http://t2:6969/announce"]
rate = "20M"
upload_rate = 1048576
digest = "sha256:{HEX}"
header = ["Cookie: a=b"]
filter = "sig,exp"
tag = "t"
zone = "z"
seed_time = 0
no_back_to_source = true
timeout = "2h"
quiet = true
peer_port = 7001
"""
    download, ui = options({}, {}, toml, tmp_path)
    assert download == DownloadOptions(
        url=URL,
        output=Path("model.bin"),
        trackers=("http://t1:6969", "http://t2:6969"),
        rate_bps=20.0 * MIB,
        upload_rate_bps=1.0 * MIB,
        digest_sha256=bytes.fromhex(HEX),
        headers=(("Cookie", "a=b"),),
        filters=("sig", "exp"),
        tag="t",
        zone="z",
        seed_time_s=0.0,
        back_to_source=False,
        timeout_s=7200.0,
        peer_port=7001,
    )
    assert ui.quiet is True


def test_tracker_string_in_toml_and_repeated_flags(tmp_path: Path) -> None:
    assert options({}, {}, 'tracker = "http://t:1"\n', tmp_path)[0].trackers == ("http://t:1",)
    flags = {"tracker": ["http://a:1,http://b:2", "http://a:1/announce"]}
    assert options(flags)[0].trackers == ("http://a:1", "http://b:2")


def test_empty_tracker_flag_overrides_the_file(tmp_path: Path) -> None:
    assert options({"tracker": [""]}, {}, 'tracker = "http://t:1"\n', tmp_path)[0].trackers == ()


def test_limits_can_be_lifted_over_the_file(tmp_path: Path) -> None:
    toml = 'rate = "1M"\ntimeout = "1m"\n'
    download, _ = options({"rate": "unlimited", "timeout": "none"}, {}, toml, tmp_path)
    assert (download.rate_bps, download.timeout_s) == (None, None)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ({"tracker": ["udp://t:1"]}, r"^--tracker='udp://t:1': tracker must be an http:// URL"),
        (
            {"tracker": ["http://t:1/announce?x=1"]},
            r"^--tracker='http://t:1/announce\?x=1': .*query",
        ),
        ({"rate": "0"}, r"^--rate='0': rate '0' must be positive"),
        ({"rate": "fast"}, r"^--rate='fast': rate 'fast' is not a number"),
        ({"upload_rate": "5Q"}, r"^--upload-rate='5Q': rate '5Q' has unknown unit"),
        ({"digest": "md5:00"}, r"^--digest='md5:00': .*only sha256"),
        ({"header": ["NoColon"]}, r"^--header='NoColon': .*'Name: value'"),
        ({"seed_time": "-1s"}, r"^--seed-time='-1s': duration '-1s' is negative"),
        ({"timeout": "0"}, r"^--timeout='0': timeout must be positive"),
        ({"peer_port": "70000"}, r"^--peer-port='70000': port 70000"),
        ({"peer_port": "http"}, r"^--peer-port='http': expected a port"),
        ({"tag": "a\nb"}, r"^--tag='a\\nb': must be printable"),
        ({"zone": "z" * 300}, r"^--zone='z+\.\.\.: longer than"),
        ({"filter": [",".join(f"p{i}" for i in range(65))]}, r"^--filter='p0,.*: more than 64"),
        ({"url": "ftp://h/x"}, r"^URL='ftp://h/x': only http:// and https://"),
        ({"url": None}, "required: URL"),
        ({"rte": "1M"}, "unknown options: rte"),
    ],
)
def test_bad_flags_are_named(flags: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        options(flags)


def test_bad_environment_values_name_the_variable() -> None:
    with pytest.raises(ValueError, match=r"^DFGET_QUIET='maybe': expected true or false"):
        options({}, {"DFGET_QUIET": "maybe"})
    with pytest.raises(ValueError, match=r"^DFGET_TIMEOUT='soon': duration 'soon' is not"):
        options({}, {"DFGET_TIMEOUT": "soon"})


@pytest.mark.parametrize(
    ("flag", "variable", "key", "text"),
    [
        ("rate", "DFGET_RATE", "rate", "fast"),
        ("seed_time", "DFGET_SEED_TIME", "seed_time", "soon"),
        ("peer_port", "DFGET_PEER_PORT", "peer_port", "99999"),
        ("digest", "DFGET_DIGEST", "digest", "md5:00"),
    ],
)
def test_a_bad_value_reads_the_same_from_every_source(
    tmp_path: Path, flag: str, variable: str, key: str, text: str
) -> None:
    bodies = []
    for flags, environ, toml in [
        ({flag: text}, {}, None),
        ({}, {variable: text}, None),
        ({}, {}, f'{key} = "{text}"\n'),
    ]:
        with pytest.raises(ValueError) as caught:
            options(flags, environ, toml, tmp_path)
        _, _, body = str(caught.value).partition(f"={text!r}: ")
        assert body, str(caught.value)
        bodies.append(body)
    assert bodies[0] == bodies[1] == bodies[2]


def test_former_keys_still_work_with_a_notice(tmp_path: Path) -> None:
    file = tmp_path / "config.toml"
    file.write_text('headers = ["A: 1"]\nback_to_source = false\n')
    loaded, flags = load({"url": URL}, {}, file)
    download, _ = options_from(loaded, flags)
    assert download.headers == (("A", "1"),)
    assert download.back_to_source is False
    assert [notice.split(": ", 1)[1] for notice in loaded.notices] == [
        "key headers is deprecated, use header",
        "key back_to_source is deprecated, use no_back_to_source (the opposite)",
    ]


def test_a_secret_file_wins_over_the_variable_and_a_short_one_is_refused(tmp_path: Path) -> None:
    secret_file = tmp_path / "secret"
    secret_file.write_text("f" * 20 + "\n")
    environ = {"DRAGONFLY_SECRET": "e" * 16}
    assert options({}, environ)[0].secret == b"e" * 16
    assert options({"secret_file": str(secret_file)}, environ)[0].secret == b"f" * 20
    with pytest.raises(ValueError) as caught:
        options({}, {"DRAGONFLY_SECRET": "short"})
    assert str(caught.value) == "DRAGONFLY_SECRET: the cluster secret must be at least 16 bytes"
    with pytest.raises(ValueError, match=r"^--secret-file='/nonexistent': cannot read"):
        options({"secret_file": "/nonexistent"})


def test_unknown_toml_keys_are_all_named(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown keys 'rat', 'trackers'"):
        options({}, {}, 'rat = "1M"\ntrackers = []\ntag = "ok"\n', tmp_path)


def test_toml_syntax_error_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"config file .*config\.toml"):
        options({}, {}, "rate = \n", tmp_path)


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ("quiet = 1\n", "quiet=1: expected true or false"),
        ("peer_port = true\n", "peer_port=True: expected a port"),
        ("header = [1]\n", "header=[1]: expected headers as a string or a list"),
        ("headers = [1]\n", "headers=[1]: expected headers as a string or a list"),
        ("tag = 5\n", "tag=5: expected a string"),
        ("rate = -5\n", "rate=-5: rate -5 must be positive"),
        ("seed_time = [1]\n", "seed_time=[1]: expected a duration"),
        ("digest = 1\n", "digest=1: expected a digest"),
    ],
)
def test_toml_values_of_the_wrong_type_are_named(tmp_path: Path, toml: str, message: str) -> None:
    with pytest.raises(ValueError) as caught:
        options({}, {}, toml, tmp_path)
    assert str(caught.value).startswith(f"config file {tmp_path / 'config.toml'}: {message}")


def test_missing_config_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"config file .*missing\.toml"):
        build_options({"url": URL}, {}, tmp_path / "missing.toml")


def test_config_file_from_flag_then_environment_then_user_default(tmp_path: Path) -> None:
    flag, env_file = tmp_path / "flag.toml", tmp_path / "env.toml"
    environ = {"DFGET_CONFIG": str(env_file), "HOME": str(tmp_path)}
    assert find_config_file(flag, environ) == flag
    assert find_config_file(None, environ) == env_file
    assert find_config_file(None, {"HOME": str(tmp_path)}) is None  # default absent: no file
    default = tmp_path / ".config" / "dfget" / "config.toml"
    default.parent.mkdir(parents=True)
    default.write_text("")
    assert find_config_file(None, {"HOME": str(tmp_path)}) == default
    xdg = {"HOME": "/nonexistent", "XDG_CONFIG_HOME": str(tmp_path / ".config")}
    assert find_config_file(None, xdg) == default


@pytest.mark.parametrize(
    ("url", "name"),
    [
        ("http://h/files/model.bin", "model.bin"),
        ("http://h/files/model.bin?sig=1#x", "model.bin"),
        ("http://h/files/my%20model.bin", "my model.bin"),
        ("http://h/files/", "index.html"),
        ("http://h", "index.html"),
        ("http://h/a/..", "index.html"),
        ("http://h/a/%2E%2E", "index.html"),
        ("http://h/a/..%2Fetc%2Fpasswd", "index.html"),
    ],
)
def test_default_output_is_the_last_path_segment_in_the_current_directory(
    url: str, name: str
) -> None:
    assert default_output(url) == Path(name)
    assert options({"url": url})[0].output == Path(name)


def test_output_flag_and_output_directory(tmp_path: Path) -> None:
    assert options({"output": "out/x.bin"})[0].output == Path("out/x.bin")
    assert options({"output": str(tmp_path)})[0].output == tmp_path / "model.bin"
    assert options({"output": "new-dir/"})[0].output == Path("new-dir/model.bin")


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("Authorization: Bearer abc", ("Authorization", "Bearer abc")),
        ("X-Empty:", ("X-Empty", "")),
        ("Cookie:a=b; c=d ", ("Cookie", "a=b; c=d")),
        ("X-Colon: a:b", ("X-Colon", "a:b")),
    ],
)
def test_parse_header(text: str, parsed: tuple[str, str]) -> None:
    assert parse_header(text) == parsed


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("NoColon", "'Name: value'"),
        (": value", "not a valid HTTP field name"),
        ("Bad Name: v", "not a valid HTTP field name"),
        ("X: a\r\nInjected: 1", "CR, LF or NUL"),
        ("X\n: a", "CR, LF or NUL"),
        ("X: a\rb", "CR, LF or NUL"),
        ("Range: bytes=0-1", "set by dfget itself"),
        ("content-length: 5", "set by dfget itself"),
        ("X: " + "a" * 9000, "longer than"),
    ],
)
def test_parse_header_rejects(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_header(text)


def test_parser_namespace_is_accepted_as_flags() -> None:
    args = build_parser().parse_args(
        [URL, "--rate", "2M", "-H", "A: 1", "-H", "B: 2", "--no-back-to-source", "-vv"]
    )
    download, ui = build_options(args, {"DFGET_RATE": "1M"}, None)
    assert download.rate_bps == 2.0 * MIB
    assert download.headers == (("A", "1"), ("B", "2"))
    assert download.back_to_source is False
    assert ui == UiOptions(quiet=False, verbose=2)
