"""Sending a span of a file to a socket with ``os.sendfile`` from a worker thread: the bytes
never pass through Python, and the event loop goes on meanwhile."""

from __future__ import annotations

import errno
import os
import select
import threading
from contextlib import AbstractContextManager
from typing import Final, Protocol

#: A thread sending a file checks this often whether it should stop.
SEND_STEP_S: Final = 0.25


class FileRegion(Protocol):
    """Bytes of a file to send as they are: ``open()`` gives a descriptor for the duration."""

    @property
    def offset(self) -> int: ...

    @property
    def length(self) -> int: ...

    def open(self) -> AbstractContextManager[int]: ...


def send_region(region: FileRegion, sock_fd: int, timeout_s: float, stop: threading.Event) -> None:
    """All of ``region`` to the non-blocking socket ``sock_fd`` (closed at the end), waiting
    whenever its buffer is full, at most ``timeout_s`` for any progress; gives up when ``stop``
    is set. Blocks: for a worker thread."""
    try:
        poller = select.poll()
        poller.register(sock_fd, select.POLLOUT)
        offset, left = region.offset, region.length
        with region.open() as fd:
            while left and not stop.is_set():
                try:
                    sent = os.sendfile(sock_fd, fd, offset, left)
                except BlockingIOError:
                    waited_s = 0.0
                    while not poller.poll(SEND_STEP_S * 1000):
                        waited_s += SEND_STEP_S
                        if stop.is_set():
                            return
                        if waited_s >= timeout_s:
                            raise TimeoutError(
                                f"the client took nothing for {timeout_s:g}s"
                            ) from None
                    continue
                if sent == 0:
                    raise OSError(
                        errno.EIO, f"the file ends inside {region.offset}+{region.length}"
                    )
                offset += sent
                left -= sent
    finally:
        os.close(sock_fd)
