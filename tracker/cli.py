"""``dftracker``: command-line arguments -> ``TrackerConfig`` -> ``server.serve``."""

from __future__ import annotations

import argparse
import gc
import logging
import os
import sys
from pathlib import Path

import uvloop

from peerwire.auth import load_secret
from tracker.config import ENV_PREFIX, TrackerConfig, load_config
from tracker.server import SECRET_ENV, TrackerServer, serve

DEFAULTS = TrackerConfig()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
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
            "Run the tracker. Every option can also be set in a TOML file (--config, field names "
            f"as in the README) or the environment ({ENV_PREFIX}<FIELD>, e.g. "
            f"{ENV_PREFIX}INTERVAL_S=10s); flags win over the environment over the file. "
            "Example: dftracker serve --port 6969 --interval 5s"
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add = serve_parser.add_argument
    add("--host", dest="host", help=f"address to listen on (default {DEFAULTS.host}: loopback)")
    add("--port", dest="port", help=f"TCP port; 0 picks a free one (default {DEFAULTS.port})")
    add(
        "--interval",
        dest="interval_s",
        metavar="DURATION",
        help=f"announce interval told to peers, e.g. 5s (default {DEFAULTS.interval_s:g}s)",
    )
    add(
        "--min-interval",
        dest="min_interval_s",
        metavar="DURATION",
        help=f"BEP 3 min interval (default {DEFAULTS.min_interval_s:g}s)",
    )
    add(
        "--numwant-max",
        dest="numwant_max",
        metavar="N",
        help=f"most peers in one answer (default {DEFAULTS.numwant_max})",
    )
    add(
        "--origin-budget",
        dest="origin_budget",
        metavar="N",
        help=(
            "peers of one task fetching from the origin at once; about origin bandwidth / peer "
            f"bandwidth (default {DEFAULTS.origin_budget})"
        ),
    )
    add(
        "--assign-ttl",
        dest="assign_ttl_s",
        metavar="DURATION",
        help=f"take back origin assignments not done within (default {DEFAULTS.assign_ttl_s:g}s)",
    )
    add(
        "--max-tasks",
        dest="max_tasks",
        metavar="N",
        help=f"tasks tracked at most (default {DEFAULTS.max_tasks})",
    )
    add(
        "--max-peers-per-task",
        dest="max_peers_per_task",
        metavar="N",
        help=f"peers stored per task at most (default {DEFAULTS.max_peers_per_task})",
    )
    add(
        "--trust-ip-param",
        dest="trust_ip_param",
        action="store_const",
        const=True,
        help="use the ip/ipv4/ipv6 announce parameters (only behind a trusted NAT or proxy)",
    )
    add(
        "--full-scrape",
        dest="full_scrape",
        action="store_const",
        const=True,
        help="answer /scrape without info_hash with every task (up to max_scrape_hashes)",
    )
    add(
        "--secret-file",
        dest="secret_file",
        metavar="FILE",
        help="the cluster secret (else DRAGONFLY_SECRET): announces and manifest updates must "
        "prove they hold it; see SECURITY.md",
    )
    add("--config", type=Path, metavar="FILE", help="TOML file with any option above and more")
    add("-v", "--verbose", action="count", default=0, help="more logging (-v info, -vv debug)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    options = vars(args)
    config_file = options.pop("config")
    verbose = options.pop("verbose")
    options.pop("command")
    try:
        config = load_config(options, config_file=config_file)
        load_secret(config.secret_file, os.environ.get(SECRET_ENV))  # refuse a weak one now
    except (ValueError, OSError) as exc:
        parser.error(str(exc))
    logging.basicConfig(
        level=(logging.WARNING, logging.INFO, logging.DEBUG)[min(verbose, 2)],
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )

    def ready(server: TrackerServer) -> None:
        host = config.host if ":" not in config.host else f"[{config.host}]"
        print(f"listening http://{host}:{server.port}/announce", flush=True)

    # Modules and config live as long as the process: keep them out of the cyclic GC's scans.
    gc.freeze()
    try:
        uvloop.run(serve(config, ready))
    except OSError as exc:
        print(f"dftracker: cannot listen on {config.host}:{config.port}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
