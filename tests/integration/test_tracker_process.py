"""``dftracker serve`` as a process: it starts, answers, and shuts down cleanly on signals."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.trackers import tracker_process

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_shuts_the_tracker_down_cleanly(signum: signal.Signals) -> None:
    with tracker_process() as tracker:
        assert tracker.get("/healthz") == b"ok\n"
        tracker.process.send_signal(signum)
        tracker.process.communicate(timeout=20)
        err = tracker.stderr()
        assert tracker.process.returncode == 0, err
        assert "Traceback" not in err


def test_config_file_and_environment_reach_the_tracker(tmp_path: Path) -> None:
    config = tmp_path / "tracker.toml"
    config.write_text('[tracker]\ninterval = "7s"\n')
    with tracker_process("--config", str(config)) as tracker:
        assert tracker.stats()["tracker"]["interval_s"] == 7.0


def test_bad_option_is_a_clear_usage_error() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "tracker.cli", "serve", "--interval", "soon"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2
    assert "--interval='soon': duration 'soon' is not a number" in done.stderr


def test_port_in_use_is_a_clear_error() -> None:
    with tracker_process() as tracker:
        done = subprocess.run(
            [sys.executable, "-m", "tracker.cli", "serve", "--port", str(tracker.port)],
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert done.returncode == 1
    assert "cannot listen" in done.stderr


@pytest.mark.parametrize(("host", "secret", "warned"), [
    ("0.0.0.0", False, True),
    ("0.0.0.0", True, False),
    ("127.0.0.1", False, False),
])  # fmt: skip
def test_a_tracker_beyond_loopback_without_a_secret_says_so(
    tmp_path: Path, host: str, secret: bool, warned: bool
) -> None:
    """Listening on all interfaces binds, and sends nothing anywhere: the process stops at
    once."""
    arguments = [sys.executable, "-m", "tracker.cli", "serve", "--host", host, "--port", "0"]
    if secret:
        (tmp_path / "secret").write_text("a-cluster-secret-of-some-length")
        arguments += ["--secret-file", str(tmp_path / "secret")]
    process = subprocess.Popen(arguments, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        assert process.stdout.readline().startswith("listening http://")
    finally:
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=20)
    assert ("without a cluster secret" in err) is warned, err
