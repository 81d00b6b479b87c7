"""The coordinators a download can have: implementations of the tracker interface
(``peerwire.coordination.Coordinator``). ``http`` speaks to one or more ``dftracker``s;
``serfcoordinator`` is decentralized mode (no tracker: Serf gossip); ``choose`` picks one."""
