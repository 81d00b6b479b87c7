"""Who becomes a peer of a task: the handshake's verdict and the cluster-secret exchange, sans-IO.

A connection is *pending* from our dial until the remote handshake, *authenticating* (with a
cluster secret) until its proof checks out, then *admitted*. Admission refuses banned peer ids,
a task already at ``max_peers``, and a second connection to a peer id already admitted - except
when two peers dialled each other at once: both ends then keep the connection dialled by the
smaller peer id, so exactly one survives. Without a secret that is decided at the handshake;
with one, the newcomer that would survive displaces the other only once its proof checks out.

The secret exchange: each side sends an ``AuthChallenge`` (a fresh nonce) right after the
handshake and answers the other's with an ``AuthProof`` (``peerwire.auth.auth_proof``); a side
admits the other, and only then sends its bitfield, when the proof checks out. TCP keeps each
side's challenge ahead of its proof, so every proof arrives before the message that needs it.
"""

from __future__ import annotations

import hmac
import logging
import os
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

from peerwire import messages as m
from peerwire.auth import auth_proof
from peerwire.commands import Close, Command, Send
from peerwire.ids import PeerId, TaskId

log = logging.getLogger(__name__)

C = TypeVar("C", bound=Hashable)


@dataclass(frozen=True, slots=True)
class Admitted(Generic[C]):
    """A connection that became a peer, and what both handshakes agreed."""

    conn: C
    peer_id: PeerId
    address: str
    outgoing: bool
    #: BEP 6 fast extension, and blocks larger than 16 KiB, on both sides.
    fast: bool
    large_blocks: bool
    since_s: float


class Admission(Generic[C]):
    """The admission state of one task's connections."""

    def __init__(
        self,
        *,
        task_id: TaskId,
        peer_id: PeerId,
        secret: bytes | None,
        max_peers: int,
        handshake_timeout_s: float,
        clock: Callable[[], float],
    ) -> None:
        self.task_id = task_id
        self.peer_id = peer_id
        self._secret = secret
        self.max_peers = max_peers
        self.handshake_timeout_s = handshake_timeout_s
        self._clock = clock
        bits = [m.FAST_EXTENSION_BIT, m.LARGE_BLOCKS_BIT]
        if secret is not None:
            bits.append(m.AUTH_BIT)
        #: The reserved bytes of our handshake.
        self.reserved = m.reserved_with(*bits)
        #: Connections we dialled whose handshake has not come yet, and since when.
        self._pending: dict[C, float] = {}
        #: Handshaken, proof not checked yet: our nonce and what admission would give.
        self._authenticating: dict[C, tuple[bytes, Admitted[C]]] = {}
        self._members: dict[PeerId, Admitted[C]] = {}
        self._banned: set[PeerId] = set()
        #: Admitted connections that a newer one replaced (the core drops them).
        self.displaced: list[C] = []
        self._out: list[Command[C]] = []

    @property
    def connecting(self) -> int:
        """Connections that may still become peers."""
        return len(self._pending) + len(self._authenticating)

    def take_commands(self) -> list[Command[C]]:
        out, self._out = self._out, []
        return out

    def is_authenticating(self, conn: C) -> bool:
        return conn in self._authenticating

    def all_unadmitted(self) -> list[C]:
        return [*self._pending, *self._authenticating]

    def opened(self, conn: C) -> None:
        self._pending[conn] = self._clock()

    def handshake(
        self, conn: C, handshake: m.Handshake, *, outgoing: bool, address: str
    ) -> Admitted[C] | bool:
        """The remote handshake: an ``Admitted`` (a peer now), True (admitted once its proof
        checks out) or False (refused)."""
        self._pending.pop(conn, None)
        key = handshake.peer_id
        if key in self._banned:
            return False
        existing = self._members.get(key)
        if existing is not None:
            if not self._dialled_by_smaller(key, outgoing, existing):
                return False
            if self._secret is None:
                del self._members[key]
                self.displaced.append(existing.conn)
            # With a secret the newcomer proves itself first; it displaces only then.
        if len(self._members) - (existing is not None) >= self.max_peers:
            return False
        candidate = Admitted(
            conn=conn,
            peer_id=key,
            address=address,
            outgoing=outgoing,
            fast=self._both(handshake, m.FAST_EXTENSION_BIT),
            large_blocks=self._both(handshake, m.LARGE_BLOCKS_BIT),
            since_s=self._clock(),
        )
        if self._secret is not None:
            if not self._both(handshake, m.AUTH_BIT):
                log.info("refusing %s: it does not authenticate (cluster secret)", address)
                return False
            nonce = os.urandom(m.AUTH_NONCE_BYTES)
            self._authenticating[conn] = (nonce, candidate)
            self._out.append(Send(conn, [m.AuthChallenge(nonce)]))
            return True
        self._members[key] = candidate
        return candidate

    def authenticate(self, conn: C, message: m.Message) -> Admitted[C] | None:
        """A message from a connection still proving the secret: only the exchange passes.
        Returns the admission once the proof checks out."""
        assert self._secret is not None
        nonce, candidate = self._authenticating[conn]
        if isinstance(message, m.AuthChallenge):
            proof = auth_proof(self._secret, self.task_id, message.nonce, self.peer_id)
            self._out.append(Send(conn, [m.AuthProof(proof)]))
            return None
        if isinstance(message, m.KeepAlive):
            return None
        del self._authenticating[conn]
        if not isinstance(message, m.AuthProof):
            self._out.append(Close(conn, "message before authentication"))
            return None
        expected = auth_proof(self._secret, self.task_id, nonce, candidate.peer_id)
        if not hmac.compare_digest(message.mac, expected):
            self._out.append(Close(conn, "wrong cluster secret"))
            return None
        key = candidate.peer_id
        existing = self._members.get(key)
        if existing is not None and self._dialled_by_smaller(key, candidate.outgoing, existing):
            del self._members[key]
            self.displaced.append(existing.conn)  # two peers dialled each other at once
            existing = None
        if key in self._banned or existing is not None or len(self._members) >= self.max_peers:
            self._out.append(Close(conn, "refused by the task"))
            return None
        self._members[key] = candidate
        return candidate

    def closed(self, conn: C) -> None:
        """``conn`` is gone, whatever state it was in."""
        self._pending.pop(conn, None)
        self._authenticating.pop(conn, None)

    def left(self, peer_id: PeerId, conn: C) -> None:
        """The admitted ``conn`` of ``peer_id`` is gone."""
        member = self._members.get(peer_id)
        if member is not None and member.conn == conn:
            del self._members[peer_id]

    def ban(self, peer_id: PeerId) -> None:
        self._banned.add(peer_id)

    def is_banned(self, peer_id: PeerId) -> bool:
        return peer_id in self._banned

    def expired(self) -> list[tuple[C, str]]:
        """Connections that took longer than ``handshake_timeout_s`` to handshake or prove the
        secret: forgotten here, to be closed."""
        limit = self._clock() - self.handshake_timeout_s
        late = [(c, "no handshake in time") for c, since in self._pending.items() if since < limit]
        late += [
            (c, "no authentication in time")
            for c, (_, candidate) in self._authenticating.items()
            if candidate.since_s < limit
        ]
        for conn, _ in late:
            self.closed(conn)
        return late

    def _both(self, handshake: m.Handshake, bit: tuple[int, int]) -> bool:
        return m.has_bit(self.reserved, bit) and handshake.supports(bit)

    def _dialled_by_smaller(self, key: PeerId, outgoing: bool, existing: Admitted[C]) -> bool:
        """Whether the new connection was dialled by the smaller peer id and ``existing``
        was not (then the new one is the one both ends keep)."""
        smaller_dials = self.peer_id.raw < key.raw  # then we keep our outgoing one
        return outgoing == smaller_dials and existing.outgoing != smaller_dials
