"""The processes of one benchmark run: origin, tracker and N clients, and the two phases.

``Swarm`` starts ``tools/origin.py``, ``dftracker serve`` and one ``bench/p2p_client.py`` per
client, each inside its own network namespace (``bench/netns.py``) or, in loopback mode, all on
127.0.0.1. It waits until every client has imported everything (``ready``), then runs a phase:
the same one-line command to every client at once (the clock starts just before the first
write), every client's ``done``, then ``stop`` to every client and their ``result`` (sha256,
bytes from peers and origin). P2P clients keep seeding until that ``stop``, which comes only
after the last one finished. Every wait is bounded by the run's deadline; ``close`` ends every
process, also on failure or Ctrl-C.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Final

import psutil
from netns import Host, exec_argv

ROOT: Final = Path(__file__).resolve().parent.parent
CLIENT_SCRIPT: Final = ROOT / "bench" / "p2p_client.py"
ORIGIN_SCRIPT: Final = ROOT / "tools" / "origin.py"
ORIGIN_PORT: Final = 8080
TRACKER_PORT: Final = 6969
PAYLOAD_NAME: Final = "payload.bin"
CPU_SAMPLE_S: Final = 1.0
#: How long processes get to exit after ``quit``/SIGTERM before SIGKILL.
EXIT_GRACE_S: Final = 5.0
#: Longest line a client may print (a result with warnings is a few KiB).
MAX_LINE_BYTES: Final = 1 << 20


class BenchError(RuntimeError):
    """The run could not be measured: a process failed to start, a client failed, time ran out."""


def _busy_and_total() -> tuple[float, float]:
    times = psutil.cpu_times()
    total = float(sum(times))
    idle = times.idle + getattr(times, "iowait", 0.0)
    return total - idle, total


class CpuSampler:
    """The whole machine's CPU use over a phase: the exact mean (from ``cpu_times`` at both
    ends) and the busiest ``CPU_SAMPLE_S`` interval. Percent of all cores."""

    def __init__(self) -> None:
        self._start = _busy_and_total()
        self._samples: list[float] = []
        self._task = asyncio.create_task(self._loop())

    async def _loop(self) -> None:
        last = self._start
        while True:
            await asyncio.sleep(CPU_SAMPLE_S)
            now = _busy_and_total()
            if now[1] > last[1]:
                self._samples.append(100.0 * (now[0] - last[0]) / (now[1] - last[1]))
            last = now

    async def stop(self) -> dict[str, float]:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        end = _busy_and_total()
        mean = 100.0 * (end[0] - self._start[0]) / max(1e-9, end[1] - self._start[1])
        return {
            "mean": round(mean, 1),
            "max_sample": round(max(self._samples, default=mean), 1),
            "cores": float(psutil.cpu_count() or 1),
        }


def _process_cpu(pids: dict[str, int]) -> dict[str, tuple[float, float]]:
    """(user, system) CPU seconds of each process so far; a process gone is left out."""
    times: dict[str, tuple[float, float]] = {}
    for name, pid in pids.items():
        try:
            cpu = psutil.Process(pid).cpu_times()
        except psutil.Error:
            continue
        times[name] = (cpu.user, cpu.system)
    return times


@dataclass
class _Process:
    name: str
    process: asyncio.subprocess.Process
    log_path: Path
    log: IO[bytes]


@dataclass
class Swarm:
    """One run's processes. ``hosts`` is None in loopback mode."""

    workdir: Path
    clients: int
    interval_s: float
    origin_budget: int
    deadline: float  # time.monotonic() after which everything is killed
    hosts: dict[str, Host] | None = None
    client_rate_bps: float | None = None  # loopback: dfget --rate and the native GET's limit
    client_upload_bps: float | None = None  # dfget's upload limit (P2P)
    client_log_level: str = "WARNING"
    #: Shaper counters (``Topology.link_counters``), read before and after each phase.
    link_counters: Callable[[], dict[str, dict[str, int]]] | None = None
    origin_url: str = ""
    tracker_url: str = ""
    _servers: list[_Process] = field(default_factory=list)
    _clients: list[_Process] = field(default_factory=list)
    _events: asyncio.Queue[tuple[int, dict[str, Any]]] = field(default_factory=asyncio.Queue)
    _readers: list[asyncio.Task[None]] = field(default_factory=list)

    # -- start --------------------------------------------------------------------------------

    def _namespace(self, role: str) -> str | None:
        return None if self.hosts is None else self.hosts[role].namespace

    def _address(self, role: str) -> str:
        return "127.0.0.1" if self.hosts is None else self.hosts[role].address

    def _remaining_s(self) -> float:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise BenchError("--max-time reached")
        return left

    async def _spawn(self, name: str, role: str, argv: list[str]) -> _Process:
        log_path = self.workdir / "logs" / f"{name}.log"
        log = log_path.open("wb")
        process = await asyncio.create_subprocess_exec(
            *exec_argv(self._namespace(role), argv),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=log,
            cwd=ROOT,
            start_new_session=True,  # Ctrl-C reaches the harness only, which ends them in order
            limit=MAX_LINE_BYTES,
        )
        return _Process(name, process, log_path, log)

    async def _start_server(self, name: str, argv: list[str]) -> str:
        server = await self._spawn(name, name, argv)
        self._servers.append(server)
        assert server.process.stdout is not None
        try:
            line = await asyncio.wait_for(
                server.process.stdout.readline(), min(30.0, self._remaining_s())
            )
        except TimeoutError:
            line = b""
        text = line.decode().strip()
        if not text.startswith("listening "):
            raise BenchError(f"the {name} did not start: {text!r}; {self._tail(server)}")
        return text.split()[1].removesuffix("/announce")

    async def start(self) -> None:
        """Origin, tracker, then every client; returns when every client is ready. They share
        a cluster secret (the environment's, or one made here), as a fleet's swarm should: the
        tracker's manifests are believed without a check against the origin."""
        (self.workdir / "logs").mkdir(exist_ok=True)
        os.environ.setdefault("DRAGONFLY_SECRET", secrets.token_urlsafe(32))
        port = "0" if self.hosts is None else str(ORIGIN_PORT)
        origin = await self._start_server(
            "origin",
            [sys.executable, str(ORIGIN_SCRIPT), str(self.workdir / "origin"),
             "--host", self._address("origin"), "--port", port],
        )  # fmt: skip
        self.origin_url = f"{origin}/files/{PAYLOAD_NAME}"
        port = "0" if self.hosts is None else str(TRACKER_PORT)
        self.tracker_url = await self._start_server(
            "tracker",
            [sys.executable, "-m", "tracker.cli", "serve", "--host", self._address("tracker"),
             "--port", port, "--interval", f"{self.interval_s:g}s",
             "--origin-budget", str(self.origin_budget)],
        )  # fmt: skip
        for index in range(self.clients):
            role = f"c{index}"
            home = self.workdir / "clients" / role
            home.mkdir(parents=True)
            argv = [sys.executable, str(CLIENT_SCRIPT), "--url", self.origin_url,
                    "--tracker", self.tracker_url, "--workdir", str(home),
                    "--peer-host", self._address(role)]  # fmt: skip
            if self.client_rate_bps:
                argv += ["--rate", f"{self.client_rate_bps:.3f}"]
            if self.client_upload_bps:
                argv += ["--upload-rate", f"{self.client_upload_bps:.3f}"]
            argv += ["--log-level", self.client_log_level]
            client = await self._spawn(role, role, argv)
            self._clients.append(client)
            self._readers.append(asyncio.create_task(self._read(index, client)))
        await self._collect({"ready"}, "start-up")

    async def _read(self, index: int, client: _Process) -> None:
        stdout = client.process.stdout
        assert stdout is not None
        while line := await stdout.readline():
            try:
                event = json.loads(line)
            except ValueError:
                event = {"event": "garbage", "line": line[:200].decode(errors="replace")}
            await self._events.put((index, event))
        await self._events.put((index, {"event": "exit"}))

    # -- phases -------------------------------------------------------------------------------

    async def _collect(self, kinds: set[str], what: str) -> dict[int, dict[str, Any]]:
        """One event of ``kinds`` from every client; a client that exits first fails the run."""
        got: dict[int, dict[str, Any]] = {}
        while len(got) < self.clients:
            try:
                index, event = await asyncio.wait_for(self._events.get(), self._remaining_s())
            except TimeoutError as exc:
                missing = sorted(set(range(self.clients)) - set(got))[:10]
                raise BenchError(
                    f"--max-time reached during {what}; waiting for {missing}"
                ) from exc
            kind = event.get("event")
            if kind in kinds and index not in got:
                got[index] = event
            elif kind in ("exit", "garbage"):
                raise BenchError(
                    f"client {index} {kind} during {what}: {self._tail(self._clients[index])}"
                )
        return got

    async def _tell_all(self, command: str) -> float:
        """Write ``command`` to every client; returns the wall-clock time just before."""
        data = f"{command}\n".encode()
        t0 = time.time()
        for client in self._clients:
            assert client.process.stdin is not None
            client.process.stdin.write(data)
        for client in self._clients:
            assert client.process.stdin is not None
            await client.process.stdin.drain()
        return t0

    async def run_phase(self, phase: str) -> dict[str, Any]:
        """Every client downloads at once (``native`` or ``p2p``); their figures, the origin's
        byte count and the CPU. A client that fails is recorded (its error and log tail) and the
        others measured; only a phase where every client failed is an error."""
        origin_before = await self.origin_stats()
        links_before = await self._links()
        pids = {p.name: p.process.pid for p in (*self._clients, *self._servers)}
        cpu_before = await asyncio.to_thread(_process_cpu, pids)
        sampler = CpuSampler()
        t0 = await self._tell_all(phase)
        done = await self._collect({"done", "error"}, f"the {phase} phase")
        wall_s = time.time() - t0
        cpu = await sampler.stop()
        cpu_after = await asyncio.to_thread(_process_cpu, pids)
        origin_after = await self.origin_stats()
        tracker = await self.tracker_stats() if phase == "p2p" else None
        links_after = await self._links()
        await self._tell_all("stop")
        results = await self._collect({"result"}, f"the end of the {phase} phase")
        failed = {i: e["error"] for i, e in done.items() if e["event"] == "error"}
        if len(failed) == self.clients:
            raise BenchError(
                f"every client failed the {phase} phase; client 0: {failed[0]}; "
                f"{self._tail(self._clients[0])}"
            )
        for index in failed:
            results[index]["log_tail"] = self._tail(self._clients[index])
        return {
            "t0": t0,
            "wall_s": wall_s,
            "cpu": cpu,
            # (user, system) CPU seconds each process used from "go" to the last "done".
            "process_cpu": {
                name: (after[0] - cpu_before[name][0], after[1] - cpu_before[name][1])
                for name, after in cpu_after.items()
                if name in cpu_before
            },
            "origin_bytes": origin_after["bytes_sent"] - origin_before["bytes_sent"],
            "origin_requests": origin_after["requests"] - origin_before["requests"],
            "tracker_totals": None if tracker is None else tracker.get("totals"),
            "links": _difference(links_before, links_after),
            "clients": [results[i] for i in range(self.clients)],
        }

    # -- readings -----------------------------------------------------------------------------

    async def _links(self) -> dict[str, dict[str, int]] | None:
        if self.link_counters is None:
            return None
        return await asyncio.to_thread(self.link_counters)

    async def _get_json(self, role: str, url: str) -> dict[str, Any]:
        """GET ``url`` from inside ``role``'s namespace (the only place its address is reachable
        from), with a bare interpreter: no imports of the project."""
        code = (
            "import sys, urllib.request; "
            "print(urllib.request.urlopen(sys.argv[1], timeout=10).read().decode())"
        )
        argv = exec_argv(self._namespace(role), [sys.executable, "-I", "-c", code, url])
        process = await asyncio.create_subprocess_exec(
            *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
        out, err = await asyncio.wait_for(process.communicate(), 30)
        if process.returncode != 0:
            raise BenchError(f"GET {url} failed: {err.decode().strip()[-500:]}")
        answer: dict[str, Any] = json.loads(out)
        return answer

    async def origin_stats(self) -> dict[str, int]:
        base = self.origin_url.rsplit("/files/", 1)[0]
        stats = await self._get_json("origin", f"{base}/__stats")
        return {"bytes_sent": int(stats["bytes_sent"]), "requests": int(stats["requests"])}

    async def tracker_stats(self) -> dict[str, Any]:
        return await self._get_json("tracker", f"{self.tracker_url}/stats?peers=0")

    # -- end ----------------------------------------------------------------------------------

    @staticmethod
    def _tail(process: _Process, lines: int = 8) -> str:
        with contextlib.suppress(OSError):
            process.log.flush()
            text = process.log_path.read_text(errors="replace").strip().splitlines()
            return "log: " + " | ".join(text[-lines:]) if text else "(empty log)"
        return "(no log)"

    async def close(self) -> None:
        """``quit`` to clients, SIGTERM to the servers, SIGKILL to whatever is left."""
        everyone = self._clients + self._servers
        for client in self._clients:
            stdin = client.process.stdin
            if stdin is not None and not stdin.is_closing():
                with contextlib.suppress(OSError, RuntimeError):
                    stdin.write(b"quit\n")
                    stdin.close()
        for server in self._servers:
            if server.process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    server.process.terminate()
        waits = [asyncio.create_task(p.process.wait()) for p in everyone]
        if waits:
            await asyncio.wait(waits, timeout=EXIT_GRACE_S)
        for p in everyone:
            if p.process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    p.process.kill()
        if waits:
            await asyncio.wait(waits, timeout=EXIT_GRACE_S)
        for reader in self._readers:
            reader.cancel()
        for p in everyone:
            p.log.close()


def _difference(
    before: dict[str, dict[str, int]] | None, after: dict[str, dict[str, int]] | None
) -> dict[str, dict[str, int]] | None:
    """Counters of the phase alone, per link."""
    if before is None or after is None:
        return None
    return {
        link: {key: value - before.get(link, {}).get(key, 0) for key, value in figures.items()}
        for link, figures in after.items()
    }
