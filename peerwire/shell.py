"""The asyncio shell of one task: moves bytes and time for a ``TaskCore``, decides nothing.

``TaskShell`` owns the task's connections (``peerwire.connection``) and carries out the core's
commands: it writes what the core sends, closes what it closes, verifies and stores complete
pieces (inline when small, in a worker thread otherwise: sha256 and ``pwrite`` release the GIL),
dials the peers it names, serves uploads under the upload limit, and keeps one timer armed at
the core's next deadline. Commands about the swarm (announce, manifests, origin assignments,
reports) and the task's outcome go to ``on_command``, the download engine's.

Every entry into the core from here ends with ``pump``: the commands it emitted are carried out
in order, including those the carrying out itself causes (an inline verification).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable, Coroutine
from concurrent.futures import Executor
from typing import Final

from peerwire import commands as cmd
from peerwire import messages as m
from peerwire.connection import PeerConnection, PeerListener, open_connection
from peerwire.core import TaskCore
from peerwire.digests import DigestBook
from peerwire.ids import PeerId, TaskId
from peerwire.ratelimit import AsyncRateLimiter, TokenBucket
from peerwire.storage import PieceStore
from peerwire.wireconfig import WireConfig

log = logging.getLogger(__name__)

#: Pieces up to this size are verified and written on the event loop: hashing 64 KiB takes
#: tens of microseconds, less than a round trip through a worker thread.
INLINE_VERIFY_BYTES: Final = 64 * 1024
#: Outgoing connection attempts at once.
MAX_DIALS: Final = 16
#: The timer is set this much after the core's deadline. uvloop's clock and timers count whole
#: milliseconds (a delay is rounded to the nearest one): set at the deadline itself, the timer
#: could fire up to half a millisecond before it, find nothing due, and be set again for "now"
#: until the clock ticked over, dozens of idle turns of the loop each time.
TIMER_SLACK_S: Final = 0.001

#: What the shell hands on: the commands it does not carry out itself.
CommandHandler = Callable[[cmd.Command[PeerConnection]], object]


def open_task(
    store: PieceStore,
    digests: DigestBook,
    *,
    peer_id: PeerId,
    executor: Executor,
    config: WireConfig | None = None,
    secret: bytes | None = None,
    download_bucket: TokenBucket | None = None,
    upload_bucket: TokenBucket | None = None,
    on_command: CommandHandler | None = None,
    rng: random.Random | None = None,
    check_claims: bool = True,
) -> TaskShell:
    """A task core for ``store`` (its verified pieces, ``digests`` to check the others against)
    on the running event loop's clock, in its shell."""
    manifest = store.manifest
    core: TaskCore[PeerConnection] = TaskCore(
        manifest.layout,
        store.have,
        digests,
        task_id=manifest.task_id,
        peer_id=peer_id,
        clock=asyncio.get_running_loop().time,
        config=config,
        rng=rng,
        secret=secret,
        download_bucket=download_bucket,
        check_claims=check_claims,
    )
    return TaskShell(
        core, store, executor=executor, upload_bucket=upload_bucket, on_command=on_command
    )


class TaskShell:
    """Runs one ``TaskCore`` on the event loop, with its store and its connections."""

    def __init__(
        self,
        core: TaskCore[PeerConnection],
        store: PieceStore,
        *,
        executor: Executor,
        upload_bucket: TokenBucket | None = None,
        on_command: CommandHandler | None = None,
    ) -> None:
        self.core = core
        self.store = store
        self.task_id: TaskId = core.task_id
        self.peer_id: PeerId = core.peer_id
        self.reserved = core.reserved
        self.on_command = on_command
        self.executor = executor
        self._loop = asyncio.get_running_loop()
        self._upload = AsyncRateLimiter(upload_bucket) if upload_bucket is not None else None
        core.upload_bucket = upload_bucket
        #: One uploader for every connection (``_upload_loop``), started at the first request.
        self._uploader: asyncio.Task[None] | None = None
        self._upload_wake = asyncio.Event()
        self._dials = asyncio.Semaphore(MAX_DIALS)
        self._background: set[asyncio.Task[None]] = set()
        self._verifying: set[asyncio.Future[bytes | None]] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = float("inf")
        self._pumping = False
        self._closed = False
        #: Resolved when every piece is verified; the task's error when it fails.
        self.completed: asyncio.Future[None] = self._loop.create_future()
        if core.done:
            self.completed.set_result(None)

    def start(self) -> None:
        self.pump()

    # -- ConnectionOwner -----------------------------------------------------------------------

    def opened(self, conn: PeerConnection) -> None:
        self.core.connection_opened(conn)

    def attach(self, conn: PeerConnection, handshake: m.Handshake) -> bool:
        admitted = self.core.peer_connected(
            conn, handshake, outgoing=conn.outgoing, address=conn.address
        )
        self.pump()
        return admitted

    def block_sink(
        self, conn: PeerConnection, index: int, begin: int, length: int
    ) -> memoryview | None:
        return self.core.block_sink(conn, index, begin, length)

    def on_message(self, conn: PeerConnection, message: m.Message) -> None:
        self.core.message_received(conn, message)

    def read_done(self, conn: PeerConnection) -> None:
        self.pump()

    def writable(self, conn: PeerConnection) -> None:
        self._upload_wake.set()  # the uploader skipped it while its socket was full

    def on_closed(self, conn: PeerConnection, reason: str) -> None:
        self.core.peer_closed(conn, reason)
        self.pump()

    # -- carrying out commands -----------------------------------------------------------------

    def pump(self) -> None:
        """Carry out every pending command of the core, then re-arm the timer."""
        if self._pumping:
            return  # the outer pump takes what this call would have
        self._pumping = True
        try:
            core = self.core
            while commands := core.take_commands():
                for command in commands:
                    self._carry_out(command)
        finally:
            self._pumping = False
        self._arm(self.core.deadline)

    def _carry_out(self, command: cmd.Command[PeerConnection]) -> None:
        kind = type(command)
        if kind is cmd.Send:
            assert isinstance(command, cmd.Send)
            command.conn.send(command.messages)
        elif kind is cmd.Verify:
            assert isinstance(command, cmd.Verify)
            self._verify(command)
        elif kind is cmd.WakeUploader:
            assert isinstance(command, cmd.WakeUploader)
            self._wake_uploader(command.conn)
        elif kind is cmd.Close:
            assert isinstance(command, cmd.Close)
            command.conn.close(command.reason)
        elif kind is cmd.Dial:
            assert isinstance(command, cmd.Dial)
            self._spawn(self._dial(command.host, command.port))
        elif kind is cmd.TaskDone:
            if not self.completed.done():
                self.completed.set_result(None)
            self._hand_on(command)
        elif kind is cmd.TaskFailed:
            assert isinstance(command, cmd.TaskFailed)
            self.fail(command.error)
        else:
            self._hand_on(command)

    def _hand_on(self, command: cmd.Command[PeerConnection]) -> None:
        if self.on_command is not None:
            self.on_command(command)

    def fail(self, error: BaseException) -> None:
        """End the task with ``error`` (raised by whoever awaits ``completed``)."""
        if not self.completed.done():
            self.completed.set_exception(error)

    # -- time ----------------------------------------------------------------------------------

    def _arm(self, deadline: float) -> None:
        if deadline >= self._timer_at or self._closed:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = deadline
        self._timer = self._loop.call_at(deadline + TIMER_SLACK_S, self._fire)

    def _fire(self) -> None:
        self._timer = None
        self._timer_at = float("inf")
        if self._closed:
            return
        self.core.timer_fired()
        self.pump()

    # -- verification --------------------------------------------------------------------------

    def _verify(self, command: cmd.Verify) -> None:
        index, buffer, expected = command
        store = self.store
        if len(buffer) <= INLINE_VERIFY_BYTES:
            try:
                digest = store.commit_piece(index, buffer, expected)
            except OSError as exc:
                self._store_failed(index, exc)
                return
            self.core.piece_checked(index, buffer, digest)
            return  # the pump under way carries out what followed
        future = self._loop.run_in_executor(
            self.executor, store.commit_piece, index, buffer, expected
        )
        self._verifying.add(future)
        future.add_done_callback(lambda f: self._verified(index, buffer, f))

    def _verified(
        self, index: int, buffer: bytearray, future: asyncio.Future[bytes | None]
    ) -> None:
        self._verifying.discard(future)
        if future.cancelled():
            return
        error = future.exception()  # retrieved even when closing, so it is never "unretrieved"
        if self._closed:
            return
        if error is not None:
            self._store_failed(index, error)
            return
        self.core.piece_checked(index, buffer, future.result())
        self.pump()

    def _store_failed(self, index: int, error: BaseException) -> None:
        log.error("storing piece %d failed: %s", index, error)
        self.fail(error)

    # -- dialling ------------------------------------------------------------------------------

    def _spawn(self, coroutine: Coroutine[object, object, None]) -> None:
        task = self._loop.create_task(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _dial(self, host: str, port: int) -> None:
        try:
            async with self._dials:
                if not self._closed:
                    await open_connection(
                        self, host, port, timeout_s=self.core.config.handshake_timeout_s
                    )
        except (OSError, TimeoutError) as exc:
            log.debug("cannot connect to %s:%d: %s", host, port, exc)
        finally:
            self.core.swarm.dial_finished()
            self.pump()

    # -- uploading -----------------------------------------------------------------------------

    def _wake_uploader(self, conn: PeerConnection) -> None:
        if self._uploader is None:
            if self._closed:
                return
            self._uploader = self._loop.create_task(self._upload_loop())
        self._upload_wake.set()

    async def _upload_loop(self) -> None:
        """Serve every connection's queued requests under the upload limit, one block at a
        time, each chosen when the limit lets it go (``TaskCore.choose_upload``): a request
        that arrived meanwhile for a rarer piece goes first. One task and one wait per block
        for the whole task, however many peers are served."""
        core, store, limiter = self.core, self.store, self._upload
        wake = self._upload_wake
        while not self._closed:
            if limiter is not None:
                await limiter.acquire(0)  # out of debt: choose now, with what is queued now
            choice = core.choose_upload(_write_paused)
            self.pump()  # rejects of pieces we lack
            if choice is None:
                wake.clear()
                await wake.wait()
                continue
            conn, block = choice
            if not core.upload_starting(conn, block):
                self.pump()
                continue
            if limiter is not None:
                limiter.bucket.reserve(block.length)
            self.pump()  # ``have``s owed to the peer go first
            try:
                payload = store.read_block(block.index, block.begin, block.length)
            except (OSError, LookupError) as exc:
                log.error("cannot serve %s to %s: %s", block, conn, exc)
                conn.close(f"local read error: {exc}")
                continue
            conn.send_block(block.index, block.begin, payload)
            core.block_uploaded(conn, block)
            if limiter is None:
                await asyncio.sleep(0)  # let reads in between blocks

    # -- the end -------------------------------------------------------------------------------

    async def close(self) -> None:
        """Close every connection and stop; the store stays open (the caller owns it)."""
        if self._closed:
            return
        self.core.close()
        self.pump()
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
        tasks = [*self._background]
        if self._uploader is not None:
            self._uploader.cancel()
            tasks.append(self._uploader)
        for task in self._background:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        # The store is the caller's to close next: let pieces being written finish first.
        await asyncio.gather(*self._verifying, return_exceptions=True)
        if not self.completed.done():
            self.completed.cancel()

    async def connect(self, host: str, port: int) -> PeerConnection:
        """Dial a peer directly (tests, the ``peerwire`` command): it becomes a peer when its
        handshake arrives."""
        return await open_connection(
            self, host, port, timeout_s=self.core.config.handshake_timeout_s
        )


def _write_paused(conn: PeerConnection) -> bool:
    return conn.write_paused


class SharedListener:
    """One peer port for every task of a process (dfdaemon): a connection goes to the task
    whose info_hash its handshake names."""

    def __init__(self) -> None:
        self._tasks: dict[TaskId, TaskShell] = {}
        self.listener = PeerListener(self._tasks.get)
        self.port = 0

    async def start(self, host: str, port: int) -> int:
        _, self.port = await self.listener.start(host, port)
        return self.port

    def add(self, task: TaskShell) -> None:
        self._tasks[task.task_id] = task

    def remove(self, task: TaskShell) -> None:
        if self._tasks.get(task.task_id) is task:
            del self._tasks[task.task_id]

    async def close(self) -> None:
        await self.listener.close()
