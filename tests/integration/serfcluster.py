"""Helpers for decentralized-mode tests: real ``serf agent`` processes, dfdaemons and dfgets in
``--coordinator serf``, all on loopback addresses of their own (127.X.Y.N, one per node, so
that every agent can use Serf's usual port without two tests meeting)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from dfget.coordinators.serfrpc import SerfRpc
from tests.conftest import require_program

PYTHON = sys.executable
GOSSIP_PORT = 7946
START_TIMEOUT_S = 60.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def loopback_net() -> str:
    """A /24 of 127/8 for one test: ``127.X.Y``."""
    return f"127.{random.randint(64, 250)}.{random.randint(1, 250)}"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def wait_until(predicate: Callable[[], bool], what: str, timeout_s: float = 90.0) -> None:
    """Poll until ``predicate`` holds; a failure names what was awaited (a hang guard, not a
    timing assertion)."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"still waiting for {what} after {timeout_s:.0f}s")
        time.sleep(0.2)


def rpc_call(rpc: str, coroutine: Callable[[SerfRpc], Any]) -> Any:
    """One short RPC session with the agent at ``rpc`` (HOST:PORT)."""
    host, _, port = rpc.rpartition(":")

    async def run() -> Any:
        client = await SerfRpc.connect(host, int(port))
        try:
            return await coroutine(client)
        finally:
            await client.close()

    return asyncio.run(run())


def alive_members(rpc: str) -> set[str]:
    members = rpc_call(rpc, lambda c: c.members())
    return {m.name for m in members if m.status == "alive"}


def member_status(rpc: str) -> dict[str, str]:
    return {m.name: m.status for m in rpc_call(rpc, lambda c: c.members())}


@dataclass
class Agent:
    name: str
    process: subprocess.Popen[bytes]
    bind: str
    rpc: str
    log: IO[bytes]


@contextmanager
def serf_agent(
    directory: Path, name: str, address: str, *extra: str, keyring: list[str] | None = None
) -> Iterator[Agent]:
    """A ``serf agent`` the test runs (profile local: failures found within seconds)."""
    program = require_program("serf")
    directory.mkdir(parents=True, exist_ok=True)
    rpc = f"127.0.0.1:{free_port()}"
    bind = f"{address}:{GOSSIP_PORT}"
    command = [program, "agent", f"-node={name}", f"-bind={bind}", f"-rpc-addr={rpc}",
               "-profile=local", "-log-level=warn", *extra]  # fmt: skip
    if keyring is not None:
        path = directory / f"{name}.keyring"
        path.write_text(json.dumps(keyring))
        command.append(f"-keyring-file={path}")
    log = (directory / f"{name}.log").open("wb")
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    agent = Agent(name, process, bind, rpc, log)
    try:
        wait_until(lambda: _answers(rpc) or process.poll() is not None, f"agent {name}", 30)
        assert process.poll() is None, (directory / f"{name}.log").read_text()
        yield agent
    finally:
        stop(process)
        log.close()


def _answers(rpc: str) -> bool:
    host, _, port = rpc.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=1):
            return True
    except OSError:
        return False


def stop(process: subprocess.Popen[Any]) -> None:
    """SIGTERM, then SIGKILL; reaped, its pipes closed."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        process.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()


@dataclass
class Daemon:
    name: str
    process: subprocess.Popen[str]
    socket: Path
    stats_url: str
    errors: IO[str]

    def stats(self, query: str = "?peers=100") -> dict[str, Any]:
        with urllib.request.urlopen(self.stats_url + "/stats" + query, timeout=10) as answer:
            document: dict[str, Any] = json.loads(answer.read())
            return document

    def metrics(self) -> str:
        with urllib.request.urlopen(self.stats_url + "/metrics", timeout=10) as answer:
            return str(answer.read().decode())

    def agent_pids(self) -> list[int]:
        """The ``serf agent`` this daemon started."""
        import psutil

        return [c.pid for c in psutil.Process(self.process.pid).children() if "serf" in c.name()]


def environment(secret: str | None = None) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("DFDAEMON_", "DFGET_")) and k != "DRAGONFLY_SECRET"
    }
    env["DFGET_DAEMON_SOCKET"] = ""
    if secret is not None:
        env["DRAGONFLY_SECRET"] = secret
    return env


@contextmanager
def dfdaemon(
    root: Path, name: str, address: str, *args: str, secret: str | None = None
) -> Iterator[Daemon]:
    """dfdaemon in decentralized mode with its own agent (``--serf-agent auto``) on
    ``address``, its /stats on a free port."""
    require_program("serf")
    socket_path = root / f"{name}.sock"
    command = [
        PYTHON, "-m", "proxy.cli", "--proxy-port", "0", "--socket", str(socket_path),
        "--cache-dir", str(root / f"{name}-cache"), "--coordinator", "serf",
        "--serf-agent", "auto", "--serf-bind", f"{address}:{GOSSIP_PORT}",
        "--serf-rpc", f"127.0.0.1:{free_port()}", "--serf-node", name,
        "--serf-profile", "local", "--stats-port", "0", "-v", *args,
    ]  # fmt: skip
    with tempfile.TemporaryFile("w+") as errors:
        process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=errors, text=True, env=environment(secret)
        )
        try:
            assert process.stdout is not None
            line = process.stdout.readline()
            if not line.startswith("listening unix:"):
                errors.seek(0)
                raise AssertionError(f"dfdaemon {name} did not start: {line!r}\n{errors.read()}")
            yield Daemon(name, process, socket_path, line.split(" stats ")[1].strip(), errors)
        finally:
            stop(process)


def daemon_cluster(
    stack: ExitStack, root: Path, count: int, *args: str, secret: str | None = None
) -> list[Daemon]:
    """``count`` daemons on one /24 of their own, each joining the first."""
    net = loopback_net()
    first = f"{net}.1:{GOSSIP_PORT}"
    daemons = [
        stack.enter_context(
            dfdaemon(root, f"n{i}", f"{net}.{i}", "--join", first, *args, secret=secret)
        )
        for i in range(1, count + 1)
    ]
    wait_until(lambda: all(alive_count(d) == count for d in daemons), f"{count} daemons to meet")
    return daemons


def alive_count(daemon: Daemon) -> int:
    return int(daemon.stats()["serf"]["members"].get("alive", 0))


def dfget_via(daemon: Daemon, url: str, output: Path, *args: str) -> subprocess.Popen[str]:
    """dfget handing its download to ``daemon``."""
    env = environment()
    env["DFGET_DAEMON_SOCKET"] = str(daemon.socket)
    return subprocess.Popen(
        [PYTHON, "-m", "dfget.cli", url, "-O", str(output), "-q", *args],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip


def dfget_serf(
    agent: Agent, url: str, output: Path, *args: str, secret: str | None = None
) -> subprocess.Popen[str]:
    """A plain dfget (no daemon) in decentralized mode through ``agent``."""
    return subprocess.Popen(
        [PYTHON, "-m", "dfget.cli", url, "-O", str(output), "-q", "--coordinator", "serf",
         "--serf-rpc", agent.rpc, *args],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=environment(secret),
    )  # fmt: skip


def finish(process: subprocess.Popen[str], timeout_s: float = 180.0) -> str:
    """Wait for a dfget; its stderr; AssertionError with it when it failed."""
    _, err = process.communicate(timeout=timeout_s)
    assert process.returncode == 0, f"dfget exited {process.returncode}: {err}"
    return err
