"""Decentralized mode with plain dfget processes (no daemon): ten ``serf agent`` processes the
test starts, one per node, ten ``dfget URL --coordinator serf --serf-rpc ...``, one origin, no
dftracker."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from dfget.coordinators.serfrpc import SerfRpc
from tests.helpers.origin_server import OriginServer, origin_process
from tests.integration.peers import random_file
from tests.integration.serfcluster import (
    Agent,
    alive_members,
    dfget_serf,
    environment,
    finish,
    free_port,
    loopback_net,
    member_status,
    rpc_call,
    serf_agent,
    sha256,
    stop,
    wait_until,
)

pytestmark = pytest.mark.integration

MIB = 1 << 20
SIZE = 24 * MIB
NODES = 10
RECORD_HEADER_BYTES = 40


@pytest.fixture
def origin(tmp_path: Path) -> Iterator[tuple[OriginServer, str, str]]:
    files = tmp_path / "files"
    files.mkdir()
    digest = sha256(random_file(files / "blob.bin", SIZE))
    with origin_process(files) as server:
        yield server, server.base_url + "/files/blob.bin", digest


def agent_cluster(stack: ExitStack, root: Path, count: int) -> list[Agent]:
    net = loopback_net()
    agents = [
        stack.enter_context(serf_agent(root / "agents", f"g{i}", f"{net}.{i}"))
        for i in range(1, count + 1)
    ]
    first = agents[0].bind

    async def join(client: SerfRpc) -> int:
        return await client.join([first])

    for agent in agents[1:]:
        rpc_call(agent.rpc, join)
    names = {a.name for a in agents}
    wait_until(lambda: alive_members(agents[0].rpc) == names, f"{count} agents to meet")
    return agents


def complete(output: Path) -> bool:
    return output.exists()


def test_ten_plain_dfgets_over_their_own_agents_copy_exactly_and_the_origin_serves_once(
    tmp_path: Path, origin: tuple[OriginServer, str, str]
) -> None:
    server, url, digest = origin
    with ExitStack() as stack:
        agents = agent_cluster(stack, tmp_path, NODES)
        server.reset()
        outputs = [tmp_path / f"copy-{a.name}.bin" for a in agents]
        # They seed until stopped: a copy that is complete stays in the swarm for the others.
        downloads = [
            dfget_serf(a, url, out, "--seed-time", "10m")
            for a, out in zip(agents, outputs, strict=True)
        ]
        try:
            wait_until(lambda: all(map(complete, outputs)), "every copy", timeout_s=180)
        finally:
            for download in downloads:
                stop(download)
        for output in outputs:
            assert sha256(output) == digest, output.name
        sent = server.stats()["bytes_sent"]
        assert sent <= 1.1 * SIZE, f"the origin sent {sent / SIZE:.2f} copies"


def test_three_dfgets_and_their_agents_killed_mid_download_leave_the_others_to_finish(
    tmp_path: Path, origin: tuple[OriginServer, str, str]
) -> None:
    _, url, digest = origin
    with ExitStack() as stack:
        agents = agent_cluster(stack, tmp_path, NODES)
        outputs = [tmp_path / f"copy-{a.name}.bin" for a in agents]
        downloads: list[subprocess.Popen[str]] = [
            dfget_serf(a, url, out, "--seed-time", "10m", "--rate", "2M")
            for a, out in zip(agents, outputs, strict=True)
        ]
        try:
            doomed = [7, 8, 9]

            def mid_download(index: int) -> bool:
                record = outputs[index].with_name(outputs[index].name + ".dfpart.pieces")
                held = record.exists() and record.stat().st_size > RECORD_HEADER_BYTES
                return held and not outputs[index].exists()

            wait_until(lambda: all(map(mid_download, doomed)), "the three to be mid-download")
            for index in doomed:
                os.kill(downloads[index].pid, signal.SIGKILL)
                os.kill(agents[index].process.pid, signal.SIGKILL)
            doomed_names = {agents[i].name for i in doomed}
            watcher = agents[0].rpc
            wait_until(
                lambda: (
                    {n for n, s in member_status(watcher).items() if s == "failed"} == doomed_names
                ),
                "Serf to declare the three failed",
            )
            survivors = [i for i in range(NODES) if i not in doomed]
            wait_until(
                lambda: all(complete(outputs[i]) for i in survivors),
                "the survivors' copies",
                timeout_s=180,
            )
        finally:
            for download in downloads:
                stop(download)
        for index in survivors:
            assert sha256(outputs[index]) == digest, outputs[index].name


def test_plain_dfgets_start_their_own_agents_and_leave_none_behind(
    tmp_path: Path, origin: tuple[OriginServer, str, str]
) -> None:
    """``--serf-agent auto`` in dfget: each starts an agent, they meet through ``--join``, and
    the agent stops with its dfget."""
    import psutil

    _, url, digest = origin
    net = loopback_net()
    downloads, agents = [], set()
    for i in (1, 2):
        join = ["--join", f"{net}.1:7946"] if i == 2 else []
        command = [
            sys.executable, "-m", "dfget.cli", url, "-O", str(tmp_path / f"copy-{i}.bin"), "-q",
            "--coordinator", "serf", "--serf-agent", "auto", "--serf-bind", f"{net}.{i}:7946",
            "--serf-rpc", f"127.0.0.1:{free_port()}", "--serf-node", f"auto{i}",
            "--serf-profile", "local", "--seed-time", "10s", *join,
        ]  # fmt: skip
        download = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
            env=environment(),
        )  # fmt: skip
        downloads.append(download)
        # The second joins the first's agent: it must be there.
        with contextlib.suppress(psutil.NoSuchProcess):
            wait_until(
                lambda d=download: bool(_agents_of(d.pid)) or d.poll() is not None, "an agent"
            )
            agents.update(_agents_of(download.pid))
    summaries = [finish(download) for download in downloads]
    for i in (1, 2):
        assert sha256(tmp_path / f"copy-{i}.bin") == digest
    assert "from peers 0 B" not in summaries[1], summaries  # the second had the first's pieces
    assert agents and not any(psutil.pid_exists(pid) for pid in agents)


def _agents_of(pid: int) -> list[int]:
    import psutil

    return [c.pid for c in psutil.Process(pid).children() if "serf" in c.name()]
