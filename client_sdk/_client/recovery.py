"""Recovery from undecryptable messages: retry requests, resends, missing messages and
``reset_session`` (issue 4 "Recovery"; docs/sdk.md, "Recovery").

**Receiver.** A message that does not decrypt is reported (``Undecryptable``, one event
per message) and, in the same store transaction, a retry request is queued for the
sending device: a ``retry_request`` payload ``{client_msg_id, device_id, ratchet_pk,
counter}`` where ``ratchet_pk`` and ``counter`` come from the envelope's header (read
without decrypting), ``device_id`` names the device asked to resend (the relay takes a
message only when it addresses every device of a user, so the request goes to all of
them and the others ignore it) and ``client_msg_id`` is :data:`UNKNOWN_MSG_ID` (16
zero bytes: the receiver cannot know the id of a message it could not read). At most
one request is sent per (peer device, ratchet key, counter) and at most one per peer
device per hour; none for an envelope whose header does not parse, for a reflected
message, or for a sender its own device list does not hold. The queued request is sent
after the transaction (through the outbox), or on the next connection after a crash.

A gap in a peer device's counters (a skipped message key) not filled within 24 hours is
reported once as ``MessagesMissing(user, device, count)`` and a retry request is sent
for the oldest missing message (same limits), by a check that runs on every connection
and at most hourly in the ``messages()`` loop.

**Sender.** Every message sent is remembered for 24 hours with the (ratchet key,
counter) of each of its ciphertexts (``sending.py``). A retry request is honoured only
if it names a ciphertext this device made for exactly the requesting device, less than
24 hours ago, not resent to that device yet, and no new session was started with that
device in the last hour; the message is then re-encrypted, with its original client
message id and time, for that one device on a *new* session (a freshly claimed bundle),
which is how the conversation recovers. Anything else is dropped with
``RetryRequestDropped(user, device, reason)``: ``unknown``, ``not_addressed``,
``too_old``, ``already_resent``, ``session_limit``. The user's other devices, which the
relay also wants addressed, get a ``device_list_notice`` naming this account's current
list version (nothing to show, nothing of the message).

``reset_session`` makes the next message to a device start a new session from a fresh
bundle (the old sessions stay, archived, for messages already on their way).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace
from typing import Any, Final

from e2ee.envelope import EnvelopeType, MessageEnvelope, PreKeyEnvelope, envelope_type
from e2ee.errors import DowngradeError, E2EEError, ReflectedMessage, UntrustedIdentity
from e2ee.identifiers import DEVICE_ID_MAX, check_user_id
from e2ee.payload import DeviceListNotice, Payload, PayloadType, RetryRequest
from e2ee.relay_frames import Send

from ..errors import IdentityError, SendFailed, SessionResetTooSoon, TransportError, UsageError
from ..events import MessagesMissing, RetryRequestDropped
from ..store import Table, Transaction
from ..transport import Delivery, RelayConnection
from . import records
from . import sessions as session_rows
from .base import decode_stored_list
from .receiving import ReceivingMixin
from .records import (
    OutboxRecord,
    PeerRecoveryRecord,
    ResendJobRecord,
    ResetRecord,
    RetryJobRecord,
    SentCopyRecord,
    SentMessageRecord,
)
from .sending import SENT_RETENTION_MS, SendingMixin, SentCopy, reset_key

__all__ = [
    "MISSING_AFTER_MS",
    "NEW_SESSION_INTERVAL_MS",
    "RETRY_REQUEST_INTERVAL_MS",
    "UNKNOWN_MSG_ID",
    "RecoveryMixin",
    "failed_header",
]

logger = logging.getLogger("client_sdk.client")

_HOUR_MS: Final = 60 * 60 * 1000
UNKNOWN_MSG_ID: Final = bytes(16)
"""The ``client_msg_id`` of a retry request whose message could not be read: unknown.
A request naming another id is honoured only if it is the id of the message its
(ratchet key, counter) belongs to."""
NEW_SESSION_INTERVAL_MS: Final = _HOUR_MS
"""At most one new session per peer device in this time, whether started by an
honoured retry request or by ``reset_session`` (which ``force`` overrides)."""
RETRY_REQUEST_INTERVAL_MS: Final = _HOUR_MS
"""At most one retry request sent to a peer device in this time."""
MISSING_AFTER_MS: Final = 24 * _HOUR_MS
"""A skipped message key older than this is a missing message."""
_MISSING_CHECK_INTERVAL_MS: Final = _HOUR_MS
_NO_RETRY: Final = (ReflectedMessage, UntrustedIdentity, DowngradeError)
"""Failures no resend can cure: our own message reflected back, a sender its device
list does not hold, a downgrade attempt."""
_MSG_ID_SIZE: Final = 16


def failed_header(ciphertext: bytes) -> tuple[bytes, int] | None:
    """``(ratchet key, counter)`` of the message header of an envelope (of the message
    inside a pre-key envelope), read without decrypting; ``None`` if it does not parse."""
    try:
        if envelope_type(ciphertext) is EnvelopeType.MESSAGE:
            message = MessageEnvelope.from_bytes(ciphertext)
        else:
            message = PreKeyEnvelope.from_bytes(ciphertext).message
    except E2EEError:
        return None
    return message.ratchet_pk, message.n


class RecoveryMixin(SendingMixin, ReceivingMixin):
    """See the module documentation."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._recovery_lock = asyncio.Lock()
        """One flush of the queued retry requests and resends at a time."""
        self._recovery_due = False
        """A retry request or a resend was queued since the last flush."""
        self._missing_check_due_ms = 0
        """Clock time from which the ``messages()`` loop checks for missing messages."""

    # --- the API -----------------------------------------------------------------------------

    async def reset_session(
        self, user_id: str, device_id: int | None = None, force: bool = False
    ) -> tuple[int, ...]:
        """Make the next message to ``user_id``'s device ``device_id`` (every device of
        that user's verified list when ``None``) start a new session from a freshly
        claimed prekey bundle, for what the automatic recovery cannot fix (a peer that
        lost its state and does not ask). The current sessions are archived, not
        deleted, when the new one starts: messages already on their way still decrypt.
        Returns the device ids reset.

        Without ``force`` it refuses when a session with one of those devices was reset
        (by this call or by an honoured retry request) less than an hour ago.

        Raises:
            UsageError: not registered, closed, a bad argument, no stored device list of
                the user (no session to reset), or ``device_id`` not in it.
            SessionResetTooSoon: a reset of that device within the last hour (nothing
                was changed).
        """
        self._ready()
        try:
            check_user_id(user_id)
        except E2EEError as exc:
            raise UsageError(str(exc)) from exc
        if device_id is not None and (
            type(device_id) is not int or not 0 <= device_id <= DEVICE_ID_MAX
        ):
            raise UsageError("device_id is a 32-bit device id or None")
        if type(force) is not bool:
            raise UsageError("force is a bool")
        stored = await self._stored_list(user_id)
        if stored is None:
            raise UsageError("no device list of this user is stored: no session to reset")
        targets = self._targets(stored)
        if device_id is not None:
            targets = [p for p in targets if p.device_id == device_id]
        if not targets:
            raise UsageError("the device is not in the user's verified device list")
        now = self._clock()
        lookups = {p.device_id: self._store.lookup_key(user_id, p.device_id) for p in targets}
        async with self._peer_locks_held(lookups.values()), self._store.transaction() as tx:
            states = {
                d: await PeerRecoveryRecord.load(tx, records.PEER_RECOVERY_PREFIX + lookup)
                for d, lookup in lookups.items()
            }
            if not force:
                for d, state in states.items():
                    last = state.last_new_session_ms
                    if last is not None and now - last < NEW_SESSION_INTERVAL_MS:
                        raise SessionResetTooSoon(
                            user_id, d, NEW_SESSION_INTERVAL_MS - (now - last)
                        )
            for d, lookup in lookups.items():
                await tx.put(Table.META, reset_key(lookup), ResetRecord(now).to_bytes())
                state = replace(states[d], last_new_session_ms=now)
                await tx.put(Table.META, records.PEER_RECOVERY_PREFIX + lookup, state.to_bytes())
        logger.info("sessions reset with %d device(s)", len(lookups))
        return tuple(lookups)

    # --- hooks -------------------------------------------------------------------------------

    async def _after_connect(self, conn: RelayConnection) -> None:
        await super()._after_connect(conn)
        await self._recovery_pass(conn, on_connect=True)

    async def _receive(self, conn: RelayConnection, delivery: Delivery) -> None:
        await super()._receive(conn, delivery)
        if (self._recovery_due or self._clock() >= self._missing_check_due_ms) and conn.is_open:
            await self._recovery_pass(conn, on_connect=False)

    async def _undecryptable(self, tx: Transaction, delivery: Delivery, exc: E2EEError) -> None:
        await super()._undecryptable(tx, delivery, exc)
        if isinstance(exc, _NO_RETRY):
            return
        header = failed_header(delivery.ciphertext)
        if header is None:
            logger.info("no retry request: the envelope header does not parse")
            return
        ratchet_pk, counter = header
        await self._request_retry(
            tx, delivery.sender_user, delivery.sender_device, ratchet_pk, counter, self._clock()
        )

    async def _control_payload(self, tx: Transaction, delivery: Delivery, payload: Payload) -> None:
        body = payload.body
        if payload.type is not PayloadType.RETRY_REQUEST or not isinstance(body, RetryRequest):
            await super()._control_payload(tx, delivery, payload)
            return
        device, _ = self._ready_keys()
        if body.device_id != device.device_id:
            # Sent to every device of this account (the relay wants them all): it asks
            # another of them.
            logger.debug("a retry request for another of our devices was ignored")
            return
        reason = await self._consider_retry_request(tx, delivery, body, self._clock())
        if reason is not None:
            logger.info("a retry request was dropped: %s", reason)
            await self._emit(
                tx, RetryRequestDropped(delivery.sender_user, delivery.sender_device, reason)
            )

    # --- the receiver's side -------------------------------------------------------------------

    async def _request_retry(
        self,
        tx: Transaction,
        user_id: str,
        device_id: int,
        ratchet_pk: bytes,
        counter: int,
        now: int,
    ) -> bool:
        """Queue a retry request to ``user_id``'s device ``device_id`` for the message
        with this (ratchet key, counter), inside ``tx``, unless one was sent for it
        already or one was sent to that device in the last hour; whether it was queued."""
        state_key = records.PEER_RECOVERY_PREFIX + self._store.lookup_key(user_id, device_id)
        state = await PeerRecoveryRecord.load(tx, state_key)
        name = ratchet_pk + counter.to_bytes(4, "big")
        if name in state.requested:
            logger.info("no retry request: one was sent for this message already")
            return False
        last = state.last_request_ms
        if last is not None and now - last < RETRY_REQUEST_INTERVAL_MS:
            logger.info("no retry request: one was sent to this device in the last hour")
            return False
        await tx.put(Table.META, state_key, state.requesting(name, now).to_bytes())
        job = RetryJobRecord(user_id, device_id, ratchet_pk, counter, UNKNOWN_MSG_ID)
        job_key = records.RETRY_JOB_PREFIX + await records.next_counter(tx, records.RECOVERY_NEXT)
        await tx.put(Table.META, job_key, job.to_bytes())
        self._recovery_due = True
        return True

    async def _check_missing(self, now: int) -> None:
        """Report each gap in a peer device's counters older than ``MISSING_AFTER_MS``
        once (``MessagesMissing``) and queue a retry request for its oldest missing
        message (subject to :meth:`_request_retry`'s limits)."""
        self._missing_check_due_ms = now + _MISSING_CHECK_INTERVAL_MS
        device, _ = self._ready_keys()
        cutoff = now - MISSING_AFTER_MS
        async with self._store.transaction() as tx:
            for _, value in await tx.scan(Table.PEER_DEVICE_LISTS):
                signed = decode_stored_list(value)
                if signed is None:  # pragma: no cover - scan yields values
                    continue
                user_id = signed.statement.user_id
                for entry in signed.statement.devices:
                    if user_id == device.user_id and entry.device_id == device.device_id:
                        continue
                    lookup = self._store.lookup_key(user_id, entry.device_id)
                    loaded = await session_rows.load(tx, lookup, skipped=True)
                    if loaded.record is None:
                        continue
                    state_key = records.PEER_RECOVERY_PREFIX + lookup
                    state = await PeerRecoveryRecord.load(tx, state_key)
                    since = state.missing_reported_until_ms
                    missing = sorted(
                        (at, ratchet_pk, n)
                        for session in loaded.record.sessions
                        for (ratchet_pk, n), (_, at) in session.ratchet.skipped.items()
                        if at <= cutoff and (since is None or at > since)
                    )
                    if not missing:
                        continue
                    logger.warning("%d message(s) from a peer device are missing", len(missing))
                    await self._emit(tx, MessagesMissing(user_id, entry.device_id, len(missing)))
                    state = replace(state, missing_reported_until_ms=cutoff)
                    await tx.put(Table.META, state_key, state.to_bytes())
                    _, ratchet_pk, n = missing[0]
                    await self._request_retry(tx, user_id, entry.device_id, ratchet_pk, n, now)

    async def _send_retry_request(
        self,
        conn: RelayConnection,
        user_id: str,
        request: RetryRequest,
        job_key: bytes | None = None,
    ) -> None:
        """Send ``request`` to every device of ``user_id``'s verified list (it names the
        one asked to resend) through the outbox; ``job_key`` (the queued job) is deleted
        in the transaction that commits it to the outbox.

        Raises:
            IdentityError: the device list failed verification.
            SendFailed, TransportError: as ``send`` (the outbox keeps it).
        """
        signed = await self._device_list(conn, user_id)
        targets = self._targets(signed)
        if not any(p.device_id == request.device_id for p in targets):
            logger.info("a retry request for a device no longer listed was dropped")
            await self._drop_job(job_key)
            return
        now = self._clock()
        payload = Payload(
            PayloadType.RETRY_REQUEST, self._rng(_MSG_ID_SIZE), now, request
        ).to_bytes()
        msg_id = self._rng(_MSG_ID_SIZE)
        peers = [self._store.lookup_key(p.user_id, p.device_id) for p in targets]
        async with self._peer_locks_held(peers):
            bundles = await self._bundles(conn, targets)
            async with self._store.transaction() as tx:
                if job_key is not None and await tx.get(Table.META, job_key) is None:
                    return  # sent by a concurrent flush
                ciphertexts = await self._encrypt(
                    tx, {user_id: targets}, bundles, {user_id: payload}, now
                )
                frame = Send(msg_id, ((user_id, tuple(ciphertexts[user_id].items())),))
                key = await records.next_counter(tx, records.OUTBOX_NEXT)
                record = OutboxRecord(msg_id, user_id, payload, payload, frame.to_bytes())
                await tx.put(Table.OUTBOX, key, record.to_bytes())
                if job_key is not None:
                    await tx.delete(Table.META, job_key)
        logger.info("retry request sent")
        await self._deliver(conn, key, record)

    # --- the sender's side ---------------------------------------------------------------------

    async def _consider_retry_request(
        self, tx: Transaction, delivery: Delivery, request: RetryRequest, now: int
    ) -> str | None:
        """Decide on a retry request for this device (inside the transaction that
        received it): the reason it is dropped, or ``None`` when it is honoured, in
        which case the resend is queued, the message marked resent to the device, a
        new session asked for (a :class:`~.records.ResetRecord`) and its time recorded."""
        user_id, device_id = delivery.sender_user, delivery.sender_device
        data = await tx.get(Table.META, self._copy_key(request.ratchet_pk, request.counter))
        if data is None:
            return "unknown"
        copy = SentCopyRecord.from_bytes(data)
        if (copy.user_id, copy.device_id) != (user_id, device_id):
            return "not_addressed"
        data = await tx.get(Table.META, records.SENT_MESSAGE_PREFIX + copy.client_msg_id)
        if data is None:
            return "unknown"
        sent = SentMessageRecord.from_bytes(data)
        if request.client_msg_id not in (UNKNOWN_MSG_ID, sent.client_msg_id):
            return "unknown"
        if now - sent.sent_at_ms > SENT_RETENTION_MS:
            return "too_old"
        lookup = self._store.lookup_key(user_id, device_id)
        if lookup in sent.resent_to:
            return "already_resent"
        state_key = records.PEER_RECOVERY_PREFIX + lookup
        state = await PeerRecoveryRecord.load(tx, state_key)
        last = state.last_new_session_ms
        if last is not None and now - last < NEW_SESSION_INTERVAL_MS:
            return "session_limit"
        sent = replace(sent, resent_to=(*sent.resent_to, lookup))
        await tx.put(Table.META, records.SENT_MESSAGE_PREFIX + sent.client_msg_id, sent.to_bytes())
        await tx.put(Table.META, state_key, replace(state, last_new_session_ms=now).to_bytes())
        await tx.put(Table.META, reset_key(lookup), ResetRecord(now).to_bytes())
        job = ResendJobRecord(sent.client_msg_id, user_id, device_id)
        job_key = records.RESEND_JOB_PREFIX + await records.next_counter(tx, records.RECOVERY_NEXT)
        await tx.put(Table.META, job_key, job.to_bytes())
        self._recovery_due = True
        logger.info("a retry request will be honoured on a new session")
        return None

    async def _resend(self, conn: RelayConnection, job_key: bytes, job: ResendJobRecord) -> None:
        """Re-encrypt a remembered message for the one device a retry request came from
        (on the new session its reset record asks for) and send it through the outbox;
        the user's other devices get a device list notice (the relay wants every device
        addressed). The job is deleted in the transaction that commits the outbox entry.

        Raises:
            IdentityError: a device list or bundle failed verification.
            SendFailed, TransportError: as ``send`` (the outbox keeps it).
        """
        _, account = self._ready_keys()
        async with self._store.transaction() as tx:
            data = await tx.get(Table.META, records.SENT_MESSAGE_PREFIX + job.client_msg_id)
        if data is None:
            logger.info("a resend was dropped: the message is no longer remembered")
            await self._drop_job(job_key)
            return
        sent = SentMessageRecord.from_bytes(data)
        payload = sent.payload if job.user_id == sent.recipient else sent.own_payload
        targets = self._targets(await self._device_list(conn, job.user_id))
        target = [p for p in targets if p.device_id == job.device_id]
        others = [p for p in targets if p.device_id != job.device_id]
        if not target:
            logger.info("a resend was dropped: the device is no longer listed")
            await self._drop_job(job_key)
            return
        own_list = await self._device_list(conn, account.user_id)
        now = self._clock()
        notice = Payload(
            PayloadType.DEVICE_LIST_NOTICE,
            self._rng(_MSG_ID_SIZE),
            now,
            DeviceListNotice(own_list.statement.version),
        ).to_bytes()
        relay_id = self._rng(_MSG_ID_SIZE)
        user = job.user_id
        peers = [self._store.lookup_key(p.user_id, p.device_id) for p in targets]
        async with self._peer_locks_held(peers):
            bundles = await self._bundles(conn, targets)
            async with self._store.transaction() as tx:
                if await tx.get(Table.META, job_key) is None:
                    return  # sent by a concurrent flush
                copies: list[SentCopy] = []
                ciphertexts = await self._encrypt(
                    tx, {user: target}, bundles, {user: payload}, now, sent=copies
                )
                cover = await self._encrypt(tx, {user: others}, bundles, {user: notice}, now)
                addressed = tuple(sorted({**ciphertexts[user], **cover[user]}.items()))
                frame = Send(relay_id, ((user, addressed),))
                await self._remember_copies(tx, sent.client_msg_id, copies)
                key = await records.next_counter(tx, records.OUTBOX_NEXT)
                # A mismatch on this frame gives new devices the notice, never the message.
                record = OutboxRecord(relay_id, user, notice, notice, frame.to_bytes())
                await tx.put(Table.OUTBOX, key, record.to_bytes())
                await tx.delete(Table.META, job_key)
        logger.info("a message was resent on a new session")
        await self._deliver(conn, key, record)

    # --- the queue -------------------------------------------------------------------------------

    async def _drop_job(self, job_key: bytes | None) -> None:
        if job_key is None:
            return
        async with self._store.transaction() as tx:
            await tx.delete(Table.META, job_key)

    async def _recovery_pass(self, conn: RelayConnection, *, on_connect: bool) -> None:
        """On a connection (``on_connect``: also purge expired sent messages) and after
        a received message that queued work: check for missing messages when due, then
        send the queued retry requests and resends. Transport errors end the pass
        quietly: the queue is kept for the next connection."""
        now = self._clock()
        try:
            if on_connect:
                async with self._store.transaction() as tx:
                    await self._purge_sent(tx, now)
            if on_connect or now >= self._missing_check_due_ms:
                await self._check_missing(now)
            if on_connect or self._recovery_due:
                await self._flush_recovery(conn)
        except TransportError as exc:
            # Kept queued for the next connection (not retried on every message: a
            # refusal such as NoPreKeys would repeat).
            logger.info("recovery postponed (%s)", type(exc).__name__)

    async def _flush_recovery(self, conn: RelayConnection) -> None:
        """Send every queued retry request and resend, oldest first. One that cannot be
        verified (``IdentityError``) is dropped; one the relay kept refusing
        (``SendFailed``) stays in the outbox.

        Raises:
            TransportError: the relay could not be reached (the rest stays queued).
        """
        async with self._recovery_lock:
            self._recovery_due = False
            async with self._store.transaction() as tx:
                retries = await tx.scan(Table.META, records.RETRY_JOB_PREFIX)
                resends = await tx.scan(Table.META, records.RESEND_JOB_PREFIX)
            for key, value in retries:
                job = RetryJobRecord.from_bytes(value)
                request = RetryRequest(
                    job.client_msg_id, job.device_id, job.ratchet_pk, job.counter
                )
                try:
                    await self._send_retry_request(conn, job.user_id, request, key)
                except IdentityError as exc:
                    logger.warning("a retry request was dropped: %s", exc.reason)
                    await self._drop_job(key)
                except SendFailed:
                    logger.warning("a retry request waits in the outbox")
            for key, value in resends:
                try:
                    await self._resend(conn, key, ResendJobRecord.from_bytes(value))
                except IdentityError as exc:
                    logger.warning("a resend was dropped: %s", exc.reason)
                    await self._drop_job(key)
                except SendFailed:
                    logger.warning("a resend waits in the outbox")
