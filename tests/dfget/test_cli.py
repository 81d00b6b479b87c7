"""dfget's command line: arguments, exit codes, messages, progress on a terminal.

The download engine is replaced by a stand-in here, and only here: these tests check how the
CLI maps each outcome to an exit code and a message, not the download (tests/integration/).
"""

from __future__ import annotations

import asyncio
import errno
import io
import logging
import signal
from collections.abc import Callable
from pathlib import Path

import pytest
from rich.console import Console

from dfget import cli, errors
from dfget.config import UiOptions
from dfget.options import DownloadOptions, DownloadResult, ProgressReport

URL = "http://127.0.0.1:8000/data/blob.bin"
MIB = 1024 * 1024

DownloadFn = Callable[..., DownloadResult]


def finished(options: DownloadOptions) -> DownloadResult:
    return DownloadResult(
        output=options.output,
        size_bytes=4 * MIB,
        elapsed_s=2.0,
        from_peers_bytes=3 * MIB,
        from_origin_bytes=1 * MIB,
        uploaded_bytes=0,
        fell_back=False,
    )


class StandIn:
    """Records the options it was called with; raises ``error`` or returns a result."""

    def __init__(self, error: BaseException | None = None) -> None:
        self.error = error
        self.calls: list[tuple[DownloadOptions, object]] = []

    def __call__(
        self,
        options: DownloadOptions,
        *,
        on_progress: Callable[[ProgressReport], None] | None = None,
    ) -> DownloadResult:
        self.calls.append((options, on_progress))
        if on_progress is not None:
            on_progress(
                ProgressReport(4 * MIB, 2 * MIB, 2 * MIB, 0, 0, 3, 1.0 * MIB, "downloading")
            )
        if self.error is not None:
            raise self.error
        return finished(options)


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No DFGET_* variable and no per-user config file of the developer leaks into a test."""
    for name in [
        "DFGET_CONFIG",
        "DFGET_TRACKER",
        "DFGET_RATE",
        "DFGET_QUIET",
        "DFGET_TIMEOUT",
        "XDG_CONFIG_HOME",
    ]:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))


def install(monkeypatch: pytest.MonkeyPatch, error: BaseException | None = None) -> StandIn:
    stand_in = StandIn(error)
    monkeypatch.setattr(cli, "_download_sync", stand_in)
    return stand_in


@pytest.mark.parametrize(
    ("error", "code", "message"),
    [
        (errors.DigestMismatch("sha256 is ab12.., expected cd34.."), 3, "sha256 is ab12"),
        (errors.OriginError("origin answered HTTP 404 Not Found", 404), 4, "HTTP 404"),
        (errors.OriginError("origin answered HTTP 500", 500, retryable=True), 4, "HTTP 500"),
        (errors.OriginChanged("origin length changed from 10 to 12"), 4, "length changed"),
        (errors.DownloadTimeout("not complete after 10m"), 5, "not complete after 10m"),
        (errors.NoPeers("no tracker reachable and --no-back-to-source"), 6, "no tracker"),
        (errors.DownloadError("internal: engine stopped"), 1, "engine stopped"),
        (OSError(errno.ENOSPC, "No space left on device"), 1, "No space left on device"),
        (PermissionError(errno.EACCES, "Permission denied"), 1, "Permission denied"),
        (ValueError("piece length must be a power of two"), 2, "piece length"),
    ],
)
def test_errors_map_to_their_exit_codes_with_one_message_line(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    clean_env: None,
    error: BaseException,
    code: int,
    message: str,
) -> None:
    install(monkeypatch, error)
    assert cli.main([URL, "-O", "out.bin"]) == code
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("dfget: ")
    assert message in lines[0]


@pytest.mark.parametrize("interrupt", [KeyboardInterrupt(), asyncio.CancelledError()])
def test_interrupt_exits_130_and_says_how_to_resume(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    clean_env: None,
    interrupt: BaseException,
) -> None:
    install(monkeypatch, interrupt)
    assert cli.main([URL]) == errors.EXIT_INTERRUPTED == 130
    assert capsys.readouterr().err == (
        "dfget: interrupted; verified pieces kept beside the output, run the same command to "
        "resume\n"
    )


def test_sigterm_during_the_download_is_an_interrupt(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], clean_env: None
) -> None:
    def terminated(options: DownloadOptions, **_: object) -> DownloadResult:
        signal.raise_signal(signal.SIGTERM)
        pytest.fail("SIGTERM did not interrupt the download")

    monkeypatch.setattr(cli, "_download_sync", terminated)
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    assert cli.main([URL]) == 130
    assert "interrupted" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_success_prints_the_summary_line_to_stderr_only(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], clean_env: None
) -> None:
    stand_in = install(monkeypatch)
    assert cli.main([URL, "-O", "x.bin", "--tracker", "http://127.0.0.1:6969/announce"]) == 0
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == (
        "dfget: saved x.bin (4.0 MiB) in 2.0 s, 2.0 MiB/s; from peers 3.0 MiB (75%), "
        "from origin 1.0 MiB (25%), uploaded 0 B\n"
    )
    options, on_progress = stand_in.calls[0]
    assert options.trackers == ("http://127.0.0.1:6969",)
    assert options.output == Path("x.bin")
    assert on_progress is None  # stderr is not a terminal under pytest: no display


def test_arguments_reach_the_engine_as_options(
    monkeypatch: pytest.MonkeyPatch, clean_env: None, tmp_path: Path
) -> None:
    config = tmp_path / "dfget.toml"
    config.write_text('zone = "rack-1"\nrate = "1M"\n')
    monkeypatch.setenv("DFGET_RATE", "2M")
    stand_in = install(monkeypatch)
    argv = [URL, "--config", str(config), "--rate", "3M", "-H", "Authorization: Bearer t"]
    assert cli.main([*argv, "--filter", "sig", "--tag", "v1", "--timeout", "5m"]) == 0
    options = stand_in.calls[0][0]
    assert options.rate_bps == 3.0 * MIB
    assert options.zone == "rack-1"
    assert options.headers == (("Authorization", "Bearer t"),)
    assert (options.filters, options.tag, options.timeout_s) == (("sig",), "v1", 300.0)
    assert options.output == Path("blob.bin")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "required: URL"),
        ([URL, "--bogus"], "unrecognized arguments: --bogus"),
        (["ftp://h/x"], "only http:// and https://"),
        ([URL, "--rate", "fast"], "--rate='fast': rate 'fast' is not a number"),
        ([URL, "-H", "Bad"], "'Name: value'"),
        ([URL, "--digest", "md5:00"], "only sha256 is supported"),
        ([URL, "--config", "/nonexistent/dfget.toml"], "config file /nonexistent/dfget.toml"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    clean_env: None,
    argv: list[str],
    message: str,
) -> None:
    stand_in = install(monkeypatch)
    assert cli.main(argv) == errors.EXIT_USAGE == 2
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("dfget: ")
    assert message in lines[0]
    assert stand_in.calls == []


def test_help_explains_every_flag_with_an_example_and_lists_exit_codes(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert cli.main(["--help"]) == 0
    text = capsys.readouterr().out
    for flag in [
        "--output",
        "--tracker",
        "--rate",
        "--upload-rate",
        "--digest",
        "--header",
        "--filter",
        "--tag",
        "--zone",
        "--seed-time",
        "--no-back-to-source",
        "--timeout",
        "--peer-port",
        "--config",
        "--quiet",
        "--verbose",
    ]:
        assert flag in text
    assert text.count("e.g.") >= 12
    for code in (0, 1, 2, 3, 4, 5, 6, 130):
        assert f"\n  {code:<3}  " in text
    assert "DFGET_NO_BACK_TO_SOURCE" in text


def test_print_config_shows_every_setting_and_its_source(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    clean_env: None,
    tmp_path: Path,
) -> None:
    config = tmp_path / "dfget.toml"
    config.write_text('zone = "rack-1"\nrate = "1M"\n')
    monkeypatch.setenv("DFGET_RATE", "2M")
    monkeypatch.setenv("DRAGONFLY_SECRET", "x" * 16)
    stand_in = install(monkeypatch)
    assert cli.main(["--config", str(config), "--tag", "v1", "--print-config"]) == 0
    assert stand_in.calls == []
    lines = {line.split()[0]: line.split() for line in capsys.readouterr().out.splitlines()}
    assert lines["tag"][2:] == ["v1", "#", "flag", "--tag"]
    assert lines["rate"][2:] == ["2M", "#", "env", "DFGET_RATE"]
    assert lines["zone"][2:] == ["rack-1", "#", "file", str(config)]
    assert lines["seed_time"][2:] == ["1m", "#", "default"]
    assert lines["secret"][2:] == ["<set>", "#", "env", "DRAGONFLY_SECRET"]
    assert "x" * 16 not in str(lines)


def terminal() -> Console:
    return Console(file=io.StringIO(), force_terminal=True, width=100, record=True)


def test_terminal_gets_the_progress_display(monkeypatch: pytest.MonkeyPatch) -> None:
    stand_in = install(monkeypatch)
    console = terminal()
    options = DownloadOptions(url=URL, output=Path("blob.bin"))
    assert cli.run(options, UiOptions(), console) == 0
    assert stand_in.calls[0][1] is not None
    text = console.export_text()
    assert "blob.bin" in text
    assert "peers 100% / origin 0%" in text
    assert "3 peers" in text


def test_quiet_means_no_display_even_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    stand_in = install(monkeypatch)
    console = terminal()
    options = DownloadOptions(url=URL, output=Path("blob.bin"))
    assert cli.run(options, UiOptions(quiet=True), console) == 0
    assert stand_in.calls[0][1] is None
    assert console.export_text() == ""


def test_display_is_closed_when_the_download_fails(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    install(monkeypatch, errors.NoPeers("swarm stalled"))
    console = terminal()
    options = DownloadOptions(url=URL, output=Path("blob.bin"))
    assert cli.run(options, UiOptions(), console) == errors.EXIT_NO_PEERS
    assert console.file.getvalue().endswith("\x1b[?25h")  # type: ignore[attr-defined]
    assert capsys.readouterr().err == "dfget: swarm stalled\n"


@pytest.mark.parametrize(
    ("verbose", "level"),
    [(0, logging.WARNING), (1, logging.INFO), (2, logging.DEBUG), (5, logging.DEBUG)],
)
def test_verbosity_sets_the_log_level(verbose: int, level: int) -> None:
    assert cli.log_level(verbose) == level
