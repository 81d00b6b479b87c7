"""The uploading half of the task core: the requests peers queue at us, which one the single
uploader serves next (``choose_upload``), and the requests a busy uplink refuses (``_shed``).

A mixin of ``peerwire.core.TaskCore``, as ``peerwire.downloading`` is: the same object and
state; the attributes it uses are set up by the core and declared below.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

from peerwire import messages as m
from peerwire.commands import Command, WakeUploader
from peerwire.layout import Block
from peerwire.peerstate import PeerState, TaskStats
from peerwire.ratelimit import TokenBucket
from peerwire.scheduler import Scheduler

C = TypeVar("C", bound=Hashable)

#: A busy uplink keeps about this long of requests queued; beyond it, requests for pieces at
#: least ``SHED_MIN_HOLDERS`` of our peers hold are refused (their senders ask those peers).
UPLOAD_QUEUE_S = 2.0
SHED_MIN_HOLDERS = 2


class Uploading(Generic[C]):
    """Requests in, blocks out under the upload limit."""

    stats: TaskStats
    scheduler: Scheduler[C]
    upload_bucket: TokenBucket | None
    _clock: Callable[[], float]
    _out: list[Command[C]]
    _peers: dict[C, PeerState[C]]
    _upload_ready: dict[C, None]
    _copies_sent: dict[int, int]

    # Provided by ``peerwire.downloading.Downloading`` (the core's other half).
    def _send(self, peer: PeerState[C], messages: list[m.Message]) -> None: ...

    def _take_haves(self, peer: PeerState[C]) -> list[m.Message]:
        raise NotImplementedError

    def _on_request(self, peer: PeerState[C], message: m.Request) -> None:
        block = Block(message.index, message.begin, message.length)
        replies = peer.session.receive_request(block)
        if replies:
            self._send(peer, replies)
        elif block in peer.session.queued:
            if self._shed(peer, block):
                return
            if peer.conn not in self._upload_ready:
                self._upload_ready[peer.conn] = None
                self._out.append(WakeUploader(peer.conn))

    def _shed(self, peer: PeerState[C], block: Block) -> bool:
        """Refuse a request our busy uplink would serve late, if others can serve it."""
        bucket = self.upload_bucket
        if bucket is None or not peer.session.fast:
            return False
        index = block.index
        if (
            self.scheduler.availability(index) < SHED_MIN_HOLDERS
            and self._copies_sent.get(index, 0) < SHED_MIN_HOLDERS
        ):
            return False
        rate_bps = bucket.chain_rate_bps()
        if rate_bps is None:
            return False
        limit = rate_bps * UPLOAD_QUEUE_S
        queued = 0
        for conn in self._upload_ready:
            other = self._peers.get(conn)
            if other is not None:
                for queued_block in other.session.queued:
                    queued += queued_block.length
        if queued <= limit:
            return False
        self._send(peer, peer.session.reject(block))
        self.stats.requests_shed += 1
        return True

    def next_upload(self, conn: C) -> Block | None:
        """The next request of ``conn`` to serve (``choose_upload`` for that peer alone)."""
        choice = self.choose_upload(lambda other: other != conn)
        return None if choice is None else choice[1]

    def choose_upload(self, skip: Callable[[C], bool]) -> tuple[C, Block] | None:
        """The request to serve next, of every peer's (removed from its queue), or None when
        none is queued at a peer ``skip`` lets through (one whose socket is full is skipped).

        Each peer's requests are served in its order; between peers, the one whose next block
        is of the piece the fewest of our peers hold goes first (ties: the one served longest
        ago). A piece we just fetched from the origin reaches a first few peers at once, who
        pass it on, instead of waiting behind requests that others could serve as well: on a
        busy uplink this is what keeps the swarm close behind the origin. Requests for pieces
        we lack are rejected on the way."""
        ready = self._upload_ready
        have = self.scheduler.have
        availability = self.scheduler.availability
        best: tuple[C, Block] | None = None
        best_count = math.inf
        for conn in list(ready):
            peer = self._peers.get(conn)
            queued = None if peer is None else peer.session.queued
            while queued:
                block = next(iter(queued))
                if block.index in have:
                    break
                assert peer is not None
                self._send(peer, peer.session.reject(block))
            if not queued:
                del ready[conn]
                continue
            if skip(conn):
                continue
            count = availability(block.index)
            if count < best_count:
                best, best_count = (conn, block), count
                if count == 0:
                    break
        if best is None:
            return None
        conn, block = best
        queued = self._peers[conn].session.queued
        del queued[block]
        del ready[conn]
        if queued:
            ready[conn] = None  # to the end of the line
        return best

    def upload_starting(self, conn: C, block: Block) -> bool:
        """The upload limit let ``block`` go: False when it may no longer be sent (the peer
        is gone, or choked meanwhile: the choke rejected what was queued, not this one).
        ``have`` messages owed to the peer go first, with the block."""
        peer = self._peers.get(conn)
        if peer is None:
            return False
        if peer.session.am_choking:
            self._send(peer, peer.session.reject(block))
            return False
        if peer.haves:
            self._send(peer, self._take_haves(peer))
        return True

    def block_uploaded(self, conn: C, block: Block) -> None:
        self.stats.uploaded_bytes += block.length
        if block.begin == 0:
            self._copies_sent[block.index] = self._copies_sent.get(block.index, 0) + 1
        peer = self._peers.get(conn)
        if peer is not None:
            peer.last_sent_s = self._clock()
