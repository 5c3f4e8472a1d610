"""The state and the shared steps of :class:`~client_sdk.client.Client`: the store, the
keys, the relay connection, verified device lists, per-peer locks and the event log.
The capabilities (registration, sending, receiving, ...) are mixins on this base, one
module each, so each stays small; ``client_sdk.client`` assembles them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl as ssl_module
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable, Iterable

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
from e2ee.primitives import Rng

from ..errors import IdentityError, StoreCorrupt, UsageError
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
from . import records
from .records import AccountRecord, Stage

__all__ = ["ClientBase"]

logger = logging.getLogger("client_sdk.client")


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
        self._policy = ReconnectPolicy()
        self._inflight: set[bytes] = set()
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
        """The open connection, connecting (and resending the outbox) if needed."""
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
        await self._after_connect(conn)
        return conn

    @abstractmethod
    async def _after_connect(self, conn: RelayConnection) -> None:
        """Run once per new connection, after authentication (outbox, upkeep)."""

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
        if data is None:
            return None
        try:
            return SignedDeviceList.from_bytes(data)
        except E2EEError as exc:
            raise StoreCorrupt("a stored device list does not decode") from exc

    async def _device_list(
        self, conn: RelayConnection, user_id: str, *, refresh: bool = False
    ) -> SignedDeviceList:
        """``user_id``'s verified device list: the stored one, or (when none is stored
        or ``refresh``) the relay's, checked against the pinned master key and the
        last list seen (DESIGN 4.2) and stored.

        Raises:
            IdentityError: the relay's list fails the check.
            TransportError: the relay could not be asked.
        """
        if not refresh:
            stored = await self._stored_list(user_id)
            if stored is not None:
                return stored
        data = await conn.get_device_list(user_id)
        own = self._device
        key = self._store.lookup_key(user_id)
        refused: IdentityError | None = None
        async with self._store.transaction() as tx:
            previous = await tx.get(Table.PEER_DEVICE_LISTS, key)
            try:
                last_seen = None if previous is None else SignedDeviceList.from_bytes(previous)
                pinned = None if last_seen is None else last_seen.statement.master_pk
                if own is not None and user_id == own.user_id:
                    pinned = own.master_pk
                check = check_device_list(
                    SignedDeviceList.from_bytes(data),
                    user_id=user_id,
                    pinned_master_pk=pinned,
                    last_seen=last_seen,
                    now_ms=self._clock(),
                )
            except E2EEError as exc:
                # The event commits; the refusal is raised once it has.
                logger.warning("device list of a contact refused: %s", type(exc).__name__)
                await self._list_refused(tx, user_id, exc)
                refused = IdentityError(user_id, type(exc).__name__)
                refused.__cause__ = exc
            else:
                if check.changed:
                    await tx.put(Table.PEER_DEVICE_LISTS, key, check.accepted.to_bytes())
                    await self._list_changed(tx, check, first=last_seen is None)
        if refused is not None:
            raise refused
        return check.accepted

    async def _list_changed(self, tx: Transaction, check: DeviceListCheck, *, first: bool) -> None:
        """Report what a newly accepted device list changed (inside its transaction):
        devices added and removed (not on the first list of a user: that is no change),
        and staleness."""
        statement = check.accepted.statement
        if not first:
            for entry in check.added:
                await self._emit(tx, DeviceAdded(statement.user_id, entry.device_id))
            for entry in check.removed:
                await self._emit(tx, DeviceRemovedEvent(statement.user_id, entry.device_id))
        if check.stale:
            logger.warning("a contact's device list is stale (not re-signed in time)")
            await self._emit(tx, DeviceListStale(statement.user_id, statement.issued_at_ms))

    async def _list_refused(self, tx: Transaction, user_id: str, exc: E2EEError) -> None:
        """Report a refused device list (inside a transaction that commits)."""
        if isinstance(exc, MasterKeyChanged):
            verified = await tx.get(Table.VERIFICATION, self._store.lookup_key(user_id))
            await self._emit(tx, IdentityChanged(user_id, verified=verified is not None))
        elif isinstance(exc, Equivocation):
            await self._emit(tx, DeviceListEquivocation(user_id, exc.version))

    def _targets(self, signed: SignedDeviceList) -> list[PeerDevice]:
        """The devices of a list a message goes to (never this device itself)."""
        device, _ = self._ready_keys()
        statement = signed.statement
        return [
            PeerDevice(statement.user_id, statement.master_pk, entry)
            for entry in statement.devices
            if not (statement.user_id == device.user_id and entry.device_id == device.device_id)
        ]
