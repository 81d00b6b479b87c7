"""Helpers to run real peer processes (``python -m peerwire``) on 127.0.0.1."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PYTHON = sys.executable
START_TIMEOUT_S = 60.0


def random_file(path: Path, size_bytes: int) -> Path:
    with path.open("wb") as f:
        left = size_bytes
        while left:
            chunk = min(left, 8 << 20)
            f.write(os.urandom(chunk))
            left -= chunk
    return path


@dataclass
class Seed:
    process: subprocess.Popen[str]
    host: str
    port: int

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


@contextmanager
def seed(file: Path, *args: str) -> Iterator[Seed]:
    """A seed process serving ``file``; stopped (SIGTERM, then SIGKILL) on exit."""
    process = subprocess.Popen(
        [PYTHON, "-m", "peerwire", "seed", str(file), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline().strip()
        if not line.startswith("listening "):
            process.kill()
            _, err = process.communicate(timeout=10)
            raise AssertionError(f"seed did not start: {line!r}\n{err}")
        host, _, port = line.split()[1].rpartition(":")
        yield Seed(process, host, int(port))
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()


def fetch_command(manifest: Path, output: Path, peers: list[str], *args: str) -> list[str]:
    cmd = [PYTHON, "-m", "peerwire", "fetch", "--manifest", str(manifest), "-O", str(output)]
    for peer in peers:
        cmd += ["--peer", peer]
    return [*cmd, "--json", *args]


def fetch(
    manifest: Path, output: Path, peers: list[str], *args: str, timeout_s: float = 240
) -> dict[str, Any]:
    """Run a fetch to the end; its JSON summary, with ``returncode`` and ``stderr`` added."""
    done = subprocess.run(
        fetch_command(manifest, output, peers, *args),
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )
    summary: dict[str, Any] = json.loads(done.stdout) if done.stdout.strip() else {}
    summary["returncode"] = done.returncode
    summary["stderr"] = done.stderr
    return summary


def file_digest(path: Path) -> bytes:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(8 << 20):
            digest.update(chunk)
    return digest.digest()
