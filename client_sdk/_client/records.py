"""How the client keeps its state in the :class:`~client_sdk.store.Store` (DESIGN 6).

Every value is versioned CBOR (key 0 = record version, CONVENTIONS 12); the secret
state of the protocol core keeps the core's own serialization (``OurDevice``,
``OurPreKeys``, ``SessionRecord``, ``SignedDeviceList``). Primary keys that name a
peer are the store's keyed lookup hashes, never identifiers.

| table | key | value |
|---|---|---|
| OWN_DEVICE | ``b"device"`` / ``b"master"`` / ``b"list"`` | ``OurDevice`` / master seed / own ``SignedDeviceList`` |
| PREKEYS | ``b"prekeys"`` | ``OurPreKeys`` |
| META | ``b"account"`` | :class:`AccountRecord` |
| META | ``b"outbox_next"`` / ``b"inbox_next"`` / ``b"events_next"`` | 8-byte big-endian counter |
| EVENTS | counter (8 bytes) | a security event (``client_sdk.events``) |
| PEER_DEVICE_LISTS | ``lookup(user)`` | the verified ``SignedDeviceList`` (its master key is the pin) |
| SESSIONS | ``lookup(user, device)`` | ``SessionRecord`` |
| OUTBOX | counter (8 bytes) | :class:`OutboxRecord` |
| INBOX | counter (8 bytes) | :class:`InboxRecord` |
| DEDUPE | ``lookup(user, device)`` + client message id | ``u64`` relay time |
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum
from typing import Final

from e2ee import cbor
from e2ee.errors import E2EEError
from e2ee.identifiers import DEVICE_ID_MAX, check_user_id

from ..errors import StoreCorrupt
from ..store import Table, Transaction

__all__ = [
    "ACCOUNT",
    "DEVICE",
    "EVENTS_NEXT",
    "INBOX_NEXT",
    "LIST",
    "MASTER",
    "OUTBOX_NEXT",
    "PREKEYS",
    "AccountRecord",
    "InboxRecord",
    "OutboxRecord",
    "Stage",
    "next_counter",
]

DEVICE: Final = b"device"
MASTER: Final = b"master"
LIST: Final = b"list"
PREKEYS: Final = b"prekeys"
ACCOUNT: Final = b"account"
OUTBOX_NEXT: Final = b"outbox_next"
INBOX_NEXT: Final = b"inbox_next"
EVENTS_NEXT: Final = b"events_next"

_VERSION: Final = 1
_U63: Final = 2**63 - 1
_MSG_ID_SIZE: Final = 16
_MAX_PAYLOAD: Final = 1 << 20
"""Bound when decoding a stored payload (above ``e2ee.limits.MAX_PLAINTEXT``)."""
_MAX_FRAME: Final = 1 << 20
"""Bound when decoding a stored Send frame (above ``MAX_RELAY_FRAME``)."""


class Stage(IntEnum):
    """How far registration got (each stage is committed before the next step)."""

    KEYS = 1
    """Keys and device list v1 generated and stored; the relay may not know them."""
    REGISTERED = 2
    """The relay created the account; prekeys may not be uploaded yet."""
    READY = 3
    """Prekeys uploaded: the device is usable."""


def _decode(data: bytes, what: str, keys: frozenset[int], max_size: int) -> dict[int, cbor.Value]:
    try:
        m = cbor.expect_map(cbor.decode(data, max_size=max_size), what, keys)
        if m[0] != _VERSION:
            raise StoreCorrupt(f"unknown {what} record version", table=None)
        return m
    except E2EEError as exc:
        raise StoreCorrupt(f"{what} record does not decode: {type(exc).__name__}") from exc


@dataclass(frozen=True, slots=True)
class AccountRecord:
    """``{0: v, 1: user_id, 2: device_id, 3: stage}``."""

    user_id: str
    device_id: int
    stage: Stage

    def to_bytes(self) -> bytes:
        """Versioned CBOR."""
        return cbor.encode({0: _VERSION, 1: self.user_id, 2: self.device_id, 3: int(self.stage)})

    @classmethod
    def from_bytes(cls, data: bytes) -> AccountRecord:
        """Inverse of :meth:`to_bytes`.

        Raises:
            StoreCorrupt: it does not decode.
        """
        m = _decode(data, "account", frozenset(range(4)), 1024)
        try:
            return cls(
                check_user_id(m[1]),
                cbor.field_int(m, 2, "device id", 0, DEVICE_ID_MAX),
                Stage(cbor.field_int(m, 3, "stage", 1, 3)),
            )
        except E2EEError as exc:
            raise StoreCorrupt(f"account record does not decode: {type(exc).__name__}") from exc


@dataclass(frozen=True, slots=True)
class OutboxRecord:
    """One message committed before its first send: ``{0: v, 1: client_msg_id,
    2: recipient user, 3: payload for the recipient's devices, 4: payload for our own
    other devices, 5: the Send frame bytes}``.

    The payloads (plaintext, inside the encrypted store) are kept only to encrypt for
    devices a ``Mismatch`` reveals; the frame bytes are what every retry resends.
    """

    client_msg_id: bytes
    recipient: str
    payload: bytes = field(repr=False)
    own_payload: bytes = field(repr=False)
    frame: bytes = field(repr=False)

    def to_bytes(self) -> bytes:
        """Versioned CBOR."""
        return cbor.encode(
            {
                0: _VERSION,
                1: self.client_msg_id,
                2: self.recipient,
                3: self.payload,
                4: self.own_payload,
                5: self.frame,
            }
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> OutboxRecord:
        """Inverse of :meth:`to_bytes`.

        Raises:
            StoreCorrupt: it does not decode.
        """
        m = _decode(data, "outbox", frozenset(range(6)), 4 * _MAX_FRAME)
        try:
            return cls(
                cbor.field_bytes(m, 1, "client message id", size=_MSG_ID_SIZE),
                check_user_id(m[2]),
                cbor.field_bytes(m, 3, "payload", max_size=_MAX_PAYLOAD),
                cbor.field_bytes(m, 4, "own payload", max_size=_MAX_PAYLOAD),
                cbor.field_bytes(m, 5, "frame", max_size=_MAX_FRAME),
            )
        except E2EEError as exc:
            raise StoreCorrupt(f"outbox record does not decode: {type(exc).__name__}") from exc


@dataclass(frozen=True, slots=True)
class InboxRecord:
    """A decrypted message waiting for the app: ``{0: v, 1: sender user, 2: sender
    device, 3: the decrypted payload, 4: relay acceptance time}``."""

    sender_user: str
    sender_device: int
    payload: bytes = field(repr=False)
    accepted_at_ms: int

    def to_bytes(self) -> bytes:
        """Versioned CBOR."""
        return cbor.encode(
            {
                0: _VERSION,
                1: self.sender_user,
                2: self.sender_device,
                3: self.payload,
                4: self.accepted_at_ms,
            }
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> InboxRecord:
        """Inverse of :meth:`to_bytes`.

        Raises:
            StoreCorrupt: it does not decode.
        """
        m = _decode(data, "inbox", frozenset(range(5)), 2 * _MAX_PAYLOAD)
        try:
            return cls(
                check_user_id(m[1]),
                cbor.field_int(m, 2, "device id", 0, DEVICE_ID_MAX),
                cbor.field_bytes(m, 3, "payload", max_size=_MAX_PAYLOAD),
                cbor.field_int(m, 4, "accepted at", 0, _U63),
            )
        except E2EEError as exc:
            raise StoreCorrupt(f"inbox record does not decode: {type(exc).__name__}") from exc


async def next_counter(tx: Transaction, name: bytes) -> bytes:
    """The next value of the counter ``name`` in META, as an 8-byte big-endian key
    (so keys sort in allocation order); the counter is advanced in ``tx``.

    Raises:
        StoreCorrupt: the stored counter is not 8 bytes.
    """
    current = await tx.get(Table.META, name)
    if current is None:
        value = 1
    elif len(current) != 8:
        raise StoreCorrupt("counter record is not 8 bytes", table=Table.META.value)
    else:
        value = int.from_bytes(current, "big")
    await tx.put(Table.META, name, (value + 1).to_bytes(8, "big"))
    return value.to_bytes(8, "big")
