"""Sending: encrypt, persist, send (issue 4 "API", DESIGN 6)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Final

from e2ee.device_list import PeerDevice
from e2ee.errors import E2EEError
from e2ee.identifiers import check_user_id
from e2ee.payload import Payload, PayloadType, SyncSent
from e2ee.prekeys import PreKeyBundle, validate_bundle
from e2ee.relay_frames import Accepted, Mismatch, Send, decode_client_frame
from e2ee.session import SessionRecord, start_session

from ..errors import IdentityError, SendFailed, StoreCorrupt, UsageError
from ..events import NoOneTimePreKey
from ..store import Table, Transaction
from ..transport import RelayConnection
from . import records
from .base import ClientBase
from .records import OutboxRecord

__all__ = ["MAX_SEND_ATTEMPTS", "SendingMixin"]

logger = logging.getLogger("client_sdk.client")

MAX_SEND_ATTEMPTS: Final = 3
"""Mismatch rounds for one send: each round refreshes the device lists the relay named;
a third disagreement means the relay and the verified lists keep disagreeing (a race
with device changes, or a relay lying about devices), which the app must see."""
_MSG_ID_SIZE: Final = 16


class SendingMixin(ClientBase):
    """``send`` and the outbox."""

    async def send(self, user_id: str, body: str | bytes) -> bytes:
        """Send ``body`` (text or bytes) to every device of ``user_id`` and, as
        ``sync_sent``, to this user's own other devices; return its client message id
        once the relay accepted it.

        The ciphertexts and the advanced sessions are committed to the outbox before
        anything is sent. If this raises a :class:`TransportError`, the message stays in
        the outbox and is resent (the same bytes) on the next connection.

        Raises:
            UsageError: not registered, closed, a bad user id or body.
            IdentityError: a device list or bundle failed verification (nothing sent).
            SendFailed: the device sets kept disagreeing (kept in the outbox).
            TransportError: the relay refused or could not be reached.
        """
        _, account = self._ready()
        if not isinstance(body, str | bytes):
            raise UsageError("a message body is str or bytes")
        try:
            check_user_id(user_id)
        except E2EEError as exc:
            raise UsageError(str(exc)) from exc
        now = self._clock()
        msg_id = self._rng(_MSG_ID_SIZE)
        kind = PayloadType.TEXT if isinstance(body, str) else PayloadType.BYTES
        try:
            payload = Payload(kind, msg_id, now, body).to_bytes()
            own_payload = (
                payload
                if user_id == account.user_id
                else Payload(
                    PayloadType.SYNC_SENT, msg_id, now, SyncSent(user_id, msg_id, kind, body)
                ).to_bytes()
            )
        except E2EEError as exc:
            raise UsageError(f"the message cannot be sent: {exc}") from exc
        conn = await self._connection()
        users = [user_id] if user_id == account.user_id else [user_id, account.user_id]
        lists = {u: await self._device_list(conn, u) for u in users}
        plan = {u: self._targets(lists[u]) for u in users}
        payloads = {user_id: payload, account.user_id: own_payload}
        key = b""
        peers = [self._store.lookup_key(d.user_id, d.device_id) for ds in plan.values() for d in ds]
        # Bundles are claimed under the peer locks (DESIGN 6: the lock covers session
        # creation): concurrent sends to a new device claim one bundle, not one each.
        async with self._peer_locks_held(peers):
            bundles = await self._bundles(conn, [d for ds in plan.values() for d in ds])
            async with self._store.transaction() as tx:
                ciphertexts = await self._encrypt(tx, plan, bundles, payloads, now)
                frame = Send(msg_id, tuple((u, tuple(ciphertexts[u].items())) for u in users))
                key = await records.next_counter(tx, records.OUTBOX_NEXT)
                record = OutboxRecord(msg_id, user_id, payload, own_payload, frame.to_bytes())
                await tx.put(Table.OUTBOX, key, record.to_bytes())
        await self._deliver(conn, key, record)
        return msg_id

    async def _bundles(
        self, conn: RelayConnection, devices: Sequence[PeerDevice]
    ) -> dict[tuple[str, int], PreKeyBundle]:
        """Claim and validate a bundle for each device we have no session with."""
        missing: list[PeerDevice] = []
        async with self._store.transaction() as tx:
            for peer in devices:
                data = await tx.get(
                    Table.SESSIONS, self._store.lookup_key(peer.user_id, peer.device_id)
                )
                if data is None or SessionRecord.from_bytes(data).active is None:
                    missing.append(peer)
        bundles: dict[tuple[str, int], PreKeyBundle] = {}
        for peer in missing:
            data = await conn.claim_bundle(peer.user_id, peer.device_id)
            try:
                bundle = PreKeyBundle.from_bytes(data)
                validate_bundle(bundle, peer, self._clock())
            except E2EEError as exc:
                logger.warning("a bundle was refused: %s", type(exc).__name__)
                raise IdentityError(peer.user_id, type(exc).__name__) from exc
            bundles[(peer.user_id, peer.device_id)] = bundle
        return bundles

    async def _encrypt(
        self,
        tx: Transaction,
        plan: dict[str, list[PeerDevice]],
        bundles: dict[tuple[str, int], PreKeyBundle],
        payloads: dict[str, bytes],
        now: int,
    ) -> dict[str, dict[int, bytes]]:
        """Encrypt each user's payload for each planned device inside ``tx``, starting
        sessions from ``bundles`` where the store (re-read here, so a session created
        meanwhile is used, never forked) holds none; the advanced sessions are written
        to ``tx``.

        Raises:
            IdentityError: a session could not be started from the bundle.
            UsageError: no session and no bundle for a device (a race with a reset).
        """
        device, _ = self._ready_keys()
        out: dict[str, dict[int, bytes]] = {}
        for user_id, peers in plan.items():
            out[user_id] = {}
            for peer in peers:
                key = self._store.lookup_key(peer.user_id, peer.device_id)
                data = await tx.get(Table.SESSIONS, key)
                record = None if data is None else SessionRecord.from_bytes(data)
                if record is None or record.active is None:
                    bundle = bundles.get((peer.user_id, peer.device_id))
                    if bundle is None:
                        raise UsageError("no session and no bundle for a device")
                    try:
                        record = start_session(device, peer, bundle, record, now, self._rng)
                    except E2EEError as exc:
                        raise IdentityError(peer.user_id, type(exc).__name__) from exc
                    if bundle.one_time_prekey is None:
                        await self._emit(tx, NoOneTimePreKey(peer.user_id, peer.device_id))
                out[user_id][peer.device_id] = record.encrypt(payloads[user_id], now, self._rng)
                await tx.put(Table.SESSIONS, key, record.to_bytes())
        return out

    async def _deliver(self, conn: RelayConnection, key: bytes, record: OutboxRecord) -> None:
        """Send an outbox entry until the relay accepts it, then delete it.

        Raises:
            SendFailed, IdentityError, TransportError: as :meth:`send`.
        """
        if key in self._inflight:
            return
        self._inflight.add(key)
        try:
            for _ in range(MAX_SEND_ATTEMPTS):
                frame = decode_client_frame(record.frame)
                if not isinstance(frame, Send):
                    raise StoreCorrupt("an outbox entry is not a Send frame", table="outbox")
                result = await conn.send(frame.client_msg_id, frame.addressed)
                if isinstance(result, Accepted):
                    async with self._store.transaction() as tx:
                        await tx.delete(Table.OUTBOX, key)
                    return
                record = await self._readdress(conn, key, record, frame, result)
            raise SendFailed(record.client_msg_id)
        finally:
            self._inflight.discard(key)

    async def _readdress(
        self,
        conn: RelayConnection,
        key: bytes,
        record: OutboxRecord,
        frame: Send,
        mismatch: Mismatch,
    ) -> OutboxRecord:
        """After a ``Mismatch`` (the relay stored nothing): refresh the named users'
        device lists, keep the stored ciphertext of every device still listed (the
        same bytes: nothing is re-encrypted), drop those of devices no longer listed,
        encrypt only for the devices that are new, and commit the new frame to the
        outbox under the same client message id before it is sent."""
        _, account = self._ready_keys()
        for user in mismatch.users:
            await self._device_list(conn, user.user_id, refresh=True)
        plan: dict[str, list[PeerDevice]] = {}
        kept: dict[str, dict[int, bytes]] = {}
        for user_id, devices in frame.addressed:
            stored = await self._stored_list(user_id)
            if stored is None:  # pragma: no cover - lists are stored before sending
                raise UsageError("no device list for an addressed user")
            listed = {d.device_id: d for d in self._targets(stored)}
            kept[user_id] = {d: ct for d, ct in devices if d in listed}
            plan[user_id] = [p for d, p in listed.items() if d not in kept[user_id]]
        payloads = {record.recipient: record.payload, account.user_id: record.own_payload}
        peers = [self._store.lookup_key(d.user_id, d.device_id) for ds in plan.values() for d in ds]
        async with self._peer_locks_held(peers):
            bundles = await self._bundles(conn, [d for ds in plan.values() for d in ds])
            async with self._store.transaction() as tx:
                fresh = await self._encrypt(tx, plan, bundles, payloads, self._clock())
                addressed = tuple(
                    (u, tuple(sorted({**kept[u], **fresh[u]}.items()))) for u, _ in frame.addressed
                )
                updated = OutboxRecord(
                    record.client_msg_id,
                    record.recipient,
                    record.payload,
                    record.own_payload,
                    Send(record.client_msg_id, addressed).to_bytes(),
                )
                await tx.put(Table.OUTBOX, key, updated.to_bytes())
        logger.info("message readdressed after a device mismatch")
        return updated

    async def _flush_outbox(self, conn: RelayConnection) -> None:
        """Resend every outbox entry (stored bytes, same ids), oldest first."""
        async with self._store.transaction() as tx:
            pending = await tx.scan(Table.OUTBOX)
        for key, value in pending:
            try:
                await self._deliver(conn, key, OutboxRecord.from_bytes(value))
            except (SendFailed, IdentityError) as exc:
                logger.warning("an outbox message could not be delivered: %s", exc)
