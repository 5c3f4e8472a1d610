"""Prekeys and prekey bundles (DESIGN 4.2, 4.3).

Every prekey a device publishes is signed by the device's signing key under its own
label, over ``{0: user_id, 1: device_id, 2: prekey_id, 3: created_at_ms, 4: public_key}``.
A bundle is validated in full (:func:`validate_bundle`) before any DH is computed.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import Final

from . import cbor
from .device_list import PeerDevice
from .errors import DecodeError, DowngradeError, StalePreKey, UntrustedIdentity
from .identifiers import DEVICE_ID_MAX, check_user_id
from .keys import verify_statement
from .labels import Label
from .limits import SIGNED_PREKEY_MAX_AGE_MS
from .primitives import (
    ED25519_SIGNATURE_SIZE,
    MLKEM768_PUBLIC_KEY_SIZE,
    X25519_KEY_SIZE,
    mlkem768_validate_public,
    x25519_validate_public,
)

__all__ = [
    "PREKEY_ID_MAX",
    "PreKeyBundle",
    "PreKeyKind",
    "SignedPublicPreKey",
    "prekey_statement",
    "validate_bundle",
]

PREKEY_ID_MAX: Final = 2**32 - 1
_U63: Final = 2**63 - 1
_PREKEY_KEYS: Final = frozenset(range(4))
_BUNDLE_KEYS: Final = frozenset(range(5))
_BUNDLE_OPTIONAL: Final = frozenset({5})


class PreKeyKind(IntEnum):
    """The four kinds of published prekey; each is signed under its own label."""

    SIGNED = 1
    ONE_TIME = 2
    KEM = 3
    KEM_LAST_RESORT = 4

    @property
    def label(self) -> Label:
        """The signature label of this kind."""
        return _LABELS[self]

    @property
    def is_kem(self) -> bool:
        """Whether this kind holds an ML-KEM-768 key (else X25519)."""
        return self in (PreKeyKind.KEM, PreKeyKind.KEM_LAST_RESORT)


_LABELS: Final = {
    PreKeyKind.SIGNED: Label.SIGNED_PREKEY,
    PreKeyKind.ONE_TIME: Label.ONE_TIME_PREKEY,
    PreKeyKind.KEM: Label.KEM_PREKEY,
    PreKeyKind.KEM_LAST_RESORT: Label.KEM_LAST_RESORT,
}


def prekey_statement(
    user_id: str, device_id: int, prekey_id: int, created_at_ms: int, public_key: bytes
) -> cbor.Value:
    """The statement a device signs for one prekey."""
    return {0: user_id, 1: device_id, 2: prekey_id, 3: created_at_ms, 4: public_key}


@dataclass(frozen=True, slots=True)
class SignedPublicPreKey:
    """A published prekey with its signature; CBOR ``{0: id, 1: created_at_ms,
    2: public_key, 3: signature}`` (the kind is given by where it appears)."""

    kind: PreKeyKind
    prekey_id: int
    created_at_ms: int
    public_key: bytes
    signature: bytes

    def to_value(self) -> cbor.Value:
        """The CBOR map of this prekey."""
        return {0: self.prekey_id, 1: self.created_at_ms, 2: self.public_key, 3: self.signature}

    @classmethod
    def from_value(cls, value: cbor.Value, kind: PreKeyKind) -> SignedPublicPreKey:
        """Decode one prekey of ``kind``, validating its public key.

        Raises:
            DecodeError: malformed, or the key is invalid.
        """
        m = cbor.expect_map(value, f"{kind.name.lower()} prekey", _PREKEY_KEYS)
        size = MLKEM768_PUBLIC_KEY_SIZE if kind.is_kem else X25519_KEY_SIZE
        public_key = cbor.field_bytes(m, 2, "prekey public key", size=size)
        if kind.is_kem:
            mlkem768_validate_public(public_key)
        else:
            x25519_validate_public(public_key)
        return cls(
            kind=kind,
            prekey_id=cbor.field_int(m, 0, "prekey id", 0, PREKEY_ID_MAX),
            created_at_ms=cbor.field_int(m, 1, "created_at_ms", 0, _U63),
            public_key=public_key,
            signature=cbor.field_bytes(m, 3, "signature", size=ED25519_SIGNATURE_SIZE),
        )

    def verify(self, user_id: str, device_id: int, signing_pk: bytes) -> None:
        """Check the signature of the device ``(user_id, device_id)`` over this prekey.

        Raises:
            BadSignature: it does not verify (under this kind's label).
        """
        statement = prekey_statement(
            user_id, device_id, self.prekey_id, self.created_at_ms, self.public_key
        )
        verify_statement(signing_pk, self.kind.label, statement, self.signature)


@dataclass(frozen=True, slots=True)
class PreKeyBundle:
    """What the relay serves for one device: CBOR ``{0: user_id, 1: device_id,
    2: signed prekey, 3: one-time prekey or null, 4: KEM prekey or null,
    5: true when the KEM prekey is the last-resort one}``."""

    user_id: str
    device_id: int
    signed_prekey: SignedPublicPreKey
    one_time_prekey: SignedPublicPreKey | None
    kem_prekey: SignedPublicPreKey | None

    def to_bytes(self) -> bytes:
        """The canonical wire encoding."""
        value: dict[int, cbor.Value] = {
            0: self.user_id,
            1: self.device_id,
            2: self.signed_prekey.to_value(),
            3: None if self.one_time_prekey is None else self.one_time_prekey.to_value(),
            4: None if self.kem_prekey is None else self.kem_prekey.to_value(),
        }
        if self.kem_prekey is not None and self.kem_prekey.kind is PreKeyKind.KEM_LAST_RESORT:
            value[5] = True
        return cbor.encode(value)

    @classmethod
    def from_bytes(cls, data: bytes) -> PreKeyBundle:
        """Decode a bundle and validate every key encoding (signatures are checked by
        :func:`validate_bundle`, against the verified device list).

        Raises:
            DecodeError: malformed bytes or an invalid key.
        """
        m = cbor.expect_map(cbor.decode(data), "prekey bundle", _BUNDLE_KEYS, _BUNDLE_OPTIONAL)
        if 5 in m and m[5] is not True:
            raise DecodeError("prekey bundle: field 5 is present only as true")
        kem_kind = PreKeyKind.KEM_LAST_RESORT if 5 in m else PreKeyKind.KEM
        if 5 in m and m[4] is None:
            raise DecodeError("prekey bundle: last-resort flag without a KEM prekey")
        return cls(
            user_id=check_user_id(m[0]),
            device_id=cbor.field_int(m, 1, "device id", 0, DEVICE_ID_MAX),
            signed_prekey=SignedPublicPreKey.from_value(m[2], PreKeyKind.SIGNED),
            one_time_prekey=(
                None if m[3] is None else SignedPublicPreKey.from_value(m[3], PreKeyKind.ONE_TIME)
            ),
            kem_prekey=None if m[4] is None else SignedPublicPreKey.from_value(m[4], kem_kind),
        )


def validate_bundle(bundle: PreKeyBundle, device: PeerDevice, now_ms: int) -> None:
    """Validate ``bundle`` in full against ``device`` from the verified device list,
    before any DH (DESIGN 4.3): the address matches, every signature verifies under
    the device's signing key, the signed prekey is at most 30 days old, and a ``pq``
    device offers an ML-KEM prekey.

    Raises:
        UntrustedIdentity: the bundle is for another user or device.
        BadSignature: a prekey signature does not verify.
        StalePreKey: the signed prekey is older than 30 days.
        DowngradeError: the device is ``pq`` and the bundle has no KEM prekey.
    """
    if bundle.user_id != device.user_id or bundle.device_id != device.device_id:
        raise UntrustedIdentity("bundle is for another device", device.user_id, device.device_id)
    signing_pk = device.entry.signing_pk
    for prekey in (bundle.signed_prekey, bundle.one_time_prekey, bundle.kem_prekey):
        if prekey is not None:
            prekey.verify(bundle.user_id, bundle.device_id, signing_pk)
    if now_ms - bundle.signed_prekey.created_at_ms > SIGNED_PREKEY_MAX_AGE_MS:
        raise StalePreKey("signed prekey is older than 30 days")
    if device.entry.pq and bundle.kem_prekey is None:
        raise DowngradeError("device is post-quantum but the bundle has no ML-KEM prekey")
