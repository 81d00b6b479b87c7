"""The registry fixtures themselves: a real docker-registry, a generated OCI image, skopeo."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import socket
import tarfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.helpers.registry import (
    Image,
    registry_process,
    skopeo_pull,
    skopeo_pull_through_mirror,
    skopeo_push,
    write_authfile,
    write_oci_layout,
)

pytestmark = pytest.mark.integration

REPO = "fixtures/app"
USER, PASSWORD = "alice", "s3cret-pass"


def pulled_blobs(dest: Path) -> dict[str, bytes]:
    """The blobs of a ``dir:`` copy (files named by their hex digest), keyed ``sha256:<hex>``."""
    return {
        f"sha256:{path.name}": path.read_bytes()
        for path in dest.iterdir()
        if len(path.name) == 64 and all(c in "0123456789abcdef" for c in path.name)
    }


def assert_pulled_image(dest: Path, image: Image) -> None:
    blobs = pulled_blobs(dest)
    assert sorted(blobs) == sorted(image.blob_digests)
    for digest, data in blobs.items():
        assert f"sha256:{hashlib.sha256(data).hexdigest()}" == digest
        assert data == image.blob_path(digest).read_bytes()
    manifest = (dest / "manifest.json").read_bytes()
    assert f"sha256:{hashlib.sha256(manifest).hexdigest()}" == image.manifest_digest


def test_oci_layout_names_every_blob_by_its_sha256(tmp_path: Path) -> None:
    image = write_oci_layout(tmp_path / "image", layers=[4096, 65536], tag="v1")

    assert json.loads((image.layout / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}
    index = json.loads((image.layout / "index.json").read_text())
    (entry,) = index["manifests"]
    assert entry["digest"] == image.manifest_digest
    assert entry["annotations"]["org.opencontainers.image.ref.name"] == "v1"
    for path in (image.layout / "blobs" / "sha256").iterdir():
        assert hashlib.sha256(path.read_bytes()).hexdigest() == path.name
    manifest = json.loads(image.blob_path(image.manifest_digest).read_bytes())
    assert manifest["config"]["digest"] == image.config_digest
    assert [layer["digest"] for layer in manifest["layers"]] == list(image.layer_digests)
    for descriptor in [manifest["config"], *manifest["layers"]]:
        assert descriptor["size"] == image.blob_path(descriptor["digest"]).stat().st_size
    assert image.total_bytes == sum(
        image.blob_path(digest).stat().st_size for digest in image.blob_digests
    )


def test_oci_layers_are_gzip_tars_of_incompressible_random_files(tmp_path: Path) -> None:
    sizes = [100_000, 100_000, 0]
    image = write_oci_layout(tmp_path / "image", layers=sizes)
    config = json.loads(image.blob_path(image.config_digest).read_bytes())
    contents = []
    for digest, size, diff_id in zip(
        image.layer_digests, sizes, config["rootfs"]["diff_ids"], strict=True
    ):
        tar_bytes = gzip.decompress(image.blob_path(digest).read_bytes())
        assert f"sha256:{hashlib.sha256(tar_bytes).hexdigest()}" == diff_id
        with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as tar:
            (member,) = tar.getmembers()
            assert member.isfile() and member.size == size
            handle = tar.extractfile(member)
            assert handle is not None
            contents.append(handle.read())
        assert image.blob_sizes[digest] >= size  # gzip did not shrink random bytes
    assert contents[0] != contents[1]


def test_pushed_image_pulls_back_identical_and_each_blob_get_is_counted(tmp_path: Path) -> None:
    image = write_oci_layout(tmp_path / "image", layers=[300_000, 1_200_000])
    with registry_process(tmp_path / "registry") as registry:
        assert registry.address.startswith("127.0.0.1:")
        skopeo_push(image, registry, REPO)
        assert registry.blob_gets() == 0  # a push HEADs and PUTs blobs, it never GETs them

        for round_number in (1, 2):
            dest = tmp_path / f"pull-{round_number}"
            result = skopeo_pull(registry, REPO, image.tag, dest)
            assert result.returncode == 0, result.stderr
            assert_pulled_image(dest, image)
            assert [registry.blob_gets(d) for d in image.blob_digests] == [round_number] * 3
            assert registry.blob_gets() == 3 * round_number
            assert registry.blob_bytes_sent() == round_number * image.total_bytes
        assert "response completed" in registry.log_text()

    assert registry.process.poll() is not None
    assert registry.blob_gets(image.layer_digests[0]) == 2  # the log outlives the process


def test_registry_with_basic_auth_serves_only_clients_with_credentials(tmp_path: Path) -> None:
    image = write_oci_layout(tmp_path / "image", layers=[50_000, 80_000])
    with registry_process(tmp_path / "registry", htpasswd=(USER, PASSWORD)) as registry:
        with pytest.raises(AssertionError, match="push"):
            skopeo_push(image, registry, REPO)
        skopeo_push(image, registry, REPO, creds=(USER, PASSWORD))

        anonymous = skopeo_pull(registry, REPO, image.tag, tmp_path / "anonymous")
        assert anonymous.returncode != 0
        assert "unauthorized" in anonymous.stderr.lower()
        wrong = skopeo_pull(registry, REPO, image.tag, tmp_path / "wrong", creds=(USER, "nope"))
        assert wrong.returncode != 0
        assert registry.blob_gets() == 0

        dest = tmp_path / "allowed"
        allowed = skopeo_pull(registry, REPO, image.tag, dest, creds=(USER, PASSWORD))
        assert allowed.returncode == 0, allowed.stderr
        assert_pulled_image(dest, image)
        assert [registry.blob_gets(d) for d in image.blob_digests] == [1, 1, 1]


@contextmanager
def refusing_listener() -> Iterator[tuple[str, list[int]]]:
    """A TCP port on 127.0.0.1 that accepts and at once closes connections, counting them: a
    mirror that is there but broken."""
    accepted: list[int] = []
    stop = threading.Event()
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    server.settimeout(0.1)

    def serve() -> None:
        while not stop.is_set():
            try:
                connection, _ = server.accept()
            except TimeoutError:
                continue
            accepted.append(1)
            connection.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.getsockname()[1]}", accepted
    finally:
        stop.set()
        thread.join(timeout=5)
        server.close()


def test_pull_through_broken_mirror_tries_it_then_silently_uses_registry(tmp_path: Path) -> None:
    image = write_oci_layout(tmp_path / "image", layers=[64_000, 128_000])
    with registry_process(tmp_path / "registry") as registry, refusing_listener() as mirror:
        mirror_address, accepted = mirror
        skopeo_push(image, registry, REPO)
        dest = tmp_path / "pulled"
        result = skopeo_pull_through_mirror(registry, mirror_address, REPO, image.tag, dest)

        assert result.returncode == 0, result.stderr
        assert accepted, "skopeo never contacted the mirror named in registries.conf"
        assert_pulled_image(dest, image)
        # The fallback that mirror tests must rule out: every blob came from the registry.
        assert [registry.blob_gets(d) for d in image.blob_digests] == [1, 1, 1]
        conf = dest.with_name(dest.name + ".registries.conf").read_text()
        assert f'location = "{mirror_address}"' in conf


def test_pull_through_mirror_reads_credentials_from_authfile(tmp_path: Path) -> None:
    image = write_oci_layout(tmp_path / "image", layers=[32_000])
    with registry_process(tmp_path / "registry", htpasswd=(USER, PASSWORD)) as registry:
        skopeo_push(image, registry, REPO, creds=(USER, PASSWORD))
        mirror_address = unused_address()
        registry_only = tmp_path / "registry-auth.json"
        write_authfile(registry_only, registry.address, USER, PASSWORD)
        mirror_only = write_authfile(tmp_path / "mirror-auth.json", mirror_address, USER, PASSWORD)

        denied = skopeo_pull_through_mirror(
            registry, mirror_address, REPO, image.tag, tmp_path / "denied", authfile=mirror_only
        )
        assert denied.returncode != 0  # the mirror's entry is not used for the registry
        dest = tmp_path / "allowed"
        allowed = skopeo_pull_through_mirror(
            registry, mirror_address, REPO, image.tag, dest, authfile=registry_only
        )
        assert allowed.returncode == 0, allowed.stderr
        assert_pulled_image(dest, image)


def unused_address() -> str:
    """127.0.0.1 and a port nobody listens on (connections are refused)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{probe.getsockname()[1]}"
