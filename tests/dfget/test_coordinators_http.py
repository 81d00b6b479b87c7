"""HttpTracker (the peer's side of the tracker interface) against a real tracker on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from dfget.coordinators.http import HttpTracker, announce_query, parse_announce_answer
from peerwire.coordination import (
    PeerAddress,
    Progress,
    TaskManifestDoc,
    TrackerRefused,
    TrackerUnavailable,
)
from peerwire.ids import PeerId, TaskId
from peerwire.manifest import ManifestConflict
from tests.integration.trackers import free_port
from tracker.config import TrackerConfig
from tracker.server import TrackerServer
from tracker.urls import tracker_base_url

PIECE = 16384


def run_with_tracker(body: Callable[[TrackerServer], Awaitable[None]], **changes: object) -> None:
    async def main() -> None:
        config = TrackerConfig(host="127.0.0.1", port=0, **changes)  # type: ignore[arg-type]
        server = TrackerServer(config)
        await server.start()
        try:
            await asyncio.wait_for(body(server), 30)
        finally:
            await server.close()

    asyncio.run(main())


def base(server: TrackerServer) -> str:
    return f"http://127.0.0.1:{server.port}"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("http://h:6969", "http://h:6969"),
        ("http://h:6969/", "http://h:6969"),
        ("http://h:6969/announce", "http://h:6969"),
        ("http://h:6969/df/announce", "http://h:6969/df"),
    ],
)
def test_tracker_url_accepts_base_or_announce_form(text: str, expected: str) -> None:
    assert tracker_base_url(text) == expected


@pytest.mark.parametrize("text", ["ftp://h/announce", "h:6969", "http://h:6969/announce?x=1"])
def test_tracker_url_rejects_what_is_not_a_tracker(text: str) -> None:
    with pytest.raises(ValueError, match="tracker"):
        tracker_base_url(text)


def test_announce_query_escapes_every_raw_byte() -> None:
    task = TaskId(bytes(range(20)))
    query = announce_query(task, Progress(PeerId(b"-DF0100-" + b"\xff" * 12), 6881), "started")
    assert "info_hash=%00%01%02%03" in query
    assert "peer_id=-DF0100-%FF%FF" in query
    assert "event=started" in query


def test_failure_reason_is_a_refusal_not_a_failover() -> None:
    with pytest.raises(TrackerRefused, match="no such thing"):
        parse_announce_answer(b"d14:failure reason13:no such thinge")


def test_compact_peers_are_decoded_and_a_torn_last_entry_is_ignored() -> None:
    """BEP 23 (IPv4, 6 bytes each) and BEP 7 (IPv6, 18 bytes each)."""
    peers4 = bytes([10, 77, 0, 5, 0x1A, 0xE1, 255, 255, 255, 255, 0xFF, 0xFF, 0, 0, 0, 1, 0])
    peers6 = bytes(15) + b"\x01" + b"\x00\x50"
    body = (
        b"d8:intervali5e5:peers" + str(len(peers4)).encode() + b":" + peers4
        + b"6:peers6" + str(len(peers6)).encode() + b":" + peers6 + b"e"
    )  # fmt: skip
    answer = parse_announce_answer(body)
    assert [(p.host, p.port) for p in answer.peers] == [
        ("10.77.0.5", 6881),
        ("255.255.255.255", 65535),
        ("::1", 80),
    ]


def test_two_peers_learn_each_other_through_the_tracker() -> None:
    async def body(server: TrackerServer) -> None:
        tracker = HttpTracker([base(server) + "/announce"])
        task = TaskId(hashlib.sha256(b"t").digest()[:20])
        first = Progress(PeerId.generate(), 7001, left_bytes=100)
        second = Progress(PeerId.generate(), 7002, left_bytes=100)
        answer = await tracker.announce(task, first, "started")
        assert answer.peers == ()
        answer = await tracker.announce(task, second, "started")
        assert [(p.host, p.port) for p in answer.peers] == [("127.0.0.1", 7001)]
        assert answer.interval_s == 5
        await tracker.service_down(task, first)
        answer = await tracker.announce(task, second)
        assert answer.peers == ()
        await tracker.close()

    run_with_tracker(body)


def test_unreachable_tracker_is_skipped_for_the_next_one() -> None:
    async def body(server: TrackerServer) -> None:
        dead = f"http://127.0.0.1:{free_port()}"
        tracker = HttpTracker([dead, base(server)], timeout_s=5)
        task = TaskId(b"\x01" * 20)
        answer = await tracker.announce(task, Progress(PeerId.generate(), 7001, left_bytes=1))
        assert answer.complete + answer.incomplete == 1
        await tracker.close()

    run_with_tracker(body)


def test_no_tracker_reachable_names_each_one() -> None:
    async def main() -> None:
        dead = [f"http://127.0.0.1:{free_port()}", f"http://127.0.0.1:{free_port()}"]
        tracker = HttpTracker(dead, timeout_s=5)
        with pytest.raises(TrackerUnavailable) as info:
            await tracker.announce(TaskId(b"\x02" * 20), Progress(PeerId.generate(), 1))
        await tracker.close()
        assert all(url in str(info.value) for url in dead)

    asyncio.run(main())


def test_manifest_round_trip_and_piece_reports() -> None:
    async def body(server: TrackerServer) -> None:
        tracker = HttpTracker([base(server)])
        task = TaskId(b"\x03" * 20)
        assert await tracker.get_manifest(task) is None
        doc = TaskManifestDoc("http://origin/f", 3 * PIECE, PIECE, (None, None, None))
        stored = await tracker.put_manifest(task, doc)
        assert stored.piece_sha256 == (None, None, None)
        digest = hashlib.sha256(b"piece 1").digest()
        await tracker.report_piece(task, 1, digest)
        fetched = await tracker.get_manifest(task)
        assert fetched is not None
        assert fetched.piece_sha256 == (None, digest, None)
        with pytest.raises(ManifestConflict):
            await tracker.report_piece(task, 1, hashlib.sha256(b"other").digest())
        answer = await tracker.announce(
            task, Progress(PeerId.generate(), 7001, left_bytes=3 * PIECE, have=b"\x00")
        )
        assert answer.pieces_known == 1
        await tracker.close()

    run_with_tracker(body)


def test_back_to_source_assignment_reaches_the_peer() -> None:
    async def body(server: TrackerServer) -> None:
        tracker = HttpTracker([base(server)])
        task = TaskId(b"\x04" * 20)
        await tracker.put_manifest(
            task, TaskManifestDoc("http://o/f", 8 * PIECE, PIECE, (None,) * 8)
        )
        progress = Progress(PeerId.generate(), 7001, left_bytes=8 * PIECE, have=b"\x00")
        answer = await tracker.announce(task, progress, "started")
        assert answer.assignment and answer.assignment[0] == 0
        assert answer.assignment_ttl_s > 0
        await tracker.close()

    run_with_tracker(body)


def test_report_error_reaches_the_tracker() -> None:
    async def body(server: TrackerServer) -> None:
        tracker = HttpTracker([base(server)])
        task = TaskId(b"\x05" * 20)
        bad = PeerId.generate()
        await tracker.announce(task, Progress(bad, 7009, left_bytes=0))
        await tracker.report_error(
            task, PeerId.generate(), PeerAddress("127.0.0.1", 7009, bad.raw), "bad_piece"
        )
        assert server.swarm.reports_total == 1
        await tracker.close()

    run_with_tracker(body)


def test_with_the_secret_manifests_are_believed_only_from_a_tracker_that_proves_it(
    tmp_path: Path,
) -> None:
    secret_file = tmp_path / "secret"
    secret_file.write_text("a-cluster-secret-of-some-length")
    secret = b"a-cluster-secret-of-some-length"
    task = TaskId(b"\x04" * 20)
    doc = TaskManifestDoc("http://origin/f", 2 * PIECE, PIECE, (None, None))

    async def with_the_secret(server: TrackerServer) -> None:
        tracker = HttpTracker([base(server)], secret=secret)
        assert await tracker.get_manifest(task) is None  # a proven 404
        stored = await tracker.put_manifest(task, doc)
        assert stored.total_length == 2 * PIECE
        assert (await tracker.get_manifest(task)) == stored
        outsider = HttpTracker([base(server)], secret=b"another-secret-another-secret")
        with pytest.raises(TrackerRefused):
            await outsider.get_manifest(task)
        await tracker.close()
        await outsider.close()

    async def without_it(server: TrackerServer) -> None:
        tracker = HttpTracker([base(server)], secret=secret)
        with pytest.raises(TrackerRefused, match="without the cluster secret's proof"):
            await tracker.get_manifest(task)
        await tracker.close()

    run_with_tracker(with_the_secret, secret_file=str(secret_file))
    run_with_tracker(without_it)


def test_an_announce_waits_for_the_one_under_way_so_neither_is_a_replay(tmp_path: Path) -> None:
    """``completed`` said while the periodic announce is under way: with the cluster secret
    both must be accepted. The first goes through a relay that holds the first connection's
    bytes a moment (a busy path); had the second gone at once, over a second connection, its
    larger ``df_seq`` would reach the tracker first and make the first a replay (seen with 200
    clients on a busy tracker: a ``completed`` could be lost so)."""
    secret_file = tmp_path / "secret"
    secret_file.write_text("a-cluster-secret-of-some-length")
    secret = b"a-cluster-secret-of-some-length"

    async def body(server: TrackerServer) -> None:
        connections = 0

        async def pipe(
            reader: asyncio.StreamReader, writer: asyncio.StreamWriter, hold_s: float
        ) -> None:
            with contextlib.suppress(OSError):
                while data := await reader.read(65536):
                    await asyncio.sleep(hold_s)
                    hold_s = 0.0
                    writer.write(data)
                    await writer.drain()
            writer.close()

        handlers: list[asyncio.Future[Any]] = []

        async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            nonlocal connections
            connections += 1
            hold_s = 0.3 if connections == 1 else 0.0
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", server.port)
            both = asyncio.gather(pipe(reader, up_writer, hold_s), pipe(up_reader, writer, 0.0))
            handlers.append(both)
            await both
            for end in (writer, up_writer):
                with contextlib.suppress(OSError):
                    await end.wait_closed()

        relay_server = await asyncio.start_server(relay, "127.0.0.1", 0)
        port = relay_server.sockets[0].getsockname()[1]
        tracker = HttpTracker([f"http://127.0.0.1:{port}"], secret=secret)
        task = TaskId(b"\x05" * 20)
        peer = PeerId.generate()
        results = await asyncio.gather(
            tracker.announce(task, Progress(peer, 7001, left_bytes=100), "started"),
            tracker.announce(task, Progress(peer, 7001, left_bytes=0), "completed"),
            return_exceptions=True,
        )
        assert [r for r in results if isinstance(r, BaseException)] == []
        await tracker.close()  # its connections close: the relay's pipes end
        await asyncio.wait_for(asyncio.gather(*handlers, return_exceptions=True), 10)
        relay_server.close()
        await relay_server.wait_closed()

    run_with_tracker(body, secret_file=str(secret_file))
