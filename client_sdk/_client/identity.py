"""Safety numbers, verification and identity changes (issue 4 "API", DESIGN 4.2).

* :meth:`IdentityMixin.safety_number` gives the 60 digits and the QR payload both users
  compare (``e2ee.safety_numbers``: libsignal's numeric fingerprint of the two master
  keys).
* :meth:`IdentityMixin.verify` checks digits or a scanned QR payload against the
  contact's current master key and records the verification (``VerificationRecord``
  at ``VERIFICATION / lookup(user)``).
* Identity changes are decided where device lists are checked
  (``ClientBase._device_list``): a contact's list signed by a new master key is pinned
  at once if the contact was not verified (old sessions ended, ``IdentityChanged(user,
  verified=False)``); for a verified contact it is kept pending and sending is blocked
  (``IdentityChangeBlocked``, ``IdentityChanged(user, verified=True)``) until
  :meth:`IdentityMixin.accept_identity_change` or a successful :meth:`verify` of the new
  number. A master key a contact had before is never accepted again, so a relay cannot
  roll an accepted change back.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from enum import StrEnum

from e2ee.errors import E2EEError
from e2ee.identifiers import check_user_id
from e2ee.primitives import constant_time_equal
from e2ee.safety_numbers import SafetyNumber

from ..errors import IdentityChangeBlocked, IdentityError, SafetyNumberMismatch, UsageError
from ..store import Store, Table, Transaction
from . import records
from .base import ClientBase, decode_stored_list
from .records import IdentityRecord, VerificationRecord

__all__ = [
    "ContactSafetyNumber",
    "IdentityMixin",
    "VerificationState",
    "read_verification_state",
]

logger = logging.getLogger("client_sdk.client")


class VerificationState(StrEnum):
    """How far a contact's identity is confirmed."""

    UNVERIFIED = "unverified"
    """The master key is pinned on first use (or was re-pinned after a change of an
    unverified contact); the safety number was not compared."""
    VERIFIED = "verified"
    """The safety number of the pinned master key was compared (:meth:`verify`)."""
    CHANGE_PENDING = "change_pending"
    """A verified contact's relay offers a new master key: sending is blocked until
    ``accept_identity_change`` (or a ``verify`` of the new safety number)."""


@dataclass(frozen=True, slots=True)
class ContactSafetyNumber:
    """The safety number between this user and a contact.

    Attributes:
        user_id: the contact.
        digits: the 60 digits both users see (the same on both sides).
        qr_payload: the bytes to show as a QR code for the contact to scan (they pass
            them to their own ``verify``; they are not the same on both sides).
        pending: it is computed with a new master key the contact's relay offers
            (a change of a verified contact not accepted yet); verifying it accepts
            that key.
    """

    user_id: str
    digits: str
    qr_payload: bytes = field(repr=False)
    pending: bool

    def display(self) -> str:
        """The 60 digits in twelve groups of five."""
        return " ".join(self.digits[i : i + 5] for i in range(0, len(self.digits), 5))


async def read_verification_state(
    store: Store, tx: Transaction, user_id: str, device_id: int | None, *, own_user_id: str
) -> VerificationState:
    """``user_id``'s :class:`VerificationState` as ``tx`` sees it. With ``device_id``
    (a message's sender), ``VERIFIED`` also needs that device in the pinned list (a
    device of a replaced key is ``UNVERIFIED``). Our own account is ``VERIFIED`` (its
    lists are signed by the master key this account holds).

    Raises:
        StoreCorrupt: a stored record does not decode.
    """
    if user_id == own_user_id:
        return VerificationState.VERIFIED
    ident = await IdentityRecord.load(tx, store.lookup_key(user_id, records.IDENTITY_PART))
    if ident.pending is not None:
        return VerificationState.CHANGE_PENDING
    data = await tx.get(Table.VERIFICATION, store.lookup_key(user_id))
    if data is None:
        return VerificationState.UNVERIFIED
    stored = decode_stored_list(await tx.get(Table.PEER_DEVICE_LISTS, store.lookup_key(user_id)))
    if stored is None:
        return VerificationState.UNVERIFIED
    verified = VerificationRecord.from_bytes(data)
    if not constant_time_equal(verified.master_pk, stored.statement.master_pk):
        return VerificationState.UNVERIFIED
    if device_id is not None and stored.statement.device(device_id) is None:
        return VerificationState.UNVERIFIED
    return VerificationState.VERIFIED


def _matches(number: SafetyNumber, code: str | bytes) -> bool:
    """Whether ``code`` (digits, spaces ignored, or a scanned QR payload) is ``number``."""
    if isinstance(code, str):
        return number.verify_digits(code)
    try:
        return number.verify_qr(code)
    except E2EEError:
        return False


class IdentityMixin(ClientBase):
    """Safety numbers, ``verify``, ``accept_identity_change`` and verification states
    (see the module documentation)."""

    def _contact(self, user_id: str) -> None:
        """Check ``user_id`` names a contact (not this account).

        Raises:
            UsageError: not registered, closed, a bad user id, or our own user id.
        """
        _, account = self._ready()
        try:
            check_user_id(user_id)
        except E2EEError as exc:
            raise UsageError(str(exc)) from exc
        if user_id == account.user_id:
            raise UsageError("a safety number is between this user and another one")

    async def _contact_key(self, user_id: str) -> tuple[bytes, bool]:
        """``(master key, pending)``: the new key a verified contact's relay offers if a
        change is pending, else the pinned key (the device list is fetched first when
        none is stored)."""
        for _ in range(2):
            async with self._store.transaction() as tx:
                stored = decode_stored_list(
                    await tx.get(Table.PEER_DEVICE_LISTS, self._store.lookup_key(user_id))
                )
                ident = await IdentityRecord.load(
                    tx, self._store.lookup_key(user_id, records.IDENTITY_PART)
                )
            pending = decode_stored_list(ident.pending)
            if pending is not None:
                return pending.statement.master_pk, True
            if stored is not None:
                return stored.statement.master_pk, False
            conn = await self._connection()
            try:
                await self._device_list(conn, user_id)
            except IdentityChangeBlocked:
                continue
        raise IdentityError(user_id, "NoDeviceList")  # pragma: no cover - stored above

    async def safety_number(self, user_id: str) -> ContactSafetyNumber:
        """The safety number between this user and ``user_id`` (fetching and checking
        ``user_id``'s device list from the relay if none is stored). While a verified
        contact's identity change is pending, it is the number of the *new* key
        (``pending=True``): comparing it and calling :meth:`verify` accepts the change.

        Raises:
            UsageError: not registered, closed, a bad user id, or our own user id.
            IdentityError: the relay's device list of ``user_id`` fails verification.
            TransportError: the list had to be fetched and the relay could not be asked
                (``UnknownUser`` for an unknown account).
        """
        self._contact(user_id)
        device, account = self._ready()
        master_pk, pending = await self._contact_key(user_id)
        number = SafetyNumber.compute(account.user_id, device.master_pk, user_id, master_pk)
        return ContactSafetyNumber(user_id, number.digits, number.qr_payload(), pending)

    async def verify(self, user_id: str, code: str | bytes) -> bool:
        """Check ``code`` against the safety number of ``user_id``'s current master key
        (the one :meth:`safety_number` shows): the 60 digits as ``str`` (spaces ignored)
        or the contact's QR payload as ``bytes`` (its halves must be on the right sides:
        our own payload, or one with a half swapped or duplicated, fails). On a match
        the verification is recorded (the master key and the time), and a pending
        identity change of the contact is accepted with it. Returns ``True``; a mismatch
        raises and records nothing.

        Raises:
            UsageError: not registered, closed, a bad user id, our own user id, or
                ``code`` neither ``str`` nor ``bytes``.
            SafetyNumberMismatch: ``code`` is not this contact's safety number (or the
                key changed meanwhile).
            IdentityError: the relay's device list of ``user_id`` fails verification.
            TransportError: the list had to be fetched and the relay could not be asked.
        """
        self._contact(user_id)
        if not isinstance(code, str | bytes):
            raise UsageError("a safety number is str (digits) or bytes (a QR payload)")
        device, account = self._ready()
        master_pk, _ = await self._contact_key(user_id)
        number = SafetyNumber.compute(account.user_id, device.master_pk, user_id, master_pk)
        if not _matches(number, code):
            logger.warning("a safety number did not match")
            raise SafetyNumberMismatch(user_id)
        ident_key = self._store.lookup_key(user_id, records.IDENTITY_PART)
        recorded = False
        async with self._store.transaction() as tx:
            stored = decode_stored_list(
                await tx.get(Table.PEER_DEVICE_LISTS, self._store.lookup_key(user_id))
            )
            ident = await IdentityRecord.load(tx, ident_key)
            pending = decode_stored_list(ident.pending)
            current = pending if pending is not None else stored
            if current is not None and constant_time_equal(current.statement.master_pk, master_pk):
                if pending is not None:
                    ident = await self._repin(tx, user_id, stored, pending, ident)
                    await tx.put(Table.VERIFICATION, ident_key, ident.to_bytes())
                record = VerificationRecord(master_pk, self._clock())
                await tx.put(Table.VERIFICATION, self._store.lookup_key(user_id), record.to_bytes())
                recorded = True
        if not recorded:
            logger.warning("a contact's master key changed while it was being verified")
            raise SafetyNumberMismatch(user_id)
        logger.info("a contact was verified")
        return True

    async def accept_identity_change(self, user_id: str) -> bool:
        """Accept the new master key a verified contact's relay offered (the change that
        blocked sending with ``IdentityChangeBlocked``): it is pinned as on first use,
        the old key is retired for good (a relay serving the old list again is refused),
        sessions with the old devices are ended, and the contact is no longer verified
        (compare the new safety number and :meth:`verify` again). Works offline: the
        offered list was stored when the change was found. Messages left in the outbox
        by the blocked send go to the new devices on the next connection. Returns
        whether a change was pending (an unverified contact's change is accepted
        automatically, so there is nothing to accept).

        Raises:
            UsageError: not registered, closed, a bad user id, or our own user id.
            StoreCorrupt: a stored record does not decode.
        """
        self._contact(user_id)
        ident_key = self._store.lookup_key(user_id, records.IDENTITY_PART)
        async with self._store.transaction() as tx:
            stored = decode_stored_list(
                await tx.get(Table.PEER_DEVICE_LISTS, self._store.lookup_key(user_id))
            )
            ident = await IdentityRecord.load(tx, ident_key)
            pending = decode_stored_list(ident.pending)
            if pending is None:
                return False
            ident = await self._repin(tx, user_id, stored, pending, ident)
            await tx.put(Table.VERIFICATION, ident_key, ident.to_bytes())
        logger.info("a contact's identity change was accepted")
        return True

    async def verification_state(self, user_id: str) -> VerificationState:
        """``user_id``'s :class:`VerificationState` (from the store; no relay request).

        Raises:
            UsageError: not registered, closed, or a bad user id.
            StoreCorrupt: a stored record does not decode.
        """
        _, account = self._ready()
        try:
            check_user_id(user_id)
        except E2EEError as exc:
            raise UsageError(str(exc)) from exc
        async with self._store.transaction() as tx:
            return await read_verification_state(
                self._store, tx, user_id, None, own_user_id=account.user_id
            )

    async def is_verified(self, user_id: str) -> bool:
        """Whether ``user_id``'s pinned master key was verified and no change of it is
        pending (``verification_state(user_id) is VerificationState.VERIFIED``).

        Raises:
            UsageError: not registered, closed, or a bad user id.
            StoreCorrupt: a stored record does not decode.
        """
        return await self.verification_state(user_id) is VerificationState.VERIFIED
