"""Registration of a primary device (issue 4 "API", DESIGN 4.2)."""

from __future__ import annotations

import logging
from typing import Final

from e2ee.device import OurDevice, OurPreKeys
from e2ee.device_list import DeviceList, SignedDeviceList
from e2ee.errors import E2EEError
from e2ee.identifiers import check_user_id, new_device_id
from e2ee.keys import SigningKeyPair

from ..errors import AuthFailed, StoreCorrupt, UsageError, UserIdTaken
from ..store import Table
from ..transport import register as http_register
from . import records
from .base import ClientBase
from .records import AccountRecord, Stage

__all__ = ["ONE_TIME_BATCH", "RegistrationMixin"]

logger = logging.getLogger("client_sdk.client")

ONE_TIME_BATCH: Final = 100
"""One-time EC and KEM prekeys uploaded at registration (one upload frame carries at
most ``MAX_PREKEYS_PER_UPLOAD`` = 100 of each kind)."""


class RegistrationMixin(ClientBase):
    """``register``: master key, device keys, device list v1, prekeys."""

    async def register(self, user_id: str, registration_token: str | None = None) -> None:
        """Make this the primary device of a new account ``user_id`` (DESIGN 4.2): a
        master key, device keys, the signed device list v1, registration over HTTP,
        then a signed prekey, 100 one-time EC and 100 ML-KEM prekeys and a last-resort
        prekey. Each step is committed before the next, and calling ``register``
        again after a crash resumes where it stopped.

        Raises:
            UsageError: already registered, a resumed registration for another user id,
                a store that started linking to an account,
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
            async with self._store.transaction() as tx:
                linking = await tx.get(Table.META, records.LINK)
            if linking is not None:
                raise UsageError(
                    "this store started linking to an existing account; open it with "
                    "its link code (or use a new store to register)"
                )
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
                one_time = prekeys.one_time_batch(device, now, count=ONE_TIME_BATCH, rng=self._rng)
                kem = prekeys.one_time_batch(
                    device, now, kem=True, count=ONE_TIME_BATCH, rng=self._rng
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
