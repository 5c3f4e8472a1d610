"""Sending: encrypt, persist, send (issue 4 "API", DESIGN 6)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any, Final, NamedTuple

from e2ee.device_list import PeerDevice
from e2ee.errors import E2EEError
from e2ee.identifiers import check_user_id
from e2ee.payload import AttachmentRef, Payload, PayloadType, SyncSent
from e2ee.prekeys import PreKeyBundle, validate_bundle
from e2ee.relay_frames import Accepted, Mismatch, Send, decode_client_frame
from e2ee.session import SessionRecord, start_session

from ..errors import (
    BadSignatureRefused,
    ConnectionFailed,
    DeviceRemoved,
    Disconnected,
    IdempotencyConflict,
    IdentityError,
    MessageQueued,
    RelayRefused,
    RequestTimeout,
    SendFailed,
    StoreCorrupt,
    TooLarge,
    TransportError,
    UnknownUser,
    UsageError,
)
from ..events import NoOneTimePreKey
from ..store import Table, Transaction
from ..transport import RelayConnection
from . import records, sessions
from .base import ClientBase
from .records import OutboxRecord, SentCopyRecord, SentMessageRecord


class _AlreadyCommitted(Exception):
    """Rolls back a ``send`` whose app-chosen id a concurrent call committed first."""

    def __init__(self, earlier: tuple[bytes, bytes | None, OutboxRecord | None]) -> None:
        super().__init__("already committed")
        self.earlier = earlier


__all__ = [
    "MAX_SEND_ATTEMPTS",
    "SEND_RECONNECTS",
    "SENT_RETENTION_MS",
    "SendingMixin",
    "SentCopy",
]

logger = logging.getLogger("client_sdk.client")

MAX_SEND_ATTEMPTS: Final = 3
"""Mismatch rounds for one send: each round refreshes the device lists the relay named;
a third disagreement means the relay and the verified lists keep disagreeing (a race
with device changes, or a relay lying about devices), which the app must see."""
_MSG_ID_SIZE: Final = 16
SEND_RECONNECTS: Final = 2
"""Reconnects ``send`` makes when the connection fails under a committed message."""
SENT_RETENTION_MS: Final = 24 * 60 * 60 * 1000
"""How long a sent message is remembered (with the ratchet key and counter of each of
its ciphertexts) so a retry request can be honoured (docs/sdk.md, "Recovery")."""
_PURGE_INTERVAL_MS: Final = 10 * 60 * 1000
"""The purge of sent messages older than ``SENT_RETENTION_MS`` runs in a send at most
this often (and on every connection)."""
_PURGE_BATCH: Final = 64


class SentCopy(NamedTuple):
    """One ciphertext :meth:`SendingMixin._encrypt` made: the device it is for and the
    (ratchet key, counter) of its message header."""

    user_id: str
    device_id: int
    ratchet_pk: bytes
    counter: int


def reset_key(lookup: bytes) -> bytes:
    """META key of the :class:`~.records.ResetRecord` of the peer device ``lookup``."""
    return records.RESET_PREFIX + lookup


class SendingMixin(ClientBase):
    """``send`` and the outbox."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._sent_purge_due_ms = 0
        """Clock time from which a send purges expired sent-message records."""

    async def send(
        self, user_id: str, body: str | bytes, *, client_msg_id: bytes | None = None
    ) -> bytes:
        """Send ``body`` (text or bytes) to every device of ``user_id`` and, as
        ``sync_sent``, to this user's own other devices; return its client message id
        once the relay accepted it.

        ``client_msg_id`` (16 bytes the app chose and stored *before* calling, e.g.
        ``os.urandom(16)``) makes the call idempotent for 24 hours: calling again with
        the same id, the same recipient and the same body after a crash or an error
        never makes a second message; it delivers the committed one if it still waits
        in the outbox, or returns at once if the relay accepted it. This is how an app
        that was killed during ``send`` finds out what became of the message. Without
        it the SDK picks a random id.

        The ciphertexts and the advanced sessions are committed to the outbox before
        anything is sent. A connection lost while sending is reconnected (with backoff,
        at most ``SEND_RECONNECTS`` times) and the stored bytes are sent again under the
        same id. If the relay still cannot be reached, :class:`MessageQueued` says the
        message is committed and goes on the next connection (do not send it again);
        any other :class:`TransportError` means nothing was committed.

        Raises:
            UsageError: not registered, closed, a bad user id or body, a
                ``client_msg_id`` that is not 16 bytes (or all zero, which is reserved),
                or one already naming another message.
            IdentityError: a device list or bundle failed verification (nothing sent).
            SendFailed: the device sets kept disagreeing (kept in the outbox).
            MessageQueued: committed, but not yet accepted (see above).
            TransportError: the relay refused or could not be reached before anything
                was committed.
        """
        self._ready()
        if not isinstance(body, str | bytes):
            raise UsageError("a message body is str or bytes")
        kind = PayloadType.TEXT if isinstance(body, str) else PayloadType.BYTES
        return await self._send_body(user_id, kind, body, client_msg_id)

    async def _send_body(
        self,
        user_id: str,
        kind: PayloadType,
        body: str | bytes | AttachmentRef,
        client_msg_id: bytes | None,
    ) -> bytes:
        """:meth:`send` of a ``kind`` payload (text, bytes, or an attachment pointer from
        ``send_attachment``): the same steps, guarantees and errors."""
        _, account = self._ready()
        try:
            check_user_id(user_id)
        except E2EEError as exc:
            raise UsageError(str(exc)) from exc
        now = self._clock()
        if client_msg_id is None:
            msg_id = self._rng(_MSG_ID_SIZE)
        elif not isinstance(client_msg_id, bytes) or len(client_msg_id) != _MSG_ID_SIZE:
            raise UsageError(f"client_msg_id is {_MSG_ID_SIZE} bytes")
        elif client_msg_id == bytes(_MSG_ID_SIZE):
            raise UsageError("client_msg_id must not be all zero (reserved)")
        else:
            msg_id = client_msg_id
            async with self._store.transaction() as tx:
                earlier = await self._committed(tx, msg_id, user_id, body)
            if earlier is not None:
                return await self._resume(earlier)
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
        try:
            async with self._peer_locks_held(peers):
                bundles = await self._bundles(conn, [d for ds in plan.values() for d in ds])
                async with self._store.transaction() as tx:
                    if client_msg_id is not None:
                        earlier = await self._committed(tx, msg_id, user_id, body)
                        if earlier is not None:  # a concurrent call with the same id won
                            raise _AlreadyCommitted(earlier)
                    copies: list[SentCopy] = []
                    ciphertexts = await self._encrypt(tx, plan, bundles, payloads, now, sent=copies)
                    frame = Send(msg_id, tuple((u, tuple(ciphertexts[u].items())) for u in users))
                    key = await records.next_counter(tx, records.OUTBOX_NEXT)
                    record = OutboxRecord(msg_id, user_id, payload, own_payload, frame.to_bytes())
                    await tx.put(Table.OUTBOX, key, record.to_bytes())
                    sent = SentMessageRecord(msg_id, now, user_id, payload, own_payload)
                    await self._remember_sent(tx, sent, copies)
                    if now >= self._sent_purge_due_ms:
                        await self._purge_sent(tx, now)
        except _AlreadyCommitted as done:  # rolled back: nothing of this call is kept
            return await self._resume(done.earlier)
        return await self._resume((msg_id, key, record))

    async def _committed(
        self, tx: Transaction, msg_id: bytes, user_id: str, body: str | bytes | AttachmentRef
    ) -> tuple[bytes, bytes | None, OutboxRecord | None] | None:
        """What an earlier ``send`` with the app's ``msg_id`` committed (inside ``tx``):
        ``None`` if none (within the 24 hours sent messages are remembered), else
        ``(msg_id, outbox key, outbox record)``, both ``None`` once the relay accepted.

        Raises:
            UsageError: the id names a message to another user or with another body.
        """
        data = await tx.get(Table.META, records.SENT_MESSAGE_PREFIX + msg_id)
        if data is None:
            return None
        sent = SentMessageRecord.from_bytes(data)
        try:
            same = (
                sent.recipient == user_id
                and Payload.from_bytes(sent.payload, from_own_device=False).body == body
            )
        except E2EEError as exc:
            raise StoreCorrupt("a sent message does not decode", table=Table.META) from exc
        if not same:
            raise UsageError("client_msg_id already names another message")
        for key, value in await tx.scan(Table.OUTBOX):
            record = OutboxRecord.from_bytes(value)
            if record.client_msg_id == msg_id:
                return msg_id, key, record
        return msg_id, None, None

    async def _resume(self, earlier: tuple[bytes, bytes | None, OutboxRecord | None]) -> bytes:
        """Finish a committed ``send``: deliver its outbox entry if it still waits, or
        just return its id (the relay accepted it already).

        Raises:
            MessageQueued: committed, not accepted yet (it goes on the next connection;
                a refusal that may pass, such as a rate limit, also waits there).
            RelayRefused: refused for good (the entry is dropped from the outbox).
        """
        msg_id, key, record = earlier
        if key is None or record is None:
            logger.info("a send with an id already accepted was answered from memory")
            return msg_id
        try:
            # Inside: the message is committed, so a connection that cannot be opened
            # now is MessageQueued too (never an error saying nothing was committed).
            conn = await self._connection()
            await self._deliver_reconnecting(conn, key, record)
        except RelayRefused as exc:
            if _refused_for_good(exc):
                await self._drop_outbox(key, exc)
                raise
            raise MessageQueued(msg_id) from exc  # e.g. rate limited: the next flush
        except TransportError as exc:
            raise MessageQueued(msg_id) from exc
        return msg_id

    async def _drop_outbox(self, key: bytes, exc: RelayRefused) -> None:
        """Delete an outbox entry the relay refuses for good (it would be refused on
        every connection and hold up the entries behind it)."""
        async with self._store.transaction() as tx:
            await tx.delete(Table.OUTBOX, key)
        logger.warning("an outbox message was refused by the relay and dropped: %s", exc.code)

    async def _deliver_reconnecting(
        self, conn: RelayConnection, key: bytes, record: OutboxRecord
    ) -> None:
        """Deliver a committed outbox entry; when the connection fails under it (lost,
        closed for overflow, a request timeout), reconnect with the client's backoff
        and let the new connection's outbox flush deliver it, at most
        ``SEND_RECONNECTS`` times, so a burst of sends or a relay restart does not
        surface as an error the app might answer by sending again.

        Raises:
            TransportError: the relay stayed unreachable (the entry stays in the outbox
                for the next connection), or a refusal reconnecting cannot fix.
        """
        for attempt in range(SEND_RECONNECTS + 1):
            try:
                await self._deliver(conn, key, record)
                return
            except (Disconnected, RequestTimeout, ConnectionFailed) as exc:
                if attempt == SEND_RECONNECTS or isinstance(exc, DeviceRemoved):
                    raise
                logger.info("send interrupted (%s); reconnecting", type(exc).__name__)
                await asyncio.sleep(self._policy.delay_after(exc))
                conn = await self._connection()  # its outbox flush delivers the entry
                async with self._store.transaction() as tx:
                    if await tx.get(Table.OUTBOX, key) is None:
                        return

    async def _bundles(
        self, conn: RelayConnection, devices: Sequence[PeerDevice]
    ) -> dict[tuple[str, int], PreKeyBundle]:
        """Claim and validate a bundle for each device we have no session with, or
        whose session is to be replaced (a :class:`~.records.ResetRecord`: a
        ``reset_session`` or an honoured retry request). A reset device whose bundle
        the relay refuses keeps its current session for this message (the reset waits
        for the next one) instead of failing the send.

        Raises:
            IdentityError: a bundle failed validation.
            TransportError: a claim failed (for a device without a session).
        """
        missing: list[tuple[PeerDevice, bool]] = []
        async with self._store.transaction() as tx:
            for peer in devices:
                lookup = self._store.lookup_key(peer.user_id, peer.device_id)
                data = await tx.get(Table.SESSIONS, lookup)
                if data is None or SessionRecord.from_bytes(data).active is None:
                    missing.append((peer, False))
                elif await tx.get(Table.META, reset_key(lookup)) is not None:
                    missing.append((peer, True))
        bundles: dict[tuple[str, int], PreKeyBundle] = {}
        for peer, reset_only in missing:
            try:
                data = await conn.claim_bundle(peer.user_id, peer.device_id)
            except RelayRefused as exc:
                if not reset_only:
                    raise
                logger.warning("a reset waits: the bundle claim was refused (%s)", exc)
                continue
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
        *,
        sent: list[SentCopy] | None = None,
    ) -> dict[str, dict[int, bytes]]:
        """Encrypt each user's payload for each planned device inside ``tx``, starting
        sessions from ``bundles`` where the store (re-read here, so a session created
        meanwhile is used, never forked) holds none or a reset asks for a new one (the
        old sessions stay, archived, for messages still on their way); the advanced
        sessions are written to ``tx``. With ``sent``, the device, ratchet key and
        counter of every ciphertext are appended to it.

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
                # Without the skipped keys (encrypting never reads them); saving writes
                # the session row and deletes the rows of sessions a new one evicts.
                loaded = await sessions.load(tx, key, skipped=False)
                record = loaded.record
                bundle = bundles.get((peer.user_id, peer.device_id))
                reset = await tx.get(Table.META, reset_key(key)) is not None
                if record is None or record.active is None or (reset and bundle is not None):
                    # (A reset recorded after this send claimed its bundles waits for
                    # the next send: the current session is used meanwhile.)
                    if bundle is None:
                        raise UsageError("no session and no bundle for a device")
                    try:
                        record = start_session(device, peer, bundle, record, now, self._rng)
                    except E2EEError as exc:
                        raise IdentityError(peer.user_id, type(exc).__name__) from exc
                    if bundle.one_time_prekey is None:
                        await self._emit(tx, NoOneTimePreKey(peer.user_id, peer.device_id))
                    if reset:
                        await tx.delete(Table.META, reset_key(key))
                        logger.info("a session was replaced after a reset")
                out[user_id][peer.device_id] = record.encrypt(payloads[user_id], now, self._rng)
                if sent is not None:
                    ratchet = record.sessions[0].ratchet
                    sent.append(
                        SentCopy(
                            peer.user_id,
                            peer.device_id,
                            ratchet.our_ratchet.public_key,
                            ratchet.send_n - 1,
                        )
                    )
                await loaded.save(tx, record)
        return out

    # --- what was sent, for retry requests (docs/sdk.md, "Recovery") ----------------------

    def _copy_key(self, ratchet_pk: bytes, counter: int) -> bytes:
        """META key of the :class:`~.records.SentCopyRecord` of a (ratchet key, counter)."""
        return records.SENT_COPY_PREFIX + self._store.lookup_key(
            records.SENT_COPY_PART, ratchet_pk, counter
        )

    async def _remember_sent(
        self, tx: Transaction, sent: SentMessageRecord, copies: Sequence[SentCopy]
    ) -> None:
        """Record a message just encrypted (inside the transaction that put it in the
        outbox) and, for each of its ciphertexts, which device the (ratchet key,
        counter) of its header belongs to; kept ``SENT_RETENTION_MS``."""
        keys: list[bytes] = []
        for copy in copies:
            key = self._copy_key(copy.ratchet_pk, copy.counter)
            await tx.put(
                Table.META,
                key,
                SentCopyRecord(sent.client_msg_id, copy.user_id, copy.device_id).to_bytes(),
            )
            keys.append(key)
        sent = SentMessageRecord(
            sent.client_msg_id,
            sent.sent_at_ms,
            sent.recipient,
            sent.payload,
            sent.own_payload,
            (*sent.copies, *keys),
            sent.resent_to,
        )
        await tx.put(Table.META, records.SENT_MESSAGE_PREFIX + sent.client_msg_id, sent.to_bytes())
        await tx.put(Table.META, _time_key(sent.sent_at_ms, sent.client_msg_id), b"")

    async def _remember_copies(
        self, tx: Transaction, client_msg_id: bytes, copies: Sequence[SentCopy]
    ) -> None:
        """Add ``copies`` (new ciphertexts of a message sent before) to its sent record,
        if it is still remembered."""
        data = await tx.get(Table.META, records.SENT_MESSAGE_PREFIX + client_msg_id)
        if data is None or not copies:
            return
        sent = SentMessageRecord.from_bytes(data)
        for copy in copies:
            key = self._copy_key(copy.ratchet_pk, copy.counter)
            await tx.put(
                Table.META,
                key,
                SentCopyRecord(client_msg_id, copy.user_id, copy.device_id).to_bytes(),
            )
            sent = SentMessageRecord(
                sent.client_msg_id,
                sent.sent_at_ms,
                sent.recipient,
                sent.payload,
                sent.own_payload,
                (*sent.copies, key),
                sent.resent_to,
            )
        await tx.put(Table.META, records.SENT_MESSAGE_PREFIX + client_msg_id, sent.to_bytes())

    async def _purge_sent(self, tx: Transaction, now: int) -> int:
        """Delete the sent-message records (and their copies) older than
        ``SENT_RETENTION_MS``, oldest first; how many."""
        self._sent_purge_due_ms = now + _PURGE_INTERVAL_MS
        purged = 0
        while True:
            rows = await tx.scan(Table.META, records.SENT_TIME_PREFIX, limit=_PURGE_BATCH)
            for key, _ in rows:
                start = len(records.SENT_TIME_PREFIX)
                sent_at = int.from_bytes(key[start : start + 8], "big")
                if now - sent_at <= SENT_RETENTION_MS:
                    return purged
                msg_key = records.SENT_MESSAGE_PREFIX + key[start + 8 :]
                data = await tx.get(Table.META, msg_key)
                if data is not None:
                    for copy_key in SentMessageRecord.from_bytes(data).copies:
                        await tx.delete(Table.META, copy_key)
                    await tx.delete(Table.META, msg_key)
                await tx.delete(Table.META, key)
                purged += 1
            if len(rows) < _PURGE_BATCH:
                return purged

    async def _deliver(self, conn: RelayConnection, key: bytes, record: OutboxRecord) -> None:
        """Send an outbox entry until the relay accepts it, then delete it.

        One task at a time delivers an entry. A call that finds it being delivered by
        another task (a send, an outbox flush) waits for that delivery, so ``send``
        never returns before the relay accepted. Its outcome is this call's, except a
        transport failure (not a refusal) of a delivery on another connection than
        ``conn``: that says nothing of ``conn``, so the entry, as the outbox holds it
        then, is delivered on ``conn`` (a resend on a new connection never stops at
        the end of the connection before it).

        Raises:
            SendFailed, IdentityError, TransportError: as :meth:`send`.
        """
        while (running := self._inflight.get(key)) is not None:
            running_conn, running_done = running
            try:
                await asyncio.shield(running_done)
                return
            except TransportError as exc:
                if running_conn is conn or isinstance(exc, RelayRefused):
                    raise
            async with self._store.transaction() as tx:
                data = await tx.get(Table.OUTBOX, key)
            if data is None:  # delivered or dropped meanwhile
                return
            record = OutboxRecord.from_bytes(data)
            logger.info("an outbox entry cut off with its connection goes on the current one")
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._inflight[key] = (conn, done)
        try:
            await self._deliver_once(conn, key, record)
        except BaseException as exc:
            if isinstance(exc, Exception):
                done.set_exception(exc)
            else:  # cancelled: the waiters try again themselves
                done.set_exception(TransportError("the delivery was cancelled"))
            done.exception()  # retrieved: no "never retrieved" warning without waiters
            raise
        else:
            done.set_result(None)
        finally:
            del self._inflight[key]

    async def _deliver_once(self, conn: RelayConnection, key: bytes, record: OutboxRecord) -> None:
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
                copies: list[SentCopy] = []
                fresh = await self._encrypt(tx, plan, bundles, payloads, self._clock(), sent=copies)
                await self._remember_copies(tx, record.client_msg_id, copies)
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
            except RelayRefused as exc:
                if not _refused_for_good(exc):
                    logger.info("the outbox waits for the next connection (%s)", exc.code)
                    return  # rate limited, a full queue: later, in order
                await self._drop_outbox(key, exc)


def _refused_for_good(exc: RelayRefused) -> bool:
    """Whether a refusal of a ``Send`` will never change (as opposed to a rate limit, a
    full queue or an unavailable database)."""
    return isinstance(exc, TooLarge | UnknownUser | IdempotencyConflict | BadSignatureRefused)


def _time_key(sent_at_ms: int, client_msg_id: bytes) -> bytes:
    """META key of the age index entry of a sent message."""
    return records.SENT_TIME_PREFIX + sent_at_ms.to_bytes(8, "big") + client_msg_id
