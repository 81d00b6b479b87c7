"""Which peers an announce answer lists, and in what order.

Policy, best first:

1. **Not reported bad.** A peer that ``bad_peer_exclude_reports`` distinct peers reported
   (``POST /tasks/<id>/reports``) within ``bad_peer_ttl_s`` is not handed out at all; a peer with
   fewer reports (at least one) is listed after every unreported peer.
2. **More of the file.** Progress buckets: complete, at least half, something, nothing. Buckets
   rather than exact progress, so that the criteria below still matter between peers that are
   almost equally far along.
3. **Same zone as the asker** (only when the asker sent ``df_zone``): traffic stays inside a rack
   or an availability zone when it can.
4. **Lower upload load** (``df_load``, peers it uploads to now), bucketed: 0, 1-2, 3-5, 6-11,
   12 and more. A peer that does not say (stock BitTorrent clients) counts as the middle bucket.
5. **Spread.** Among equals, each asker starts at its own point: ``mmh3.hash(asker_peer_id)``
   scaled to the list length picks where a circular walk of the equals begins. Different
   newcomers are thus shown different peers first instead of all crowding the same few, and one
   asker sees a stable order from one announce to the next.

Never listed: the asker itself (same peer id, or same address and port) and peers that gave
port 0 (they cannot accept connections).

Mechanics, because a task can have thousands of peers and the tracker answers ~16,000
announces/s: nothing is sorted per announce. Each task keeps its peers in tiers keyed by the
asker-independent criteria (1, 2, 4); a peer moves between tiers in O(1) when its key changes
(swap-remove from a list), so the ranking is always exact, also for tiny tasks. Each tier also
indexes its peers by zone. An answer walks the tiers of one (1, 2) group, first the asker's zone
in each tier, then the other peers of each tier, then the next group, and stops at ``numwant``:
the cost is O(numwant + tiers), not O(peers).
"""

from __future__ import annotations

import mmh3

from tracker.model import PeerContact

#: Progress buckets, best first.
PROGRESS_BUCKETS = 4
#: Load buckets, best (idle) first; unknown load is ``LOAD_UNKNOWN_BUCKET``, the middle one.
LOAD_BUCKETS = 5
LOAD_UNKNOWN_BUCKET = 2
#: Upper bounds (inclusive) of the load buckets below the last: 0 | 1-2 | 3-5 | 6-11 | 12+.
_LOAD_EDGES = (0, 2, 5, 11)
#: ``rank_key`` of a peer that is in no tier (excluded, port 0, or not placed yet).
UNRANKED = -1


def progress_bucket(progress: float) -> int:
    """0 complete, 1 at least half, 2 something, 3 nothing (criterion 2)."""
    if progress >= 1.0:
        return 0
    if progress >= 0.5:
        return 1
    if progress > 0.0:
        return 2
    return 3


def load_bucket(load: int | None) -> int:
    """0 for an idle uploader up to ``LOAD_BUCKETS - 1`` for a busy one (criterion 4)."""
    if load is None:
        return LOAD_UNKNOWN_BUCKET
    for bucket, edge in enumerate(_LOAD_EDGES):
        if load <= edge:
            return bucket
    return LOAD_BUCKETS - 1


def tier_key(progress: float, load: int | None, bad_reports: int, exclude_reports: int) -> int:
    """The asker-independent rank of a peer (lower is better), or ``UNRANKED`` if excluded.

    Criterion 1 dominates, then 2, then 4; criterion 3 (zone) is applied per asker between
    groups of equal (1, 2), which is why load is the least significant part of the key.
    """
    if bad_reports >= exclude_reports:
        return UNRANKED
    bad_rank = 1 if bad_reports > 0 else 0
    return (bad_rank * PROGRESS_BUCKETS + progress_bucket(progress)) * LOAD_BUCKETS + load_bucket(
        load
    )


def spread_hash(asker_peer_id: bytes) -> int:
    """Unsigned 32-bit mmh3 of the asker's id: where its walk of each tier starts."""
    return int(mmh3.hash(asker_peer_id, signed=False))


class Ranked:
    """What the ranking needs of a peer; the swarm's peer record extends it.

    ``contact`` and ``zone`` belong to the caller (update them, then call ``Ranking.place``);
    the ``rank_*`` slots belong to ``Ranking``.
    """

    __slots__ = ("contact", "peer_id", "rank_key", "rank_pos", "rank_zone", "rank_zpos", "zone")

    def __init__(self, peer_id: bytes, contact: PeerContact, zone: str = "") -> None:
        self.peer_id = peer_id
        self.contact = contact
        self.zone = zone
        self.rank_key = UNRANKED
        self.rank_zone = ""
        self.rank_pos = -1
        self.rank_zpos = -1


class _Tier:
    """Peers of one key: all of them, and those with a zone grouped by zone."""

    __slots__ = ("compact4", "contacts", "key", "members", "zones")

    def __init__(self, key: int) -> None:
        self.key = key
        self.members: list[Ranked] = []
        #: Parallel to ``members``: each one's contact and its BEP 23 bytes, so an answer is
        #: sliced out in C instead of gathered peer by peer.
        self.contacts: list[PeerContact] = []
        self.compact4: list[bytes | None] = []
        self.zones: dict[str, list[Ranked]] = {}


class Ranking:
    """The peers of one task, in tiers, ready to answer any asker best first."""

    __slots__ = ("_count", "_exclude_reports", "_groups", "_tiers")

    def __init__(self, *, exclude_reports: int) -> None:
        if exclude_reports < 1:
            raise ValueError(f"exclude_reports must be at least 1, not {exclude_reports}")
        self._exclude_reports = exclude_reports
        self._tiers: dict[int, _Tier] = {}
        #: Non-empty tiers in key order, grouped by (bad, progress): the walk order.
        self._groups: list[list[_Tier]] = []
        self._count = 0

    def __len__(self) -> int:
        """Peers that can be handed out."""
        return self._count

    def place(self, peer: Ranked, *, progress: float, load: int | None, bad_reports: int) -> None:
        """File ``peer`` (new or changed) under its current criteria; O(1)."""
        if peer.contact.port == 0:
            key = UNRANKED
        else:
            key = tier_key(progress, load, bad_reports, self._exclude_reports)
        if key == peer.rank_key and (key == UNRANKED or peer.zone == peer.rank_zone):
            if key != UNRANKED:
                tier = self._tiers[key]
                if tier.contacts[peer.rank_pos] is not peer.contact:  # the peer moved
                    tier.contacts[peer.rank_pos] = peer.contact
                    tier.compact4[peer.rank_pos] = peer.contact.compact4
            return
        if peer.rank_key != UNRANKED:
            self._unlink(peer)
        if key != UNRANKED:
            self._link(peer, key)

    def remove(self, peer: Ranked) -> None:
        """Forget ``peer`` (it left the task); a no-op when it is not ranked."""
        if peer.rank_key != UNRANKED:
            self._unlink(peer)

    def select(
        self, asker_id: bytes, asker_contact: PeerContact | None, asker_zone: str, numwant: int
    ) -> list[PeerContact]:
        """Up to ``numwant`` contacts for ``asker_id``, best first (see the module docstring)."""
        out: list[PeerContact] = []
        if numwant <= 0 or self._count == 0:
            return out
        spread = spread_hash(asker_id)
        own4 = own6 = None
        if asker_contact is not None:
            own4, own6 = asker_contact.compact4, asker_contact.compact6
        for group in self._groups:
            if asker_zone:
                for tier in group:
                    same = tier.zones.get(asker_zone)
                    if same and _take(same, spread, out, numwant, asker_id, own4, own6, ""):
                        return out
            for tier in group:
                if asker_zone:
                    full = _take(
                        tier.members, spread, out, numwant, asker_id, own4, own6, asker_zone
                    )
                else:
                    full = _take_tier(tier, spread, out, numwant, asker_id, own4, own6)
                if full:
                    return out
        return out

    def _link(self, peer: Ranked, key: int) -> None:
        tier = self._tiers.get(key)
        if tier is None:
            tier = self._tiers[key] = _Tier(key)
            self._regroup()
        peer.rank_key = key
        peer.rank_pos = len(tier.members)
        tier.members.append(peer)
        tier.contacts.append(peer.contact)
        tier.compact4.append(peer.contact.compact4)
        zone = peer.zone
        peer.rank_zone = zone
        if zone:
            same = tier.zones.get(zone)
            if same is None:
                same = tier.zones[zone] = []
            peer.rank_zpos = len(same)
            same.append(peer)
        self._count += 1

    def _unlink(self, peer: Ranked) -> None:
        tier = self._tiers[peer.rank_key]
        pos = peer.rank_pos
        _swap_remove(tier.members, pos, zone_list=False)
        for parallel in (tier.contacts, tier.compact4):
            last = parallel.pop()
            if pos < len(parallel):
                parallel[pos] = last  # type: ignore[assignment]
        if peer.rank_zone:
            same = tier.zones[peer.rank_zone]
            _swap_remove(same, peer.rank_zpos, zone_list=True)
            if not same:
                del tier.zones[peer.rank_zone]
        peer.rank_key = UNRANKED
        peer.rank_zone = ""
        peer.rank_pos = peer.rank_zpos = -1
        self._count -= 1
        if not tier.members:
            del self._tiers[tier.key]
            self._regroup()

    def _regroup(self) -> None:
        groups: list[list[_Tier]] = []
        last_group = -1
        for key in sorted(self._tiers):
            group = key // LOAD_BUCKETS
            if group != last_group:
                groups.append([])
                last_group = group
            groups[-1].append(self._tiers[key])
        self._groups = groups


def _swap_remove(items: list[Ranked], pos: int, *, zone_list: bool) -> None:
    """Remove ``items[pos]`` in O(1) by moving the last item into its place."""
    last = items.pop()
    if pos < len(items):
        items[pos] = last
        if zone_list:
            last.rank_zpos = pos
        else:
            last.rank_pos = pos


def _take(
    candidates: list[Ranked],
    spread: int,
    out: list[PeerContact],
    numwant: int,
    asker_id: bytes,
    own4: bytes | None,
    own6: bytes | None,
    skip_zone: str,
) -> bool:
    """Append eligible ``candidates`` to ``out`` from the asker's start point; True when full."""
    count = len(candidates)
    start = (spread * count) >> 32
    for i in range(start, start + count):
        peer = candidates[i - count if i >= count else i]
        if peer.peer_id == asker_id or (skip_zone and peer.rank_zone == skip_zone):
            continue
        contact = peer.contact
        if (own4 is not None and contact.compact4 == own4) or (
            own6 is not None and contact.compact6 == own6
        ):
            continue
        out.append(contact)
        if len(out) >= numwant:
            return True
    return False


def _take_tier(
    tier: _Tier,
    spread: int,
    out: list[PeerContact],
    numwant: int,
    asker_id: bytes,
    own4: bytes | None,
    own6: bytes | None,
) -> bool:
    """``_take`` over a whole tier, fast: the answer is sliced from the parallel lists.

    The asker was filed under its current contact before selection, so removing its address
    removes the asker (and any stale record of the same host and port). IPv6-only askers take
    the general path.
    """
    count = len(tier.members)
    if own4 is None or not count:
        return _take(tier.members, spread, out, numwant, asker_id, own4, own6, "")
    start = (spread * count) >> 32
    need = numwant - len(out)
    end = start + need + 1  # one spare: the asker itself may be in the window
    contacts = tier.contacts[start:end]
    compact4 = tier.compact4[start:end]
    if end > count:
        wrap = min(end - count, start)
        contacts += tier.contacts[:wrap]
        compact4 += tier.compact4[:wrap]
    seen = len(contacts)
    while own4 in compact4:
        index = compact4.index(own4)
        del compact4[index], contacts[index]
    if own6 is not None:
        contacts = [contact for contact in contacts if contact.compact6 != own6]
    if len(contacts) >= need:
        out.extend(contacts[:need])
        return True
    if seen == count:
        out.extend(contacts)
        return False
    return _take(tier.members, spread, out, numwant, asker_id, own4, own6, "")
