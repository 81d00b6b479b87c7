"""TaskShell (``open_task``) and WireConfig: whole downloads between in-process tasks over real
loopback sockets.

Seeds and leechers are real task shells (``peerwire.shell``, each running its ``TaskCore``)
with real stores; hostile or scripted remotes are ``RawPeer``s speaking the wire by hand
(helpers in ``test_connection.py``). No mocks, no timing assertions: every wait is on a
condition under a cap, so a bug fails instead of hanging. The core's decisions are unit-tested
without sockets in ``test_core*.py``; here they are checked end to end.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import socket
import threading
from collections.abc import Iterator
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from peerwire import commands as cmd
from peerwire import messages as m
from peerwire.auth import auth_proof
from peerwire.coordination import AnnounceAnswer, PeerAddress
from peerwire.layout import STANDARD_BLOCK_BYTES, Block, choose_piece_length
from peerwire.manifest import build_manifest
from peerwire.ratelimit import TokenBucket
from peerwire.storage import PieceStore
from peerwire.wireconfig import WireConfig
from tests.peerwire.test_connection import (
    CONFIG,
    FAST_AND_LARGE,
    FILE_BYTES,
    LARGE_ONLY,
    NUM_PIECES,
    PIECE_BYTES,
    RAW_BLOCK_BYTES,
    SHORT_WAIT_S,
    Content,
    Node,
    RawPeer,
    Swarm,
    full_bitfield,
    make_content,
    make_executor,
    run,
    serve,
    wait_done,
    wait_until,
)


@pytest.fixture
def content(tmp_path: Path) -> Content:
    return make_content(tmp_path)


@pytest.fixture
def executor() -> Iterator[ThreadPoolExecutor]:
    with make_executor() as pool:
        yield pool


def received(node: Node) -> int:
    """Every payload byte that arrived at ``node``, used or not."""
    return sum(node.stats.bytes_from_peer.values())


def assert_exact_copy(node: Node, content: Content) -> None:
    assert node.store.finalize().read_bytes() == content.data


# -- WireConfig --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "field",
    [
        "block_bytes",
        "pipeline_depth",
        "request_timeout_s",
        "handshake_timeout_s",
        "keepalive_interval_s",
        "idle_timeout_s",
        "tick_s",
        "dial_peers",
        "max_peers",
        "max_unchoked",
        "rotate_s",
        "pipeline_target_s",
        "min_pipeline_depth",
        "ban_after_bad_pieces",
    ],
)
def test_wire_config_rejects_a_non_positive_setting(field: str) -> None:
    zero: dict[str, Any] = {field: 0}
    with pytest.raises(ValueError, match=field):
        WireConfig(**zero)


# -- downloads ---------------------------------------------------------------------------------


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_leecher_downloads_the_exact_bytes_from_a_seed_and_the_stats_add_up(
    content: Content, executor: Executor, loop: str
) -> None:
    async def main() -> None:
        async with Swarm(content, executor) as swarm:
            seed = await swarm.seed()
            leech = await swarm.leecher("leech")
            await leech.connect(seed)
            await leech.complete()
            assert_exact_copy(leech, content)
            stats = leech.stats
            assert stats.downloaded_bytes == FILE_BYTES
            assert stats.wasted_bytes == 0
            assert stats.bytes_from_peer == {str(seed.shell.peer_id): FILE_BYTES}
            assert (stats.pieces_verified, stats.pieces_failed) == (NUM_PIECES, 0)
            assert sorted(leech.verified) == list(range(NUM_PIECES))
            assert [type(c) for c in leech.commands][-1] is cmd.TaskDone  # once, at the end
            assert sum(isinstance(c, cmd.TaskDone) for c in leech.commands) == 1
            assert stats.uploaded_bytes == 0
            assert seed.stats.uploaded_bytes == FILE_BYTES
            assert seed.stats.downloaded_bytes == 0

    run(main, loop=loop)


def test_leecher_with_some_pieces_fetches_only_the_rest(
    content: Content, executor: Executor
) -> None:
    async def main() -> None:
        async with Swarm(content, executor) as swarm:
            seed = await swarm.seed()
            leech = await swarm.leecher("leech", pieces=range(0, NUM_PIECES, 3))
            await leech.connect(seed)
            await leech.complete()
            assert_exact_copy(leech, content)
            missing = [i for i in range(NUM_PIECES) if i % 3]
            assert sorted(leech.verified) == missing
            assert leech.stats.downloaded_bytes == len(missing) * PIECE_BYTES
            assert seed.stats.uploaded_bytes == len(missing) * PIECE_BYTES

    run(main)


def test_a_leecher_serves_what_it_has_to_the_next_in_a_chain(
    content: Content, executor: Executor
) -> None:
    async def main() -> None:
        async with Swarm(content, executor) as swarm:
            seed = await swarm.seed()
            chain = [await swarm.leecher(f"l{i}", listen=True) for i in range(3)]
            await chain[0].connect(seed)
            for previous, node in itertools.pairwise(chain):
                await node.connect(previous)  # only to the one before it
            for node in chain:
                await node.complete()
                assert_exact_copy(node, content)
            for previous, node in itertools.pairwise(chain):
                by_peer = node.stats.bytes_from_peer
                assert by_peer == {str(previous.shell.peer_id): FILE_BYTES}
                assert previous.stats.uploaded_bytes == FILE_BYTES

    run(main)


def test_several_leechers_complete_from_a_seed_and_each_other(
    content: Content, executor: Executor
) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        async with Swarm(content, executor) as swarm:
            # A slow seed, so the leechers have reason to trade.
            seed = await swarm.seed(upload_bucket=TokenBucket(16 * 2**20, clock=loop.time))
            leechers: list[Node] = []
            for i in range(4):
                node = await swarm.leecher(f"l{i}", listen=True)
                await node.connect(seed)
                for other in leechers:
                    await node.connect(other)
                leechers.append(node)
            for node in leechers:
                await node.complete()
                assert_exact_copy(node, content)
            for node in leechers:
                stats = node.stats
                assert stats.pieces_failed == 0
                assert stats.downloaded_bytes == FILE_BYTES
                assert received(node) == stats.downloaded_bytes + stats.wasted_bytes
            everyone = [seed, *leechers]
            # Every byte received was sent by someone (some sent bytes may still be in flight).
            assert sum(n.stats.uploaded_bytes for n in everyone) >= sum(
                received(n) for n in leechers
            )
            assert seed.stats.uploaded_bytes >= FILE_BYTES

    run(main)


def test_leecher_with_a_download_limit_completes(content: Content, executor: Executor) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        async with Swarm(content, executor) as swarm:
            seed = await swarm.seed()
            bucket = TokenBucket(32 * 2**20, clock=loop.time)
            leech = await swarm.leecher("leech", download_bucket=bucket)
            await leech.connect(seed)
            await leech.complete()
            assert_exact_copy(leech, content)
            assert leech.stats.downloaded_bytes == FILE_BYTES

    run(main)


def test_seed_with_an_upload_limit_serves_a_complete_copy(
    content: Content, executor: Executor
) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        async with Swarm(content, executor) as swarm:
            seed = await swarm.seed(upload_bucket=TokenBucket(32 * 2**20, clock=loop.time))
            leech = await swarm.leecher("leech")
            await leech.connect(seed)
            await leech.complete()
            assert_exact_copy(leech, content)
            assert seed.stats.uploaded_bytes == FILE_BYTES

    run(main)


def test_blocks_smaller_than_the_decoder_buffer_are_not_wasted(
    content: Content, executor: Executor
) -> None:
    async def main() -> None:
        async with Swarm(content, executor) as swarm:
            seed = await swarm.seed()
            config = replace(CONFIG, block_bytes=STANDARD_BLOCK_BYTES)  # what stock clients use
            leech = await swarm.leecher("leech", config=config)
            await leech.connect(seed)
            await leech.complete(timeout_s=SHORT_WAIT_S)
            assert leech.stats.wasted_bytes == 0

    run(main)


def test_small_file_with_default_piece_length_and_wire_config_completes(
    tmp_path: Path, executor: Executor
) -> None:
    data = random.Random(2).randbytes(2 * 2**20)
    path = tmp_path / "small.bin"
    path.write_bytes(data)
    manifest = build_manifest(path, choose_piece_length(len(data)))
    small = Content(path, data, manifest, tmp_path)

    async def main() -> None:
        async with Swarm(small, executor) as swarm:
            seed = await swarm.seed(config=WireConfig())
            leech = await swarm.leecher("leech", config=WireConfig())
            await leech.connect(seed)
            await leech.complete(timeout_s=SHORT_WAIT_S)
            assert leech.store.finalize().read_bytes() == data

    run(main)


# -- keep-alive and idle connections -----------------------------------------------------------


def test_silent_connection_receives_keepalives(content: Content, executor: Executor) -> None:
    async def main() -> None:
        async with Swarm(content, executor) as swarm:
            seed = await swarm.seed(config=replace(CONFIG, keepalive_interval_s=0.1))
            raw = await swarm.raw(seed.address)
            await raw.greet(content.task_id)
            await raw.expect(m.HaveAll)
            for _ in range(2):
                await raw.expect(m.KeepAlive, skip=())
            assert seed.peer_count == 1

    run(main)


def test_remote_that_sends_nothing_is_closed_after_the_idle_timeout(
    content: Content, executor: Executor
) -> None:
    async def main() -> None:
        async with Swarm(content, executor) as swarm:
            seed = await swarm.seed(config=replace(CONFIG, idle_timeout_s=0.3))
            raw = await swarm.raw(seed.address)
            await raw.greet(content.task_id)
            await raw.expect(m.HaveAll)
            assert await raw.closed() == []
            await wait_until(lambda: seed.peer_count == 0, "the idle peer to be dropped")

    run(main)


def test_remote_sending_keepalives_is_not_idle_even_past_the_idle_timeout(
    content: Content, executor: Executor
) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        async with Swarm(content, executor) as swarm:
            config = replace(CONFIG, idle_timeout_s=0.8)
            seed = await swarm.seed(config=config)
            raw = await swarm.raw(seed.address)
            await raw.greet(content.task_id)
            await raw.expect(m.HaveAll)
            until_s = loop.time() + 1.5 * config.idle_timeout_s
            while loop.time() < until_s:
                raw.send(m.KeepAlive())
                await asyncio.sleep(0.05)
            raw.send(m.Interested())
            await raw.expect(m.Unchoke)
            assert seed.peer_count == 1

    run(main)


# -- corrupt pieces, strikes and bans ----------------------------------------------------------


def test_corrupt_piece_bans_its_only_sender_and_the_download_completes_elsewhere(
    content: Content, executor: Executor
) -> None:
    async def main() -> None:
        async with Swarm(content, executor) as swarm:
            config = replace(CONFIG, ban_after_bad_pieces=1)
            leech = await swarm.leecher("leech", config=config)
            server = await swarm.raw_server()
            conn = await leech.shell.connect(*server.address)
            liar = await server.accept()
            await asyncio.wait_for(serve(liar, content, corrupt=lambda _: True), 10)
            stats = leech.stats
            assert stats.peers_banned == [str(liar.peer_id)]
            assert (await wait_done(conn)).startswith("banned: sent 1 corrupt pieces")
            assert stats.pieces_failed >= 1
            assert stats.pieces_verified == 0
            assert leech.peer_count == 0
            # The banned peer is refused when met again.
            again = await leech.shell.connect(*server.address)
            liar_again = await server.accept()
            liar_again.peer_id = liar.peer_id
            await liar_again.expect(m.Handshake)
            liar_again.handshake(content.task_id)
            assert await wait_done(again) == "refused by the task"
            # An honest peer supplies everything.
            seed = await swarm.seed()
            await leech.connect(seed)
            await leech.complete()
            assert_exact_copy(leech, content)
            assert stats.pieces_verified == NUM_PIECES

    run(main)


def test_blocks_of_a_banned_peer_are_dropped_from_unfinished_pieces(
    content: Content, executor: Executor
) -> None:
    async def main() -> None:
        async with Swarm(content, executor) as swarm:
            config = replace(CONFIG, ban_after_bad_pieces=1, min_pipeline_depth=3)
            leech = await swarm.leecher("leech", config=config)
            server = await swarm.raw_server()
            conn = await leech.shell.connect(*server.address)
            liar = await server.accept()
            await liar.expect(m.Handshake)
            liar.handshake(content.task_id)
            liar.send(m.HaveAll())
            await liar.expect(m.Interested, skip=(m.HaveNone,))
            liar.send(m.Unchoke())
            # Requests come piece by piece: both blocks of X, then the first block of Y.
            x0, x1, y0 = [await liar.expect(m.Request) for _ in range(3)]
            assert x0.index == x1.index != y0.index
            for request in (y0, x0, x1):  # half of Y, then all of X, all zeros
                liar.send(m.Piece(request.index, request.begin, bytes(request.length)))
            assert (await wait_done(conn)).startswith("banned")
            stats = leech.stats
            assert stats.pieces_failed == 1  # X
            seed = await swarm.seed()
            await leech.connect(seed)
            await leech.complete()
            assert_exact_copy(leech, content)
            assert stats.pieces_failed == 1  # Y was completed from the seed alone
            assert stats.bytes_from_peer[str(seed.shell.peer_id)] == FILE_BYTES

    run(main)


def test_one_corrupt_piece_is_a_strike_not_a_ban(content: Content, executor: Executor) -> None:
    async def main() -> None:
        async with Swarm(content, executor) as swarm:
            leech = await swarm.leecher("leech", config=replace(CONFIG, ban_after_bad_pieces=2))
            server = await swarm.raw_server()
            await leech.shell.connect(*server.address)
            sometimes_wrong = await server.accept()
            first: list[int] = []
            corrupted: set[tuple[int, int]] = set()

            def corrupt(request: m.Request) -> bool:
                """Every block of the first piece asked for, the first time only."""
                first[:] = first or [request.index]
                if request.index != first[0] or (request.index, request.begin) in corrupted:
                    return False
                corrupted.add((request.index, request.begin))
                return True

            serving = asyncio.ensure_future(serve(sometimes_wrong, content, corrupt=corrupt))
            await leech.complete()
            assert_exact_copy(leech, content)
            stats = leech.stats
            assert (stats.pieces_failed, stats.peers_banned) == (1, [])
            assert stats.downloaded_bytes == FILE_BYTES + PIECE_BYTES  # that piece came twice
            assert leech.peer_count == 1
            await sometimes_wrong.close()
            await asyncio.wait_for(serving, 10)

    run(main)


def test_pieces_failing_after_a_ban_do_not_ban_again(content: Content, executor: Executor) -> None:
    """Several corrupt pieces from one peer wait for verification; the first failure bans."""
    with make_executor(max_workers=1) as single:
        gate = threading.Event()
        single.submit(gate.wait, 30)  # verifications queue behind this until released

        async def main() -> None:
            async with Swarm(content, executor) as swarm:
                config = replace(CONFIG, ban_after_bad_pieces=1)
                leech = await swarm.leecher("leech", config=config, executor=single)
                server = await swarm.raw_server()
                await leech.shell.connect(*server.address)
                liar = await server.accept()
                serving = asyncio.ensure_future(serve(liar, content, corrupt=lambda _: True))
                stats = leech.stats
                two_pieces = 2 * PIECE_BYTES
                await wait_until(
                    lambda: stats.bytes_from_peer.get(str(liar.peer_id), 0) >= two_pieces,
                    "two corrupt pieces to arrive",
                )
                gate.set()
                await wait_until(lambda: stats.pieces_failed >= 2, "two pieces to fail")
                await asyncio.wait_for(serving, 10)
                assert stats.peers_banned == [str(liar.peer_id)]

        try:
            run(main)
        finally:
            gate.set()


# -- serving requests --------------------------------------------------------------------------


def test_fast_peer_is_rejected_for_a_piece_we_do_not_have(
    content: Content, executor: Executor
) -> None:
    async def main() -> None:
        async with Swarm(content, executor) as swarm:
            partial = await swarm.leecher("partial", pieces=range(10), listen=True)
            raw = await swarm.raw(partial.address)
            await raw.greet(content.task_id)
            bitfield = await raw.expect(m.Bitfield)
            assert bitfield.payload == b"\xff\xc0\x00\x00\x00"
            missing = m.Request(20, 0, RAW_BLOCK_BYTES)
            raw.send(missing)  # still choked: BEP 6 makes the refusal explicit
            assert await raw.expect(m.RejectRequest) == m.RejectRequest(20, 0, RAW_BLOCK_BYTES)
            raw.send(m.Interested())
            await raw.expect(m.Unchoke)
            raw.send(missing, m.Request(3, 0, RAW_BLOCK_BYTES))
            assert await raw.expect(m.RejectRequest) == m.RejectRequest(20, 0, RAW_BLOCK_BYTES)
            piece = await raw.expect(m.Piece)
            assert (piece.index, piece.begin) == (3, 0)
            assert bytes(piece.data) == content.block(3, 0, RAW_BLOCK_BYTES)
            assert partial.stats.uploaded_bytes == RAW_BLOCK_BYTES

    run(main)


def test_stock_peer_requests_we_cannot_serve_are_dropped_silently(
    content: Content, executor: Executor
) -> None:
    async def main() -> None:
        async with Swarm(content, executor) as swarm:
            partial = await swarm.leecher("partial", pieces=range(10), listen=True)
            raw = await swarm.raw(partial.address)
            await raw.greet(content.task_id, LARGE_ONLY)
            await raw.expect(m.Bitfield)
            raw.send(m.Request(3, 0, RAW_BLOCK_BYTES))  # while choked: dropped (BEP 3)
            raw.send(m.Interested())
            assert await raw.receive() == m.Unchoke()
            raw.send(m.Request(20, 0, RAW_BLOCK_BYTES), m.Request(4, 0, RAW_BLOCK_BYTES))
            piece = await raw.receive()  # the next message: nothing for piece 20, nor piece 3
            assert isinstance(piece, m.Piece)
            assert (piece.index, piece.begin) == (4, 0)

    run(main)


@pytest.mark.parametrize("reserved", [FAST_AND_LARGE, LARGE_ONLY], ids=["fast", "stock"])
def test_cancel_of_a_queued_request_is_not_served(
    content: Content, executor: Executor, reserved: bytes
) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        async with Swarm(content, executor) as swarm:
            # Uploads at ~60 blocks per second: the queue is long while the cancel arrives.
            seed = await swarm.seed(upload_bucket=TokenBucket(2**20, clock=loop.time))
            raw = await swarm.raw(seed.address)
            await raw.greet(content.task_id, reserved)
            await raw.expect(m.HaveAll if reserved == FAST_AND_LARGE else m.Bitfield)
            raw.send(m.Interested())
            await raw.expect(m.Unchoke)
            blocks = [Block(i, 0, RAW_BLOCK_BYTES) for i in range(7)]
            cancelled = blocks[5]
            raw.send(
                *(m.Request(b.index, b.begin, b.length) for b in blocks[:6]),
                m.Cancel(cancelled.index, cancelled.begin, cancelled.length),
                m.Request(blocks[6].index, blocks[6].begin, blocks[6].length),
            )
            served: list[Block] = []
            rejected: list[Block] = []
            while blocks[6] not in served:  # served in order: the cancelled one would be before
                event = await raw.receive()
                if isinstance(event, m.Piece):
                    served.append(Block(event.index, event.begin, len(event.data)))
                elif isinstance(event, m.RejectRequest):
                    rejected.append(Block(event.index, event.begin, event.length))
                else:
                    assert event is not None and isinstance(event, m.KeepAlive), event
            assert served == blocks[:5] + blocks[6:]
            # BEP 6: a cancelled request is answered with a reject; without fast, nothing.
            assert rejected == ([cancelled] if reserved == FAST_AND_LARGE else [])
            assert seed.stats.uploaded_bytes == 6 * RAW_BLOCK_BYTES

    run(main)


# -- requesting: chokes, rejects, timeouts -----------------------------------------------------


def test_choke_without_fast_voids_requests_and_the_download_completes_after_unchoke(
    content: Content, executor: Executor
) -> None:
    async def main() -> None:
        async with Swarm(content, executor) as swarm:
            # A long request timeout: only the voiding can free the requests the choke drops.
            leech = await swarm.leecher("leech", config=replace(CONFIG, request_timeout_s=60.0))
            server = await swarm.raw_server()
            await leech.shell.connect(*server.address)
            raw = await server.accept()
            await raw.expect(m.Handshake)
            raw.handshake(content.task_id, LARGE_ONLY)
            raw.send(m.Bitfield(full_bitfield()))
            await raw.expect(m.Interested)
            raw.send(m.Unchoke())
            first = await raw.expect(m.Request)
            raw.send(m.Choke(), m.Unchoke())  # BEP 3: our pending requests are now void
            again: list[m.Request] = []
            while not leech.shell.completed.done():
                event = await raw.receive()
                assert event is not None
                if isinstance(event, m.Request):
                    again.append(event)
                    block = content.block(event.index, event.begin, event.length)
                    raw.send(m.Piece(event.index, event.begin, block))
            await leech.complete()
            assert_exact_copy(leech, content)
            assert first in again  # requested anew after the unchoke

    run(main)


def test_rejected_blocks_are_asked_again_once_their_cooldown_ends(
    content: Content, executor: Executor
) -> None:
    async def main() -> None:
        async with Swarm(content, executor) as swarm:
            leech = await swarm.leecher("leech", config=replace(CONFIG, request_timeout_s=0.3))
            server = await swarm.raw_server()
            await leech.shell.connect(*server.address)
            raw = await server.accept()
            await raw.expect(m.Handshake)
            raw.handshake(content.task_id, FAST_AND_LARGE)
            raw.send(m.HaveAll())
            await raw.expect(m.Interested, skip=(m.HaveNone,))
            raw.send(m.Unchoke())
            refused: set[m.Request] = set()
            while not leech.shell.completed.done():
                try:
                    event = await raw.receive(timeout_s=SHORT_WAIT_S)
                except AssertionError:
                    break  # stalled
                if event is None:
                    break
                if isinstance(event, m.Request):
                    if not refused:  # refuse the very first block once (as if choked meanwhile)
                        refused.add(event)
                        raw.send(m.RejectRequest(event.index, event.begin, event.length))
                        continue
                    block = content.block(event.index, event.begin, event.length)
                    raw.send(m.Piece(event.index, event.begin, block))
            await leech.complete(timeout_s=0.1)  # done already, unless the loop above stalled

    run(main)


def test_timed_out_requests_are_cancelled_and_fetched_from_another_peer(
    content: Content, executor: Executor
) -> None:
    async def main() -> None:
        async with Swarm(content, executor) as swarm:
            leech = await swarm.leecher("leech", config=replace(CONFIG, request_timeout_s=0.3))
            server = await swarm.raw_server()
            await leech.shell.connect(*server.address)
            mute = await server.accept()
            seen: list[m.Event] = []
            serving = asyncio.ensure_future(serve(mute, content, answer=lambda _: False, seen=seen))
            await wait_until(lambda: any(isinstance(e, m.Request) for e in seen), "a request")
            await wait_until(lambda: any(isinstance(e, m.Cancel) for e in seen), "a cancel")
            requested = {(e.index, e.begin) for e in seen if isinstance(e, m.Request)}
            cancelled = [e for e in seen if isinstance(e, m.Cancel)]
            assert all((c.index, c.begin) in requested for c in cancelled)
            seed = await swarm.seed()
            await leech.connect(seed)
            await leech.complete()
            assert_exact_copy(leech, content)
            assert leech.stats.bytes_from_peer == {str(seed.shell.peer_id): FILE_BYTES}
            await mute.close()
            await asyncio.wait_for(serving, 10)

    run(main)


def test_in_endgame_blocks_stuck_at_a_peer_that_went_silent_are_fetched_elsewhere_soon(
    content: Content, executor: Executor
) -> None:
    """A peer answers its first requests quickly, then never again. Once everything else came
    from a seed (endgame), what is stuck there is overdue for the rate it had delivered at, and
    is asked of the seed at once: not after the fixed patience or the request timeout (both a
    minute here, past the test's wait)."""

    async def main() -> None:
        async with Swarm(content, executor) as swarm:
            config = replace(CONFIG, request_timeout_s=60.0, endgame_patience_s=60.0)
            leech = await swarm.leecher("leech", config=config)
            server = await swarm.raw_server()
            await leech.shell.connect(*server.address)
            quitter = await server.accept()
            answered: list[m.Request] = []

            def answer(request: m.Request) -> bool:
                answered.append(request)
                return len(answered) <= 6

            serving = asyncio.ensure_future(serve(quitter, content, answer=answer))
            await wait_until(lambda: len(answered) > 6, "requests past the answered ones")
            seed = await swarm.seed()
            await leech.connect(seed)
            await leech.complete()
            assert_exact_copy(leech, content)
            await quitter.close()
            await asyncio.wait_for(serving, 10)

    run(main)


async def interested_raw_peer(swarm: Swarm, seed: Node, content: Content) -> RawPeer:
    """A raw peer attached to ``seed`` (handshake, its HaveAll seen) that said it is interested."""
    peer = await swarm.raw(seed.address)
    await peer.greet(content.task_id)
    await peer.expect(m.HaveAll)
    peer.send(m.Interested())
    return peer


def test_choked_interested_peer_is_unchoked_when_an_upload_slot_frees(
    content: Content, executor: Executor
) -> None:
    async def main() -> None:
        async with Swarm(content, executor) as swarm:
            seed = await swarm.seed(config=replace(CONFIG, max_unchoked=1))
            first = await interested_raw_peer(swarm, seed, content)
            await first.expect(m.Unchoke)
            second = await interested_raw_peer(swarm, seed, content)
            await wait_until(lambda: seed.peer_count == 2, "both attached")
            first.send(m.NotInterested())  # frees the only slot
            await first.expect(m.Choke)
            await second.expect(m.Unchoke, timeout_s=SHORT_WAIT_S)

    run(main)


def test_by_default_every_interested_peer_is_unchoked(content: Content, executor: Executor) -> None:
    """With the default config a seed unchokes as many interested peers as it may keep: none
    waits for a slot (a late one queued behind the others starved for seconds)."""

    async def main() -> None:
        async with Swarm(content, executor) as swarm:
            seed = await swarm.seed(config=replace(CONFIG, max_unchoked=WireConfig().max_unchoked))
            peers = [await interested_raw_peer(swarm, seed, content) for _ in range(6)]
            for peer in peers:
                await peer.expect(m.Unchoke, timeout_s=SHORT_WAIT_S)

    assert WireConfig().max_unchoked == WireConfig().max_peers
    run(main)


def test_a_waiting_peer_gets_the_slot_of_the_longest_unchoked_after_rotate_s(
    content: Content, executor: Executor
) -> None:
    async def main() -> None:
        async with Swarm(content, executor) as swarm:
            config = replace(CONFIG, max_unchoked=1, rotate_s=0.2, tick_s=0.05)
            seed = await swarm.seed(config=config)
            first = await interested_raw_peer(swarm, seed, content)
            await first.expect(m.Unchoke)
            second = await interested_raw_peer(swarm, seed, content)
            await second.expect(m.Unchoke, timeout_s=SHORT_WAIT_S)
            await first.expect(m.Choke)
            await first.expect(m.Unchoke, timeout_s=SHORT_WAIT_S)  # its turn again
            await second.expect(m.Choke)

    run(main)


# -- closing -----------------------------------------------------------------------------------


def test_close_closes_every_connection_and_cancels_the_download(
    content: Content, executor: Executor
) -> None:
    async def main() -> None:
        async with Swarm(content, executor) as swarm:
            leech = await swarm.leecher("leech", listen=True)
            server = await swarm.raw_server()
            pending = await leech.shell.connect(*server.address)  # never answered
            incoming = await swarm.raw(leech.address)
            await incoming.greet(content.task_id)
            await incoming.expect(m.HaveNone)
            await wait_until(lambda: leech.peer_count == 1, "the raw peer to attach")
            await leech.shell.close()
            assert await wait_done(pending) == "task closing"
            assert await incoming.closed() == []
            assert leech.peer_count == 0
            assert leech.shell.completed.cancelled()
            await leech.shell.close()  # idempotent
            # A closed task attaches nobody.
            late = await swarm.raw(leech.address)
            await late.greet(content.task_id)
            assert await late.closed() == []

    run(main)


def test_close_waits_for_a_verification_in_flight_before_the_store_closes(
    content: Content, executor: Executor
) -> None:
    with make_executor(max_workers=1) as single:
        gate = threading.Event()
        single.submit(gate.wait, 30)  # the verification waits behind this

        async def main() -> None:
            loop = asyncio.get_running_loop()
            async with Swarm(content, executor) as swarm:
                seed = await swarm.seed()
                leech = await swarm.leecher("leech", executor=single)
                await leech.connect(seed)
                await wait_until(lambda: received(leech) >= PIECE_BYTES, "a whole piece")
                loop.call_later(0.1, gate.set)
                await leech.shell.close()
                assert gate.is_set(), "close() returned while a piece was still being written"
                leech.store.close()  # safe now: nothing writes to it any more

        try:
            run(main)
        finally:
            gate.set()


@pytest.mark.parametrize(
    "listener_first",
    [
        True,
        False,
    ],
    ids=["listener-closed-first", "shell-closed-first"],
)
def test_close_leaves_no_pending_asyncio_tasks(
    content: Content, executor: Executor, listener_first: bool
) -> None:
    async def main() -> None:
        async with Swarm(content, executor) as swarm:
            seed = await swarm.seed()
            leech = await swarm.leecher("leech")
            await leech.connect(seed)
            await leech.complete()
            assert seed.listener is not None
            if listener_first:
                await seed.listener.close()
            await seed.shell.close()
            await leech.shell.close()
            await seed.listener.close()
            current = asyncio.current_task()
            left = [t for t in asyncio.all_tasks() if t is not current and not t.done()]
            assert left == []

    run(main)


def test_close_in_the_middle_of_a_download_leaves_no_errors(
    content: Content, executor: Executor
) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        async with Swarm(content, executor) as swarm:
            seed = await swarm.seed(upload_bucket=TokenBucket(4 * 2**20, clock=loop.time))
            leech = await swarm.leecher("leech")
            await leech.connect(seed)
            await wait_until(lambda: leech.stats.pieces_verified >= 2, "some progress")
            await leech.shell.close()
            await seed.shell.close()
            assert leech.shell.completed.cancelled()
            assert not leech.store.have.is_complete()
        # run() fails on any "Task was destroyed" / "exception never retrieved" report.

    run(main)


def test_requests_in_flight_stay_under_the_task_cap_with_many_seeds(
    content: Content, executor: Executor
) -> None:
    cap_blocks = 3
    config = replace(CONFIG, max_inflight_bytes=cap_blocks * CONFIG.block_bytes)

    async def main() -> None:
        async with Swarm(content, executor) as swarm:
            seeds = [await swarm.seed() for _ in range(4)]
            leech = await swarm.leecher("leech", config=config)
            peak = 0

            def sample() -> bool:
                nonlocal peak
                peak = max(peak, leech.shell.core.scheduler.total_inflight())
                return leech.shell.completed.done()

            for seed in seeds:
                await leech.connect(seed)
            await wait_until(sample, "the download under a small in-flight cap")
            await leech.complete()
            assert_exact_copy(leech, content)
            assert 0 < peak <= cap_blocks

    run(main)


# -- resuming ----------------------------------------------------------------------------------


def test_a_download_closed_halfway_resumes_from_its_verified_pieces(
    content: Content, executor: Executor
) -> None:
    """The shell is closed mid-download and the store with it; the same output reopened holds
    the pieces verified so far, and a new shell fetches only the rest."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        output = content.directory / "resumed.bin"
        async with Swarm(content, executor) as swarm:
            seed = await swarm.seed(upload_bucket=TokenBucket(4 * 2**20, clock=loop.time))
            first = await swarm.node(PieceStore.create(output, content.manifest), listen=False)
            await first.connect(seed)
            await wait_until(lambda: first.stats.pieces_verified >= 4, "some progress")
            await first.shell.close()
            assert first.shell.completed.cancelled()
            kept = sorted(first.verified)
            first.store.close()
            store = PieceStore.create(output, content.manifest)  # resume=True by default
            assert sorted(store.have) == kept
            assert 0 < len(kept) < NUM_PIECES
            second = await swarm.node(store, listen=False)
            assert second.shell.core.have == store.have
            await second.connect(seed)
            await second.complete()
            assert_exact_copy(second, content)
            rest = [i for i in range(NUM_PIECES) if i not in kept]
            assert sorted(second.verified) == rest
            assert second.stats.downloaded_bytes == len(rest) * PIECE_BYTES

    run(main)


def test_a_complete_store_is_done_at_once_and_downloads_nothing(
    content: Content, executor: Executor
) -> None:
    async def main() -> None:
        async with Swarm(content, executor) as swarm:
            seed = await swarm.seed()
            full = await swarm.leecher("full", pieces=range(NUM_PIECES))
            assert full.shell.completed.done()
            await full.connect(seed)
            await wait_until(lambda: full.peer_count == 1, "the seed to attach")
            await asyncio.sleep(0.2)
            assert full.stats.downloaded_bytes == 0
            assert seed.stats.uploaded_bytes == 0
            assert full.verified == []
            assert_exact_copy(full, content)

    run(main)


# -- the cluster secret ------------------------------------------------------------------------

SECRET = b"a cluster secret of 32 bytes...."
OTHER_SECRET = b"another secret, as long as that."
WITH_AUTH = m.reserved_with(m.FAST_EXTENSION_BIT, m.LARGE_BLOCKS_BIT, m.AUTH_BIT)


def test_peers_sharing_the_cluster_secret_download_and_the_others_are_refused(
    content: Content, executor: Executor
) -> None:
    async def main() -> None:
        async with Swarm(content, executor) as swarm:
            seed = await swarm.seed(secret=SECRET)
            for name, secret in (("stranger", OTHER_SECRET), ("open", None)):
                outsider = await swarm.leecher(name, secret=secret)
                conn = await outsider.connect(seed)
                await wait_done(conn)
                assert outsider.peer_count == 0
                assert outsider.stats.bytes_from_peer == {}
            assert seed.peer_count == 0
            member = await swarm.leecher("member", secret=SECRET)
            await member.connect(seed)
            await member.complete()
            assert_exact_copy(member, content)
            assert seed.stats.uploaded_bytes == FILE_BYTES

    run(main)


def test_the_secret_exchange_by_hand_and_no_bitfield_before_the_proof(
    content: Content, executor: Executor
) -> None:
    async def main() -> None:
        async with Swarm(content, executor) as swarm:
            seed = await swarm.seed(secret=SECRET)
            raw = await swarm.raw(seed.address)
            theirs = await raw.greet(content.task_id, WITH_AUTH)
            assert theirs.supports(m.AUTH_BIT)
            challenge = await raw.expect(m.AuthChallenge)  # first, before any availability
            nonce = bytes(range(m.AUTH_NONCE_BYTES))
            raw.send(
                m.AuthChallenge(nonce),
                m.AuthProof(auth_proof(SECRET, content.task_id, challenge.nonce, raw.peer_id)),
            )
            proof = await raw.expect(m.AuthProof)
            assert proof.mac == auth_proof(SECRET, content.task_id, nonce, seed.shell.peer_id)
            await raw.expect(m.HaveAll)
            await wait_until(lambda: seed.peer_count == 1, "the raw peer to be admitted")
            raw.send(m.Interested())
            await raw.expect(m.Unchoke)

    run(main)


@pytest.mark.parametrize(
    "case", ["no-auth-bit", "wrong-proof", "message-before-proof"], ids=lambda c: c
)
def test_a_task_with_a_secret_refuses_a_peer_that_does_not_prove_it(
    content: Content, executor: Executor, case: str
) -> None:
    async def main() -> None:
        async with Swarm(content, executor) as swarm:
            seed = await swarm.seed(secret=SECRET)
            raw = await swarm.raw(seed.address)
            if case == "no-auth-bit":
                await raw.greet(content.task_id, FAST_AND_LARGE)
            else:
                await raw.greet(content.task_id, WITH_AUTH)
                challenge = await raw.expect(m.AuthChallenge)
                if case == "wrong-proof":
                    mac = auth_proof(OTHER_SECRET, content.task_id, challenge.nonce, raw.peer_id)
                    raw.send(m.AuthProof(mac))
                else:
                    raw.send(m.Interested())
            events = await raw.closed()
            assert not any(isinstance(e, (m.HaveAll, m.Bitfield, m.Unchoke)) for e in events)
            assert seed.peer_count == 0
            assert seed.stats.uploaded_bytes == 0

    run(main)


# -- dialling the peers an announce answer lists -----------------------------------------------


def test_the_shell_dials_the_peers_of_an_announce_answer_and_survives_a_dead_one(
    content: Content, executor: Executor
) -> None:
    async def main() -> None:
        async with Swarm(content, executor) as swarm:
            seed = await swarm.seed()
            leech = await swarm.leecher("leech")
            with socket.socket() as probe:  # a port nobody listens on
                probe.bind(("127.0.0.1", 0))
                dead = probe.getsockname()[1]
            core = leech.shell.core
            core.swarm.start()
            leech.shell.pump()
            await wait_until(
                lambda: any(isinstance(c, cmd.Announce) for c in leech.commands), "an announce"
            )
            announce = next(c for c in leech.commands if isinstance(c, cmd.Announce))
            assert announce.event == "started"
            answer = AnnounceAnswer(
                interval_s=60.0,
                min_interval_s=60.0,
                complete=1,
                incomplete=1,
                peers=(PeerAddress("127.0.0.1", dead), PeerAddress(*seed.address)),
                pieces_known=NUM_PIECES,
            )
            core.swarm.announced(answer)
            leech.shell.pump()
            assert cmd.FetchFromOrigin((), False) in leech.commands
            await leech.complete()
            assert_exact_copy(leech, content)
            assert leech.stats.bytes_from_peer == {str(seed.shell.peer_id): FILE_BYTES}
            await wait_until(lambda: core.swarm.membership.dialing == 0, "both dials to end")
            assert core.connecting_count == 0

    run(main)
