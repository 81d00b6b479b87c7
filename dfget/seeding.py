"""Seeding a finished file: dfdaemon's cache after a restart keeps serving the swarm."""

from __future__ import annotations

import asyncio
import logging
import math
from concurrent.futures import ThreadPoolExecutor

from dfget.coordinators.choose import coordinator_for
from dfget.host import Host, bucket, seed_for
from dfget.options import DownloadOptions
from dfget.swarmclient import SwarmClient
from peerwire.connection import PeerListener, single_task_router
from peerwire.coordination import TaskManifestDoc
from peerwire.digests import DigestBook
from peerwire.ids import PeerId
from peerwire.manifest import Manifest
from peerwire.shell import open_task
from peerwire.storage import PieceStore

log = logging.getLogger(__name__)


async def seed_file(
    options: DownloadOptions,
    manifest: Manifest,
    *,
    validator: str | None = None,
    ranges: bool = True,
    host: Host | None = None,
) -> None:
    """Serve a complete, verified file (``options.output``) to the swarm until cancelled.

    dfdaemon's cache after a restart: the file was verified when it was finalized, so it is
    opened without re-hashing, announced as a seed, and its manifest supplied to a tracker that
    lost it. Without trackers there is nobody to serve: it returns at once.
    """
    host = host or Host()
    coordinator = coordinator_for(options, host)
    if coordinator is None:
        return
    loop = asyncio.get_running_loop()
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dfget-seed")
    store = await loop.run_in_executor(
        executor, lambda: PieceStore.open_complete(options.output, manifest)
    )
    shell = open_task(
        store,
        DigestBook(manifest.num_pieces, manifest.piece_sha256),
        peer_id=PeerId.generate(),
        executor=executor,
        secret=options.secret,
        download_bucket=bucket(None, host.download, loop.time),
        upload_bucket=bucket(options.upload_rate_bps, host.upload, loop.time),
    )
    doc = TaskManifestDoc(
        url=options.url,
        total_length=manifest.total_length,
        piece_length=manifest.piece_length,
        piece_sha256=manifest.piece_sha256,
        validator=validator,
        ranges=ranges,
    )
    client = SwarmClient(
        shell,
        coordinator,
        manifest_doc=lambda: doc,
        on_refused=lambda reason: log.warning("the tracker refused the seed: %s", reason),
        on_conflict=lambda exc: log.warning("manifest conflict while seeding: %s", exc),
    )
    shell.on_command = client.handle
    listener: PeerListener | None = None
    try:
        if host.listener is not None:
            host.listener.add(shell)
            port = host.listener.port
        else:
            listener = PeerListener(single_task_router(shell))
            _, port = await listener.start(options.peer_host, options.peer_port)
        shell.core.swarm.port, shell.core.swarm.zone = port, options.zone
        shell.start()
        client.start()
        await seed_for(math.inf)
    finally:
        try:
            await client.close()
            await shell.close()
            if listener is not None:
                await listener.close()
            elif host.listener is not None:
                host.listener.remove(shell)
        finally:
            store.close()
            await coordinator.close()
            executor.shutdown(wait=False)
