"""``dfdaemon``: command-line arguments -> ``DaemonConfig`` -> the daemon, its API, its proxy."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from pathlib import Path

import uvloop

from dfget.daemon import Daemon
from dfget.daemonapi import DaemonApi
from dfget.daemonconfig import CONFIG_ENV, ENV_PREFIX, DaemonConfig, load_config
from tracker.auth import load_secret

DEFAULTS = DaemonConfig()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dfdaemon",
        description=(
            "The node daemon: one long-lived peer for the whole host (shared peer port, host-wide "
            "rate limits, a cache of finished tasks that keep seeding, garbage collection) and "
            "the local API dfget hands its downloads to. Every option also reads from "
            f"{ENV_PREFIX}<OPTION> (e.g. {ENV_PREFIX}CACHE_SIZE_BYTES=20G) and a TOML file "
            f"(--config or ${CONFIG_ENV}); flags win. "
            "Example: dfdaemon --tracker http://tracker:6969 --cache-size 20G --host-rate 100M"
        ),
    )
    add = parser.add_argument
    add("--tracker", metavar="URL[,URL...]", help="tracker base or announce URLs, tried in turn")
    add(
        "--proxy-port",
        dest="proxy_port",
        metavar="N",
        help=f"registry mirror port (default {DEFAULTS.proxy_port})",
    )
    add(
        "--peer-port",
        dest="peer_port",
        metavar="N",
        help="the host's peer port (default: any free port)",
    )
    add(
        "--registry-mirror",
        dest="registry_mirror",
        metavar="URL",
        help="upstream registry of the mirror",
    )
    add(
        "--cache-dir",
        dest="cache_dir",
        metavar="DIR",
        help=f"cache directory (default {DEFAULTS.cache_dir})",
    )
    add(
        "--cache-size",
        dest="cache_size_bytes",
        metavar="SIZE",
        help="cache quota, e.g. 10G (default 10G)",
    )
    add(
        "--cache-ttl",
        dest="cache_ttl_s",
        metavar="DURATION",
        help="drop tasks unused this long, e.g. 24h (default)",
    )
    add(
        "--host-rate",
        dest="host_rate_bps",
        metavar="RATE",
        help="download limit of the whole host, e.g. 100M",
    )
    add(
        "--upload-rate",
        dest="upload_rate_bps",
        metavar="RATE",
        help="upload limit of the whole host, e.g. 50M",
    )
    add("--socket", metavar="PATH", help=f"local API socket (default {DEFAULTS.socket})")
    add("--zone", metavar="LABEL", help="this host's zone (rack, datacenter) for peer selection")
    add(
        "--secret-file",
        dest="secret_file",
        metavar="FILE",
        help="the cluster secret (else DRAGONFLY_SECRET); see SECURITY.md",
    )
    add("--config", type=Path, metavar="FILE", help="TOML file with any option")
    add("-v", "--verbose", action="count", default=0, help="more logging (-v info, -vv debug)")
    return parser


async def serve(config: DaemonConfig) -> None:
    daemon = Daemon(config)
    await daemon.start()
    api = DaemonApi(daemon)
    await api.start(config.socket)
    print(f"listening unix:{config.socket} peer-port {daemon.peer_port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        await stop.wait()
    finally:
        await api.close()
        await daemon.close()
        config.socket.unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = vars(parser.parse_args(argv))
    config_file, verbose = args.pop("config"), args.pop("verbose")
    try:
        config = load_config(args, os.environ, config_file)
        load_secret(  # refuse a weak or unreadable secret now, not at the first download
            str(config.secret_file) if config.secret_file else None,
            os.environ.get("DRAGONFLY_SECRET"),
        )
    except (ValueError, OSError) as exc:
        parser.error(str(exc))
    logging.basicConfig(
        level=(logging.WARNING, logging.INFO, logging.DEBUG)[min(verbose, 2)],
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        uvloop.run(serve(config))
    except OSError as exc:
        print(f"dfdaemon: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
