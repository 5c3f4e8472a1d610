"""The SDK's facade: :class:`Client` (issue 4 "API", DESIGN 6). A first vertical slice:
registration of a primary device, ``send`` to a user, ``messages()``.

::

    async with Client.open("wss://relay.example", store="alice.db", key=key32) as alice:
        if not alice.is_registered:
            await alice.register("alice")
        await alice.send("bob", "hello")
        async for message in alice.messages():
            print(message.sender_user, message.body)

Rules it keeps (DESIGN 6):

* **Encrypt, persist, send.** The advanced sessions and the exact ``Send`` frame are
  committed to the outbox in one store transaction before the frame reaches the
  socket; a retry (after a timeout, a lost connection or a crash) resends the stored
  bytes under the same client message id, so the relay's idempotency answers it and
  no message key ever encrypts twice.
* **Decrypt, persist, acknowledge, yield.** One transaction commits the new session
  state, the decrypted message into the inbox and its dedupe record; then the relay is
  acknowledged; the app gets the message from the inbox, where it stays until
  :meth:`Message.done` (or the next iteration of the loop).

Every piece of protocol work is the core's (``e2ee``): device lists are checked with
``check_device_list`` (the master key is pinned on first use), bundles with
``validate_bundle``, sessions started with ``start_session`` (PQXDH for ``pq``
devices) and opened with ``decrypt``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import ssl as ssl_module
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Final
from urllib.parse import urlsplit

from e2ee.device import OurDevice, OurPreKeys
from e2ee.device_list import DeviceList, PeerDevice, SignedDeviceList, check_device_list
from e2ee.errors import DuplicateMessage, E2EEError
from e2ee.identifiers import check_user_id, new_device_id
from e2ee.keys import SigningKeyPair
from e2ee.payload import Payload, PayloadType, SyncSent
from e2ee.prekeys import PreKeyBundle, validate_bundle
from e2ee.primitives import Rng, default_rng
from e2ee.relay_frames import Accepted, Mismatch, Send, decode_client_frame
from e2ee.session import SessionRecord, decrypt, start_session

from ._client import records
from ._client.records import AccountRecord, InboxRecord, OutboxRecord, Stage
from .errors import (
    AuthFailed,
    IdentityError,
    SendFailed,
    StoreCorrupt,
    TransportError,
    UsageError,
    UserIdTaken,
)
from .store import SqliteStore, Store, Table, Transaction
from .transport import (
    Delivery,
    DeviceIdentity,
    PreKeysLowEvent,
    ReconnectPolicy,
    RelayConnection,
    RelayEvent,
)
from .transport import register as http_register

__all__ = [
    "MAX_SEND_ATTEMPTS",
    "Client",
    "IdentityError",
    "Message",
    "SendFailed",
]

logger = logging.getLogger(__name__)

MAX_SEND_ATTEMPTS: Final = 3
"""Mismatch rounds for one send: each round refreshes the device lists the relay named;
a third disagreement means the relay and the verified lists keep disagreeing (a race
with device changes, or a relay lying about devices), which the app must see."""
_WS_PATH: Final = "/v1/ws"
_ONE_TIME_BATCH: Final = 100
"""One-time EC and KEM prekeys uploaded at registration (one upload frame carries at
most ``MAX_PREKEYS_PER_UPLOAD`` = 100 of each kind)."""
_MSG_ID_SIZE: Final = 16


class Message:
    """A decrypted message from the inbox.

    Attributes:
        sender_user, sender_device: who sent it (verified: the sending device is in the
            sender's verified device list, and the session authenticates it).
        sender_ts_ms: the sender's own clock when sending (never the relay's).
        relay_ts_ms: when the relay accepted it (the relay's clock, for ordering only).
        client_msg_id: the sender's 16 random bytes naming the message.
        body: ``str`` for text, ``bytes`` for a bytes message.
        sent_to: for a copy of a message one of our own other devices sent
            (``sync_sent``), the user it was sent to; ``None`` otherwise.
    """

    __slots__ = (
        "_client",
        "_key",
        "body",
        "client_msg_id",
        "relay_ts_ms",
        "sender_device",
        "sender_ts_ms",
        "sender_user",
        "sent_to",
    )

    def __init__(
        self,
        client: Client,
        key: bytes,
        record: InboxRecord,
        payload: Payload,
        body: str | bytes,
        sent_to: str | None,
    ) -> None:
        self._client = client
        self._key = key
        self.sender_user = record.sender_user
        self.sender_device = record.sender_device
        self.relay_ts_ms = record.accepted_at_ms
        self.sender_ts_ms = payload.sender_ts_ms
        self.client_msg_id = payload.client_msg_id
        self.body = body
        self.sent_to = sent_to

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


class _MessageStream:
    """``async for message in client.messages()``: each step first marks the message
    yielded before as done (the loop body completed), then yields the next one. A newer
    ``messages()`` call supersedes this one (a loop left with ``break`` cannot be
    detected, so the newest loop owns the inbox and re-yields what was not done)."""

    def __init__(self, client: Client) -> None:
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


def _relay_urls(relay_url: str) -> tuple[str, str, str]:
    """``(origin, WebSocket URL, HTTP URL)`` of a relay base URL."""
    parts = urlsplit(relay_url)
    if parts.scheme not in ("ws", "wss", "http", "https") or not parts.netloc:
        raise UsageError("relay_url must be a ws://, wss://, http:// or https:// URL")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise UsageError("relay_url is the relay's base URL (no path, query or fragment)")
    tls = parts.scheme in ("wss", "https")
    ws_scheme, http_scheme = ("wss", "https") if tls else ("ws", "http")
    origin = f"{ws_scheme}://{parts.netloc}"
    return origin, f"{origin}{_WS_PATH}", f"{http_scheme}://{parts.netloc}"


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class Client:
    """One device of one user, on one relay, with its encrypted local store.

    Open with :meth:`Client.open` (an async context manager); not thread-safe; one
    event loop. See the module documentation for what it guarantees.
    """

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
        self._stream: _MessageStream | None = None
        self._receive_lock = asyncio.Lock()
        """One step of one loop at a time reads the relay's events."""
        self._closed = False

    def __repr__(self) -> str:
        who = "unregistered" if self._account is None else str(self._account.user_id)
        return f"Client({who}, origin={self._origin!r})"

    # --- opening and closing ------------------------------------------------------------

    @classmethod
    @contextlib.asynccontextmanager
    async def open(
        cls,
        relay_url: str,
        *,
        store: str | os.PathLike[str] | Store,
        key: bytes | None = None,
        passphrase: str | bytes | None = None,
        pin: bytes | None = None,
        origin: str | None = None,
        ssl: ssl_module.SSLContext | None = None,
        clock: Callable[[], int] = _now_ms,
        rng: Rng = default_rng,
    ) -> AsyncIterator[Client]:
        """``async with Client.open(relay_url, store=path, key=...) as client:``.

        ``relay_url`` is the relay's base URL (``wss://relay.example``); ``store`` a
        file path (opened with ``key``, 32 raw bytes, or ``passphrase``) or an open
        :class:`~client_sdk.store.Store` (which the client then owns and closes);
        ``pin`` the SHA-256 of the relay certificate's SubjectPublicKeyInfo;
        ``origin`` overrides the origin authentication statements name (default:
        ``relay_url``'s). Opening an existing store restores the identity, sessions,
        outbox and inbox; pending outbox messages are resent on the first connection.

        Raises:
            UsageError: a bad URL, both or neither of ``key``/``passphrase``.
            StoreLocked, WrongKey, WrongPassphrase, OriginMismatch, StoreCorrupt,
                StoreError: the store cannot be opened (see ``docs/sdk-store.md``).
        """
        own_origin, ws_url, http_url = _relay_urls(relay_url)
        origin = origin or own_origin
        if isinstance(store, str | os.PathLike):
            opened: Store = await SqliteStore.open(
                os.fspath(store), origin=origin, key=key, passphrase=passphrase
            )
        else:
            if key is not None or passphrase is not None:
                raise UsageError("key and passphrase go with a store path, not a Store")
            opened = store
        client = cls(
            opened,
            origin=origin,
            ws_url=ws_url,
            http_url=http_url,
            spki_pin=pin,
            ssl=ssl,
            clock=clock,
            rng=rng,
        )
        try:
            await client._load()
            yield client
        finally:
            await client.aclose()

    async def _load(self) -> None:
        async with self._store.transaction() as tx:
            account = await tx.get(Table.META, records.ACCOUNT)
            if account is None:
                return
            device = await tx.get(Table.OWN_DEVICE, records.DEVICE)
            master = await tx.get(Table.OWN_DEVICE, records.MASTER)
        if device is None or master is None:
            raise StoreCorrupt("the account record has no device keys", table=Table.OWN_DEVICE)
        self._account = AccountRecord.from_bytes(account)
        try:
            self._device = OurDevice.from_bytes(device)
            self._master = SigningKeyPair(master)
        except E2EEError as exc:
            raise StoreCorrupt("own device keys do not decode", table=Table.OWN_DEVICE) from exc
        logger.info("restored device %d", self._account.device_id)

    async def aclose(self) -> None:
        """Close the relay connection and the store (idempotent)."""
        if self._closed:
            return
        self._closed = True
        conn, self._conn = self._conn, None
        if conn is not None:
            await conn.close()
        await self._store.aclose()

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

    async def register(self, user_id: str, registration_token: str | None = None) -> None:
        """Make this the primary device of a new account ``user_id`` (DESIGN 4.2): a
        master key, device keys, the signed device list v1, registration over HTTP,
        then a signed prekey, 100 one-time EC and 100 ML-KEM prekeys and a last-resort
        prekey. Each step is committed before the next, and calling ``register``
        again after a crash resumes where it stopped.

        Raises:
            UsageError: already registered, a resumed registration for another user id,
                or an invalid user id.
            UserIdTaken: another account has this user id.
            AuthFailed: a wrong or missing registration token.
            TransportError: the relay could not be reached or refused (see
                ``docs/sdk-transport.md``).
        """
        if self._closed:
            raise UsageError("the client is closed")
        try:
            check_user_id(user_id)
        except E2EEError as exc:
            raise UsageError(str(exc)) from exc
        if self._account is None:
            await self._create_keys(user_id)
        account = self._account
        if account is None:  # pragma: no cover - set by _create_keys
            raise UsageError("registration failed")
        if account.user_id != user_id:
            raise UsageError("this store is registering another user id")
        if account.stage is Stage.READY:
            raise UsageError("this device is registered already")
        if account.stage is Stage.KEYS:
            await self._register_http(registration_token)
        await self._upload_initial_prekeys()

    async def _create_keys(self, user_id: str) -> None:
        now = self._clock()
        master = SigningKeyPair.generate(self._rng)
        device = OurDevice.generate(
            user_id,
            new_device_id(set(), self._rng),
            master.public_key,
            pq=True,
            now_ms=now,
            rng=self._rng,
        )
        signed = SignedDeviceList.sign(
            DeviceList(user_id, master.public_key, 1, now, None, (device.entry(),)), master
        )
        account = AccountRecord(user_id, device.device_id, Stage.KEYS)
        async with self._store.transaction() as tx:
            await tx.put(Table.OWN_DEVICE, records.DEVICE, device.to_bytes())
            await tx.put(Table.OWN_DEVICE, records.MASTER, master.seed())
            await tx.put(Table.OWN_DEVICE, records.LIST, signed.to_bytes())
            await tx.put(
                Table.PEER_DEVICE_LISTS, self._store.lookup_key(user_id), signed.to_bytes()
            )
            await tx.put(Table.PREKEYS, records.PREKEYS, OurPreKeys().to_bytes())
            await tx.put(Table.META, records.ACCOUNT, account.to_bytes())
        self._account, self._device, self._master = account, device, master

    async def _set_stage(self, stage: Stage) -> None:
        account = self._account
        if account is None:  # pragma: no cover - callers checked
            raise UsageError("no account")
        updated = AccountRecord(account.user_id, account.device_id, stage)
        async with self._store.transaction() as tx:
            await tx.put(Table.META, records.ACCOUNT, updated.to_bytes())
        self._account = updated

    async def _register_http(self, registration_token: str | None) -> None:
        device, _ = self._ready_keys()
        master = self._master
        async with self._store.transaction() as tx:
            own = await tx.get(Table.OWN_DEVICE, records.LIST)
        if master is None or own is None:
            raise StoreCorrupt("own device list missing", table=Table.OWN_DEVICE)
        try:
            await http_register(
                self._http_url,
                signed_list=SignedDeviceList.from_bytes(own),
                master=master,
                device_signing=device.signing,
                registration_token=registration_token,
                ssl=self._ssl,
                spki_pin=self._spki_pin,
            )
        except UserIdTaken as taken:
            # A crash after the relay created the account but before the stage was
            # committed: if the relay authenticates our device, the account is ours.
            try:
                conn = await self._open_connection()
            except AuthFailed:
                raise taken from None
            await conn.close()
            logger.info("registration had completed before a restart")
        await self._set_stage(Stage.REGISTERED)

    def _ready_keys(self) -> tuple[OurDevice, AccountRecord]:
        if self._device is None or self._account is None:
            raise UsageError("this device is not registered (call register first)")
        return self._device, self._account

    async def _upload_initial_prekeys(self) -> None:
        device, _ = self._ready_keys()
        now = self._clock()
        conn = await self._open_connection()
        try:
            # The private halves are committed before the public ones leave: a crash
            # after the upload can still answer every pre-key message.
            async with self._store.transaction() as tx:
                prekeys = await self._prekeys(tx)
                spk = prekeys.rotate_signed_prekey(device, now, self._rng)
                one_time = prekeys.one_time_batch(device, now, count=_ONE_TIME_BATCH, rng=self._rng)
                kem = prekeys.one_time_batch(
                    device, now, kem=True, count=_ONE_TIME_BATCH, rng=self._rng
                )
                last_resort = prekeys.rotate_last_resort(device, now, self._rng)
                await tx.put(Table.PREKEYS, records.PREKEYS, prekeys.to_bytes())
            await conn.upload_prekeys(
                signed_prekey=spk, one_time=one_time, kem=kem, last_resort=last_resort
            )
        finally:
            await conn.close()
        await self._set_stage(Stage.READY)
        logger.info("device %d registered with its prekeys", device.device_id)

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
        await self._flush_outbox(conn)
        return conn

    async def connect(self) -> None:
        """Connect now (otherwise the first ``send`` or ``messages`` step does) and
        resend every message the outbox holds (a crash or a lost connection between
        commit and acceptance).

        Raises:
            UsageError: not registered, or closed.
            TransportError: the relay could not be reached or refused.
        """
        await self._connection()

    async def pending_outbox(self) -> int:
        """How many messages wait in the outbox for the relay's acceptance."""
        async with self._store.transaction() as tx:
            return await tx.count(Table.OUTBOX)

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
                logger.warning("device list of a contact refused: %s", type(exc).__name__)
                raise IdentityError(user_id, type(exc).__name__) from exc
            if check.changed:
                await tx.put(Table.PEER_DEVICE_LISTS, key, check.accepted.to_bytes())
        if check.stale:
            logger.warning("a contact's device list is stale (not re-signed in time)")
        return check.accepted

    def _targets(self, signed: SignedDeviceList) -> list[PeerDevice]:
        """The devices of a list a message goes to (never this device itself)."""
        device, _ = self._ready_keys()
        statement = signed.statement
        return [
            PeerDevice(statement.user_id, statement.master_pk, entry)
            for entry in statement.devices
            if not (statement.user_id == device.user_id and entry.device_id == device.device_id)
        ]

    # --- sending ------------------------------------------------------------------------

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
        bundles = await self._bundles(conn, [d for ds in plan.values() for d in ds])
        payloads = {user_id: payload, account.user_id: own_payload}
        key = b""
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
        bundles = await self._bundles(conn, [d for ds in plan.values() for d in ds])
        payloads = {record.recipient: record.payload, account.user_id: record.own_payload}
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

    # --- receiving ----------------------------------------------------------------------

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
                logger.info("the relay's prekeys for this device run low (refill: not yet)")
        return None

    async def _first_inbox(self) -> Message | None:
        async with self._store.transaction() as tx:
            rows = await tx.scan(Table.INBOX, limit=1)
        if not rows:
            return None
        key, value = rows[0]
        record = InboxRecord.from_bytes(value)
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
        if not isinstance(body, str | bytes):  # pragma: no cover - filtered on receipt
            raise StoreCorrupt("an inbox payload of an unsupported type", table="inbox")
        return Message(self, key, record, payload, body, sent_to)

    async def _next_event(self) -> tuple[RelayConnection, RelayEvent] | None:
        """The next relay event, reconnecting with backoff when the connection ends;
        ``None`` once the client is closed."""
        while not self._closed:
            try:
                conn = await self._connection()
                if self._events is None or self._events_conn is not conn:
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
                delay = self._policy.delay_after(exc)
                logger.info("relay connection lost (%s); retrying", type(exc).__name__)
                await asyncio.sleep(delay)
        return None

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
        """Decrypt, persist, acknowledge (DESIGN 6). What cannot be decrypted or is a
        duplicate is acknowledged and dropped, with a log line (security events and
        retry requests are not built yet)."""
        device, _ = self._ready_keys()
        user, dev = delivery.sender_user, delivery.sender_device
        try:
            sender = await self._sender(conn, user, dev)
        except IdentityError:
            sender = None
        lookup = self._store.lookup_key(user, dev)
        now = self._clock()
        async with self._store.transaction() as tx:
            data = await tx.get(Table.SESSIONS, lookup)
            record = None if data is None else SessionRecord.from_bytes(data)
            prekeys = await self._prekeys(tx)
            try:
                result = decrypt(device, prekeys, record, sender, delivery.ciphertext, now)
            except DuplicateMessage:
                logger.info("duplicate delivery dropped (seq %d)", delivery.seq)
                result = None
            except E2EEError as exc:
                logger.warning("undecryptable message dropped: %s", type(exc).__name__)
                result = None
            if result is not None:
                await tx.put(Table.SESSIONS, lookup, result.record.to_bytes())
                if result.prekey_use is not None:
                    result.commit_prekeys(prekeys)
                    await tx.put(Table.PREKEYS, records.PREKEYS, prekeys.to_bytes())
                await self._store_payload(tx, delivery, lookup, result.plaintext)
        await conn.ack([delivery.seq])

    async def _store_payload(
        self, tx: Transaction, delivery: Delivery, lookup: bytes, plaintext: bytes
    ) -> None:
        own = delivery.sender_user == self.user_id
        try:
            payload = Payload.from_bytes(plaintext, from_own_device=own)
        except E2EEError as exc:
            logger.warning("a decrypted payload was refused: %s", type(exc).__name__)
            return
        dedupe = lookup + payload.client_msg_id
        if await tx.get(Table.DEDUPE, dedupe) is not None:
            logger.info("a message already received was dropped")
            return
        await tx.put(Table.DEDUPE, dedupe, delivery.accepted_at_ms.to_bytes(8, "big"))
        if payload.type not in (PayloadType.TEXT, PayloadType.BYTES, PayloadType.SYNC_SENT):
            logger.info("a %s payload was dropped (not handled yet)", payload.type.name)
            return
        key = await records.next_counter(tx, records.INBOX_NEXT)
        inbox = InboxRecord(
            delivery.sender_user, delivery.sender_device, plaintext, delivery.accepted_at_ms
        )
        await tx.put(Table.INBOX, key, inbox.to_bytes())
