"""Decentralized mode's options in dfget and dfdaemon: read like every other setting, a bad
value is one clear line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from dfget.config import build_options
from dfget.coordinators.serfoptions import SerfOptions
from dfget.coordinators.serfwire import gossip_key
from peerwire.settings import SettingsError
from proxy.config import load_config


def dfget_options(environ: dict[str, str] | None = None, **flags: Any) -> Any:
    args = {"url": "http://origin/file", **flags}
    return build_options(args, environ or {}, None)[0]


def test_dfget_takes_serf_options_only_with_the_serf_coordinator() -> None:
    assert dfget_options().serf is None
    assert dfget_options(join=["10.0.0.5:7946"]).serf is None
    options = dfget_options(
        coordinator="serf",
        serf_rpc="127.0.0.1:17373",
        join=["10.0.0.5:7946,10.0.0.6:7946", "[::1]:7946"],
        discover="dns:dfdaemon.default.svc:8301",
    )
    assert options.serf == SerfOptions(
        rpc="127.0.0.1:17373",
        join=("10.0.0.5:7946", "10.0.0.6:7946", "[::1]:7946"),
        discover="dns:dfdaemon.default.svc:8301",
    )
    from_env = dfget_options({"DFGET_COORDINATOR": "serf", "DFGET_SERF_AGENT": "auto"})
    assert from_env.serf is not None and from_env.serf.agent == "auto"


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        ({"coordinator": "zookeeper"}, "coordinator"),
        ({"coordinator": "serf", "join": ["nohost"]}, "join"),
        ({"coordinator": "serf", "join": ["host:99999"]}, "join"),
        ({"coordinator": "serf", "serf_agent": "sometimes"}, "serf_agent"),
        ({"coordinator": "serf", "serf_rpc": "localhost"}, "serf_rpc"),
        ({"coordinator": "serf", "discover": "srv:_serf._tcp"}, "discover"),
        ({"coordinator": "serf", "serf_profile": "fast"}, "serf_profile"),
    ],
)
def test_a_bad_serf_option_names_itself(flags: dict[str, Any], named: str) -> None:
    with pytest.raises(SettingsError) as caught:
        dfget_options(**flags)
    assert named.replace("_", "-") in str(caught.value) or named in str(caught.value)


def test_dfdaemon_reads_the_same_options_and_its_stats_port(tmp_path: Path) -> None:
    config, _, _ = load_config(
        {"coordinator": "serf", "serf_agent": "auto", "serf_bind": "10.0.0.5:7946",
         "stats_port": "7070"},
        {"DFDAEMON_JOIN": "10.0.0.6:7946"},
        None,
    )  # fmt: skip
    assert config.serf == SerfOptions(agent="auto", bind="10.0.0.5:7946", join=("10.0.0.6:7946",))
    assert config.stats_port == 7070
    plain, _, _ = load_config({}, {}, None)
    assert plain.serf is None and plain.stats_port is None


def test_dfdaemon_prints_the_gossip_key_of_the_cluster_secret(tmp_path: Path) -> None:
    secret = "a cluster secret of more than sixteen bytes"
    command = [sys.executable, "-m", "proxy.cli", "--print-serf-key"]
    printed = subprocess.run(
        command, env={"DRAGONFLY_SECRET": secret, "PATH": ""}, capture_output=True, text=True
    )
    assert printed.returncode == 0, printed.stderr
    assert printed.stdout.strip() == gossip_key(secret.encode())
    without = subprocess.run(command, env={"PATH": ""}, capture_output=True, text=True)
    assert without.returncode == 2 and "no cluster secret" in without.stderr
