"""``skopeo copy`` of a ~200 MB image: straight from the registry, through a cold dfdaemon, and
through a second dfdaemon whose blobs are on a peer.

Everything is real and on 127.0.0.1: Debian's docker-registry holding an OCI image written with
random layers (``tests/helpers/registry.py`` builds and pushes it), ``dftracker``, and dfdaemon
(``python -m proxy.cli``) as skopeo's registry mirror. Each run pulls into a fresh ``dir:``.

* ``direct``: skopeo from the registry.
* ``cold``: a fresh tracker and a fresh dfdaemon with an empty cache; every blob comes from the
  registry through the daemon (Range requests into the swarm machinery, verified, streamed).
* ``peer``: a first dfdaemon already holds the image (it pulled it and keeps seeding); a fresh
  second dfdaemon (own cache, ports, socket) pulls through its own mirror: the blobs come from
  the first peer, not the registry (the registry's blob GET count is checked).

    .venv/bin/python bench/mirror_pull.py                    # 4 layers of 50 MiB, 3 runs
    .venv/bin/python bench/mirror_pull.py --layers 4 --layer-size 8M --runs 1

Target (issue #5): cold within 1.3x of direct (medians of 3).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from peerwire.units import format_size, parse_size  # noqa: E402
from tests.helpers.registry import (  # noqa: E402
    Registry,
    registry_process,
    skopeo_pull,
    skopeo_pull_through_mirror,
    skopeo_push,
    write_oci_layout,
)
from tests.integration.trackers import tracker_process  # noqa: E402

PYTHON = sys.executable
REPO, TAG = "bench/image", "latest"


@contextmanager
def dfdaemon(workdir: Path, name: str, tracker: str, registry: Registry) -> Iterator[str]:
    """A dfdaemon with its mirror on a free port; yields the mirror's host:port."""
    process = subprocess.Popen(
        [
            PYTHON,
            "-m",
            "proxy.cli",
            "--socket",
            str(workdir / f"{name}.sock"),
            "--cache-dir",
            str(workdir / f"{name}-cache"),
            "--proxy-port",
            "0",
            "--tracker",
            tracker,
            "--registry-mirror",
            registry.url,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin:/usr/sbin:/sbin", "DFGET_DAEMON_SOCKET": ""},
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline().strip()
        if " proxy http://" not in line:
            raise SystemExit(f"mirror_pull: dfdaemon did not start ({line!r})")
        yield line.rsplit("http://", 1)[1]
    finally:
        process.terminate()
        try:
            process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()


def timed(action: Any, output: Path) -> float:
    """Seconds ``action`` (a skopeo pull into ``output``) takes; ``output`` is removed after."""
    # Earlier steps' writes (the push, a previous pull, a daemon's cache) are flushed first:
    # their writeback would otherwise slow this pull's own writes (up to 0.5 s measured here).
    os.sync()
    started = time.monotonic()
    done = action()
    elapsed = time.monotonic() - started
    if done.returncode != 0:
        raise SystemExit(f"mirror_pull: skopeo failed:\n{done.stderr[-2000:]}")
    # skopeo checked every blob's digest. Its output goes, so that the page cache does not
    # grow by the image at every pull: on a VM that hands free memory back to its host
    # (virtio-balloon free page reporting, as here) fresh pages cost ~3x more system time to
    # fill, which slowed later pulls (and a cold pull, which writes the image twice, more).
    shutil.rmtree(output)
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--layer-size", default="50M")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "mirror_pull.json")
    args = parser.parse_args()
    layer_bytes = parse_size(args.layer_size)
    times: dict[str, list[float]] = {"direct": [], "cold": [], "peer": []}
    registry_gets: dict[str, list[int]] = {"cold": [], "peer": []}
    with tempfile.TemporaryDirectory(prefix="mirror-bench-", dir="/var/tmp") as tmp:
        work = Path(tmp)
        image = write_oci_layout(work / "layout", layers=[layer_bytes] * args.layers, tag=TAG)
        print(f"image: {args.layers} layers, {format_size(image.total_bytes)}", flush=True)
        with registry_process(work / "registry") as registry:
            skopeo_push(image, registry, REPO)

            def dest(label: str) -> Path:
                path = work / f"pull-{label}"
                shutil.rmtree(path, ignore_errors=True)
                path.mkdir()
                return path

            for run in range(args.runs):
                direct_dest, cold_dest, peer_dest = (dest(f"{k}{run}") for k in ("d", "c", "p"))
                times["direct"].append(
                    timed(
                        lambda: skopeo_pull(registry, REPO, TAG, direct_dest),  # noqa: B023
                        direct_dest,
                    )
                )
                workdir = work / f"run{run}"
                with (
                    tracker_process("--interval", "2s") as tracker,
                    dfdaemon(workdir, "first", tracker.base_url, registry) as first,
                ):
                    before = registry.blob_gets()
                    times["cold"].append(
                        timed(
                            lambda: skopeo_pull_through_mirror(
                                registry,
                                first,
                                REPO,
                                TAG,
                                cold_dest,  # noqa: B023
                            ),
                            cold_dest,
                        )
                    )
                    registry_gets["cold"].append(registry.blob_gets() - before)
                    with dfdaemon(workdir, "second", tracker.base_url, registry) as second:
                        before = registry.blob_gets()
                        times["peer"].append(
                            timed(
                                lambda: skopeo_pull_through_mirror(
                                    registry,
                                    second,
                                    REPO,
                                    TAG,
                                    peer_dest,  # noqa: B023
                                ),
                                peer_dest,
                            )
                        )
                        registry_gets["peer"].append(registry.blob_gets() - before)
                shutil.rmtree(workdir)  # the daemons' caches (see ``timed``)
                print(
                    f"run {run + 1}: direct {times['direct'][-1]:.2f} s, "
                    f"cold {times['cold'][-1]:.2f} s "
                    f"({registry_gets['cold'][-1]} registry blob GETs), "
                    f"peer {times['peer'][-1]:.2f} s "
                    f"({registry_gets['peer'][-1]} registry blob GETs)",
                    flush=True,
                )
    medians = {k: statistics.median(v) for k, v in times.items()}
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT
    ).stdout.strip()
    document = {
        "benchmark": "mirror_pull",
        "commit": commit,
        "machine": {"python": platform.python_version(), "platform": platform.platform()},
        "image_bytes": image.total_bytes,
        "layers": args.layers,
        "runs": args.runs,
        "times_s": times,
        "median_s": medians,
        "cold_over_direct": medians["cold"] / medians["direct"],
        "peer_over_direct": medians["peer"] / medians["direct"],
        "registry_blob_gets": registry_gets,
        "target_cold_over_direct": 1.3,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(document, indent=2) + "\n")
    print(
        f"medians: direct {medians['direct']:.2f} s, cold {medians['cold']:.2f} s "
        f"({document['cold_over_direct']:.2f}x), peer {medians['peer']:.2f} s "
        f"({document['peer_over_direct']:.2f}x); wrote {args.out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
