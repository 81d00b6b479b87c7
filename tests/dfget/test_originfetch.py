"""dfget.originfetch.OriginFetcher in a running task: pieces read from a real HTTP origin
(``tests/helpers/origin_server.py``, a process on 127.0.0.1) are stored, announced to peers and
reported, next to a swarm of real task shells over loopback sockets (the helpers of
``tests/peerwire/test_connection.py`` and ``test_shell_origin.py``).

``store_pieces`` is what every origin run ends in (``add_origin_piece`` of the old PeerTask):
it is called directly where a test needs exact bytes (a corrupt or short piece) or exact timing
(a race with the wire); elsewhere the fetcher reads the origin itself.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from concurrent.futures import Executor, ThreadPoolExecutor
from pathlib import Path

import pytest

from dfget.errors import OriginChanged, OriginError
from dfget.origin import Origin
from dfget.originfetch import OriginFetcher
from dfget.originplan import OriginMeasure
from peerwire import commands as cmd
from peerwire import messages as m
from peerwire.connection import PeerConnection
from peerwire.coordination import AnnounceAnswer
from tests.helpers.origin_server import OriginServer, origin_process
from tests.peerwire.test_connection import (
    FILE_BYTES,
    NUM_PIECES,
    PIECE_BYTES,
    RAW_BLOCK_BYTES,
    SHORT_WAIT_S,
    Content,
    Node,
    Swarm,
    make_content,
    make_executor,
    run,
    wait_until,
)
from tests.peerwire.test_shell_origin import (
    assert_exact_copy,
    claim,
    digest_of,
    fetcher,
    learn,
    piece_data,
)


@pytest.fixture(scope="module")
def origin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OriginServer]:
    """One origin for the module, serving the bytes every test's ``content`` has."""
    root = tmp_path_factory.mktemp("origin")
    served = make_content(root)
    with origin_process(served.directory.parent) as running:
        yield running


@pytest.fixture
def content(tmp_path: Path, origin: OriginServer) -> Content:
    made = make_content(tmp_path)
    origin.reset()
    return made


@pytest.fixture
def executor() -> Iterator[ThreadPoolExecutor]:
    with make_executor() as pool:
        yield pool


async def origin_fetcher(
    swarm: Swarm, node: Node, origin: OriginServer, *, route: str = "files"
) -> tuple[OriginFetcher, list[Exception]]:
    """A fetcher for ``node`` from the test origin (probed), its errors collected; the node's
    ``FetchFromOrigin`` commands go to it, as the engine's do. Closed before the node."""
    source = Origin(f"{origin.base_url}/{route}/source.bin", retries=0)
    swarm.on_exit(source.close)
    info = await source.probe()
    errors: list[Exception] = []
    fetch = OriginFetcher(
        node.shell,
        source,
        info,
        measure=OriginMeasure(),
        rate_limit_bps=None,
        on_error=errors.append,
    )
    swarm.on_exit(fetch.close)

    def on_command(command: cmd.Command[PeerConnection]) -> None:
        node.commands.append(command)
        if isinstance(command, cmd.FetchFromOrigin):
            fetch.assigned(command.pieces, command.descending)

    node.shell.on_command = on_command
    return fetch, errors


def reported(node: Node) -> dict[int, bytes]:
    """Every digest the node reported for the coordinator's manifest."""
    digests: dict[int, bytes] = {}
    for command in node.commands:
        if isinstance(command, cmd.ReportDigests):
            digests.update(command.digests)
    return digests


# -- store_pieces: origin pieces into the task ---------------------------------------------------


def test_an_origin_piece_is_stored_announced_served_and_its_digest_learned_and_reported(
    content: Content, executor: Executor, origin: OriginServer
) -> None:
    async def main() -> None:
        async with Swarm(content, executor) as swarm:
            node = await fetcher(swarm, (), listen=True)
            fetch, _ = await origin_fetcher(swarm, node, origin)
            core = node.shell.core
            raw = await swarm.raw(node.address)
            await raw.greet(content.task_id)
            await raw.expect(m.HaveNone)
            raw.send(m.HaveNone())
            await wait_until(lambda: node.peer_count == 1, "the raw peer to attach")
            assert claim(node, [5, 6]) == [5, 6]
            assert core.origin_claimed == {5, 6}
            await fetch.store_pieces(5, [piece_data(content, 5)])
            assert core.digests.get(5) == digest_of(content, 5)
            assert node.store.has_piece(5)
            assert node.verified == [5]
            assert reported(node) == {5: digest_of(content, 5)}
            assert core.origin_claimed == {6}
            assert not core.scheduler.is_held(5)
            assert 5 in core.scheduler.have
            assert (node.stats.origin_pieces, node.stats.origin_bytes) == (1, PIECE_BYTES)
            assert node.stats.pieces_verified == 1
            assert await raw.expect(m.Have) == m.Have(5)
            # And it is served like any piece.
            raw.send(m.Interested())
            await raw.expect(m.Unchoke)
            raw.send(m.Request(5, RAW_BLOCK_BYTES, RAW_BLOCK_BYTES))
            block = await raw.expect(m.Piece)
            assert (block.index, block.begin) == (5, RAW_BLOCK_BYTES)
            assert bytes(block.data) == content.block(5, RAW_BLOCK_BYTES, RAW_BLOCK_BYTES)

    run(main)


def test_an_origin_piece_already_had_is_neither_stored_nor_counted_again(
    content: Content, executor: Executor, origin: OriginServer
) -> None:
    async def main() -> None:
        async with Swarm(content, executor) as swarm:
            node = await fetcher(swarm, ())
            fetch, _ = await origin_fetcher(swarm, node, origin)
            core = node.shell.core
            assert claim(node, [2]) == [2]
            await fetch.store_pieces(2, [piece_data(content, 2)])
            assert core.digests.get(2) == digest_of(content, 2)
            assert claim(node, [2]) == []  # had: nothing to fetch
            await fetch.store_pieces(2, [piece_data(content, 2)])
            assert node.stats.origin_pieces == 1
            assert node.verified == [2]
            assert core.origin_claimed == set()
            assert sum(isinstance(c, cmd.ReportDigests) for c in node.commands) == 1

    run(main)


def test_a_run_of_origin_pieces_is_stored_skipping_what_was_had(
    content: Content, executor: Executor, origin: OriginServer
) -> None:
    async def main() -> None:
        async with Swarm(content, executor) as swarm:
            node = await fetcher(swarm, ())
            fetch, _ = await origin_fetcher(swarm, node, origin)
            await fetch.store_pieces(3, [piece_data(content, 3)])
            assert claim(node, [2, 4]) == [2, 4]
            await fetch.store_pieces(2, [piece_data(content, i) for i in (2, 3, 4)])
            assert node.verified == [3, 2, 4]
            assert all(node.store.has_piece(i) for i in (2, 3, 4))
            assert node.stats.origin_pieces == 3
            assert node.shell.core.origin_claimed == set()
            assert reported(node) == {i: digest_of(content, i) for i in (2, 3, 4)}

    run(main)


def test_a_run_with_one_piece_contradicting_its_digest_stores_the_others_and_raises(
    content: Content, executor: Executor, origin: OriginServer
) -> None:
    async def main() -> None:
        async with Swarm(content, executor) as swarm:
            node = await fetcher(swarm, [3])  # the digest of piece 3 is known
            fetch, _ = await origin_fetcher(swarm, node, origin)
            assert claim(node, [2, 3, 4]) == [2, 3, 4]
            bad = bytes(len(piece_data(content, 3)))
            with pytest.raises(OriginChanged, match=r"piece\(s\) 3 "):
                await fetch.store_pieces(2, [piece_data(content, 2), bad, piece_data(content, 4)])
            assert node.store.has_piece(2) and node.store.has_piece(4)
            assert not node.store.has_piece(3)
            assert node.shell.core.origin_claimed == set()
            assert reported(node) == {2: digest_of(content, 2), 4: digest_of(content, 4)}

    run(main)


def test_an_origin_piece_contradicting_its_digest_raises_and_goes_back_to_the_peers(
    content: Content, executor: Executor, origin: OriginServer
) -> None:
    async def main() -> None:
        async with Swarm(content, executor) as swarm:
            node = await fetcher(swarm, [3])
            fetch, _ = await origin_fetcher(swarm, node, origin)
            core = node.shell.core
            assert claim(node, [3]) == [3]
            assert core.scheduler.is_held(3)
            with pytest.raises(OriginChanged, match=r"piece\(s\) 3 "):
                await fetch.store_pieces(3, [bytes(PIECE_BYTES)])
            assert not node.store.has_piece(3)
            assert core.digests.get(3) == digest_of(content, 3)
            assert core.origin_claimed == set()
            assert not core.scheduler.is_held(3)  # back to the peers
            assert node.stats.origin_pieces == 0
            # The peers supply it now.
            seed = await swarm.seed()
            await node.connect(seed)
            await wait_until(lambda: node.store.has_piece(3), "piece 3 from the seed")

    run(main)


def test_an_origin_piece_of_the_wrong_size_raises_and_teaches_no_digest(
    content: Content, executor: Executor, origin: OriginServer
) -> None:
    async def main() -> None:
        async with Swarm(content, executor) as swarm:
            node = await fetcher(swarm, ())
            fetch, _ = await origin_fetcher(swarm, node, origin)
            core = node.shell.core
            assert claim(node, [4]) == [4]
            with pytest.raises(OriginChanged, match=r"piece\(s\) 4 "):
                await fetch.store_pieces(4, [piece_data(content, 4)[:-1]])
            assert core.digests.get(4) is None
            assert not node.store.has_piece(4)
            assert core.origin_claimed == set()
            assert core.scheduler.is_held(4)  # still no digest to verify it by
            assert reported(node) == {}

    run(main)


def test_an_origin_piece_cancels_requests_for_it_still_in_flight_at_peers(
    content: Content, executor: Executor, origin: OriginServer
) -> None:
    async def main() -> None:
        async with Swarm(content, executor) as swarm:
            node = await fetcher(swarm, range(NUM_PIECES))
            fetch, _ = await origin_fetcher(swarm, node, origin)
            server = await swarm.raw_server()
            await node.shell.connect(*server.address)
            raw = await server.accept()
            await raw.expect(m.Handshake)
            raw.handshake(content.task_id)
            raw.send(m.HaveAll())
            await raw.expect(m.Interested, skip=(m.HaveNone, m.KeepAlive))
            raw.send(m.Unchoke())
            first = await raw.expect(m.Request)  # never answered
            second = await raw.expect(m.Request)
            assert first.index == second.index
            await fetch.store_pieces(first.index, [piece_data(content, first.index)])
            cancels = [await raw.expect(m.Cancel, skip=(m.Request, m.KeepAlive)) for _ in "12"]
            assert cancels == [m.Cancel(r.index, r.begin, r.length) for r in (first, second)]
            assert node.stats.origin_pieces == 1

    run(main)


def test_a_piece_from_the_origin_while_the_wire_verifies_the_same_piece_counts_once(
    content: Content, executor: Executor, origin: OriginServer
) -> None:
    """The origin's copy of a piece arrives while a peer's copy of it waits for verification
    (both commits queue on the one worker thread): one piece, one ``PieceDone``, one count."""
    with make_executor(max_workers=1) as single:
        gate = threading.Event()
        single.submit(gate.wait, 30)  # verifications queue behind this until released

        async def main() -> None:
            async with Swarm(content, executor) as swarm:
                node = await fetcher(swarm, range(NUM_PIECES), executor=single)
                fetch, _ = await origin_fetcher(swarm, node, origin)
                server = await swarm.raw_server()
                await node.shell.connect(*server.address)
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
                    lambda: node.stats.downloaded_bytes >= PIECE_BYTES, "the whole piece"
                )
                assert claim(node, [index]) == []  # being verified: the wire's
                storing = asyncio.ensure_future(
                    fetch.store_pieces(index, [piece_data(content, index)])
                )
                await asyncio.sleep(0)  # its commit is queued behind the wire's
                gate.set()
                await asyncio.wait_for(storing, 10)
                # Both commits are done (one worker, in order); so are their callbacks.
                await asyncio.get_running_loop().run_in_executor(single, lambda: None)
                assert node.verified == [index]
                assert node.stats.pieces_verified == 1

        try:
            run(main)
        finally:
            gate.set()


# -- fetching from a real origin -----------------------------------------------------------------


def test_an_assignment_is_read_from_the_origin_and_the_rest_comes_from_a_seed(
    content: Content, executor: Executor, origin: OriginServer
) -> None:
    assigned = tuple(range(10))

    async def main() -> None:
        async with Swarm(content, executor) as swarm:
            node = await fetcher(swarm, ())
            fetch, errors = await origin_fetcher(swarm, node, origin)
            fetch.assigned(assigned, False)
            await wait_until(lambda: len(node.verified) == len(assigned), "the assigned pieces")
            assert sorted(node.verified) == list(assigned)
            assert reported(node) == {i: digest_of(content, i) for i in assigned}
            assert not fetch.busy
            stats = await asyncio.to_thread(origin.stats)
            # Those pieces, each once (and the probe's one byte).
            assert stats["bytes_sent"] == len(assigned) * PIECE_BYTES + 1
            seed = await swarm.seed()
            await node.connect(seed)
            learn(node, {i: digest_of(content, i) for i in range(NUM_PIECES)})
            await node.complete()
            assert_exact_copy(node, content)
            origin_bytes = len(assigned) * PIECE_BYTES
            assert (node.stats.origin_pieces, node.stats.origin_bytes) == (
                len(assigned),
                origin_bytes,
            )
            assert node.stats.bytes_from_peer == {
                str(seed.shell.peer_id): FILE_BYTES - origin_bytes
            }
            assert errors == []

    run(main)


def test_a_claimed_piece_whose_digest_was_learned_is_still_read_from_the_origin(
    content: Content, executor: Executor, origin: OriginServer
) -> None:
    async def main() -> None:
        async with Swarm(content, executor) as swarm:
            seed = await swarm.seed()
            node = await fetcher(swarm, ())
            fetch, errors = await origin_fetcher(swarm, node, origin)
            assert claim(node, [8]) == [8]
            await node.connect(seed)
            assert learn(node, {i: digest_of(content, i) for i in range(NUM_PIECES)}) == NUM_PIECES
            assert node.shell.core.scheduler.is_held(8)
            await wait_until(lambda: node.stats.pieces_verified == NUM_PIECES - 1, "the others")
            assert not node.store.has_piece(8)
            fetch.assigned((8,), False)
            await node.complete()
            assert node.stats.bytes_from_peer == {str(seed.shell.peer_id): FILE_BYTES - PIECE_BYTES}
            assert (node.stats.origin_pieces, node.stats.origin_bytes) == (1, PIECE_BYTES)
            assert reported(node) == {8: digest_of(content, 8)}
            assert_exact_copy(node, content)
            assert errors == []

    run(main)


def test_an_origin_without_range_support_is_read_once_start_to_end(
    content: Content, executor: Executor, origin: OriginServer
) -> None:
    async def main() -> None:
        async with Swarm(content, executor) as swarm:
            node = await fetcher(swarm, ())
            fetch, errors = await origin_fetcher(swarm, node, origin, route="norange")
            assert not fetch.info.accepts_ranges
            fetch.fetch_everything(4)
            await node.complete()
            assert_exact_copy(node, content)
            assert (node.stats.origin_pieces, node.stats.origin_bytes) == (NUM_PIECES, FILE_BYTES)
            assert sorted(node.verified) == list(range(NUM_PIECES))
            stats = await asyncio.to_thread(origin.stats)
            assert stats["requests"] == 2  # the probe, then the one stream
            assert errors == []

    run(main)


def test_an_origin_error_is_handed_to_on_error(
    content: Content, executor: Executor, origin: OriginServer
) -> None:
    async def main() -> None:
        async with Swarm(content, executor) as swarm:
            node = await fetcher(swarm, ())
            fetch, errors = await origin_fetcher(swarm, node, origin, route="mutable")
            fetch.fetch_everything(1)  # the origin's second answer is another file
            await wait_until(lambda: errors, "the origin's error")
            assert isinstance(errors[0], OriginError)
            assert not node.store.have.is_complete()

    run(main)


def test_a_first_assignment_done_asks_for_more_at_once_not_after_min_interval(
    content: Content, executor: Executor, origin: OriginServer
) -> None:
    """``_want_more`` -> ``core.swarm.origin_wants_more()``: a lone peer's first assignment is
    only a share of the file, so the next announce goes as soon as it is (nearly) done, not a
    ``min interval`` (here a minute) later."""

    async def main() -> None:
        async with Swarm(content, executor) as swarm:
            node = await fetcher(swarm, ())
            await origin_fetcher(swarm, node, origin)
            core = node.shell.core

            def announces() -> list[cmd.Announce]:
                return [c for c in node.commands if isinstance(c, cmd.Announce)]

            core.swarm.start()
            node.shell.pump()
            await wait_until(lambda: announces(), "the first announce")
            assert announces() == [cmd.Announce("started")]
            answer = AnnounceAnswer(60.0, 60.0, 0, 1, (), assignment=tuple(range(8)))
            core.swarm.announced(answer)
            node.shell.pump()
            await wait_until(lambda: len(node.verified) == 8, "the first assignment")
            await wait_until(lambda: len(announces()) == 2, "the next announce", SHORT_WAIT_S)

    run(main)
