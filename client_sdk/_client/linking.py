"""Devices of one account (issue 4 "API", DESIGN 4.2): linking a new device through the
relay's link mailbox, removing one, re-signing the list, and keeping every device's
view of its own account's device list current.

**Linking** (the protocol and its crypto are ``e2ee.link``'s; the relay mailbox is
``docs/blobs-and-links.md``'s):

* the primary's :meth:`LinkingMixin.link_device` makes a :class:`LinkOffer` (a fresh
  code: mailbox id and secret) whose ``code``/``qr_payload`` the user carries to the
  new device;
* the new device's ``Client.open(..., link_code=code)`` generates its keys, commits
  them (:class:`~client_sdk._client.records.LinkRecord`), puts its sealed request in
  slot 0 and polls slot 1 for the answer; it checks the answer (the list is signed by
  the master key it names and holds exactly this device's keys under the given id),
  commits the account, uploads its prekeys (``RegistrationMixin``'s step) and tells
  the account's other devices (a ``device_list_notice``);
* the primary's :meth:`LinkOffer.complete` polls slot 0, checks the request and its
  proof of possession, signs list version + 1 and publishes it, and puts the sealed
  answer (with the account state: contacts' verified device lists and their
  verification marks) in slot 1.

**Publishing an own list** is crash-safe: the new list (and a link answer) are
committed as a :class:`~client_sdk._client.records.PendingListRecord` before the relay
sees them; a restart settles it (a list the relay holds is adopted and its answer
delivered, any other dropped), so the primary's stored list never drifts from the
relay's.

**Own devices learn of changes** in two ways: a device that changed the list (the
primary after a removal, a new device once ready) sends a ``device_list_notice`` to
the account's other devices; a device receiving one records, in the transaction that
decrypts it, that the list must be fetched, and fetches it once that transaction has
committed (it needs the connection, which the transaction must not wait on). The
normal paths stay as a backstop: the key check on every connection, an unknown sender,
a send's device mismatch. Each accepted change reports ``DeviceAdded`` /
``DeviceRemovedEvent`` (``ClientBase._list_changed``), on the primary too.
"""

from __future__ import annotations

import asyncio
import logging
import math
from dataclasses import replace
from typing import Any, Final

from e2ee import cbor
from e2ee.device import OurDevice, OurPreKeys
from e2ee.device_list import SignedDeviceList, check_device_list
from e2ee.errors import DecodeError, E2EEError
from e2ee.identifiers import new_device_id
from e2ee.keys import DHKeyPair, SigningKeyPair
from e2ee.limits import MAX_DEVICES_PER_LIST
from e2ee.link import (
    MAX_LINK_PLAINTEXT,
    LinkAnswer,
    LinkCode,
    LinkDirection,
    LinkRefused,
    LinkRequest,
    open_answer,
    open_request,
    seal_answer,
    seal_refusal,
    seal_request,
)
from e2ee.payload import DeviceListNotice, Payload, PayloadType
from e2ee.primitives import constant_time_equal
from e2ee.relay_frames import Send

from ..errors import (
    BadLinkCode,
    ConnectionFailed,
    IdentityError,
    LinkRejected,
    LinkTimeout,
    RateLimited,
    RelayRefused,
    RelayUnavailable,
    RequestTimeout,
    SendFailed,
    StoreCorrupt,
    TransportError,
    UsageError,
)
from ..store import Table, Transaction
from ..transport import Delivery, RelayConnection
from ..transport.http import HTTP_TIMEOUT, put_link_slot, take_link_slot
from . import records, sessions
from .base import decode_stored_list
from .receiving import ReceivingMixin
from .records import (
    AccountRecord,
    DeviceIdsRecord,
    LinkRecord,
    LinkState,
    OutboxRecord,
    PendingListRecord,
    RefreshRecord,
    Stage,
    VerificationRecord,
)
from .registration import RegistrationMixin
from .sending import SendingMixin

__all__ = ["LINK_TIMEOUT", "POLL_FIRST", "POLL_MAX", "LinkOffer", "LinkingMixin"]

logger = logging.getLogger("client_sdk.client")

LINK_TIMEOUT: Final = 300.0
"""Default seconds to wait for the other device's blob in the link mailbox (the relay
keeps a slot 10 minutes; five leave the user time to carry the code)."""
POLL_FIRST: Final = 0.1
"""Seconds before the first retry of an empty mailbox slot (doubling per retry)."""
POLL_MAX: Final = 1.0
"""Longest pause between two polls: two devices behind one address poll twice a second
in all, within the relay's per-address budget (``RATE_HTTP``: 2/s, burst 30)."""
_RATE_LIMITED_PAUSE: Final = 2.0
_MSG_ID_SIZE: Final = 16
_STATE_VERSION: Final = 1
_STATE_ITEM_OVERHEAD: Final = 16
"""Bytes of CBOR framing counted per contact in the account state (generous)."""
_MAX_CONTACTS: Final = 4096
_RETRYABLE: Final = (ConnectionFailed, RequestTimeout, RelayUnavailable, RateLimited)
"""Errors after which polling the mailbox again may succeed."""


class LinkOffer:
    """A pending link on the primary (from :meth:`LinkingMixin.link_device`): show
    :attr:`code` or :attr:`qr_payload` to the user, then ``await offer.complete()``.
    Holds the code's secret: its ``repr`` shows none of it."""

    __slots__ = ("_client", "_code", "_spent")

    def __init__(self, client: LinkingMixin, code: LinkCode) -> None:
        self._client = client
        self._code = code
        self._spent = False

    @property
    def code(self) -> str:
        """The code to type on the new device: 16 groups of 5 base32 characters."""
        return self._code.text

    @property
    def qr_payload(self) -> bytes:
        """The code as bytes for a QR code (``Client.open(link_code=...)`` takes both)."""
        return self._code.qr_payload

    async def complete(self, *, timeout: float = LINK_TIMEOUT) -> int:
        """Wait up to ``timeout`` seconds for the new device's sealed keys, check them
        (they open under the code; the proof of possession verifies; they are not in
        the list already), publish device list version + 1 with the new device, and
        hand it the answer and the account state; return its device id.

        Raises:
            LinkTimeout: no new device wrote in time (nothing changed; ``complete`` may
                be called again while the mailbox lives).
            LinkRejected: the blob did not open under this code or failed a check (a
                wrong code, a blob modified in transit); the list is unchanged and the
                offer is spent.
            UsageError: not the primary, closed, a bad timeout, or the offer is spent.
            TransportError: the relay failed. After the blob was taken the offer is
                spent; if the list was published meanwhile, the answer is delivered on
                the next connection while the mailbox lives.
        """
        if self._spent:
            raise UsageError("this link offer was used: make a new one with link_device()")
        return await self._client._complete_link(self, self._code, timeout)

    def __repr__(self) -> str:
        return f"LinkOffer(spent={self._spent})"


def _check_timeout(timeout: float) -> None:
    if not (isinstance(timeout, int | float) and math.isfinite(timeout) and timeout > 0):
        raise UsageError("a link timeout is a positive number of seconds")


def _encode_state(items: list[cbor.Value]) -> bytes:
    return cbor.encode({0: _STATE_VERSION, 1: items})


def _decode_state(data: bytes, own_user: str) -> list[tuple[SignedDeviceList, int | None]]:
    """The account state of a link answer: ``{0: version, 1: [[contact's signed
    device list, verified at (ms) | null], ...]}``, one entry per contact.

    Raises:
        DecodeError, BadSignature: malformed, a list that does not verify, our own
            user or a contact twice.
    """
    m = cbor.expect_map(cbor.decode(data, max_size=MAX_LINK_PLAINTEXT), "state", frozenset({0, 1}))
    if cbor.field_int(m, 0, "state version") != _STATE_VERSION:
        raise DecodeError("unknown account state version")
    contacts: list[tuple[SignedDeviceList, int | None]] = []
    seen: set[str] = set()
    for item in cbor.field_list(m, 1, "contacts", _MAX_CONTACTS):
        pair = cbor.expect_list(item, "contact", 2)
        if len(pair) != 2 or not isinstance(pair[0], bytes):
            raise DecodeError("a contact is [device list, verified at]")
        signed = SignedDeviceList.from_bytes(pair[0])
        verified_at = pair[1]
        if verified_at is not None and (type(verified_at) is not int or verified_at < 0):
            raise DecodeError("a contact's verification time is not a timestamp")
        user = signed.statement.user_id
        if user == own_user or user in seen:
            raise DecodeError("the account state lists a user twice, or our own")
        seen.add(user)
        contacts.append((signed, verified_at))
    return contacts


class LinkingMixin(RegistrationMixin, SendingMixin, ReceivingMixin):
    """See the module documentation. It reuses registration's prekey upload, the
    sending steps (notices go through the outbox) and extends the receiving steps, so
    it derives from those mixins."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._own_list_lock = asyncio.Lock()
        """One change of the own device list at a time (link, remove, re-sign)."""
        self._refresh_due = True
        """A stored :class:`RefreshRecord` may wait (checked once per process, then
        after each notice)."""
        self._link_state: LinkState | None = None
        """This store's :class:`LinkRecord` state (set when the store is loaded)."""

    # --- the account's devices --------------------------------------------------------------

    @property
    def is_primary(self) -> bool:
        """Whether this device holds the account's master key (it registered)."""
        return self._master is not None

    @property
    def link_pending(self) -> bool:
        """Whether this store started linking with a code and has not finished: open
        it again with the same ``link_code`` to resume (or with a new code to start
        over)."""
        return self._account is None and self._link_state in (LinkState.KEYS, LinkState.SENT)

    async def own_devices(self) -> tuple[int, ...]:
        """The device ids of this account's verified device list, as stored here
        (this device included), ascending.

        Raises:
            UsageError: not registered, or closed.
            StoreCorrupt: the stored list is missing or does not decode.
        """
        _, account = self._ready()
        signed = await self._stored_list(account.user_id)
        if signed is None:
            raise StoreCorrupt("own device list missing", table=Table.PEER_DEVICE_LISTS)
        return tuple(entry.device_id for entry in signed.statement.devices)

    def _primary(self) -> tuple[OurDevice, AccountRecord, SigningKeyPair]:
        device, account = self._ready()
        if self._master is None:
            raise UsageError("only the primary device (the one that registered) manages devices")
        return device, account, self._master

    async def link_device(self) -> LinkOffer:
        """Start linking a new device (primary only): a :class:`LinkOffer` with a fresh
        code. Nothing is sent until :meth:`LinkOffer.complete`.

        Raises:
            UsageError: not the primary, not registered, or closed.
        """
        self._primary()
        return LinkOffer(self, LinkCode.generate(self._rng))

    async def remove_device(self, device_id: int) -> None:
        """Remove ``device_id`` from this account (primary only): publish device list
        version + 1 without it (the relay then closes that device's connection with
        ``DEVICE_REMOVED`` and refuses it from then on), end our sessions with it, and
        notify the account's remaining devices. The master key is not rotated (DESIGN
        4.2); the id is never given again.

        Raises:
            UsageError: not the primary, closed, this device itself, or a device id not
                in the list.
            RelayRefused: the relay refused the list (nothing changed).
            TransportError: the relay failed; whether the list was published is settled
                on the next connection.
        """
        device, _, master = self._primary()
        if type(device_id) is not int:
            raise UsageError("a device id is an integer")
        if device_id == device.device_id:
            raise UsageError("the primary device cannot remove itself")
        conn = await self._connection()
        async with self._own_list_lock:
            await self._settle_own_list(conn)
            own = await self._own_list()
            if own.statement.device(device_id) is None:
                raise UsageError(f"device {device_id} is not in this account's device list")
            entries = tuple(d for d in own.statement.devices if d.device_id != device_id)
            signed = own.successor(master, entries, self._clock())
            await self._publish_own_list(conn, signed)
        logger.info("removed device %d", device_id)
        await self._notify_own_devices(conn, signed.statement.version)

    # --- the primary's side of linking --------------------------------------------------------

    async def _complete_link(self, offer: LinkOffer, code: LinkCode, timeout: float) -> int:
        _, account, master = self._primary()
        _check_timeout(timeout)
        sealed = await self._poll_mailbox(
            code.mailbox_id, LinkDirection.TO_PRIMARY, timeout, "no new device wrote its keys"
        )
        offer._spent = True  # the relay deleted the request as it returned it
        try:
            request = open_request(code, sealed)
        except E2EEError as exc:
            logger.warning("a link request was refused: %s", type(exc).__name__)
            await self._refuse_link(code)
            raise LinkRejected(
                "the new device's keys did not open under this code or failed their proof"
            ) from None
        conn = await self._connection()
        async with self._own_list_lock:
            await self._settle_own_list(conn)
            own = await self._own_list()
            listed = own.statement.devices
            if any(
                d.signing_pk == request.signing_pk or d.x25519_ik == request.x25519_ik
                for d in listed
            ):
                await self._refuse_link(code)
                raise LinkRejected("the new device's keys are in the device list already")
            if len(listed) >= MAX_DEVICES_PER_LIST:
                await self._refuse_link(code)
                raise LinkRejected(f"the account has {MAX_DEVICES_PER_LIST} devices already")
            async with self._store.transaction() as tx:
                used = (await self._used_ids(tx)).ids | {d.device_id for d in listed}
            device_id = new_device_id(used, self._rng)
            now = self._clock()
            entries = tuple(
                sorted((*listed, request.entry(device_id, now)), key=lambda d: d.device_id)
            )
            signed = own.successor(master, entries, now)
            bare = LinkAnswer(account.user_id, device_id, master.public_key, signed, b"")
            state = await self._handover_state(account.user_id, len(bare.to_bytes()))
            answer = replace(bare, state=state)
            try:
                await self._publish_own_list(
                    conn,
                    signed,
                    mailbox_id=code.mailbox_id,
                    sealed_answer=seal_answer(code, answer, self._rng),
                )
            except RelayRefused:
                await self._refuse_link(code)
                raise
        logger.info("linked device %d", device_id)
        return device_id

    async def _refuse_link(self, code: LinkCode) -> None:
        """Put a sealed refusal in slot 1 so the new device stops waiting (best effort:
        it times out otherwise)."""
        try:
            await put_link_slot(
                self._http_url,
                code.mailbox_id,
                LinkDirection.TO_NEW_DEVICE,
                seal_refusal(code, self._rng),
                ssl=self._ssl,
                spki_pin=self._spki_pin,
            )
        except TransportError as exc:
            logger.info("the link refusal was not delivered (%s)", type(exc).__name__)

    async def _handover_state(self, own_user: str, answer_size: int) -> bytes:
        """The account state a new device receives: each contact's verified device list
        (the pinned master key) and, when the user verified that key, when. What does
        not fit one mailbox slot is left out (the new device then fetches those lists
        on first use, as for a new contact); a warning says how many."""
        budget = MAX_LINK_PLAINTEXT - answer_size - 2 * _STATE_ITEM_OVERHEAD
        items: list[cbor.Value] = []
        used = 0
        skipped = 0
        async with self._store.transaction() as tx:
            for _, value in await tx.scan(Table.PEER_DEVICE_LISTS):
                signed = decode_stored_list(value)
                if signed is None:  # pragma: no cover - scan returns values
                    continue
                user = signed.statement.user_id
                if user == own_user:
                    continue
                size = len(value) + _STATE_ITEM_OVERHEAD
                if used + size > budget or len(items) >= _MAX_CONTACTS:
                    skipped += 1
                    continue
                verified_at: int | None = None
                mark = await tx.get(Table.VERIFICATION, self._store.lookup_key(user))
                if mark is not None:
                    record = VerificationRecord.from_bytes(mark)
                    if constant_time_equal(record.master_pk, signed.statement.master_pk):
                        verified_at = record.verified_at_ms
                items.append([value, verified_at])
                used += size
        if skipped:
            logger.warning(
                "%d contacts did not fit the link answer (fetched on first use)", skipped
            )
        return _encode_state(items)

    # --- publishing the own list ------------------------------------------------------------

    async def _own_list(self) -> SignedDeviceList:
        async with self._store.transaction() as tx:
            signed = decode_stored_list(await tx.get(Table.OWN_DEVICE, records.LIST))
        if signed is None:
            raise StoreCorrupt("own device list missing", table=Table.OWN_DEVICE)
        return signed

    async def _used_ids(self, tx: Transaction) -> DeviceIdsRecord:
        data = await tx.get(Table.META, records.USED_DEVICE_IDS)
        return DeviceIdsRecord(frozenset()) if data is None else DeviceIdsRecord.from_bytes(data)

    async def _publish_own_list(
        self,
        conn: RelayConnection,
        signed: SignedDeviceList,
        *,
        mailbox_id: bytes | None = None,
        sealed_answer: bytes | None = None,
    ) -> None:
        """Publish ``signed`` (the successor of the stored own list; the caller holds
        ``_own_list_lock``): commit it as pending, send it, adopt it, then deliver the
        link answer if there is one.

        Raises:
            RelayRefused: the relay refused the list (the pending record is dropped).
            TransportError: the outcome is unknown (settled on the next connection), or
                the answer could not be delivered (retried on the next connection).
        """
        pending = PendingListRecord(signed.to_bytes(), False, mailbox_id, sealed_answer)
        async with self._store.transaction() as tx:
            await tx.put(Table.META, records.OWN_LIST_PENDING, pending.to_bytes())
        try:
            await conn.put_device_list(signed.to_bytes())
        except RelayRefused:
            async with self._store.transaction() as tx:
                await tx.delete(Table.META, records.OWN_LIST_PENDING)
            logger.warning("the relay refused the new own device list")
            raise
        await self._adopt_own_list(signed, pending)
        if pending.mailbox_id is not None and pending.sealed_answer is not None:
            await self._deliver_answer(pending.mailbox_id, pending.sealed_answer)

    async def _adopt_own_list(self, signed: SignedDeviceList, pending: PendingListRecord) -> None:
        """In one transaction: ``signed`` (which the relay holds) becomes the stored own
        list and this account's verified list (reporting what it added and removed),
        the ids it dropped are remembered and their sessions ended, and the pending
        record is kept (an answer still to deliver) or deleted."""
        device, account = self._ready_keys()
        key = self._store.lookup_key(account.user_id)
        async with self._store.transaction() as tx:
            previous = decode_stored_list(await tx.get(Table.OWN_DEVICE, records.LIST))
            last_seen = decode_stored_list(await tx.get(Table.PEER_DEVICE_LISTS, key))
            try:
                check = check_device_list(
                    signed,
                    user_id=account.user_id,
                    pinned_master_pk=device.master_pk,
                    last_seen=last_seen,
                    now_ms=self._clock(),
                )
            except E2EEError as exc:
                raise StoreCorrupt(
                    f"the stored own device list does not precede the published one: "
                    f"{type(exc).__name__}"
                ) from exc
            await tx.put(Table.OWN_DEVICE, records.LIST, signed.to_bytes())
            if check.changed:
                await tx.put(Table.PEER_DEVICE_LISTS, key, signed.to_bytes())
                await self._list_changed(tx, check, first=last_seen is None)
            before = (
                set() if previous is None else {d.device_id for d in previous.statement.devices}
            )
            after = {d.device_id for d in signed.statement.devices}
            used = await self._used_ids(tx)
            await tx.put(
                Table.META,
                records.USED_DEVICE_IDS,
                DeviceIdsRecord(used.ids | before | after).to_bytes(),
            )
            for gone in sorted(before - after):
                await sessions.delete_all(tx, self._store.lookup_key(account.user_id, gone))
            if pending.sealed_answer is not None:
                published = replace(pending, published=True)
                await tx.put(Table.META, records.OWN_LIST_PENDING, published.to_bytes())
            else:
                await tx.delete(Table.META, records.OWN_LIST_PENDING)
        logger.info("own device list version %d published", signed.statement.version)

    async def _deliver_answer(self, mailbox_id: bytes, sealed: bytes) -> None:
        """Put a sealed link answer in slot 1, then forget it.

        Raises:
            TransportError: not delivered (kept for the next connection).
        """
        try:
            await put_link_slot(
                self._http_url,
                mailbox_id,
                LinkDirection.TO_NEW_DEVICE,
                sealed,
                ssl=self._ssl,
                spki_pin=self._spki_pin,
            )
        except RelayRefused as exc:
            if exc.http_status != 409:
                raise
            # Written before: by us before a restart, or by someone holding the mailbox
            # id (the new device then fails to open it and reports it).
            logger.warning("the link mailbox's answer slot was written already")
        async with self._store.transaction() as tx:
            await tx.delete(Table.META, records.OWN_LIST_PENDING)

    async def _settle_own_list(self, conn: RelayConnection) -> None:
        """Resolve a pending own list left by a crash or a lost connection (the caller
        holds ``_own_list_lock``): adopt it if the relay holds it, else drop it; then
        deliver its link answer, if any.

        Raises:
            TransportError: the relay could not be asked.
        """
        async with self._store.transaction() as tx:
            data = await tx.get(Table.META, records.OWN_LIST_PENDING)
        if data is None:
            return
        pending = PendingListRecord.from_bytes(data)
        if not pending.published:
            _, account = self._ready_keys()
            current = await conn.get_device_list(account.user_id)
            if current != pending.signed_list:
                async with self._store.transaction() as tx:
                    await tx.delete(Table.META, records.OWN_LIST_PENDING)
                logger.info("a pending own device list was never published; dropped")
                return
            signed = decode_stored_list(pending.signed_list)
            if signed is None:  # pragma: no cover - the record holds bytes
                return
            await self._adopt_own_list(signed, pending)
        if pending.mailbox_id is not None and pending.sealed_answer is not None:
            await self._deliver_answer(pending.mailbox_id, pending.sealed_answer)

    async def _resign_if_due(self, conn: RelayConnection) -> None:
        """Publish a re-signed own list (same devices, version + 1) once the stored one
        is 7 days old (DESIGN 4.2), so contacts never see it go stale (the caller holds
        ``_own_list_lock``)."""
        master = self._master
        if master is None:
            return
        own = await self._own_list()
        now = self._clock()
        if not own.needs_resign(now):
            return
        await self._publish_own_list(conn, own.successor(master, own.statement.devices, now))
        logger.info("own device list re-signed")

    async def _after_connect(self, conn: RelayConnection) -> None:
        if self._master is not None:
            try:
                async with self._own_list_lock:
                    await self._settle_own_list(conn)
                    await self._resign_if_due(conn)
            except TransportError as exc:
                logger.warning("own device list upkeep interrupted (%s)", type(exc).__name__)
        await self._refresh_noticed(conn)
        await super()._after_connect(conn)

    # --- device list notices ----------------------------------------------------------------

    async def _notify_own_devices(self, conn: RelayConnection, version: int) -> None:
        """Send a ``device_list_notice`` for ``version`` to this account's other devices
        (through the outbox, so a failure here is retried on the next connection; it
        is logged, not raised: the change itself is done)."""
        try:
            await self._send_notice(conn, version)
        except (TransportError, IdentityError, SendFailed) as exc:
            logger.warning("device list notice not sent now (%s)", type(exc).__name__)

    async def _send_notice(self, conn: RelayConnection, version: int) -> None:
        _, account = self._ready()
        user = account.user_id
        own = await self._device_list(conn, user)
        targets = self._targets(own)
        if not targets:
            return
        now = self._clock()
        msg_id = self._rng(_MSG_ID_SIZE)
        payload = Payload(
            PayloadType.DEVICE_LIST_NOTICE, msg_id, now, DeviceListNotice(version)
        ).to_bytes()
        plan = {user: targets}
        bundles = await self._bundles(conn, targets)
        peers = [self._store.lookup_key(user, d.device_id) for d in targets]
        async with self._peer_locks_held(peers), self._store.transaction() as tx:
            ciphertexts = await self._encrypt(tx, plan, bundles, {user: payload}, now)
            frame = Send(msg_id, ((user, tuple(ciphertexts[user].items())),))
            key = await records.next_counter(tx, records.OUTBOX_NEXT)
            record = OutboxRecord(msg_id, user, payload, payload, frame.to_bytes())
            await tx.put(Table.OUTBOX, key, record.to_bytes())
        await self._deliver(conn, key, record)

    async def _control_payload(self, tx: Transaction, delivery: Delivery, payload: Payload) -> None:
        body = payload.body
        if payload.type is not PayloadType.DEVICE_LIST_NOTICE or not isinstance(
            body, DeviceListNotice
        ):
            await super()._control_payload(tx, delivery, payload)
            return
        user = delivery.sender_user
        stored = decode_stored_list(
            await tx.get(Table.PEER_DEVICE_LISTS, self._store.lookup_key(user))
        )
        if stored is not None and stored.statement.version >= body.version:
            return
        data = await tx.get(Table.META, records.LIST_REFRESH)
        record = RefreshRecord(()) if data is None else RefreshRecord.from_bytes(data)
        await tx.put(Table.META, records.LIST_REFRESH, record.adding(user).to_bytes())
        self._refresh_due = True
        logger.info("a device list notice asks for a refresh")

    async def _receive(self, conn: RelayConnection, delivery: Delivery) -> None:
        await super()._receive(conn, delivery)
        if self._refresh_due and conn.is_open:
            await self._refresh_noticed(conn)

    async def _refresh_noticed(self, conn: RelayConnection) -> None:
        """Fetch (and check, and report changes of) every device list a notice asked
        for; those fetched leave the :class:`RefreshRecord`. A transport failure keeps
        the rest for later; a list that fails its checks was reported by the check."""
        if not self._refresh_due:
            return
        self._refresh_due = False
        async with self._store.transaction() as tx:
            data = await tx.get(Table.META, records.LIST_REFRESH)
        if data is None:
            return
        done: set[str] = set()
        for user in RefreshRecord.from_bytes(data).users:
            try:
                await self._device_list(conn, user, refresh=True)
            except IdentityError as exc:
                logger.warning("a noticed device list was refused (%s)", exc.reason)
            except TransportError as exc:
                logger.info("device list refresh postponed (%s)", type(exc).__name__)
                self._refresh_due = True
                break
            done.add(user)
        async with self._store.transaction() as tx:
            data = await tx.get(Table.META, records.LIST_REFRESH)
            if data is None:  # pragma: no cover - only this method deletes it
                return
            left = tuple(u for u in RefreshRecord.from_bytes(data).users if u not in done)
            if left:
                await tx.put(Table.META, records.LIST_REFRESH, RefreshRecord(left).to_bytes())
            else:
                await tx.delete(Table.META, records.LIST_REFRESH)

    # --- the new device's side of linking -----------------------------------------------------

    async def _link_on_open(self, link_code: str | bytes, timeout: float) -> None:
        """Complete linking this store's device with ``link_code`` (see the module
        documentation), resuming where a previous attempt with the same code stopped.

        Raises:
            BadLinkCode: the code does not parse.
            LinkTimeout: the primary's answer did not arrive in time (resumable: open
                again with the same code while the mailbox lives).
            LinkRejected: the mailbox was used already, the primary refused, or its
                answer did not open or verify (the attempt is dropped: link again with a
                new code).
            UsageError: this store holds another device already, or a bad timeout.
            TransportError: the relay failed (resumable).
        """
        try:
            code = LinkCode.parse(link_code)
        except E2EEError as exc:
            raise BadLinkCode(str(exc)) from None
        _check_timeout(timeout)
        async with self._store.transaction() as tx:
            data = await tx.get(Table.META, records.LINK)
        record = None if data is None else LinkRecord.from_bytes(data)
        if self._account is not None:
            if (
                record is None
                or record.state is not LinkState.DONE
                or not constant_time_equal(record.mailbox_id, code.mailbox_id)
            ):
                raise UsageError(
                    "this store holds a device already; a link code is for a new store"
                )
            if self._account.stage is not Stage.READY:
                await self._linked_ready()
            return
        resumed = (
            record is not None
            and record.state is not LinkState.DONE
            and constant_time_equal(record.code, code.qr_payload)
        )
        if record is None or not resumed:
            signing, identity = SigningKeyPair.generate(self._rng), DHKeyPair.generate(self._rng)
            record = LinkRecord(
                LinkState.KEYS,
                code.mailbox_id,
                code.qr_payload,
                signing.seed(),
                identity.private_bytes(),
                self._clock(),
            )
            async with self._store.transaction() as tx:
                await tx.put(Table.META, records.LINK, record.to_bytes())
            self._link_state = record.state
        signing = SigningKeyPair(record.signing_seed)
        identity = DHKeyPair(record.identity_private)
        if record.state is LinkState.KEYS:
            await self._put_request(code, signing, identity, resumed=resumed)
            record = replace(record, state=LinkState.SENT)
            async with self._store.transaction() as tx:
                await tx.put(Table.META, records.LINK, record.to_bytes())
            self._link_state = record.state
        sealed = await self._poll_mailbox(
            code.mailbox_id,
            LinkDirection.TO_NEW_DEVICE,
            timeout,
            "the primary device did not answer in the link mailbox",
        )
        try:
            answer = open_answer(code, sealed)
            entry = answer.our_entry(signing.public_key, identity.public_key, True)
            contacts = _decode_state(answer.state, answer.user_id)
        except LinkRefused:
            await self._drop_link()
            raise LinkRejected("the primary device refused to link this device") from None
        except E2EEError as exc:
            logger.warning("a link answer was refused: %s", type(exc).__name__)
            await self._drop_link()
            raise LinkRejected(
                "the primary's answer did not open under this code or failed its checks"
            ) from None
        await self._adopt_answer(record, answer, contacts, signing, identity, entry.added_at_ms)
        await self._linked_ready()

    async def _put_request(
        self, code: LinkCode, signing: SigningKeyPair, identity: DHKeyPair, *, resumed: bool
    ) -> None:
        request = LinkRequest.create(code.mailbox_id, signing, identity, pq=True)
        try:
            await put_link_slot(
                self._http_url,
                code.mailbox_id,
                LinkDirection.TO_PRIMARY,
                seal_request(code, request, self._rng),
                ssl=self._ssl,
                spki_pin=self._spki_pin,
            )
        except RelayRefused as exc:
            if exc.http_status != 409:
                raise
            if not resumed:
                await self._drop_link()
                raise LinkRejected(
                    "this link code was used already: ask the primary device for a new one"
                ) from None
            # Resumed after a crash between the put and its commit: our request is there.
            logger.info("the link request was in the mailbox already")

    async def _drop_link(self) -> None:
        async with self._store.transaction() as tx:
            await tx.delete(Table.META, records.LINK)
        self._link_state = None

    async def _adopt_answer(
        self,
        record: LinkRecord,
        answer: LinkAnswer,
        contacts: list[tuple[SignedDeviceList, int | None]],
        signing: SigningKeyPair,
        identity: DHKeyPair,
        added_at_ms: int,
    ) -> None:
        """Commit the checked answer in one transaction: the device, its account (stage
        ``REGISTERED``: prekeys next), the own list, the contacts' lists and
        verification marks; the link record keeps only the mailbox id."""
        device = OurDevice(
            user_id=answer.user_id,
            device_id=answer.device_id,
            master_pk=answer.master_pk,
            signing=signing,
            identity=identity,
            pq=True,
            added_at_ms=added_at_ms,
        )
        account = AccountRecord(answer.user_id, answer.device_id, Stage.REGISTERED)
        own = answer.signed_list.to_bytes()
        async with self._store.transaction() as tx:
            await tx.put(Table.OWN_DEVICE, records.DEVICE, device.to_bytes())
            await tx.put(Table.OWN_DEVICE, records.LIST, own)
            await tx.put(Table.PEER_DEVICE_LISTS, self._store.lookup_key(answer.user_id), own)
            for signed, verified_at in contacts:
                user = signed.statement.user_id
                await tx.put(
                    Table.PEER_DEVICE_LISTS, self._store.lookup_key(user), signed.to_bytes()
                )
                if verified_at is not None:
                    mark = VerificationRecord(signed.statement.master_pk, verified_at)
                    await tx.put(Table.VERIFICATION, self._store.lookup_key(user), mark.to_bytes())
            await tx.put(Table.PREKEYS, records.PREKEYS, OurPreKeys().to_bytes())
            await tx.put(Table.META, records.ACCOUNT, account.to_bytes())
            await tx.put(Table.META, records.LINK, record.done().to_bytes())
        self._account, self._device, self._master = account, device, None
        self._link_state = LinkState.DONE
        logger.info("linked as device %d", device.device_id)

    async def _finish_linked_if_needed(self) -> None:
        """On opening a store without a link code: a linked device whose prekey upload
        was interrupted finishes it now (everything it needs is stored).

        Raises:
            TransportError: the relay failed (opening again retries).
        """
        account = self._account
        if (
            account is not None
            and self._link_state is LinkState.DONE
            and account.stage is not Stage.READY
        ):
            await self._linked_ready()

    async def _linked_ready(self) -> None:
        """Upload the linked device's prekeys (it is READY then) and notify the
        account's other devices."""
        await self._upload_initial_prekeys()
        _, account = self._ready()
        own = await self._stored_list(account.user_id)
        version = 1 if own is None else own.statement.version
        try:
            conn = await self._connection()
        except TransportError as exc:
            logger.warning("device list notice not sent now (%s)", type(exc).__name__)
            return
        await self._notify_own_devices(conn, version)

    # --- the mailbox ------------------------------------------------------------------------

    async def _poll_mailbox(
        self, mailbox_id: bytes, slot: LinkDirection, timeout: float, waiting_for: str
    ) -> bytes:
        """Take slot ``slot`` of the mailbox, polling (``POLL_FIRST`` doubling up to
        ``POLL_MAX`` seconds between tries) for at most ``timeout`` seconds.

        Raises:
            LinkTimeout: nothing arrived in time (a transient relay failure on the last
                try is its ``__cause__``).
            TransportError: a failure polling again cannot fix.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        delay = POLL_FIRST
        last_error: TransportError | None = None
        while True:
            remaining = deadline - loop.time()
            try:
                blob = await take_link_slot(
                    self._http_url,
                    mailbox_id,
                    slot,
                    ssl=self._ssl,
                    spki_pin=self._spki_pin,
                    timeout=min(HTTP_TIMEOUT, max(remaining, 1.0)),
                )
            except _RETRYABLE as exc:
                blob, last_error = None, exc
                if isinstance(exc, RateLimited):
                    delay = max(delay, _RATE_LIMITED_PAUSE)
            if blob is not None:
                return blob
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise LinkTimeout(waiting_for, timeout) from last_error
            await asyncio.sleep(min(delay, remaining))
            delay = min(2 * delay, POLL_MAX)
