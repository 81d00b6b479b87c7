"""dfdaemon's cache on disk: one directory per task, and which tasks garbage collection removes.

Layout (every directory the daemon creates 0700 and every file 0600, or 0750 and 0640 and
group-owned with ``--cache-group``: the cache may hold private blobs; a directory that already
existed is left as it was)::

    CACHE_DIR/<40 hex task id>/data            the file (data.dfpart while downloading)
    CACHE_DIR/<40 hex task id>/meta.json       url, manifest (every digest), validator, times

Directory names are always the task id in hex, never a name from a request, so nothing a client
sends can steer a path. ``plan_eviction`` is the pure policy: a finished task unused for the TTL
goes; then least recently used finished tasks go until the cache fits its quota; a task being
downloaded or read (``busy``) never goes.
"""

from __future__ import annotations

import grp
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from peerwire.ids import TaskId
from peerwire.manifest import Manifest
from peerwire.storagefile import FilePolicy

log = logging.getLogger(__name__)

DATA_NAME = "data"
META_NAME = "meta.json"


@dataclass
class CacheEntry:
    task_id: TaskId
    directory: Path
    url: str
    size_bytes: int
    complete: bool
    last_access_s: float
    #: Downloads and exports in progress: never evicted while above zero.
    busy: int = 0
    manifest: Manifest | None = None
    validator: str | None = None
    ranges: bool = True

    @property
    def data_path(self) -> Path:
        return self.directory / DATA_NAME

    def disk_bytes(self) -> int:
        """What the entry occupies now (a partial file counts what it holds so far)."""
        total = 0
        for child in self.directory.iterdir() if self.directory.exists() else ():
            try:
                total += child.stat().st_blocks * 512
            except OSError:
                continue
        return total


def plan_eviction(
    entries: list[CacheEntry], *, now_s: float, ttl_s: float, quota_bytes: int
) -> list[CacheEntry]:
    """Which entries to remove, in order: expired idle ones, then LRU over the quota. Idle: not
    being downloaded or read (a partial left by an interrupted download is idle too)."""
    idle = [e for e in entries if e.busy == 0]
    expired = [e for e in idle if now_s - e.last_access_s > ttl_s]
    chosen = {id(e) for e in expired}
    total = sum(e.size_bytes for e in entries if id(e) not in chosen)
    plan = sorted(expired, key=lambda e: e.last_access_s)
    for entry in sorted(idle, key=lambda e: e.last_access_s):
        if total <= quota_bytes:
            break
        if id(entry) in chosen:
            continue
        chosen.add(id(entry))
        plan.append(entry)
        total -= entry.size_bytes
    return plan


@dataclass(frozen=True, slots=True)
class CacheModes:
    """The modes and group of what the daemon creates: owner-only, or readable by ``gid``."""

    gid: int | None = None

    @property
    def files(self) -> FilePolicy:
        return FilePolicy(0o600 if self.gid is None else 0o640, self.gid)

    @property
    def dir_mode(self) -> int:
        return 0o700 if self.gid is None else 0o750

    def make_dir(self, path: Path) -> None:
        """Create ``path`` and its missing parents with ``dir_mode`` (and the group); a
        directory that exists already is left as it is (``--cache-dir /tmp`` keeps /tmp's)."""
        missing: list[Path] = []
        while not path.exists():
            missing.append(path)
            if path.parent == path:
                break
            path = path.parent
        for directory in reversed(missing):
            try:
                os.mkdir(directory, self.dir_mode)
            except FileExistsError:
                continue  # made meanwhile by someone else: theirs
            os.chmod(directory, self.dir_mode)  # the umask may have taken bits the mode asked for
            if self.gid is not None:
                os.chown(directory, -1, self.gid)


def group_id(group: str) -> int:
    """The id of ``group`` (a name or a number); ValueError when there is no such group."""
    if group.isdigit():
        return int(group)
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        raise ValueError(f"no such group: {group!r}") from None


def entry_dir(cache_dir: Path, task_id: TaskId) -> Path:
    return cache_dir / task_id.hex()


def write_meta(entry: CacheEntry, files: FilePolicy) -> None:
    """Record a finished entry (atomically) so a restarted daemon keeps and seeds it."""
    assert entry.manifest is not None
    document = {
        "url": entry.url,
        "manifest": json.loads(entry.manifest.to_json()),
        "validator": entry.validator,
        "ranges": entry.ranges,
        "last_access_s": entry.last_access_s,
    }
    path = entry.directory / META_NAME
    scratch = path.with_name(path.name + ".tmp")
    fd = files.open(scratch, os.O_WRONLY | os.O_TRUNC)
    with os.fdopen(fd, "w") as stream:
        json.dump(document, stream)
    os.replace(scratch, path)


def load_entries(cache_dir: Path) -> list[CacheEntry]:
    """Entries found on disk: finished ones (seeded again), and partial ones (a download of the
    same task resumes them; GC removes them when unused). Anything unreadable is removed."""
    entries: list[CacheEntry] = []
    if not cache_dir.exists():
        return entries
    for directory in sorted(cache_dir.iterdir()):
        try:
            task_id = TaskId.from_hex(directory.name)
        except ValueError:
            continue  # not ours: leave it alone
        partial = directory / (DATA_NAME + ".dfpart")
        if not (directory / META_NAME).exists() and partial.exists():
            entries.append(
                CacheEntry(
                    task_id=task_id,
                    directory=directory,
                    url="",
                    size_bytes=partial.stat().st_blocks * 512,
                    complete=False,
                    last_access_s=partial.stat().st_mtime,
                )
            )
            continue
        try:
            document: dict[str, Any] = json.loads((directory / META_NAME).read_text())
            manifest = Manifest.from_json(json.dumps(document["manifest"]))
            size = (directory / DATA_NAME).stat().st_size
            if manifest.task_id != task_id or size != manifest.total_length:
                raise ValueError("data and metadata disagree")
            entries.append(
                CacheEntry(
                    task_id=task_id,
                    directory=directory,
                    url=str(document["url"]),
                    size_bytes=size,
                    complete=True,
                    last_access_s=float(document["last_access_s"]),
                    manifest=manifest,
                    validator=document.get("validator"),
                    ranges=bool(document.get("ranges", True)),
                )
            )
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.info("cache: dropping %s (%s)", directory.name, exc)
            shutil.rmtree(directory, ignore_errors=True)
    return entries


def remove_entry(entry: CacheEntry) -> None:
    shutil.rmtree(entry.directory, ignore_errors=True)
