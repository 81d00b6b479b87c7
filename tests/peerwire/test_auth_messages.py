"""The cluster-secret exchange on the wire: AuthChallenge / AuthProof and the proof itself."""

from __future__ import annotations

import struct

import pytest

from peerwire import messages as m
from peerwire.auth import auth_proof
from peerwire.decoder import NEED_DATA, Decoder
from peerwire.errors import LocalProtocolError, ProtocolError
from peerwire.ids import PeerId, TaskId


def decode(data: bytes) -> list[object]:
    decoder = Decoder(expect_handshake=False)
    decoder.receive_data(data)
    events = []
    while (event := decoder.next_event()) is not NEED_DATA:
        events.append(event)
    return events


def test_challenge_and_proof_round_trip_byte_exact() -> None:
    nonce, mac = bytes(range(16)), bytes(range(32))
    wire = m.encode(m.AuthChallenge(nonce)) + m.encode(m.AuthProof(mac))
    assert wire[:5] == struct.pack(">IB", 17, 0x1E)
    assert decode(wire) == [m.AuthChallenge(nonce), m.AuthProof(mac)]


@pytest.mark.parametrize(("message_id", "size"), [(0x1E, 15), (0x1E, 17), (0x1F, 31), (0x1F, 33)])
def test_wrong_lengths_are_protocol_errors(message_id: int, size: int) -> None:
    with pytest.raises(ProtocolError):
        decode(struct.pack(">IB", 1 + size, message_id) + bytes(size))


def test_we_refuse_to_encode_a_malformed_exchange() -> None:
    with pytest.raises(LocalProtocolError):
        m.encode(m.AuthChallenge(b"short"))
    with pytest.raises(LocalProtocolError):
        m.encode(m.AuthProof(b"short"))


def test_the_proof_binds_secret_task_nonce_and_prover() -> None:
    task, peer, nonce = TaskId(b"T" * 20), PeerId(b"P" * 20), b"N" * 16
    proof = auth_proof(b"secret-secret-secret", task, nonce, peer)
    assert len(proof) == 32
    assert proof != auth_proof(b"other-secret-other!", task, nonce, peer)
    assert proof != auth_proof(b"secret-secret-secret", TaskId(b"U" * 20), nonce, peer)
    assert proof != auth_proof(b"secret-secret-secret", task, b"M" * 16, peer)
    assert proof != auth_proof(b"secret-secret-secret", task, nonce, PeerId(b"Q" * 20))
