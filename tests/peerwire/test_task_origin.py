"""Held pieces and origin pieces: the scheduler's ``hold`` and the open-manifest side of PeerTask.

A piece is held while its digest is unknown (nothing could verify it) or while this peer
fetches it from the origin. The scheduler parts are pure, with a fake clock; the PeerTask parts
run real tasks on 127.0.0.1 with the helpers of ``test_connection.py``: a seed with the complete
file and a fetcher whose open store knows only some digests.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import threading
from collections.abc import Iterable, Iterator
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from peerwire import messages as m
from peerwire.ids import PeerId
from peerwire.layout import Block, PieceLayout
from peerwire.manifest import Manifest
from peerwire.scheduler import Scheduler
from peerwire.storage import PieceStore
from peerwire.task import TaskStats
from tests.peerwire.test_connection import (
    CONFIG,
    FILE_BYTES,
    NUM_PIECES,
    PIECE_BYTES,
    RAW_BLOCK_BYTES,
    Content,
    Node,
    Swarm,
    make_content,
    make_executor,
    run,
    serve,
    wait_done,
    wait_until,
)
from tests.peerwire.test_scheduler import BLOCK, PIECE, FakeClock, bits, deliver, join, piece_blocks

# -- Scheduler: hold and unhold ------------------------------------------------------------------


def make(
    num_pieces: int = 4,
    *,
    held: Iterable[int] = (),
    have: Iterable[int] = (),
    depth: int = 64,
) -> Scheduler[str]:
    """A scheduler with a deep pipeline: one call asks for every block a peer can give."""
    return Scheduler(
        PieceLayout(num_pieces * PIECE, PIECE),
        bits(num_pieces, list(have)),
        block_bytes=BLOCK,
        pipeline_depth=depth,
        request_timeout_s=5.0,
        clock=FakeClock(),
        rng=random.Random(0),
        random_first_pieces=0,
        held=held,
    )


def indices(blocks: list[Block]) -> set[int]:
    return {block.index for block in blocks}


def test_held_piece_is_never_requested() -> None:
    scheduler = make(held=[1])
    join(scheduler, "seed")
    assert scheduler.is_held(1)
    assert not scheduler.is_held(0)
    assert indices(scheduler.next_requests("seed")) == {0, 2, 3}
    assert scheduler.next_requests("seed") == []
    join(scheduler, "only-the-held-one", [1])
    assert scheduler.next_requests("only-the-held-one") == []


def test_unhold_makes_a_held_piece_requestable() -> None:
    scheduler = make(held=[1, 2])
    join(scheduler, "seed")
    assert indices(scheduler.next_requests("seed")) == {0, 3}
    scheduler.unhold(2)
    assert not scheduler.is_held(2)
    assert scheduler.next_requests("seed") == piece_blocks(2)
    scheduler.unhold(0)  # not held: a no-op, and piece 0 is not started a second time
    assert scheduler.next_requests("seed") == []


def test_hold_after_construction_keeps_an_unstarted_piece_back() -> None:
    scheduler = make()
    assert scheduler.hold(3) is True
    assert scheduler.hold(3) is True  # already held
    join(scheduler, "seed")
    assert indices(scheduler.next_requests("seed")) == {0, 1, 2}


def test_hold_of_a_started_or_verified_piece_is_refused() -> None:
    scheduler = make(have=[3], depth=1)
    join(scheduler, "seed")
    (first,) = scheduler.next_requests("seed")  # piece started: one block in flight
    assert scheduler.hold(first.index) is False
    assert not scheduler.is_held(first.index)
    assert scheduler.hold(3) is False
    assert not scheduler.is_held(3)


def test_constructor_ignores_held_pieces_already_had() -> None:
    scheduler = make(have=[0], held=[0, 1])
    assert not scheduler.is_held(0)
    assert scheduler.is_held(1)


def test_no_endgame_duplicates_while_a_piece_is_held() -> None:
    scheduler = make(held=[3])
    join(scheduler, "a")
    join(scheduler, "b")
    assert indices(scheduler.next_requests("a")) == {0, 1, 2}
    assert not scheduler.in_endgame  # piece 3 has no request yet: not the tail
    assert scheduler.next_requests("b") == []
    scheduler.unhold(3)
    # The held piece first; only then, every block being in flight, endgame duplicates.
    blocks = scheduler.next_requests("b")
    assert blocks[:4] == piece_blocks(3)
    assert scheduler.in_endgame
    assert indices(blocks[4:]) == {0, 1, 2}


def test_endgame_starts_once_the_held_piece_is_verified_elsewhere() -> None:
    scheduler = make(held=[3])
    join(scheduler, "a")
    join(scheduler, "b")
    assert indices(scheduler.next_requests("a")) == {0, 1, 2}
    scheduler.piece_verified(3)  # from the origin
    assert scheduler.in_endgame
    duplicates = scheduler.next_requests("b")
    assert duplicates
    assert indices(duplicates) <= {0, 1, 2}


def test_piece_verified_of_a_held_piece_clears_the_hold_and_counts_as_had() -> None:
    scheduler = make(held=[1])
    join(scheduler, "seed")
    assert scheduler.piece_verified(1) == []
    assert not scheduler.is_held(1)
    assert 1 in scheduler.have
    assert scheduler.missing_count() == 3
    scheduler.unhold(1)  # late release: must not make it requestable again
    blocks = scheduler.next_requests("seed")
    assert indices(blocks) == {0, 2, 3}
    for block in blocks:
        outcome = deliver(scheduler, "seed", block)
        assert outcome is not None
        if outcome.piece_complete:
            scheduler.piece_verified(block.index)
    assert scheduler.is_complete()


def test_a_peer_with_only_held_pieces_is_still_interesting() -> None:
    """Interest is about what the peer has; the hold only delays asking it."""
    scheduler = make(have=[0, 2, 3], held=[1])
    join(scheduler, "peer", [1])
    assert scheduler.is_interesting("peer")
    assert scheduler.next_requests("peer") == []
    scheduler.unhold(1)
    assert scheduler.next_requests("peer") == piece_blocks(1)


# -- PeerTask: digests learned during the download -----------------------------------------------


@pytest.fixture
def content(tmp_path: Path) -> Content:
    return make_content(tmp_path)


@pytest.fixture
def executor() -> Iterator[ThreadPoolExecutor]:
    with make_executor() as pool:
        yield pool


def knowing(content: Content, known: Iterable[int]) -> Manifest:
    """The content's manifest with only the digests of ``known`` pieces."""
    wanted = set(known)
    digests = tuple(d if i in wanted else None for i, d in enumerate(content.manifest.piece_sha256))
    return replace(content.manifest, piece_sha256=digests)


async def fetcher(
    swarm: Swarm, known: Iterable[int], *, name: str = "fetcher", **kwargs: Any
) -> Node:
    """A node downloading into an open store that knows the digests of ``known`` only."""
    manifest = knowing(swarm.content, known)
    store = PieceStore.create(swarm.content.directory / f"{name}.bin", manifest, open_digests=True)
    kwargs.setdefault("listen", False)
    return await swarm.node(store, **kwargs)


def piece_data(content: Content, index: int) -> bytes:
    return content.block(index, 0, content.manifest.layout.piece_size(index))


def digest_of(content: Content, index: int) -> bytes:
    digest = content.manifest.piece_sha256[index]
    assert digest is not None
    return digest


def assert_exact_copy(node: Node, content: Content) -> None:
    assert node.store.finalize().read_bytes() == content.data


KNOWN = range(0, NUM_PIECES, 2)
UNKNOWN = range(1, NUM_PIECES, 2)
#: No housekeeping tick during the test: only the call under test can restart requests once
#: the fetcher has everything it may ask for (the tick refills every peer too).
NO_TICK = replace(CONFIG, tick_s=60.0)


def test_fetcher_gets_exactly_the_pieces_whose_digest_it_knows_then_the_rest_once_learned(
    content: Content, executor: Executor
) -> None:
    async def main() -> None:
        async with Swarm(content, executor) as swarm:
            seed = await swarm.seed()
            node = await fetcher(swarm, KNOWN, config=NO_TICK)
            task = node.task
            assert all(task.scheduler.is_held(i) for i in UNKNOWN)
            verified: list[int] = []
            task.on_piece = verified.append
            await node.connect(seed)
            await wait_until(lambda: len(verified) == len(KNOWN), "the known pieces")
            assert sorted(verified) == list(KNOWN)
            assert task.scheduler.total_inflight() == 0  # nothing asked for held pieces
            assert not task.completed.done()
            assert task.stats.bytes_from_peer == {str(seed.task.peer_id): len(KNOWN) * PIECE_BYTES}
            learned = {i: digest_of(content, i) for i in UNKNOWN}
            assert task.learn_digests(learned) == len(UNKNOWN)
            assert task.learn_digests(learned) == 0  # known now
            await node.complete()
            assert sorted(verified) == list(range(NUM_PIECES))
            stats = task.stats
            assert (stats.pieces_verified, stats.pieces_failed, stats.wasted_bytes) == (
                NUM_PIECES,
                0,
                0,
            )
            assert stats.bytes_from_peer == {str(seed.task.peer_id): FILE_BYTES}
            assert (stats.origin_pieces, stats.origin_bytes) == (0, 0)
            assert_exact_copy(node, content)

    run(main)


def test_fetcher_knowing_no_digest_downloads_nothing_until_it_learns_them(
    content: Content, executor: Executor
) -> None:
    async def main() -> None:
        async with Swarm(content, executor) as swarm:
            seed = await swarm.seed()
            node = await fetcher(swarm, (), config=NO_TICK)
            conn = await node.connect(seed)
            await wait_until(lambda: node.task.peer_count == 1, "the seed to attach")
            await wait_until(lambda: seed.task.peer_count == 1, "the fetcher to attach")
            assert node.task.scheduler.total_inflight() == 0
            assert node.task.stats.bytes_from_peer == {}
            assert not conn.closed
            every = {i: digest_of(content, i) for i in range(NUM_PIECES)}
            assert node.task.learn_digests(every) == NUM_PIECES
            await node.complete()
            assert_exact_copy(node, content)

    run(main)


def test_learn_digests_ignores_a_digest_contradicting_a_known_one(
    content: Content, executor: Executor
) -> None:
    async def main() -> None:
        async with Swarm(content, executor) as swarm:
            node = await fetcher(swarm, [0])
            wrong = hashlib.sha256(b"not piece 0").digest()
            assert node.task.learn_digests({0: wrong, 1: digest_of(content, 1)}) == 1
            assert node.store.digest(0) == digest_of(content, 0)
            assert not node.task.scheduler.is_held(1)

    run(main)


# -- PeerTask: origin pieces ---------------------------------------------------------------------


def test_add_origin_piece_stores_it_announces_it_and_returns_its_digest(
    content: Content, executor: Executor
) -> None:
    async def main() -> None:
        async with Swarm(content, executor) as swarm:
            node = await fetcher(swarm, (), listen=True)
            task = node.task
            raw = await swarm.raw(node.address)
            await raw.greet(content.task_id)
            await raw.expect(m.HaveNone)
            raw.send(m.HaveNone())
            await wait_until(lambda: task.peer_count == 1, "the raw peer to attach")
            verified: list[int] = []
            task.on_piece = verified.append
            assert task.claim_for_origin([5, 6]) == [5, 6]
            assert task.origin_claimed == frozenset({5, 6})
            digest = await task.add_origin_piece(5, piece_data(content, 5))
            assert digest == digest_of(content, 5)
            assert node.store.digest(5) == digest
            assert node.store.has_piece(5)
            assert verified == [5]
            assert task.origin_claimed == frozenset({6})
            assert not task.scheduler.is_held(5)
            assert 5 in task.scheduler.have
            assert (task.stats.origin_pieces, task.stats.origin_bytes) == (1, PIECE_BYTES)
            assert task.stats.pieces_verified == 1
            assert await raw.expect(m.Have) == m.Have(5)
            # And it is served like any piece.
            raw.send(m.Interested())
            await raw.expect(m.Unchoke)
            raw.send(m.Request(5, RAW_BLOCK_BYTES, RAW_BLOCK_BYTES))
            block = await raw.expect(m.Piece)
            assert (block.index, block.begin) == (5, RAW_BLOCK_BYTES)
            assert bytes(block.data) == content.block(5, RAW_BLOCK_BYTES, RAW_BLOCK_BYTES)

    run(main)


def test_add_origin_piece_of_a_piece_already_had_returns_its_digest(
    content: Content, executor: Executor
) -> None:
    async def main() -> None:
        async with Swarm(content, executor) as swarm:
            node = await fetcher(swarm, ())
            task = node.task
            assert task.claim_for_origin([2]) == [2]
            assert await task.add_origin_piece(2, piece_data(content, 2)) == digest_of(content, 2)
            assert task.claim_for_origin([2]) == []  # had: nothing to fetch
            again = await task.add_origin_piece(2, piece_data(content, 2))
            assert again == digest_of(content, 2)
            assert task.stats.origin_pieces == 1
            assert task.origin_claimed == frozenset()

    run(main)


def test_add_origin_pieces_stores_a_run_and_skips_what_it_had(
    content: Content, executor: Executor
) -> None:
    async def main() -> None:
        async with Swarm(content, executor) as swarm:
            node = await fetcher(swarm, ())
            task = node.task
            verified: list[int] = []
            task.on_piece = verified.append
            await task.add_origin_piece(3, piece_data(content, 3))
            assert task.claim_for_origin([2, 4]) == [2, 4]
            run_pieces = [piece_data(content, i) for i in (2, 3, 4)]
            digests = await task.add_origin_pieces(2, run_pieces)
            assert digests == [digest_of(content, i) for i in (2, 3, 4)]
            assert verified == [3, 2, 4]
            assert all(node.store.has_piece(i) for i in (2, 3, 4))
            assert task.stats.origin_pieces == 3
            assert task.origin_claimed == frozenset()

    run(main)


def test_add_origin_pieces_with_one_bad_piece_stores_the_others_and_raises(
    content: Content, executor: Executor
) -> None:
    async def main() -> None:
        async with Swarm(content, executor) as swarm:
            node = await fetcher(swarm, [3])  # the digest of piece 3 is known
            task = node.task
            assert task.claim_for_origin([2, 3, 4]) == [2, 3, 4]
            bad = bytes(len(piece_data(content, 3)))
            with pytest.raises(ValueError, match="piece 3 "):
                await task.add_origin_pieces(
                    2, [piece_data(content, 2), bad, piece_data(content, 4)]
                )
            assert node.store.has_piece(2) and node.store.has_piece(4)
            assert not node.store.has_piece(3)
            assert task.origin_claimed == frozenset()

    run(main)


def test_add_origin_piece_not_matching_a_known_digest_raises_and_releases_the_piece(
    content: Content, executor: Executor
) -> None:
    async def main() -> None:
        async with Swarm(content, executor) as swarm:
            node = await fetcher(swarm, [3])
            task = node.task
            assert task.claim_for_origin([3]) == [3]
            assert task.scheduler.is_held(3)
            with pytest.raises(ValueError, match="piece 3"):
                await task.add_origin_piece(3, bytes(PIECE_BYTES))
            assert not node.store.has_piece(3)
            assert node.store.digest(3) == digest_of(content, 3)
            assert task.origin_claimed == frozenset()
            assert not task.scheduler.is_held(3)  # back to the peers
            assert task.stats.origin_pieces == 0
            # The peers supply it now.
            seed = await swarm.seed()
            await node.connect(seed)
            await wait_until(lambda: node.store.has_piece(3), "piece 3 from the seed")

    run(main)


def test_add_origin_piece_of_the_wrong_size_for_an_unknown_digest_raises_and_learns_nothing(
    content: Content, executor: Executor
) -> None:
    async def main() -> None:
        async with Swarm(content, executor) as swarm:
            node = await fetcher(swarm, ())
            task = node.task
            assert task.claim_for_origin([4]) == [4]
            with pytest.raises(ValueError, match="piece 4"):
                await task.add_origin_piece(4, piece_data(content, 4)[:-1])
            assert node.store.digest(4) is None
            assert task.origin_claimed == frozenset()
            assert task.scheduler.is_held(4)  # still no digest to verify it by

    run(main)


def test_claimed_pieces_are_kept_from_peers_until_released(
    content: Content, executor: Executor
) -> None:
    async def main() -> None:
        async with Swarm(content, executor) as swarm:
            seed = await swarm.seed()
            node = await fetcher(swarm, range(NUM_PIECES), config=NO_TICK)
            task = node.task
            claimed = [0, 17, NUM_PIECES - 1]
            assert task.claim_for_origin(claimed) == claimed
            await node.connect(seed)
            others = NUM_PIECES - len(claimed)
            await wait_until(lambda: task.stats.pieces_verified == others, "the other pieces")
            assert not any(node.store.has_piece(i) for i in claimed)
            assert task.scheduler.total_inflight() == 0
            assert not task.completed.done()
            assert task.claim_for_origin([1, 17]) == [17]  # 1 is had
            task.release_from_origin(claimed)
            assert task.origin_claimed == frozenset()
            await node.complete()
            assert task.stats.bytes_from_peer == {str(seed.task.peer_id): FILE_BYTES}
            assert task.stats.origin_pieces == 0
            assert_exact_copy(node, content)

    run(main)


def test_claim_for_origin_leaves_a_piece_being_received_from_peers_to_the_wire(
    content: Content, executor: Executor
) -> None:
    async def main() -> None:
        async with Swarm(content, executor) as swarm:
            node = await fetcher(swarm, range(NUM_PIECES))
            task = node.task
            server = await swarm.raw_server()
            await task.connect(*server.address)
            raw = await server.accept()
            await raw.expect(m.Handshake)
            raw.handshake(content.task_id)
            raw.send(m.HaveAll())
            await raw.expect(m.Interested, skip=(m.HaveNone, m.KeepAlive))
            raw.send(m.Unchoke())
            request = await raw.expect(m.Request)  # its piece is started; never answered
            assert task.claim_for_origin([request.index]) == []
            assert task.origin_claimed == frozenset()

    run(main)


def test_release_of_a_claimed_piece_with_an_unknown_digest_keeps_it_held(
    content: Content, executor: Executor
) -> None:
    async def main() -> None:
        async with Swarm(content, executor) as swarm:
            node = await fetcher(swarm, ())
            task = node.task
            assert task.claim_for_origin([7]) == [7]
            task.release_from_origin([7])
            assert task.origin_claimed == frozenset()
            assert task.scheduler.is_held(7)
            task.learn_digests({7: digest_of(content, 7)})
            assert not task.scheduler.is_held(7)

    run(main)


def test_digest_learned_for_a_claimed_piece_keeps_it_claimed(
    content: Content, executor: Executor
) -> None:
    async def main() -> None:
        async with Swarm(content, executor) as swarm:
            seed = await swarm.seed()
            node = await fetcher(swarm, ())
            task = node.task
            assert task.claim_for_origin([8]) == [8]
            await node.connect(seed)
            rest = {i: digest_of(content, i) for i in range(NUM_PIECES)}
            assert task.learn_digests(rest) == NUM_PIECES
            assert task.scheduler.is_held(8)  # still ours to fetch from the origin
            others = NUM_PIECES - 1
            await wait_until(lambda: task.stats.pieces_verified == others, "the other pieces")
            assert not node.store.has_piece(8)
            assert task.scheduler.total_inflight() == 0
            assert await task.add_origin_piece(8, piece_data(content, 8)) == digest_of(content, 8)
            await node.complete()
            assert task.stats.bytes_from_peer == {str(seed.task.peer_id): FILE_BYTES - PIECE_BYTES}
            assert (task.stats.origin_pieces, task.stats.origin_bytes) == (1, PIECE_BYTES)
            assert_exact_copy(node, content)

    run(main)


def test_task_stats_start_with_no_origin_pieces() -> None:
    stats = TaskStats()
    assert (stats.origin_pieces, stats.origin_bytes) == (0, 0)


# -- PeerTask: bans ------------------------------------------------------------------------------


def test_on_ban_is_called_with_the_id_of_a_peer_sending_corrupt_pieces(
    content: Content, executor: Executor
) -> None:
    async def main() -> None:
        async with Swarm(content, executor) as swarm:
            node = await fetcher(swarm, KNOWN, config=replace(CONFIG, ban_after_bad_pieces=1))
            bans: list[tuple[PeerId, str, str]] = []
            node.task.on_ban = lambda peer, address, reason: bans.append((peer, address, reason))
            server = await swarm.raw_server()
            conn = await node.task.connect(*server.address)
            liar = await server.accept()
            await asyncio.wait_for(serve(liar, content, corrupt=lambda _: True), 10)
            assert (await wait_done(conn)).startswith("banned")
            assert len(bans) == 1
            peer, address, reason = bans[0]
            assert peer == liar.peer_id
            assert address == f"{server.address[0]}:{server.address[1]}"
            assert reason == "sent 1 corrupt pieces"
            assert node.task.stats.peers_banned == [str(liar.peer_id)]

    run(main)


def test_on_ban_is_not_called_for_an_honest_peer(content: Content, executor: Executor) -> None:
    async def main() -> None:
        async with Swarm(content, executor) as swarm:
            seed = await swarm.seed()
            node = await fetcher(swarm, range(NUM_PIECES))
            bans: list[PeerId] = []
            node.task.on_ban = lambda peer, address, reason: bans.append(peer)
            await node.connect(seed)
            await node.complete()
            assert bans == []

    run(main)


def test_origin_piece_cancels_requests_for_it_still_in_flight_at_peers(
    content: Content, executor: Executor
) -> None:
    async def main() -> None:
        async with Swarm(content, executor) as swarm:
            node = await fetcher(swarm, range(NUM_PIECES))
            task = node.task
            server = await swarm.raw_server()
            await task.connect(*server.address)
            raw = await server.accept()
            await raw.expect(m.Handshake)
            raw.handshake(content.task_id)
            raw.send(m.HaveAll())
            await raw.expect(m.Interested, skip=(m.HaveNone, m.KeepAlive))
            raw.send(m.Unchoke())
            first = await raw.expect(m.Request)  # never answered
            second = await raw.expect(m.Request)
            assert first.index == second.index
            await task.add_origin_piece(first.index, piece_data(content, first.index))
            cancels = [await raw.expect(m.Cancel, skip=(m.Request, m.KeepAlive)) for _ in "12"]
            assert cancels == [m.Cancel(r.index, r.begin, r.length) for r in (first, second)]
            assert task.stats.origin_pieces == 1

    run(main)


# -- PeerTask: the origin and the wire racing for one piece --------------------------------------


def test_piece_from_the_origin_while_the_same_piece_from_a_peer_is_verified_counts_once(
    content: Content, executor: Executor
) -> None:
    """``dfget`` streaming a whole file from an origin without Range support adds every piece,
    even one the wire is already verifying (``claim_for_origin`` refused it): one piece, one
    ``on_piece``, one count."""
    with make_executor(max_workers=1) as single:
        gate = threading.Event()
        single.submit(gate.wait, 30)  # verifications queue behind this until released

        async def main() -> None:
            async with Swarm(content, executor) as swarm:
                node = await fetcher(swarm, range(NUM_PIECES), executor=single)
                task = node.task
                verified: list[int] = []
                task.on_piece = verified.append
                server = await swarm.raw_server()
                await task.connect(*server.address)
                raw = await server.accept()
                await raw.expect(m.Handshake)
                raw.handshake(content.task_id)
                raw.send(m.HaveAll())
                await raw.expect(m.Interested, skip=(m.HaveNone, m.KeepAlive))
                raw.send(m.Unchoke())
                first = await raw.expect(m.Request)
                second = await raw.expect(m.Request)
                assert first.index == second.index
                index = first.index
                for request in (first, second):
                    block = content.block(request.index, request.begin, request.length)
                    raw.send(m.Piece(request.index, request.begin, block))
                await wait_until(
                    lambda: task.stats.downloaded_bytes >= PIECE_BYTES, "the whole piece"
                )
                assert task.claim_for_origin([index]) == []  # being verified: the wire's
                adding = asyncio.ensure_future(
                    task.add_origin_piece(index, piece_data(content, index))
                )
                await asyncio.sleep(0)  # its commit is queued behind the wire's
                gate.set()
                assert await asyncio.wait_for(adding, 10) == digest_of(content, index)
                # Both commits are done (one worker, in order); so are their callbacks.
                await asyncio.get_running_loop().run_in_executor(single, lambda: None)
                assert verified == [index]
                assert task.stats.pieces_verified == 1

        try:
            run(main)
        finally:
            gate.set()
