"""``dfdaemon``: the daemon of ``dfget.daemoncli`` plus the registry mirror / HTTP proxy.

Takes every option of ``dfget.daemoncli`` (same names, environment and TOML file), and the
proxy's own (``proxy.config``): ``--registry HOST=URL`` and ``--proxy-rule ACTION=REGEX``.
Prints ``listening unix:SOCKET peer-port N proxy http://HOST:PORT`` once everything listens.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys

import uvloop

from dfget.daemon import Daemon
from dfget.daemonapi import DaemonApi, DaemonCollector
from dfget.daemoncli import build_parser as daemon_parser
from dfget.daemonconfig import DaemonConfig, load_config
from proxy.config import ProxyConfig, load_proxy_config
from proxy.run import start_proxy


def build_parser() -> argparse.ArgumentParser:
    parser = daemon_parser()
    parser.description = (parser.description or "") + (
        " The registry mirror and HTTP proxy listen on --proxy-port; proxy options also read "
        "from DFDAEMON_PROXY_<OPTION> (JSON for lists) and the file's [proxy] table."
    )
    parser.add_argument(
        "--registry",
        dest="registries",
        action="append",
        metavar="HOST=URL",
        help="a registry containerd may name with ?ns=HOST, and its URL (repeatable)",
    )
    parser.add_argument(
        "--proxy-rule",
        dest="rules",
        action="append",
        metavar="ACTION=REGEX",
        help="HTTP proxy mode: URLs matching REGEX go 'swarm' or 'direct' (repeatable, "
        "first match wins, no match is refused)",
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
