"""TaskCore between cores: whole downloads, byte-exact, over in-memory connections (``Net``):
pieces move through ``block_sink`` + ``piece`` + ``Verify`` as they do over sockets."""

from __future__ import annotations

from dataclasses import replace

from peerwire.commands import PieceDone, TaskDone
from tests.peerwire.test_core import CONFIG, DATA, PIECE, FakeClock, Harness, Net, pid

# -- whole downloads between cores ------------------------------------------------------------


def test_a_leecher_downloads_the_exact_bytes_from_a_seed_and_the_stats_add_up() -> None:
    clock = FakeClock()
    net = Net(clock)
    seed = net.add(Harness(have=range(8), peer_id=pid(1), clock=clock))
    leech = net.add(Harness(peer_id=pid(2), clock=clock))
    net.connect(leech, "to-seed", seed, "to-leech")
    net.run()
    assert bytes(leech.stored) == DATA
    assert net.log[id(leech)] == [*(PieceDone(i) for i in range(8)), TaskDone()]
    assert leech.core.done and leech.core.have.is_complete()
    stats = leech.core.stats
    assert (stats.downloaded_bytes, stats.wasted_bytes, stats.pieces_verified) == (len(DATA), 0, 8)
    assert stats.bytes_from_peer == {str(pid(1)): len(DATA)}
    assert seed.core.stats.uploaded_bytes == len(DATA)
    # Done, the leecher lost interest and the seed choked it; both stay connected.
    assert leech.core._peers["to-seed"].session.am_interested is False
    assert seed.core._peers["to-leech"].session.am_choking is True
    assert net.closed == []


def test_a_leecher_with_some_pieces_fetches_only_the_rest() -> None:
    clock = FakeClock()
    net = Net(clock)
    seed = net.add(Harness(have=range(8), peer_id=pid(1), clock=clock))
    leech = net.add(Harness(have=[0, 2, 7], peer_id=pid(2), clock=clock))
    net.connect(leech, "to-seed", seed, "to-leech")
    net.run()
    assert bytes(leech.stored) == DATA
    done = [c.index for c in net.log[id(leech)] if isinstance(c, PieceDone)]
    assert sorted(done) == [1, 3, 4, 5, 6]
    assert leech.core.stats.downloaded_bytes == 5 * PIECE


def test_a_leecher_serves_what_it_has_to_the_next_in_a_chain() -> None:
    """seed -> middle -> last: ``last`` never meets the seed."""
    clock = FakeClock()
    net = Net(clock)
    seed = net.add(Harness(have=range(8), peer_id=pid(1), clock=clock))
    middle = net.add(Harness(peer_id=pid(2), clock=clock))
    last = net.add(Harness(peer_id=pid(3), clock=clock))
    net.connect(middle, "m-s", seed, "s-m")
    net.connect(last, "l-m", middle, "m-l")
    for _ in range(50):
        net.run()
        if last.core.done:
            break
        net.clock.advance(CONFIG.have_delay_s)  # the middle's haves go out at their deadline
    assert bytes(middle.stored) == bytes(last.stored) == DATA
    assert last.core.stats.bytes_from_peer == {str(pid(2)): len(DATA)}
    assert middle.core.stats.uploaded_bytes == len(DATA)


def test_two_leechers_complete_from_a_seed_and_each_other() -> None:
    clock = FakeClock()
    net = Net(clock)
    config = replace(CONFIG, picker_policy="rarest_first", random_first_pieces=4)
    seed = net.add(Harness(have=range(8), peer_id=pid(1), clock=clock))
    a = net.add(Harness(peer_id=pid(2), clock=clock, config=config))
    b = net.add(Harness(peer_id=pid(3), clock=clock, config=config))
    net.connect(a, "a-s", seed, "s-a")
    net.connect(b, "b-s", seed, "s-b")
    net.connect(a, "a-b", b, "b-a")
    net.run()
    for _ in range(20):
        net.clock.advance(CONFIG.have_delay_s)
        net.run()
    assert bytes(a.stored) == bytes(b.stored) == DATA
    for leech in (a, b):
        assert (
            sum(leech.core.stats.bytes_from_peer.values())
            == len(DATA) + leech.core.stats.wasted_bytes
        )
