"""Helpers to run a real ``dftracker serve`` process on 127.0.0.1 and talk to it."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import IO, Any

from tests.helpers.processes import listening_process

PYTHON = sys.executable


@dataclass
class Tracker:
    process: subprocess.Popen[str]
    port: int
    errors: IO[str]

    def stderr(self) -> str:
        self.errors.seek(0)
        return self.errors.read()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def announce_url(self) -> str:
        return f"{self.base_url}/announce"

    def get(self, target: str) -> bytes:
        with urllib.request.urlopen(self.base_url + target, timeout=10) as response:
            body: bytes = response.read()
            return body

    def stats(self, **params: str) -> dict[str, Any]:
        query = "&".join(f"{k}={v}" for k, v in params.items())
        document: dict[str, Any] = json.loads(self.get("/stats" + ("?" + query if query else "")))
        return document


@contextmanager
def tracker_process(*args: str) -> Iterator[Tracker]:
    """``dftracker serve`` on a free port; SIGTERM (then SIGKILL) on exit. Its stderr goes to a
    file (``Tracker.stderr()``): a pipe nobody drains would block a chatty tracker."""
    command = [PYTHON, "-m", "tracker.cli", "serve", "--port", "0", *args]
    with listening_process(command, "tracker") as (process, url, errors):
        port = int(url.rsplit(":", 1)[1].split("/", 1)[0])
        yield Tracker(process, port, errors)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port
