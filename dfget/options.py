"""The options of one download, its progress reports, and its result: the library's vocabulary.

``dfget.download(options)`` takes a ``DownloadOptions``; the CLI builds one from flags,
``DFGET_*`` environment variables and a TOML file (``dfget/config.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from dfget.coordinators.serfoptions import SerfOptions
from peerwire.manifest import Manifest
from peerwire.storage import DEFAULT_FILES, FilePolicy

#: How long a finished download keeps seeding by default. A burst of hosts pulling the same
#: file arrives within seconds to a minute; a peer that leaves at once gives nothing back to it.
DEFAULT_SEED_TIME_S: Final = 60.0


@dataclass(frozen=True, slots=True)
class OriginInfo:
    """What is known of the origin (its probe, or a registry's HEAD): later requests go to
    ``url`` and are checked against the rest."""

    #: The final URL after redirects.
    url: str
    total_length: int
    #: A strong ETag (quoted, as sent) if any, else Last-Modified, else None.
    validator: str | None
    #: The probe got a 206 with a Content-Range.
    accepts_ranges: bool


@dataclass(frozen=True, slots=True)
class DownloadOptions:
    url: str
    output: Path
    #: Tracker base or announce URLs, tried in turn. Empty: straight to the origin.
    trackers: tuple[str, ...] = ()
    #: Decentralized mode (``--coordinator serf``): no tracker, a Serf agent's gossip; the
    #: trackers are then not used. None: the trackers (or none).
    serf: SerfOptions | None = None
    #: This task's download limit (bytes/s, peers and origin together); None = unlimited.
    rate_bps: float | None = None
    #: Upload limit (bytes/s); None = unlimited.
    upload_rate_bps: float | None = None
    #: Expected sha256 of the whole file; checked before the output appears. Also the identity.
    digest_sha256: bytes | None = None
    #: Sent to the origin (auth, cookies), never part of the task identity.
    headers: tuple[tuple[str, str], ...] = ()
    #: Query parameters removed from the URL for the identity (signatures, expiries).
    filters: tuple[str, ...] = ()
    tag: str = ""
    zone: str = ""
    seed_time_s: float = DEFAULT_SEED_TIME_S
    back_to_source: bool = True
    #: Whole download, seeding excluded; None = no limit.
    timeout_s: float | None = None
    #: Where this peer accepts other peers' connections (0 = any free port).
    peer_host: str = "0.0.0.0"
    peer_port: int = 0
    #: The cluster secret (``peerwire.auth``): announces and manifest updates are signed with it.
    secret: bytes | None = field(default=None, repr=False)
    #: What the caller already knows of the origin (length, validator, Range support: e.g. a
    #: registry's HEAD of a digest-addressed blob); the origin is then not probed.
    origin_info: OriginInfo | None = None
    #: How the partial file, its record and saved digests are created (dfdaemon's cache makes
    #: them owner-only).
    files: FilePolicy = DEFAULT_FILES


@dataclass(frozen=True, slots=True)
class ProgressReport:
    """A snapshot for progress bars (several per second)."""

    total_bytes: int | None
    done_bytes: int
    from_peers_bytes: int
    from_origin_bytes: int
    uploaded_bytes: int
    peers: int
    #: Bytes/s over the last seconds.
    rate_bps: float
    #: ``starting``, ``downloading``, ``verifying``, ``seeding``, ``done``.
    phase: str


@dataclass(frozen=True, slots=True)
class DownloadResult:
    output: Path
    size_bytes: int
    elapsed_s: float
    from_peers_bytes: int
    from_origin_bytes: int
    uploaded_bytes: int
    #: True when the swarm could not be used and the whole file came straight from the origin.
    fell_back: bool
    #: Why it fell back (tracker unreachable, swarm stalled), for the log and the summary.
    fallback_reason: str | None = None
    peers_banned: tuple[str, ...] = field(default=())
    task_id: str = ""
    #: The finished file's manifest (every digest) and what the origin said of it: a cache
    #: (dfdaemon) records them to seed the file again later.
    manifest: Manifest | None = None
    validator: str | None = None
    ranges: bool = True
    #: The file came whole from dfdaemon's cache (a download handed to the daemon).
    from_cache: bool = False
