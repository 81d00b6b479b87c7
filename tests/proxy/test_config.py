"""proxy.config: the [proxy] table, DFDAEMON_PROXY_* and flags, in that order of strength."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from proxy.config import ProxyConfig, load_proxy_config, parse_rule
from proxy.daemonconfig import DaemonConfig

DAEMON = DaemonConfig(proxy_port=7001, registry_mirror="http://127.0.0.1:5000")


def test_daemon_options_give_address_and_upstream() -> None:
    config = load_proxy_config(DAEMON, {}, {}, None)
    assert (config.host, config.port, config.upstream) == (
        "127.0.0.1",
        7001,
        DAEMON.registry_mirror,
    )
    assert config.allowed_ns == {"127.0.0.1:5000": "http://127.0.0.1:5000"}


def test_toml_table_then_environment_then_flags(tmp_path: Path) -> None:
    file = tmp_path / "dfdaemon.toml"
    file.write_text(
        "[dfdaemon]\nproxy_port = 7002\n"
        "[proxy]\nhead_timeout_s = 5\n"
        'rules = [{regex = "^http://a/", action = "swarm"}, "direct=^http://b/"]\n'
        '[proxy.registries]\n"docker.io" = "https://registry-1.docker.io/"\n'
    )
    config = load_proxy_config(DAEMON, {}, {}, file)
    assert config.head_timeout_s == 5.0
    assert [(r.pattern.pattern, r.action) for r in config.rules] == [
        ("^http://a/", "swarm"),
        ("^http://b/", "direct"),
    ]
    assert config.allowed_ns["docker.io"] == "https://registry-1.docker.io"
    environ = {
        "DFDAEMON_PROXY_RULES": '[{"regex": "^http://env/", "action": "direct"}]',
        "DFDAEMON_PROXY_HEAD_TIMEOUT_S": "7",
    }
    config = load_proxy_config(DAEMON, {}, environ, file)
    assert [r.pattern.pattern for r in config.rules] == ["^http://env/"]
    assert config.head_timeout_s == 7.0
    config = load_proxy_config(DAEMON, {"rules": ["swarm=^http://flag/"]}, environ, file)
    assert [r.pattern.pattern for r in config.rules] == ["^http://flag/"]


def test_config_file_named_by_environment_is_read(tmp_path: Path) -> None:
    file = tmp_path / "c.toml"
    file.write_text('[proxy]\nregistries = ["quay.io=https://quay.io"]\n')
    config = load_proxy_config(DAEMON, {}, {"DFDAEMON_CONFIG": str(file)}, None)
    assert config.allowed_ns["quay.io"] == "https://quay.io"


def test_docker_hub_mirror_also_answers_to_docker_io() -> None:
    config = ProxyConfig(upstream="https://registry-1.docker.io")
    assert config.allowed_ns["docker.io"] == "https://registry-1.docker.io"


@pytest.mark.parametrize(
    ("flags", "environ", "toml", "message"),
    [
        ({"rules": ["maybe=^x"]}, {}, "", "--proxy-rule: rule action"),
        ({"rules": ["swarm=("]}, {}, "", "--proxy-rule: rule regex"),
        ({"rules": ["nothing"]}, {}, "", "is not ACTION=REGEX"),
        ({"registries": ["docker.io"]}, {}, "", "is not HOST=URL"),
        ({"registries": ["docker.io=ftp://x"]}, {}, "", "must be http(s)"),
        ({"registries": ["Bad Host=http://x"]}, {}, "", "--registry: registry host"),
        ({}, {"DFDAEMON_PROXY_RULES": "swarm=x"}, "", "DFDAEMON_PROXY_RULES: not JSON"),
        ({}, {"DFDAEMON_PROXY_MAX_CONNECTIONS": "many"}, "", "DFDAEMON_PROXY_MAX_CONNECTIONS"),
        ({}, {}, "[proxy]\nunknown = 1\n", "unknown proxy option 'unknown'"),
        ({}, {}, "[proxy]\nhead_timeout_s = -1\n", "head_timeout_s must be a positive"),
        ({}, {}, '[proxy]\nrules = [{regex = "x", action = "swarm", extra = 1}]\n', "unknown keys"),
        ({}, {}, "[proxy]\nmax_connections = true\n", "must be a number"),
    ],
)
def test_bad_values_name_their_source(
    tmp_path: Path, flags: dict[str, list[str]], environ: dict[str, str], toml: str, message: str
) -> None:
    file = None
    if toml:
        file = tmp_path / "c.toml"
        file.write_text(toml)
    with pytest.raises(ValueError, match=re.escape(message)):
        load_proxy_config(DAEMON, flags, environ, file)


def test_rule_regex_is_searched_not_anchored() -> None:
    rule = parse_rule(r"files\.example", "swarm")
    assert rule.pattern.search("http://files.example/a")
