"""The signed device list: the only device certificate (DESIGN 4.2).

A user's master key (Ed25519) signs
``{user_id, master_pk, version, issued_at_ms, prev_hash, devices}`` under the
``e2ee/v1/device-list`` label. Clients accept a list only after
:func:`check_device_list`: the user id is the one asked for, ``master_pk`` equals
the pinned master key, the version never goes back, two different lists with one
version (or a successor that does not chain to what we saw) are an
:class:`~e2ee.errors.Equivocation`, and a list older than 30 days is reported stale.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

from . import cbor
from .errors import (
    DecodeError,
    DeviceListRollback,
    Equivocation,
    InvalidArgument,
    UntrustedIdentity,
)
from .identifiers import DEVICE_ID_MAX, check_user_id
from .keys import SigningKeyPair, verify_statement
from .labels import Label
from .limits import DEVICE_LIST_RESIGN_MS, DEVICE_LIST_STALE_MS, MAX_DEVICES_PER_LIST
from .primitives import (
    ED25519_SIGNATURE_SIZE,
    constant_time_equal,
    ed25519_validate_public,
    sha256,
    x25519_validate_public,
)

__all__ = [
    "DeviceEntry",
    "DeviceList",
    "DeviceListCheck",
    "MasterKeyChanged",
    "PeerDevice",
    "SignedDeviceList",
    "check_device_list",
]

_U63: Final = 2**63 - 1
_ENTRY_KEYS: Final = frozenset(range(5))
_LIST_KEYS: Final = frozenset(range(6))
_SIGNED_KEYS: Final = frozenset(range(2))


class MasterKeyChanged(UntrustedIdentity):
    """A device list signed by a master key other than the one pinned for that user."""


@dataclass(frozen=True, slots=True)
class DeviceEntry:
    """One device in a signed device list."""

    device_id: int
    signing_pk: bytes
    x25519_ik: bytes
    pq: bool
    added_at_ms: int

    def to_value(self) -> cbor.Value:
        """The CBOR map ``{0: device_id, 1: signing_pk, 2: x25519_ik, 3: pq, 4: added_at_ms}``."""
        return {
            0: self.device_id,
            1: self.signing_pk,
            2: self.x25519_ik,
            3: self.pq,
            4: self.added_at_ms,
        }

    @classmethod
    def from_value(cls, value: cbor.Value) -> DeviceEntry:
        """Decode and validate one entry (keys checked as DESIGN 4.2 says).

        Raises:
            DecodeError: a malformed field or an invalid key.
        """
        m = cbor.expect_map(value, "device entry", _ENTRY_KEYS)
        return cls(
            device_id=cbor.field_int(m, 0, "device id", 0, DEVICE_ID_MAX),
            signing_pk=ed25519_validate_public(cbor.field_bytes(m, 1, "signing key", size=32)),
            x25519_ik=x25519_validate_public(cbor.field_bytes(m, 2, "identity key", size=32)),
            pq=cbor.field_bool(m, 3, "pq"),
            added_at_ms=cbor.field_int(m, 4, "added_at_ms", 0, _U63),
        )


@dataclass(frozen=True, slots=True)
class PeerDevice:
    """A device of a user, as taken from that user's verified device list."""

    user_id: str
    master_pk: bytes
    entry: DeviceEntry

    @property
    def device_id(self) -> int:
        """The device's id."""
        return self.entry.device_id


@dataclass(frozen=True, slots=True)
class DeviceList:
    """The statement a master key signs: one version of a user's set of devices."""

    user_id: str
    master_pk: bytes
    version: int
    issued_at_ms: int
    prev_hash: bytes | None
    devices: tuple[DeviceEntry, ...]

    def __post_init__(self) -> None:
        check_user_id(self.user_id)
        ids = [d.device_id for d in self.devices]
        if ids != sorted(set(ids)):
            raise DecodeError("device list: device ids must be unique and ascending")
        if len(ids) > MAX_DEVICES_PER_LIST:
            raise DecodeError(f"device list: more than {MAX_DEVICES_PER_LIST} devices")
        if self.version < 1 or (self.version == 1) != (self.prev_hash is None):
            raise DecodeError("device list: version 1 has no prev_hash; later versions do")

    def to_value(self) -> cbor.Value:
        """The signed statement as a CBOR map (keys 0..5 in the order of DESIGN 4.2)."""
        return {
            0: self.user_id,
            1: self.master_pk,
            2: self.version,
            3: self.issued_at_ms,
            4: self.prev_hash,
            5: [d.to_value() for d in self.devices],
        }

    @classmethod
    def from_value(cls, value: cbor.Value) -> DeviceList:
        """Decode and validate the statement.

        Raises:
            DecodeError: a malformed field, an invalid key, or unsorted/duplicate devices.
        """
        m = cbor.expect_map(value, "device list", _LIST_KEYS)
        return cls(
            user_id=check_user_id(m[0]),
            master_pk=ed25519_validate_public(cbor.field_bytes(m, 1, "master key", size=32)),
            version=cbor.field_int(m, 2, "version", 1, _U63),
            issued_at_ms=cbor.field_int(m, 3, "issued_at_ms", 0, _U63),
            prev_hash=cbor.field_optional_bytes(m, 4, "prev_hash", size=32),
            devices=tuple(
                DeviceEntry.from_value(v)
                for v in cbor.field_list(m, 5, "devices", MAX_DEVICES_PER_LIST)
            ),
        )

    def device(self, device_id: int) -> DeviceEntry | None:
        """The entry of ``device_id``, or ``None`` when the list does not hold it."""
        for entry in self.devices:
            if entry.device_id == device_id:
                return entry
        return None

    def peer(self, device_id: int) -> PeerDevice | None:
        """``device_id`` as a :class:`PeerDevice`, or ``None`` when not in the list."""
        entry = self.device(device_id)
        return None if entry is None else PeerDevice(self.user_id, self.master_pk, entry)


@dataclass(frozen=True, slots=True)
class SignedDeviceList:
    """A :class:`DeviceList` with the master key's signature; the wire form is CBOR
    ``{0: statement, 1: signature}``."""

    statement: DeviceList
    signature: bytes
    encoded: bytes = field(default=b"", compare=False, repr=False)

    @classmethod
    def sign(cls, statement: DeviceList, master: SigningKeyPair) -> SignedDeviceList:
        """Sign ``statement`` with the user's master key.

        Raises:
            InvalidArgument: ``master`` is not the key the statement names.
        """
        if not constant_time_equal(master.public_key, statement.master_pk):
            raise InvalidArgument("the device list names another master key")
        signature = master.sign(Label.DEVICE_LIST, statement.to_value())
        return cls(statement, signature, cbor.encode({0: statement.to_value(), 1: signature}))

    def to_bytes(self) -> bytes:
        """The canonical wire encoding."""
        return self.encoded or cbor.encode({0: self.statement.to_value(), 1: self.signature})

    @property
    def digest(self) -> bytes:
        """SHA-256 of the wire encoding: the next version's ``prev_hash``."""
        return sha256(self.to_bytes())

    @classmethod
    def from_bytes(cls, data: bytes) -> SignedDeviceList:
        """Decode, validate every key, and verify the signature under the master key the
        list names (whether that key is trusted is :func:`check_device_list`'s job).

        Raises:
            DecodeError: malformed bytes or an invalid key.
            BadSignature: the signature does not verify.
        """
        m = cbor.expect_map(cbor.decode(data), "signed device list", _SIGNED_KEYS)
        statement = DeviceList.from_value(m[0])
        signature = cbor.field_bytes(m, 1, "signature", size=ED25519_SIGNATURE_SIZE)
        verify_statement(statement.master_pk, Label.DEVICE_LIST, m[0], signature)
        return cls(statement, signature, bytes(data))

    def needs_resign(self, now_ms: int) -> bool:
        """Whether the primary should publish a re-signed successor: lists are
        re-signed at least every 7 days (DESIGN 4.2)."""
        return now_ms - self.statement.issued_at_ms >= DEVICE_LIST_RESIGN_MS

    def successor(
        self,
        master: SigningKeyPair,
        devices: tuple[DeviceEntry, ...],
        issued_at_ms: int,
    ) -> SignedDeviceList:
        """Sign version + 1 with ``devices`` (adding, removing or just re-signing)."""
        s = self.statement
        statement = DeviceList(
            s.user_id, s.master_pk, s.version + 1, issued_at_ms, self.digest, devices
        )
        return SignedDeviceList.sign(statement, master)


@dataclass(frozen=True, slots=True)
class DeviceListCheck:
    """The outcome of :func:`check_device_list`: what to store and what to report."""

    accepted: SignedDeviceList
    changed: bool
    stale: bool
    added: tuple[DeviceEntry, ...]
    removed: tuple[DeviceEntry, ...]


def check_device_list(
    offered: SignedDeviceList,
    *,
    user_id: str,
    pinned_master_pk: bytes | None,
    last_seen: SignedDeviceList | None,
    now_ms: int,
) -> DeviceListCheck:
    """Decide whether ``offered`` may replace ``last_seen`` as ``user_id``'s list
    (DESIGN 4.2). ``offered`` has already had its signature verified at decode.

    Raises:
        UntrustedIdentity: the list is for another user.
        MasterKeyChanged: it is signed by a master key other than the pinned one.
        DeviceListRollback: its version is lower than the last seen.
        Equivocation: same version with other bytes, or version + 1 whose ``prev_hash``
            is not the list we saw.
    """
    s = offered.statement
    if s.user_id != user_id:
        raise UntrustedIdentity(f"device list is for {s.user_id!r}, not {user_id!r}", user_id)
    if pinned_master_pk is not None and not constant_time_equal(s.master_pk, pinned_master_pk):
        raise MasterKeyChanged(f"master key of {user_id!r} changed", user_id)
    stale = now_ms - s.issued_at_ms > DEVICE_LIST_STALE_MS
    if last_seen is None:
        return DeviceListCheck(offered, True, stale, s.devices, ())
    seen = last_seen.statement
    if s.version < seen.version:
        raise DeviceListRollback(user_id, seen.version, s.version)
    if s.version == seen.version:
        if offered.to_bytes() != last_seen.to_bytes():
            raise Equivocation(user_id, s.version)
        return DeviceListCheck(last_seen, False, stale, (), ())
    if s.version == seen.version + 1 and s.prev_hash != last_seen.digest:
        raise Equivocation(user_id, seen.version)
    old = {d.device_id: d for d in seen.devices}
    new = {d.device_id: d for d in s.devices}
    added = tuple(d for i, d in new.items() if old.get(i) != d)
    removed = tuple(d for i, d in old.items() if new.get(i) != d)
    return DeviceListCheck(offered, True, stale, added, removed)
