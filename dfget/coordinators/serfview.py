"""What one node knows of a decentralized cluster, from Serf's membership and the gossip it
received; and the announce answers it makes from that. Pure: no I/O, the clock passed in.

Where the tracker keeps the swarm and answers announces, here every node keeps its own
``ClusterView`` and answers its own announces, so the task core cannot tell the difference:

* **peers**: the task's members (``df-start``, ``df-have``) that Serf says are alive and whose
  tags give a peer port; those holding more first, then the asker's zone, then lower load.
* **back-to-source** (``assignment``): pieces that no live member holds are split between the
  task's live members that may read the origin (those that joined it within ``COHORT_MS`` of
  the earliest: a late joiner gets its pieces from peers) by rendezvous hashing (highest
  random weight, ``mmh3`` of the task, the piece's group of ``GROUP`` consecutive pieces and
  the node's name).
  Every node computes the same split from the same membership, so the origin serves each piece
  about once with nobody deciding; a member Serf marks failed or left drops out of the split at
  once, and its share, and the pieces only it held, go to the others. A node assigns itself
  nothing until ``SETTLE_S`` after it started the task and the cohort is closed, so that nodes
  starting together hear of each other first.
* **pieces_known**: how many digests this node has or can ask a holder for.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Final

import mmh3

from dfget.coordinators.serfwire import FLAG_COMPLETE, FLAG_SOURCE, Geometry, HaveNews
from peerwire.coordination import AnnounceAnswer, PeerAddress, Progress

#: Consecutive pieces hashed as one unit: their Range reads stay contiguous and one holder
#: knows all their digests.
GROUP: Final = 4
#: A node starts reading the origin this long after it joined a task (see the module doc).
SETTLE_S: Final = 0.5
#: Members that joined a task this long after its earliest live source are not given origin
#: pieces: a late joiner would take over pieces the others may be reading already. Nobody
#: reads the origin before the cohort is closed and its last ``df-start`` had time to arrive
#: (``COHORT_GOSSIP_MS``), so that every member splits the pieces over the same members.
COHORT_MS: Final = 1000
COHORT_GOSSIP_MS: Final = 500
#: Announces are answered locally: the core may announce this often (once a second is the
#: least interval it takes), and sooner when an assignment runs out.
INTERVAL_S: Final = 1.0
MIN_INTERVAL_S: Final = 0.25
#: A piece a member holds whose digest has not come with the events (``df-digests``) for this
#: long is asked of a holder (``df-q-digests``): queries cost gossip, events carry digests
#: once.
DIGEST_GRACE_S: Final = 1.5
#: Tag names on the Serf member: the peer port, the zone, the upload load.
TAG_PORT: Final = "dfp"
TAG_ZONE: Final = "dfz"
TAG_LOAD: Final = "dfl"


def bit_count(num_pieces: int) -> int:
    """Bits of a BEP 3 bitfield of ``num_pieces`` pieces (whole bytes)."""
    return (num_pieces + 7) // 8 * 8


def mask_of(bitfield: bytes) -> int:
    """A BEP 3 bitfield as an int (piece 0 is the highest bit)."""
    return int.from_bytes(bitfield, "big")


def runs_mask(runs: Iterable[tuple[int, int]], num_pieces: int) -> int:
    top = bit_count(num_pieces) - 1
    mask = 0
    for first, count in runs:
        for index in range(first, first + count):
            mask |= 1 << (top - index)
    return mask


def pieces_of(mask: int, num_pieces: int) -> list[int]:
    """The piece indices set in ``mask``, ascending."""
    top = bit_count(num_pieces) - 1
    return [i for i in range(num_pieces) if mask >> (top - i) & 1]


def full_mask(num_pieces: int) -> int:
    return ((1 << num_pieces) - 1) << (bit_count(num_pieces) - num_pieces)


def runs_of(indices: list[int]) -> list[tuple[int, int]]:
    """Ascending indices as ``(first, count)`` runs."""
    runs: list[tuple[int, int]] = []
    for index in indices:
        if runs and runs[-1][0] + runs[-1][1] == index:
            runs[-1] = (runs[-1][0], runs[-1][1] + 1)
        else:
            runs.append((index, 1))
    return runs


def rendezvous_owner(task: bytes, group: int, members: list[str]) -> str:
    """The member with the highest weight for ``group`` of ``task`` (ties: the larger name)."""
    key = task + group.to_bytes(4, "big")
    return max(members, key=lambda name: (mmh3.hash64(key + name.encode(), signed=False)[0], name))


@dataclass(slots=True)
class MemberInfo:
    name: str
    addr: str
    status: str
    port: int = 0
    zone: str = ""
    load: int = 0


@dataclass(slots=True)
class Holding:
    """One member's part in one task."""

    flags: int = FLAG_SOURCE
    mask: int = 0
    #: How many pieces it said it holds (more than ``mask`` shows: some news was lost).
    held: int = 0
    downloaded: int = 0
    uploaded: int = 0
    origin: int = 0
    seen_at: float = 0.0
    #: Byte rates from the last two reports, for /stats.
    download_bps: float = 0.0
    upload_bps: float = 0.0
    asked_at: float = -1e9
    #: When it joined the task (its clock, ms; 0: not known yet).
    joined_ms: int = 0
    #: The sender's ``seq`` of the latest news taken: gossip may deliver an older one later,
    #: whose pieces still count (holding only grows) but not its flags or counters.
    seq: int = -1


@dataclass(slots=True)
class TaskState:
    geometry: Geometry | None = None
    #: The geometry came from this node's own origin description, or was vouched for.
    geometry_believed: bool = False
    holders: dict[str, Holding] = field(default_factory=dict)
    digests: dict[int, bytes] = field(default_factory=dict)
    #: Digests this node read from the origin itself or checked a piece against.
    believed: set[int] = field(default_factory=set)
    #: Pieces held by a member, digest unknown here: since when.
    lacking: dict[int, float] = field(default_factory=dict)
    #: This node takes part since (None: it does not).
    started_at: float | None = None
    created_at: float = 0.0
    completions: int = 0


class ClusterView:
    """Membership, tasks and holdings as one node sees them; answers its announces."""

    def __init__(self, me: str, clock: object = time.monotonic, wall: object = time.time) -> None:
        self.me = me
        self._clock = clock
        #: The clock ``joined_ms`` is read from (a wall clock: others compare it with theirs).
        self._wall: Any = wall
        self.members: dict[str, MemberInfo] = {}
        self.tasks: dict[bytes, TaskState] = {}
        #: Pieces whose origin read moved to another node because a member failed or left.
        self.reassigned = 0

    def now(self) -> float:
        return self._clock()  # type: ignore[operator,no-any-return]

    # -- membership ----------------------------------------------------------------------------

    def member(self, name: str, addr: str, status: str, tags: dict[str, str]) -> str | None:
        """A member as Serf reports it; returns its former status when it changed."""
        info = self.members.get(name)
        before = info.status if info else None
        if info is None:
            info = self.members[name] = MemberInfo(name, addr, status)
        info.addr, info.status = addr, status
        info.port = _int_tag(tags.get(TAG_PORT))
        info.zone = tags.get(TAG_ZONE, "")
        info.load = _int_tag(tags.get(TAG_LOAD))
        if status != "alive" and before == "alive":
            self._gone(name)
        return before if before != status else None

    def forget(self, name: str) -> None:
        """Serf reaped the member: nothing of it is kept."""
        if name in self.members and self.members[name].status == "alive":
            self._gone(name)
        self.members.pop(name, None)

    def alive(self, name: str) -> bool:
        return name == self.me or (name in self.members and self.members[name].status == "alive")

    @property
    def alive_count(self) -> int:
        return sum(1 for m in self.members.values() if m.status == "alive")

    def _gone(self, name: str) -> None:
        """A member failed or left: its origin share and what only it held go to the others."""
        now = self.now()
        for task, state in self.tasks.items():
            holding = state.holders.get(name)
            if holding is None:
                continue
            if state.geometry is not None and holding.flags & FLAG_SOURCE:
                sources = self._sources(state, now, including=name)
                if name in sources and len(sources) > 1:
                    missing = self._missing(state)
                    moved = self._groups_of(task, state, missing, sources, name)
                    self.reassigned += sum(len(pieces) for pieces in moved.values())
            del state.holders[name]
        for task, state in list(self.tasks.items()):
            self._drop_if_unused(task, state)

    # -- what members say ----------------------------------------------------------------------

    def task(self, task: bytes) -> TaskState:
        state = self.tasks.get(task)
        if state is None:
            state = self.tasks[task] = TaskState(created_at=self.now())
        return state

    def started(
        self, sender: str, task: bytes, flags: int, seq: int = 0, joined_ms: int = 0
    ) -> None:
        holding = self.task(task).holders.setdefault(sender, Holding())
        holding.joined_ms = joined_ms or holding.joined_ms
        if seq > holding.seq:
            holding.flags, holding.seen_at, holding.seq = flags, self.now(), seq

    def removed(self, sender: str, task: bytes) -> None:
        state = self.tasks.get(task)
        if state is not None:
            state.holders.pop(sender, None)
            self._drop_if_unused(task, state)

    def _drop_if_unused(self, task: bytes, state: TaskState) -> None:
        """A task nobody holds and this node does not take part in is forgotten."""
        if not state.holders and state.started_at is None:
            del self.tasks[task]

    def have(self, sender: str, news: HaveNews, *, reset: bool, seq: int = 0) -> bool:
        """A member's ``df-have`` (``reset``: ``df-recover``). True when it says it holds more
        than this node knows (some news was lost: ask it)."""
        state = self.task(news.task)
        geometry = state.geometry
        if geometry is not None and geometry.num_pieces != news.num_pieces:
            return False  # another geometry: not this task's news (a forged or stale one)
        now = self.now()
        holding = state.holders.get(sender)
        latest = holding is None or seq > holding.seq
        if holding is None or (reset and latest):
            holding = state.holders[sender] = Holding()
        if news.bitfield is not None:
            mask = mask_of(news.bitfield) & full_mask(news.num_pieces)
            holding.mask = mask if reset and latest else holding.mask | mask
        else:
            holding.mask |= runs_mask(news.runs, news.num_pieces)
        holding.joined_ms = news.joined_ms or holding.joined_ms
        if not latest:
            return False
        holding.seq = seq
        if holding.flags & FLAG_COMPLETE == 0 and news.flags & FLAG_COMPLETE:
            state.completions += 1
        elapsed = now - holding.seen_at
        if holding.seen_at and elapsed > 0:
            holding.download_bps = max(0.0, (news.downloaded - holding.downloaded) / elapsed)
            holding.upload_bps = max(0.0, (news.uploaded - holding.uploaded) / elapsed)
        holding.flags, holding.held, holding.seen_at = news.flags, news.held, now
        holding.downloaded, holding.uploaded = news.downloaded, news.uploaded
        holding.origin = news.origin
        return holding.mask.bit_count() < news.held

    def bitfield_part(self, sender: str, task: bytes, offset: int, chunk: bytes) -> None:
        """Part of a member's bitfield, answered to ``df-q-have``."""
        state = self.tasks.get(task)
        holding = state.holders.get(sender) if state else None
        if state is None or holding is None or state.geometry is None:
            return
        num_pieces = state.geometry.num_pieces
        shift = bit_count(num_pieces) - 8 * (offset + len(chunk))
        holding.mask |= (int.from_bytes(chunk, "big") << shift) & full_mask(num_pieces)

    def learn_digests(self, task: bytes, found: dict[int, bytes]) -> None:
        """Digests from another node (an event or an answer); this node's own reads stand."""
        state = self.task(task)
        limit = state.geometry.num_pieces if state.geometry else 1 << 24
        for index, digest in found.items():
            if index < limit and index not in state.believed:
                state.digests[index] = digest

    def learn_geometry(self, geometry: Geometry, *, believed: bool) -> Geometry:
        """A task's geometry: the first one heard, unless a believed one replaces a claim.
        Returns the geometry the task has now."""
        state = self.task(geometry.task)
        known = state.geometry
        if known is None or (believed and not state.geometry_believed and known != geometry):
            if known is not None and known.num_pieces != geometry.num_pieces:
                for holding in state.holders.values():
                    holding.mask = 0  # bitfields of the other geometry mean nothing here
                state.digests.clear()
            state.geometry, state.geometry_believed = geometry, believed
        elif known.url == "" and geometry.url and known.total_length == geometry.total_length:
            state.geometry = geometry
        assert state.geometry is not None
        return state.geometry

    # -- this node's announces -----------------------------------------------------------------

    def announce(
        self, task: bytes, progress: Progress, event: str, joined_ms: int = 0
    ) -> AnnounceAnswer:
        """The answer to this node's own announce (its holding recorded first; ``joined_ms``:
        when it joined the task, by the clock it tells the others)."""
        now = self.now()
        state = self.task(task)
        if state.started_at is None:
            state.started_at = now
        mine = state.holders.setdefault(self.me, Holding())
        mine.joined_ms = joined_ms or mine.joined_ms or int(self._wall() * 1000)
        mine.flags = (FLAG_SOURCE if progress.can_source else 0) | (
            FLAG_COMPLETE if progress.left_bytes == 0 else 0
        )
        geometry = state.geometry
        have = progress.have
        if geometry is not None and have and len(have) * 8 == bit_count(geometry.num_pieces):
            mine.mask = mask_of(have) & full_mask(geometry.num_pieces)
            mine.held = mine.mask.bit_count()
            state.believed.update(pieces_of(mine.mask, geometry.num_pieces))
        mine.downloaded, mine.uploaded = progress.downloaded_bytes, progress.uploaded_bytes
        mine.origin, mine.seen_at = progress.origin_bytes, now
        live = {name: h for name, h in state.holders.items() if self.alive(name)}
        complete = sum(1 for h in live.values() if h.flags & FLAG_COMPLETE)
        return AnnounceAnswer(
            interval_s=INTERVAL_S,
            min_interval_s=MIN_INTERVAL_S,
            complete=complete,
            incomplete=len(live) - complete,
            peers=self._peers(live, progress),
            assignment=self._assignment(task, state, now, progress),
            pieces_known=self.pieces_known(state),
        )

    def _peers(self, live: dict[str, Holding], progress: Progress) -> tuple[PeerAddress, ...]:
        mine = self.members.get(self.me)
        zone = progress.zone or (mine.zone if mine else "")
        ranked: list[tuple[tuple[int, int, int], PeerAddress]] = []
        for name, holding in live.items():
            info = self.members.get(name)
            if name == self.me or info is None or not info.port or not info.addr:
                continue
            rank = (-holding.mask.bit_count(), 0 if zone and info.zone == zone else 1, info.load)
            ranked.append((rank, PeerAddress(info.addr, info.port)))
        ranked.sort(key=lambda item: item[0])
        return tuple(address for _, address in ranked[: max(0, progress.numwant)])

    def _assignment(
        self, task: bytes, state: TaskState, now: float, progress: Progress
    ) -> tuple[int, ...]:
        if state.geometry is None or not progress.can_source or progress.left_bytes == 0:
            return ()
        if state.started_at is None or now - state.started_at < SETTLE_S:
            return ()
        sources = self._sources(state, now)
        first = min((state.holders[name].joined_ms for name in sources), default=0)
        if self._wall() * 1000 < first + COHORT_MS + COHORT_GOSSIP_MS:
            return ()  # the cohort may still grow
        missing = self._missing(state)
        mine = self._groups_of(task, state, missing, sources, self.me)
        return tuple(sorted(p for pieces in mine.values() for p in pieces))

    def _sources(self, state: TaskState, now: float, including: str = "") -> list[str]:
        """The task's live members that may read the origin, are not complete, and joined
        within ``COHORT_MS`` of the earliest of them (every node computes the same set from
        the same news)."""
        candidates = {
            name: h.joined_ms
            for name, h in state.holders.items()
            if (self.alive(name) or name == including)
            and h.flags & FLAG_SOURCE
            and not h.flags & FLAG_COMPLETE
            and h.joined_ms
        }
        if not candidates:
            return []
        first = min(candidates.values())
        return sorted(name for name, joined in candidates.items() if joined <= first + COHORT_MS)

    def _missing(self, state: TaskState) -> list[int]:
        """Pieces no live member holds."""
        assert state.geometry is not None
        union = 0
        for name, holding in state.holders.items():
            if self.alive(name):
                union |= holding.mask
        num_pieces = state.geometry.num_pieces
        return pieces_of(full_mask(num_pieces) & ~union, num_pieces)

    @staticmethod
    def _groups_of(
        task: bytes, state: TaskState, missing: list[int], sources: list[str], owner: str
    ) -> dict[int, list[int]]:
        """The groups of ``missing`` pieces that rendezvous hashing gives ``owner``."""
        if owner not in sources:
            return {}
        groups: dict[int, list[int]] = {}
        for index in missing:
            groups.setdefault(index // GROUP, []).append(index)
        return {
            group: pieces
            for group, pieces in groups.items()
            if rendezvous_owner(task, group, sources) == owner
        }

    def pieces_known(self, state: TaskState) -> int | None:
        """Digests this node has, or can ask a holder for once ``DIGEST_GRACE_S`` passed (None:
        it knows no geometry: supply one)."""
        geometry = state.geometry
        if geometry is None:
            return None
        now = self.now()
        known = sum(1 for i in state.digests if i < geometry.num_pieces)
        return known + len(self._overdue(state, now))

    def _overdue(self, state: TaskState, now: float) -> list[int]:
        """Pieces a live member holds whose digest has been missing here for the grace time."""
        assert state.geometry is not None
        union = 0
        for name, holding in state.holders.items():
            if self.alive(name):
                union |= holding.mask
        overdue: list[int] = []
        for index in pieces_of(union, state.geometry.num_pieces):
            if index in state.digests:
                state.lacking.pop(index, None)
            elif now - state.lacking.setdefault(index, now) >= DIGEST_GRACE_S:
                overdue.append(index)
        return overdue

    def wanted_digests(self, task: bytes) -> list[tuple[int, int, str]]:
        """``(first, count, holder)`` for each range of pieces whose digest this node lacks
        and a live member holds, asking the holder of most of them."""
        state = self.tasks.get(task)
        if state is None or state.geometry is None:
            return []
        from dfget.coordinators.serfwire import DIGESTS_PER_ANSWER

        num_pieces = state.geometry.num_pieces
        top = bit_count(num_pieces) - 1
        live = [
            (name, h.mask)
            for name, h in state.holders.items()
            if name != self.me and self.alive(name) and h.mask
        ]
        overdue = set(self._overdue(state, self.now()))
        wanted: list[tuple[int, int, str]] = []
        for first in range(0, num_pieces, DIGESTS_PER_ANSWER):
            count = min(DIGESTS_PER_ANSWER, num_pieces - first)
            lacking = [i for i in range(first, first + count) if i in overdue]
            if not lacking:
                continue
            best, best_score = "", 0
            for name, mask in live:
                score = sum(1 for i in lacking if mask >> (top - i) & 1)
                if score > best_score or (score == best_score and score and name < best):
                    best, best_score = name, score
            if best_score:
                wanted.append((first, count, best))
        return wanted

    def leave(self, task: bytes) -> None:
        """This node no longer takes part in ``task``."""
        state = self.tasks.get(task)
        if state is not None:
            state.started_at = None
            state.holders.pop(self.me, None)
            state.believed.clear()
            self._drop_if_unused(task, state)


def _int_tag(value: str | None) -> int:
    try:
        return max(0, int(value)) if value else 0
    except ValueError:
        return 0
