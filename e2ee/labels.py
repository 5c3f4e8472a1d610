"""The registry of every signature and KDF label (DESIGN 4.1).

Every Ed25519 signature is made over ``label || 0x00 || canonical-CBOR(statement)``
and every HKDF ``info`` is one of these labels. Labels are distinct ASCII strings
without NUL; :data:`ALL_LABELS` is checked for that at import.
"""

from __future__ import annotations

from enum import Enum

__all__ = ["ALL_LABELS", "SIGNATURE_LABELS", "Label"]


class Label(bytes, Enum):
    """A domain-separation label. The value is the exact ASCII bytes used on the wire."""

    DEVICE_LIST = b"e2ee/v1/device-list"
    SIGNED_PREKEY = b"e2ee/v1/signed-prekey"
    ONE_TIME_PREKEY = b"e2ee/v1/one-time-prekey"
    KEM_PREKEY = b"e2ee/v1/kem-prekey"
    KEM_LAST_RESORT = b"e2ee/v1/kem-last-resort"
    RELAY_AUTH = b"e2ee/v1/relay-auth"
    REGISTER = b"e2ee/v1/register"
    LINK = b"e2ee/v1/link"
    SESSION_AD = b"e2ee/v1/session-ad"
    X3DH = b"e2ee/v1/x3dh"
    PQXDH = b"e2ee/v1/pqxdh"
    RATCHET = b"e2ee/v1/ratchet"
    MESSAGE = b"e2ee/v1/message"
    STORE = b"e2ee/v1/store"
    SHARE_KEY = b"e2ee/v1/share-key"
    SHARE_PROOF = b"e2ee/v1/share-proof"
    RECOVERY = b"e2ee/v1/recovery"


ALL_LABELS: tuple[Label, ...] = tuple(Label)

SIGNATURE_LABELS: tuple[Label, ...] = (
    Label.DEVICE_LIST,
    Label.SIGNED_PREKEY,
    Label.ONE_TIME_PREKEY,
    Label.KEM_PREKEY,
    Label.KEM_LAST_RESORT,
    Label.RELAY_AUTH,
    Label.REGISTER,
    Label.LINK,
)
"""Labels under which Ed25519 signatures are made."""


def _check_registry() -> None:
    values = [label.value for label in ALL_LABELS]
    if len(set(values)) != len(values):  # pragma: no cover - a programming error caught at import
        raise RuntimeError("duplicate label")
    for value in values:
        if b"\x00" in value or not value.isascii():  # pragma: no cover - same
            raise RuntimeError(f"label {value!r} is not NUL-free ASCII")


_check_registry()
