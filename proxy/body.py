"""The body of one request on its way from the client's connection to whoever answers it:
buffered up to a bound, so that reading pauses while the upstream is slower."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable


class BodyAborted(Exception):
    """The client's request body ended early or was malformed."""


class Body:
    """The body of one request, from the reader to the handler, buffered up to a bound."""

    def __init__(self, expected: bool) -> None:
        #: The head announced a body (Content-Length > 0 or chunked).
        self.expected = expected
        self.complete = not expected
        self._chunks: deque[bytes] = deque()
        self.buffered_bytes = 0
        self._error: BaseException | None = None
        self._arrived = asyncio.Event()
        self._drained = asyncio.Event()
        self.on_first_read: Callable[[], Awaitable[None]] | None = None

    def feed(self, chunk: bytes) -> None:
        self._chunks.append(chunk)
        self.buffered_bytes += len(chunk)
        self._arrived.set()

    def finish(self) -> None:
        self.complete = True
        self._arrived.set()

    def fail(self, error: BaseException) -> None:
        self._error = error
        self._arrived.set()

    @property
    def failed(self) -> bool:
        """The client broke the body off (malformed, cut short, connection lost): whatever
        failed while it was being sent on is the client's fault, not the upstream's."""
        return self._error is not None

    async def wait_below(self, limit_bytes: int) -> None:
        while self.buffered_bytes > limit_bytes and self._error is None:
            self._drained.clear()
            await self._drained.wait()

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives; ``BodyAborted`` if the client breaks it off."""
        if self.on_first_read is not None:
            first_read, self.on_first_read = self.on_first_read, None
            await first_read()  # "100 Continue" for a client that waits for it
        while True:
            while self._chunks:
                chunk = self._chunks.popleft()
                self.buffered_bytes -= len(chunk)
                self._drained.set()
                yield chunk
            if self._error is not None:
                raise BodyAborted(str(self._error))
            if self.complete:
                return
            self._arrived.clear()
            await self._arrived.wait()
