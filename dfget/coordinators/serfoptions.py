"""The options of decentralized mode (``--coordinator serf``), shared by dfget and dfdaemon.

``dfget.coordinators.serfsettings`` declares them for either program's settings table;
``SerfOptions`` holds them once read. The agent's addresses are ``HOST:PORT``; ``--join`` is a
comma-separated list of them; ``--discover dns:NAME[:PORT]`` names a DNS name whose A/AAAA
records are the members to join (a Kubernetes headless service), at Serf's port 7946 unless
``:PORT`` says otherwise, asked of ``--discover-dns HOST[:PORT]`` when given, else of the
system's resolvers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

COORDINATORS: Final = ("tracker", "serf")
AGENT_MODES: Final = ("external", "auto")
PROFILES: Final = ("lan", "wan", "local")
DEFAULT_RPC: Final = "127.0.0.1:7373"
DEFAULT_BIND: Final = "0.0.0.0:7946"
SERF_PORT: Final = 7946
DNS_PORT: Final = 53
MAX_JOIN: Final = 64


def split_host_port(text: str, default_port: int | None = None) -> tuple[str, int]:
    """``HOST:PORT``, ``[IPv6]:PORT`` or, with ``default_port``, a bare host; ValueError."""
    text = text.strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
    else:
        host, port_text = text, ""
    if not host:
        raise ValueError(f"{text!r} has no host")
    if not port_text:
        if default_port is None:
            raise ValueError(f"{text!r} is not HOST:PORT")
        return host, default_port
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"{text!r}: the port must be 1..65535")
    return host, int(port_text)


def join_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass(frozen=True, slots=True)
class SerfOptions:
    """How this node reaches its Serf agent, and how the agent finds the cluster."""

    #: The agent's RPC address (an agent already running, or the one ``agent="auto"`` starts).
    rpc: str = DEFAULT_RPC
    #: ``external``: use the agent at ``rpc``; ``auto``: start one, supervise it, stop it.
    agent: str = "external"
    #: The started agent's gossip address.
    bind: str = DEFAULT_BIND
    #: The started agent's node name ("" = this host's name and the gossip port).
    node: str = ""
    #: The started agent's timing profile (``local``: quick failure detection on one host).
    profile: str = "lan"
    #: Members to join, ``HOST:PORT``.
    join: tuple[str, ...] = ()
    #: ``dns:NAME[:PORT]`` ("" = none).
    discover: str = ""
    #: The DNS server to ask, ``HOST[:PORT]`` ("" = the system's resolvers).
    discover_dns: str = ""

    def __post_init__(self) -> None:
        problems: list[str] = []
        for name in ("rpc", "bind"):
            try:
                split_host_port(getattr(self, name))
            except ValueError as exc:
                problems.append(f"serf_{name}: {exc}")
        if self.agent not in AGENT_MODES:
            problems.append(f"serf_agent must be one of {', '.join(AGENT_MODES)}")
        if self.profile not in PROFILES:
            problems.append(f"serf_profile must be one of {', '.join(PROFILES)}")
        if len(self.join) > MAX_JOIN:
            problems.append(f"join: at most {MAX_JOIN} addresses")
        for address in self.join:
            try:
                split_host_port(address)
            except ValueError as exc:
                problems.append(f"join: {exc}")
        if self.discover:
            try:
                dns_target(self.discover)
            except ValueError as exc:
                problems.append(f"discover: {exc}")
        if self.discover_dns:
            try:
                split_host_port(self.discover_dns, DNS_PORT)
            except ValueError as exc:
                problems.append(f"discover_dns: {exc}")
        if self.node and (len(self.node) > 128 or not self.node.isprintable()):
            problems.append("serf_node must be printable and at most 128 characters")
        if problems:
            raise ValueError("; ".join(problems))


def dns_target(text: str) -> tuple[str, int]:
    """``dns:NAME[:PORT]`` -> (NAME, PORT)."""
    scheme, colon, rest = text.partition(":")
    if scheme != "dns" or not colon or not rest:
        raise ValueError(f"{text!r} is not dns:NAME[:PORT] (the only discovery method)")
    return split_host_port(rest, SERF_PORT)
