"""peerwire: the binary piece protocol (BEP 3 framing) and the machinery every peer uses.

Sans-IO modules (``messages``, ``bitfield``, ``session``, ``picker``, ``requests``,
``ratelimit``, ``storage``) hold the protocol logic and policy; ``connection`` is the thin
asyncio shell that drives them over sockets. This package imports no other package of the
project.
"""
