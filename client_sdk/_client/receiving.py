"""Receiving: decrypt, persist, acknowledge, yield (issue 4 "API", DESIGN 6)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Final

from e2ee.attachment import AttachmentPointer
from e2ee.device import OurPreKeys
from e2ee.device_list import PeerDevice
from e2ee.envelope import EnvelopeType, PreKeyEnvelope, envelope_type
from e2ee.errors import DuplicateMessage, E2EEError
from e2ee.payload import AttachmentRef, Payload, PayloadType, SyncSent, UnknownPayloadType
from e2ee.session import SessionRecord, decrypt

from ..errors import (
    ConnectedElsewhere,
    IdentityError,
    StoreCorrupt,
    TransportError,
    UsageError,
)
from ..events import (
    ConnectedElsewhereEvent,
    NoOneTimePreKey,
    ReplayDropped,
    Undecryptable,
    UnknownPayload,
)
from ..store import Table, Transaction
from ..transport import Delivery, PreKeysLowEvent, RelayConnection, RelayEvent
from . import records, sessions
from .base import ClientBase
from .identity import VerificationState, read_verification_state
from .records import InboxRecord

__all__ = ["Message", "ReceivingMixin"]

logger = logging.getLogger("client_sdk.client")


def _needs_prekeys(ciphertext: bytes, record: SessionRecord | None) -> bool:
    """Whether decrypting ``ciphertext`` reads our prekeys: only a pre-key envelope that
    no stored session was created by (``decrypt`` processes the others with their
    session, DESIGN 4.3). A malformed envelope does not (``decrypt`` reports it)."""
    try:
        if envelope_type(ciphertext) is not EnvelopeType.PREKEY:
            return False
        base_key = PreKeyEnvelope.from_bytes(ciphertext).base_key
    except E2EEError:
        return False
    return record is None or record.with_base_key(base_key) is None


class Message:
    """A decrypted message from the inbox.

    Attributes:
        sender_user, sender_device: who sent it (verified: the sending device is in the
            sender's verified device list, and the session authenticates it).
        sender_ts_ms: the sender's own clock when sending (never the relay's).
        relay_ts_ms: when the relay accepted it (the relay's clock, for display only:
            concurrent acceptances may take their times out of order).
        relay_seq: the relay's sequence number of the message in this device's queue:
            the relay delivers in increasing order of it, which is acceptance order
            (DESIGN 5); 0 for a message stored by an older SDK version.
        client_msg_id: the sender's 16 random bytes naming the message.
        body: ``str`` for text, ``bytes`` for a bytes message (``b""`` for an
            attachment).
        attachment: for an attachment message, its pointer (blob id, key, digest and
            size: ``download_attachment`` fetches and decrypts it); ``None`` otherwise.
        sent_to: for a copy of a message one of our own other devices sent
            (``sync_sent``), the user it was sent to; ``None`` otherwise.
        verification: the sender's :class:`VerificationState` when the message is
            yielded: ``VERIFIED`` if the user verified the sender's safety number and
            the sending device is in the pinned list (our own devices always are),
            ``CHANGE_PENDING`` if a change of the sender's verified key is pending,
            ``UNVERIFIED`` otherwise.
    """

    __slots__ = (
        "_client",
        "_key",
        "attachment",
        "body",
        "client_msg_id",
        "relay_seq",
        "relay_ts_ms",
        "sender_device",
        "sender_ts_ms",
        "sender_user",
        "sent_to",
        "verification",
    )

    def __init__(
        self,
        client: ReceivingMixin,
        key: bytes,
        record: InboxRecord,
        payload: Payload,
        body: str | bytes,
        sent_to: str | None,
        verification: VerificationState,
        attachment: AttachmentPointer | None = None,
    ) -> None:
        self._client = client
        self._key = key
        self.sender_user = record.sender_user
        self.sender_device = record.sender_device
        self.relay_ts_ms = record.accepted_at_ms
        self.relay_seq = record.relay_seq
        self.sender_ts_ms = payload.sender_ts_ms
        self.client_msg_id = payload.client_msg_id
        self.body = body
        self.sent_to = sent_to
        self.verification = verification
        self.attachment = attachment

    async def done(self) -> None:
        """Remove the message from the inbox (idempotent): it will not be yielded again.

        Raises:
            StoreClosed: the client was closed.
        """
        async with self._client._store.transaction() as tx:
            await tx.delete(Table.INBOX, self._key)

    def __repr__(self) -> str:
        return (
            f"Message(from={self.sender_user}.{self.sender_device}, "
            f"id={self.client_msg_id.hex()}, sender_ts_ms={self.sender_ts_ms})"
        )


_INBOX_TYPES: Final = (
    PayloadType.TEXT,
    PayloadType.BYTES,
    PayloadType.ATTACHMENT,
    PayloadType.SYNC_SENT,
)
"""The payload types the app sees (``messages()``); the others are the SDK's own."""


def _check_attachment(payload: Payload) -> None:
    """Refuse an attachment payload (or a ``sync_sent`` copy of one) whose pointer
    ``download_attachment`` would refuse (an empty blob id, a size no blob has).

    Raises:
        DecodeError: it does not make an ``AttachmentPointer``.
    """
    body = payload.body
    if isinstance(body, SyncSent):
        body = body.original_body
    if isinstance(body, AttachmentRef):
        AttachmentPointer.from_ref(body)


async def _seq_window(tx: Transaction) -> records.SeqWindow:
    """The relay sequence numbers this device processed.

    Raises:
        StoreCorrupt: the stored record does not decode.
    """
    return records.SeqWindow.from_bytes(await tx.get(Table.META, records.LAST_SEQ))


class _MessageStream:
    """``async for message in client.messages()``: each step first marks the message
    yielded before as done (the loop body completed), then yields the next one. A newer
    ``messages()`` call supersedes this one (a loop left with ``break`` cannot be
    detected, so the newest loop owns the inbox and re-yields what was not done)."""

    def __init__(self, client: ReceivingMixin) -> None:
        self._client = client
        self._current: Message | None = None

    def __aiter__(self) -> _MessageStream:
        return self

    async def __anext__(self) -> Message:
        client = self._client
        if client._stream is not self:
            raise UsageError("this messages() loop was superseded by a newer one")
        if self._current is not None:
            current, self._current = self._current, None
            await current.done()
        async with client._receive_lock:
            message = await client._next_message()
        if message is None:
            raise StopAsyncIteration
        self._current = message
        return message


class ReceivingMixin(ClientBase):
    """``messages()`` and the inbox."""

    def messages(self) -> AsyncIterator[Message]:
        """``async for message in client.messages():`` every received message, oldest
        first: first those left in the inbox (yielded but not done before a restart),
        then new ones as they arrive. A message leaves the inbox on
        :meth:`Message.done` or when the loop asks for the next one; leaving the loop
        (``break``, an exception) keeps it, so the next ``messages()`` loop (in this
        process or after a restart) yields it again. The iteration ends when the client
        is closed. One loop at a time: a new ``messages()`` supersedes the previous.

        Raises:
            UsageError: not registered; (from a step) a newer ``messages()`` loop
                superseded this one.
            DeviceRemoved, AuthFailed, PinMismatch, NoCommonVersion, ConnectedElsewhere:
                reconnecting cannot help.
        """
        self._ready()
        self._stream = _MessageStream(self)
        return self._stream

    async def _next_message(self) -> Message | None:
        while not self._closed:
            message = await self._first_inbox()
            if message is not None:
                return message
            step = await self._next_event()
            if step is None:
                break
            conn, event = step
            if isinstance(event, Delivery):
                try:
                    await self._receive(conn, event)
                except TransportError as exc:
                    # Not acknowledged: the relay delivers it again on the next
                    # connection (and a committed one then decrypts as a duplicate).
                    logger.info("a delivery waits for the next connection (%s)", type(exc).__name__)
            elif isinstance(event, PreKeysLowEvent):
                await self._on_prekeys_low(conn, event)
        return None

    async def _first_inbox(self) -> Message | None:
        async with self._store.transaction() as tx:
            rows = await tx.scan(Table.INBOX, limit=1)
            if not rows:
                return None
            key, value = rows[0]
            record = InboxRecord.from_bytes(value)
            verification = await read_verification_state(
                self._store,
                tx,
                record.sender_user,
                record.sender_device,
                own_user_id=self.user_id,
            )
        try:
            payload = Payload.from_bytes(
                record.payload, from_own_device=record.sender_user == self.user_id
            )
        except E2EEError as exc:  # pragma: no cover - checked before it was stored
            raise StoreCorrupt("an inbox payload does not decode", table="inbox") from exc
        body: object = payload.body
        sent_to = None
        if isinstance(body, SyncSent):
            sent_to = body.destination_user
            body = body.original_body
        attachment = None
        if isinstance(body, AttachmentRef):
            try:
                attachment = AttachmentPointer.from_ref(body)
            except E2EEError as exc:  # pragma: no cover - checked before it was stored
                raise StoreCorrupt("an inbox attachment does not decode", table="inbox") from exc
            body = b""
        if not isinstance(body, str | bytes):  # pragma: no cover - filtered on receipt
            raise StoreCorrupt("an inbox payload of an unsupported type", table="inbox")
        return Message(self, key, record, payload, body, sent_to, verification, attachment)

    async def _next_event(self) -> tuple[RelayConnection, RelayEvent] | None:
        """The next relay event, reconnecting with backoff when the connection ends;
        ``None`` once the client is closed."""
        while not self._closed:
            try:
                conn = await self._connection()
                if self._events is None or self._events_conn is not conn:
                    previous = self._events_conn
                    if previous is not None and previous is not conn:
                        # Another call reconnected first: the takeover that ended the
                        # previous connection is recorded all the same.
                        ended = await previous.wait_closed()
                        if isinstance(ended, ConnectedElsewhere):
                            await self._connected_elsewhere(previous)
                    self._events, self._events_conn = conn.events(), conn
                return conn, await anext(self._events)
            except StopAsyncIteration:
                self._events = None
            except UsageError:
                if self.closed:
                    return None
                raise
            except TransportError as exc:
                self._events = None
                if isinstance(exc, ConnectedElsewhere) and self._events_conn is not None:
                    await self._connected_elsewhere(self._events_conn)
                delay = self._policy.delay_after(exc)
                logger.info("relay connection lost (%s); retrying", type(exc).__name__)
                await asyncio.sleep(delay)
        return None

    async def _connected_elsewhere(self, conn: RelayConnection) -> None:
        """Record (once per connection) that another connection took over this device
        and ended ``conn``; the event says whether the client reconnects (at most
        ``ELSEWHERE_LIMIT`` times in ten minutes) or gives up (``messages()`` then
        raises ``ConnectedElsewhere``)."""
        if self._elsewhere_reported is conn:
            return
        self._elsewhere_reported = conn
        reconnecting = self._policy.elsewhere_allowed()
        async with self._store.transaction() as tx:
            await self._emit(tx, ConnectedElsewhereEvent(reconnecting=reconnecting))

    async def _sender(
        self, conn: RelayConnection, user_id: str, device_id: int
    ) -> PeerDevice | None:
        """The sending device from its user's verified list (refreshed once when the
        device is not in the stored one); ``None`` if it is not listed."""
        stored = await self._stored_list(user_id)
        if stored is not None:
            peer = stored.statement.peer(device_id)
            if peer is not None:
                return peer
        fresh = await self._device_list(conn, user_id, refresh=True)
        return fresh.statement.peer(device_id)

    async def _receive(self, conn: RelayConnection, delivery: Delivery) -> None:
        """Decrypt, persist, acknowledge (DESIGN 6). What cannot be decrypted is
        reported (:meth:`_undecryptable`) and a duplicate is dropped
        (:meth:`_duplicate`), both in the transaction that would have stored the
        message; then the relay is acknowledged."""
        device, _ = self._ready_keys()
        user, dev = delivery.sender_user, delivery.sender_device
        try:
            sender = await self._sender(conn, user, dev)
        except IdentityError:
            sender = None
        lookup = self._store.lookup_key(user, dev)
        now = self._clock()
        async with self._peer_locks_held([lookup]), self._store.transaction() as tx:
            # With the skipped keys (rows of their own, sessions.py): only decryption
            # reads or changes them.
            loaded = await sessions.load(tx, lookup, skipped=True)
            record = loaded.record
            # Decoding the prekeys rebuilds every held ML-KEM key (about 10 ms): only a
            # pre-key message that starts a session reads them; others get an empty set.
            needed = _needs_prekeys(delivery.ciphertext, record)
            prekeys = await self._prekeys(tx) if needed else OurPreKeys()
            try:
                result = decrypt(device, prekeys, record, sender, delivery.ciphertext, now)
            except DuplicateMessage:
                await self._duplicate(tx, delivery)
                result = None
            except E2EEError as exc:
                logger.warning("undecryptable message: %s", type(exc).__name__)
                await self._undecryptable(tx, delivery, exc)
                result = None
            if result is not None:
                await loaded.save(tx, result.record)
                if result.prekey_use is not None:
                    result.commit_prekeys(prekeys)
                    await tx.put(Table.PREKEYS, records.PREKEYS, prekeys.to_bytes())
                if result.no_one_time_prekey:
                    await self._emit(tx, NoOneTimePreKey(user, dev))
                await self._store_payload(tx, delivery, lookup, result.plaintext)
            window = await _seq_window(tx)
            window.mark(delivery.seq)
            await tx.put(Table.META, records.LAST_SEQ, window.to_bytes())
        await conn.ack([delivery.seq])

    async def _duplicate(self, tx: Transaction, delivery: Delivery) -> None:
        """A message already received arrived again (inside its transaction). Under a
        relay sequence number this device already processed, it is the relay's
        redelivery of a message whose acknowledgement was lost (a dropped connection, a
        crash before the ack left): dropped silently. Under a new sequence number the
        relay queued it again, which an honest relay never does: ``ReplayDropped``."""
        if (await _seq_window(tx)).processed(delivery.seq):
            logger.info("a redelivery of a processed message was dropped")
            return
        logger.warning("a replayed message was dropped")
        await self._emit(tx, ReplayDropped(delivery.sender_user, delivery.sender_device))

    async def _on_prekeys_low(self, conn: RelayConnection, event: PreKeysLowEvent) -> None:
        """The relay says this device's one-time prekeys run low (upkeep refills)."""
        logger.info("the relay's prekeys for this device run low")

    async def _undecryptable(self, tx: Transaction, delivery: Delivery, exc: E2EEError) -> None:
        """Report a message that could not be decrypted (inside the transaction that
        acknowledges it)."""
        await self._emit(
            tx, Undecryptable(delivery.sender_user, delivery.sender_device, type(exc).__name__)
        )

    async def _store_payload(
        self, tx: Transaction, delivery: Delivery, lookup: bytes, plaintext: bytes
    ) -> None:
        user, dev = delivery.sender_user, delivery.sender_device
        own = user == self.user_id
        try:
            payload = Payload.from_bytes(plaintext, from_own_device=own)
            _check_attachment(payload)
        except UnknownPayloadType as exc:
            logger.warning("a payload of an unknown type was dropped")
            await self._emit(tx, UnknownPayload(user, dev, exc.payload_type))
            return
        except E2EEError as exc:
            logger.warning("a decrypted payload was refused: %s", type(exc).__name__)
            await self._emit(tx, Undecryptable(user, dev, type(exc).__name__))
            return
        dedupe = lookup + payload.client_msg_id
        if await tx.get(Table.DEDUPE, dedupe) is not None:
            await self._duplicate(tx, delivery)
            return
        await tx.put(Table.DEDUPE, dedupe, delivery.accepted_at_ms.to_bytes(8, "big"))
        if payload.type in _INBOX_TYPES:
            key = await records.next_counter(tx, records.INBOX_NEXT)
            inbox = InboxRecord(user, dev, plaintext, delivery.accepted_at_ms, delivery.seq)
            await tx.put(Table.INBOX, key, inbox.to_bytes())
        else:
            await self._control_payload(tx, delivery, payload)

    async def _control_payload(self, tx: Transaction, delivery: Delivery, payload: Payload) -> None:
        """A payload the SDK acts on instead of showing it (retry requests, device list
        notices, ...), inside the transaction that stores its dedupe record."""
        logger.info("a %s payload was dropped (not handled yet)", payload.type.name)
