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
from collections.abc import AsyncIterator, Callable
from typing import Final
from urllib.parse import urlsplit

from e2ee.device import OurDevice
from e2ee.errors import E2EEError
from e2ee.keys import SigningKeyPair
from e2ee.primitives import Rng, default_rng

from ._client import records
from ._client.attachments import AttachmentsMixin
from ._client.base import ClientBase
from ._client.identity import ContactSafetyNumber, IdentityMixin, VerificationState
from ._client.linking import LINK_TIMEOUT, LinkingMixin, LinkOffer
from ._client.receiving import Message, ReceivingMixin
from ._client.records import AccountRecord, LinkRecord, LinkState
from ._client.recovery import RecoveryMixin
from ._client.registration import RegistrationMixin
from ._client.sending import MAX_SEND_ATTEMPTS, SendingMixin
from ._client.sharing import SharingMixin
from ._client.upkeep import UpkeepMixin
from .errors import IdentityError, SendFailed, StoreCorrupt, UsageError
from .events import SecurityEvent, decode_event
from .store import SqliteStore, Store, Table
from .transport import RelayConnection

__all__ = [
    "MAX_SEND_ATTEMPTS",
    "Client",
    "ContactSafetyNumber",
    "EventItem",
    "IdentityError",
    "LinkOffer",
    "Message",
    "SendFailed",
    "VerificationState",
]

logger = logging.getLogger(__name__)

_WS_PATH: Final = "/v1/ws"


class EventItem:
    """One security event from :meth:`Client.events`: ``item.event`` is the typed event
    (``client_sdk.events``); it leaves the store on :meth:`done` or when the loop asks
    for the next one."""

    __slots__ = ("_client", "_key", "event")

    def __init__(self, client: Client, key: bytes, event: SecurityEvent) -> None:
        self._client = client
        self._key = key
        self.event = event

    async def done(self) -> None:
        """Remove the event from the store (idempotent)."""
        async with self._client._store.transaction() as tx:
            await tx.delete(Table.EVENTS, self._key)

    def __repr__(self) -> str:
        return f"EventItem({self.event!r})"


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


class Client(
    SharingMixin,
    AttachmentsMixin,
    LinkingMixin,
    IdentityMixin,
    RecoveryMixin,
    UpkeepMixin,
    RegistrationMixin,
    SendingMixin,
    ReceivingMixin,
    ClientBase,
):
    """One device of one user, on one relay, with its encrypted local store.

    Open with :meth:`Client.open` (an async context manager); not thread-safe; one
    event loop. See the module documentation for what it guarantees.
    """

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
        link_code: str | bytes | None = None,
        link_timeout: float = LINK_TIMEOUT,
        migrate_origin: bool = False,
    ) -> AsyncIterator[Client]:
        """``async with Client.open(relay_url, store=path, key=...) as client:``.

        ``relay_url`` is the relay's base URL (``wss://relay.example``); ``store`` a
        file path (opened with ``key``, 32 raw bytes, or ``passphrase``) or an open
        :class:`~client_sdk.store.Store` (which the client then owns and closes);
        ``pin`` the SHA-256 of the relay certificate's SubjectPublicKeyInfo;
        ``origin`` overrides the origin authentication statements name (default:
        ``relay_url``'s). Opening an existing store restores the identity, sessions,
        outbox and inbox; pending outbox messages are resent on the first connection.
        A store remembers the origin it was created for and refuses another
        (``OriginMismatch``) unless ``migrate_origin`` is set, which moves it to the new
        origin (the relay operator moved the relay: the account must exist there).

        ``link_code`` (the primary's ``LinkOffer.code`` text or its ``qr_payload``)
        makes a new store a linked device of the primary's account before the client
        is handed out (``docs/sdk.md``, "Devices"): its keys go sealed into the relay's
        link mailbox, the primary's answer is awaited for up to ``link_timeout``
        seconds and checked, then prekeys are uploaded and the device is registered.
        Every step is committed before the next: after a crash, opening again with the
        same code resumes (``link_pending`` says a linking waits for that). Opening the
        store it linked with the same code again is allowed, and opening a linked
        store whose prekey upload was interrupted finishes it, code or not.

        Raises:
            UsageError: a bad URL, both or neither of ``key``/``passphrase``,
                ``key``/``passphrase``/``migrate_origin`` with an open Store, a link
                code for a store that holds another device, a bad ``link_timeout``.
            StoreLocked, WrongKey, WrongPassphrase, OriginMismatch, StoreCorrupt,
                StoreError: the store cannot be opened (see ``docs/sdk-store.md``).
            BadLinkCode, LinkTimeout, LinkRejected, TransportError: linking failed
                (see ``LinkingMixin._link_on_open``; the store is closed again).
        """
        own_origin, ws_url, http_url = _relay_urls(relay_url)
        origin = origin or own_origin
        if isinstance(store, str | os.PathLike):
            opened: Store = await SqliteStore.open(
                os.fspath(store),
                origin=origin,
                key=key,
                passphrase=passphrase,
                migrate_origin=migrate_origin,
            )
        else:
            if key is not None or passphrase is not None or migrate_origin:
                raise UsageError(
                    "key, passphrase and migrate_origin go with a store path, not a Store"
                )
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
            if link_code is not None:
                await client._link_on_open(link_code, link_timeout)
            else:
                await client._finish_linked_if_needed()
            yield client
        finally:
            await client.aclose()

    async def _load(self) -> None:
        """Restore the account from the store (nothing for a new store). A primary
        holds its master key; a linked device (its link record says it was linked)
        holds none.

        Raises:
            StoreCorrupt: the account's keys are missing or do not decode.
        """
        async with self._store.transaction() as tx:
            link = await tx.get(Table.META, records.LINK)
            self._link_state = None if link is None else LinkRecord.from_bytes(link).state
            account = await tx.get(Table.META, records.ACCOUNT)
            if account is None:
                return
            device = await tx.get(Table.OWN_DEVICE, records.DEVICE)
            master = await tx.get(Table.OWN_DEVICE, records.MASTER)
        linked = self._link_state is LinkState.DONE
        if device is None or (master is None) != linked:
            raise StoreCorrupt("the account record has no device keys", table=Table.OWN_DEVICE)
        self._account = AccountRecord.from_bytes(account)
        try:
            self._device = OurDevice.from_bytes(device)
            self._master = None if master is None else SigningKeyPair(master)
        except E2EEError as exc:
            raise StoreCorrupt("own device keys do not decode", table=Table.OWN_DEVICE) from exc
        logger.info("restored device %d", self._account.device_id)

    async def aclose(self) -> None:
        """Close the relay connection and the store (idempotent)."""
        if self._closed:
            return
        self._closed = True
        self._closed_event.set()
        conn, self._conn = self._conn, None
        if conn is not None:
            await conn.close()
        await self._store.aclose()

    # --- connection -----------------------------------------------------------------------

    async def connect(self) -> None:
        """Connect now (otherwise the first ``send`` or ``messages`` step does) and
        resend every message the outbox holds (a crash or a lost connection between
        commit and acceptance).

        Raises:
            UsageError: not registered, or closed.
            TransportError: the relay could not be reached or refused.
        """
        conn = await self._connection()
        # Also when the connection was open already: a send whose connection was lost
        # after its commit left its message in the outbox.
        await self._flush_outbox(conn)

    async def pending_outbox(self) -> int:
        """How many messages wait in the outbox for the relay's acceptance."""
        async with self._store.transaction() as tx:
            return await tx.count(Table.OUTBOX)

    async def _after_connect(self, conn: RelayConnection) -> None:
        await super()._after_connect(conn)  # the capabilities' steps (key upkeep) first
        await self._flush_outbox(conn)

    # --- security events ------------------------------------------------------------------

    async def events(self, *, wait: bool = True) -> AsyncIterator[EventItem]:
        """``async for item in client.events():`` every security event, oldest first
        (``item.event`` is one of ``client_sdk.events``). An event leaves the store when
        the loop asks for the next one or on ``await item.done()``; leaving the loop keeps
        the current one for the next ``events()`` loop. Events are produced by the work
        that finds them (a ``send``, the ``messages()`` loop, a connection); with
        ``wait=False`` the loop ends when none is left, otherwise it waits for more until
        the client is closed.
        """
        current: EventItem | None = None
        while not self._closed:
            if current is not None:
                await current.done()
                current = None
            self._event_added.clear()
            async with self._store.transaction() as tx:
                rows = await tx.scan(Table.EVENTS, limit=1)
            if rows:
                key, value = rows[0]
                current = EventItem(self, key, decode_event(value))
                yield current
                continue
            if not wait:
                return
            closed = asyncio.ensure_future(self._closed_event.wait())
            added = asyncio.ensure_future(self._event_added.wait())
            try:
                await asyncio.wait((closed, added), return_when=asyncio.FIRST_COMPLETED)
            finally:
                closed.cancel()
                added.cancel()
