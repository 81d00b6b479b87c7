"""With a cluster secret, only peers that hold it join the swarm or change a manifest."""

from __future__ import annotations

import json
import os
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from dfget.identity import task_id_for
from peerwire import messages as m
from peerwire.decoder import NEED_DATA, Decoder
from peerwire.ids import PeerId, TaskId
from tests.helpers.origin_server import origin_process
from tests.integration.peers import random_file
from tests.integration.test_dfget import dfget, finish, sha256
from tests.integration.trackers import Tracker, tracker_process

pytestmark = pytest.mark.integration

MIB = 1 << 20
SECRET = "a-cluster-secret-of-some-length"


def intrude(host: str, port: int, task: str, reserved: bytes, proof: bytes | None) -> list[object]:
    """Handshake with a member as an outsider (optionally sending ``proof``); every message the
    member sent before closing the connection."""
    decoder = Decoder()
    with socket.create_connection((host, port), timeout=10) as sock:
        sock.sendall(
            m.encode_handshake(m.Handshake(reserved, TaskId.from_hex(task), PeerId.generate()))
        )
        if proof is not None:
            sock.sendall(m.encode(m.AuthProof(proof)))
        sock.settimeout(10)
        while chunk := sock.recv(65536):
            decoder.receive_data(chunk)
    events = []
    while (event := decoder.next_event()) is not NEED_DATA:
        events.append(event)
    return events


def peers_of(tracker: Tracker, task: str) -> list[str]:
    tasks = tracker.stats(task=task)["tasks"]
    return [peer["id"] for peer in tasks[0]["peer_list"]] if tasks else []


def test_only_peers_with_the_secret_join_and_nobody_else_writes_manifests(
    tmp_path: Path,
) -> None:
    root = tmp_path / "origin"
    root.mkdir()
    source = random_file(root / "file.bin", 4 * MIB)
    secret_file = tmp_path / "secret"
    secret_file.write_text(SECRET)
    with (
        origin_process(root) as origin,
        tracker_process("--interval", "1s", "--secret-file", str(secret_file)) as tracker,
    ):
        url = f"{origin.base_url}/files/file.bin"
        task = task_id_for(url).hex()
        member = dfget(
            url,
            tmp_path / "member.bin",
            "--tracker",
            tracker.base_url,
            "--seed-time",
            "30s",
            secret=SECRET,
        )
        try:
            # The member joins and publishes the manifest.
            for _ in range(100):
                if peers_of(tracker, task):
                    break
                time.sleep(0.1)
            assert len(peers_of(tracker, task)) == 1
            # An outsider is refused by the tracker: it never joins the swarm (so it learns no
            # peers) and falls back to the origin, which it may use like any HTTP client.
            code, err = finish(
                dfget(
                    url,
                    tmp_path / "outsider.bin",
                    "--tracker",
                    tracker.base_url,
                    "--seed-time",
                    "0s",
                    "-v",
                ),
                60,
            )
            assert code == 0, err
            assert "refused" in err
            assert sha256(tmp_path / "outsider.bin") == sha256(source)
            assert len(peers_of(tracker, task)) == 1
            # ... and cannot poison the manifest.
            before = json.loads(tracker.get(f"/tasks/{task}"))
            body = json.dumps({"piece_sha256": {"0": "00" * 32}}).encode()
            put = urllib.request.Request(f"{tracker.base_url}/tasks/{task}", body, method="PUT")
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(put, timeout=10)
            assert refused.value.code == 403
            refused.value.close()
            assert json.loads(tracker.get(f"/tasks/{task}")) == before
            # Knowing the member's address (``/stats`` is open) is not enough to get pieces:
            # without the AUTH bit, or with a wrong proof, the member closes the connection
            # before sending a single message about its pieces.
            address = tracker.stats(task=task)["tasks"][0]["peer_list"][0]["address"]
            host, port = address.rsplit(":", 1)
            for reserved, proof in (
                (m.reserved_with(m.FAST_EXTENSION_BIT), None),
                (m.reserved_with(m.FAST_EXTENSION_BIT, m.AUTH_BIT), os.urandom(32)),
            ):
                received = intrude(host, int(port), task, reserved, proof)
                assert not any(
                    isinstance(event, m.Bitfield | m.HaveAll | m.Piece) for event in received
                ), received
            # A second member with the secret joins and completes through the swarm.
            code, err = finish(
                dfget(
                    url,
                    tmp_path / "second.bin",
                    "--tracker",
                    tracker.base_url,
                    "--seed-time",
                    "0s",
                    secret=SECRET,
                ),
                60,
            )
            assert code == 0, err
            assert sha256(tmp_path / "second.bin") == sha256(source)
        finally:
            member.terminate()
            member.communicate(timeout=30)
