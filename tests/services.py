"""Real services for the tests that need them (CONVENTIONS 14).

Each fixture connects to the service the development machines and CI run, and
skips with the reason when it is unreachable (``E2EE_REQUIRE_SERVICES=1``, set by
``.ci/run``, turns that skip into a failure). Every test run gets its own Redis key
prefix, so runs never see each other's data.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
import redis.asyncio as aioredis
from redis.exceptions import RedisError

REDIS_URL_ENV = "E2EE_TEST_REDIS_URL"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
RUN_PREFIX = f"e2ee-test-{secrets.token_hex(6)}:"
"""The Redis key and channel prefix of this test run."""


def redis_url() -> str:
    """The Redis the tests use (loopback only)."""
    return os.environ.get(REDIS_URL_ENV, DEFAULT_REDIS_URL)


async def connect_redis() -> aioredis.Redis:
    """A client of the test Redis, or a skip with the reason when it is unreachable."""
    client = aioredis.Redis.from_url(redis_url())
    try:
        await client.ping()
    except (RedisError, OSError) as exc:
        await client.aclose()
        pytest.skip(f"Redis is not reachable at {redis_url()}: {exc}")
    return client


async def release_redis(client: aioredis.Redis) -> None:
    """Delete this run's keys and close ``client``."""
    try:
        async for key in client.scan_iter(match=f"{RUN_PREFIX}*"):
            await client.delete(key)
    finally:
        await client.aclose()


@pytest_asyncio.fixture
async def redis_client() -> AsyncIterator[aioredis.Redis]:
    """A client of the test Redis; the run's keys are deleted afterwards."""
    client = await connect_redis()
    try:
        yield client
    finally:
        await release_redis(client)
