"""The settings of decentralized mode (``peerwire.settings``), for dfget's and dfdaemon's tables:
``--coordinator``, ``--serf-*``, ``--join``, ``--discover``, ``--discover-dns``. They build a
``dfget.coordinators.serfoptions.SerfOptions``.
"""

from __future__ import annotations

from typing import Any, Final

from dfget.coordinators.serfoptions import (
    AGENT_MODES,
    COORDINATORS,
    DNS_PORT,
    PROFILES,
    SerfOptions,
    split_host_port,
)
from peerwire import settingkinds as kinds
from peerwire.settings import Setting

_DEFAULTS: Final = SerfOptions()


def _choice(words: tuple[str, ...]) -> kinds.Kind:
    def parse(raw: object) -> str:
        text = kinds.parse_text(raw).strip().lower()
        if text not in words:
            raise ValueError(f"expected one of {', '.join(words)}, not {text!r}")
        return text

    return kinds.Kind(parse, kinds.show_plain, "|".join(words).upper())


def _addresses(raw: object) -> tuple[str, ...]:
    items = raw if isinstance(raw, list | tuple) else [raw]
    found = [
        part.strip() for item in items for part in kinds.parse_text(item).split(",") if part.strip()
    ]
    for address in found:
        split_host_port(address)
    return tuple(dict.fromkeys(found))


def _address(raw: object) -> str:
    text = kinds.parse_text(raw).strip()
    split_host_port(text)
    return text


def serf_settings(group: str, *, example: str) -> list[Setting]:
    """The settings of decentralized mode for a program whose ``SerfOptions`` is ``group``."""

    def setting(name: str, kind: kinds.Kind, help: str, field: str, **extra: Any) -> Setting:
        return Setting(name, kind, help, getattr(_DEFAULTS, field), field=field, group=group,
                       **extra)  # fmt: skip

    return [
        setting("serf_rpc", kinds.Kind(_address, kinds.show_plain, "HOST:PORT"),
                "RPC address of the Serf agent (with --serf-agent auto: where it listens)", "rpc"),
        setting("serf_agent", _choice(AGENT_MODES),
                "external: use the agent at --serf-rpc; auto: start and supervise one, stopped "
                "on exit", "agent"),
        setting("serf_bind", kinds.Kind(_address, kinds.show_plain, "HOST:PORT"),
                "gossip address of the agent --serf-agent auto starts", "bind"),
        setting("serf_node", kinds.TEXT,
                "node name of the agent --serf-agent auto starts (default: host name and port)",
                "node"),
        setting("serf_profile", _choice(PROFILES),
                "timing profile of the agent --serf-agent auto starts (local: fast failure "
                "detection, for one host)", "profile"),
        setting("join", kinds.Kind(_addresses, ",".join, "HOST:PORT[,...]"),
                f"Serf members to join, e.g. {example} (repeatable)", "join", action="append"),
        setting("discover", kinds.TEXT,
                "dns:NAME[:PORT]: join the addresses NAME resolves to (A/AAAA), again when the "
                "cluster shrinks", "discover"),
        setting("discover_dns", kinds.Kind(_address_or_host, kinds.show_plain, "HOST[:PORT]"),
                "DNS server for --discover (default: the system's resolvers)", "discover_dns"),
    ]  # fmt: skip


def _address_or_host(raw: object) -> str:
    text = kinds.parse_text(raw).strip()
    split_host_port(text, DNS_PORT)
    return text


def coordinator_setting(help_tail: str) -> Setting:
    return Setting(
        "coordinator",
        _choice(COORDINATORS),
        "tracker: the dftrackers of --tracker; serf: no tracker, nodes coordinate over a Serf "
        f"agent's gossip (--serf-*){help_tail}",
        "tracker",
        field=None,
    )
