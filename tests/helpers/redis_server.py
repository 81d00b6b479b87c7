"""A real ``redis-server`` for a test: on a free port of 127.0.0.1, nothing saved to disk,
stopped (SIGTERM, then SIGKILL) at the end."""

from __future__ import annotations

import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from tests.conftest import require_program


@dataclass
class RedisServer:
    port: int
    process: subprocess.Popen[bytes]
    args: list[str] = field(default_factory=list)
    password: str | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def cli(self, *args: str) -> str:
        """``redis-cli`` against this server; its output."""
        auth = ["-a", self.password, "--no-auth-warning"] if self.password else []
        done = subprocess.run(
            [require_program("redis-cli"), "-p", str(self.port), *auth, *args],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        return done.stdout.strip()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def start(self) -> None:
        """Start it (again) on the same port, empty."""
        self.process = _spawn(self.port, self.args)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _spawn(port: int, extra: list[str]) -> subprocess.Popen[bytes]:
    server = require_program("redis-server")
    directory = tempfile.mkdtemp(prefix="dfredis-")
    listen = ["--port", str(port)]
    if "--tls-cert-file" in extra:  # TLS only, on the port
        listen = ["--port", "0", "--tls-port", str(port)]
    process = subprocess.Popen(
        [
            server,
            *listen,
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            directory,
            *extra,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return process
        except OSError:
            if process.poll() is not None:
                raise AssertionError(f"redis-server exited with {process.returncode}") from None
            time.sleep(0.02)
    process.kill()
    raise AssertionError("redis-server did not start listening")


@contextmanager
def redis_server(*extra: str, password: str | None = None) -> Iterator[RedisServer]:
    """A ``redis-server`` on a free port; ``extra`` arguments as given on its command line."""
    port = free_port()
    args = list(extra)
    if password is not None:
        args += ["--requirepass", password]
    server = RedisServer(port, _spawn(port, args), args, password)
    try:
        yield server
    finally:
        server.stop()
