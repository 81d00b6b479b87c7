"""The Serf RPC client against real ``serf agent`` processes: handshake, members, tags, events
on a stream, queries and their answers, and the agent's refusals as errors."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from dfget.coordinators.serfrpc import SerfRpc, SerfRpcError
from tests.integration.serfcluster import Agent, loopback_net, serf_agent


@pytest.fixture
def agents(tmp_path: Path) -> Iterator[list[Agent]]:
    net = loopback_net()
    with ExitStack() as stack:
        yield [
            stack.enter_context(serf_agent(tmp_path, name, f"{net}.{i}"))
            for i, name in ((1, "a"), (2, "b"))
        ]


async def connect(agent: Agent) -> SerfRpc:
    host, _, port = agent.rpc.rpartition(":")
    return await SerfRpc.connect(host, int(port))


def test_members_tags_events_and_queries_over_the_rpc(agents: list[Agent]) -> None:
    a, b = agents

    async def scenario() -> None:
        first, second = await connect(a), await connect(b)
        try:
            assert await second.join([a.bind]) == 1
            assert (await first.stats())["agent"]["name"] == "a"
            _, records = await second.stream("member-update,user:df-test,query:df-ask")
            await first.tags({"dfp": "4242"})
            await first.event("df-test", b"\x00payload\xff")

            async def answer() -> list[str]:
                seen: list[str] = []
                async for record in records:
                    seen.append(record["Event"])
                    if record["Event"] == "query":
                        await second.respond(record["ID"], b"answer to " + record["Payload"])
                    if {"user", "query", "member-update"} <= set(seen):
                        return seen
                return seen

            answering = asyncio.create_task(answer())
            got = []
            while not got:  # the event and the tag reach b first, then the query is asked
                responses = await first.query("df-ask", b"q", nodes=["b"], timeout_s=2.0)
                got = [item async for item in responses]
            assert got == [("b", b"answer to q")]
            assert set(await asyncio.wait_for(answering, 30)) >= {"user", "query", "member-update"}
            members = {m.name: m for m in await first.members()}
            assert members["a"].tags == {"dfp": "4242"} and members["b"].status == "alive"
            assert members["b"].addr == b.bind.rsplit(":", 1)[0]
        finally:
            await first.close()
            await second.close()

    asyncio.run(scenario())


def test_the_agent_s_refusals_are_errors_and_the_connection_stays_usable(
    agents: list[Agent],
) -> None:
    async def scenario() -> None:
        rpc = await connect(agents[0])
        try:
            with pytest.raises(SerfRpcError):
                await rpc.join(["127.0.0.1:1"])  # nobody there: an error with a body
            with pytest.raises(SerfRpcError):
                await rpc.event("df-big", b"x" * 600)  # beyond Serf's user event limit
            with pytest.raises(SerfRpcError):
                await rpc.list_keys()  # no keyring: every node reports failure
            assert [m.name for m in await rpc.members()] == ["a"]
        finally:
            await rpc.close()
        with pytest.raises(SerfRpcError):
            await rpc.members()

    asyncio.run(scenario())


def test_no_agent_at_the_address_is_an_error() -> None:
    with pytest.raises(SerfRpcError, match="no Serf agent RPC"):
        asyncio.run(SerfRpc.connect("127.0.0.1", 1))
