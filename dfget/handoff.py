"""``dfget`` handing its download to the host's ``dfdaemon`` over the local API.

When the daemon's socket exists (``$DFGET_DAEMON_SOCKET``, else the daemon's default path), the
download runs in the daemon - one peer per host, its cache, its host-wide limits - and this
process only shows progress and gets the file copied to its output. A socket nobody answers on
(a daemon that died) means the download runs in-process as if there were no daemon.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, Final

import uvloop

from dfget import errors
from dfget.httpclient import ConnectError, HttpClient, HttpClientError, Response
from dfget.options import DownloadOptions, DownloadResult, ProgressReport

log = logging.getLogger(__name__)

SOCKET_ENV = "DFGET_DAEMON_SOCKET"
#: Longest line of the daemon's answer (a progress report is a few hundred bytes).
MAX_LINE_BYTES: Final = 1 << 20


def default_socket() -> Path:
    """``$XDG_RUNTIME_DIR/dragonfly/dfdaemon.sock``, else ``/tmp/dragonfly-<uid>/dfdaemon.sock``;
    ``dfget`` looks in the same place (``DFGET_DAEMON_SOCKET`` overrides both)."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    base = Path(runtime) / "dragonfly" if runtime else Path(f"/tmp/dragonfly-{os.getuid()}")
    return base / "dfdaemon.sock"


class DaemonUnavailable(Exception):
    """Nobody answers on the socket: download in-process instead."""


def daemon_socket(environ: dict[str, str] | None = None) -> Path | None:
    """The daemon's socket when it exists (``DFGET_DAEMON_SOCKET=""`` disables the hand-off)."""
    environ = dict(os.environ) if environ is None else environ
    configured = environ.get(SOCKET_ENV)
    if configured == "":
        return None
    path = Path(configured) if configured else default_socket()
    return path if path.is_socket() else None


_ERRORS: dict[int, type[errors.DownloadError]] = {
    errors.EXIT_DIGEST_MISMATCH: errors.DigestMismatch,
    errors.EXIT_ORIGIN: errors.OriginError,
    errors.EXIT_TIMEOUT: errors.DownloadTimeout,
    errors.EXIT_NO_PEERS: errors.NoPeers,
}


async def download_via_daemon(
    socket: Path,
    options: DownloadOptions,
    on_progress: Callable[[ProgressReport], None] | None = None,
) -> DownloadResult:
    started = time.monotonic()
    body = {
        "url": options.url,
        "output": str(options.output.resolve()),
        "headers": [list(h) for h in options.headers],
        "digest": options.digest_sha256.hex() if options.digest_sha256 else None,
        "filters": list(options.filters),
        "tag": options.tag,
        "rate_bps": options.rate_bps,
        "timeout_s": options.timeout_s,
    }
    last: ProgressReport | None = None
    client = HttpClient(unix_socket=str(socket))
    try:
        # No read timeout: the daemon may rightly say nothing for long (a stalled swarm, the
        # copy of a large file to the output).
        response = await client.request(
            "POST",
            "http://dfdaemon/v1/downloads",
            headers=[("Content-Type", "application/json")],
            body=json.dumps(body).encode(),
            read_timeout_s=None,
        )
        async with response:
            if response.status != 200:
                document = json.loads(await response.read_all(MAX_LINE_BYTES))
                raise ValueError(f"dfdaemon refused the download: {document.get('error')}")
            async for line in _lines(response):
                message: dict[str, Any] = json.loads(line)
                if "progress" in message:
                    last = ProgressReport(**message["progress"])
                    if on_progress is not None:
                        on_progress(last)
                elif "result" in message:
                    return _result(message["result"], options, time.monotonic() - started, last)
                elif "error" in message:
                    error_class = _ERRORS.get(int(message["exit_code"]), errors.DownloadError)
                    error = error_class(f"(dfdaemon) {message['error']}")
                    error.exit_code = int(message["exit_code"])
                    raise error
    except ConnectError as exc:
        raise DaemonUnavailable(str(exc)) from exc
    except HttpClientError as exc:
        raise errors.DownloadError(f"dfdaemon connection failed: {exc}") from exc
    finally:
        await client.close()
    raise errors.DownloadError("dfdaemon closed the connection before the download finished")


async def _lines(response: Response) -> AsyncIterator[bytes]:
    """The body's lines (newline-delimited JSON), each as soon as it is complete."""
    pending = b""
    while chunk := await response.read():
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for line in lines:
            if line.strip():
                yield line
        if len(pending) > MAX_LINE_BYTES:
            raise errors.DownloadError(f"dfdaemon sent a line longer than {MAX_LINE_BYTES} bytes")
    if pending.strip():
        yield pending


def download_sync_via_daemon(
    socket: Path,
    options: DownloadOptions,
    on_progress: Callable[[ProgressReport], None] | None = None,
) -> DownloadResult:
    return uvloop.run(download_via_daemon(socket, options, on_progress))


def _result(
    document: dict[str, Any],
    options: DownloadOptions,
    elapsed_s: float,
    last: ProgressReport | None,
) -> DownloadResult:
    """The daemon's account of the download (a daemon too old to give its byte counts: the
    last progress report's)."""
    reason = document.get("fallback_reason")
    return DownloadResult(
        output=options.output,
        size_bytes=int(document["size_bytes"]),
        elapsed_s=elapsed_s,
        from_peers_bytes=int(
            document.get("from_peers_bytes", last.from_peers_bytes if last else 0)
        ),
        from_origin_bytes=int(
            document.get("from_origin_bytes", last.from_origin_bytes if last else 0)
        ),
        uploaded_bytes=int(document.get("uploaded_bytes", 0)),
        fell_back=reason is not None,
        fallback_reason=None if reason is None else str(reason),
        task_id=str(document["task_id"]),
        from_cache=bool(document.get("from_cache", False)),
    )
