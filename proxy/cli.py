"""``dfdaemon``: command-line arguments -> the daemon's and the proxy's configuration -> the node's
peer (``proxy.daemon``), its local API (``proxy.api``) and the registry mirror / HTTP proxy
(``proxy.server``), all in one process.

Prints ``listening unix:SOCKET peer-port N proxy http://HOST:PORT`` once everything listens.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from pathlib import Path

import uvloop

from proxy.api import DaemonApi, DaemonCollector
from proxy.config import ProxyConfig, load_proxy_config
from proxy.daemon import Daemon
from proxy.daemonconfig import CONFIG_ENV, ENV_PREFIX, DaemonConfig, load_config
from proxy.run import start_proxy

DEFAULTS = DaemonConfig()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dfdaemon",
        description=(
            "The node daemon: one long-lived peer for the whole host (shared peer port, host-wide "
            "rate limits, a cache of finished tasks that keep seeding, garbage collection), "
            "the local API dfget hands its downloads to, and the registry mirror / HTTP proxy "
            "on --proxy-port (proxy options also read from DFDAEMON_PROXY_<OPTION>, JSON for "
            "lists, and the file's [proxy] table). Every option also reads from "
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
    add(
        "--registry",
        dest="registries",
        action="append",
        metavar="HOST=URL",
        help="a registry containerd may name with ?ns=HOST, and its URL (repeatable)",
    )
    add(
        "--proxy-rule",
        dest="rules",
        action="append",
        metavar="ACTION=REGEX",
        help="HTTP proxy mode: URLs matching REGEX go 'swarm' or 'direct' (repeatable, "
        "first match wins, no match is refused)",
    )
    add("--config", type=Path, metavar="FILE", help="TOML file with any option")
    add("-v", "--verbose", action="count", default=0, help="more logging (-v info, -vv debug)")
    return parser


async def serve(config: DaemonConfig, proxy_config: ProxyConfig) -> None:
    daemon = Daemon(config)
    await daemon.start()
    collector = DaemonCollector(daemon)
    api = DaemonApi(daemon, collector)
    proxy = None
    try:
        await api.start(config.socket)
        proxy = await start_proxy(daemon, proxy_config, collector)
        print(
            f"listening unix:{config.socket} peer-port {daemon.peer_port} proxy {proxy.url}",
            flush=True,
        )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        await stop.wait()
    finally:
        if proxy is not None:
            await proxy.close()
        await api.close()
        await daemon.close()
        config.socket.unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = vars(parser.parse_args(argv))
    config_file, verbose = args.pop("config"), args.pop("verbose")
    proxy_flags = {"registries": args.pop("registries"), "rules": args.pop("rules")}
    try:
        config = load_config(args, os.environ, config_file)
        proxy_config = load_proxy_config(config, proxy_flags, os.environ, config_file)
    except ValueError as exc:
        parser.error(str(exc))
    logging.basicConfig(
        level=(logging.WARNING, logging.INFO, logging.DEBUG)[min(verbose, 2)],
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        uvloop.run(serve(config, proxy_config))
    except OSError as exc:
        print(f"dfdaemon: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
