"""The SDK's relay transport (DESIGN 5, 6): a sans-I/O protocol object
(:class:`RelayProtocol`), its ``websockets`` driver (:class:`RelayConnection`), the
reconnect policy (:class:`ReconnectPolicy`, :class:`ReconnectingRelay`) and the HTTP
endpoints (:func:`register`, :func:`fetch_config`). ``docs/sdk-transport.md``
describes it."""

from .connection import OPEN_TIMEOUT, REQUEST_TIMEOUT, RelayConnection, RelayEvent
from .http import Registered, RelayConfig, fetch_config, register
from .protocol import (
    Answer,
    Authenticated,
    CaughtUpEvent,
    Delivery,
    DeviceIdentity,
    PreKeysLowEvent,
    ProtocolEvent,
    RelayNotice,
    RelayProtocol,
    State,
)
from .reconnect import ReconnectingRelay, ReconnectPolicy
from .refusals import close_error, refusal

__all__ = [
    "OPEN_TIMEOUT",
    "REQUEST_TIMEOUT",
    "Answer",
    "Authenticated",
    "CaughtUpEvent",
    "Delivery",
    "DeviceIdentity",
    "PreKeysLowEvent",
    "ProtocolEvent",
    "ReconnectPolicy",
    "ReconnectingRelay",
    "Registered",
    "RelayConfig",
    "RelayConnection",
    "RelayEvent",
    "RelayNotice",
    "RelayProtocol",
    "State",
    "close_error",
    "fetch_config",
    "refusal",
    "register",
]
