"""proxy.config: the daemon's and the proxy's settings, from the file ([dfdaemon], [proxy]),
DFDAEMON_* variables and flags, in that order of strength."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from proxy.config import DaemonConfig, ProxyConfig, load_config, parse_rule

MIRROR = {"proxy_port": "7001", "registry_mirror": "http://127.0.0.1:5000"}


def load(
    flags: dict[str, Any], environ: dict[str, str], file: Path | None
) -> tuple[DaemonConfig, ProxyConfig]:
    daemon, proxy, _ = load_config({**MIRROR, **flags}, environ, file)
    return daemon, proxy


def test_daemon_options_give_address_and_upstream() -> None:
    _, config = load({}, {}, None)
    assert (config.host, config.port, config.upstream) == (
        "127.0.0.1",
        7001,
        "http://127.0.0.1:5000",
    )
    assert config.allowed_ns == {"127.0.0.1:5000": "http://127.0.0.1:5000"}


def test_toml_table_then_environment_then_flags(tmp_path: Path) -> None:
    file = tmp_path / "dfdaemon.toml"
    file.write_text(
        "[dfdaemon]\nproxy_port = 7002\n"
        "[proxy]\nhead_timeout = 5\n"
        'rules = [{regex = "^http://a/", action = "swarm"}, "direct=^http://b/"]\n'
        '[proxy.registries]\n"docker.io" = "https://registry-1.docker.io/"\n'
    )
    daemon, config = load_config({}, {}, file)[:2]
    assert daemon.proxy_port == config.port == 7002
    assert config.head_timeout_s == 5.0
    assert [(r.pattern.pattern, r.action) for r in config.rules] == [
        ("^http://a/", "swarm"),
        ("^http://b/", "direct"),
    ]
    assert config.allowed_ns["docker.io"] == "https://registry-1.docker.io"
    environ = {
        "DFDAEMON_PROXY_RULES": '[{"regex": "^http://env/", "action": "direct"}]',
        "DFDAEMON_PROXY_HEAD_TIMEOUT": "7s",
    }
    _, config = load({}, environ, file)
    assert [r.pattern.pattern for r in config.rules] == ["^http://env/"]
    assert config.head_timeout_s == 7.0
    _, config = load({"proxy_rules": ["swarm=^http://flag/"]}, environ, file)
    assert [r.pattern.pattern for r in config.rules] == ["^http://flag/"]


def test_daemon_options_from_the_three_sources(tmp_path: Path) -> None:
    file = tmp_path / "d.toml"
    file.write_text('cache_size = "5G"\ncache_ttl = 3600\nhost_rate = "10M"\nzone = "file"\n')
    environ = {"DFDAEMON_CACHE_TTL": "2h", "DFDAEMON_ZONE": "", "DFDAEMON_HOST_RATE": "unlimited"}
    daemon, _ = load({"cache_size": "20G"}, environ, file)
    assert daemon.cache_size_bytes == 20 << 30  # flag
    assert daemon.cache_ttl_s == 7200.0  # environment over file
    assert daemon.host_rate_bps is None  # the environment lifts the file's limit
    assert daemon.zone == "file"  # an empty variable is unset


def test_former_names_with_units_still_work(tmp_path: Path) -> None:
    file = tmp_path / "d.toml"
    file.write_text('[dfdaemon]\ncache_size_bytes = "5G"\n[proxy]\nhead_timeout_s = 5\n')
    environ = {"DFDAEMON_GC_INTERVAL_S": "200ms", "DFDAEMON_PROXY_MAX_HEAD_BYTES": "32K"}
    daemon, proxy, loaded = load_config({}, environ, file)
    assert (daemon.cache_size_bytes, daemon.gc_interval_s) == (5 << 30, 0.2)
    assert (proxy.head_timeout_s, proxy.max_head_bytes) == (5.0, 32 << 10)
    assert len(loaded.notices) == 4
    assert "DFDAEMON_GC_INTERVAL_S is deprecated, use DFDAEMON_GC_INTERVAL" in loaded.notices


def test_config_file_named_by_environment_is_read(tmp_path: Path) -> None:
    file = tmp_path / "c.toml"
    file.write_text('[proxy]\nregistries = ["quay.io=https://quay.io"]\n')
    _, config = load({}, {"DFDAEMON_CONFIG": str(file)}, None)
    assert config.allowed_ns["quay.io"] == "https://quay.io"


def test_docker_hub_mirror_also_answers_to_docker_io() -> None:
    config = ProxyConfig(upstream="https://registry-1.docker.io")
    assert config.allowed_ns["docker.io"] == "https://registry-1.docker.io"


@pytest.mark.parametrize(
    ("flags", "environ", "toml", "message"),
    [
        ({"proxy_rules": ["maybe=^x"]}, {}, "", "--proxy-rule='maybe=^x': rule action"),
        ({"proxy_rules": ["swarm=("]}, {}, "", "--proxy-rule='swarm=(': rule regex"),
        ({"proxy_rules": ["nothing"]}, {}, "", "is not ACTION=REGEX"),
        ({"proxy_registries": ["docker.io"]}, {}, "", "is not HOST=URL"),
        ({"proxy_registries": ["docker.io=ftp://x"]}, {}, "", "must be http(s)"),
        ({"proxy_registries": ["Bad Host=http://x"]}, {}, "", "--registry='Bad Host=http://x'"),
        ({}, {"DFDAEMON_PROXY_RULES": "swarm=x"}, "", "DFDAEMON_PROXY_RULES='swarm=x': not JSON"),
        (
            {},
            {"DFDAEMON_PROXY_MAX_CONNECTIONS": "many"},
            "",
            "DFDAEMON_PROXY_MAX_CONNECTIONS='many'",
        ),
        ({}, {}, "[proxy]\nunknown = 1\n", "unknown key 'proxy.unknown'"),
        ({}, {}, "[proxy]\nhead_timeout = -1\n", "proxy.head_timeout=-1: duration -1 is negative"),
        ({}, {}, "[proxy]\nhead_timeout = 0\n", "head_timeout_s must be a positive"),
        ({}, {}, '[proxy]\nrules = [{regex = "x", action = "swarm", extra = 1}]\n', "unknown keys"),
        ({}, {}, "[proxy]\nmax_connections = true\n", "expected a whole number"),
        ({"cache_size": "5Q"}, {}, "", "--cache-size='5Q': size '5Q' has unknown unit"),
        ({"registry_mirror": "ftp://x"}, {}, "", "--registry-mirror='ftp://x': registry URL"),
        ({"proxy_port": "70000"}, {}, "", "--proxy-port='70000': proxy_port must be in 0..65535"),
        ({}, {"DRAGONFLY_SECRET": "short"}, "", "DRAGONFLY_SECRET: the cluster secret must be"),
    ],
)
def test_bad_values_name_their_source(
    tmp_path: Path, flags: dict[str, Any], environ: dict[str, str], toml: str, message: str
) -> None:
    file = None
    if toml:
        file = tmp_path / "c.toml"
        file.write_text(toml)
    with pytest.raises(ValueError, match=re.escape(message)):
        load(flags, environ, file)


def test_rule_regex_is_searched_not_anchored() -> None:
    rule = parse_rule(r"files\.example", "swarm")
    assert rule.pattern.search("http://files.example/a")
