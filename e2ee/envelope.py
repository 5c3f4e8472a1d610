"""The two fixed-layout message envelopes (DESIGN 4.1).

All integers are big-endian. A message envelope::

    version:u8 | type:u8 = 1 | ratchet_pk[32] | pn:u32 | n:u32 | ct_len:u32 | ct[ct_len]

The first 42 bytes are the ratchet *header*; the per-message associated data is
``session_ad || direction || header``, so the envelope version is authenticated.
A pre-key envelope (the X3DH/PQXDH header in front of a message envelope)::

    version:u8 | type:u8 = 2 | suite:u8 | flags:u8 | uid_len:u8 | user_id[uid_len]
    | device_id:u32 | ik_a[32] | ek_a[32] | spk_id:u32
    | opk_id:u32              (present iff flags bit 0)
    | kem_id:u32 | kem_ct[1088]  (present iff suite = PQXDH)
    | msg_len:u32 | message envelope[msg_len]

Fixed layouts are canonical by construction: every field has one encoding, the
input must be consumed exactly, and unknown flag bits are refused.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum
from typing import Final, NamedTuple

from .errors import DecodeError, UnsupportedVersion
from .identifiers import check_user_id
from .limits import MAX_ENVELOPE_SIZE
from .primitives import (
    AEAD_TAG_SIZE,
    MLKEM768_CIPHERTEXT_SIZE,
    X25519_KEY_SIZE,
    x25519_validate_public,
)

__all__ = [
    "HEADER_SIZE",
    "MIN_PROTOCOL_VERSION",
    "PROTOCOL_VERSION",
    "EnvelopeType",
    "MessageEnvelope",
    "PreKeyEnvelope",
    "Suite",
    "encode_prekey_header",
    "envelope_type",
]

PROTOCOL_VERSION: Final = 1
"""The envelope version this code writes."""
MIN_PROTOCOL_VERSION: Final = 1
"""The lowest envelope version this code accepts."""


class EnvelopeType(IntEnum):
    """The envelope's second byte."""

    MESSAGE = 1
    PREKEY = 2


class Suite(IntEnum):
    """The key agreement of a pre-key envelope."""

    X3DH = 1
    PQXDH = 2


_HEADER: Final = struct.Struct(">BB32sII")
HEADER_SIZE: Final = _HEADER.size  # 42
_CT_LEN: Final = struct.Struct(">I")
_HEADER_AND_LEN: Final = struct.Struct(">BB32sIII")
_CT_OFFSET: Final = HEADER_SIZE + _CT_LEN.size
_MIN_MESSAGE_SIZE: Final = _CT_OFFSET + AEAD_TAG_SIZE
_PREFIX: Final = struct.Struct(">BBBBB")
_U32: Final = struct.Struct(">I")
_FLAG_OPK: Final = 0x01
_new_tuple = tuple.__new__
_TYPES: Final = {int(t): t for t in EnvelopeType}  # a dict lookup is cheaper than EnvelopeType(b)


def _check_version(version: int) -> None:
    if not MIN_PROTOCOL_VERSION <= version <= PROTOCOL_VERSION:
        raise UnsupportedVersion("envelope", version)


def envelope_type(data: bytes) -> EnvelopeType:
    """The type of an envelope, after checking its version.

    Raises:
        DecodeError: too short or an unknown type.
        UnsupportedVersion: a version this code does not speak.
    """
    if len(data) < 2:
        raise DecodeError("envelope shorter than its version and type")
    if data[0] != PROTOCOL_VERSION:
        _check_version(data[0])
    kind = _TYPES.get(data[1])
    if kind is None:
        raise DecodeError(f"unknown envelope type {data[1]}")
    return kind


class MessageEnvelope(NamedTuple):
    """A Double Ratchet message: header (ratchet key, PN, N) and ciphertext.

    A ``NamedTuple`` rather than the frozen slotted dataclass other wire objects are
    (CONVENTIONS 8): one is built for every message received, and a frozen
    dataclass's ``__init__`` costs 0.45 us more per message. It is just as immutable.
    """

    ratchet_pk: bytes
    pn: int
    n: int
    ciphertext: bytes
    header: bytes
    """The exact 42 header bytes, kept for the associated data."""
    raw: bytes
    """The exact envelope bytes, kept for duplicate detection."""

    @staticmethod
    def encode_header(ratchet_pk: bytes, pn: int, n: int) -> bytes:
        """The 42-byte header of a message envelope.

        Raises:
            struct.error: a counter beyond 32 bits (a caller bug; sessions never get there).
        """
        return _HEADER.pack(PROTOCOL_VERSION, EnvelopeType.MESSAGE, ratchet_pk, pn, n)

    @staticmethod
    def encode_prefix(ratchet_pk: bytes, pn: int, n: int, plaintext_size: int) -> bytes:
        """The header and ciphertext-length field of the envelope of a plaintext of
        ``plaintext_size`` bytes: the envelope is this prefix followed by the
        ciphertext, and its first 42 bytes are the header."""
        return _HEADER_AND_LEN.pack(
            PROTOCOL_VERSION,
            EnvelopeType.MESSAGE,
            ratchet_pk,
            pn,
            n,
            plaintext_size + AEAD_TAG_SIZE,
        )

    @staticmethod
    def assemble(header: bytes, ciphertext: bytes) -> bytes:
        """Header, length and ciphertext as envelope bytes."""
        return header + _CT_LEN.pack(len(ciphertext)) + ciphertext

    @classmethod
    def from_bytes(cls, data: bytes) -> MessageEnvelope:
        """Parse a message envelope (lengths and key checked before any crypto).

        Raises:
            DecodeError: wrong type, truncated or trailing bytes, a ciphertext shorter
                than a tag, oversize, or an invalid ratchet key.
            UnsupportedVersion: a version this code does not speak.
        """
        if type(data) is not bytes:
            data = bytes(data)
        size = len(data)
        if size > MAX_ENVELOPE_SIZE:
            raise DecodeError("message envelope too large")
        if size < _MIN_MESSAGE_SIZE:
            raise DecodeError("message envelope truncated")
        version, kind, ratchet_pk, pn, n, ct_len = _HEADER_AND_LEN.unpack_from(data)
        if version != PROTOCOL_VERSION:
            _check_version(version)
        if kind != EnvelopeType.MESSAGE:
            raise DecodeError("not a message envelope")
        if ct_len != size - _CT_OFFSET:
            raise DecodeError("message envelope length mismatch")
        x25519_validate_public(ratchet_pk)
        return _new_tuple(cls, (ratchet_pk, pn, n, data[_CT_OFFSET:], data[:HEADER_SIZE], data))


def encode_prekey_header(
    suite: Suite,
    user_id: str,
    device_id: int,
    identity_key: bytes,
    base_key: bytes,
    signed_prekey_id: int,
    one_time_prekey_id: int | None,
    kem_prekey_id: int | None,
    kem_ciphertext: bytes | None,
) -> bytes:
    """The pre-key envelope up to (not including) its message-length field; an
    initiator sends it in front of every message until the first reply."""
    uid = user_id.encode("ascii")
    flags = _FLAG_OPK if one_time_prekey_id is not None else 0
    parts = [
        _PREFIX.pack(PROTOCOL_VERSION, EnvelopeType.PREKEY, suite, flags, len(uid)),
        uid,
        _U32.pack(device_id),
        identity_key,
        base_key,
        _U32.pack(signed_prekey_id),
    ]
    if one_time_prekey_id is not None:
        parts.append(_U32.pack(one_time_prekey_id))
    if kem_prekey_id is not None and kem_ciphertext is not None:
        parts += [_U32.pack(kem_prekey_id), kem_ciphertext]
    return b"".join(parts)


@dataclass(frozen=True, slots=True)
class PreKeyEnvelope:
    """An X3DH/PQXDH header and the first message(s) of a session (DESIGN 4.3)."""

    suite: Suite
    user_id: str
    device_id: int
    identity_key: bytes
    base_key: bytes
    signed_prekey_id: int
    one_time_prekey_id: int | None
    kem_prekey_id: int | None
    kem_ciphertext: bytes | None
    message: MessageEnvelope

    def __post_init__(self) -> None:
        if (self.suite is Suite.PQXDH) != (self.kem_prekey_id is not None) or (
            self.kem_prekey_id is None
        ) != (self.kem_ciphertext is None):
            raise DecodeError("KEM fields are present exactly when the suite is PQXDH")

    def header_bytes(self) -> bytes:
        """Everything before the message-length field."""
        return encode_prekey_header(
            self.suite,
            self.user_id,
            self.device_id,
            self.identity_key,
            self.base_key,
            self.signed_prekey_id,
            self.one_time_prekey_id,
            self.kem_prekey_id,
            self.kem_ciphertext,
        )

    def to_bytes(self) -> bytes:
        """The envelope bytes."""
        raw = self.message.raw
        return self.header_bytes() + _U32.pack(len(raw)) + raw

    @classmethod
    def from_bytes(cls, data: bytes) -> PreKeyEnvelope:
        """Parse a pre-key envelope.

        Raises:
            DecodeError: any malformed field, invalid key, or unknown flag.
            UnsupportedVersion: a version this code does not speak.
        """
        data = bytes(data)
        size = len(data)
        if size > MAX_ENVELOPE_SIZE + 2048:
            raise DecodeError("pre-key envelope too large")
        if size < _PREFIX.size:
            raise DecodeError("pre-key envelope truncated")
        version, kind, suite_byte, flags, uid_len = _PREFIX.unpack_from(data)
        _check_version(version)
        if kind != EnvelopeType.PREKEY:
            raise DecodeError("not a pre-key envelope")
        try:
            suite = Suite(suite_byte)
        except ValueError:
            raise DecodeError(f"unknown key-agreement suite {suite_byte}") from None
        if flags & ~_FLAG_OPK:
            raise DecodeError("unknown pre-key envelope flags")
        pos = _PREFIX.size
        fixed = uid_len + 4 + 2 * X25519_KEY_SIZE + 4 + (4 if flags else 0)
        if suite is Suite.PQXDH:
            fixed += 4 + MLKEM768_CIPHERTEXT_SIZE
        if size < pos + fixed + 4:
            raise DecodeError("pre-key envelope truncated")
        try:
            user_id = check_user_id(data[pos : pos + uid_len].decode("ascii"))
        except UnicodeDecodeError:
            raise DecodeError("user id is not ASCII") from None
        pos += uid_len
        (device_id,) = _U32.unpack_from(data, pos)
        identity_key = x25519_validate_public(data[pos + 4 : pos + 36])
        base_key = x25519_validate_public(data[pos + 36 : pos + 68])
        (spk_id,) = _U32.unpack_from(data, pos + 68)
        pos += 72
        opk_id: int | None = None
        if flags:
            (opk_id,) = _U32.unpack_from(data, pos)
            pos += 4
        kem_id: int | None = None
        kem_ct: bytes | None = None
        if suite is Suite.PQXDH:
            (kem_id,) = _U32.unpack_from(data, pos)
            kem_ct = data[pos + 4 : pos + 4 + MLKEM768_CIPHERTEXT_SIZE]
            pos += 4 + MLKEM768_CIPHERTEXT_SIZE
        (msg_len,) = _U32.unpack_from(data, pos)
        pos += 4
        if msg_len != size - pos:
            raise DecodeError("pre-key envelope length mismatch")
        message = MessageEnvelope.from_bytes(data[pos:])
        return cls(
            suite,
            user_id,
            device_id,
            identity_key,
            base_key,
            spk_id,
            opk_id,
            kem_id,
            kem_ct,
            message,
        )
