"""Running a server process for a test: started, awaited until it says ``listening ...``,
stopped (SIGTERM, then SIGKILL) with its pipes closed."""

from __future__ import annotations

import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO


@contextmanager
def listening_process(
    command: list[str], what: str
) -> Iterator[tuple[subprocess.Popen[str], str, IO[str]]]:
    """Yields the process, what follows ``listening `` on its first stdout line, and its
    stderr. stderr goes to a file, not a pipe: nobody drains a pipe while a test runs, and a
    full pipe would block a chatty server."""
    with tempfile.TemporaryFile("w+") as errors:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=errors, text=True)
        try:
            assert process.stdout is not None
            line = process.stdout.readline().strip()
            if not line.startswith("listening "):
                process.kill()
                process.communicate(timeout=10)
                errors.seek(0)
                raise AssertionError(f"{what} did not start: {line!r}\n{errors.read()}")
            yield process, line.split(" ", 1)[1], errors
        finally:
            if process.poll() is None:
                process.terminate()
            try:
                process.communicate(timeout=10)  # reaps it and closes the pipes
            except subprocess.TimeoutExpired:
                process.kill()
                process.communicate()
