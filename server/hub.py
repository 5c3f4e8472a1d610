"""The live connections of this relay node, by device (one per device, DESIGN 5).

The hub is process-local. Across nodes, :mod:`server.ws` announces a takeover and
a device-state change through the :class:`~server.notify.Notifier` under the
control keys below, so the node holding an older connection closes it too (with
``MemoryNotifier`` that is this process only: one node).
"""

from __future__ import annotations

import asyncio
from typing import Protocol

from e2ee.relay_frames import CloseCode

from .notify import device_key
from .storage.base import QueuedMessage

__all__ = ["ConnectionHandle", "Hub", "control_key", "takeover_key"]


def takeover_key(user_id: str, device_id: int) -> str:
    """Notifier key announcing "a newer connection of this device authenticated";
    the value is that connection's stamp (higher wins)."""
    return device_key(user_id, device_id) + "#takeover"


def control_key(user_id: str, device_id: int) -> str:
    """Notifier key announcing "this device's state changed" (removed from its list,
    prekeys low): the connection re-reads the state from storage."""
    return device_key(user_id, device_id) + "#control"


class ConnectionHandle(Protocol):
    """What the hub can do to a live connection."""

    @property
    def stamp(self) -> int:
        """When it authenticated (a takeover stamp; higher is newer)."""
        ...

    def close_soon(self, code: CloseCode, reason: str) -> None:
        """Close the connection with ``code`` (asynchronously, never blocking)."""
        ...

    async def closed(self) -> None:
        """Wait until the connection has finished."""
        ...

    async def acks_deleted(self) -> None:
        """Wait (bounded) until what its device acknowledged so far is deleted."""
        ...

    def offer(self, message: QueuedMessage) -> bool:
        """Deliver a just-committed message at once if the connection can (it is the
        next in sequence and the connection is waiting for news); ``False`` leaves
        it to the connection's own fetch."""
        ...


class Hub:
    """Authenticated connections by device key, plus every open connection (for
    shutdown)."""

    def __init__(self) -> None:
        self._by_device: dict[str, ConnectionHandle] = {}
        self._key_of: dict[ConnectionHandle, str] = {}
        self._open: set[ConnectionHandle] = set()
        self._last_stamp = 0

    def next_stamp(self, now_ms: int) -> int:
        """A stamp for takeover and control notifications: increasing within this node,
        and across nodes ordered by their clocks (microsecond resolution, so two nodes
        rarely tie)."""
        self._last_stamp = max(now_ms * 1000, self._last_stamp + 1)
        return self._last_stamp

    def opened(self, handle: ConnectionHandle) -> None:
        """A connection was accepted (before authentication)."""
        self._open.add(handle)

    def closed(self, handle: ConnectionHandle) -> None:
        """A connection finished; forget it."""
        self._open.discard(handle)
        key = self._key_of.pop(handle, None)  # O(1): shutdown closes thousands at once
        if key is not None and self._by_device.get(key) is handle:
            del self._by_device[key]

    def attach(self, key: str, handle: ConnectionHandle) -> None:
        """``handle`` authenticated as device ``key``; an older connection of the same
        device is closed with ``CONNECTED_ELSEWHERE``."""
        old = self._by_device.get(key)
        if old is not None and old is not handle:
            old.close_soon(CloseCode.CONNECTED_ELSEWHERE, "connected elsewhere")
        self._by_device[key] = handle
        self._key_of[handle] = key

    def get(self, key: str) -> ConnectionHandle | None:
        """The live connection of device ``key`` on this node."""
        return self._by_device.get(key)

    def offer(self, key: str, message: QueuedMessage) -> bool:
        """Hand a just-committed message to device ``key``'s connection on this node
        (:meth:`ConnectionHandle.offer`); ``False`` if there is none or it declined."""
        handle = self._by_device.get(key)
        return handle is not None and handle.offer(message)

    def close_device(self, key: str, code: CloseCode, reason: str) -> None:
        """Close the device's connection on this node, if any."""
        handle = self._by_device.get(key)
        if handle is not None:
            handle.close_soon(code, reason)

    def __len__(self) -> int:
        return len(self._open)

    async def close_all(self, code: CloseCode, reason: str, timeout: float) -> None:
        """Close every open connection with ``code`` and wait (at most ``timeout``
        seconds) until they have finished."""
        handles = list(self._open)
        for handle in handles:
            handle.close_soon(code, reason)
        if not handles:
            return
        waits = [asyncio.ensure_future(h.closed()) for h in handles]
        _, pending = await asyncio.wait(waits, timeout=timeout)
        for task in pending:
            task.cancel()
