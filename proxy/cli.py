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
    try:
        args = build_parser().parse_args(argv)
        config, proxy_config, loaded = load_config(vars(args), os.environ, args.config)
    except SettingsError as exc:
        print(f"dfdaemon: {exc}", file=sys.stderr)
        return 2
    for notice in loaded.notices:
        print(f"dfdaemon: {notice}", file=sys.stderr)
    if args.print_config:
        print("\n".join(loaded.describe({"": config, "proxy": proxy_config})))
        return 0
    verbose = args.verbose
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
