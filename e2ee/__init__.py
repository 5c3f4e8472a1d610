"""Protocol core of the e2ee messaging backend: sans-I/O, synchronous, typed.

X3DH/PQXDH session setup, the Double Ratchet, signed device lists, prekeys, strict
encodings, inner payloads and safety numbers, exactly as DESIGN section 4 pins them.
Randomness comes in as ``rng`` and time as ``now_ms``; every state object
serializes to versioned bytes.
"""

from __future__ import annotations

from .device import OurDevice, OurPreKeys, PreKeyUse
from .device_list import (
    DeviceEntry,
    DeviceList,
    DeviceListCheck,
    MasterKeyChanged,
    PeerDevice,
    SignedDeviceList,
    check_device_list,
)
from .envelope import MIN_PROTOCOL_VERSION, PROTOCOL_VERSION, Suite
from .errors import (
    BadSignature,
    CorruptState,
    DecodeError,
    DecryptionError,
    DeviceListRollback,
    DowngradeError,
    DuplicateMessage,
    E2EEError,
    Equivocation,
    InvalidArgument,
    InvalidKey,
    KeyAgreementError,
    LowOrderPoint,
    MessageKeyUnavailable,
    StalePreKey,
    UnknownPreKey,
    UnsupportedVersion,
    UntrustedIdentity,
)
from .identifiers import Address
from .keys import SigningKeyPair
from .prekeys import PreKeyBundle, PreKeyKind, SignedPublicPreKey
from .session import Decrypted, Session, SessionRecord, decrypt, start_session

__all__ = [
    "MIN_PROTOCOL_VERSION",
    "PROTOCOL_VERSION",
    "Address",
    "BadSignature",
    "CorruptState",
    "DecodeError",
    "Decrypted",
    "DecryptionError",
    "DeviceEntry",
    "DeviceList",
    "DeviceListCheck",
    "DeviceListRollback",
    "DowngradeError",
    "DuplicateMessage",
    "E2EEError",
    "Equivocation",
    "InvalidArgument",
    "InvalidKey",
    "KeyAgreementError",
    "LowOrderPoint",
    "MasterKeyChanged",
    "MessageKeyUnavailable",
    "OurDevice",
    "OurPreKeys",
    "PeerDevice",
    "PreKeyBundle",
    "PreKeyKind",
    "PreKeyUse",
    "Session",
    "SessionRecord",
    "SignedDeviceList",
    "SignedPublicPreKey",
    "SigningKeyPair",
    "StalePreKey",
    "Suite",
    "UnknownPreKey",
    "UnsupportedVersion",
    "UntrustedIdentity",
    "check_device_list",
    "decrypt",
    "start_session",
]
