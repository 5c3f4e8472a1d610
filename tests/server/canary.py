"""The canary scanner of the tests: :mod:`client_sdk.testing.canary` (apps and relay
operators use it too), re-exported under its old name."""

from __future__ import annotations

from client_sdk.testing.canary import (
    ANCHOR,
    CANARY_PREFIX,
    CanaryScanner,
    Hit,
    RedisCapture,
    encodings,
    make_canaries,
    prove_detects,
)

__all__ = [
    "ANCHOR",
    "CANARY_PREFIX",
    "CanaryScanner",
    "Hit",
    "RedisCapture",
    "encodings",
    "make_canaries",
    "prove_detects",
]
