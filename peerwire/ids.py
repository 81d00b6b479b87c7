"""Typed identifiers: a task (the BitTorrent ``info_hash``) and a peer."""

from __future__ import annotations

import os
from dataclasses import dataclass

ID_LENGTH = 20


def _check(raw: bytes, kind: str) -> None:
    if not isinstance(raw, bytes) or len(raw) != ID_LENGTH:
        raise ValueError(f"{kind} must be {ID_LENGTH} bytes, got {raw!r:.60}")


@dataclass(frozen=True, slots=True)
class TaskId:
    """20-byte task identity; travels as the BitTorrent ``info_hash``."""

    raw: bytes

    def __post_init__(self) -> None:
        _check(self.raw, "TaskId")

    @classmethod
    def from_hex(cls, text: str) -> TaskId:
        try:
            raw = bytes.fromhex(text)
        except ValueError as exc:
            raise ValueError(f"TaskId: not hex: {text!r:.60}") from exc
        return cls(raw)

    def hex(self) -> str:
        return self.raw.hex()

    def __str__(self) -> str:
        return self.raw.hex()


@dataclass(frozen=True, slots=True)
class PeerId:
    """20-byte peer identity, as sent in the handshake and to the tracker."""

    raw: bytes

    def __post_init__(self) -> None:
        _check(self.raw, "PeerId")

    @classmethod
    def generate(cls, prefix: bytes = b"-DF0100-") -> PeerId:
        """Azureus-style id: client prefix, then random bytes."""
        return cls(prefix + os.urandom(ID_LENGTH - len(prefix)))

    def hex(self) -> str:
        return self.raw.hex()

    def __str__(self) -> str:
        """Short form for logs: the last 6 bytes (the random part of generated ids)."""
        return self.raw[-6:].hex()
