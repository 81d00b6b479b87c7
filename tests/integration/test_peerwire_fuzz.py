"""Hostile bytes against a live seed process: every connection ends cleanly, the seed stays
healthy, its memory stays bounded, and an honest peer still gets a bit-exact copy.

Hypothesis drives the inputs: framed messages with any id and payload (oversized lengths,
unknown ids, requests out of range or too large, bitfields with spare bits set), raw garbage,
request floods and half-open connections, each after a valid handshake for the seed's task.
"""

from __future__ import annotations

import os
import socket
import struct
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from peerwire import messages as m
from peerwire.ids import PeerId
from peerwire.manifest import Manifest
from tests.integration.peers import Seed, fetch, file_digest, random_file, seed

pytestmark = pytest.mark.integration

MIB = 1 << 20
PIECE = 64 * 1024
#: The seed's resident memory may grow by at most this much over the whole fuzzing run.
RSS_GROWTH_LIMIT_BYTES = 64 * MIB


@pytest.fixture(scope="module")
def live_seed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Seed, Path, Path]]:
    root = tmp_path_factory.mktemp("fuzz")
    source = random_file(root / "source.bin", 4 * MIB)
    manifest = root / "task.json"
    with seed(source, "--manifest-out", str(manifest), "--piece-length", str(PIECE)) as running:
        yield running, source, manifest


def frame(message_id: int, payload: bytes) -> bytes:
    return struct.pack(">IB", 1 + len(payload), message_id) + payload


u32 = st.integers(0, 2**32 - 1)
framed = st.one_of(
    # any id, any small payload
    st.builds(frame, st.integers(0, 255), st.binary(max_size=64)),
    # requests: in range, out of range, huge lengths
    st.builds(
        lambda i, b, n: frame(m.MessageId.REQUEST, struct.pack(">III", i, b, n)), u32, u32, u32
    ),
    st.builds(lambda i: frame(m.MessageId.HAVE, struct.pack(">I", i)), u32),
    # bitfields of every length, spare bits set
    st.builds(lambda bits: frame(m.MessageId.BITFIELD, bits), st.binary(max_size=40)),
    # a length prefix that promises more than anyone should accept
    st.builds(
        lambda n, i: struct.pack(">IB", n, i), st.integers(2**20, 2**32 - 1), st.integers(0, 30)
    ),
    st.binary(min_size=1, max_size=256),  # raw garbage
)


def talk(live: Seed, handshake: bytes, payload: bytes, *, half_open: bool = False) -> None:
    """Send ``payload`` after ``handshake``; read until the seed closes or goes quiet."""
    with socket.create_connection((live.host, live.port), timeout=10) as sock:
        sock.sendall(handshake + payload)
        if half_open:
            sock.shutdown(socket.SHUT_WR)
        sock.settimeout(0.3)
        try:
            while sock.recv(65536):
                pass
        except (TimeoutError, ConnectionResetError):
            pass  # still open (quiet) or reset: both fine, the seed decides


@settings(
    max_examples=80,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(messages=st.lists(framed, min_size=1, max_size=12), half_open=st.booleans())
def test_fuzzed_messages_never_hurt_the_seed(
    live_seed: tuple[Seed, Path, Path], messages: list[bytes], half_open: bool
) -> None:
    live, _, manifest_path = live_seed
    task_id = Manifest.from_json(manifest_path.read_bytes()).task_id
    handshake = m.encode_handshake(
        m.Handshake(m.reserved_with(m.FAST_EXTENSION_BIT), task_id, PeerId.generate())
    )
    talk(live, handshake, b"".join(messages), half_open=half_open)
    assert live.process.poll() is None, "the seed died"


def test_request_flood_is_bounded_and_the_seed_still_serves(
    live_seed: tuple[Seed, Path, Path], tmp_path: Path
) -> None:
    live, source, manifest_path = live_seed
    manifest = Manifest.from_json(manifest_path.read_bytes())
    process = psutil.Process(live.process.pid)
    rss_before = process.memory_info().rss
    handshake = m.encode_handshake(
        m.Handshake(m.reserved_with(m.FAST_EXTENSION_BIT), manifest.task_id, PeerId.generate())
    )
    flood = frame(m.MessageId.INTERESTED, b"") + b"".join(
        frame(m.MessageId.REQUEST, struct.pack(">III", i % manifest.num_pieces, 0, 16384))
        for i in range(20_000)
    )
    for _ in range(3):
        talk(live, handshake, flood)
    # Several connections that never finish their handshake.
    silent = [socket.create_connection((live.host, live.port), timeout=10) for _ in range(20)]
    for sock in silent:
        sock.sendall(os.urandom(10))
    output = tmp_path / "honest.bin"
    summary = fetch(manifest_path, output, [live.address])
    for sock in silent:
        sock.close()
    assert summary["returncode"] == 0, summary["stderr"]
    assert file_digest(output) == file_digest(source)
    assert live.process.poll() is None
    growth = process.memory_info().rss - rss_before
    assert growth < RSS_GROWTH_LIMIT_BYTES, f"seed grew by {growth / MIB:.0f} MiB"
