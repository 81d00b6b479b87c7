"""The origin over HTTP: a probe, exact byte ranges, or the whole body as a stream.

Pieces nobody in the swarm has yet come from the origin with Range requests (RFC 9110 14).
The probe learns the length, a validator and whether ranges work; every later request is checked
against that answer, so content that changes under a task is an error (``OriginChanged``), never
a file mixed from two versions.

Retries: 5xx, 408 and 429 answers, connection errors, timeouts and truncated bodies are
transient and retried with exponential backoff (``backoff_s * 2**attempt``, equal jitter,
``Retry-After`` honoured up to ``MAX_BACKOFF_S``). Other 4xx answers and protocol surprises
are final. ``stream`` never retries: a restarted stream starts from byte 0, the caller decides.

Bodies are read raw (``Accept-Encoding: identity``): pieces are hashed, so a body the server
encoded would be wrong bytes, and an encoded answer is refused rather than decoded.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import random
import re
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Final, TypeVar
from urllib.parse import unquote, urlsplit, urlunsplit

from multidict import CIMultiDict, CIMultiDictProxy

from dfget.errors import OriginChanged, OriginError
from dfget.httpclient import (
    ConnectionLost,
    HttpClient,
    HttpClientError,
    InvalidRequest,
    Response,
    TooManyRedirects,
)
from dfget.options import OriginInfo
from peerwire.ratelimit import AsyncRateLimiter

logger = logging.getLogger(__name__)

#: Body bytes read per limiter reservation.
READ_CHUNK_BYTES: Final = 64 * 1024
#: Longest wait between two attempts, whatever the backoff or ``Retry-After`` says.
MAX_BACKOFF_S: Final = 30.0
MAX_REDIRECTS: Final = 10
#: Statuses below 500 that still mean "try again later" (RFC 9110 15.5.9, RFC 6585 4).
_TRANSIENT_4XX: Final = frozenset({408, 429})
_CONTENT_RANGE_RE: Final = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")
_UNSATISFIED_RANGE_RE: Final = re.compile(r"bytes \*/(\d+)")

T = TypeVar("T")


class _Transient(Exception):
    """A failure worth another attempt."""

    def __init__(self, message: str, status: int | None = None, retry_after_s: float | None = None):
        super().__init__(message)
        self.status = status
        self.retry_after_s = retry_after_s


def validator_of(headers: CIMultiDictProxy[str]) -> str | None:
    """The validator a response carries: strong ETag, else Last-Modified (RFC 9110 8.8)."""
    etag = headers.get("ETag")
    if etag is not None and not etag.startswith("W/"):
        return etag
    return headers.get("Last-Modified")


def check_validator(headers: CIMultiDictProxy[str], expected: str | None, where: str) -> None:
    """Raise ``OriginChanged`` when the response's validator of ``expected``'s kind differs.

    An ETag is always quoted and a date never is, so the kind is known from ``expected``. A
    missing header proves nothing (some servers omit it on 206), so it passes.
    """
    if expected is None:
        return
    got = headers.get("ETag") if expected.startswith('"') else headers.get("Last-Modified")
    if got is not None and got.removeprefix("W/") != expected:
        raise OriginChanged(f"origin changed: {where} has validator {got}, expected {expected}")


def parse_content_range(value: str | None) -> tuple[int, int, int | None]:
    """``Content-Range: bytes first-last/total`` -> (first, last, total or None for ``*``)."""
    match = _CONTENT_RANGE_RE.fullmatch((value or "").strip())
    if match is None:
        raise OriginError(f"origin sent a 206 with a bad Content-Range: {value!r}", 206)
    first, last = int(match[1]), int(match[2])
    total = None if match[3] == "*" else int(match[3])
    if last < first or (total is not None and last >= total):
        raise OriginError(f"origin sent an impossible Content-Range: {value!r}", 206)
    return first, last, total


def content_length(response: Response) -> int | None:
    """The Content-Length header as a number, None when absent."""
    value = response.headers.get("Content-Length")
    if value is None:
        return None
    if not value.strip().isdigit():
        raise OriginError(f"origin sent a bad Content-Length: {value!r}", response.status)
    return int(value)


def _check_identity(response: Response) -> None:
    encoding = response.headers.get("Content-Encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        raise OriginError(
            f"origin sent Content-Encoding {encoding!r} though asked for identity; "
            "pieces must be the raw bytes",
            response.status,
        )


def _status_error(response: Response, expected: str) -> Exception:
    """The error for a status we cannot use: transient (5xx, 408, 429) or final."""
    message = f"origin answered {response.status} {response.reason}"
    if response.status >= 500 or response.status in _TRANSIENT_4XX:
        retry_after = response.headers.get("Retry-After", "").strip()
        retry_after_s = float(retry_after) if retry_after.isdigit() else None
        return _Transient(message, response.status, retry_after_s)
    if response.status < 400:
        message += f" (expected {expected})"
    return OriginError(message, response.status)


class Origin:
    """HTTP client for one origin URL; see the module docstring for the retry policy.

    ``headers`` go with every request (they may carry auth). A given ``client`` (shared by a
    node's downloads, so that connections to an origin are reused) is not closed by ``close``.
    ``timeout_s`` bounds the connection and each wait for data, not a whole request.
    ``limiter`` paces body reads, ``READ_CHUNK_BYTES`` per reservation.
    """

    def __init__(
        self,
        url: str,
        headers: Sequence[tuple[str, str]] = (),
        *,
        client: HttpClient | None = None,
        timeout_s: float = 30.0,
        retries: int = 4,
        backoff_s: float = 0.5,
        limiter: AsyncRateLimiter | None = None,
    ) -> None:
        if timeout_s <= 0 or retries < 0 or backoff_s < 0:
            raise ValueError(
                f"need timeout_s > 0, retries >= 0, backoff_s >= 0; got {timeout_s}, "
                f"{retries}, {backoff_s}"
            )
        #: The URL without its user:password (which goes as Basic auth, to that origin only).
        self.url, self._auth, self._auth_origin = _split_credentials(url)
        self._headers: CIMultiDict[str] = CIMultiDict(headers)
        self._client = client
        self._own_client = client is None
        # No total limit: a big range at a low --rate may rightly take long. Stalls are caught.
        self._timeout_s = timeout_s
        self._retries = retries
        self._backoff_s = backoff_s
        self._limiter = limiter
        #: Body bytes received from the origin so far, all requests (truncated ones too).
        self.bytes_fetched = 0
        #: Requests sent, redirects included.
        self.requests = 0
        #: Seconds from sending the latest Range request to its response head (None before).
        self.response_s: float | None = None

    async def __aenter__(self) -> Origin:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the HTTP client if this object created it."""
        if self._own_client and self._client is not None:
            await self._client.close()
            self._client = None

    async def probe(self) -> OriginInfo:
        """Length, validator, final URL and Range support, from ``GET`` with ``bytes=0-0``.

        A GET, not a HEAD: more servers answer ranges correctly on GET.
        """
        return await self._retrying(f"probe of {self.url}", self._probe_once)

    async def _probe_once(self) -> OriginInfo:
        async with self._get(self.url, "bytes=0-0") as response:
            final_url = response.url
            validator = validator_of(response.headers)
            if response.status == 206:
                _check_identity(response)
                first, last, total = parse_content_range(response.headers.get("Content-Range"))
                if total is None:
                    raise OriginError("origin does not say the length (Content-Range */)", 206)
                if first != 0:
                    raise OriginError(f"origin answered range {first}-{last} for 0-0", 206)
                if last == 0:
                    await self._read_exactly(response, 1)  # lets the connection be reused
                else:
                    response.close()
                return OriginInfo(final_url, total, validator, accepts_ranges=True)
            if response.status == 416:
                # RFC 9110 15.5.17: an empty file cannot satisfy 0-0; it says "bytes */0".
                match = _UNSATISFIED_RANGE_RE.fullmatch(response.headers.get("Content-Range", ""))
                if match is not None and int(match[1]) == 0:
                    return OriginInfo(final_url, 0, validator, accepts_ranges=True)
            if response.status == 200:
                _check_identity(response)
                length = content_length(response)
                if length is None:
                    raise OriginError("origin does not say the length (no Content-Length)", 200)
                response.close()  # the body is not wanted: drop the connection, not read it
                return OriginInfo(final_url, length, validator, accepts_ranges=False)
            raise _status_error(response, "206 or 200")

    async def fetch_range(self, start: int, end: int, expect: OriginInfo) -> bytes:
        """Bytes ``[start, end)`` of the file ``expect`` describes, exactly.

        ``OriginChanged`` when the length or validator differ from ``expect``; ``OriginError``
        when the origin stops honouring Range. Both are final; transient failures are retried.
        """
        parts = self.fetch_range_parts(start, [end], expect)
        async with contextlib.aclosing(parts):
            async for data in parts:
                return data
        raise AssertionError("unreachable: fetch_range_parts yields one part or raises")

    async def fetch_range_parts(
        self, start: int, ends: Sequence[int], expect: OriginInfo
    ) -> AsyncGenerator[bytes, None]:
        """Bytes ``[start, ends[-1])`` with one Range request, cut at the ascending offsets
        ``ends``: each part is yielded as soon as all of it has arrived, so a caller stores
        pieces while the rest of a long range is on its way.

        Errors as ``fetch_range``. A transient failure resumes from the first part not yielded
        yet, with a new Range request; ``retries`` counts failures in a row (a part that
        arrives starts the count again). Close the iterator when stopping early
        (``contextlib.aclosing``) so the connection is released at once.
        """
        end = ends[-1] if ends else start
        if not 0 <= start < end <= expect.total_length or any(
            b <= a for a, b in zip([start, *ends], ends, strict=False)
        ):
            raise ValueError(
                f"range [{start}, {end}) cut at {list(ends)[:4]}... not ascending inside "
                f"0..{expect.total_length}"
            )
        position, remaining, failures = start, list(ends), 0
        while remaining:
            try:
                async with self._get_range(position, end, expect) as response:
                    length = content_length(response)
                    while remaining:
                        data = await self._read_exactly(response, remaining[0] - position)
                        position = remaining.pop(0)
                        failures = 0
                        yield data
                    if length is None and await response.read(1):
                        raise OriginError(f"origin sent more than range {start}-{end - 1}", 206)
            except _Transient as exc:
                failures += 1
                await self._wait_to_retry(
                    f"range {position}-{end - 1} of {expect.url}", failures - 1, exc
                )

    @asynccontextmanager
    async def _get_range(self, start: int, end: int, expect: OriginInfo) -> AsyncIterator[Response]:
        """A GET of ``[start, end)`` whose answer is checked to be exactly that range of the
        file ``expect`` describes; its body is the caller's to read."""
        wanted = f"{start}-{end - 1}"
        sent = time.monotonic()
        async with self._get(expect.url, f"bytes={wanted}") as response:
            self.response_s = time.monotonic() - sent
            if response.status == 200:
                length = content_length(response)
                if length is not None and length != expect.total_length:
                    raise OriginChanged(
                        f"origin changed: length {length}, expected {expect.total_length}", 200
                    )
                check_validator(response.headers, expect.validator, "full answer")
                raise OriginError("origin stopped honouring Range (answered 200)", 200)
            if response.status == 416:
                match = _UNSATISFIED_RANGE_RE.fullmatch(response.headers.get("Content-Range", ""))
                if match is not None and int(match[1]) != expect.total_length:
                    raise OriginChanged(
                        f"origin changed: length {match[1]}, expected {expect.total_length}", 416
                    )
            if response.status != 206:
                raise _status_error(response, "206")
            _check_identity(response)
            first, last, total = parse_content_range(response.headers.get("Content-Range"))
            if total is not None and total != expect.total_length:
                raise OriginChanged(
                    f"origin changed: length {total}, expected {expect.total_length}", 206
                )
            check_validator(response.headers, expect.validator, f"range {wanted}")
            if (first, last) != (start, end - 1):
                raise OriginError(f"origin answered range {first}-{last} for {wanted}", 206)
            length = content_length(response)
            if length is not None and length != end - start:
                raise OriginError(f"origin sent Content-Length {length} for range {wanted}", 206)
            yield response

    async def stream(self, expect: OriginInfo, chunk_bytes: int = 1 << 20) -> AsyncIterator[bytes]:
        """The whole body with a plain GET, in chunks of ``chunk_bytes`` (the last may be less).

        For origins without Range support. Not retried: a body that ends early raises
        ``OriginError(retryable=True)``; the caller restarts. Close the iterator when stopping
        early (``contextlib.aclosing``) so the connection is released at once.
        """
        if chunk_bytes <= 0:
            raise ValueError(f"chunk_bytes must be > 0, got {chunk_bytes}")
        total = expect.total_length
        try:
            async with self._get(expect.url, None) as response:
                if response.status != 200:
                    raise _status_error(response, "200")
                _check_identity(response)
                length = content_length(response)
                if length is not None and length != total:
                    raise OriginChanged(f"origin changed: length {length}, expected {total}", 200)
                check_validator(response.headers, expect.validator, "stream")
                received = 0
                while received < total:
                    chunk = await self._read_exactly(response, min(chunk_bytes, total - received))
                    received += len(chunk)
                    yield chunk
                if length is None and await response.read(1):
                    raise OriginChanged(f"origin changed: body longer than {total} bytes", 200)
        except _Transient as exc:
            raise OriginError(str(exc), exc.status, retryable=True) from exc

    async def _read_exactly(self, response: Response, size_bytes: int) -> bytes:
        """``size_bytes`` of body, read under the limiter; ``_Transient`` if it ends early."""
        # A dfdaemon without a host rate has a limiter whose buckets have no rate: nothing to
        # book, so the body is read in as few calls as it arrives in.
        limiter = self._limiter
        if limiter is not None and limiter.bucket.unlimited:
            limiter = None
        parts: list[bytes] = []
        received = 0
        while received < size_bytes:
            goal = size_bytes
            if limiter is not None:
                step = min(READ_CHUNK_BYTES, size_bytes - received)
                await limiter.acquire(step)
                goal = received + step
            while received < goal:
                try:
                    part = await response.read(goal - received)
                except ConnectionLost:
                    part = b""  # closed in the middle of the body
                if not part:
                    raise _Transient(
                        f"origin body ended after {received} of {size_bytes} bytes",
                        response.status,
                    )
                parts.append(part)
                received += len(part)
                self.bytes_fetched += len(part)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    @asynccontextmanager
    async def _get(self, url: str, byte_range: str | None) -> AsyncIterator[Response]:
        """One GET (redirects followed); the client's transient failures become ``_Transient``."""
        if self._client is None:
            self._client = HttpClient()
        headers = self._headers.copy()
        headers["Accept-Encoding"] = "identity"
        if byte_range is None:
            headers.popall("Range", None)
        else:
            headers["Range"] = byte_range
        self.requests += 1
        own = self._auth is not None and _origin_of(url) == self._auth_origin
        if own and self._auth is not None and "Authorization" not in headers:
            # The client drops it when a redirect leaves the origin: those hosts never see it.
            headers["Authorization"] = self._auth
        try:
            response = await self._client.request(
                "GET",
                url,
                headers=headers.items(),
                follow_redirects=True,
                max_redirects=MAX_REDIRECTS,
                connect_timeout_s=self._timeout_s,
                read_timeout_s=self._timeout_s,
            )
            async with response:
                self.requests += response.redirects
                yield response
        except (TooManyRedirects, InvalidRequest) as exc:
            raise OriginError(f"cannot fetch {url}: {exc.__class__.__name__}: {exc}") from exc
        except (HttpClientError, TimeoutError, OSError) as exc:
            raise _Transient(f"{exc.__class__.__name__}: {exc}") from exc

    async def _retrying(self, what: str, attempt: Callable[[], Awaitable[T]]) -> T:
        """Run ``attempt`` until it returns, fails finally, or ``retries`` retries are spent."""
        number = 0
        while True:
            try:
                return await attempt()
            except _Transient as exc:
                await self._wait_to_retry(what, number, exc)
                number += 1

    async def _wait_to_retry(self, what: str, number: int, exc: _Transient) -> None:
        """Sleep before attempt ``number + 2`` (backoff with equal jitter, ``Retry-After``), or
        raise the final ``OriginError`` when ``number`` was the last one allowed."""
        if number >= self._retries:
            raise OriginError(
                f"{what} failed after {number + 1} attempts: {exc}", exc.status, retryable=True
            ) from exc
        delay_s = self._backoff_s * 2**number
        delay_s = delay_s / 2 + random.uniform(0, delay_s / 2)  # equal jitter
        if exc.retry_after_s is not None:
            delay_s = max(delay_s, exc.retry_after_s)
        delay_s = min(delay_s, MAX_BACKOFF_S)
        logger.info("%s: %s; attempt %d again in %.2fs", what, exc, number + 2, delay_s)
        await asyncio.sleep(delay_s)


def _origin_of(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}:{parts.port}".lower()


def _split_credentials(url: str) -> tuple[str, str | None, str]:
    """``url`` without ``user:password@``, the credentials as an ``Authorization: Basic``
    value (None without), and the origin they belong to: they are sent with every request to
    it, never elsewhere (a redirect to another host does not get them)."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url, None, ""
    netloc = parts.netloc.rpartition("@")[2]
    bare = urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
    user, password = unquote(parts.username or ""), unquote(parts.password or "")
    token = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
    return bare, f"Basic {token}", _origin_of(bare)
