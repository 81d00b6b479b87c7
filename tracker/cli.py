"""``dftracker``: command-line arguments -> ``TrackerConfig`` -> ``server.serve``."""

from __future__ import annotations

import gc
import ipaddress
import logging
import os
import sys

import uvloop

from peerwire.settings import ArgumentParser, SettingsError
from tracker.config import ENV_PREFIX, SETTINGS, TrackerConfig
from tracker.server import TrackerServer, serve, steady_collector


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog="dftracker",
        description=(
            "The swarm's HTTP announce tracker: BitTorrent announce/scrape (BEP 3, 7, 23, 48), "
            "peer selection, back-to-source assignment, task manifests, /stats, /metrics."
        ),
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve_parser = commands.add_parser(
        "serve",
        help="run the tracker until Ctrl-C or SIGTERM",
        description=(
            "Run the tracker. Each option --some-name is also the environment variable "
            f"{ENV_PREFIX}SOME_NAME and the key some_name of a TOML file (--config; top-level or "
            "under [tracker]); flags win over the environment over the file, an empty variable "
            "is unset. Durations read 5s, 250ms, 2m; sizes 16K, 8M; a TOML number is seconds or "
            "bytes. The former names with a unit (interval_s, DFTRACKER_INTERVAL_S, "
            "max_body_bytes, ...) still work. "
            "Example: dftracker serve --port 6969 --interval 5s"
        ),
    )
    SETTINGS.add_arguments(serve_parser)
    serve_parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="more logging (-v info, -vv debug)"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    environ = os.environ
    try:
        args = build_parser().parse_args(argv)
        config_file = SETTINGS.find_config_file(args.config, environ)
        loaded = SETTINGS.load(vars(args), environ, config_file)
        config = loaded.build(TrackerConfig)
    except SettingsError as exc:
        print(f"dftracker: {exc}", file=sys.stderr)
        return 2
    for notice in loaded.notices:
        print(f"dftracker: {notice}", file=sys.stderr)
    if args.print_config:
        print("\n".join(loaded.describe({"": config})))
        return 0
    verbose = args.verbose
    logging.basicConfig(
        level=(logging.WARNING, logging.INFO, logging.DEBUG)[min(verbose, 2)],
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )

    def ready(server: TrackerServer) -> None:
        host = config.host if ":" not in config.host else f"[{config.host}]"
        if server.routes.secret is None and not _loopback(config.host):
            print(
                f"dftracker: listening on {config.host} without a cluster secret: anyone who "
                "can reach this tracker can announce and offer manifests (peers check them "
                "against the origin; see SECURITY.md)",
                file=sys.stderr,
                flush=True,
            )
        print(f"listening http://{host}:{server.port}/announce", flush=True)

    # Modules and config live as long as the process: keep them out of the cyclic GC's scans.
    gc.freeze()
    steady_collector()
    try:
        uvloop.run(serve(config, ready))
    except OSError as exc:
        print(f"dftracker: cannot listen on {config.host}:{config.port}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    return 0


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name: it may resolve to anything


if __name__ == "__main__":
    sys.exit(main())
