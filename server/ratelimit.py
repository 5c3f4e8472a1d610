"""Token-bucket rate limiters, per key (client IP, device), in process memory.

Each relay node limits on its own: with ``n`` nodes behind a balancer a client gets
at most ``n`` times the configured rate, which is what these limits are for (bounding
abuse, not metering). A limiter tracks at most
:data:`~server.limits.RATE_LIMITER_KEYS` keys and forgets the least recently used
ones beyond (a forgotten key starts with a full bucket: memory stays bounded).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from . import limits
from .errors import RateLimited
from .settings import RateLimit, RelaySettings

__all__ = ["RateLimiter", "RateLimiters"]


class RateLimiter:
    """``burst`` events at once per key, refilled at ``per_second``."""

    __slots__ = ("_buckets", "_clock", "_max_keys", "burst", "name", "per_second")

    def __init__(
        self,
        name: str,
        limit: RateLimit,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_keys: int = limits.RATE_LIMITER_KEYS,
    ) -> None:
        self.name = name
        self.per_second = limit.per_second
        self.burst = limit.burst
        self._clock = clock
        self._max_keys = max_keys
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def allow(self, key: str, cost: float = 1.0) -> bool:
        """Take ``cost`` tokens from ``key``'s bucket if it holds them."""
        now = self._clock()
        tokens, stamp = self._buckets.pop(key, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - stamp) * self.per_second)
        allowed = tokens >= cost
        if allowed:
            tokens -= cost
        self._buckets[key] = (tokens, now)
        while len(self._buckets) > self._max_keys:
            self._buckets.popitem(last=False)
        return allowed

    def check(self, key: str, cost: float = 1.0) -> None:
        """Like :meth:`allow`, raising when refused.

        Raises:
            RateLimited: the bucket is empty.
        """
        if not self.allow(key, cost):
            raise RateLimited(self.name)


@dataclass(slots=True)
class RateLimiters:
    """The relay's limiters, built from the settings."""

    registration: RateLimiter
    auth_ip: RateLimiter
    auth_device: RateLimiter
    claim_requester: RateLimiter
    claim_target: RateLimiter
    send: RateLimiter
    http: RateLimiter
    extra: dict[str, RateLimiter] = field(default_factory=dict)
    """Limiters added by endpoint modules (:meth:`named`)."""

    @classmethod
    def from_settings(
        cls, settings: RelaySettings, clock: Callable[[], float] = time.monotonic
    ) -> RateLimiters:
        """One limiter per configured rate."""

        def make(name: str, limit: RateLimit) -> RateLimiter:
            return RateLimiter(name, limit, clock=clock)

        return cls(
            registration=make("registration", settings.rate_registration),
            auth_ip=make("auth attempts per IP", settings.rate_auth_ip),
            auth_device=make("auth attempts per device", settings.rate_auth_device),
            claim_requester=make("bundle claims per requester", settings.rate_claim_requester),
            claim_target=make("bundle claims per target", settings.rate_claim_target),
            send=make("sends per device", settings.rate_send),
            http=make("HTTP requests per IP", settings.rate_http),
        )

    def named(self, name: str, limit: RateLimit) -> RateLimiter:
        """A limiter kept under ``name`` (created on first use with ``limit``)."""
        limiter = self.extra.get(name)
        if limiter is None:
            limiter = self.extra[name] = RateLimiter(name, limit)
        return limiter
