"""``dfdaemon``: command-line arguments -> the daemon's and the proxy's configuration -> the node's
peer (``proxy.daemon``), its local API (``proxy.api``) and the registry mirror / HTTP proxy
(``proxy.server``), all in one process.

Prints ``listening unix:SOCKET peer-port N proxy http://HOST:PORT`` once everything listens.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys

import uvloop

from dfget.coordinators.serfnode import SerfNodeError
from peerwire.auth import load_secret
from peerwire.settings import ArgumentParser, SettingsError
from proxy.api import DaemonApi, DaemonCollector
from proxy.config import (
    CONFIG_ENV,
    ENV_PREFIX,
    SETTINGS,
    DaemonConfig,
    ProxyConfig,
    load_config,
)
from proxy.daemon import Daemon
from proxy.run import start_proxy


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog="dfdaemon",
        description=(
            "The node daemon: one long-lived peer for the whole host (shared peer port, host-wide "
            "rate limits, a cache of finished tasks that keep seeding, garbage collection), "
            "the local API dfget hands its downloads to, and the registry mirror / HTTP proxy "
            "on --proxy-port. Each option --some-name is also the variable "
            f"{ENV_PREFIX}SOME_NAME and the key some_name of a TOML file (--config or "
            f"${CONFIG_ENV}; top-level or under [dfdaemon]; the proxy_* keys also under [proxy] "
            "without their prefix). Flags win over the environment over the file; an empty "
            "variable is unset. The former names with a unit (cache_size_bytes, "
            f"{ENV_PREFIX}CACHE_SIZE_BYTES, [proxy] head_timeout_s, ...) still work. "
            "Example: dfdaemon --tracker http://tracker:6969 --cache-size 20G --host-rate 100M"
        ),
    )
    SETTINGS.add_arguments(parser)
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="more logging (-v info, -vv debug)"
    )
    parser.add_argument(
        "--print-serf-key", action="store_true",
        help="print the Serf gossip key derived from the cluster secret (for a Serf agent run "
        "as its own service: serf agent -encrypt KEY) and exit",
    )  # fmt: skip
    return parser


async def serve(config: DaemonConfig, proxy_config: ProxyConfig) -> None:
    daemon = Daemon(config)
    try:
        await daemon.start()
    except BaseException:
        await daemon.close()
        raise
    collector = DaemonCollector(daemon)
    stats = None
    if daemon.host.serf is not None:
        from proxy.serfstats import SerfDaemonCollector, StatsServer

        collector = SerfDaemonCollector(daemon, daemon.host.serf)
    api = DaemonApi(daemon, collector)
    proxy = None
    try:
        await api.start(config.socket)
        proxy = await start_proxy(daemon, proxy_config, collector)
        line = f"listening unix:{config.socket} peer-port {daemon.peer_port} proxy {proxy.url}"
        if daemon.host.serf is not None and config.stats_port is not None:
            stats = StatsServer(daemon.host.serf, api.registry)
            await stats.start(config.stats_host, config.stats_port)
            line += f" stats {stats.url}"
        print(line, flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        await stop.wait()
    finally:
        if stats is not None:
            await stats.close()
        if proxy is not None:
            await proxy.close()
        await api.close()
        await daemon.close()
        config.socket.unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        config, proxy_config, loaded = load_config(vars(args), os.environ, args.config)
    except SettingsError as exc:
        print(f"dfdaemon: {exc}", file=sys.stderr)
        return 2
    for notice in loaded.notices:
        print(f"dfdaemon: {notice}", file=sys.stderr)
    if args.print_config:
        print("\n".join(loaded.describe({"": config, "proxy": proxy_config, "serf": config.serf})))
        return 0
    if args.print_serf_key:
        from dfget.coordinators.serfwire import gossip_key

        secret_file = str(config.secret_file) if config.secret_file else None
        try:
            secret = load_secret(secret_file, os.environ.get("DRAGONFLY_SECRET"))
        except (OSError, ValueError) as exc:
            print(f"dfdaemon: {exc}", file=sys.stderr)
            return 2
        if secret is None:
            print(
                "dfdaemon: no cluster secret (--secret-file or DRAGONFLY_SECRET)", file=sys.stderr
            )
            return 2
        print(gossip_key(secret))
        return 0
    verbose = args.verbose
    logging.basicConfig(
        level=(logging.WARNING, logging.INFO, logging.DEBUG)[min(verbose, 2)],
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        uvloop.run(serve(config, proxy_config))
    except (OSError, SerfNodeError) as exc:
        print(f"dfdaemon: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
