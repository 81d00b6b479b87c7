"""Fixtures of the tracker's tests: a ``redis-server`` for the Redis store's behaviour tests
(one per session, emptied by each test that uses it)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.helpers.redis_server import redis_server


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    with redis_server() as server:
        yield server.url
