"""An outsider in a decentralized cluster, for the trust tests: it drives a Serf agent of its
own (joined to the cluster) and lies. Whenever a node starts a task it claims to hold every
piece (``df-start``, ``df-have``), repeats the task's geometry, and answers every digest query
with digests of bytes the origin never served. It knows no cluster secret (``key`` None), or
another one: its payloads carry no tag, or a wrong one.

It runs its own event loop in a thread; ``answered`` counts the forged answers it sent, so a
test can tell that the lie was put to the victims at all.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
import time
from typing import Any

from dfget.coordinators import serfwire as wire
from dfget.coordinators.serfrpc import SerfRpc, SerfRpcError


class Forger:
    def __init__(self, rpc: str, name: str, key: bytes | None = None) -> None:
        self.rpc = rpc
        self.codec = wire.Codec(name, key)
        self.answered = 0
        self.digests_answered = 0
        self.geometry: dict[bytes, list[Any]] = {}
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._rpc: SerfRpc | None = None

    def __enter__(self) -> Forger:
        self._thread.start()
        self._done = asyncio.run_coroutine_threadsafe(self._run(), self._loop)
        return self

    def __exit__(self, *exc_info: object) -> None:
        # Closing the connection ends the event stream: ``_run`` returns by itself.
        asyncio.run_coroutine_threadsafe(self._close(), self._loop).result(timeout=20)
        self._done.result(timeout=20)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.run_until_complete(self._loop.shutdown_asyncgens())
        self._loop.close()

    async def _close(self) -> None:
        if self._rpc is not None:
            await self._rpc.close()

    async def _run(self) -> None:
        host, _, port = self.rpc.rpartition(":")
        rpc = self._rpc = await SerfRpc.connect(host, int(port))
        types = ",".join(
            [f"user:{wire.EVENT_START}", f"user:{wire.EVENT_LENGTH}"]
            + [f"query:{q}" for q in wire.QUERIES]
        )
        _, records = await rpc.stream(types)
        try:
            async for record in records:
                try:
                    await self._on(rpc, record)
                except (wire.Rejected, SerfRpcError, IndexError, KeyError):
                    continue  # not a payload it can read, or a query already over
        finally:
            await rpc.close()

    async def _on(self, rpc: SerfRpc, record: dict[str, Any]) -> None:
        name, payload = record["Name"], record["Payload"]
        body = _peek(name, payload)
        task = wire.task_of(body)
        if record["Event"] == "user":
            if name == wire.EVENT_LENGTH:
                self.geometry[task] = body
                await self._claim(rpc, task)
            return
        if name == wire.QUERY_DIGESTS:
            first, count = body[1], body[2]
            forged = [hashlib.sha256(b"forged %d" % i).digest() for i in range(count)]
            answer = [task, first, forged]
            self.digests_answered += 1
        elif name == wire.QUERY_MANIFEST and task in self.geometry:
            answer = self.geometry[task]
        elif name == wire.QUERY_HOLDERS and task in self.geometry:
            answer = self._everything(task)
        else:
            return
        await rpc.respond(record["ID"], self.codec.seal_answer(name, payload, answer))
        self.answered += 1

    def _everything(self, task: bytes) -> list[Any]:
        pieces = wire.parse_geometry(self.geometry[task]).num_pieces
        flags = wire.FLAG_SOURCE | wire.FLAG_COMPLETE
        return wire.have_body(
            task, flags, pieces, pieces, None, [(0, pieces)], (0, 0, 0, int(time.time() * 1000))
        )

    async def _claim(self, rpc: SerfRpc, task: bytes) -> None:
        flags = wire.FLAG_SOURCE | wire.FLAG_COMPLETE
        have = self._everything(task)
        start = [task, flags, int(time.time() * 1000)]
        for name, body in ((wire.EVENT_START, start), (wire.EVENT_HAVE, have)):
            await rpc.event(name, self.codec.seal(name, body))


def _peek(name: str, payload: bytes) -> list[Any]:
    """The body of anyone's payload, tagged or not (the forger checks nothing)."""
    reader = wire.Codec("reader", None)
    try:
        return reader.open(name, payload).body
    except wire.Rejected:
        return reader.open(name, payload[: -wire.TAG_BYTES]).body
