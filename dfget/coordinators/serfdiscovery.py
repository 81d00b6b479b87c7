"""Finding the cluster to join: ``--join`` addresses, and ``--discover dns:NAME`` - the A and
AAAA records of a name (a Kubernetes headless service through CoreDNS lists one per pod).

Joining is Serf's: this only says whom to ask. After the first join Serf's own membership
takes over; the name is resolved again when the cluster shrinks (a member failed or left and
fewer are alive than the name listed, or this node is alone), so that a node cut off, or a
cluster that lost members, finds the ones the name lists now.
"""

from __future__ import annotations

import logging
import time
from typing import Final

import dns.asyncresolver
import dns.exception
import dns.rdatatype

from dfget.coordinators.serfoptions import DNS_PORT, dns_target, join_address, split_host_port

log = logging.getLogger(__name__)

#: One resolution gives up after this long.
RESOLVE_TIMEOUT_S: Final = 3.0
#: Not resolved again sooner than this.
MIN_RESOLVE_EVERY_S: Final = 5.0


async def resolve(target: str, server: str = "") -> list[str]:
    """The join addresses ``dns:NAME[:PORT]`` resolves to (sorted; [] when it has none or no
    server answers). ``server`` is ``HOST[:PORT]`` of the DNS server to ask ("" = the
    system's)."""
    name, port = dns_target(target)
    resolver = dns.asyncresolver.Resolver(configure=not server)
    if server:
        host, server_port = split_host_port(server, DNS_PORT)
        resolver.nameservers = [host]
        resolver.port = server_port
    resolver.lifetime = RESOLVE_TIMEOUT_S
    found: set[str] = set()
    for rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
        try:
            answer = await resolver.resolve(name, rdtype, search=False)
        except dns.exception.DNSException as exc:
            log.debug("discover %s %s: %s", name, dns.rdatatype.to_text(rdtype), exc)
            continue
        found.update(str(record.address) for record in answer)
    return [join_address(address, port) for address in sorted(found)]


class Discovery:
    """When to resolve the name again (sans-IO; the node does the resolving and joining)."""

    def __init__(self, target: str, server: str, clock: object = time.monotonic) -> None:
        self.target = target
        self.server = server
        self._clock = clock
        self._resolved_at = -1e9
        #: How many addresses the name listed last time.
        self.listed = 0

    def _now(self) -> float:
        return self._clock()  # type: ignore[operator,no-any-return]

    def due(self, alive: int) -> bool:
        """Whether to resolve now, with ``alive`` members alive (this node included)."""
        if self._now() - self._resolved_at < MIN_RESOLVE_EVERY_S:
            return False
        return alive <= 1 or alive < self.listed

    def resolved(self, addresses: list[str]) -> None:
        self._resolved_at = self._now()
        self.listed = len(addresses)

    def force(self) -> None:
        """Resolve at the next ``due`` (the first time)."""
        self._resolved_at = -1e9
