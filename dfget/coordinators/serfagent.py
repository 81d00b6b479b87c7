"""``--serf-agent auto``: this program starts its node's Serf agent, supervises it and stops it.

The agent is Debian's (or HashiCorp's) ``serf`` binary, run as ``serf agent`` with its gossip
address (``--serf-bind``), its RPC address (``--serf-rpc``, loopback), a timing profile, a
snapshot (so that a restarted agent rejoins the members it knew and replays no old event) and,
with the cluster secret, a keyring holding the gossip key derived from the secret
(``serfwire.gossip_key``): an agent without that key can neither join nor read the gossip.
Its files live in one owner-only directory (dfdaemon's under its cache directory). Its log goes
to ``agent.log`` there. The kernel kills the agent when this process dies (``PR_SET_PDEATHSIG``),
so a crashed node leaves no agent behind to speak for it; an agent that dies is started again
(with a growing pause); ``stop`` leaves the cluster gracefully (SIGINT) and waits for the exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import logging
import os
import shutil
import signal
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Final

from dfget.coordinators.serfoptions import SerfOptions, split_host_port
from dfget.coordinators.serfrpc import SerfRpc, SerfRpcError
from dfget.coordinators.serfwire import gossip_key

log = logging.getLogger(__name__)

#: The agent must answer on its RPC address within this long of its start.
START_TIMEOUT_S: Final = 20.0
#: A graceful leave may take this long before the agent is killed.
STOP_TIMEOUT_S: Final = 8.0
MAX_RESTART_PAUSE_S: Final = 30.0
_PR_SET_PDEATHSIG: Final = 1


class SerfAgentError(Exception):
    """The agent cannot be started (no ``serf`` program, a bad address, it exits at once)."""


def default_node_name(bind: str) -> str:
    host, port = split_host_port(bind)
    base = socket.gethostname() or "node"
    return f"{base}-{port}" if host in ("0.0.0.0", "::") else f"{base}-{host}-{port}"


def _die_with_parent() -> None:
    """In the child, before exec: the kernel sends SIGKILL when the parent dies."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


class SerfAgent:
    """One supervised ``serf agent`` process."""

    def __init__(
        self,
        options: SerfOptions,
        directory: Path,
        secret: bytes | None,
        *,
        program: str = "serf",
        on_restart: Callable[[], None] | None = None,
    ) -> None:
        self.options = options
        self.directory = directory
        self.secret = secret
        self.program = program
        self.node = options.node or default_node_name(options.bind)
        self.on_restart = on_restart
        self.process: asyncio.subprocess.Process | None = None
        self._stopping = False
        self._supervisor: asyncio.Task[None] | None = None
        self.restarts = 0

    @property
    def log_path(self) -> Path:
        return self.directory / "agent.log"

    def command(self) -> list[str]:
        path = shutil.which(self.program)
        if path is None:
            raise SerfAgentError(
                f"--serf-agent auto needs the {self.program!r} program (Debian: apt-get install "
                "serf), or run an agent yourself and give its --serf-rpc"
            )
        command = [
            path, "agent",
            f"-node={self.node}",
            f"-bind={self.options.bind}",
            f"-rpc-addr={self.options.rpc}",
            f"-profile={self.options.profile}",
            f"-snapshot={self.directory / 'snapshot'}",
            "-log-level=warn",
        ]  # fmt: skip
        if self.secret is not None:
            command.append(f"-keyring-file={self.directory / 'keyring.json'}")
        return command

    def _prepare(self) -> None:
        old = os.umask(0o077)
        try:
            self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            if self.secret is not None:
                keyring = self.directory / "keyring.json"
                # Rewritten at every start: the key follows the secret (Serf adds keys
                # installed at run time to the file; the secret's key is the first, primary).
                fd = os.open(keyring, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                with os.fdopen(fd, "w") as stream:
                    json.dump([gossip_key(self.secret)], stream)
        finally:
            os.umask(old)

    async def start(self) -> None:
        """Start the agent and wait until its RPC answers; SerfAgentError otherwise."""
        command = self.command()
        self._prepare()
        await self._spawn(command)
        self._supervisor = asyncio.create_task(self._supervise(command))

    async def _spawn(self, command: list[str]) -> None:
        with self.log_path.open("ab") as log_file:
            self.process = await asyncio.create_subprocess_exec(
                *command,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log_file,
                stderr=log_file,
                preexec_fn=_die_with_parent,
            )
        host, port = split_host_port(self.options.rpc)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + START_TIMEOUT_S
        while True:
            if self.process.returncode is not None:
                raise SerfAgentError(
                    f"serf agent exited with status {self.process.returncode}: {self._tail()}"
                )
            try:
                rpc = await SerfRpc.connect(host, port, timeout_s=1.0)
            except SerfRpcError:
                if loop.time() > deadline:
                    raise SerfAgentError(
                        f"serf agent does not answer on {self.options.rpc}: {self._tail()}"
                    ) from None
                await asyncio.sleep(0.1)
                continue
            await rpc.close()
            log.info("serf agent %s started (pid %d)", self.node, self.process.pid)
            return

    def _tail(self) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        lines = [line for line in text.splitlines() if line.strip()]
        return " | ".join(lines[-3:]) or "(empty log)"

    async def _supervise(self, command: list[str]) -> None:
        pause_s = 1.0
        while not self._stopping:
            assert self.process is not None
            status = await self.process.wait()
            if self._stopping:
                return
            log.warning("serf agent exited (status %s); starting it again in %.0fs", status,
                        pause_s)  # fmt: skip
            await asyncio.sleep(pause_s)
            pause_s = min(MAX_RESTART_PAUSE_S, pause_s * 2)
            try:
                await self._spawn(command)
            except SerfAgentError as exc:
                log.error("%s", exc)
                continue
            self.restarts += 1
            pause_s = 1.0
            if self.on_restart is not None:
                self.on_restart()

    async def stop(self) -> None:
        """Leave the cluster (SIGINT: the agent's graceful leave) and wait for the exit."""
        self._stopping = True
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
        process = self.process
        if process is None or process.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGINT)
        try:
            await asyncio.wait_for(process.wait(), STOP_TIMEOUT_S)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
