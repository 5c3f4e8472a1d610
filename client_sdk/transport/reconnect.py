"""When and whether to reconnect (DESIGN 6): jittered exponential backoff, the
"connected elsewhere" allowance, and the errors after which reconnecting is wrong.

:class:`ReconnectPolicy` is pure (its clock and randomness are injected);
:class:`ReconnectingRelay` drives it: it opens a connection, hands it out, and when
that connection ends asks the policy how long to wait or whether to stop.

Pending sends are not resent here: a connection's waiting requests fail with its
close error, and the SDK's outbox resends the stored ciphertext bytes with the same
client message id on the next connection (the relay answers a duplicate with the
original ``Accepted``).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Final

from ..errors import (
    AuthFailed,
    ConnectedElsewhere,
    DeviceRemoved,
    NoCommonVersion,
    PinMismatch,
    TransportError,
    UsageError,
)
from .connection import RelayConnection

__all__ = [
    "BACKOFF_BASE",
    "BACKOFF_CAP",
    "ELSEWHERE_LIMIT",
    "ELSEWHERE_WINDOW",
    "STABLE_AFTER",
    "ReconnectPolicy",
    "ReconnectingRelay",
]

logger = logging.getLogger(__name__)

BACKOFF_BASE: Final = 0.5
"""Seconds of the first retry's ceiling (doubles per failure)."""
BACKOFF_CAP: Final = 60.0
"""Largest ceiling: a client never waits more than a minute to retry a relay that is
down, and a thousand clients retrying spread over that minute."""
ELSEWHERE_LIMIT: Final = 3
"""Reconnects allowed after "connected elsewhere" within :data:`ELSEWHERE_WINDOW`:
two copies of one device would otherwise take the connection from each other forever."""
ELSEWHERE_WINDOW: Final = 600.0
"""Ten minutes."""
STABLE_AFTER: Final = 60.0
"""A connection that lived this long resets the backoff (one that the relay accepts and
drops at once keeps backing off)."""

_TERMINAL: Final = (DeviceRemoved, AuthFailed, PinMismatch, NoCommonVersion)
"""Errors reconnecting cannot fix: stop and raise them."""


class ReconnectPolicy:
    """Backoff and stop rules, with injected ``now`` (seconds, monotonic) and ``rng``
    (uniform in [0, 1)).

    The delay after the n-th failure in a row (n from 0) is uniform in
    ``[c/2, c]`` with ``c = min(cap, base * 2**n)`` ("equal jitter": spread, never 0).
    """

    def __init__(
        self,
        *,
        base: float = BACKOFF_BASE,
        cap: float = BACKOFF_CAP,
        elsewhere_limit: int = ELSEWHERE_LIMIT,
        elsewhere_window: float = ELSEWHERE_WINDOW,
        stable_after: float = STABLE_AFTER,
        now: Callable[[], float] = time.monotonic,
        rng: Callable[[], float] = random.random,
    ) -> None:
        if not 0 < base <= cap:
            raise UsageError("backoff needs 0 < base <= cap")
        self._base = base
        self._cap = cap
        self._elsewhere_limit = elsewhere_limit
        self._elsewhere_window = elsewhere_window
        self._stable_after = stable_after
        self._now = now
        self._rng = rng
        self._failures = 0
        self._connected_at: float | None = None
        self._elsewhere: deque[float] = deque()

    def connected(self) -> None:
        """A connection authenticated (the backoff resets once it proves stable)."""
        self._connected_at = self._now()

    def _elsewhere_allowed(self, now: float) -> bool:
        while self._elsewhere and now - self._elsewhere[0] >= self._elsewhere_window:
            self._elsewhere.popleft()
        return len(self._elsewhere) < self._elsewhere_limit

    def elsewhere_allowed(self) -> bool:
        """Whether one more reconnect after "connected elsewhere" is allowed now (what
        :meth:`delay_after` will decide for that error), without spending it."""
        return self._elsewhere_allowed(self._now())

    def delay_after(self, error: TransportError) -> float:
        """Seconds to wait before reconnecting after ``error`` ended (or prevented) a
        connection.

        Raises:
            DeviceRemoved, AuthFailed, PinMismatch, NoCommonVersion: reconnecting cannot
                help (``error`` itself is raised).
            ConnectedElsewhere: the allowance of reconnects after "connected elsewhere"
                is spent (``error`` itself is raised).
        """
        now = self._now()
        if isinstance(error, _TERMINAL):
            raise error
        if isinstance(error, ConnectedElsewhere):
            if not self._elsewhere_allowed(now):
                raise error
            self._elsewhere.append(now)
        if self._connected_at is not None and now - self._connected_at >= self._stable_after:
            self._failures = 0
        self._connected_at = None
        ceiling = min(self._cap, self._base * float(1 << min(self._failures, 62)))
        self._failures += 1
        return ceiling * (0.5 + 0.5 * self._rng())


class ReconnectingRelay:
    """Hands out authenticated connections, one at a time, reconnecting per the policy.

    ``connect`` opens one connection (typically a closure over
    :meth:`RelayConnection.connect` with the URL, identity and pin)::

        relay = ReconnectingRelay(lambda: RelayConnection.connect(url, origin=url, identity=me))
        async for conn in relay.connections():
            ...  # upkeep, outbox resend
            async for event in conn.events(): ...   # ends or raises when conn ends

    Asking for the next connection waits for the current one to end, then backs off
    (with ``sleep``) and reconnects; a terminal error ends the iteration by raising.
    """

    def __init__(
        self,
        connect: Callable[[], Awaitable[RelayConnection]],
        *,
        policy: ReconnectPolicy | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._connect = connect
        self.policy = policy or ReconnectPolicy()
        self._sleep = sleep
        self._stopped = False
        self._current: RelayConnection | None = None

    async def connections(self) -> AsyncIterator[RelayConnection]:
        """Each new authenticated connection, until :meth:`stop` or a terminal error.

        Raises:
            DeviceRemoved, AuthFailed, PinMismatch, NoCommonVersion, ConnectedElsewhere:
                as :meth:`ReconnectPolicy.delay_after`.
        """
        while not self._stopped:
            try:
                conn = await self._connect()
            except TransportError as exc:
                await self._backoff(exc)
                continue
            self._current = conn
            self.policy.connected()
            try:
                yield conn
                error = await conn.wait_closed()
            finally:
                self._current = None
            if error is None or self._stopped:
                return  # closed by the application
            await self._backoff(error)

    async def _backoff(self, error: TransportError) -> None:
        delay = self.policy.delay_after(error)
        logger.info("reconnecting to the relay in %.1f s after %s", delay, type(error).__name__)
        await self._sleep(delay)

    async def stop(self) -> None:
        """Stop reconnecting and close the current connection."""
        self._stopped = True
        if self._current is not None:
            await self._current.close()
