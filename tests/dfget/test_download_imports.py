"""dfget's download path does not import aiohttp (its import alone cost more CPU than a small
download: about a hundred modules and two TLS contexts loading the CA bundle). A real ``dfget``
download runs in a fresh interpreter, through a real tracker and origin on 127.0.0.1, and then
reports what it imported."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.origin_server import OriginServer, origin_process
from tests.integration.trackers import Tracker, tracker_process

DATA = os.urandom(3 * 1024 * 1024 + 5)
#: aiohttp and the packages only it brings in.
AIOHTTP_FAMILY = ("aiohttp", "yarl", "aiosignal", "frozenlist", "propcache", "aiohappyeyeballs")

#: The ``dfget`` command in-process (its ``main``), as a user runs it; then what was imported.
PROBE = """
import json, sys
import dfget.cli
status = dfget.cli.main(sys.argv[1:])
from dfget import httpclient
family = {family!r}
found = sorted(m for m in sys.modules if m.split(".")[0] in family)
import proxy.upstream  # control: the same check sees aiohttp once something imports it
control = sorted(m for m in sys.modules if m.split(".")[0] in family)
print(json.dumps({{
    "status": status,
    "engine": "dfget.engine" in sys.modules,
    "found": found,
    "control": control,
    "tls_context_made": httpclient._ssl_context is not None,
}}))
"""


@pytest.fixture(scope="module")
def origin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OriginServer]:
    directory = tmp_path_factory.mktemp("origin")
    (directory / "data.bin").write_bytes(DATA)
    with origin_process(directory) as server:
        yield server


@pytest.fixture(scope="module")
def tracker() -> Iterator[Tracker]:
    with tracker_process() as running:
        yield running


def test_a_dfget_download_imports_no_aiohttp(
    origin: OriginServer, tracker: Tracker, tmp_path: Path
) -> None:
    output = tmp_path / "copy.bin"
    environment = {**os.environ, "DFGET_DAEMON_SOCKET": ""}
    command = [
        sys.executable,
        "-c",
        PROBE.format(family=AIOHTTP_FAMILY),
        f"{origin.base_url}/files/data.bin",
        "-O",
        str(output),
        "--tracker",
        tracker.base_url,
        "--seed-time",
        "0",
    ]
    done = subprocess.run(command, capture_output=True, text=True, env=environment, timeout=120)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["status"] == 0, done.stderr
    assert output.read_bytes() == DATA
    assert report["engine"]  # the download ran in this process, through the engine
    assert report["found"] == []
    assert "aiohttp" in report["control"]
    assert not report["tls_context_made"]  # plain http: no CA bundle loaded
    assert tracker.stats()["tasks"], "the download went through the tracker"


def test_dfget_help_imports_no_event_loop_display_or_engine() -> None:
    """``dfget --help`` (and a usage error) answer from argparse and the settings alone."""
    probe = (
        "import json, sys\n"
        "import dfget.cli\n"
        "status = dfget.cli.main(['--help'])\n"
        "heavy = ('asyncio', 'rich', 'dfget.engine', 'aiohttp', 'shutil', 'tomllib')\n"
        "print(json.dumps({'status': status, 'found': [m for m in heavy if m in sys.modules]}))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    lines = done.stdout.strip().splitlines()
    assert lines[0].startswith("usage: dfget")
    report = json.loads(lines[-1])
    assert report == {"status": 0, "found": []}
