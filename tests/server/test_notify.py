"""One contract suite for every Notifier: in-process, and Redis pub/sub across nodes."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
import pytest_asyncio
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError

from server.notify import Listener, MemoryNotifier, Notifier, RedisNotifier, device_key
from tests.services import RUN_PREFIX, connect_redis, redis_client, release_redis

__all__ = ["redis_client"]  # the fixture, used by name

SHORT = 0.2  # seconds a wait for news that must not come lasts
LONG = 5.0  # upper bound for news that must come


@dataclass
class Nodes:
    """Where news is announced, and where it is listened for (another relay node for
    Redis, the same object in memory)."""

    sender: Notifier
    receiver: Notifier


@pytest_asyncio.fixture(params=["memory", "redis"])
async def nodes(request: pytest.FixtureRequest) -> AsyncIterator[Nodes]:
    if request.param == "memory":
        notifier = MemoryNotifier()
        yield Nodes(notifier, notifier)
        await notifier.aclose()
        return
    client = await connect_redis()
    prefix = f"{RUN_PREFIX}{secrets.token_hex(4)}:"
    sender, receiver = RedisNotifier(client, prefix), RedisNotifier(client, prefix)
    await sender.start()
    await receiver.start()
    try:
        yield Nodes(sender, receiver)
    finally:
        await sender.aclose()
        await receiver.aclose()
        await release_redis(client)


async def _until(listener: Listener, seq: int) -> int:
    """Wait (bounded) until the listener has seen ``seq``."""
    seen = 0
    while seen < seq:
        got = await listener.wait(seen, LONG)
        assert got is not None, f"no news up to {seq} within {LONG} s (latest {seen})"
        seen = got
    return seen


@pytest.mark.asyncio
async def test_news_reaches_the_listener(nodes: Nodes) -> None:
    key = device_key("alice", 1)
    listener = await nodes.receiver.listen(key)
    await nodes.sender.notify(key, 5)
    assert await _until(listener, 5) == 5
    assert listener.latest == 5
    await listener.aclose()


@pytest.mark.asyncio
async def test_wait_is_bounded_and_only_for_newer_news(nodes: Nodes) -> None:
    key = device_key("alice", 2)
    listener = await nodes.receiver.listen(key)
    assert await listener.wait(0, SHORT) is None
    await nodes.sender.notify(key, 3)
    await _until(listener, 3)
    assert await listener.wait(3, SHORT) is None  # nothing beyond what was seen
    await nodes.sender.notify(key, 2)  # an older announcement never lowers it
    assert await listener.wait(3, SHORT) is None
    assert listener.latest == 3
    await listener.aclose()


@pytest.mark.asyncio
async def test_news_is_coalesced_and_per_device(nodes: Nodes) -> None:
    mine, other = device_key("alice", 3), device_key("bob", 3)
    listener = await nodes.receiver.listen(mine)
    for seq in (1, 2, 3):
        await nodes.sender.notify(mine, seq)
    await nodes.sender.notify(other, 99)
    assert await _until(listener, 3) == 3
    assert await listener.wait(3, SHORT) is None  # bob's news is not alice's
    await listener.aclose()


@pytest.mark.asyncio
async def test_several_listeners_of_one_device(nodes: Nodes) -> None:
    key = device_key("alice", 4)
    first, second = await nodes.receiver.listen(key), await nodes.receiver.listen(key)
    await nodes.sender.notify(key, 1)
    assert await _until(first, 1) == 1 and await _until(second, 1) == 1
    await first.aclose()
    await first.aclose()  # closing twice is harmless
    await nodes.sender.notify(key, 2)
    assert await _until(second, 2) == 2
    await second.aclose()
    await nodes.sender.notify(key, 3)  # nobody listening: nothing to do, no error


@pytest.mark.asyncio
async def test_redis_prefixes_isolate_deployments(redis_client: aioredis.Redis) -> None:
    ours = RedisNotifier(redis_client, f"{RUN_PREFIX}a:")
    theirs = RedisNotifier(redis_client, f"{RUN_PREFIX}b:")
    await ours.start()
    await theirs.start()
    try:
        key = device_key("alice", 5)
        listener = await ours.listen(key)
        await theirs.notify(key, 7)
        assert await listener.wait(0, SHORT) is None
        await ours.notify(key, 1)
        assert await _until(listener, 1) == 1
    finally:
        await ours.aclose()
        await theirs.aclose()


@pytest.mark.asyncio
async def test_redis_publish_failure_is_counted_not_raised(
    redis_client: aioredis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    notifier = RedisNotifier(redis_client, f"{RUN_PREFIX}down:")
    await notifier.start()
    try:
        key = device_key("alice", 6)
        listener = await notifier.listen(key)

        async def refuse(*_args: object, **_kwargs: object) -> int:
            raise RedisConnectionError("Redis went away")

        # Redis failing between subscribe and publish (a real outage cannot be staged
        # mid-test on the shared server): the send path must not see it.
        monkeypatch.setattr(redis_client, "publish", refuse)
        await notifier.notify(key, 1)
        assert notifier.publish_failures == 1
        assert await listener.wait(0, SHORT) == 1  # local listeners were told at once
    finally:
        monkeypatch.undo()
        await notifier.aclose()
