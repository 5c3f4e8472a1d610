"""The state and the shared steps of :class:`~client_sdk.client.Client`: the store, the
keys, the relay connection, verified device lists, per-peer locks and the event log.
The capabilities (registration, sending, receiving, ...) are mixins on this base, one
module each, so each stays small; ``client_sdk.client`` assembles them.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import ssl as ssl_module
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import replace
from typing import Final

from e2ee.device import OurDevice, OurPreKeys
from e2ee.device_list import (
    DeviceListCheck,
    MasterKeyChanged,
    PeerDevice,
    SignedDeviceList,
    check_device_list,
)
from e2ee.errors import E2EEError, Equivocation
from e2ee.keys import SigningKeyPair
from e2ee.limits import DEVICE_LIST_STALE_MS
from e2ee.primitives import Rng, constant_time_equal

from ..errors import (
    IdentityChangeBlocked,
    IdentityError,
    StoreCorrupt,
    TransportError,
    UsageError,
)
from ..events import (
    DeviceAdded,
    DeviceListEquivocation,
    DeviceListStale,
    DeviceRemovedEvent,
    IdentityChanged,
    SecurityEvent,
    encode_event,
)
from ..store import Store, Table, Transaction
from ..transport import DeviceIdentity, ReconnectPolicy, RelayConnection, RelayEvent
from . import records, sessions
from .records import AccountRecord, IdentityRecord, Stage

__all__ = ["ClientBase"]

logger = logging.getLogger("client_sdk.client")

LIST_RECHECK_MS: Final = 60 * 60 * 1000
"""A stored device list past its 7-day re-signing period is fetched again from the
relay at most this often (to see the re-signed list, or report it stale)."""


def decode_stored_list(data: bytes | None) -> SignedDeviceList | None:
    """A stored device list (``None`` stays ``None``).

    Raises:
        StoreCorrupt: it does not decode.
    """
    if data is None:
        return None
    try:
        return _decode_list(data)
    except E2EEError as exc:
        raise StoreCorrupt("a stored device list does not decode") from exc


@functools.lru_cache(maxsize=1024)
def _decode_list(data: bytes) -> SignedDeviceList:
    """``SignedDeviceList.from_bytes`` (which verifies the master signature) memoized
    on the exact bytes: every send and every received message reads a stored list, and
    the signature check was about a third of the SDK's CPU per message (bench/sdk.py).
    The result is immutable, and equal bytes verify equally; failures are not cached."""
    return SignedDeviceList.from_bytes(data)


class ClientBase(ABC):
    """What every capability of the client shares (see the module documentation)."""

    def __init__(
        self,
        store: Store,
        *,
        origin: str,
        ws_url: str,
        http_url: str,
        spki_pin: bytes | None,
        ssl: ssl_module.SSLContext | None,
        clock: Callable[[], int],
        rng: Rng,
    ) -> None:
        self._store = store
        self._origin = origin
        self._ws_url = ws_url
        self._http_url = http_url
        self._spki_pin = spki_pin
        self._ssl = ssl
        self._clock = clock
        self._rng = rng
        self._account: AccountRecord | None = None
        self._device: OurDevice | None = None
        self._master: SigningKeyPair | None = None
        self._conn: RelayConnection | None = None
        self._conn_lock = asyncio.Lock()
        self._events: AsyncIterator[RelayEvent] | None = None
        self._events_conn: RelayConnection | None = None
        self._elsewhere_reported: RelayConnection | None = None
        """The last connection whose takeover (``ConnectedElsewhere``) was recorded."""
        self._policy = ReconnectPolicy()
        self._inflight: dict[bytes, tuple[RelayConnection, asyncio.Future[None]]] = {}
        """Outbox entries being delivered, by outbox key, with the connection each is
        sent on: a second delivery of one entry waits for the first instead of sending
        it again."""
        self._stream: object | None = None
        """The newest ``messages()`` loop (older ones stop)."""
        self._receive_lock = asyncio.Lock()
        """One step of one loop at a time reads the relay's events."""
        self._closed = False
        self._peer_locks: dict[bytes, asyncio.Lock] = {}
        self._closed_event = asyncio.Event()
        self._event_added = asyncio.Event()
        """Set when an event was committed (``events()`` loops wait on it)."""

    # --- identity -----------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        """Whether :meth:`aclose` was called."""
        return self._closed

    # --- identity -----------------------------------------------------------------------

    @property
    def is_registered(self) -> bool:
        """Whether this store holds a device that completed registration."""
        return self._account is not None and self._account.stage is Stage.READY

    @property
    def user_id(self) -> str:
        """This device's user id.

        Raises:
            UsageError: not registered.
        """
        return self._ready()[1].user_id

    @property
    def device_id(self) -> int:
        """This device's id.

        Raises:
            UsageError: not registered.
        """
        return self._ready()[1].device_id

    def _ready(self) -> tuple[OurDevice, AccountRecord]:
        """This device and its account, once registration completed.

        Raises:
            UsageError: closed, or not (completely) registered.
        """
        if self._closed:
            raise UsageError("the client is closed")
        if self._account is None or self._device is None or self._account.stage < Stage.READY:
            raise UsageError("this device is not registered (call register first)")
        return self._device, self._account

    def _ready_keys(self) -> tuple[OurDevice, AccountRecord]:
        if self._device is None or self._account is None:
            raise UsageError("this device is not registered (call register first)")
        return self._device, self._account

    async def _prekeys(self, tx: Transaction) -> OurPreKeys:
        data = await tx.get(Table.PREKEYS, records.PREKEYS)
        if data is None:
            raise StoreCorrupt("prekeys missing", table=Table.PREKEYS)
        try:
            return OurPreKeys.from_bytes(data)
        except E2EEError as exc:
            raise StoreCorrupt("prekeys do not decode", table=Table.PREKEYS) from exc

    # --- the connection -----------------------------------------------------------------

    async def _open_connection(self) -> RelayConnection:
        device, _ = self._ready_keys()
        return await RelayConnection.connect(
            self._ws_url,
            origin=self._origin,
            identity=DeviceIdentity(device.user_id, device.device_id, device.signing),
            spki_pin=self._spki_pin,
            ssl=self._ssl,
        )

    async def _connection(self) -> RelayConnection:
        """The open connection, connecting (and resending the outbox) if needed.

        The steps run on a new connection (:meth:`_after_connect`) run in the task of
        whichever call opened it, for the whole client: their transport failures are
        logged, never raised into that call. An outbox entry they could not deliver
        stays in the outbox for the next connection (or ``connect()``), and a
        connection that ended under them fails the caller's own next request with its
        close error, which the caller handles under its own contract (a ``send``
        before its commit must not fail because another message's resend was cut off).

        Raises:
            UsageError: not registered, or closed.
            TransportError: a new connection could not be opened.
        """
        if not self.is_registered:
            raise UsageError("this device is not registered (call register first)")
        async with self._conn_lock:
            if self._closed:
                raise UsageError("the client is closed")
            conn = self._conn
            if conn is not None and conn.is_open:
                return conn
            conn = await self._open_connection()
            self._conn = conn
            self._policy.connected()
        try:
            await self._after_connect(conn)
        except TransportError as exc:
            logger.info("the steps of a new connection were interrupted (%s)", type(exc).__name__)
        return conn

    @abstractmethod
    async def _after_connect(self, conn: RelayConnection) -> None:
        """Run once per new connection, after authentication (outbox, upkeep). Each
        capability that extends it calls ``await super()._after_connect(conn)``; this
        end of the chain does nothing. A :class:`TransportError` it raises is logged by
        :meth:`_connection`, not passed to the caller that opened the connection."""
        return None

    # --- per-peer locks and events --------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _peer_locks_held(self, keys: Iterable[bytes]) -> AsyncIterator[None]:
        """Hold the lock of every peer device address in ``keys`` (store lookup keys),
        taken in sorted order so two holders never deadlock (DESIGN 6: one lock per peer
        device address covering session creation, so a send and a receive never fork a
        ratchet)."""
        async with contextlib.AsyncExitStack() as stack:
            for key in sorted(set(keys)):
                lock = self._peer_locks.get(key)
                if lock is None:
                    lock = self._peer_locks[key] = asyncio.Lock()
                await stack.enter_async_context(lock)
            yield

    async def _emit(self, tx: Transaction, event: SecurityEvent) -> None:
        """Record ``event`` in ``tx`` (it exists once ``tx`` commits)."""
        key = await records.next_counter(tx, records.EVENTS_NEXT)
        await tx.put(Table.EVENTS, key, encode_event(event))
        logger.info("security event %s", type(event).__name__)
        self._event_added.set()

    # --- device lists -------------------------------------------------------------------

    async def _stored_list(self, user_id: str) -> SignedDeviceList | None:
        async with self._store.transaction() as tx:
            data = await tx.get(Table.PEER_DEVICE_LISTS, self._store.lookup_key(user_id))
        return decode_stored_list(data)

    async def _device_list(
        self, conn: RelayConnection, user_id: str, *, refresh: bool = False
    ) -> SignedDeviceList:
        """``user_id``'s verified device list: the stored one, or the relay's (when none
        is stored, when ``refresh`` is asked, or when the stored one is past the 7-day
        re-signing period and was not fetched in the last hour), checked against the
        pinned master key and the last list seen (DESIGN 4.2) and stored.

        The identity policy (docs/sdk.md, "Safety numbers and identity changes"): a list
        signed by a new master key is pinned at once for an unverified contact (its old
        sessions are ended) and blocks a verified one until the change is accepted; a
        master key the contact had before is never accepted again. Each event
        (``IdentityChanged``, ``DeviceListEquivocation``, ``DeviceListStale``) is
        recorded once per occurrence, in the transaction that finds it.

        Raises:
            IdentityChangeBlocked: a verified contact's master key changed and the change
                was not accepted yet.
            IdentityError: the relay's list fails the check.
            TransportError: the relay could not be asked.
            StoreCorrupt: a stored list or identity record does not decode.
        """
        key = self._store.lookup_key(user_id)
        ident_key = self._store.lookup_key(user_id, records.IDENTITY_PART)
        now = self._clock()
        if not refresh:
            async with self._store.transaction() as tx:
                stored = decode_stored_list(await tx.get(Table.PEER_DEVICE_LISTS, key))
                ident = await IdentityRecord.load(tx, ident_key)
                due = stored is None or (
                    stored.needs_resign(now) and now - ident.checked_at_ms >= LIST_RECHECK_MS
                )
                if stored is not None and ident.pending is None and not due:
                    updated = await self._report_stale(tx, stored, ident)
                    if updated != ident:
                        await tx.put(Table.VERIFICATION, ident_key, updated.to_bytes())
            if stored is not None and ident.pending is not None:
                raise IdentityChangeBlocked(user_id)
            if stored is not None and not due:
                return stored
        data = await conn.get_device_list(user_id)
        own = self._device
        accepted: SignedDeviceList | None = None
        refused: IdentityError | None = None
        async with self._store.transaction() as tx:
            last_seen = decode_stored_list(await tx.get(Table.PEER_DEVICE_LISTS, key))
            ident = replace(await IdentityRecord.load(tx, ident_key), checked_at_ms=now)
            pinned = None if last_seen is None else last_seen.statement.master_pk
            if own is not None and user_id == own.user_id:
                pinned = own.master_pk
            offered: SignedDeviceList | None = None
            try:
                offered = SignedDeviceList.from_bytes(data)
                check = check_device_list(
                    offered,
                    user_id=user_id,
                    pinned_master_pk=pinned,
                    last_seen=last_seen,
                    now_ms=now,
                )
            except E2EEError as exc:
                # Events commit; a refusal is raised once they have.
                accepted, refused, ident = await self._list_refused(
                    tx, user_id, exc, offered, last_seen, ident
                )
            else:
                accepted = check.accepted
                if check.changed:
                    await tx.put(Table.PEER_DEVICE_LISTS, key, accepted.to_bytes())
                    await self._list_changed(tx, check, first=last_seen is None)
                if ident.pending is not None:
                    refused = IdentityChangeBlocked(user_id)
            if accepted is not None:
                ident = await self._report_stale(tx, accepted, ident)
            await tx.put(Table.VERIFICATION, ident_key, ident.to_bytes())
        if refused is not None:
            raise refused
        if accepted is None:  # pragma: no cover - a refusal always comes with an error
            raise IdentityError(user_id, "NoDeviceList")
        return accepted

    async def _list_changed(self, tx: Transaction, check: DeviceListCheck, *, first: bool) -> None:
        """Report what a newly accepted device list changed (inside its transaction):
        devices added and removed (not on the first list of a user: that is no change).
        Staleness is reported by :meth:`_report_stale`, once per list."""
        statement = check.accepted.statement
        if not first:
            for entry in check.added:
                await self._emit(tx, DeviceAdded(statement.user_id, entry.device_id))
            for entry in check.removed:
                await self._emit(tx, DeviceRemovedEvent(statement.user_id, entry.device_id))

    async def _list_refused(
        self,
        tx: Transaction,
        user_id: str,
        exc: E2EEError,
        offered: SignedDeviceList | None,
        last_seen: SignedDeviceList | None,
        ident: IdentityRecord,
    ) -> tuple[SignedDeviceList | None, IdentityError | None, IdentityRecord]:
        """Handle a device list ``check_device_list`` refused (inside a transaction that
        commits): ``(list accepted instead, error to raise, updated identity record)``.
        A new master key goes to :meth:`_master_key_changed`; an equivocation is
        reported once per offered list."""
        if isinstance(exc, MasterKeyChanged) and offered is not None:
            return await self._master_key_changed(tx, user_id, offered, last_seen, ident)
        logger.warning("device list of a contact refused: %s", type(exc).__name__)
        if (
            isinstance(exc, Equivocation)
            and offered is not None
            and offered.digest not in ident.equivocations
        ):
            await self._emit(tx, DeviceListEquivocation(user_id, exc.version))
            ident = replace(
                ident,
                equivocations=records.remember(
                    ident.equivocations, offered.digest, records.MAX_EQUIVOCATIONS_REMEMBERED
                ),
            )
        refused = IdentityError(user_id, type(exc).__name__)
        refused.__cause__ = exc
        return None, refused, ident

    async def _master_key_changed(
        self,
        tx: Transaction,
        user_id: str,
        offered: SignedDeviceList,
        last_seen: SignedDeviceList | None,
        ident: IdentityRecord,
    ) -> tuple[SignedDeviceList | None, IdentityError | None, IdentityRecord]:
        """The relay offers ``user_id``'s list signed by a master key other than the
        pinned one (the signature and the user id are already checked). A key the user
        had before is refused (no rollback); otherwise ``IdentityChanged`` is recorded
        once per new key, and the change is accepted at once for an unverified contact
        (:meth:`_repin`) or kept pending, blocking sending, for a verified one (and for
        our own account, whose key this device never replaces)."""
        new_pk = offered.statement.master_pk
        if new_pk in ident.retired:
            logger.warning("a device list under a retired master key was refused")
            return None, IdentityError(user_id, "MasterKeyRetired"), ident
        own = self._device is not None and user_id == self._device.user_id
        pinned = None if last_seen is None else last_seen.statement.master_pk
        verified = own or ident.pending is not None or await self._verified_key(tx, user_id, pinned)
        logger.warning("a contact's master key changed (verified: %s)", verified)
        if new_pk not in ident.reported:
            await self._emit(tx, IdentityChanged(user_id, verified=verified))
            ident = replace(ident, reported=records.remember(ident.reported, new_pk))
        if own:
            return None, IdentityError(user_id, "MasterKeyChanged"), ident
        if not verified:
            return offered, None, await self._repin(tx, user_id, last_seen, offered, ident)
        pending = decode_stored_list(ident.pending)
        successor = offered
        if pending is not None and pending.statement.master_pk == new_pk:
            try:
                successor = check_device_list(
                    offered,
                    user_id=user_id,
                    pinned_master_pk=new_pk,
                    last_seen=pending,
                    now_ms=self._clock(),
                ).accepted
            except E2EEError as exc:
                logger.warning("a pending device list was not replaced: %s", type(exc).__name__)
                successor = pending
        ident = replace(ident, pending=successor.to_bytes())
        return None, IdentityChangeBlocked(user_id), ident

    async def _verified_key(self, tx: Transaction, user_id: str, master_pk: bytes | None) -> bool:
        """Whether the user verified ``user_id``'s safety number for ``master_pk``."""
        if master_pk is None:
            return False
        data = await tx.get(Table.VERIFICATION, self._store.lookup_key(user_id))
        if data is None:
            return False
        return constant_time_equal(records.VerificationRecord.from_bytes(data).master_pk, master_pk)

    async def _repin(
        self,
        tx: Transaction,
        user_id: str,
        old: SignedDeviceList | None,
        new: SignedDeviceList,
        ident: IdentityRecord,
    ) -> IdentityRecord:
        """Pin ``new`` (signed by a new master key) as ``user_id``'s list, as on first
        use, inside ``tx``: the old key is retired for good, every session with a device
        of either list is ended (deleted, so nothing is ever encrypted for an old key and
        a reused device id starts afresh), the verified state is cleared, and a pending
        change is resolved. Returns the updated identity record (the caller stores it)."""
        await tx.put(Table.PEER_DEVICE_LISTS, self._store.lookup_key(user_id), new.to_bytes())
        ids = {entry.device_id for entry in new.statement.devices}
        retired = ident.retired
        if old is not None:
            ids.update(entry.device_id for entry in old.statement.devices)
            retired = records.remember(retired, old.statement.master_pk)
        for device_id in sorted(ids):
            await sessions.delete_all(tx, self._store.lookup_key(user_id, device_id))
        await tx.delete(Table.VERIFICATION, self._store.lookup_key(user_id))
        ident = replace(
            ident,
            pending=None,
            retired=retired,
            reported=records.remember(ident.reported, new.statement.master_pk),
        )
        logger.info("a contact's new master key was pinned")
        return await self._report_stale(tx, new, ident)

    async def _report_stale(
        self, tx: Transaction, signed: SignedDeviceList, ident: IdentityRecord
    ) -> IdentityRecord:
        """Record ``DeviceListStale`` if ``signed`` (the accepted list) was not re-signed
        for 30 days, once per list; returns the updated identity record."""
        statement = signed.statement
        if self._clock() - statement.issued_at_ms <= DEVICE_LIST_STALE_MS:
            return ident
        if ident.stale_reported is not None and ident.stale_reported == signed.digest:
            return ident
        logger.warning("a contact's device list is stale (not re-signed in time)")
        await self._emit(tx, DeviceListStale(statement.user_id, statement.issued_at_ms))
        return replace(ident, stale_reported=signed.digest)

    def _targets(self, signed: SignedDeviceList) -> list[PeerDevice]:
        """The devices of a list a message goes to (never this device itself)."""
        device, _ = self._ready_keys()
        statement = signed.statement
        return [
            PeerDevice(statement.user_id, statement.master_pk, entry)
            for entry in statement.devices
            if not (statement.user_id == device.user_id and entry.device_id == device.device_id)
        ]
