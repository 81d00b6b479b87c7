"""A real OCI registry and real image clients for tests: Debian's ``docker-registry`` and skopeo.

* ``registry_process(root)`` runs ``docker-registry serve`` (distribution 2.8) on 127.0.0.1 with
  filesystem storage under ``root``, optionally behind basic auth (bcrypt htpasswd).
* ``write_oci_layout(directory, layers=[...])`` writes a test image without docker: an OCI image
  layout with gzip'd tar layers of random bytes, a config and a manifest.
* ``skopeo_push``, ``skopeo_pull`` and ``skopeo_pull_through_mirror`` move it around.

How many times the registry served a blob comes from its access log (``Registry.requests()``,
``Registry.blob_gets()``): distribution writes one Apache "combined" line per request on stdout,
next to logrus's own ``msg="response completed"`` lines on stderr; both go to one file here.

skopeo silently falls back to the registry when a mirror fails, so a mirror test must prove the
blobs went through the mirror with ``blob_gets`` (see /work/shared/notes/oci-registry-testing.md).
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import itertools
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import tarfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Protocol, cast

from tests.conftest import require_program

START_TIMEOUT_S = 15.0
STOP_TIMEOUT_S = 10.0
SKOPEO_TIMEOUT_S = 300.0
LOG_BARRIER_TIMEOUT_S = 5.0
POLL_INTERVAL_S = 0.02
START_ATTEMPTS = 3
RANDOM_CHUNK_BYTES = 1 << 20

# OCI image spec (image-layout.md, manifest.md, config.md) media types.
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
REF_NAME_ANNOTATION = "org.opencontainers.image.ref.name"

# gorilla/handlers CombinedLoggingHandler, as distribution 2.8 logs each request (on stdout):
# 127.0.0.1 - - [27/Nov/2026:23:09:32 +0000] "GET /v2/ HTTP/1.1" 200 2 "" "curl/7.88.1"
_ACCESS_LINE_RE = re.compile(
    r'^\S+ \S+ \S+ \[[^\]]*\] "(?P<method>[A-Z]+) (?P<target>\S+) HTTP/[0-9.]+" '
    r'(?P<status>\d{3}) (?P<size>\d+|-) "[^"]*" "(?P<agent>[^"]*)"$'
)
# distribution API: GET /v2/<name>/blobs/<digest> (uploads are /blobs/uploads/..., no digest).
_BLOB_TARGET_RE = re.compile(r"^/v2/(?P<name>.+)/blobs/(?P<digest>sha256:[0-9a-f]{64})(?:\?.*)?$")
# The fixture's own requests (start-up probe, log barrier) carry this agent and are not reported.
_FIXTURE_AGENT = "registry-fixture"
_barrier_ids = itertools.count()


@dataclass(frozen=True)
class AccessLogEntry:
    """One request as the registry's access log shows it (written when the handler is done)."""

    method: str
    target: str
    status: int
    size_bytes: int
    user_agent: str

    @property
    def blob_digest(self) -> str | None:
        """``sha256:...`` when this is a request on a blob (not an upload), else None."""
        match = _BLOB_TARGET_RE.match(self.target)
        return match["digest"] if match else None


@dataclass
class Registry:
    """A running ``docker-registry``. ``credentials`` is the basic-auth user, when one is set."""

    process: subprocess.Popen[bytes]
    address: str
    root: Path
    log_path: Path
    credentials: tuple[str, str] | None

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    def log_text(self) -> str:
        """Everything the registry wrote so far (startup messages, logrus and access lines)."""
        return self.log_path.read_text(errors="replace")

    def requests(self) -> list[AccessLogEntry]:
        """Every request served so far, in log order.

        distribution logs a request when its handler returns, which can be a moment after the
        client read the last byte; so while it runs, first send a marker request and wait until
        its own line is in the log. The fixture's own requests are left out of the result.
        """
        self._log_barrier()
        entries = []
        for line in self.log_text().splitlines():
            match = _ACCESS_LINE_RE.match(line)
            if match is None or match["agent"].startswith(_FIXTURE_AGENT):
                continue
            size = match["size"]
            entries.append(
                AccessLogEntry(
                    method=match["method"],
                    target=match["target"],
                    status=int(match["status"]),
                    size_bytes=0 if size == "-" else int(size),
                    user_agent=match["agent"],
                )
            )
        return entries

    def blob_gets(self, digest: str | None = None) -> int:
        """How many ``GET /v2/<name>/blobs/sha256:...`` requests reached the registry, for one
        digest or for all; every answer counts (200, 206 for a Range, 401, 404). HEADs do not."""
        return len(self._blob_gets(digest))

    def blob_bytes_sent(self, digest: str | None = None) -> int:
        """Body bytes the registry wrote for blob GETs (the access log's size field)."""
        return sum(entry.size_bytes for entry in self._blob_gets(digest))

    def _blob_gets(self, digest: str | None) -> list[AccessLogEntry]:
        return [
            entry
            for entry in self.requests()
            if entry.method == "GET"
            and entry.blob_digest is not None
            and digest in (None, entry.blob_digest)
        ]

    def _log_barrier(self) -> None:
        if self.process.poll() is not None:
            return  # stopped: every line it will ever write is in the file
        agent = f"{_FIXTURE_AGENT}-barrier/{next(_barrier_ids)}"
        request = urllib.request.Request(f"{self.url}/v2/", headers={"User-Agent": agent})
        try:
            with urllib.request.urlopen(request, timeout=LOG_BARRIER_TIMEOUT_S) as response:
                response.read()
        except urllib.error.HTTPError as error:  # 401 with auth: still logged
            error.close()
        marker = f'"{agent}"'
        deadline = time.monotonic() + LOG_BARRIER_TIMEOUT_S
        while marker not in self.log_text():
            if time.monotonic() > deadline:
                raise AssertionError(f"registry never logged the marker request {agent!r}")
            time.sleep(POLL_INTERVAL_S)


@contextmanager
def registry_process(root: Path, *, htpasswd: tuple[str, str] | None = None) -> Iterator[Registry]:
    """``docker-registry serve`` on 127.0.0.1 and a free port, storage under ``root/storage``,
    config and log in ``root``. ``htpasswd=(user, password)`` turns on basic auth. Waits until
    ``GET /v2/`` answers (200, or 401 with auth); SIGTERM, then SIGKILL, on exit."""
    program = require_program("docker-registry")
    root.mkdir(parents=True, exist_ok=True)
    auth_file = None
    if htpasswd is not None:
        auth_file = root / "htpasswd"
        user, password = htpasswd
        # distribution accepts only bcrypt entries (-B).
        subprocess.run(
            [require_program("htpasswd"), "-Bbc", str(auth_file), user, password],
            check=True,
            capture_output=True,
            timeout=30,
        )
    log_path = root / "registry.log"
    for attempt in range(START_ATTEMPTS):
        address = f"127.0.0.1:{_free_port()}"
        config = root / "config.yml"
        config.write_text(_config_yaml(root / "storage", address, auth_file))
        with log_path.open("ab") as log:
            process = subprocess.Popen(
                [program, "serve", str(config)], stdin=subprocess.DEVNULL, stdout=log, stderr=log
            )
        try:
            if _wait_until_serving(process, address, log_path):
                break
        except BaseException:
            _stop(process)
            raise
        # The port was taken between the probe and the registry's bind: try another one.
        if attempt == START_ATTEMPTS - 1:
            raise AssertionError(f"docker-registry did not start:\n{log_path.read_text()}")
    registry = Registry(process, address, root, log_path, htpasswd)
    try:
        yield registry
    finally:
        _stop(process)


def _config_yaml(storage: Path, address: str, auth_file: Path | None) -> str:
    # JSON is YAML: quoting every value keeps paths with odd characters safe.
    config: dict[str, object] = {
        "version": 0.1,
        "log": {"level": "info", "formatter": "text", "accesslog": {"disabled": False}},
        "storage": {"filesystem": {"rootdirectory": str(storage)}, "delete": {"enabled": True}},
        # A fixed secret silences the "No HTTP secret provided" warning.
        "http": {"addr": address, "secret": secrets.token_hex(16)},
    }
    if auth_file is not None:
        config["auth"] = {"htpasswd": {"realm": "basic-realm", "path": str(auth_file)}}
    return json.dumps(config, indent=2) + "\n"


def _wait_until_serving(process: subprocess.Popen[bytes], address: str, log_path: Path) -> bool:
    """True once ``GET /v2/`` answers 200 or 401; False if the registry exited (port taken)."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        try:
            probe = urllib.request.Request(
                f"http://{address}/v2/", headers={"User-Agent": f"{_FIXTURE_AGENT}-probe"}
            )
            with urllib.request.urlopen(probe, timeout=2) as response:
                if response.status == 200:
                    return True
        except urllib.error.HTTPError as error:
            error.close()
            if error.code == 401:
                return True
        except OSError:
            pass  # not listening yet
        time.sleep(POLL_INTERVAL_S)
    _stop(process)
    raise AssertionError(
        f"docker-registry not serving after {START_TIMEOUT_S}s:\n{log_path.read_text()}"
    )


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass(frozen=True)
class Image:
    """An OCI image layout on disk and what a client pulling it will fetch."""

    layout: Path
    tag: str
    manifest_digest: str
    config_digest: str
    layer_digests: tuple[str, ...]
    blob_sizes: dict[str, int]

    @property
    def blob_digests(self) -> tuple[str, ...]:
        """The blobs a pull GETs: the config, then the layers."""
        return (self.config_digest, *self.layer_digests)

    @property
    def total_bytes(self) -> int:
        """Bytes of all blobs (config and compressed layers), without the manifest."""
        return sum(self.blob_sizes[digest] for digest in self.blob_digests)

    def blob_path(self, digest: str) -> Path:
        return _blob_path(self.layout, digest)


def write_oci_layout(directory: Path, *, layers: list[int], tag: str = "latest") -> Image:
    """An OCI image layout (image-spec image-layout.md) in ``directory``: one gzip'd tar layer
    per entry of ``layers``, each holding one file of that many random bytes (so gzip barely
    shrinks it and every call makes new digests), a config JSON and a manifest."""
    if any(size < 0 for size in layers):
        raise ValueError(f"layer sizes must be >= 0: {layers}")
    blobs = directory / "blobs" / "sha256"
    blobs.mkdir(parents=True, exist_ok=True)
    sizes: dict[str, int] = {}
    layer_digests: list[str] = []
    diff_ids: list[str] = []
    for layer_index, size_bytes in enumerate(layers):
        digest, diff_id, blob_size = _write_layer(blobs, f"layer-{layer_index}.bin", size_bytes)
        layer_digests.append(digest)
        diff_ids.append(diff_id)
        sizes[digest] = blob_size
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }
    config_digest, config_size = _write_json_blob(blobs, config)
    sizes[config_digest] = config_size
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": config_size},
        "layers": [
            {"mediaType": OCI_LAYER_GZIP, "digest": digest, "size": sizes[digest]}
            for digest in layer_digests
        ],
    }
    manifest_digest, manifest_size = _write_json_blob(blobs, manifest)
    index = {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": OCI_MANIFEST,
                "digest": manifest_digest,
                "size": manifest_size,
                "annotations": {REF_NAME_ANNOTATION: tag},
            }
        ],
    }
    (directory / "index.json").write_text(json.dumps(index))
    (directory / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    return Image(directory, tag, manifest_digest, config_digest, tuple(layer_digests), sizes)


class _Writable(Protocol):
    def write(self, data: bytes, /) -> int: ...

    def flush(self) -> None: ...


class _HashingWriter:
    """A write-only file object that hashes and counts what passes through to ``inner``."""

    def __init__(self, inner: _Writable) -> None:
        self.inner = inner
        self.sha256 = hashlib.sha256()
        self.size_bytes = 0

    def write(self, data: bytes) -> int:
        self.sha256.update(data)
        self.size_bytes += len(data)
        self.inner.write(data)
        return len(data)

    def flush(self) -> None:
        self.inner.flush()


class _RandomReader:
    """``size_bytes`` of os.urandom, read in chunks (tarfile copies from it)."""

    def __init__(self, size_bytes: int) -> None:
        self.remaining = size_bytes

    def read(self, size: int = -1) -> bytes:
        count = self.remaining if size < 0 else min(size, self.remaining)
        count = min(count, RANDOM_CHUNK_BYTES)
        self.remaining -= count
        return os.urandom(count)


def _write_layer(blobs: Path, file_name: str, size_bytes: int) -> tuple[str, str, int]:
    """Writes one layer blob; returns (digest of the gzip blob, diff_id of the tar, blob size)."""
    partial = blobs / f".{file_name}.partial"
    with partial.open("wb") as raw:
        compressed = _HashingWriter(raw)
        # Level 1: random bytes do not compress anyway, and level 1 runs fastest with deflate.
        with gzip.GzipFile(fileobj=compressed, mode="wb", compresslevel=1, mtime=0) as gz:
            plain = _HashingWriter(gz)
            # Stream mode ("w|") only ever calls write(); typeshed asks for a whole file object.
            stream = cast("IO[bytes]", plain)
            with tarfile.open(fileobj=stream, mode="w|", format=tarfile.PAX_FORMAT) as tar:
                info = tarfile.TarInfo(file_name)
                info.size = size_bytes
                info.mode = 0o644
                tar.addfile(info, _RandomReader(size_bytes))
    digest = f"sha256:{compressed.sha256.hexdigest()}"
    partial.rename(_blob_path(blobs.parent.parent, digest))
    return digest, f"sha256:{plain.sha256.hexdigest()}", compressed.size_bytes


def _write_json_blob(blobs: Path, document: object) -> tuple[str, int]:
    data = json.dumps(document, separators=(",", ":")).encode()
    digest = f"sha256:{hashlib.sha256(data).hexdigest()}"
    _blob_path(blobs.parent.parent, digest).write_bytes(data)
    return digest, len(data)


def _blob_path(layout: Path, digest: str) -> Path:
    algorithm, _, hex_digest = digest.partition(":")
    return layout / "blobs" / algorithm / hex_digest


def _skopeo(*args: str, timeout_s: float) -> subprocess.CompletedProcess[str]:
    # --insecure-policy: the host's /etc/containers/policy.json must not decide a test.
    return subprocess.run(
        [require_program("skopeo"), "--insecure-policy", *args],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )


def skopeo_push(
    image: Image,
    registry: Registry,
    repo: str,
    *,
    creds: tuple[str, str] | None = None,
    timeout_s: float = SKOPEO_TIMEOUT_S,
) -> None:
    """Pushes the layout's tag to ``registry`` as ``repo:tag``; raises AssertionError (with
    skopeo's stderr) when the push fails, since a test cannot go on without its image."""
    args = ["copy", "--dest-tls-verify=false"]
    if creds is not None:
        args.append(f"--dest-creds={creds[0]}:{creds[1]}")
    source = f"oci:{image.layout}:{image.tag}"
    result = _skopeo(
        *args, source, f"docker://{registry.address}/{repo}:{image.tag}", timeout_s=timeout_s
    )
    if result.returncode != 0:
        raise AssertionError(f"skopeo push of {source} failed:\n{result.stderr}")


def skopeo_pull(
    registry: Registry,
    repo: str,
    tag: str,
    dest: Path,
    *,
    creds: tuple[str, str] | None = None,
    timeout_s: float = SKOPEO_TIMEOUT_S,
) -> subprocess.CompletedProcess[str]:
    """``skopeo copy docker://ADDR/REPO:TAG dir:DEST`` straight from the registry (no mirror).
    An empty auth file keeps the host's own credentials out of the test."""
    authfile = _empty_authfile(dest)
    args = ["copy", "--src-tls-verify=false", f"--authfile={authfile}"]
    if creds is not None:
        args.append(f"--src-creds={creds[0]}:{creds[1]}")
    return _skopeo(
        *args, f"docker://{registry.address}/{repo}:{tag}", f"dir:{dest}", timeout_s=timeout_s
    )


def skopeo_pull_through_mirror(
    registry: Registry,
    mirror_address: str,
    repo: str,
    tag: str,
    dest: Path,
    *,
    authfile: Path | None = None,
    timeout_s: float = SKOPEO_TIMEOUT_S,
) -> subprocess.CompletedProcess[str]:
    """``skopeo --registries-conf FILE copy docker://ADDR/REPO:TAG dir:DEST`` with
    ``mirror_address`` as a mirror of the registry; the conf file is written next to ``dest``.

    skopeo 1.9 ignores CONTAINERS_REGISTRIES_CONF, hence the global flag. Credentials for the
    mirror are looked up in ``authfile`` under the mirror's address (``write_authfile``). A
    failing mirror is skipped silently: check ``registry.blob_gets`` to know where blobs came from.
    """
    conf = dest.with_name(dest.name + ".registries.conf")
    conf.write_text(
        "[[registry]]\n"
        f'prefix = "{registry.address}"\n'
        f'location = "{registry.address}"\n'
        "insecure = true\n"
        "[[registry.mirror]]\n"
        f'location = "{mirror_address}"\n'
        "insecure = true\n"
    )
    auth = authfile if authfile is not None else _empty_authfile(dest)
    return _skopeo(
        f"--registries-conf={conf}",
        "copy",
        "--src-tls-verify=false",
        f"--authfile={auth}",
        f"docker://{registry.address}/{repo}:{tag}",
        f"dir:{dest}",
        timeout_s=timeout_s,
    )


def write_authfile(path: Path, address: str, user: str, password: str) -> Path:
    """A containers-auth.json(5) file with basic credentials for ``address`` (host:port)."""
    token = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
    path.write_text(json.dumps({"auths": {address: {"auth": token}}}))
    return path


def _empty_authfile(dest: Path) -> Path:
    path = dest.with_name(dest.name + ".auth.json")
    if not path.exists():
        path.write_text(json.dumps({"auths": {}}))
    return path
