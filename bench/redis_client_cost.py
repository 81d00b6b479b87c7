"""Client CPU per Redis command: redis-py's asyncio client against the tracker's own lane
(``tracker.redislink``), the same script call (``EVALSHA`` with 20 arguments) in batches of
1, 5, 20 and 50 (what one turn of a busy tracker's event loop issues).

Why the tracker does not send its announces through redis-py: its command path (packing,
the pipeline object, one awaited read per reply) costs more client CPU per command than a
whole announce of the memory store.

    .venv/bin/python bench/redis_client_cost.py              # starts its own redis-server
"""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import redis.asyncio as redis_asyncio
import uvloop

from tracker.redislink import RedisLink, Script

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = "redis.call('HSET', KEYS[1], ARGV[1], ARGV[2]); return {1, ARGV[2], {'a', 'b'}}"
CALLS = 20_000


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def args(i: int) -> list[object]:
    return [str(i), "x" * 20, *range(18)]


async def measure(port: int) -> dict[str, dict[int, float]]:
    results: dict[str, dict[int, float]] = {"redis-py pipeline": {}, "tracker lane": {}}
    client = redis_asyncio.Redis(port=port)
    sha = await client.script_load(SCRIPT)
    for batch in (1, 5, 20, 50):
        began = time.process_time()
        for _ in range(CALLS // batch):
            pipe = client.pipeline(transaction=False)
            for i in range(batch):
                pipe.evalsha(sha, 1, "k", *args(i))
            await pipe.execute()
        results["redis-py pipeline"][batch] = (time.process_time() - began) / CALLS * 1e6
    await client.aclose()
    link = RedisLink(f"redis://127.0.0.1:{port}/0")
    await link.start()
    script = Script(SCRIPT)
    for batch in (1, 5, 20, 50):
        began = time.process_time()
        for _ in range(CALLS // batch):
            await asyncio.gather(*[link.eval(script, "k", args(i)) for i in range(batch)])  # type: ignore[arg-type]
        results["tracker lane"][batch] = (time.process_time() - began) / CALLS * 1e6
    await link.close()
    return results


def main() -> None:
    port = free_port()
    server = subprocess.Popen(
        [shutil.which("redis-server") or "/usr/bin/redis-server", "--port", str(port),
         "--save", "", "--appendonly", "no", "--dir", tempfile.mkdtemp()],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        time.sleep(0.3)
        results = uvloop.run(measure(port))
    finally:
        server.terminate()
        server.wait()
    for name, row in results.items():
        print(f"{name:>18}: " + "  ".join(f"batch {b}: {us:.1f} us" for b, us in row.items()))
    out = ROOT / "bench" / "results" / "redis_client_cost.json"
    out.write_text(json.dumps({"client_cpu_us_per_command": results}, indent=1) + "\n")


if __name__ == "__main__":
    main()
