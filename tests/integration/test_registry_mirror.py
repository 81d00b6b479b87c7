"""dfdaemon as a registry mirror for real software: docker-registry and skopeo on 127.0.0.1.

skopeo silently falls back to the registry when a mirror fails, so every test proves where the
blobs came from with the registry's own access log: blob GETs by the daemon (aiohttp's agent,
Range requests) and none by skopeo, and after a second daemon's pull, none at all.
"""

from __future__ import annotations

import base64
import hashlib
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import pytest

from tests.helpers.registry import (
    Image,
    Registry,
    registry_process,
    skopeo_pull_through_mirror,
    skopeo_push,
    write_authfile,
    write_oci_layout,
)
from tests.integration.trackers import tracker_process

pytestmark = pytest.mark.integration

MIB = 1 << 20
REPO = "team/app"
SKOPEO_AGENT = "skopeo/"


@dataclass
class Mirror:
    process: subprocess.Popen[str]
    address: str
    log: IO[str]

    def get(
        self, target: str, headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        request = urllib.request.Request(f"http://{self.address}{target}", headers=headers or {})
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return response.status, dict(response.headers), response.read()
        except urllib.error.HTTPError as error:
            with error:
                return error.code, dict(error.headers), error.read()

    def metrics(self) -> str:
        return self.get("/metrics")[2].decode()

    def stderr(self) -> str:
        self.log.seek(0)
        return self.log.read()


@contextmanager
def dfdaemon(root: Path, name: str, *args: str) -> Iterator[Mirror]:
    """``python -m proxy.cli`` (the ``dfdaemon`` command) with its own socket, cache and ports."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("DFDAEMON_")}
    environment["DFDAEMON_PEER_HOST"] = "127.0.0.1"
    with (root / f"{name}.log").open("w+") as log:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "proxy.cli",
                "--socket",
                str(root / f"{name}.sock"),
                "--cache-dir",
                str(root / f"{name}-cache"),
                "--proxy-port",
                "0",
                "-v",
                *args,
            ],
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            env=environment,
        )
        try:
            assert process.stdout is not None
            line = process.stdout.readline()
            assert " proxy http://" in line, f"dfdaemon did not start: {line!r}\n{log.read()}"
            yield Mirror(process, line.rsplit("http://", 1)[1].strip(), log)
        finally:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
            try:
                process.communicate(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.communicate()


def metric(text: str, sample: str) -> float:
    """The value of ``dragonfly_dfdaemon_<sample>`` in a Prometheus text exposition."""
    for line in text.splitlines():
        name, _, value = line.rpartition(" ")
        if name == "dragonfly_dfdaemon_" + sample:
            return float(value)
    raise AssertionError(f"no sample {sample} in:\n{text}")


def pushed_image(tmp_path: Path, registry: Registry, creds: tuple[str, str] | None = None) -> Image:
    image = write_oci_layout(tmp_path / "image", layers=[3 * MIB, MIB + 12345])
    skopeo_push(image, registry, REPO, creds=creds)
    return image


def pull(registry: Registry, mirror: Mirror, dest: Path, authfile: Path | None = None) -> None:
    result = skopeo_pull_through_mirror(
        registry, mirror.address, REPO, "latest", dest, authfile=authfile
    )
    assert result.returncode == 0, f"{result.stderr}\n--- dfdaemon:\n{mirror.stderr()}"


def assert_pulled(image: Image, dest: Path) -> None:
    for digest in image.blob_digests:
        data = (dest / digest.removeprefix("sha256:")).read_bytes()
        assert "sha256:" + hashlib.sha256(data).hexdigest() == digest


def assert_blobs_came_through_the_daemon_once(registry: Registry, image: Image) -> None:
    entries = [e for e in registry.requests() if e.method == "GET" and e.blob_digest]
    assert entries, "no blob GET reached the registry"
    assert not [e for e in entries if e.user_agent.startswith(SKOPEO_AGENT)], (
        "skopeo fetched blobs from the registry itself: the mirror failed"
    )
    for digest in image.blob_digests:
        size = image.blob_sizes[digest]
        # Every byte left the registry once; the daemon's probe of the length adds one byte.
        assert size <= registry.blob_bytes_sent(digest) <= size + 1, digest


def test_with_a_secret_a_second_daemon_pulls_the_image_from_the_first_not_the_registry(
    tmp_path: Path,
) -> None:
    secret = tmp_path / "secret"
    secret.write_text("a-cluster-secret-of-some-length")
    with (
        registry_process(tmp_path / "registry") as registry,
        tracker_process("--interval", "1s", "--secret-file", str(secret)) as tracker,
    ):
        image = pushed_image(tmp_path, registry)
        common = (
            "--tracker",
            tracker.base_url,
            "--registry-mirror",
            registry.url,
            "--secret-file",
            str(secret),
        )
        with dfdaemon(tmp_path, "first", *common) as first:
            pull(registry, first, tmp_path / "pull-1")
            assert_pulled(image, tmp_path / "pull-1")
            assert_blobs_came_through_the_daemon_once(registry, image)
            metrics = first.metrics()
            assert metric(metrics, 'proxy_requests_total{route="blob"}') == 3
            assert metric(metrics, 'proxy_fallbacks_total{route="blob"}') == 0
            blob_gets = registry.blob_gets()
            with dfdaemon(tmp_path, "second", *common) as second:
                pull(registry, second, tmp_path / "pull-2")
                assert_pulled(image, tmp_path / "pull-2")
                assert registry.blob_gets() == blob_gets  # every blob came from the first peer
                metrics = second.metrics()
                assert metric(metrics, 'proxy_requests_total{route="blob"}') == 3
                assert metric(metrics, 'download_bytes_total{source="peer"}') == image.total_bytes
                assert metric(metrics, 'download_bytes_total{source="origin"}') == 0


def test_without_a_secret_a_second_daemon_checks_each_blob_with_one_piece_from_the_registry(
    tmp_path: Path,
) -> None:
    """Without a secret the tracker's manifest is a claim: the second daemon believes it for a
    blob once one piece it reads from the registry matches it, and takes the rest from the
    first daemon."""
    with (
        registry_process(tmp_path / "registry") as registry,
        tracker_process("--interval", "1s") as tracker,
    ):
        image = pushed_image(tmp_path, registry)
        common = ("--tracker", tracker.base_url, "--registry-mirror", registry.url)
        with dfdaemon(tmp_path, "first", *common) as first:
            pull(registry, first, tmp_path / "pull-1")
            blob_gets = registry.blob_gets()
            with dfdaemon(tmp_path, "second", *common) as second:
                pull(registry, second, tmp_path / "pull-2")
                assert_pulled(image, tmp_path / "pull-2")
                checks = registry.blob_gets() - blob_gets
                assert 1 <= checks <= 3, checks  # at most one Range GET per blob
                metrics = second.metrics()
                from_origin = metric(metrics, 'download_bytes_total{source="origin"}')
                from_peer = metric(metrics, 'download_bytes_total{source="peer"}')
                assert from_origin + from_peer == image.total_bytes
                assert 0 < from_origin <= 3 * 512 * 1024, from_origin


def test_pull_through_the_mirror_from_a_registry_with_basic_auth(tmp_path: Path) -> None:
    creds = ("puller", "s3cret-pass")
    with registry_process(tmp_path / "registry", htpasswd=creds) as registry:
        image = pushed_image(tmp_path, registry, creds)
        with dfdaemon(tmp_path, "node", "--registry-mirror", registry.url) as mirror:
            authfile = write_authfile(tmp_path / "auth.json", mirror.address, *creds)
            pull(registry, mirror, tmp_path / "pull", authfile)
            assert_pulled(image, tmp_path / "pull")
            assert_blobs_came_through_the_daemon_once(registry, image)


def test_a_client_without_credentials_cannot_get_a_cached_private_blob(tmp_path: Path) -> None:
    creds = ("owner", "owner-pass")
    with registry_process(tmp_path / "registry", htpasswd=creds) as registry:
        image = pushed_image(tmp_path, registry, creds)
        with dfdaemon(tmp_path, "node", "--registry-mirror", registry.url) as mirror:
            authfile = write_authfile(tmp_path / "auth.json", mirror.address, *creds)
            pull(registry, mirror, tmp_path / "pull", authfile)  # now every blob is cached
            layer = image.layer_digests[0]
            secret = image.blob_path(layer).read_bytes()
            target = f"/v2/{REPO}/blobs/{layer}"
            wrong = base64.b64encode(b"owner:guess").decode()
            for headers in ({}, {"Authorization": f"Basic {wrong}"}):
                status, answer_headers, body = mirror.get(target, headers)
                assert status == 401
                assert "basic-realm" in answer_headers.get("Www-Authenticate", "")
                assert secret[:4096] not in body
            good = base64.b64encode(b"owner:owner-pass").decode()
            status, _, body = mirror.get(target, {"Authorization": f"Basic {good}"})
            assert status == 200 and body == secret
