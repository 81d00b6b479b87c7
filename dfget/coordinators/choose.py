"""Which coordinator a download talks to: the dftrackers of ``--tracker``, the Serf cluster of
``--coordinator serf``, or none (straight from the origin).

In decentralized mode a process has one ``SerfNode``: dfdaemon's is shared by every download
(``Host.serf``); a plain dfget's is started for its one download and stopped with it. The Serf
modules are imported only then, so that ``import dfget`` stays quick.
"""

from __future__ import annotations

from dfget.host import Host
from dfget.options import DownloadOptions
from peerwire.coordination import Coordinator


def coordinator_for(options: DownloadOptions, host: Host) -> Coordinator | None:
    if options.serf is not None:
        from dfget.coordinators.serfcoordinator import SerfCoordinator
        from dfget.coordinators.serfnode import SerfNode

        if host.serf is not None:
            return SerfCoordinator(host.serf)
        node = SerfNode(options.serf, secret=options.secret, zone=options.zone)
        return SerfCoordinator(node, owns_node=True)
    if options.trackers:
        from dfget.coordinators.http import HttpTracker

        return HttpTracker(list(options.trackers), secret=options.secret)
    return None
