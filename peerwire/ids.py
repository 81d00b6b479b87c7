"""Typed identifiers: a task (the BitTorrent ``info_hash``) and a peer."""

from __future__ import annotations

import os
from typing import NamedTuple, Self

ID_LENGTH = 20


def _check(raw: bytes, kind: str) -> None:
    if not isinstance(raw, bytes) or len(raw) != ID_LENGTH:
        raise ValueError(f"{kind} must be {ID_LENGTH} bytes, got {raw!r:.60}")


# Both ids are tuples of one ``bytes`` underneath: they are dictionary keys on every hot path
# (peers, requests in flight, the choker), and a tuple hashes and compares in C, where a frozen
# dataclass runs a generated Python ``__hash__`` (~25,000 calls per 4 MiB download). Like
# tuples, a TaskId and a PeerId of the same bytes compare equal; they never share a dict.


class _RawFields(NamedTuple):
    raw: bytes


class _RawId(_RawFields):
    """A checked 20-byte id (the base of ``TaskId`` and ``PeerId``)."""

    __slots__ = ()

    def __new__(cls, raw: bytes) -> Self:
        _check(raw, cls.__name__)
        return super().__new__(cls, raw)

    def hex(self) -> str:
        return self.raw.hex()


class TaskId(_RawId):
    """20-byte task identity; travels as the BitTorrent ``info_hash``."""

    __slots__ = ()

    @classmethod
    def from_hex(cls, text: str) -> TaskId:
        try:
            raw = bytes.fromhex(text)
        except ValueError as exc:
            raise ValueError(f"TaskId: not hex: {text!r:.60}") from exc
        return cls(raw)

    def __str__(self) -> str:
        return self.raw.hex()


class PeerId(_RawId):
    """20-byte peer identity, as sent in the handshake and to the tracker."""

    __slots__ = ()

    @classmethod
    def generate(cls, prefix: bytes = b"-DF0100-") -> PeerId:
        """Azureus-style id: client prefix, then random bytes."""
        return cls(prefix + os.urandom(ID_LENGTH - len(prefix)))

    def __str__(self) -> str:
        """Short form for logs: the last 6 bytes (the random part of generated ids)."""
        return self.raw[-6:].hex()
