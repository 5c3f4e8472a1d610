"""Fan-out of "device X has news up to sequence N" between relay nodes (DESIGN 5).

A relay node that stores a message for a device calls :meth:`Notifier.notify`; the
node holding that device's connection is waiting in :meth:`Listener.wait` and then
reads the queue from its cursor. Notifications are hints, never data: a node that
misses one (Redis restarting, a dropped connection) still finds every message by its
sequence cursor, and waits are bounded so it looks again. Redis is never the only
copy of anything.

* :class:`MemoryNotifier`: one process (the default, and for tests).
* :class:`RedisNotifier`: several nodes through Redis pub/sub, one channel per
  device under a configurable key prefix. Local listeners are told at once, before
  Redis is asked; a Redis failure on publish is logged and counted, never raised
  into the send path.

Notifications are coalesced: a listener sees the highest sequence announced since
it last looked, not every one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Final, Protocol

import redis.asyncio as aioredis
from redis.exceptions import RedisError

__all__ = ["Listener", "MemoryNotifier", "Notifier", "RedisNotifier", "device_key"]

logger = logging.getLogger(__name__)

_POLL_SECONDS: Final = 1.0


def device_key(user_id: str, device_id: int) -> str:
    """The notification key of one device."""
    return f"{user_id}.{device_id}"


class Listener(Protocol):
    """Waits for news of one device."""

    @property
    def latest(self) -> int:
        """The highest sequence announced since this listener was opened (0: none)."""
        ...

    async def wait(self, after: int, timeout: float) -> int | None:
        """Return the latest announced sequence once it is above ``after``, or
        ``None`` after ``timeout`` seconds without such news."""
        ...

    def delivered(self, seq: int) -> None:
        """The holder already has everything up to ``seq`` (handed over in this
        process): news up to ``seq`` does not end a :meth:`wait`."""
        ...

    async def aclose(self) -> None:
        """Stop listening."""
        ...


class Notifier(Protocol):
    """Tells the node holding a device's connection that it has news."""

    async def notify(self, key: str, seq: int) -> None:
        """Announce that device ``key`` has messages up to sequence ``seq``."""
        ...

    async def listen(self, key: str) -> Listener:
        """Start listening for news of device ``key``."""
        ...

    async def aclose(self) -> None:
        """Release every resource; listeners get no more news."""
        ...


class _Listener:
    __slots__ = ("_board", "_floor", "_key", "_waiters", "latest")

    def __init__(self, board: _Board, key: str) -> None:
        self._board = board
        self._key = key
        self._waiters: list[asyncio.Future[None]] = []
        """The waits in progress (a future each: a task wakes only when it waits)."""
        self.latest = 0
        self._floor = 0
        """What the holder already has (:meth:`delivered`): news up to it wakes no one."""

    def _announce(self, seq: int) -> None:
        if seq > self.latest:
            self.latest = seq
            if self._waiters and seq > self._floor:
                waiters, self._waiters = self._waiters, []
                for waiter in waiters:
                    _wake(waiter)

    def delivered(self, seq: int) -> None:
        self._floor = max(self._floor, seq)

    async def wait(self, after: int, timeout: float) -> int | None:
        if self.latest > after and self.latest > self._floor:
            return self.latest
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.latest <= after or self.latest <= self._floor:
            if loop.time() >= deadline:
                return None
            waiter: asyncio.Future[None] = loop.create_future()
            timer = loop.call_at(deadline, _wake, waiter)
            self._waiters.append(waiter)
            try:
                await waiter
            finally:
                timer.cancel()
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
        return self.latest

    async def aclose(self) -> None:
        await self._board.remove(self._key, self)


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


class _Board:
    """The listeners of this process, by device key."""

    def __init__(self) -> None:
        self.listeners: dict[str, set[_Listener]] = {}

    def announce(self, key: str, seq: int) -> None:
        for listener in self.listeners.get(key, ()):
            listener._announce(seq)

    def add(self, key: str) -> tuple[_Listener, bool]:
        listener = _Listener(self, key)
        group = self.listeners.setdefault(key, set())
        group.add(listener)
        return listener, len(group) == 1

    async def remove(self, key: str, listener: _Listener) -> None:
        group = self.listeners.get(key)
        if group is None or listener not in group:
            return
        group.discard(listener)
        if not group:
            del self.listeners[key]
            await self.last_gone(key)

    async def last_gone(self, key: str) -> None:
        """Hook: the last listener of ``key`` in this process closed."""


class MemoryNotifier:
    """A :class:`Notifier` within one process."""

    def __init__(self) -> None:
        self._board = _Board()

    async def notify(self, key: str, seq: int) -> None:
        """Announce news to this process's listeners."""
        self._board.announce(key, seq)

    async def listen(self, key: str) -> Listener:
        """A listener for ``key``."""
        listener, _ = self._board.add(key)
        return listener

    async def aclose(self) -> None:
        """Forget every listener."""
        self._board.listeners.clear()


class _RedisBoard(_Board):
    def __init__(self, notifier: RedisNotifier) -> None:
        super().__init__()
        self._notifier = notifier

    async def last_gone(self, key: str) -> None:
        await self._notifier._unsubscribe(key)


class RedisNotifier:
    """A :class:`Notifier` shared by several relay nodes through Redis pub/sub."""

    def __init__(self, client: aioredis.Redis, prefix: str) -> None:
        """Use ``client`` (owned by the caller) and channels named ``prefix + "news:" +
        key``. Call :meth:`start` before use."""
        self._client = client
        self._prefix = prefix
        self._board = _RedisBoard(self)
        self._pubsub = client.pubsub()
        self._reader: asyncio.Task[None] | None = None
        self.publish_failures = 0

    def _channel(self, key: str) -> str:
        return f"{self._prefix}news:{key}"

    async def start(self) -> None:
        """Open the subscription connection and the reader task.

        Raises:
            RedisError: Redis is unreachable.
        """
        # A pub/sub connection with no channel cannot be read: hold a control channel.
        await self._pubsub.subscribe(f"{self._prefix}control")
        self._reader = asyncio.create_task(self._read(), name="e2ee-redis-notifier")

    async def _read(self) -> None:
        news = f"{self._prefix}news:"
        while True:
            try:
                message = await self._pubsub.get_message(
                    ignore_subscribe_messages=True, timeout=_POLL_SECONDS
                )
            except RedisError:
                # Listeners fall back to their bounded waits and cursors meanwhile.
                logger.warning("redis notifier: read failed; retrying", exc_info=True)
                await asyncio.sleep(_POLL_SECONDS)
                continue
            if message is None or message.get("type") != "message":
                continue
            channel = message["channel"]
            if isinstance(channel, bytes):
                channel = channel.decode("ascii", "replace")
            if not channel.startswith(news):
                continue
            try:
                seq = int(message["data"])
            except (TypeError, ValueError):
                logger.warning("redis notifier: ignored a malformed notification")
                continue
            self._board.announce(channel[len(news) :], seq)

    async def notify(self, key: str, seq: int) -> None:
        """Tell local listeners at once, then the other nodes through Redis (a failure
        there is logged and counted: the others find the message by cursor)."""
        self._board.announce(key, seq)
        try:
            await self._client.publish(self._channel(key), str(seq))
        except RedisError:
            self.publish_failures += 1
            logger.warning("redis notifier: publish failed for one device", exc_info=True)

    async def listen(self, key: str) -> Listener:
        """A listener for ``key``; the first one in this process subscribes its channel.

        Raises:
            RedisError: the subscription could not be made.
        """
        listener, first = self._board.add(key)
        if first:
            try:
                await self._pubsub.subscribe(self._channel(key))
            except RedisError:
                await listener.aclose()
                raise
        return listener

    async def _unsubscribe(self, key: str) -> None:
        try:
            await self._pubsub.unsubscribe(self._channel(key))
        except RedisError:
            logger.warning("redis notifier: unsubscribe failed", exc_info=True)

    async def aclose(self) -> None:
        """Stop the reader and close the subscription connection (not the client)."""
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
            self._reader = None
        self._board.listeners.clear()
        await self._pubsub.aclose()  # type: ignore[no-untyped-call,unused-ignore]  # redis-py < 8 leaves it unannotated
