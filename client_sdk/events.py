"""Typed security events (issue 4 "API", DESIGN 4.2-4.5, 6).

The client records an event in the same store transaction as what caused it (a
device list accepted, a message that could not be decrypted, ...), so an event is
never lost to a crash and never reported for something that was rolled back.
``async for event in client.events()`` yields them oldest first; an event leaves the
store when the loop asks for the next one (or at once with ``await event.done()``
on the :class:`EventItem`). Events carry identifiers and reasons, never key material
or plaintext.

Every event is a frozen dataclass; :func:`encode_event` / :func:`decode_event` give
their stored form (versioned CBOR with the event kind).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from enum import IntEnum
from typing import ClassVar, Final, TypeAlias

from e2ee import cbor
from e2ee.errors import E2EEError

from .errors import StoreCorrupt

__all__ = [
    "ConnectedElsewhereEvent",
    "DeviceAdded",
    "DeviceListEquivocation",
    "DeviceListStale",
    "DeviceRemovedEvent",
    "EventKind",
    "IdentityChanged",
    "KeyCheckMismatch",
    "MessagesMissing",
    "NoOneTimePreKey",
    "ReplayDropped",
    "RetryRequestDropped",
    "SecurityEvent",
    "Undecryptable",
    "UnknownPayload",
    "decode_event",
    "encode_event",
]

_VERSION: Final = 1


class EventKind(IntEnum):
    """The stored tag of each event class (never renumber; add freely)."""

    IDENTITY_CHANGED = 1
    DEVICE_ADDED = 2
    DEVICE_REMOVED = 3
    NO_ONE_TIME_PREKEY = 4
    UNDECRYPTABLE = 5
    REPLAY_DROPPED = 6
    DEVICE_LIST_EQUIVOCATION = 7
    DEVICE_LIST_STALE = 8
    MESSAGES_MISSING = 9
    CONNECTED_ELSEWHERE = 10
    RETRY_REQUEST_DROPPED = 11
    UNKNOWN_PAYLOAD = 12
    KEY_CHECK_MISMATCH = 13


@dataclass(frozen=True, slots=True)
class IdentityChanged:
    """A contact's master key changed: the relay served a device list signed by a
    master key other than the pinned one (recorded once per distinct new key). If the
    contact was verified (``verified``), sending to it is blocked
    (``IdentityChangeBlocked``) until ``accept_identity_change(user_id)``; otherwise
    the new key is pinned at once, the sessions with the old devices are ended, and
    sending continues to the new devices."""

    KIND: ClassVar[EventKind] = EventKind.IDENTITY_CHANGED
    user_id: str
    verified: bool


@dataclass(frozen=True, slots=True)
class DeviceAdded:
    """A device joined ``user_id``'s verified device list (own account included)."""

    KIND: ClassVar[EventKind] = EventKind.DEVICE_ADDED
    user_id: str
    device_id: int


@dataclass(frozen=True, slots=True)
class DeviceRemovedEvent:
    """A device left ``user_id``'s verified device list (own account included)."""

    KIND: ClassVar[EventKind] = EventKind.DEVICE_REMOVED
    user_id: str
    device_id: int


@dataclass(frozen=True, slots=True)
class NoOneTimePreKey:
    """A session with this device started without a one-time prekey (the relay had
    none left, or withheld it): weaker protection of the first messages against a
    later compromise of the signed prekey (X3DH 3.3)."""

    KIND: ClassVar[EventKind] = EventKind.NO_ONE_TIME_PREKEY
    user_id: str
    device_id: int


@dataclass(frozen=True, slots=True)
class Undecryptable:
    """A message from this device could not be decrypted; ``reason`` is the core's
    error type name (``BadMac``, ``MessageKeyUnavailable``, ``UntrustedIdentity``...)."""

    KIND: ClassVar[EventKind] = EventKind.UNDECRYPTABLE
    user_id: str
    device_id: int
    reason: str


@dataclass(frozen=True, slots=True)
class ReplayDropped:
    """A message already received (byte-identical envelope or same client message id)
    was queued again by the relay (under a relay sequence number this device had not
    processed yet) and dropped. A redelivery under a sequence number already processed
    (the acknowledgement was lost with a connection or a crash) is dropped silently."""

    KIND: ClassVar[EventKind] = EventKind.REPLAY_DROPPED
    user_id: str
    device_id: int


@dataclass(frozen=True, slots=True)
class DeviceListEquivocation:
    """The relay served two different device lists of ``user_id`` for one version
    (or a successor not chained to the list we saw): refused."""

    KIND: ClassVar[EventKind] = EventKind.DEVICE_LIST_EQUIVOCATION
    user_id: str
    version: int


@dataclass(frozen=True, slots=True)
class DeviceListStale:
    """``user_id``'s device list was not re-signed for 30 days (sending continues)."""

    KIND: ClassVar[EventKind] = EventKind.DEVICE_LIST_STALE
    user_id: str
    issued_at_ms: int


@dataclass(frozen=True, slots=True)
class MessagesMissing:
    """A gap in a device's message counters was not filled within 24 hours; a retry
    request was sent for it."""

    KIND: ClassVar[EventKind] = EventKind.MESSAGES_MISSING
    user_id: str
    device_id: int
    count: int


@dataclass(frozen=True, slots=True)
class ConnectedElsewhereEvent:
    """Another connection authenticated as this device and the relay closed ours."""

    KIND: ClassVar[EventKind] = EventKind.CONNECTED_ELSEWHERE
    reconnecting: bool


@dataclass(frozen=True, slots=True)
class RetryRequestDropped:
    """A retry request from this device was not honoured; ``reason`` says why
    (``unknown``, ``too_old``, ``not_addressed``, ``already_resent``,
    ``session_limit``)."""

    KIND: ClassVar[EventKind] = EventKind.RETRY_REQUEST_DROPPED
    user_id: str
    device_id: int
    reason: str


@dataclass(frozen=True, slots=True)
class UnknownPayload:
    """A message decrypted to a payload type this SDK does not know; never shown."""

    KIND: ClassVar[EventKind] = EventKind.UNKNOWN_PAYLOAD
    user_id: str
    device_id: int
    payload_type: int


@dataclass(frozen=True, slots=True)
class KeyCheckMismatch:
    """The relay's copy of this device's long-lived keys differed from ours (the
    key-consistency check on connect); they were uploaded again."""

    KIND: ClassVar[EventKind] = EventKind.KEY_CHECK_MISMATCH
    what: str


SecurityEvent: TypeAlias = (
    IdentityChanged
    | DeviceAdded
    | DeviceRemovedEvent
    | NoOneTimePreKey
    | Undecryptable
    | ReplayDropped
    | DeviceListEquivocation
    | DeviceListStale
    | MessagesMissing
    | ConnectedElsewhereEvent
    | RetryRequestDropped
    | UnknownPayload
    | KeyCheckMismatch
)

_CLASSES: Final[dict[EventKind, type[SecurityEvent]]] = {
    cls.KIND: cls
    for cls in (
        IdentityChanged,
        DeviceAdded,
        DeviceRemovedEvent,
        NoOneTimePreKey,
        Undecryptable,
        ReplayDropped,
        DeviceListEquivocation,
        DeviceListStale,
        MessagesMissing,
        ConnectedElsewhereEvent,
        RetryRequestDropped,
        UnknownPayload,
        KeyCheckMismatch,
    )
}
_MAX_EVENT: Final = 4096
_FIELD_TYPES: Final[dict[str, type]] = {"str": str, "int": int, "bool": bool}


def encode_event(event: SecurityEvent) -> bytes:
    """``{0: version, 1: kind, 2: [field values in declaration order]}``."""
    values: list[cbor.Value] = list(asdict(event).values())
    return cbor.encode({0: _VERSION, 1: int(event.KIND), 2: values})


def decode_event(data: bytes) -> SecurityEvent:
    """Inverse of :func:`encode_event`.

    Raises:
        StoreCorrupt: it does not decode to a known event.
    """
    try:
        m = cbor.expect_map(cbor.decode(data, max_size=_MAX_EVENT), "event", frozenset(range(3)))
        if m[0] != _VERSION:
            raise StoreCorrupt("unknown event record version", table="events")
        cls = _CLASSES[EventKind(cbor.field_int(m, 1, "event kind", 1, max(EventKind)))]
        values = m[2]
        types = [_FIELD_TYPES[str(f.type)] for f in fields(cls)]
        if not isinstance(values, list) or len(values) != len(types):
            raise StoreCorrupt("event record has the wrong fields", table="events")
        if any(type(v) is not t for v, t in zip(values, types, strict=True)):
            raise StoreCorrupt("event record field of the wrong type", table="events")
        event = cls(*values)  # type: ignore[arg-type]
    except (E2EEError, ValueError) as exc:
        raise StoreCorrupt(f"event record does not decode: {type(exc).__name__}") from exc
    return event
