"""Bencode (BEP 3), the one codec of the project: the tracker's answers and the peer's reading
of them, on the ``bencode.py`` package.

Decoding keeps every string as ``bytes`` (keys included): peer ids, compact peer lists and
failure reasons are binary, and a decoder that turns valid UTF-8 into ``str`` would change a
value's type with its content.
"""

from __future__ import annotations

from typing import Any, Final

import bencodepy

#: bencode.py's codec without a text encoding: strings stay bytes.
_CODEC: Final = bencodepy.Bencode()


class BencodeError(ValueError):
    """The bytes are not bencode."""


def encode(value: Any) -> bytes:
    """Bencode ``value`` (dicts with bytes or str keys, lists, ints, bytes, str)."""
    encoded: bytes = bencodepy.encode(value)
    return encoded


def decode(data: bytes) -> Any:
    """The value ``data`` holds; ``BencodeError`` for anything that is not bencode."""
    try:
        return _CODEC.decode(data)
    except Exception as exc:  # bencode.py raises several types on garbage
        raise BencodeError(f"not bencode: {exc}") from exc
