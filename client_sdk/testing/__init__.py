"""Test harness for apps and relay operators (issue 5; ``docs/simulation.md``).

* :func:`run_simulation` / ``e2ee sim``: many real clients (separate processes, each
  device on its own encrypted store) against a relay process, through a fault proxy,
  with a seeded workload, relay and client SIGKILLs and dropped connections; the
  :class:`SimReport` says in numbers what was lost, duplicated, undecryptable, out of
  order or leaked.
* :class:`RelayProcess`: a relay as a separate process (SQLite or PostgreSQL, optionally
  Redis) that a test can SIGKILL and restart; :func:`temporary_postgres_database`.
* :class:`FaultProxy`: a WebSocket-aware proxy with a fixed port in front of a relay:
  dropped connections, delays, duplicated deliveries, stalled readers, and
  :class:`FrameHook` for a malicious relay (``client_sdk.testing.malicious``).
* ``client_sdk.testing.plugin``: pytest fixtures for app developers.
* :class:`CanaryScanner`: finds plaintext canaries, raw, hex or base64, in bytes.

The submodules are imported on first use of a name here, so importing the package
costs nothing an app's tests do not use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .canary import CanaryScanner, RedisCapture, make_canaries, prove_detects
    from .malicious import (
        AddDeviceToList,
        Drop,
        ForgeRetryRequest,
        MaliciousHook,
        Reflect,
        Reorder,
        Replay,
        ReplayRetryRequest,
        ServeEquivocatingList,
        ServeStaleList,
        StripKemPreKey,
        SubstituteBundleKeys,
        Tamper,
    )
    from .proxy import FaultProxy, FrameHook, ProxiedConnection
    from .relay import RelayProcess, RelayProcessError, temporary_postgres_database
    from .report import Progress, SimReport, summary_table, write_plot
    from .sim import SimError, SimRun, load_replay, run_simulation
    from .workload import ConfigError, Schedule, SimConfig, make_schedule

__all__ = [
    "AddDeviceToList",
    "CanaryScanner",
    "ConfigError",
    "Drop",
    "FaultProxy",
    "ForgeRetryRequest",
    "FrameHook",
    "MaliciousHook",
    "Progress",
    "ProxiedConnection",
    "RedisCapture",
    "Reflect",
    "RelayProcess",
    "RelayProcessError",
    "Reorder",
    "Replay",
    "ReplayRetryRequest",
    "Schedule",
    "ServeEquivocatingList",
    "ServeStaleList",
    "SimConfig",
    "SimError",
    "SimReport",
    "SimRun",
    "StripKemPreKey",
    "SubstituteBundleKeys",
    "Tamper",
    "load_replay",
    "make_canaries",
    "make_schedule",
    "prove_detects",
    "run_simulation",
    "summary_table",
    "temporary_postgres_database",
    "write_plot",
]

_HOMES = {
    "canary": ("CanaryScanner", "RedisCapture", "make_canaries", "prove_detects"),
    "malicious": (
        "AddDeviceToList",
        "Drop",
        "ForgeRetryRequest",
        "MaliciousHook",
        "Reflect",
        "Reorder",
        "Replay",
        "ReplayRetryRequest",
        "ServeEquivocatingList",
        "ServeStaleList",
        "StripKemPreKey",
        "SubstituteBundleKeys",
        "Tamper",
    ),
    "proxy": ("FaultProxy", "FrameHook", "ProxiedConnection"),
    "relay": ("RelayProcess", "RelayProcessError", "temporary_postgres_database"),
    "report": ("Progress", "SimReport", "summary_table", "write_plot"),
    "sim": ("SimError", "SimRun", "load_replay", "run_simulation"),
    "workload": ("ConfigError", "Schedule", "SimConfig", "make_schedule"),
}
_MODULE_OF = {name: module for module, names in _HOMES.items() for name in names}


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value
