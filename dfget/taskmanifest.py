"""Step 2 of a download: the task's manifest (geometry, validator, the digests known so far).

The coordinator's, when it has one. Otherwise this peer describes the task from what it knows
of the origin (a probe, or what the caller learnt already: a registry's HEAD of a blob) and
offers that; when several peers offer at once, the first the coordinator took is the task's.
With back-to-source disabled and no manifest anywhere yet, only the swarm can tell the size:
it waits for one. Also the digests a peer saves beside its partial file, for a resume.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from dfget.errors import NoPeers, OriginChanged, OriginError
from dfget.identity import normalize_url
from dfget.options import DownloadOptions, OriginInfo
from dfget.origin import Origin
from peerwire.coordination import (
    Coordinator,
    PeerAddress,
    TaskManifestDoc,
    TrackerError,
    TrackerUnavailable,
)
from peerwire.digests import DigestBook, Trust
from peerwire.ids import PeerId, TaskId
from peerwire.layout import PieceLayout, choose_piece_length
from peerwire.manifest import Manifest, ManifestConflict
from peerwire.storage import DEFAULT_FILES, PARTIAL_SUFFIX, RECORD_SUFFIX, FilePolicy

log = logging.getLogger(__name__)

#: With back-to-source disabled, how long to wait for some peer to publish the manifest.
WAIT_FOR_MANIFEST_S: Final = 60.0


@dataclass(frozen=True, slots=True)
class FoundManifest:
    doc: TaskManifestDoc
    #: What to expect of the origin (the probe's answer, or the manifest's record of it).
    info: OriginInfo
    #: Why the coordinator is of no use (unreachable): the download goes to the origin alone.
    lost: str | None = None
    #: Why the coordinator's manifest is not the task's (its claimed length or version is not
    #: the origin's): the download goes to the origin alone, and the coordinator is told.
    refuted: str | None = None
    #: The origin could not be reached to check the coordinator's claims: they are believed
    #: as they are (SECURITY.md, the limits without a secret).
    unchecked: bool = False
    #: No tracker answered at the start: the download begins with its own description of
    #: the task and its share from the origin while it tries again (``dfget.outage``).
    outage: str | None = None


async def task_manifest(
    options: DownloadOptions, task_id: TaskId, coordinator: Coordinator | None, origin: Origin
) -> FoundManifest:
    """The task's manifest and what to expect from the origin; see the module docstring.
    NoPeers when back-to-source is disabled and no manifest can be had; OriginChanged when the
    origin no longer matches the task's manifest."""
    lost: str | None = None
    outage: str | None = None
    doc: TaskManifestDoc | None = None
    if coordinator is not None:
        try:
            if options.origin_info is not None and options.back_to_source:
                doc = await _offer(
                    coordinator, task_id, new_manifest(public_url(options), options.origin_info)
                )
            else:
                doc = await coordinator.get_manifest(task_id)
        except TrackerError as exc:
            outage, lost = _unreachable(options, exc)
            coordinator = None
    if doc is None and not options.back_to_source:
        doc = await _wait_for_manifest(coordinator, task_id)
    claim = coordinator is not None and not coordinator.vouched and options.back_to_source
    if doc is not None and not claim:
        expect = OriginInfo(
            url=origin.url,  # without credentials: the origin sends them itself
            total_length=doc.total_length,
            validator=doc.validator,
            accepts_ranges=doc.ranges,
        )
        return FoundManifest(doc, expect, lost)
    # Our own description of the task, or a claim to check against the origin's.
    try:
        info = options.origin_info or await origin.probe()
    except OriginError as exc:
        if doc is None or not exc.retryable:
            raise
        log.warning("the origin is unreachable (%s): the tracker's manifest is not checked", exc)
        expect = OriginInfo(origin.url, doc.total_length, doc.validator, doc.ranges)
        return FoundManifest(doc, expect, lost, unchecked=True, outage=outage)
    own = new_manifest(public_url(options), info)
    if doc is None and coordinator is not None:
        try:
            doc = await _offer(coordinator, task_id, own)
        except TrackerError as exc:
            outage, lost = _unreachable(options, exc)
    doc = doc or own
    if doc.validator != info.validator or doc.total_length != info.total_length:
        difference = (
            f"length {doc.total_length} vs the origin's {info.total_length}, "
            f"validator {doc.validator!r} vs {info.validator!r}"
        )
        if claim:
            return FoundManifest(own, info, lost, refuted=f"the tracker's manifest ({difference})")
        raise OriginChanged(f"the origin's content differs from the task's manifest ({difference})")
    return FoundManifest(doc, info, lost, outage=outage)


def public_url(options: DownloadOptions) -> str:
    """The task's URL as anyone else may see it (the tracker's manifest, /stats, a daemon's
    task list): without ``user:password`` and without the ``--filter``ed (signed) query
    parameters."""
    return normalize_url(options.url, options.filters)


async def _offer(
    coordinator: Coordinator, task_id: TaskId, doc: TaskManifestDoc
) -> TaskManifestDoc | None:
    """PUT our manifest; the answer is the task's (ours, or the one the coordinator had,
    merged: the same as a GET, so a peer that knows its origin starts one round trip sooner).
    One of other geometry (a conflict: someone else was first) is fetched instead."""
    try:
        return await coordinator.put_manifest(task_id, doc)
    except ManifestConflict:
        return await coordinator.get_manifest(task_id)


def _unreachable(options: DownloadOptions, exc: TrackerError) -> tuple[str | None, str | None]:
    """(outage, lost): no tracker reachable now is an outage to ride out (``dfget.outage``);
    a refusal loses the coordinator."""
    reason = f"tracker unreachable: {exc}"
    if isinstance(exc, TrackerUnavailable) and options.back_to_source:
        return reason, None
    return None, _lose(options, reason)


def _lose(options: DownloadOptions, reason: str) -> str:
    if not options.back_to_source:
        raise NoPeers(f"{reason}; back-to-source is disabled")
    return reason


async def _wait_for_manifest(coordinator: Coordinator | None, task_id: TaskId) -> TaskManifestDoc:
    """Back-to-source disabled and no manifest yet: only the swarm can tell the size."""
    if coordinator is None:
        raise NoPeers("no tracker reachable and back-to-source is disabled")
    deadline = time.monotonic() + WAIT_FOR_MANIFEST_S
    while time.monotonic() < deadline:
        try:
            doc = await coordinator.get_manifest(task_id)
        except TrackerError as exc:
            raise NoPeers(f"no tracker reachable and back-to-source is disabled: {exc}") from exc
        if doc is not None:
            return doc
        await asyncio.sleep(1.0)
    raise NoPeers(
        f"no peer has published this task within {WAIT_FOR_MANIFEST_S:.0f}s and back-to-source "
        "is disabled"
    )


def digests_path(output: Path) -> Path:
    return output.with_name(output.name + ".dfpart.digests")


def new_manifest(url: str, info: OriginInfo) -> TaskManifestDoc:
    """A task manifest made from the origin's description: geometry, no digests yet."""
    piece_length = choose_piece_length(info.total_length)
    return TaskManifestDoc(
        url=url,
        total_length=info.total_length,
        piece_length=piece_length,
        piece_sha256=(None,) * -(-info.total_length // piece_length),
        validator=info.validator,
        ranges=info.accepts_ranges,
    )


def load_digests(output: Path, task_id: TaskId, doc: TaskManifestDoc) -> dict[int, bytes]:
    """Digests this peer learned in an earlier, interrupted run (the engine saves them),
    when they are for the same task and geometry; they let its recorded pieces resume."""
    path = digests_path(output)
    try:
        saved = Manifest.from_json(path.read_bytes())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        log.warning("ignoring %s: %s", path, exc)
        return {}
    if (saved.task_id, saved.total_length, saved.piece_length) != (
        task_id,
        doc.total_length,
        doc.piece_length,
    ):
        return {}
    return {i: d for i, d in enumerate(saved.piece_sha256) if d is not None}


def save_digests(
    output: Path,
    task_id: TaskId,
    layout: PieceLayout,
    digests: DigestBook,
    url: str,
    files: FilePolicy = DEFAULT_FILES,
) -> None:
    """The digests learned so far, beside the partial file: an interrupted download resumes
    its recorded pieces even without a tracker. A failure to write is only logged."""
    believed = digests.snapshot(Trust.VOUCHED)  # a claim is asked for again on resume
    document = Manifest(task_id, layout.total_length, layout.piece_length, believed, url).to_json()
    path = digests_path(output)
    scratch = path.with_name(path.name + ".tmp")
    try:
        fd = files.open(scratch, os.O_WRONLY | os.O_TRUNC)
        with os.fdopen(fd, "w") as stream:
            stream.write(document)
        os.replace(scratch, path)
    except OSError as exc:
        log.warning("cannot save digests to %s: %s", path, exc)


def discard_partial(output: Path) -> None:
    """Delete what an interrupted download left beside ``output`` (partial file, its record
    and saved digests): the next run starts from nothing."""
    for suffix in (PARTIAL_SUFFIX, RECORD_SUFFIX, ".dfpart.digests"):
        output.with_name(output.name + suffix).unlink(missing_ok=True)


async def report_refuted(coordinator: Coordinator, task_id: TaskId, reason: str) -> None:
    """Tell the coordinator its manifest for the task is false (it contradicts the origin)."""
    with contextlib.suppress(TrackerError):
        await coordinator.report_error(
            task_id, PeerId.generate(), PeerAddress("", 0), f"manifest_refuted: {reason}"
        )
