"""Endgame: once every missing block is requested somewhere, which blocks in flight at other
peers a peer with free slots should be asked for as well (the first copy to arrive wins, the
others are cancelled). Only blocks that are overdue at their holder are duplicated (the
scheduler's ``due``), fewest copies first, never twice at the same peer. Pure.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import TypeVar

from peerwire.layout import Block
from peerwire.requests import RequestManager
from peerwire.schedstate import PeerBlocks

P = TypeVar("P", bound=Hashable)

#: A request is overdue at this many times what its holder should take for all it was asked.
OVERDUE_FACTOR = 4
#: An endgame scan that found nothing to duplicate for a peer is not repeated for it before the
#: first of its candidates falls due, nor before this long (holders' rates, and with them the
#: time their blocks fall due, move meanwhile); news of a piece from the peer rescans at once.
#: A peer with free slots in endgame is asked for requests at every arrival, ``have`` and tick:
#: without this, most of those asks rescanned every block in flight.
ENDGAME_RESCAN_S = 0.25


def endgame_duplicates(
    peer: P,
    state: PeerBlocks,
    requests: RequestManager[P],
    receiving: dict[Block, P],
    *,
    now: float,
    wanted: int,
    max_copies: int,
    due: Callable[[Block], float],
) -> list[Block]:
    """Up to ``wanted`` blocks to ask of ``peer`` again. When fewer are found, the peer is not
    scanned again before the first candidate falls due (``state.endgame_after``)."""
    duplicates: list[Block] = []
    next_due = now + ENDGAME_RESCAN_S
    bitfield = state.bitfield
    for block, copies in requests.inflight_blocks():
        if copies >= max_copies:
            break
        if block.index not in bitfield or block in receiving or requests.is_inflight(peer, block):
            continue
        if state.avoid and state.avoided(block, now):
            next_due = min(next_due, state.avoid[block])
            continue
        when = due(block)  # last: it may ask the shell for a rate
        if when > now:
            next_due = min(next_due, when)
            continue
        duplicates.append(block)
        if len(duplicates) == wanted:
            break
    if len(duplicates) < wanted:
        state.endgame_after = next_due  # nothing more to take before then
    return duplicates
