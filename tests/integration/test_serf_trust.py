"""Trust in decentralized mode: a digest list learned from gossip is believed for its source,
never for arriving first. Without the cluster secret it is a claim, checked against the origin;
with the secret only tagged payloads are taken, and an agent without the secret's gossip key
cannot join at all."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from dfget.coordinators import serfwire as wire
from dfget.coordinators.serfrpc import SerfRpc, SerfRpcError
from tests.helpers.origin_server import OriginServer, origin_process
from tests.integration.peers import random_file
from tests.integration.serfcluster import (
    GOSSIP_PORT,
    Daemon,
    daemon_cluster,
    dfget_serf,
    dfget_via,
    finish,
    loopback_net,
    rpc_call,
    serf_agent,
    sha256,
    stop,
    wait_until,
)
from tests.integration.serfforger import Forger

pytestmark = pytest.mark.integration

MIB = 1 << 20
SIZE = 8 * MIB
SECRET = "a cluster secret of more than sixteen bytes"


@pytest.fixture
def origin(tmp_path: Path) -> Iterator[tuple[OriginServer, str, str]]:
    files = tmp_path / "files"
    files.mkdir()
    digest = sha256(random_file(files / "blob.bin", SIZE))
    with origin_process(files) as server:
        yield server, server.base_url + "/files/blob.bin", digest


def counter(daemon: Daemon, family: str) -> float:
    """The sum of a metric family's samples, or of one sample (``family{label="..."}``)."""
    total = 0.0
    for line in daemon.metrics().splitlines():
        if line.startswith(family) and re.match(r"[{\s]", line[len(family) :] or " "):
            total += float(line.rsplit(" ", 1)[1])
    return total


def join(rpc: str, address: str) -> int:
    async def go(client: SerfRpc) -> int:
        return await client.join([address])

    return int(rpc_call(rpc, go))


def download_through(daemons: list[Daemon], url: str, root: Path, digest: str) -> None:
    first = dfget_via(daemons[0], url, root / "first.bin")
    finish(first)  # the task is known; the forger has made its claim
    rest = [dfget_via(d, url, root / f"copy-{d.name}.bin") for d in daemons[1:]]
    for download in rest:
        finish(download)
    for path in [root / "first.bin", *(root / f"copy-{d.name}.bin" for d in daemons[1:])]:
        assert sha256(path) == digest, path.name


def test_without_a_secret_forged_digests_from_gossip_are_refuted_by_the_origin(
    tmp_path: Path, origin: tuple[OriginServer, str, str]
) -> None:
    """Plain dfgets (their own agents, no secret) and a member that claims every piece and
    answers every digest query with forged digests: the claims are checked against the
    origin, refuted, and the file comes from the origin instead; nothing forged is written."""
    _, url, digest = origin
    net = loopback_net()
    with ExitStack() as stack:
        agents = [
            stack.enter_context(serf_agent(tmp_path / "agents", name, f"{net}.{i}"))
            for i, name in ((1, "g1"), (2, "g2"), (3, "g3"), (9, "0-forger"))
        ]
        for agent in agents[1:]:
            assert join(agent.rpc, agents[0].bind) == 1
        forger = stack.enter_context(Forger(agents[3].rpc, "0-forger"))
        seed = dfget_serf(agents[0], url, tmp_path / "seed.bin", "--seed-time", "10m")
        try:
            wait_until(lambda: (tmp_path / "seed.bin").exists(), "the first copy")
            wait_until(lambda: bool(forger.geometry), "the forger to make its claim")
            victims = [
                dfget_serf(agent, url, tmp_path / f"{agent.name}.bin", "--seed-time", "0")
                for agent in agents[1:3]
            ]
            summaries = [finish(victim) for victim in victims]
        finally:
            stop(seed)
        for path in (tmp_path / "seed.bin", tmp_path / "g2.bin", tmp_path / "g3.bin"):
            assert sha256(path) == digest, path.name
        assert forger.answered > 0, "the forged digests were never asked for: nothing tested"
        # A victim that was given the forged digests read a piece from the origin that
        # contradicts them, and took the rest from the origin.
        assert any("is not the origin's" in summary for summary in summaries), summaries


def test_with_a_secret_an_agent_without_its_key_cannot_join(tmp_path: Path) -> None:
    with ExitStack() as stack:
        daemons = daemon_cluster(stack, tmp_path, 2, secret=SECRET)
        first = _bind_of(daemons[0])
        outsider = stack.enter_context(serf_agent(tmp_path / "agents", "outsider", _next(first)))
        with pytest.raises(SerfRpcError):
            join(outsider.rpc, first)
        assert daemons[0].stats()["serf"]["members"] == {"alive": 2}
        wrong = wire.gossip_key(b"another secret, not the cluster's")
        other = stack.enter_context(
            serf_agent(tmp_path / "agents", "other-key", _next(first, 2), keyring=[wrong])
        )
        with pytest.raises(SerfRpcError):
            join(other.rpc, first)
        assert daemons[0].stats()["serf"]["members"] == {"alive": 2}


def test_with_a_secret_untagged_payloads_from_inside_the_gossip_are_dropped_and_counted(
    tmp_path: Path, origin: tuple[OriginServer, str, str]
) -> None:
    _, url, digest = origin
    with ExitStack() as stack:
        daemons = daemon_cluster(stack, tmp_path, 3, secret=SECRET)
        first = _bind_of(daemons[0])
        # An agent holding the gossip key (as a stolen keyring would) but not the secret.
        agent = stack.enter_context(
            serf_agent(
                tmp_path / "agents", "0-forger", _next(first),
                keyring=[wire.gossip_key(SECRET.encode())],
            )
        )  # fmt: skip
        assert join(agent.rpc, first) == 1
        forger = stack.enter_context(Forger(agent.rpc, "0-forger", key=b"not the secret's key"))
        download_through(daemons, url, tmp_path, digest)
        rejected = 'dragonfly_serf_events_rejected_total{reason="unauthenticated"}'
        wait_until(
            lambda: sum(counter(d, rejected) for d in daemons) > 0,
            "the forger's payloads to be dropped",
        )
        # Nothing of it was taken: no digest to refute, and it was never asked for digests
        # (its claim to hold every piece was dropped with the rest).
        assert all(counter(d, "dragonfly_serf_reports_total") == 0 for d in daemons)
        assert forger.digests_answered == 0


def _bind_of(daemon: Daemon) -> str:
    """The gossip address of a daemon of ``daemon_cluster`` (its agent's ``-bind``)."""
    import psutil

    for pid in daemon.agent_pids():
        for argument in psutil.Process(pid).cmdline():
            if argument.startswith("-bind="):
                return argument.split("=", 1)[1]
    raise AssertionError(f"no agent for {daemon.name}")


def _next(bind: str, step: int = 1) -> str:
    """Another address of the cluster's /24, past the daemons'."""
    host = bind.rsplit(":", 1)[0]
    net, _, last = host.rpartition(".")
    assert bind.endswith(f":{GOSSIP_PORT}")
    return f"{net}.{int(last) + 200 + step}"
