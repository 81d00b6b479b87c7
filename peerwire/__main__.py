"""``python -m peerwire``: a bare peer, for the demo, the integration tests and the benchmarks.

Two verbs, no tracker: ``seed FILE`` serves a file (and writes its manifest); ``fetch`` downloads
it from peers named on the command line, verifying every piece. ``dfget`` is the user's command;
this is the peer wire on its own.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import signal
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

import uvloop

from peerwire.connection import PeerListener, single_task_router
from peerwire.digests import DigestBook
from peerwire.ids import PeerId
from peerwire.layout import block_bytes_for_rate, choose_piece_length
from peerwire.manifest import Manifest, build_manifest
from peerwire.ratelimit import TokenBucket
from peerwire.shell import TaskShell, open_task
from peerwire.storage import PieceStore
from peerwire.units import format_rate, format_size, parse_duration, parse_rate, parse_size
from peerwire.wireconfig import WireConfig

log = logging.getLogger("peerwire")

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


def _address(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


def _rate(text: str) -> float:
    try:
        return parse_rate(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _duration(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _size(text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m peerwire",
        description="A bare peer-wire peer: seed a file, or fetch it from named peers.",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv)")
    verbs = parser.add_subparsers(dest="verb", required=True)

    seed = verbs.add_parser(
        "seed",
        help="serve FILE to peers",
        description="Hash FILE into a manifest, listen, and serve its pieces until interrupted. "
        "Prints 'listening HOST:PORT' on stdout once ready. "
        "Example: python -m peerwire seed big.iso --manifest-out big.json",
    )
    seed.add_argument("file", type=Path)
    seed.add_argument(
        "--listen",
        type=_address,
        default=("127.0.0.1", 0),
        metavar="HOST:PORT",
        help="address to listen on (default 127.0.0.1:0, a free port)",
    )
    seed.add_argument(
        "--piece-length",
        type=_size,
        metavar="SIZE",
        help="piece size, e.g. 4M (default: chosen from the file size)",
    )
    seed.add_argument(
        "--manifest",
        type=Path,
        metavar="PATH",
        help="serve under this existing manifest instead of hashing FILE "
        "(the file is not checked against it: pieces are verified by the fetcher)",
    )
    seed.add_argument(
        "--manifest-out",
        type=Path,
        metavar="PATH",
        help="write the manifest (JSON) here for fetchers",
    )
    seed.add_argument(
        "--upload-rate",
        type=_rate,
        metavar="RATE",
        help="upload limit, e.g. 20M (MiB/s) or 160mbit (default: none)",
    )

    fetch = verbs.add_parser(
        "fetch",
        help="download from peers",
        description="Download the task a manifest describes from the given peers, verifying "
        "each piece; OUT appears only complete. An interrupted fetch resumes. "
        "Example: python -m peerwire fetch --manifest big.json --peer 127.0.0.1:6881 -O big.iso",
    )
    fetch.add_argument(
        "--manifest",
        type=Path,
        required=True,
        metavar="PATH",
        help="the task's manifest (JSON, as written by seed --manifest-out)",
    )
    fetch.add_argument(
        "--peer",
        type=_address,
        action="append",
        required=True,
        metavar="HOST:PORT",
        help="a peer to download from (repeatable)",
    )
    fetch.add_argument(
        "-O",
        "--output",
        type=Path,
        required=True,
        metavar="PATH",
        help="where the verified file appears (PATH.dfpart and PATH.dfpart.pieces meanwhile)",
    )
    fetch.add_argument("--rate", type=_rate, metavar="RATE", help="download limit, e.g. 20M")
    fetch.add_argument(
        "--listen",
        type=_address,
        metavar="HOST:PORT",
        help="also accept peers here while downloading",
    )
    fetch.add_argument(
        "--timeout",
        type=_duration,
        default=600.0,
        metavar="DURATION",
        help="give up after this long, e.g. 90s or 10m (default 10m)",
    )
    fetch.add_argument(
        "--preallocate",
        action="store_true",
        help="reserve the file's blocks before downloading (default: a sparse file, after "
        "checking the free space)",
    )
    fetch.add_argument(
        "--linger",
        type=_duration,
        default=0.0,
        metavar="DURATION",
        help="keep serving the finished file to peers this long, e.g. 30s (default 0)",
    )
    fetch.add_argument(
        "--json", action="store_true", help="print a JSON summary on stdout at the end"
    )
    for sub in (seed, fetch):
        sub.add_argument(
            "--block-size",
            type=_size,
            metavar="SIZE",
            help="block size requested from our own peers (default 512K)",
        )
        sub.add_argument(
            "--pipeline", type=int, metavar="N", help="requests in flight per peer (default 32)"
        )
    return parser


def _wire_config(args: argparse.Namespace) -> WireConfig:
    default = WireConfig()
    rate = getattr(args, "rate", None)
    return WireConfig(
        block_bytes=args.block_size or block_bytes_for_rate(rate, largest=default.block_bytes),
        pipeline_depth=args.pipeline or default.pipeline_depth,
    )


def _start_task(
    args: argparse.Namespace,
    store: PieceStore,
    executor: ThreadPoolExecutor,
    *,
    download_rate_bps: float | None = None,
    upload_rate_bps: float | None = None,
) -> TaskShell:
    clock = asyncio.get_running_loop().time
    task = open_task(
        store,
        DigestBook(store.manifest.num_pieces, store.manifest.piece_sha256),
        peer_id=PeerId.generate(),
        executor=executor,
        config=_wire_config(args),
        download_bucket=TokenBucket(download_rate_bps, clock=clock) if download_rate_bps else None,
        upload_bucket=TokenBucket(upload_rate_bps, clock=clock) if upload_rate_bps else None,
    )
    task.start()
    return task


async def _wait_for_signal() -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


async def seed(args: argparse.Namespace, executor: ThreadPoolExecutor) -> int:
    loop = asyncio.get_running_loop()
    if args.manifest is not None:
        manifest = Manifest.from_json(args.manifest.read_bytes())
    else:
        piece_length = args.piece_length or choose_piece_length(args.file.stat().st_size)
        manifest = await loop.run_in_executor(executor, build_manifest, args.file, piece_length)
    if args.manifest_out is not None:
        args.manifest_out.write_text(manifest.to_json())
    store = PieceStore.open_complete(args.file, manifest)
    task = _start_task(args, store, executor, upload_rate_bps=args.upload_rate)
    listener = PeerListener(single_task_router(task))
    host, port = await listener.start(*args.listen)
    print(f"listening {host}:{port}", flush=True)
    log.info(
        "seeding %s (%s, %d pieces) as task %s",
        args.file,
        format_size(manifest.total_length),
        manifest.num_pieces,
        manifest.task_id,
    )
    try:
        await _wait_for_signal()
    finally:
        await listener.close()
        await task.close()
        store.close()
    log.info("uploaded %s", format_size(task.core.stats.uploaded_bytes))
    return EXIT_OK


async def fetch(args: argparse.Namespace, executor: ThreadPoolExecutor) -> int:
    loop = asyncio.get_running_loop()
    manifest = Manifest.from_json(args.manifest.read_bytes())
    store = await loop.run_in_executor(
        executor, partial(PieceStore.create, preallocate=args.preallocate), args.output, manifest
    )
    pieces_at_start = len(store.have)
    started = time.monotonic()
    task = _start_task(args, store, executor, download_rate_bps=args.rate)
    listener = None
    if args.listen:
        listener = PeerListener(single_task_router(task))
        await listener.start(*args.listen)
    ok = False
    elapsed_s = 0.0
    try:
        results = await asyncio.gather(
            *(task.connect(h, p) for h, p in args.peer), return_exceptions=True
        )
        for (host, port), result in zip(args.peer, results, strict=True):
            if isinstance(result, BaseException):
                log.warning("cannot connect to %s:%d: %s", host, port, result)
        await asyncio.wait_for(asyncio.shield(task.completed), args.timeout)
        await loop.run_in_executor(executor, store.finalize)
        ok = True
        elapsed_s = time.monotonic() - started
        if args.linger > 0:
            await asyncio.sleep(args.linger)
    except TimeoutError:
        log.error(
            "timed out after %.0fs with %d of %d pieces",
            args.timeout,
            len(store.have),
            manifest.num_pieces,
        )
    except OSError as exc:
        log.error("download failed: %s", exc)
    finally:
        if listener is not None:
            await listener.close()
        await task.close()
        store.close()
    if not ok:
        elapsed_s = time.monotonic() - started
    stats = task.core.stats
    summary = {
        "ok": ok,
        "peer_id": str(task.peer_id),
        "output": str(args.output),
        "bytes": manifest.total_length if ok else stats.downloaded_bytes,
        "elapsed_s": round(elapsed_s, 4),
        "rate_bps": round(manifest.total_length / elapsed_s) if ok else None,
        "pieces": manifest.num_pieces,
        "pieces_at_start": pieces_at_start,
        "downloaded_bytes": stats.downloaded_bytes,
        "pieces_failed": stats.pieces_failed,
        "peers_banned": stats.peers_banned,
        "wasted_bytes": stats.wasted_bytes,
        "uploaded_bytes": stats.uploaded_bytes,
        "bytes_from_peer": stats.bytes_from_peer,
    }
    if args.json:
        print(json.dumps(summary), flush=True)
    if ok:
        print(
            f"fetched {format_size(manifest.total_length)} in {elapsed_s:.2f}s "
            f"({format_rate(manifest.total_length / elapsed_s)}), "
            f"{stats.pieces_failed} pieces failed verification",
            file=sys.stderr,
        )
        return EXIT_OK
    return EXIT_FAILED


async def _main(args: argparse.Namespace) -> int:
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="peerwire-io") as executor:
        if args.verb == "seed":
            return await seed(args, executor)
        return await fetch(args, executor)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    level = [logging.WARNING, logging.INFO, logging.DEBUG][min(args.verbose, 2)]
    logging.basicConfig(level=level, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    # Objects made so far (modules, classes) live as long as the process: keep them out of
    # the collector's full passes, which otherwise show up in profiles of the receive path.
    gc.freeze()
    try:
        return uvloop.run(_main(args))
    except KeyboardInterrupt:
        return 130
    except (OSError, ValueError) as exc:
        print(f"peerwire: {exc}", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
