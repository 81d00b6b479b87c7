"""Coverage-guided fuzzing (atheris, libFuzzer) of the three parsers that face the network.

Each target feeds arbitrary bytes to pure parsing code and fails only when an exception escapes
that the code does not document, or when a documented invariant breaks:

* ``peerwire``: ``peerwire.decoder.Decoder`` (with and without the handshake, fed in random
  splits, through ``receive_data`` or ``get_buffer``/``buffer_updated``, with or without a block
  sink). Only ``ProtocolError`` may escape.
* ``tracker``: ``tracker.protocol.parse_announce`` / ``parse_scrape`` (``AnnounceError`` only;
  a parsed announce has 20-byte ids, a port <= 65535, numwant within its cap) and
  ``parse_report`` (``ValueError`` only).
* ``proxy``: the bytes go through ``proxy.connection.Connection``'s httptools parser (nothing may
  escape; a callback that raises shows up as the 400 "bad request" it is turned into, and is
  reported), then each parsed request through ``proxy.routes.classify`` (never raises; refusals
  are 4xx; a registry URL starts with a configured upstream; a proxy or tunnel route only where
  a rule allows), ``parse_range`` (``RangeNotSatisfiable`` only; a range lies inside the blob)
  and ``check_header`` (``ValueError`` only).

atheris is not a dependency of the project; install it into the venv first (a binary wheel):

    .venv/bin/pip install atheris
    .venv/bin/python tools/fuzz.py --target tracker -max_total_time=60
    .venv/bin/python tools/fuzz.py --target proxy -runs=100000 corpus/proxy/
    .venv/bin/python tools/fuzz.py --target peerwire -max_total_time=600 -jobs=2

Arguments after ``--target`` go to libFuzzer (``-help=1`` lists them). A finding stops the run
and leaves ``crash-<sha1>`` with the input; replay it with ``tools/fuzz.py --target T crash-...``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from collections.abc import Callable
from typing import Any, cast

import atheris  # type: ignore[import-untyped]

with atheris.instrument_imports(include=["peerwire", "tracker", "proxy", "bencode"]):
    import bencode

    from peerwire.decoder import NEED_DATA, Decoder
    from peerwire.errors import ProtocolError
    from proxy.config import ProxyConfig, parse_rule
    from proxy.connection import Connection, Failure, Request
    from proxy.routes import (
        ConnectRoute,
        ProxyRoute,
        RangeNotSatisfiable,
        Refused,
        RegistryRoute,
        check_header,
        classify,
        parse_range,
    )
    from tracker.protocol import (
        AnnounceError,
        encode_failure,
        parse_announce,
        parse_report,
        parse_scrape,
    )

ID_BYTES = 20
REMOTE_IPS = ("127.0.0.1", "::1", "::ffff:10.1.2.3", "fe80::1%eth0", "", "not-an-address")
METHODS = ("GET", "HEAD", "PUT", "POST", "PATCH", "DELETE", "OPTIONS", "CONNECT", "TRACE")
UPSTREAM = "http://127.0.0.1:5000"
PROXY_CONFIG = ProxyConfig(
    upstream=UPSTREAM,
    registries=(("mirror.example", "https://mirror.example"),),
    rules=(
        parse_rule(r"^http://127\.0\.0\.1:5000/files/", "swarm"),
        parse_rule(r"^https://tunnel\.example/", "direct"),
    ),
)


# -- peerwire ------------------------------------------------------------------------------------


def fuzz_peerwire(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    with_sink = fdp.ConsumeBool()

    def sink(index: int, begin: int, length: int) -> memoryview | None:
        return memoryview(bytearray(length)) if (index + begin) % 2 else None

    decoder = Decoder(
        max_message_bytes=fdp.ConsumeIntInRange(13, 1 << 17),
        expect_handshake=fdp.ConsumeBool(),
        block_sink=sink if with_sink else None,
    )
    zero_copy = fdp.ConsumeBool()
    try:
        while fdp.remaining_bytes():
            chunk = fdp.ConsumeBytes(fdp.ConsumeIntInRange(1, 4096))
            if zero_copy:
                while chunk:
                    buffer = decoder.get_buffer()
                    n = min(len(buffer), len(chunk))
                    buffer[:n] = chunk[:n]
                    chunk = chunk[n:]
                    decoder.buffer_updated(n)
            else:
                decoder.receive_data(chunk)
            while decoder.next_event() is not NEED_DATA:
                pass
            assert decoder.pending_bytes >= 0
    except ProtocolError:
        pass  # documented: the remote side broke the protocol


# -- tracker -------------------------------------------------------------------------------------


def fuzz_tracker(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    which = fdp.ConsumeIntInRange(0, 2)
    if which == 2:
        with contextlib.suppress(ValueError):  # documented: what is wrong with the report
            parse_report(fdp.ConsumeBytes(fdp.remaining_bytes()))
        return
    remote_ip = REMOTE_IPS[fdp.ConsumeIntInRange(0, len(REMOTE_IPS) - 1)]
    trust_ip = fdp.ConsumeBool()
    numwant_max = fdp.ConsumeIntInRange(1, 500)
    numwant_default = fdp.ConsumeIntInRange(1, numwant_max)
    max_hashes = fdp.ConsumeIntInRange(1, 100)
    query = fdp.ConsumeBytes(fdp.remaining_bytes())
    try:
        if which == 0:
            request = parse_announce(
                query,
                remote_ip,
                trust_ip=trust_ip,
                numwant_default=numwant_default,
                numwant_max=numwant_max,
            )
            assert len(request.info_hash) == len(request.peer_id) == ID_BYTES, request
            assert 0 <= request.port <= 65535, request
            assert 0 <= request.numwant <= numwant_max, request
            assert request.ip4 is not None or request.ip6 is not None, request
        else:
            hashes = parse_scrape(query, max_hashes=max_hashes)
            assert len(hashes) <= max_hashes
            assert all(len(h) == ID_BYTES for h in hashes)
    except AnnounceError as exc:
        # The server bencodes the text as the failure reason: that must always work.
        assert bencode.decode(encode_failure(str(exc)))


# -- proxy ---------------------------------------------------------------------------------------


async def _parsed_requests(chunks: list[bytes]) -> list[Request | Failure]:
    async def never(_: Request, __: Connection) -> bool:
        raise AssertionError("the handler is not run while fuzzing the parser")

    writer = cast(asyncio.StreamWriter, None)  # _feed never writes
    connection = Connection(asyncio.StreamReader(), writer, PROXY_CONFIG, never)
    for chunk in chunks:
        if not connection._feed(chunk):
            break
    return list(connection._pending)


def _check_route(method: str, target: str) -> None:
    route = classify(method, target, PROXY_CONFIG)
    if isinstance(route, Refused):
        assert 400 <= route.status < 500, route
    elif isinstance(route, RegistryRoute):
        assert route.url.startswith((UPSTREAM + "/v2", "https://mirror.example/v2")), route
        assert "/../" not in route.url.partition("?")[0], route
    elif isinstance(route, ProxyRoute):
        assert route.url.startswith("http://127.0.0.1:5000/files/"), route
    elif isinstance(route, ConnectRoute):
        assert (route.host, route.port) == ("tunnel.example", 443), route


def _check_range(value: str | None, size_bytes: int) -> None:
    try:
        byte_range = parse_range(value, size_bytes)
    except RangeNotSatisfiable:
        return
    if byte_range is not None:
        assert 0 <= byte_range.start < byte_range.end <= size_bytes, (value, byte_range)


def fuzz_proxy(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    which = fdp.ConsumeIntInRange(0, 2)
    if which == 0:  # the route of a method and target as the parser hands them over
        method = METHODS[fdp.ConsumeIntInRange(0, len(METHODS) - 1)]
        _check_route(method, fdp.ConsumeBytes(fdp.remaining_bytes()).decode("latin-1"))
        return
    if which == 1:
        size_bytes = fdp.ConsumeIntInRange(0, 1 << 40)
        _check_range(fdp.ConsumeBytes(fdp.remaining_bytes()).decode("latin-1"), size_bytes)
        return
    size_bytes = fdp.ConsumeIntInRange(0, 1 << 20)
    chunks = []
    while fdp.remaining_bytes():
        chunks.append(fdp.ConsumeBytes(fdp.ConsumeIntInRange(1, 512)))
    for item in LOOP.run_until_complete(_parsed_requests(chunks)):
        if isinstance(item, Failure):
            assert item.message != "bad request\n", "an httptools callback raised"
            continue
        _check_route(item.method, item.target)
        _check_range(item.header("Range"), size_bytes)
        for name, value in item.headers:
            with contextlib.suppress(ValueError):  # documented: a header unfit to send
                check_header(name, value)


LOOP = asyncio.new_event_loop()
TARGETS: dict[str, Callable[[bytes], None]] = {
    "peerwire": fuzz_peerwire,
    "tracker": fuzz_tracker,
    "proxy": fuzz_proxy,
}


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--target", choices=sorted(TARGETS), required=True)
    args, libfuzzer_args = parser.parse_known_args(argv[1:])
    one_input: Any = TARGETS[args.target]
    atheris.Setup([argv[0], *libfuzzer_args], one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
