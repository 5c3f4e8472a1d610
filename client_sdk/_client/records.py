"""How the client keeps its state in the :class:`~client_sdk.store.Store` (DESIGN 6).

Every value is versioned CBOR (key 0 = record version, CONVENTIONS 12); the secret
state of the protocol core keeps the core's own serialization (``OurDevice``,
``OurPreKeys``, ``SessionRecord``, ``SignedDeviceList``). Primary keys that name a
peer are the store's keyed lookup hashes, never identifiers.

| table | key | value |
|---|---|---|
| OWN_DEVICE | ``b"device"`` / ``b"master"`` / ``b"list"`` | ``OurDevice`` / master seed / own ``SignedDeviceList`` |
| PREKEYS | ``b"prekeys"`` | ``OurPreKeys`` |
| PREKEYS | ``b"upkeep"`` | ``upkeep.UpkeepRecord`` (published long-lived prekeys, unconfirmed uploads, a used last-resort id) |
| META | ``b"account"`` | :class:`AccountRecord` |
| META | ``b"outbox_next"`` / ``b"inbox_next"`` / ``b"events_next"`` | 8-byte big-endian counter |
| EVENTS | counter (8 bytes) | a security event (``client_sdk.events``) |
| PEER_DEVICE_LISTS | ``lookup(user)`` | the verified ``SignedDeviceList`` (its master key is the pin) |
| SESSIONS | ``lookup(user, device)`` | ``SessionRecord`` |
| OUTBOX | counter (8 bytes) | :class:`OutboxRecord` |
| INBOX | counter (8 bytes) | :class:`InboxRecord` |
| DEDUPE | ``lookup(user, device)`` + client message id | ``u64`` relay time |
| VERIFICATION | ``lookup(user)`` | :class:`VerificationRecord` (present only while verified) |
| VERIFICATION | ``lookup(user, "identity")`` | :class:`IdentityRecord` (pending key change, retired keys, reported events) |
| META | ``b"link"`` | :class:`LinkRecord` (a new device's linking in progress, or the mailbox it was linked through) |
| META | ``b"own_list_pending"`` | :class:`PendingListRecord` (primary: an own device list being published, with a link answer to deliver) |
| META | ``b"used_device_ids"`` | :class:`DeviceIdsRecord` (primary: every device id its lists held) |
| META | ``b"list_refresh"`` | :class:`RefreshRecord` (users whose device list a notice said changed) |
| META | ``b"rv/m/"`` + client message id | :class:`SentMessageRecord` (a sent message, 24 h, for resends) |
| META | ``b"rv/t/"`` + sent at (8 bytes) + client message id | empty (age index of the above, for the purge) |
| META | ``b"rv/c/"`` + ``lookup("sent-copy", ratchet key, counter)`` | :class:`SentCopyRecord` (which device a sent ciphertext was for) |
| META | ``b"rv/d/"`` + ``lookup(user, device)`` | :class:`PeerRecoveryRecord` (new sessions, retry requests, missing messages reported) |
| META | ``b"rv/r/"`` + ``lookup(user, device)`` | :class:`ResetRecord` (the next message to that device starts a new session) |
| META | ``b"rv/q/"`` / ``b"rv/s/"`` + counter, ``b"recovery_next"`` | :class:`RetryJobRecord` / :class:`ResendJobRecord` (queued until sent), their counter |
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
    "LINK",
    "LIST",
    "LIST_REFRESH",
    "MASTER",
    "OUTBOX_NEXT",
    "OWN_LIST_PENDING",
    "PREKEYS",
    "SEQ_WINDOW",
    "UPKEEP",
    "USED_DEVICE_IDS",
    "AccountRecord",
    "DeviceIdsRecord",
    "InboxRecord",
    "LinkRecord",
    "LinkState",
    "OutboxRecord",
    "PendingListRecord",
    "RefreshRecord",
    "SeqWindow",
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
UPKEEP: Final = b"upkeep"

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


def _decode(
    data: bytes,
    what: str,
    keys: frozenset[int],
    max_size: int,
    optional: frozenset[int] = frozenset(),
) -> dict[int, cbor.Value]:
    try:
        m = cbor.expect_map(cbor.decode(data, max_size=max_size), what, keys, optional)
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
    device, 3: the decrypted payload, 4: relay acceptance time, 5: relay sequence
    number}`` (5 is absent in records written before it existed: 0)."""

    sender_user: str
    sender_device: int
    payload: bytes = field(repr=False)
    accepted_at_ms: int
    relay_seq: int = 0

    def to_bytes(self) -> bytes:
        """Versioned CBOR."""
        return cbor.encode(
            {
                0: _VERSION,
                1: self.sender_user,
                2: self.sender_device,
                3: self.payload,
                4: self.accepted_at_ms,
                5: self.relay_seq,
            }
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> InboxRecord:
        """Inverse of :meth:`to_bytes`.

        Raises:
            StoreCorrupt: it does not decode.
        """
        m = _decode(data, "inbox", frozenset(range(5)), 2 * _MAX_PAYLOAD, frozenset({5}))
        try:
            return cls(
                check_user_id(m[1]),
                cbor.field_int(m, 2, "device id", 0, DEVICE_ID_MAX),
                cbor.field_bytes(m, 3, "payload", max_size=_MAX_PAYLOAD),
                cbor.field_int(m, 4, "accepted at", 0, _U63),
                cbor.field_int(m, 5, "relay sequence", 0, _U63) if 5 in m else 0,
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


# --- identity and verification (client_sdk._client.identity) ----------------------------

IDENTITY_PART: Final = "identity"
"""Second lookup part of a contact's :class:`IdentityRecord` key in VERIFICATION:
``lookup(user, "identity")`` (its verification record is at ``lookup(user)``)."""
_KEY_SIZE: Final = 32
_MAX_KEYS_REMEMBERED: Final = 64
"""Bound on each list of remembered master keys (retired, reported)."""
MAX_EQUIVOCATIONS_REMEMBERED: Final = 32
_MAX_LIST: Final = 256 * 1024
"""Bound on a stored device list (100 devices of ~120 bytes are far below)."""


@dataclass(frozen=True, slots=True)
class VerificationRecord:
    """The user compared the safety number of this contact's master key:
    ``{0: v, 1: master_pk, 2: verified_at_ms}`` at ``VERIFICATION / lookup(user)``.
    It counts only while ``master_pk`` is the pinned key (a re-pin deletes it)."""

    master_pk: bytes = field(repr=False)
    verified_at_ms: int

    def to_bytes(self) -> bytes:
        """Versioned CBOR."""
        return cbor.encode({0: _VERSION, 1: self.master_pk, 2: self.verified_at_ms})

    @classmethod
    def from_bytes(cls, data: bytes) -> VerificationRecord:
        """Inverse of :meth:`to_bytes`.

        Raises:
            StoreCorrupt: it does not decode.
        """
        m = _decode(data, "verification", frozenset(range(3)), 1024)
        try:
            return cls(
                cbor.field_bytes(m, 1, "master key", size=_KEY_SIZE),
                cbor.field_int(m, 2, "verified at", 0, _U63),
            )
        except E2EEError as exc:
            raise StoreCorrupt(
                f"verification record does not decode: {type(exc).__name__}"
            ) from exc


def remember(
    items: tuple[bytes, ...], item: bytes, bound: int = _MAX_KEYS_REMEMBERED
) -> tuple[bytes, ...]:
    """``items`` with ``item`` appended (once), keeping the newest ``bound``."""
    if item in items:
        return items
    return (*items, item)[-bound:]


def _byte_list(m: dict[int, cbor.Value], key: int, what: str, bound: int) -> tuple[bytes, ...]:
    values = cbor.field_list(m, key, what, bound)
    if not all(isinstance(v, bytes) and len(v) == _KEY_SIZE for v in values):
        raise StoreCorrupt(f"identity record: {what} are not 32-byte strings", table="verification")
    return tuple(v for v in values if isinstance(v, bytes))


@dataclass(frozen=True, slots=True)
class IdentityRecord:
    """What the client remembers about a contact's identity beyond the pinned list:
    ``{0: v, 1: pending list | null, 2: [retired master keys], 3: [reported master
    keys], 4: [reported equivocation digests], 5: digest of the list reported stale |
    null, 6: last refresh from the relay (ms)}`` at ``VERIFICATION / lookup(user,
    "identity")``.

    ``pending`` is the device list signed by a new master key that a verified
    contact's relay offered (sending is blocked until it is accepted); ``retired`` are
    master keys this contact once had pinned and replaced, never accepted again (a
    relay cannot roll back to them); ``reported`` and ``equivocations`` make each
    ``IdentityChanged`` / ``DeviceListEquivocation`` event appear once.
    """

    pending: bytes | None = field(default=None, repr=False)
    retired: tuple[bytes, ...] = field(default=(), repr=False)
    reported: tuple[bytes, ...] = field(default=(), repr=False)
    equivocations: tuple[bytes, ...] = field(default=(), repr=False)
    stale_reported: bytes | None = field(default=None, repr=False)
    checked_at_ms: int = 0

    def to_bytes(self) -> bytes:
        """Versioned CBOR."""
        return cbor.encode(
            {
                0: _VERSION,
                1: self.pending,
                2: list(self.retired),
                3: list(self.reported),
                4: list(self.equivocations),
                5: self.stale_reported,
                6: self.checked_at_ms,
            }
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> IdentityRecord:
        """Inverse of :meth:`to_bytes`.

        Raises:
            StoreCorrupt: it does not decode.
        """
        m = _decode(data, "identity", frozenset(range(7)), 2 * _MAX_LIST)
        try:
            pending = m[1]
            if pending is not None and not (
                isinstance(pending, bytes) and len(pending) <= _MAX_LIST
            ):
                raise StoreCorrupt(
                    "identity record: pending list is not bytes", table="verification"
                )
            return cls(
                pending,
                _byte_list(m, 2, "retired keys", _MAX_KEYS_REMEMBERED),
                _byte_list(m, 3, "reported keys", _MAX_KEYS_REMEMBERED),
                _byte_list(m, 4, "equivocation digests", MAX_EQUIVOCATIONS_REMEMBERED),
                cbor.field_optional_bytes(m, 5, "stale digest", size=_KEY_SIZE),
                cbor.field_int(m, 6, "checked at", 0, _U63),
            )
        except E2EEError as exc:
            raise StoreCorrupt(f"identity record does not decode: {type(exc).__name__}") from exc

    @classmethod
    async def load(cls, tx: Transaction, key: bytes) -> IdentityRecord:
        """The record at ``VERIFICATION / key``, or an empty one.

        Raises:
            StoreCorrupt: it does not decode.
        """
        data = await tx.get(Table.VERIFICATION, key)
        return cls() if data is None else cls.from_bytes(data)


# --- devices and linking (client_sdk._client.linking) ------------------------------------

LINK: Final = b"link"
"""META: this device's :class:`LinkRecord` (a linking in progress, or how it was linked)."""
OWN_LIST_PENDING: Final = b"own_list_pending"
"""META: the primary's :class:`PendingListRecord` (an own device list being published)."""
USED_DEVICE_IDS: Final = b"used_device_ids"
"""META: the primary's :class:`DeviceIdsRecord` (every device id its lists ever held)."""
LIST_REFRESH: Final = b"list_refresh"
"""META: a :class:`RefreshRecord` (users whose device list a notice said changed)."""
_MAX_CODE: Final = 256
_MAX_SEALED: Final = 64 * 1024
_MAX_IDS: Final = 1 << 16
_MAX_REFRESH: Final = 1024
"""Users remembered for a device-list refresh; notices beyond this wait for the
normal refresh paths (a send's mismatch, an unknown sender, the connect check)."""


class LinkState(IntEnum):
    """How far the linking of a new device got (each committed before the next step)."""

    KEYS = 1
    """The device's keys are generated; the request may not be in the mailbox yet."""
    SENT = 2
    """The sealed request is in the mailbox; waiting for the primary's answer."""
    DONE = 3
    """The answer was checked and its account committed (the secrets are gone)."""


@dataclass(frozen=True, slots=True)
class LinkRecord:
    """``{0: v, 1: state, 2: mailbox id, 3: link code (QR payload), 4: signing seed,
    5: identity private key, 6: started at}``; once ``DONE``, 3 to 5 are empty (the
    record then only names the mailbox the device was linked through)."""

    state: LinkState
    mailbox_id: bytes
    code: bytes = field(repr=False)
    signing_seed: bytes = field(repr=False)
    identity_private: bytes = field(repr=False)
    started_at_ms: int

    def done(self) -> LinkRecord:
        """The record kept once linking completed: no secret left."""
        return LinkRecord(LinkState.DONE, self.mailbox_id, b"", b"", b"", self.started_at_ms)

    def to_bytes(self) -> bytes:
        """Versioned CBOR."""
        return cbor.encode(
            {
                0: _VERSION,
                1: int(self.state),
                2: self.mailbox_id,
                3: self.code,
                4: self.signing_seed,
                5: self.identity_private,
                6: self.started_at_ms,
            }
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> LinkRecord:
        """Inverse of :meth:`to_bytes`.

        Raises:
            StoreCorrupt: it does not decode.
        """
        m = _decode(data, "link", frozenset(range(7)), 1024)
        try:
            state = LinkState(cbor.field_int(m, 1, "link state", 1, 3))
            secret_size = 0 if state is LinkState.DONE else 32
            record = cls(
                state,
                cbor.field_bytes(m, 2, "mailbox id", size=16),
                cbor.field_bytes(m, 3, "link code", max_size=_MAX_CODE),
                cbor.field_bytes(m, 4, "signing seed", size=secret_size),
                cbor.field_bytes(m, 5, "identity key", size=secret_size),
                cbor.field_int(m, 6, "started at", 0, _U63),
            )
        except E2EEError as exc:
            raise StoreCorrupt(f"link record does not decode: {type(exc).__name__}") from exc
        if (state is LinkState.DONE) != (not record.code):
            raise StoreCorrupt("link record: a code only while linking", table=Table.META.value)
        return record


@dataclass(frozen=True, slots=True)
class PendingListRecord:
    """An own device list the primary publishes: ``{0: v, 1: signed list, 2: published,
    3: mailbox id | null, 4: sealed link answer | null}``. Committed before the list is
    sent to the relay; ``published`` once the relay accepted it (and the list was
    adopted); deleted when the answer (if any) is in the link mailbox. A restart finds
    it and settles it: a list the relay does not hold was never published (dropped);
    one it holds is adopted and its answer delivered."""

    signed_list: bytes = field(repr=False)
    published: bool
    mailbox_id: bytes | None = field(default=None, repr=False)
    sealed_answer: bytes | None = field(default=None, repr=False)

    def to_bytes(self) -> bytes:
        """Versioned CBOR."""
        return cbor.encode(
            {
                0: _VERSION,
                1: self.signed_list,
                2: self.published,
                3: self.mailbox_id,
                4: self.sealed_answer,
            }
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> PendingListRecord:
        """Inverse of :meth:`to_bytes`.

        Raises:
            StoreCorrupt: it does not decode.
        """
        m = _decode(data, "pending list", frozenset(range(5)), _MAX_LIST + 2 * _MAX_SEALED)
        try:
            record = cls(
                cbor.field_bytes(m, 1, "signed list", max_size=_MAX_LIST),
                cbor.field_bool(m, 2, "published"),
                cbor.field_optional_bytes(m, 3, "mailbox id", size=16),
                None if m[4] is None else cbor.field_bytes(m, 4, "answer", max_size=_MAX_SEALED),
            )
        except E2EEError as exc:
            raise StoreCorrupt(f"pending list does not decode: {type(exc).__name__}") from exc
        if (record.mailbox_id is None) != (record.sealed_answer is None):
            raise StoreCorrupt("pending list: an answer needs its mailbox", table=Table.META.value)
        return record


@dataclass(frozen=True, slots=True)
class DeviceIdsRecord:
    """``{0: v, 1: [device ids]}``, ascending: ids never to be given again."""

    ids: frozenset[int]

    def to_bytes(self) -> bytes:
        """Versioned CBOR."""
        return cbor.encode({0: _VERSION, 1: list(sorted(self.ids))})

    @classmethod
    def from_bytes(cls, data: bytes) -> DeviceIdsRecord:
        """Inverse of :meth:`to_bytes`.

        Raises:
            StoreCorrupt: it does not decode.
        """
        m = _decode(data, "device ids", frozenset(range(2)), 8 * _MAX_IDS)
        try:
            values = cbor.field_list(m, 1, "device ids", _MAX_IDS)
        except E2EEError as exc:
            raise StoreCorrupt(f"device ids do not decode: {type(exc).__name__}") from exc
        if not all(type(v) is int and 0 <= v <= DEVICE_ID_MAX for v in values):
            raise StoreCorrupt("device ids: not 32-bit integers", table=Table.META.value)
        return cls(frozenset(v for v in values if isinstance(v, int)))


@dataclass(frozen=True, slots=True)
class RefreshRecord:
    """``{0: v, 1: [user ids]}``: users whose device list a ``device_list_notice`` said
    is newer than ours (fetched after the transaction that received the notice)."""

    users: tuple[str, ...]

    def to_bytes(self) -> bytes:
        """Versioned CBOR."""
        return cbor.encode({0: _VERSION, 1: list(self.users)})

    def adding(self, user_id: str) -> RefreshRecord:
        """This record with ``user_id`` (once; the oldest dropped past the bound)."""
        if user_id in self.users:
            return self
        return RefreshRecord((*self.users, user_id)[-_MAX_REFRESH:])

    @classmethod
    def from_bytes(cls, data: bytes) -> RefreshRecord:
        """Inverse of :meth:`to_bytes`.

        Raises:
            StoreCorrupt: it does not decode.
        """
        m = _decode(data, "refresh", frozenset(range(2)), 80 * _MAX_REFRESH)
        try:
            values = cbor.field_list(m, 1, "users", _MAX_REFRESH)
            return cls(tuple(check_user_id(v) for v in values))
        except E2EEError as exc:
            raise StoreCorrupt(f"refresh record does not decode: {type(exc).__name__}") from exc


# --- recovery (client_sdk._client.recovery, client_sdk._client.sending) -----------------

LAST_SEQ: Final = b"last_seq"
"""META: the relay sequence numbers this device processed, as a :class:`SeqWindow`."""
SEQ_WINDOW: Final = 1024
"""Sequence numbers below the highest processed one whose state a device remembers
(processed or not): an anti-replay window, as IPsec's. A relay redelivers only what
was not acknowledged, at most its delivery window (256 by default) behind."""


@dataclass(slots=True)
class SeqWindow:
    """The relay sequence numbers this device processed: the highest, and of the
    :data:`SEQ_WINDOW` below it which ones (bit ``i`` of ``seen``: ``last - i``).

    A duplicate message under a number processed before is the relay's redelivery of a
    message whose acknowledgement was lost; under any other number it was queued again,
    which an honest relay never does. A relay that delivers one message under a huge
    number cannot hide later replays below it: a number never processed stays new.
    Stored as 8 bytes of ``last`` and :data:`SEQ_WINDOW` / 8 bytes of ``seen``
    (big-endian); the 8-byte form of earlier versions (``last`` alone, everything up to
    it processed) is read as a full window.
    """

    last: int = 0
    seen: int = 0

    @classmethod
    def from_bytes(cls, data: bytes | None) -> SeqWindow:
        """The stored window (``None``: nothing processed yet).

        Raises:
            StoreCorrupt: neither stored form.
        """
        if data is None:
            return cls()
        if len(data) == 8:
            return cls(int.from_bytes(data, "big"), (1 << SEQ_WINDOW) - 1)
        if len(data) != 8 + SEQ_WINDOW // 8:
            raise StoreCorrupt("sequence window record has a wrong size", table=Table.META.value)
        return cls(int.from_bytes(data[:8], "big"), int.from_bytes(data[8:], "big"))

    def to_bytes(self) -> bytes:
        """The stored form."""
        return self.last.to_bytes(8, "big") + self.seen.to_bytes(SEQ_WINDOW // 8, "big")

    def processed(self, seq: int) -> bool:
        """Whether ``seq`` was processed (below the window: taken as not)."""
        offset = self.last - seq
        return 0 <= offset < SEQ_WINDOW and (self.seen >> offset) & 1 == 1

    def mark(self, seq: int) -> None:
        """Record ``seq`` as processed."""
        if seq > self.last:
            shift = seq - self.last
            kept = self.seen << shift if shift < SEQ_WINDOW else 0
            self.seen = (kept | 1) & ((1 << SEQ_WINDOW) - 1)
            self.last = seq
        elif self.last - seq < SEQ_WINDOW:
            self.seen |= 1 << (self.last - seq)


RECOVERY_NEXT: Final = b"recovery_next"
"""META: counter of queued recovery jobs (:class:`RetryJobRecord`, :class:`ResendJobRecord`)."""
SENT_MESSAGE_PREFIX: Final = b"rv/m/"
"""META ``+ client_msg_id``: a :class:`SentMessageRecord` (kept 24 h for resends)."""
SENT_TIME_PREFIX: Final = b"rv/t/"
"""META ``+ sent_at (8 bytes) + client_msg_id``: empty; orders sent messages by age for
the purge."""
SENT_COPY_PREFIX: Final = b"rv/c/"
"""META ``+ lookup("sent-copy", ratchet key, counter)``: a :class:`SentCopyRecord`."""
PEER_RECOVERY_PREFIX: Final = b"rv/d/"
"""META ``+ lookup(user, device)``: a :class:`PeerRecoveryRecord`."""
RESET_PREFIX: Final = b"rv/r/"
"""META ``+ lookup(user, device)``: a :class:`ResetRecord` (the next message to that
device starts a new session)."""
RETRY_JOB_PREFIX: Final = b"rv/q/"
"""META ``+ counter``: a :class:`RetryJobRecord` (a retry request to send)."""
RESEND_JOB_PREFIX: Final = b"rv/s/"
"""META ``+ counter``: a :class:`ResendJobRecord` (a message to resend)."""
SENT_COPY_PART: Final = "sent-copy"
"""First lookup part of a :class:`SentCopyRecord` key (keeps it apart from peer keys)."""
_MAX_COPIES: Final = 4096
"""Copies remembered per sent message (every device of two users, readdresses, resends)."""
_MAX_RESENT: Final = 1024
_MAX_REQUESTED: Final = 64
"""Retry requests remembered per peer device (at most one an hour is sent)."""
_REQUESTED_SIZE: Final = _KEY_SIZE + 4


def _optional_int(m: dict[int, cbor.Value], key: int, what: str) -> int | None:
    return None if m[key] is None else cbor.field_int(m, key, what, 0, _U63)


def _bytes_list(
    m: dict[int, cbor.Value], key: int, what: str, bound: int, size: int
) -> tuple[bytes, ...]:
    values = cbor.field_list(m, key, what, bound)
    if not all(isinstance(v, bytes) and len(v) == size for v in values):
        raise StoreCorrupt(f"{what} are not {size}-byte strings", table=Table.META.value)
    return tuple(v for v in values if isinstance(v, bytes))


@dataclass(frozen=True, slots=True)
class SentMessageRecord:
    """A message this device sent, kept 24 hours so a retry request can be honoured:
    ``{0: v, 1: client_msg_id, 2: sent_at_ms, 3: recipient user, 4: payload for the
    recipient's devices, 5: payload for our own other devices, 6: [keys of its
    SentCopyRecords], 7: [lookup(user, device) of the devices it was resent to]}``."""

    client_msg_id: bytes
    sent_at_ms: int
    recipient: str
    payload: bytes = field(repr=False)
    own_payload: bytes = field(repr=False)
    copies: tuple[bytes, ...] = field(default=(), repr=False)
    resent_to: tuple[bytes, ...] = field(default=(), repr=False)

    def to_bytes(self) -> bytes:
        """Versioned CBOR."""
        return cbor.encode(
            {
                0: _VERSION,
                1: self.client_msg_id,
                2: self.sent_at_ms,
                3: self.recipient,
                4: self.payload,
                5: self.own_payload,
                6: list(self.copies),
                7: list(self.resent_to),
            }
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> SentMessageRecord:
        """Inverse of :meth:`to_bytes`.

        Raises:
            StoreCorrupt: it does not decode.
        """
        m = _decode(
            data,
            "sent message",
            frozenset(range(8)),
            2 * _MAX_PAYLOAD + (_MAX_COPIES + _MAX_RESENT) * (_KEY_SIZE + 3) + 1024,
        )
        try:
            return cls(
                cbor.field_bytes(m, 1, "client message id", size=_MSG_ID_SIZE),
                cbor.field_int(m, 2, "sent at", 0, _U63),
                check_user_id(m[3]),
                cbor.field_bytes(m, 4, "payload", max_size=_MAX_PAYLOAD),
                cbor.field_bytes(m, 5, "own payload", max_size=_MAX_PAYLOAD),
                _bytes_list(m, 6, "copy keys", _MAX_COPIES, len(SENT_COPY_PREFIX) + _KEY_SIZE),
                _bytes_list(m, 7, "resent devices", _MAX_RESENT, _KEY_SIZE),
            )
        except E2EEError as exc:
            raise StoreCorrupt(f"sent message does not decode: {type(exc).__name__}") from exc


@dataclass(frozen=True, slots=True)
class SentCopyRecord:
    """One ciphertext of a sent message, found by the (ratchet key, counter) of its
    header: ``{0: v, 1: client_msg_id, 2: user, 3: device}`` (the device it was
    encrypted for)."""

    client_msg_id: bytes
    user_id: str
    device_id: int

    def to_bytes(self) -> bytes:
        """Versioned CBOR."""
        return cbor.encode({0: _VERSION, 1: self.client_msg_id, 2: self.user_id, 3: self.device_id})

    @classmethod
    def from_bytes(cls, data: bytes) -> SentCopyRecord:
        """Inverse of :meth:`to_bytes`.

        Raises:
            StoreCorrupt: it does not decode.
        """
        m = _decode(data, "sent copy", frozenset(range(4)), 1024)
        try:
            return cls(
                cbor.field_bytes(m, 1, "client message id", size=_MSG_ID_SIZE),
                check_user_id(m[2]),
                cbor.field_int(m, 3, "device id", 0, DEVICE_ID_MAX),
            )
        except E2EEError as exc:
            raise StoreCorrupt(f"sent copy does not decode: {type(exc).__name__}") from exc


@dataclass(frozen=True, slots=True)
class PeerRecoveryRecord:
    """What recovery remembers about one peer device: ``{0: v, 1: last new session
    (a reset or an honoured retry request) | null, 2: last retry request sent to it |
    null, 3: [ratchet key || counter (4 bytes) of the retry requests sent], 4: the
    skipped-key age up to which missing messages were reported | null}``."""

    last_new_session_ms: int | None = None
    last_request_ms: int | None = None
    requested: tuple[bytes, ...] = field(default=(), repr=False)
    missing_reported_until_ms: int | None = None

    def requesting(self, name: bytes, now_ms: int) -> PeerRecoveryRecord:
        """This record after a retry request for ``name`` (ratchet key || counter)."""
        return PeerRecoveryRecord(
            self.last_new_session_ms,
            now_ms,
            (*self.requested, name)[-_MAX_REQUESTED:],
            self.missing_reported_until_ms,
        )

    def to_bytes(self) -> bytes:
        """Versioned CBOR."""
        return cbor.encode(
            {
                0: _VERSION,
                1: self.last_new_session_ms,
                2: self.last_request_ms,
                3: list(self.requested),
                4: self.missing_reported_until_ms,
            }
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> PeerRecoveryRecord:
        """Inverse of :meth:`to_bytes`.

        Raises:
            StoreCorrupt: it does not decode.
        """
        m = _decode(data, "peer recovery", frozenset(range(5)), 64 + 40 * _MAX_REQUESTED)
        try:
            return cls(
                _optional_int(m, 1, "last new session"),
                _optional_int(m, 2, "last request"),
                _bytes_list(m, 3, "requested", _MAX_REQUESTED, _REQUESTED_SIZE),
                _optional_int(m, 4, "missing reported until"),
            )
        except E2EEError as exc:
            raise StoreCorrupt(f"peer recovery does not decode: {type(exc).__name__}") from exc

    @classmethod
    async def load(cls, tx: Transaction, key: bytes) -> PeerRecoveryRecord:
        """The record at ``META / key``, or an empty one.

        Raises:
            StoreCorrupt: it does not decode.
        """
        data = await tx.get(Table.META, key)
        return cls() if data is None else cls.from_bytes(data)


@dataclass(frozen=True, slots=True)
class ResetRecord:
    """``{0: v, 1: requested_at_ms}``: the next message to this peer device starts a new
    session from a freshly claimed bundle (deleted when it did)."""

    requested_at_ms: int

    def to_bytes(self) -> bytes:
        """Versioned CBOR."""
        return cbor.encode({0: _VERSION, 1: self.requested_at_ms})

    @classmethod
    def from_bytes(cls, data: bytes) -> ResetRecord:
        """Inverse of :meth:`to_bytes`.

        Raises:
            StoreCorrupt: it does not decode.
        """
        m = _decode(data, "reset", frozenset(range(2)), 64)
        try:
            return cls(cbor.field_int(m, 1, "requested at", 0, _U63))
        except E2EEError as exc:
            raise StoreCorrupt(f"reset record does not decode: {type(exc).__name__}") from exc


@dataclass(frozen=True, slots=True)
class RetryJobRecord:
    """A retry request to send after the transaction that decided it: ``{0: v, 1: user,
    2: device (asked to resend), 3: ratchet key, 4: counter, 5: client_msg_id (zero:
    unknown)}``."""

    user_id: str
    device_id: int
    ratchet_pk: bytes = field(repr=False)
    counter: int
    client_msg_id: bytes

    def to_bytes(self) -> bytes:
        """Versioned CBOR."""
        return cbor.encode(
            {
                0: _VERSION,
                1: self.user_id,
                2: self.device_id,
                3: self.ratchet_pk,
                4: self.counter,
                5: self.client_msg_id,
            }
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> RetryJobRecord:
        """Inverse of :meth:`to_bytes`.

        Raises:
            StoreCorrupt: it does not decode.
        """
        m = _decode(data, "retry job", frozenset(range(6)), 1024)
        try:
            return cls(
                check_user_id(m[1]),
                cbor.field_int(m, 2, "device id", 0, DEVICE_ID_MAX),
                cbor.field_bytes(m, 3, "ratchet key", size=_KEY_SIZE),
                cbor.field_int(m, 4, "counter", 0, 2**32 - 1),
                cbor.field_bytes(m, 5, "client message id", size=_MSG_ID_SIZE),
            )
        except E2EEError as exc:
            raise StoreCorrupt(f"retry job does not decode: {type(exc).__name__}") from exc


@dataclass(frozen=True, slots=True)
class ResendJobRecord:
    """A message to resend after the transaction that honoured a retry request:
    ``{0: v, 1: client_msg_id, 2: user, 3: device}``."""

    client_msg_id: bytes
    user_id: str
    device_id: int

    def to_bytes(self) -> bytes:
        """Versioned CBOR."""
        return cbor.encode({0: _VERSION, 1: self.client_msg_id, 2: self.user_id, 3: self.device_id})

    @classmethod
    def from_bytes(cls, data: bytes) -> ResendJobRecord:
        """Inverse of :meth:`to_bytes`.

        Raises:
            StoreCorrupt: it does not decode.
        """
        m = _decode(data, "resend job", frozenset(range(4)), 1024)
        try:
            return cls(
                cbor.field_bytes(m, 1, "client message id", size=_MSG_ID_SIZE),
                check_user_id(m[2]),
                cbor.field_int(m, 3, "device id", 0, DEVICE_ID_MAX),
            )
        except E2EEError as exc:
            raise StoreCorrupt(f"resend job does not decode: {type(exc).__name__}") from exc
