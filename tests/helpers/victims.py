"""The honest side of the attack tests: ``dfget`` and ``dfdaemon`` as processes, and an origin
that insists on credentials in its URL.

Only the command-line programs are used (``python -m dfget.cli``, ``python -m proxy.cli``), each
isolated from the host's settings (no ``DFGET_*``, ``DFDAEMON_*`` or ``DRAGONFLY_*`` variables
but those given, no user config file).
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import http.server
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

PYTHON = sys.executable


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _environment(home: Path, secret: str | None, extra: dict[str, str]) -> dict[str, str]:
    prefixes = ("DFGET_", "DFDAEMON_", "DRAGONFLY_")
    environment = {k: v for k, v in os.environ.items() if not k.startswith(prefixes)}
    environment["XDG_CONFIG_HOME"] = str(home)  # no user config file applies
    environment.pop("XDG_RUNTIME_DIR", None)
    if secret is not None:
        environment["DRAGONFLY_SECRET"] = secret
    environment.update(extra)
    return environment


def start_dfget(
    url: str,
    output: Path,
    *args: str,
    daemon_socket: Path | None = None,
    secret: str | None = None,
    seed_time: str = "0s",
) -> subprocess.Popen[str]:
    """``dfget URL -O OUTPUT --seed-time SEED_TIME ARGS`` as a process (stderr piped). In-process
    download unless ``daemon_socket`` names a dfdaemon to hand it to."""
    environment = _environment(
        output.parent, secret, {"DFGET_DAEMON_SOCKET": str(daemon_socket or "")}
    )
    command = [PYTHON, "-m", "dfget.cli", url, "-O", str(output), "--quiet"]
    return subprocess.Popen(
        [*command, "--seed-time", seed_time, *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=environment,
    )


def finish(process: subprocess.Popen[str], timeout_s: float = 120) -> tuple[int, str]:
    """Wait for a dfget: (exit code, stderr); killed and AssertionError after ``timeout_s``."""
    try:
        _, err = process.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        _, err = process.communicate()
        raise AssertionError(f"dfget did not finish in {timeout_s}s:\n{err[-3000:]}") from None
    return process.returncode, err


def stop(process: subprocess.Popen[str]) -> None:
    """SIGTERM (then SIGKILL) a process we started, and reap it."""
    if process.poll() is None:
        process.terminate()
    try:
        process.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()


def run_dfget(
    url: str,
    output: Path,
    *args: str,
    daemon_socket: Path | None = None,
    secret: str | None = None,
    timeout_s: float = 120,
) -> tuple[int, str]:
    """A dfget that does not seed (``--seed-time 0s``), to its end: (exit code, stderr)."""
    process = start_dfget(url, output, *args, daemon_socket=daemon_socket, secret=secret)
    try:
        return finish(process, timeout_s)
    finally:
        stop(process)


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: Path) -> None:
        super().__init__("dfdaemon", timeout=10)
        self._path = str(path)

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(10)
        sock.connect(self._path)
        self.sock = sock


@dataclass
class Dfdaemon:
    process: subprocess.Popen[str]
    socket: Path
    cache: Path
    proxy_url: str
    errors: IO[str]

    def api(self, target: str) -> tuple[int, bytes]:
        """GET ``target`` from the local API (HTTP on the unix socket)."""
        connection = _UnixHTTPConnection(self.socket)
        try:
            connection.request("GET", target)
            response = connection.getresponse()
            return response.status, response.read()
        finally:
            connection.close()

    def stderr(self) -> str:
        self.errors.seek(0)
        return self.errors.read()


@contextmanager
def dfdaemon(
    socket_path: Path,
    cache: Path,
    *args: str,
    secret: str | None = None,
    umask: int = 0o022,
    start_timeout_s: float = 30,
) -> Iterator[Dfdaemon]:
    """``dfdaemon --proxy-port 0 --socket SOCKET --cache-dir CACHE ARGS`` under ``umask`` (the
    usual 022 unless told), until it prints ``listening``; SIGTERM (then SIGKILL) on exit."""
    command = [
        PYTHON,
        *("-m", "proxy.cli", "--proxy-port", "0"),
        *("--socket", str(socket_path), "--cache-dir", str(cache), *args),
    ]
    with tempfile.TemporaryFile("w+") as errors:
        process = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=errors,
            text=True,
            env=_environment(socket_path.parent, secret, {}),
            umask=umask,
        )
        try:
            line = _first_line(process, start_timeout_s)
            if not line.startswith("listening unix:"):
                errors.seek(0)
                raise AssertionError(f"dfdaemon did not start: {line!r}\n{errors.read()}")
            proxy_url = line.split(" proxy ", 1)[1].strip()
            yield Dfdaemon(process, socket_path, cache, proxy_url, errors)
        finally:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
            try:
                process.communicate(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.communicate()


def _first_line(process: subprocess.Popen[str], timeout_s: float) -> str:
    lines: list[str] = []
    assert process.stdout is not None
    stdout = process.stdout
    reader = threading.Thread(target=lambda: lines.append(stdout.readline()), daemon=True)
    reader.start()
    reader.join(timeout_s)
    return lines[0] if lines else ""


# -- an origin that wants credentials in the URL -------------------------------------------------


@dataclass(frozen=True)
class CredentialOrigin:
    """Serves one file to requests with the query parameter ``Signature=<signature>`` (like a
    signed object-store URL; 403 otherwise) and, when ``require_auth``, Basic credentials
    ``user:password`` (401 otherwise). GET with one ``Range`` (206), HEAD, a strong ETag."""

    base_url: str
    user: str
    password: str
    signature: str

    def url(self, name: str) -> str:
        parts = urllib.parse.urlsplit(self.base_url)
        return (
            f"http://{self.user}:{self.password}@{parts.netloc}/{name}"
            f"?Signature={self.signature}&Expires=123"
        )


class _QuietServer(http.server.ThreadingHTTPServer):
    def handle_error(self, request: object, client_address: object) -> None:
        pass  # a client that hangs up (a probe that wanted one byte) is no error here


@contextmanager
def credential_origin(
    content: bytes,
    name: str,
    user: str,
    password: str,
    signature: str,
    *,
    require_auth: bool = True,
) -> Iterator[CredentialOrigin]:
    expected_auth = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
    etag = '"' + hashlib.sha256(content).hexdigest()[:16] + '"'

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_HEAD(self) -> None:
            self.do_GET(head=True)

        def do_GET(self, head: bool = False) -> None:
            path, _, query = self.path.partition("?")
            if path != f"/{name}":
                return self._plain(404, b"not found\n")
            if require_auth and self.headers.get("Authorization") != expected_auth:
                return self._plain(401, b"who are you?\n", ("WWW-Authenticate", 'Basic realm="o"'))
            if ("Signature", signature) not in urllib.parse.parse_qsl(query):
                return self._plain(403, b"bad signature\n")
            first, last, status = 0, len(content) - 1, 200
            wanted = self.headers.get("Range", "")
            if wanted.startswith("bytes=") and "," not in wanted:
                start, _, end = wanted[6:].partition("-")
                if start.isdigit():
                    first, status = int(start), 206
                    last = min(int(end), last) if end.isdigit() else last
            body = content[first : last + 1]
            self.send_response(status)
            self.send_header("ETag", etag)
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(body)))
            if status == 206:
                self.send_header("Content-Range", f"bytes {first}-{last}/{len(content)}")
            self.end_headers()
            if not head:
                self.wfile.write(body)

        def _plain(self, status: int, body: bytes, *header: tuple[str, str]) -> None:
            self.send_response(status)
            for key, value in header:
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = _QuietServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1})
    thread.start()
    try:
        yield CredentialOrigin(
            f"http://127.0.0.1:{server.server_address[1]}", user, password, signature
        )
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
