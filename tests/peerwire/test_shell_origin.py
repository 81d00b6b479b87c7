"""Open manifests in a running task: digests learned during the download, pieces claimed for the
origin and given back, bans reported - the task core driven by its shell over real loopback
sockets (helpers of ``test_connection.py``): a seed with the complete file and a *fetcher*, a
node whose open store knows only some digests.

A piece is held from the peer wire while its digest is unknown (nothing could verify it) or
while this peer fetches it from the origin. How pieces read from the origin are stored and
announced is tested with the real origin fetcher and a real HTTP origin in
``tests/dfget/test_originfetch.py``; the scheduler's hold itself in ``test_task_origin.py``.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Iterable, Iterator
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from peerwire import commands as cmd
from peerwire import messages as m
from peerwire.coordination import AnnounceAnswer, TaskManifestDoc
from peerwire.digests import DigestBook, DigestConflict
from peerwire.manifest import Manifest
from peerwire.peerstate import TaskStats
from peerwire.storage import PieceStore
from tests.peerwire.test_connection import (
    CONFIG,
    FILE_BYTES,
    NUM_PIECES,
    PIECE_BYTES,
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


@pytest.fixture
def content(tmp_path: Path) -> Content:
    return make_content(tmp_path)


@pytest.fixture
def executor() -> Iterator[ThreadPoolExecutor]:
    with make_executor() as pool:
        yield pool


# -- helpers (shared with tests/dfget/test_originfetch.py) --------------------------------------


def knowing(content: Content, known: Iterable[int]) -> Manifest:
    """The content's manifest with only the digests of ``known`` pieces."""
    wanted = set(known)
    digests = tuple(d if i in wanted else None for i, d in enumerate(content.manifest.piece_sha256))
    return replace(content.manifest, piece_sha256=digests)


async def fetcher(
    swarm: Swarm, known: Iterable[int], *, name: str = "fetcher", **kwargs: Any
) -> Node:
    """A node downloading into an open store, its digest book knowing ``known`` pieces only."""
    manifest = knowing(swarm.content, known)
    store = PieceStore.create(swarm.content.directory / f"{name}.bin", manifest, open_digests=True)
    kwargs.setdefault("listen", False)
    digests = DigestBook(manifest.num_pieces, manifest.piece_sha256)
    return await swarm.node(store, digests=digests, **kwargs)


def piece_data(content: Content, index: int) -> bytes:
    return content.block(index, 0, content.manifest.layout.piece_size(index))


def digest_of(content: Content, index: int) -> bytes:
    digest = content.manifest.piece_sha256[index]
    assert digest is not None
    return digest


def assert_exact_copy(node: Node, content: Content) -> None:
    assert node.store.finalize().read_bytes() == content.data


def learn(node: Node, digests: dict[int, bytes]) -> int:
    """``TaskCore.learn_digests``, then the shell carries out what it caused (as the swarm
    client does after a manifest)."""
    try:
        return node.shell.core.learn_digests(digests)
    finally:
        node.shell.pump()


def claim(node: Node, indices: list[int]) -> list[int]:
    try:
        return node.shell.core.claim_for_origin(indices)
    finally:
        node.shell.pump()


def release(node: Node, indices: list[int]) -> None:
    node.shell.core.release_from_origin(indices)
    node.shell.pump()


KNOWN = range(0, NUM_PIECES, 2)
UNKNOWN = range(1, NUM_PIECES, 2)
#: No housekeeping tick during the test: only the call under test can restart requests once
#: the fetcher has everything it may ask for (the tick refills every peer too).
NO_TICK = replace(CONFIG, tick_s=60.0)


# -- digests learned during the download ---------------------------------------------------------


def test_fetcher_gets_exactly_the_pieces_whose_digest_it_knows_then_the_rest_once_learned(
    content: Content, executor: Executor
) -> None:
    async def main() -> None:
        async with Swarm(content, executor) as swarm:
            seed = await swarm.seed()
            node = await fetcher(swarm, KNOWN, config=NO_TICK)
            core = node.shell.core
            assert all(core.scheduler.is_held(i) for i in UNKNOWN)
            await node.connect(seed)
            await wait_until(lambda: len(node.verified) == len(KNOWN), "the known pieces")
            assert sorted(node.verified) == list(KNOWN)
            assert core.scheduler.total_inflight() == 0  # nothing asked for held pieces
            assert not node.shell.completed.done()
            assert node.stats.bytes_from_peer == {str(seed.shell.peer_id): len(KNOWN) * PIECE_BYTES}
            learned = {i: digest_of(content, i) for i in UNKNOWN}
            assert learn(node, learned) == len(UNKNOWN)
            assert learn(node, learned) == 0  # known now
            await node.complete()
            assert sorted(node.verified) == list(range(NUM_PIECES))
            stats = node.stats
            assert (stats.pieces_verified, stats.pieces_failed, stats.wasted_bytes) == (
                NUM_PIECES,
                0,
                0,
            )
            assert stats.bytes_from_peer == {str(seed.shell.peer_id): FILE_BYTES}
            assert (stats.origin_pieces, stats.origin_bytes) == (0, 0)
            assert not any(isinstance(c, cmd.ReportDigests) for c in node.commands)
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
            await wait_until(lambda: node.peer_count == 1, "the seed to attach")
            await wait_until(lambda: seed.peer_count == 1, "the fetcher to attach")
            assert node.shell.core.scheduler.total_inflight() == 0
            assert node.stats.bytes_from_peer == {}
            assert not conn.closed
            every = {i: digest_of(content, i) for i in range(NUM_PIECES)}
            assert learn(node, every) == NUM_PIECES
            await node.complete()
            assert_exact_copy(node, content)

    run(main)


def test_learn_digests_keeps_the_known_digest_over_a_contradicting_one_and_learns_the_rest(
    content: Content, executor: Executor
) -> None:
    """The old ``learn_digests`` returned the count and ignored the contradiction; the core
    now raises ``DigestConflict`` after learning the others (the caller decides), and the swarm
    link - what receives the coordinator's manifest - logs it and counts what was learned."""

    async def main() -> None:
        async with Swarm(content, executor) as swarm:
            node = await fetcher(swarm, [0])
            core = node.shell.core
            wrong = hashlib.sha256(b"not piece 0").digest()
            with pytest.raises(DigestConflict) as raised:
                learn(node, {0: wrong, 1: digest_of(content, 1)})
            assert raised.value.learned == [1]
            assert core.digests.get(0) == digest_of(content, 0)
            assert not core.scheduler.is_held(1)
            # The same through the coordinator's manifest.
            doc = TaskManifestDoc(
                url="http://origin.invalid/file",
                total_length=FILE_BYTES,
                piece_length=PIECE_BYTES,
                piece_sha256=(wrong, None, digest_of(content, 2), *[None] * (NUM_PIECES - 3)),
            )
            assert core.swarm.manifest_received(doc) == 1
            node.shell.pump()
            assert core.digests.get(0) == digest_of(content, 0)
            assert core.digests.get(2) == digest_of(content, 2)
            assert not core.scheduler.is_held(2)

    run(main)


def test_digests_from_the_coordinators_manifest_let_the_download_finish(
    content: Content, executor: Executor
) -> None:
    """An announce answer saying the coordinator knows more digests than we do asks for its
    manifest (``FetchManifest``); once received, the held pieces are asked of peers."""

    async def main() -> None:
        async with Swarm(content, executor) as swarm:
            seed = await swarm.seed()
            node = await fetcher(swarm, KNOWN)
            core = node.shell.core
            await node.connect(seed)
            await wait_until(lambda: len(node.verified) == len(KNOWN), "the known pieces")
            core.swarm.start()
            node.shell.pump()
            await wait_until(
                lambda: any(isinstance(c, cmd.Announce) for c in node.commands), "an announce"
            )
            answer = AnnounceAnswer(60.0, 60.0, 1, 1, (), pieces_known=NUM_PIECES)
            core.swarm.announced(answer)
            node.shell.pump()
            assert cmd.FetchManifest() in node.commands
            doc = TaskManifestDoc(
                url="http://origin.invalid/file",
                total_length=FILE_BYTES,
                piece_length=PIECE_BYTES,
                piece_sha256=content.manifest.piece_sha256,
            )
            assert core.swarm.manifest_received(doc) == len(UNKNOWN)
            node.shell.pump()
            await node.complete()
            assert_exact_copy(node, content)

    run(main)


# -- pieces claimed for the origin --------------------------------------------------------------


def test_claimed_pieces_are_kept_from_peers_until_released(
    content: Content, executor: Executor
) -> None:
    async def main() -> None:
        async with Swarm(content, executor) as swarm:
            seed = await swarm.seed()
            node = await fetcher(swarm, range(NUM_PIECES), config=NO_TICK)
            core = node.shell.core
            claimed = [0, 17, NUM_PIECES - 1]
            assert claim(node, claimed) == claimed
            assert core.origin_claimed == set(claimed)
            await node.connect(seed)
            others = NUM_PIECES - len(claimed)
            await wait_until(lambda: node.stats.pieces_verified == others, "the other pieces")
            assert not any(node.store.has_piece(i) for i in claimed)
            assert core.scheduler.total_inflight() == 0
            assert not node.shell.completed.done()
            assert claim(node, [1, 17]) == [17]  # 1 is had
            release(node, claimed)
            assert core.origin_claimed == set()
            await node.complete()
            assert node.stats.bytes_from_peer == {str(seed.shell.peer_id): FILE_BYTES}
            assert node.stats.origin_pieces == 0
            assert_exact_copy(node, content)

    run(main)


def test_claim_for_origin_leaves_a_piece_being_received_from_peers_to_the_wire(
    content: Content, executor: Executor
) -> None:
    async def main() -> None:
        async with Swarm(content, executor) as swarm:
            node = await fetcher(swarm, range(NUM_PIECES))
            server = await swarm.raw_server()
            await node.shell.connect(*server.address)
            raw = await server.accept()
            await raw.expect(m.Handshake)
            raw.handshake(content.task_id)
            raw.send(m.HaveAll())
            await raw.expect(m.Interested, skip=(m.HaveNone, m.KeepAlive))
            raw.send(m.Unchoke())
            request = await raw.expect(m.Request)  # its piece is started; never answered
            assert claim(node, [request.index]) == []
            assert node.shell.core.origin_claimed == set()

    run(main)


def test_release_of_a_claimed_piece_with_an_unknown_digest_keeps_it_held(
    content: Content, executor: Executor
) -> None:
    async def main() -> None:
        async with Swarm(content, executor) as swarm:
            node = await fetcher(swarm, ())
            core = node.shell.core
            assert claim(node, [7]) == [7]
            release(node, [7])
            assert core.origin_claimed == set()
            assert core.scheduler.is_held(7)
            learn(node, {7: digest_of(content, 7)})
            assert not core.scheduler.is_held(7)

    run(main)


def test_digest_learned_for_a_claimed_piece_keeps_it_claimed(
    content: Content, executor: Executor
) -> None:
    """The piece stays the origin's: peers supply every other one. (Its arrival from the
    origin is in ``tests/dfget/test_originfetch.py``.)"""

    async def main() -> None:
        async with Swarm(content, executor) as swarm:
            seed = await swarm.seed()
            node = await fetcher(swarm, ())
            core = node.shell.core
            assert claim(node, [8]) == [8]
            await node.connect(seed)
            rest = {i: digest_of(content, i) for i in range(NUM_PIECES)}
            assert learn(node, rest) == NUM_PIECES
            assert core.scheduler.is_held(8)  # still ours to fetch from the origin
            others = NUM_PIECES - 1
            await wait_until(lambda: node.stats.pieces_verified == others, "the other pieces")
            assert not node.store.has_piece(8)
            assert core.scheduler.total_inflight() == 0
            assert core.origin_claimed == {8}
            assert node.stats.bytes_from_peer == {str(seed.shell.peer_id): FILE_BYTES - PIECE_BYTES}

    run(main)


def test_task_stats_start_with_no_origin_pieces() -> None:
    stats = TaskStats()
    assert (stats.origin_pieces, stats.origin_bytes) == (0, 0)


# -- bans ------------------------------------------------------------------------------------------


def test_a_peer_sending_corrupt_pieces_is_banned_and_reported_with_its_id_and_address(
    content: Content, executor: Executor
) -> None:
    async def main() -> None:
        async with Swarm(content, executor) as swarm:
            node = await fetcher(swarm, KNOWN, config=replace(CONFIG, ban_after_bad_pieces=1))
            server = await swarm.raw_server()
            conn = await node.shell.connect(*server.address)
            liar = await server.accept()
            await asyncio.wait_for(serve(liar, content, corrupt=lambda _: True), 10)
            assert (await wait_done(conn)).startswith("banned")
            assert node.reports == [
                cmd.ReportPeer(
                    liar.peer_id,
                    f"{server.address[0]}:{server.address[1]}",
                    "sent 1 corrupt pieces",
                )
            ]
            assert node.stats.peers_banned == [str(liar.peer_id)]

    run(main)


def test_no_peer_is_reported_when_every_peer_is_honest(
    content: Content, executor: Executor
) -> None:
    async def main() -> None:
        async with Swarm(content, executor) as swarm:
            seed = await swarm.seed()
            node = await fetcher(swarm, range(NUM_PIECES))
            await node.connect(seed)
            await node.complete()
            assert node.reports == []
            assert node.stats.peers_banned == []

    run(main)
