"""What every endpoint of one relay app shares: :class:`RelayContext`.

Endpoint modules (``api_accounts``, ``api_ops``, ``ws``, ``api_blobs``,
``api_links``) each export ``routes(ctx: RelayContext) -> list[BaseRoute]``;
:func:`server.app.create_app` builds one context and passes it to all of them.
Storage and the notifier are opened by the app's lifespan (unless given to
``create_app``), so they are reached through properties that refuse use before.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import redis.asyncio as aioredis

from .errors import RelayNotStarted
from .hub import Hub
from .metrics import RelayMetrics
from .notify import Notifier
from .ratelimit import RateLimiters
from .settings import RelaySettings
from .storage.base import Storage

__all__ = ["RelayContext", "system_now_ms"]


def system_now_ms() -> int:
    """Wall-clock time in milliseconds (the relay's default clock)."""
    return time.time_ns() // 1_000_000


@dataclass(eq=False, slots=True)
class RelayContext:
    """One relay app's shared state."""

    settings: RelaySettings
    hub: Hub
    limiters: RateLimiters
    metrics: RelayMetrics
    now_ms: Callable[[], int] = system_now_ms
    """The relay's clock (injected in tests)."""
    rng: Callable[[int], bytes] = secrets.token_bytes
    """Randomness for nonces and ids."""
    auth_spki: tuple[bytes | None, ...] = (None,)
    """The SPKI hashes a relay-auth statement may name (settings.spki_binding): our
    certificate's, the accepted ones, or ``None`` (binding off)."""
    redis: aioredis.Redis | None = field(default=None, repr=False)
    """The Redis client when ``redis_url`` is set (readiness checks ping it)."""
    _storage: Storage | None = field(default=None, repr=False)
    _notifier: Notifier | None = field(default=None, repr=False)

    @property
    def storage(self) -> Storage:
        """The open storage.

        Raises:
            RelayNotStarted: before the lifespan opened it.
        """
        if self._storage is None:
            raise RelayNotStarted("storage is not open")
        return self._storage

    @property
    def notifier(self) -> Notifier:
        """The open notifier.

        Raises:
            RelayNotStarted: before the lifespan opened it.
        """
        if self._notifier is None:
            raise RelayNotStarted("notifier is not open")
        return self._notifier

    @property
    def started(self) -> bool:
        """Whether storage and notifier are open."""
        return self._storage is not None and self._notifier is not None

    def attach(self, storage: Storage, notifier: Notifier) -> None:
        """Install the opened storage and notifier (the lifespan does this)."""
        self._storage = storage
        self._notifier = notifier

    def detach(self) -> None:
        """Forget storage and notifier (after the lifespan closed them)."""
        self._storage = None
        self._notifier = None

    def client_ip(self, client: tuple[str, int] | None) -> str:
        """The rate-limit key of a peer address (the direct peer: behind a proxy every
        client shares the proxy's address, see docs/relay-protocol.md)."""
        return "unknown" if client is None else client[0]
