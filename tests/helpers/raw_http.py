"""Raw HTTP/1.1 over a blocking socket, for the hostile-input suites: send arbitrary bytes, read
until the server closes, and split what came back into responses - or fail when it is not
exactly a sequence of well-formed responses."""

from __future__ import annotations

import re
import socket
from collections.abc import Iterator
from dataclasses import dataclass

_STATUS_LINE = re.compile(rb"HTTP/1\.1 ([1-5][0-9][0-9]) [\x20-\x7e\x80-\xff]*")
_HEADER_LINE = re.compile(rb"([!#$%&'*+.^_`|~0-9A-Za-z-]+):[ \t]*([\x20-\x7e\x80-\xff\t]*)")
_CHUNK_SIZE = re.compile(rb"[0-9a-fA-F]{1,16}")


@dataclass
class Reply:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes

    def header(self, name: bytes) -> bytes | None:
        """The first value of header ``name`` (case-insensitive), None when absent."""
        return next((v for n, v in self.headers if n.lower() == name.lower()), None)


def get(target: bytes, *headers: bytes) -> bytes:
    """A GET request for ``target`` with ``headers`` (whole lines, no CRLF), as bytes."""
    return (
        b"GET "
        + target
        + b" HTTP/1.1\r\nHost: t\r\n"
        + b"".join(h + b"\r\n" for h in headers)
        + b"\r\n"
    )


def talk(port: int, data: bytes, *, timeout_s: float, half_close: bool = True) -> bytes:
    """Send ``data`` on a new connection to 127.0.0.1:``port`` (then half-close it unless told
    not to), return everything until the server closes (a reset counts as a close). A server
    that neither answers nor closes within ``timeout_s`` of silence raises TimeoutError."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as sock:
        try:
            sock.sendall(data)
            if half_close:
                sock.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass  # closed on us mid-send: still read whatever it said
        received = bytearray()
        try:
            while chunk := sock.recv(65536):
                received += chunk
        except ConnectionResetError:
            pass
        return bytes(received)


def parse_replies(data: bytes, *, require_length: bool = False) -> list[Reply]:
    """Every response in ``data`` (RFC 9112 6.3 framing: Content-Length, chunked, or until the
    close; none for 1xx/204/304 and, tried second, for the answer to a HEAD). With
    ``require_length`` every response must carry a Content-Length. ValueError unless ``data`` is
    exactly a sequence of well-formed HTTP/1.1 responses."""
    replies = _parse_from(data, 0, require_length)
    if replies is None:
        raise ValueError(f"not a sequence of well-formed HTTP responses: {data[:300]!r}")
    return replies


def _parse_from(data: bytes, offset: int, require_length: bool) -> list[Reply] | None:
    if offset == len(data):
        return []
    end = data.find(b"\r\n\r\n", offset)
    if end < 0:
        return None
    status_line, *lines = data[offset:end].split(b"\r\n")
    matched = _STATUS_LINE.fullmatch(status_line)
    if matched is None:
        return None
    headers = []
    for line in lines:
        header = _HEADER_LINE.fullmatch(line)
        if header is None:
            return None
        headers.append((header[1], header[2].rstrip()))
    reply = Reply(int(matched[1]), headers, b"")
    if require_length and not (reply.header(b"Content-Length") or b"").isdigit():
        return None
    for body, after in _bodies(reply, data, end + 4):
        rest = _parse_from(data, after, require_length)
        if rest is not None:
            reply.body = body
            return [reply, *rest]
    return None


def _bodies(reply: Reply, data: bytes, start: int) -> Iterator[tuple[bytes, int]]:
    """The possible (body, end offset) of ``reply``, most likely first."""
    if reply.status < 200 or reply.status in (204, 304):
        yield b"", start
        return
    length = reply.header(b"Content-Length")
    if length is not None:
        if length.isdigit() and start + int(length) <= len(data):
            yield data[start : start + int(length)], start + int(length)
        yield b"", start  # the answer to a HEAD
    elif (reply.header(b"Transfer-Encoding") or b"").lower() == b"chunked":
        chunks, offset = [], start
        while True:
            line_end = data.find(b"\r\n", offset)
            size_text = data[offset:line_end].split(b";")[0]
            if line_end < 0 or not _CHUNK_SIZE.fullmatch(size_text):
                break
            size = int(size_text, 16)
            chunk_end = line_end + 2 + size
            if data[chunk_end : chunk_end + 2] != b"\r\n":
                break
            chunks.append(data[line_end + 2 : chunk_end])
            offset = chunk_end + 2
            if size == 0:
                yield b"".join(chunks), offset
                break
        yield b"", start
    else:
        yield data[start:], len(data)  # delimited by the close
        yield b"", start
