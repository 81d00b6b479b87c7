"""A hostile peer for tests: it announces itself as a seed of a task and misbehaves.

    python -m tests.helpers.bad_peer --tracker http://127.0.0.1:PORT --url URL --source FILE
    python -m tests.helpers.bad_peer ... --mode trickle     # honest bytes at 2 KiB/s

``corrupt`` (the default) serves corrupt bytes; ``trickle`` serves the right bytes but so slowly
that a downloader must route around it (request timeouts, other peers, endgame).

It reads the task's manifest from the tracker (an honest peer must have made it), writes a copy
of FILE with one byte flipped in every piece, and serves that copy under the honest digests
(``PieceStore.open_complete`` does not re-verify), announcing ``left=0`` every second so
downloaders find it. Prints ``listening HOST:PORT`` once it is announced; stops on SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import uvloop

from dfget.coordinators.http import HttpTracker
from dfget.identity import task_id_for
from peerwire.bitfield import Bitfield
from peerwire.connection import PeerListener, single_task_router
from peerwire.coordination import Progress
from peerwire.digests import DigestBook
from peerwire.ids import PeerId
from peerwire.manifest import Manifest
from peerwire.ratelimit import TokenBucket
from peerwire.shell import open_task
from peerwire.storage import PieceStore


async def run(args: argparse.Namespace) -> None:
    task_id = task_id_for(args.url)
    tracker = HttpTracker([args.tracker])
    doc = None
    for _ in range(100):
        doc = await tracker.get_manifest(task_id)
        if doc is not None and None not in doc.piece_sha256:
            break
        await asyncio.sleep(0.2)
    if doc is None or None in doc.piece_sha256:
        raise SystemExit("bad_peer: the tracker has no complete manifest for the task")
    manifest = Manifest(task_id, doc.total_length, doc.piece_length, doc.piece_sha256, doc.url)
    data = bytearray(Path(args.source).read_bytes())
    if args.mode == "corrupt":
        for offset in range(0, len(data), doc.piece_length):
            data[offset] ^= 0xFF
    with tempfile.TemporaryDirectory() as tmp:
        corrupt = Path(tmp) / "corrupt.bin"
        corrupt.write_bytes(data)
        store = PieceStore.open_complete(corrupt, manifest)
        peer_id = PeerId.generate(b"-BAD001-")
        loop = asyncio.get_running_loop()
        upload = TokenBucket(2048, clock=loop.time) if args.mode == "trickle" else None
        task = open_task(
            store,
            DigestBook(manifest.num_pieces, manifest.piece_sha256),
            peer_id=peer_id,
            executor=ThreadPoolExecutor(1),
            upload_bucket=upload,
        )
        listener = PeerListener(single_task_router(task))
        _, port = await listener.start("127.0.0.1", 0)
        task.start()
        have = Bitfield.full(manifest.num_pieces).to_bytes()
        progress = Progress(peer_id, port, left_bytes=0, have=have, can_source=False)
        await tracker.announce(task_id, progress, "started")
        print(f"listening 127.0.0.1:{port}", flush=True)
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), 1.0)
            except TimeoutError:
                await tracker.announce(task_id, progress)
        await task.close()
        await listener.close()
        store.close()
        await tracker.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tracker", required=True)
    parser.add_argument("--url", required=True)
    parser.add_argument("--source", required=True)
    parser.add_argument("--mode", choices=("corrupt", "trickle"), default="corrupt")
    uvloop.run(run(parser.parse_args()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
