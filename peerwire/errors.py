"""The two kinds of protocol error (after h11): the remote side broke the protocol, or we did."""

from __future__ import annotations


class ProtocolError(Exception):
    """The remote peer sent something the protocol forbids.

    The connection to that peer is closed with this as the reason; nothing else is affected.
    """


class LocalProtocolError(Exception):
    """We were asked to send something the protocol forbids: a bug on our side."""
