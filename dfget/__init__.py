"""dfget: download a URL through the swarm (``download``), plus dfdaemon and dftop.

    from dfget import DownloadOptions, download_sync
    result = download_sync(DownloadOptions(url="http://origin/file.iso", output=Path("file.iso"),
                                           trackers=("http://tracker:6969",)))

``download`` is the same as a coroutine. Errors are ``dfget.errors.DownloadError`` subclasses.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dfget.errors import (
    DigestMismatch,
    DownloadError,
    DownloadTimeout,
    NoPeers,
    OriginChanged,
    OriginError,
)
from dfget.options import DownloadOptions, DownloadResult, ProgressReport

if TYPE_CHECKING:
    from dfget.engine import download, download_sync

__all__ = [
    "DigestMismatch",
    "DownloadError",
    "DownloadOptions",
    "DownloadResult",
    "DownloadTimeout",
    "NoPeers",
    "OriginChanged",
    "OriginError",
    "ProgressReport",
    "download",
    "download_sync",
]


def __getattr__(name: str) -> Any:
    # The engine pulls in aiohttp and uvloop: import it when first used, so that `dftop` and
    # `dfget --help` start fast.
    if name in ("download", "download_sync"):
        from dfget import engine

        return getattr(engine, name)
    raise AttributeError(f"module 'dfget' has no attribute {name!r}")
