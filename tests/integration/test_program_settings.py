"""The four programs' settings, through their installed commands in a clean environment.

Every program reads a setting from a flag, a variable and a file by one naming rule, in that
order of strength; a bad value from any of them is one line on stderr and exit status 2, the
same words whichever source it came from; ``--print-config`` says where each value came from.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent
SECRET = "0123456789abcdef-secret"


@dataclass(frozen=True)
class Program:
    name: str
    #: Arguments that come before any option (the subcommand, the URL).
    leading: tuple[str, ...]
    prefix: str
    #: The program's own table in the file ("" for top-level keys).
    table: str
    #: A duration setting: its name, and two good values printed as they are written.
    setting: str
    values: tuple[str, str, str]

    def run(
        self, tmp_path: Path, *args: str, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        command = BIN / self.name
        assert command.exists(), f"{command} is not installed (pip install -e .)"
        environment = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path)}
        environment.update(env or {})
        return subprocess.run(
            [str(command), *self.leading, *args],
            capture_output=True,
            text=True,
            timeout=60,
            env=environment,
            cwd=tmp_path,
            check=False,
        )

    def flag(self, name: str | None = None) -> str:
        return "--" + (name or self.setting).replace("_", "-")

    def variable(self, name: str | None = None) -> str:
        return self.prefix + (name or self.setting).upper()

    def file(self, tmp_path: Path, text: str) -> Path:
        path = tmp_path / f"{self.name}.toml"
        path.write_text(f"[{self.table}]\n{text}" if self.table else text)
        return path

    def key_label(self, key: str | None = None) -> str:
        return f"{self.table}.{key or self.setting}" if self.table else key or self.setting


PROGRAMS = [
    Program("dftracker", ("serve",), "DFTRACKER_", "tracker", "interval", ("7s", "8s", "9s")),
    Program("dfget", ("http://127.0.0.1:9/x",), "DFGET_", "", "seed_time", ("1m", "2m", "3m")),
    Program("dfdaemon", (), "DFDAEMON_", "dfdaemon", "cache_ttl", ("1h", "2h", "3h")),
    Program("dftop", (), "DFTOP_", "", "refresh", ("1s", "2s", "3s")),
]
BY_NAME = {program.name: program for program in PROGRAMS}


def one_line_error(done: subprocess.CompletedProcess[str], program: Program) -> str:
    """The error of a refused start: exit 2, nothing on stdout, one line naming the program."""
    assert done.returncode == 2, (done.returncode, done.stderr)
    assert "Traceback" not in done.stderr, done.stderr
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(f"{program.name}: "), lines[0]
    return lines[0].removeprefix(f"{program.name}: ")


def printed_config(done: subprocess.CompletedProcess[str]) -> dict[str, tuple[str, str]]:
    """``--print-config``'s lines by setting: (value, source)."""
    assert done.returncode == 0, done.stderr
    table = {}
    for line in done.stdout.splitlines():
        left, _, source = line.partition("  # ")
        name, _, value = left.strip().partition(" = ")
        table[name] = (value, source)
    return table


@pytest.mark.parametrize("program", PROGRAMS, ids=lambda p: p.name)
def test_the_same_bad_value_is_the_same_one_line_error_from_every_source(
    program: Program, tmp_path: Path
) -> None:
    by_flag = one_line_error(program.run(tmp_path, program.flag(), "banana"), program)
    by_env = one_line_error(program.run(tmp_path, env={program.variable(): "banana"}), program)
    file = program.file(tmp_path, f'{program.setting} = "banana"\n')
    by_file = one_line_error(program.run(tmp_path, "--config", str(file)), program)
    body = "='banana': duration 'banana' is not a number with an optional unit (e.g. '20M')"
    assert by_flag == program.flag() + body
    assert by_env == program.variable() + body
    assert by_file == f"config file {file}: {program.key_label()}" + body


@pytest.mark.parametrize("program", PROGRAMS, ids=lambda p: p.name)
def test_a_short_cluster_secret_is_one_line_and_exit_2(program: Program, tmp_path: Path) -> None:
    done = program.run(tmp_path, env={"DRAGONFLY_SECRET": "short"})
    assert one_line_error(done, program) == (
        "DRAGONFLY_SECRET: the cluster secret must be at least 16 bytes"
    )


@pytest.mark.parametrize("name", ["dftracker", "dfget", "dfdaemon"])
def test_an_unreadable_secret_file_is_one_line_and_exit_2(name: str, tmp_path: Path) -> None:
    program = BY_NAME[name]
    missing = tmp_path / "no-secret"
    message = one_line_error(program.run(tmp_path, "--secret-file", str(missing)), program)
    assert (
        message
        == f"--secret-file='{missing}': cannot read the secret file: No such file or directory"
    )
    short = tmp_path / "short-secret"
    short.write_text("short\n")
    message = one_line_error(program.run(tmp_path, "--secret-file", str(short)), program)
    assert message.endswith("the cluster secret must be at least 16 bytes")


@pytest.mark.parametrize("program", PROGRAMS, ids=lambda p: p.name)
@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[[[\n", "not valid TOML"),
        ("no_such_setting = 1\n", "unknown key"),
        (None, "cannot read it: No such file or directory"),
    ],
)
def test_a_bad_file_is_one_line_and_exit_2(
    program: Program, tmp_path: Path, text: str | None, message: str
) -> None:
    path = tmp_path / "missing.toml"
    if text is not None:
        path = tmp_path / "bad.toml"
        path.write_text(text)
    error = one_line_error(program.run(tmp_path, "--config", str(path)), program)
    assert error.startswith(f"config file {path}: ")
    assert message in error


@pytest.mark.parametrize("program", PROGRAMS, ids=lambda p: p.name)
def test_flags_win_over_the_environment_over_the_file(program: Program, tmp_path: Path) -> None:
    in_flag, in_env, in_file = program.values
    file = program.file(tmp_path, f'{program.setting} = "{in_file}"\n')
    config = ["--config", str(file), "--print-config"]
    env = {program.variable(): in_env}
    cases = [
        ([program.flag(), in_flag], env, (in_flag, f"flag {program.flag()}")),
        ([], env, (in_env, f"env {program.variable()}")),
        ([], {}, (in_file, f"file {file}")),
        ([], {program.variable(): ""}, (in_file, f"file {file}")),  # empty: unset
    ]
    for args, environ, expected in cases:
        assert (
            printed_config(program.run(tmp_path, *config, *args, env=environ))[program.setting]
            == expected
        )


@pytest.mark.parametrize("program", PROGRAMS, ids=lambda p: p.name)
def test_print_config_lists_every_setting_and_hides_the_secret(
    program: Program, tmp_path: Path
) -> None:
    done = program.run(tmp_path, "--print-config", env={"DRAGONFLY_SECRET": SECRET})
    table = printed_config(done)
    assert table["secret"] == ("<set>", "env DRAGONFLY_SECRET")
    assert SECRET not in done.stdout + done.stderr
    assert all(source == "default" for name, (_, source) in table.items() if name != "secret")
    help_text = program.run(tmp_path, "--help").stdout
    for name in table:
        if name != "secret":
            assert f"key {name}" in " ".join(help_text.split()), name
    assert program.run(tmp_path, "--print-config").stdout.splitlines()[-1].split()[2] == "<unset>"


@pytest.mark.parametrize(
    ("name", "env", "file", "setting", "value", "notices"),
    [
        ("dftracker", {"DFTRACKER_INTERVAL_S": "7s"}, "", "interval", "7s", 1),
        ("dftracker", {}, "[tracker]\nmax_body_bytes = 1048576\n", "max_body", "1M", 1),
        ("dfdaemon", {"DFDAEMON_CACHE_SIZE_BYTES": "20G"}, "", "cache_size", "20G", 1),
        ("dfdaemon", {}, "[proxy]\nhead_timeout_s = 5\n", "proxy_head_timeout", "5s", 1),
        ("dfdaemon", {"DFDAEMON_PROXY_HOST": "0.0.0.0"}, "", "proxy_host", "0.0.0.0", 0),
        ("dfget", {}, "headers = ['X-A: 1']\n", "header", "X-A: <hidden>", 1),
        ("dfget", {}, "back_to_source = false\n", "no_back_to_source", "true", 1),
        ("dftop", {"DFGET_TRACKER": "http://t:1"}, "", "tracker", "http://t:1", 0),
    ],
)
def test_former_names_still_work(
    name: str,
    env: dict[str, str],
    file: str,
    setting: str,
    value: str,
    notices: int,
    tmp_path: Path,
) -> None:
    program = BY_NAME[name]
    args = ["--print-config"]
    if file:
        path = tmp_path / "old.toml"
        path.write_text(file)
        args += ["--config", str(path)]
    done = program.run(tmp_path, *args, env=env)
    assert printed_config(done)[setting][0] == value
    deprecated = [line for line in done.stderr.splitlines() if "deprecated" in line]
    assert len(deprecated) == notices, done.stderr
    assert len(done.stderr.splitlines()) == notices
