"""DNS discovery (``--discover dns:NAME``) against a real DNS server the test starts: dnsmasq on
a loopback port, serving a name with several A records (as CoreDNS does for a Kubernetes
headless service), re-read when the test changes them (SIGHUP)."""

from __future__ import annotations

import asyncio
import getpass
import signal
import socket
import subprocess
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest

from dfget.coordinators.serfdiscovery import resolve
from tests.conftest import require_program
from tests.integration.serfcluster import (
    GOSSIP_PORT,
    alive_members,
    dfdaemon,
    loopback_net,
    serf_agent,
    stop,
    wait_until,
)

pytestmark = pytest.mark.integration

NAME = "serf.dragonfly.test"


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def dnsmasq(hosts: Path) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """dnsmasq answering from ``hosts`` only (no upstream, no /etc/hosts), on a free port."""
    program = require_program("dnsmasq")
    port = free_udp_port()
    command = [
        program, "--no-daemon", "--conf-file=/dev/null", "--pid-file=", f"--port={port}",
        "--listen-address=127.0.0.1", "--bind-interfaces", "--no-resolv", "--no-hosts",
        f"--addn-hosts={hosts}", f"--user={getpass.getuser()}", "--cache-size=0",
    ]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    server = f"127.0.0.1:{port}"
    try:
        wait_until(
            lambda: bool(asyncio.run(resolve(f"dns:{NAME}", server))) or process.poll() is not None,
            "dnsmasq to answer",
            30,
        )
        assert process.poll() is None, "dnsmasq exited"
        yield process, server
    finally:
        stop(process)


def records(hosts: Path, addresses: list[str]) -> None:
    hosts.write_text("".join(f"{address} {NAME}\n" for address in addresses))


def test_a_node_joins_what_the_name_lists_and_resolves_it_again_when_the_cluster_shrinks(
    tmp_path: Path,
) -> None:
    net = loopback_net()
    hosts = tmp_path / "hosts"
    listed = [f"{net}.{i}" for i in (1, 2, 3)]
    records(hosts, listed)
    with ExitStack() as stack:
        agents = [
            stack.enter_context(serf_agent(tmp_path / "agents", f"g{i}", f"{net}.{i}"))
            for i in (1, 2, 3, 4)
        ]
        dns, server = stack.enter_context(dnsmasq(hosts))
        # The resolver library, pointed at that server, sees every A record.
        assert asyncio.run(resolve(f"dns:{NAME}", server)) == [
            f"{address}:{GOSSIP_PORT}" for address in sorted(listed)
        ]
        stack.enter_context(
            dfdaemon(
                tmp_path, "n10", f"{net}.10",
                "--discover", f"dns:{NAME}", "--discover-dns", server,
            )
        )  # fmt: skip
        first = agents[0].rpc
        wait_until(
            lambda: alive_members(first) == {"g1", "g2", "g3", "n10"},
            "the node to join the three agents the name lists",
        )
        assert "g4" not in alive_members(first)

        # Two members leave; the name now lists another agent, alone until then.
        records(hosts, [f"{net}.1", f"{net}.4"])
        for agent in agents[1:3]:
            agent.process.send_signal(signal.SIGINT)  # a graceful leave
            agent.process.wait(timeout=20)
        dns.send_signal(signal.SIGHUP)  # dnsmasq reads its hosts file again
        wait_until(
            lambda: "n10" in alive_members(agents[3].rpc),
            "the node to resolve the name again and join the agent it lists now",
        )
