"""Key upkeep without the app's help: prekey refill, signed prekey rotation,
last-resort replacement, the key-consistency check (issue 4 "Upkeep", DESIGN 4.2-4.4).

One *upkeep pass* does everything, under one lock, on the open connection:

1. ``KeyCheck``: what the relay serves for this device (signed and last-resort
   prekeys, one-time prekey counts, the digest of the account's device list).
2. One store transaction decides and commits, before anything is uploaded (a crash
   after it can still answer every pre-key message the upload makes possible):

   * a signed or last-resort prekey the relay serves that is not ours (another id,
     another key, a signature that does not verify under our signing key, or none) is
     replaced by a fresh one and reported as ``KeyCheckMismatch`` in the same
     transaction. A prekey we committed but whose upload was never confirmed (a crash
     or a lost connection in between) is uploaded again first, without an event; if
     the relay then says it saw that id before, it is a mismatch after all;
   * the signed prekey rotates when it is ``SIGNED_PREKEY_ROTATION_MS`` (7 days) old
     by the injected clock; the signed prekey and the last-resort KEM prekey rotate
     when more than ``MAX_SEEN_BASE_KEYS`` base keys were seen under the current signed
     prekey (DESIGN 4.3); the last-resort KEM prekey is replaced once a session was
     started with it;
   * superseded keys are kept exactly as ``OurPreKeys.expire`` says (DESIGN 4.4:
     ``max(35 days, relay TTL + 5 days)`` after rotation, the TTL as the relay's
     ``/v1/config`` advertises it, read once per client and bounded by
     :data:`MAX_RETENTION_RELAY_TTL_MS`);
   * one-time EC and KEM prekeys below ``ONE_TIME_PREKEY_LOW`` (25) at the relay are
     refilled to ``ONE_TIME_PREKEY_BATCH`` (100) of each kind, by the relay's counts.

3. One ``UploadPreKeys`` frame, then a transaction that marks the uploaded long-lived
   prekeys confirmed.
4. The device-list digest: if it differs from our stored own list, the relay's list is
   fetched and checked like any other (pinned master key, no rollback or
   equivocation); a refused list is reported as ``KeyCheckMismatch("device_list")``
   (device lists are signed by the master key, so nothing can be re-uploaded).

A pass runs on every new connection, when the relay pushes ``prekeys_low``, right
after a message that used the current last-resort KEM prekey (or that filled the
base-key ledger), and in the ``messages()`` loop at most once per
:data:`UPKEEP_INTERVAL_MS` of clock time. Connection and relay errors end a pass
quietly (logged): what it could not do is found again by the next one.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any, Final

from e2ee import cbor
from e2ee.device import OurDevice, OurPreKeys
from e2ee.envelope import EnvelopeType, PreKeyEnvelope, envelope_type
from e2ee.errors import E2EEError
from e2ee.limits import (
    DAY_MS,
    MAX_SEEN_BASE_KEYS,
    ONE_TIME_PREKEY_BATCH,
    ONE_TIME_PREKEY_LOW,
    SIGNED_PREKEY_ROTATION_MS,
)
from e2ee.prekeys import PREKEY_ID_MAX, PreKeyKind, SignedPublicPreKey
from e2ee.relay_frames import KeyStatus

from ..errors import (
    IdentityError,
    PreKeyIdReused,
    StoreClosed,
    StoreCorrupt,
    TransportError,
    UsageError,
)
from ..events import KeyCheckMismatch
from ..store import Table, Transaction
from ..transport import Delivery, PreKeysLowEvent, RelayConnection, RelayEvent, fetch_config
from . import records, sessions
from .receiving import ReceivingMixin

__all__ = [
    "MAX_RETENTION_RELAY_TTL_MS",
    "UPKEEP_INTERVAL_MS",
    "UpkeepMixin",
    "UpkeepRecord",
]

logger = logging.getLogger("client_sdk.client")

UPKEEP_INTERVAL_MS: Final = 3_600_000
"""The ``messages()`` loop runs an upkeep pass at most once per hour of clock time
(besides the pass on every connect): signed prekeys rotate within an hour of falling
due even on a connection that lives for weeks."""
MAX_RETENTION_RELAY_TTL_MS: Final = 90 * DAY_MS
"""The largest relay message TTL that extends how long superseded signed and
last-resort prekeys are kept (DESIGN 4.4: ``max(35 days, TTL + 5 days)``): a relay
advertising a longer TTL cannot make the device keep old private keys for ever."""

DEDUPE_MIN_RETENTION_MS: Final = 30 * DAY_MS
"""Dedupe records are kept at least this long (the relay's default message TTL)..."""
DEDUPE_MARGIN_MS: Final = 5 * DAY_MS
"""...plus this margin over the relay's TTL (clock skew; DESIGN 4.4 keeps superseded
prekeys TTL + 5 days for the same reason)."""

SIGNED: Final = "signed_prekey"
"""``KeyCheckMismatch.what`` for the signed prekey."""
LAST_RESORT: Final = "last_resort"
"""``KeyCheckMismatch.what`` for the last-resort ML-KEM prekey."""
DEVICE_LIST: Final = "device_list"
"""``KeyCheckMismatch.what`` for the account's device list."""

_VERSION: Final = 1
_RECORD_KEYS: Final = frozenset(range(6))
_MAX_RECORD: Final = 16 * 1024


@dataclass(slots=True)
class UpkeepRecord:
    """What upkeep remembers between passes (``PREKEYS`` / ``b"upkeep"``): ``{0: v,
    1: current signed prekey as published or null, 2: its upload not yet confirmed,
    3: current last-resort KEM prekey as published or null, 4: its upload not yet
    confirmed, 5: id of a last-resort prekey a session used, or null}``.

    The published prekeys are public (their private halves live in ``OurPreKeys``);
    the signed prekey's ``created_at_ms`` is what rotation is timed by.
    """

    signed: SignedPublicPreKey | None = None
    signed_pending: bool = False
    last_resort: SignedPublicPreKey | None = None
    last_resort_pending: bool = False
    last_resort_used: int | None = None

    def to_bytes(self) -> bytes:
        """Versioned CBOR."""
        return cbor.encode(
            {
                0: _VERSION,
                1: None if self.signed is None else self.signed.to_value(),
                2: self.signed_pending,
                3: None if self.last_resort is None else self.last_resort.to_value(),
                4: self.last_resort_pending,
                5: self.last_resort_used,
            }
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> UpkeepRecord:
        """Inverse of :meth:`to_bytes`.

        Raises:
            StoreCorrupt: it does not decode.
        """
        try:
            m = cbor.expect_map(cbor.decode(data, max_size=_MAX_RECORD), "upkeep", _RECORD_KEYS)
            if m[0] != _VERSION:
                raise StoreCorrupt("unknown upkeep record version", table=Table.PREKEYS)
            return cls(
                signed=_optional_prekey(m[1], PreKeyKind.SIGNED),
                signed_pending=cbor.field_bool(m, 2, "signed pending"),
                last_resort=_optional_prekey(m[3], PreKeyKind.KEM_LAST_RESORT),
                last_resort_pending=cbor.field_bool(m, 4, "last resort pending"),
                last_resort_used=(
                    None if m[5] is None else cbor.field_int(m, 5, "used", 0, PREKEY_ID_MAX)
                ),
            )
        except E2EEError as exc:
            raise StoreCorrupt(
                f"upkeep record does not decode: {type(exc).__name__}", table=Table.PREKEYS
            ) from exc


def _optional_prekey(value: cbor.Value, kind: PreKeyKind) -> SignedPublicPreKey | None:
    return None if value is None else SignedPublicPreKey.from_value(value, kind)


@dataclass(slots=True)
class _Upload:
    """What one pass uploads (one ``UploadPreKeys`` frame)."""

    signed: SignedPublicPreKey | None = None
    last_resort: SignedPublicPreKey | None = None
    one_time: list[SignedPublicPreKey] = field(default_factory=list)
    kem: list[SignedPublicPreKey] = field(default_factory=list)
    retried: set[str] = field(default_factory=set)
    """Which long-lived prekeys are earlier, unconfirmed uploads sent again."""

    @property
    def empty(self) -> bool:
        return (
            self.signed is None and self.last_resort is None and not self.one_time and not self.kem
        )


def _serves_ours(
    served: SignedPublicPreKey | None,
    device: OurDevice,
    our_id: int | None,
    our_public: bytes | None,
) -> bool:
    """Whether the relay serves exactly the prekey we published as ``our_id``: same id,
    same public key, and our signature over it (which fixes ``created_at_ms`` too)."""
    if served is None or our_id is None or our_public is None:
        return False
    if served.prekey_id != our_id or served.public_key != our_public:
        return False
    try:
        served.verify(device.user_id, device.device_id, device.signing.public_key)
    except E2EEError:
        return False
    return True


def _current_bucket(prekeys: OurPreKeys) -> int:
    """Base keys seen (pre-key messages without a one-time prekey) under the current
    signed prekey. ``OurPreKeys.needs_rotation`` counts the superseded signed prekeys'
    entries too, which stay until those keys expire (35 days): rotating again would
    not shrink them, so the rotation decision counts the current prekey's alone."""
    current = prekeys.current_signed
    return sum(len(keys) for (spk, _), keys in prekeys.seen_base_keys.items() if spk == current)


class UpkeepMixin(ReceivingMixin):
    """See the module documentation. It extends the receiving steps (a pass on
    ``prekeys_low``, after a message that used the last-resort prekey, and hourly in the
    ``messages()`` loop), so it derives from :class:`ReceivingMixin`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._upkeep_lock = asyncio.Lock()
        self._upkeep_at_ms: int | None = None
        """Clock time of the last pass (``None``: none yet on this client)."""
        self._upkeep_wanted = False
        """A received message asks for a pass (the last-resort prekey was used)."""
        self._relay_ttl_ms: int | None = None
        """The relay's message TTL (``/v1/config``), read once when first needed."""

    # --- the hooks -----------------------------------------------------------------------

    async def _after_connect(self, conn: RelayConnection) -> None:
        # The key check first: the relay then serves our current keys (and enough
        # one-time prekeys) before the outbox flush and before deliveries are read.
        await self._upkeep(conn)
        await super()._after_connect(conn)

    async def _on_prekeys_low(self, conn: RelayConnection, event: PreKeysLowEvent) -> None:
        await super()._on_prekeys_low(conn, event)
        # The pass reads the counts from the relay's KeyCheck answer, not from this
        # event: several events may announce one shortage.
        await self._upkeep(conn)

    async def _next_event(self) -> tuple[RelayConnection, RelayEvent] | None:
        conn = self._conn
        if conn is not None and conn.is_open and self._upkeep_due():
            await self._upkeep(conn)
        return await super()._next_event()

    async def _receive(self, conn: RelayConnection, delivery: Delivery) -> None:
        await super()._receive(conn, delivery)
        if self._upkeep_wanted and conn.is_open:
            await self._upkeep(conn)

    async def _store_payload(
        self, tx: Transaction, delivery: Delivery, lookup: bytes, plaintext: bytes
    ) -> None:
        await super()._store_payload(tx, delivery, lookup, plaintext)
        await self._note_prekey_use(tx, delivery.ciphertext)

    # --- noticing what a message used ---------------------------------------------------

    async def _note_prekey_use(self, tx: Transaction, ciphertext: bytes) -> None:
        """Inside the transaction that commits a decrypted message: if it is a pre-key
        message that used our current last-resort KEM prekey, record that the key must
        be replaced (durably, so a crash before the replacement does not forget it);
        if it used no one-time prekey and the base-key ledger of the current signed
        prekey is full, ask for a pass. The current last-resort id comes from the small
        upkeep record: decoding ``OurPreKeys`` again would double the cost of every
        pre-key message."""
        try:
            if envelope_type(ciphertext) is not EnvelopeType.PREKEY:
                return
            envelope = PreKeyEnvelope.from_bytes(ciphertext)
        except E2EEError:  # pragma: no cover - it was decrypted from these bytes
            return
        # Only without a one-time prekey (rare: the relay had none left) does the
        # ledger grow.
        if (
            envelope.one_time_prekey_id is None
            and _current_bucket(await self._prekeys(tx)) > MAX_SEEN_BASE_KEYS
        ):
            self._upkeep_wanted = True
        used = envelope.kem_prekey_id
        if used is None:
            return
        record = await self._upkeep_record(tx)
        current: int | None
        if record.last_resort is not None:
            current = record.last_resort.prekey_id
        else:  # no pass has run on this store yet
            current = (await self._prekeys(tx)).current_last_resort
        if used != current:
            return
        if record.last_resort_used != used:
            record.last_resort_used = used
            await tx.put(Table.PREKEYS, records.UPKEEP, record.to_bytes())
            logger.info("the last-resort KEM prekey was used; it will be replaced")
        self._upkeep_wanted = True

    # --- the pass ------------------------------------------------------------------------

    def _upkeep_due(self) -> bool:
        if self._upkeep_wanted or self._upkeep_at_ms is None:
            return True
        now = self._clock()
        return now < self._upkeep_at_ms or now - self._upkeep_at_ms >= UPKEEP_INTERVAL_MS

    async def _upkeep(self, conn: RelayConnection) -> None:
        """Run one upkeep pass (see the module documentation) on ``conn``; connection
        and relay errors end it quietly (logged).

        Raises:
            StoreError: the store failed (each transaction commits whole or not at
                all; what was committed is finished by the next pass).
        """
        async with self._upkeep_lock:
            self._upkeep_wanted = False
            self._upkeep_at_ms = self._clock()
            try:
                await self._upkeep_pass(conn)
            except TransportError as exc:
                logger.warning("key upkeep interrupted (%s)", type(exc).__name__)
            except UsageError:
                if conn.is_open:
                    raise
                logger.info("key upkeep interrupted: the connection closed")
            except StoreClosed:
                if not self._closed:
                    raise
                logger.info("key upkeep interrupted: the client closed")

    async def _upkeep_pass(self, conn: RelayConnection) -> None:
        status = await conn.key_check()
        ttl = await self._retention_ttl()
        upload = await self._prepare(status, ttl, refused=frozenset(), carry=None)
        if not upload.empty:
            try:
                await self._upload(conn, upload)
            except PreKeyIdReused:
                if not upload.retried:
                    raise
                # The relay saw the id of a prekey we thought never arrived, yet it
                # serves another one: a mismatch after all. The one-time prekeys of
                # the refused frame were not stored; they go again.
                upload = await self._prepare(
                    status, ttl, refused=frozenset(upload.retried), carry=upload
                )
                await self._upload(conn, upload)
        await self._check_device_list(conn, status)
        await self._expire_local_state()

    async def _expire_local_state(self) -> None:
        """Forget local state whose time is over (DESIGN 4.4): archived sessions idle for
        30 days and skipped message keys older than 30 days (``SessionRecord.expire``,
        each peer device in a transaction of its own), and dedupe records older than the
        relay's message TTL plus a margin (the relay can no longer deliver a copy of
        such a message). Runs in every upkeep pass (on connect and hourly)."""
        now = self._clock()
        async with self._store.transaction() as tx:
            peers = [key for key, _ in await tx.scan(Table.SESSIONS)]
        expired = 0
        for lookup in peers:
            async with self._peer_locks_held([lookup]), self._store.transaction() as tx:
                loaded = await sessions.load(tx, lookup, skipped=True)
                record = loaded.record
                if record is None:
                    continue
                before = (
                    len(record.sessions),
                    sum(len(x.ratchet.skipped) for x in record.sessions),
                )
                record.expire(now)
                after = (len(record.sessions), sum(len(x.ratchet.skipped) for x in record.sessions))
                if after != before:
                    await loaded.save(tx, record)
                    expired += 1
        ttl = self._relay_ttl_ms if self._relay_ttl_ms is not None else MAX_RETENTION_RELAY_TTL_MS
        keep_ms = max(ttl, DEDUPE_MIN_RETENTION_MS) + DEDUPE_MARGIN_MS
        async with self._store.transaction() as tx:
            dropped = 0
            for key, value in await tx.scan(Table.DEDUPE):
                if len(value) == 8 and now - int.from_bytes(value, "big") > keep_ms:
                    await tx.delete(Table.DEDUPE, key)
                    dropped += 1
        if expired or dropped:
            logger.info("expired state of %d peer devices and %d dedupe records", expired, dropped)

    async def _upload(self, conn: RelayConnection, upload: _Upload) -> None:
        await conn.upload_prekeys(
            signed_prekey=upload.signed,
            one_time=upload.one_time,
            kem=upload.kem,
            last_resort=upload.last_resort,
        )
        async with self._store.transaction() as tx:
            record = await self._upkeep_record(tx)
            if upload.signed is not None and record.signed == upload.signed:
                record.signed_pending = False
            if upload.last_resort is not None and record.last_resort == upload.last_resort:
                record.last_resort_pending = False
            await tx.put(Table.PREKEYS, records.UPKEEP, record.to_bytes())
        logger.info(
            "uploaded prekeys (signed: %s, last resort: %s, one-time: %d, KEM: %d)",
            upload.signed is not None,
            upload.last_resort is not None,
            len(upload.one_time),
            len(upload.kem),
        )

    async def _prepare(
        self,
        status: KeyStatus,
        ttl_ms: int | None,
        *,
        refused: frozenset[str],
        carry: _Upload | None,
    ) -> _Upload:
        """Decide what to upload and commit every private half (and the events) in one
        transaction, before anything leaves (see the module documentation)."""
        device, _ = self._ready_keys()
        now = self._clock()
        upload = _Upload()
        async with self._store.transaction() as tx:
            prekeys = await self._prekeys(tx)
            record = await self._upkeep_record(tx)
            rotate_signed = await self._check_signed(tx, device, prekeys, record, status, refused)
            rotate_last_resort = device.pq and await self._check_last_resort(
                tx, device, prekeys, record, status, refused
            )
            if not rotate_signed and SIGNED not in refused and record.signed_pending:
                upload.signed = record.signed
                upload.retried.add(SIGNED)
            if not rotate_last_resort and LAST_RESORT not in refused and record.last_resort_pending:
                upload.last_resort = record.last_resort
                upload.retried.add(LAST_RESORT)
            # Rotations that fall due by time or use.
            current = record.signed
            if current is not None and now - current.created_at_ms >= SIGNED_PREKEY_ROTATION_MS:
                rotate_signed = True
            if _current_bucket(prekeys) > MAX_SEEN_BASE_KEYS:
                rotate_signed = True
                rotate_last_resort = device.pq
            if record.last_resort_used is not None:
                if device.pq and record.last_resort_used == prekeys.current_last_resort:
                    rotate_last_resort = True
                record.last_resort_used = None
            if rotate_signed:
                upload.signed = prekeys.rotate_signed_prekey(device, now, self._rng)
                upload.retried.discard(SIGNED)
                record.signed, record.signed_pending = upload.signed, True
            if rotate_last_resort:
                upload.last_resort = prekeys.rotate_last_resort(device, now, self._rng)
                upload.retried.discard(LAST_RESORT)
                record.last_resort, record.last_resort_pending = upload.last_resort, True
            if ttl_ms is not None:
                prekeys.expire(now, ttl_ms)
            if carry is not None:
                upload.one_time, upload.kem = carry.one_time, carry.kem
            else:
                if status.one_time_left < ONE_TIME_PREKEY_LOW:
                    upload.one_time = prekeys.one_time_batch(
                        device, now, count=ONE_TIME_PREKEY_BATCH - status.one_time_left
                    )
                if device.pq and status.kem_left < ONE_TIME_PREKEY_LOW:
                    upload.kem = prekeys.one_time_batch(
                        device, now, kem=True, count=ONE_TIME_PREKEY_BATCH - status.kem_left
                    )
            await tx.put(Table.PREKEYS, records.PREKEYS, prekeys.to_bytes())
            await tx.put(Table.PREKEYS, records.UPKEEP, record.to_bytes())
        return upload

    async def _check_signed(
        self,
        tx: Transaction,
        device: OurDevice,
        prekeys: OurPreKeys,
        record: UpkeepRecord,
        status: KeyStatus,
        refused: frozenset[str],
    ) -> bool:
        """Compare the relay's signed prekey with ours; whether it must be replaced (a
        mismatch is reported in ``tx``)."""
        our_id = prekeys.current_signed
        private = None if our_id is None else prekeys.signed_prekey(our_id)
        our_public = None if private is None else private.public_key
        if SIGNED not in refused and _serves_ours(status.signed_prekey, device, our_id, our_public):
            record.signed, record.signed_pending = status.signed_prekey, False
            return False
        pending = (
            record.signed_pending
            and record.signed is not None
            and record.signed.prekey_id == our_id
            and record.signed.public_key == our_public
        )
        if pending and SIGNED not in refused:
            return False  # uploaded again by the caller
        if our_id is not None:
            logger.warning("the relay does not serve our signed prekey; replacing it")
            await self._emit(tx, KeyCheckMismatch(SIGNED))
        return True

    async def _check_last_resort(
        self,
        tx: Transaction,
        device: OurDevice,
        prekeys: OurPreKeys,
        record: UpkeepRecord,
        status: KeyStatus,
        refused: frozenset[str],
    ) -> bool:
        """Compare the relay's last-resort KEM prekey with ours; whether it must be
        replaced (a mismatch is reported in ``tx``)."""
        our_id = prekeys.current_last_resort
        held = None if our_id is None else prekeys.kem_prekey(our_id)
        our_public = None if held is None else held[0].public_key
        if LAST_RESORT not in refused and _serves_ours(
            status.last_resort, device, our_id, our_public
        ):
            record.last_resort, record.last_resort_pending = status.last_resort, False
            return False
        pending = (
            record.last_resort_pending
            and record.last_resort is not None
            and record.last_resort.prekey_id == our_id
            and record.last_resort.public_key == our_public
        )
        if pending and LAST_RESORT not in refused:
            return False
        if our_id is not None:
            logger.warning("the relay does not serve our last-resort prekey; replacing it")
            await self._emit(tx, KeyCheckMismatch(LAST_RESORT))
        return True

    async def _check_device_list(self, conn: RelayConnection, status: KeyStatus) -> None:
        """If the relay's device-list digest is not our stored own list's, fetch and
        check the relay's list (a newer valid one is accepted; a refused one is
        reported)."""
        device, _ = self._ready_keys()
        stored = await self._stored_list(device.user_id)
        if stored is not None and stored.digest == status.device_list_digest:
            return
        try:
            await self._device_list(conn, device.user_id, refresh=True)
        except IdentityError:
            logger.warning("the relay serves a device list of this account that fails checks")
            async with self._store.transaction() as tx:
                await self._emit(tx, KeyCheckMismatch(DEVICE_LIST))

    # --- state ---------------------------------------------------------------------------

    async def _upkeep_record(self, tx: Transaction) -> UpkeepRecord:
        data = await tx.get(Table.PREKEYS, records.UPKEEP)
        return UpkeepRecord() if data is None else UpkeepRecord.from_bytes(data)

    async def _retention_ttl(self) -> int | None:
        """The relay message TTL superseded keys are kept for (``None``: unknown, and
        superseded keys exist, so nothing expires in this pass). Asked of the relay
        only once there is something superseded to expire."""
        if self._relay_ttl_ms is not None:
            return self._relay_ttl_ms
        async with self._store.transaction() as tx:
            prekeys = await self._prekeys(tx)
        if prekeys.count(PreKeyKind.SIGNED) <= 1 and prekeys.count(PreKeyKind.KEM_LAST_RESORT) <= 1:
            return 0  # nothing superseded: only one-time prekeys can expire
        try:
            config = await fetch_config(self._http_url, ssl=self._ssl, spki_pin=self._spki_pin)
        except TransportError as exc:
            logger.info("relay configuration unavailable (%s)", type(exc).__name__)
            return None
        self._relay_ttl_ms = min(config.message_ttl_ms, MAX_RETENTION_RELAY_TTL_MS)
        return self._relay_ttl_ms
