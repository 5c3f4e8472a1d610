"""Linking a new device to an account (DESIGN 4.2): the link code, the keys derived
from it, the two sealed blobs of the relay's link mailbox, and the link statement.

The primary makes a :class:`LinkCode` (a 16-byte mailbox id and a 32-byte secret) and
shows it to the user (typed as text, or scanned as a QR payload); the relay never sees
the secret. The exchange uses the relay's mailbox ``/v1/link/{id}/{slot}``
(``docs/blobs-and-links.md``), each slot written once and read once:

1. The new device generates its signing and identity keys and writes a
   :class:`LinkRequest` to slot 0 (:attr:`LinkDirection.TO_PRIMARY`): its public keys
   and a proof of possession, its signing key's signature under ``e2ee/v1/link`` over
   the link statement ``{0: mailbox id, 1: signing_pk, 2: x25519_ik, 3: pq}``.
2. The primary opens it, checks the proof, adds the device to device list
   version + 1, publishes that list, and writes a :class:`LinkAnswer` to slot 1
   (:attr:`LinkDirection.TO_NEW_DEVICE`): the user id, the device id it chose, the
   master public key, the signed list and the account state; or a refusal.
3. The new device checks that the list is signed by that master key and holds its
   keys, exactly, under the id it was given (:meth:`LinkAnswer.our_entry`).

The link statement names the mailbox id instead of the signer's user id and device
id (DESIGN 4.1): the new device knows neither yet. The mailbox id is unique to this
one exchange, so a proof cannot be replayed into another link.

**Sealing.** ``HKDF-SHA-256(ikm = secret, salt = mailbox id, info = e2ee/v1/link,
64 bytes)`` gives the key of slot 0 (first 32 bytes) and of slot 1 (last 32). A sealed
blob is ``version (1) || direction (1) || nonce (24) || XChaCha20-Poly1305
ciphertext``, with associated data ``e2ee/v1/link || 0x00 || version || direction ||
mailbox id``: a blob opens only under the code it was sealed for, in the direction it
was sealed for, and unmodified.

**The code as text**: ``mailbox id || secret || check`` (50 bytes), ``check`` the
first two bytes of ``SHA-256(e2ee/v1/link || 0x00 || mailbox id || secret)`` (it
catches typing mistakes, it is no security measure), in RFC 4648 base32 without
padding: 80 characters, shown as 16 groups of 5 joined by ``-``. Parsing ignores case,
spaces and hyphens and reads ``0``, ``1`` and ``8`` (not in the alphabet) as ``O``,
``I`` and ``B``. **As a QR payload**: canonical CBOR ``{0: version, 1: mailbox id,
2: secret}``.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Final

from . import cbor
from .device_list import DeviceEntry, SignedDeviceList
from .errors import DecodeError, DecryptionError, E2EEError, InvalidArgument, UntrustedIdentity
from .identifiers import DEVICE_ID_MAX, check_user_id
from .keys import DHKeyPair, SigningKeyPair, verify_statement
from .labels import Label
from .primitives import (
    AEAD_NONCE_SIZE,
    AEAD_TAG_SIZE,
    ED25519_SIGNATURE_SIZE,
    Rng,
    aead_decrypt,
    aead_encrypt,
    constant_time_equal,
    default_rng,
    ed25519_validate_public,
    hkdf_sha256,
    sha256,
    x25519_validate_public,
)

__all__ = [
    "LINK_CODE_TEXT_LENGTH",
    "LINK_SECRET_SIZE",
    "LINK_VERSION",
    "MAILBOX_ID_SIZE",
    "MAX_LINK_PLAINTEXT",
    "MAX_SEALED_SIZE",
    "SEAL_OVERHEAD",
    "InvalidLinkCode",
    "LinkAnswer",
    "LinkCode",
    "LinkDirection",
    "LinkRefused",
    "LinkRequest",
    "link_statement",
    "open_answer",
    "open_request",
    "seal_answer",
    "seal_refusal",
    "seal_request",
]

LINK_VERSION: Final = 1
"""Version of the code's QR payload, of the sealed blobs and of the messages inside."""
MAILBOX_ID_SIZE: Final = 16
"""The relay's link mailbox ids are 16 random bytes (``server.api_links.LINK_ID_SIZE``)."""
LINK_SECRET_SIZE: Final = 32
"""256 bits: the relay, which sees the mailbox id, must not be able to guess it."""
_CHECK_SIZE: Final = 2
_GROUP: Final = 5
LINK_CODE_TEXT_LENGTH: Final = (MAILBOX_ID_SIZE + LINK_SECRET_SIZE + _CHECK_SIZE) * 8 // 5
"""80 base32 characters (50 bytes: no padding needed)."""
MAX_SEALED_SIZE: Final = 64 * 1024
"""The relay keeps at most 64 KiB per mailbox slot (``server.limits.LINK_MAX_BLOB``)."""
SEAL_OVERHEAD: Final = 2 + AEAD_NONCE_SIZE + AEAD_TAG_SIZE
"""Version and direction bytes, the nonce, the tag."""
MAX_LINK_PLAINTEXT: Final = MAX_SEALED_SIZE - SEAL_OVERHEAD
"""The largest message one sealed blob carries."""
_MAX_REQUEST: Final = 1024
"""A request is about 180 bytes."""
_QR_KEYS: Final = frozenset(range(3))
_REQUEST_KEYS: Final = frozenset(range(5))
_ANSWER_KEYS: Final = frozenset(range(7))
_REFUSAL_KEYS: Final = frozenset(range(2))
_ACCEPTED: Final = 0
_REFUSED: Final = 1
_ALPHABET: Final = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567")
_CONFUSABLE: Final = str.maketrans({"0": "O", "1": "I", "8": "B"})
_IGNORED: Final = str.maketrans("", "", "- \t\r\n")


class LinkDirection(IntEnum):
    """Which side sealed a blob; the value is also the relay mailbox slot."""

    TO_PRIMARY = 0
    """The new device's :class:`LinkRequest` (slot 0)."""
    TO_NEW_DEVICE = 1
    """The primary's :class:`LinkAnswer` or refusal (slot 1)."""


class InvalidLinkCode(DecodeError):
    """A link code that does not parse: wrong length, a character outside base32, a
    failed checksum (a typing mistake), or a malformed QR payload. The message never
    repeats the code."""


class LinkRefused(E2EEError):
    """The primary opened the mailbox and refused to link (its sealed refusal opened
    under the code): the request did not open or its proof failed, or the keys were
    unusable."""


class LinkCode:
    """The secret a user carries from the primary to the new device: the mailbox id
    and the 32-byte secret the sealing keys derive from. Holds a secret: its ``repr``
    shows nothing of it and equality is constant-time."""

    __slots__ = ("_secret", "mailbox_id")

    def __init__(self, mailbox_id: bytes, secret: bytes) -> None:
        """Build from its parts.

        Raises:
            InvalidArgument: a part of the wrong size.
        """
        if len(mailbox_id) != MAILBOX_ID_SIZE or len(secret) != LINK_SECRET_SIZE:
            raise InvalidArgument("a link code is a 16-byte mailbox id and a 32-byte secret")
        self.mailbox_id = bytes(mailbox_id)
        self._secret = bytes(secret)

    @classmethod
    def generate(cls, rng: Rng = default_rng) -> LinkCode:
        """A fresh code from ``rng``."""
        return cls(rng(MAILBOX_ID_SIZE), rng(LINK_SECRET_SIZE))

    # --- text and QR forms --------------------------------------------------------------

    def _check(self) -> bytes:
        return sha256(Label.LINK.value + b"\x00" + self.mailbox_id + self._secret)[:_CHECK_SIZE]

    @property
    def text(self) -> str:
        """The code as a user types it: 16 groups of 5 base32 characters."""
        raw = base64.b32encode(self.mailbox_id + self._secret + self._check()).decode("ascii")
        return "-".join(raw[i : i + _GROUP] for i in range(0, len(raw), _GROUP))

    @property
    def qr_payload(self) -> bytes:
        """The code as a QR payload: CBOR ``{0: version, 1: mailbox id, 2: secret}``."""
        return cbor.encode({0: LINK_VERSION, 1: self.mailbox_id, 2: self._secret})

    @classmethod
    def from_text(cls, text: str) -> LinkCode:
        """Parse a typed code (case, spaces and hyphens ignored).

        Raises:
            InvalidLinkCode: the wrong length, a character outside base32, or a failed
                checksum.
        """
        cleaned = text.translate(_IGNORED).upper().translate(_CONFUSABLE)
        if len(cleaned) != LINK_CODE_TEXT_LENGTH:
            raise InvalidLinkCode(
                f"a link code has {LINK_CODE_TEXT_LENGTH} characters, not {len(cleaned)}"
            )
        if not set(cleaned) <= _ALPHABET:
            raise InvalidLinkCode("a link code holds only the letters A-Z and digits 2-7")
        raw = base64.b32decode(cleaned)
        code = cls(raw[:MAILBOX_ID_SIZE], raw[MAILBOX_ID_SIZE : MAILBOX_ID_SIZE + LINK_SECRET_SIZE])
        if not constant_time_equal(code._check(), raw[-_CHECK_SIZE:]):
            raise InvalidLinkCode("the link code's checksum fails (mistyped?)")
        return code

    @classmethod
    def from_qr(cls, payload: bytes) -> LinkCode:
        """Parse a QR payload.

        Raises:
            InvalidLinkCode: not the CBOR map of this version with parts of the right size.
        """
        try:
            m = cbor.expect_map(cbor.decode(payload, max_size=256), "link code", _QR_KEYS)
            if cbor.field_int(m, 0, "link code version") != LINK_VERSION:
                raise DecodeError("unknown link code version")
            return cls(
                cbor.field_bytes(m, 1, "mailbox id", size=MAILBOX_ID_SIZE),
                cbor.field_bytes(m, 2, "secret", size=LINK_SECRET_SIZE),
            )
        except DecodeError as exc:
            raise InvalidLinkCode(f"not a link QR payload: {exc}") from None

    @classmethod
    def parse(cls, value: str | bytes) -> LinkCode:
        """A typed code (``str``) or a QR payload (``bytes``).

        Raises:
            InvalidLinkCode: it does not parse.
        """
        if isinstance(value, str):
            return cls.from_text(value)
        if isinstance(value, bytes):
            return cls.from_qr(value)
        raise InvalidLinkCode("a link code is text or a QR payload (bytes)")

    # --- sealing ------------------------------------------------------------------------

    def _key(self, direction: LinkDirection) -> bytes:
        okm = hkdf_sha256(self._secret, salt=self.mailbox_id, info=Label.LINK.value, length=64)
        return okm[:32] if direction is LinkDirection.TO_PRIMARY else okm[32:]

    def _ad(self, header: bytes) -> bytes:
        return Label.LINK.value + b"\x00" + header + self.mailbox_id

    def seal(self, direction: LinkDirection, plaintext: bytes, rng: Rng = default_rng) -> bytes:
        """Seal ``plaintext`` for the mailbox slot of ``direction``.

        Raises:
            InvalidArgument: ``plaintext`` is larger than :data:`MAX_LINK_PLAINTEXT`.
        """
        if len(plaintext) > MAX_LINK_PLAINTEXT:
            raise InvalidArgument(f"a sealed link message holds at most {MAX_LINK_PLAINTEXT} bytes")
        header = bytes((LINK_VERSION, int(direction)))
        nonce = rng(AEAD_NONCE_SIZE)
        return (
            header + nonce + aead_encrypt(self._key(direction), nonce, plaintext, self._ad(header))
        )

    def open(self, direction: LinkDirection, sealed: bytes) -> bytes:
        """Open a blob sealed for ``direction`` under this code.

        Raises:
            DecodeError: shorter than the overhead, larger than a mailbox slot, or an
                unknown version.
            DecryptionError: another direction, another code, or modified bytes.
        """
        if not SEAL_OVERHEAD <= len(sealed) <= MAX_SEALED_SIZE:
            raise DecodeError("a sealed link blob of an impossible size")
        if sealed[0] != LINK_VERSION:
            raise DecodeError(f"unknown sealed link blob version {sealed[0]}")
        if sealed[1] != direction:
            raise DecryptionError("a sealed link blob of the other direction")
        header, nonce, body = (
            sealed[:2],
            sealed[2 : 2 + AEAD_NONCE_SIZE],
            sealed[2 + AEAD_NONCE_SIZE :],
        )
        return aead_decrypt(self._key(direction), nonce, body, self._ad(header))

    def __repr__(self) -> str:
        return "LinkCode(<secret>)"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, LinkCode):
            return NotImplemented
        return constant_time_equal(self.mailbox_id + self._secret, other.mailbox_id + other._secret)

    def __hash__(self) -> int:
        return hash(self.mailbox_id)


def link_statement(mailbox_id: bytes, signing_pk: bytes, x25519_ik: bytes, pq: bool) -> cbor.Value:
    """What a new device's signing key signs under ``e2ee/v1/link``:
    ``{0: mailbox id, 1: signing_pk, 2: x25519_ik, 3: pq}``."""
    return {0: mailbox_id, 1: signing_pk, 2: x25519_ik, 3: pq}


@dataclass(frozen=True, slots=True)
class LinkRequest:
    """The new device's public keys and its proof of possession of the signing key:
    CBOR ``{0: version, 1: signing_pk, 2: x25519_ik, 3: pq, 4: proof}``."""

    signing_pk: bytes
    x25519_ik: bytes
    pq: bool
    proof: bytes = field(repr=False)

    @classmethod
    def create(
        cls, mailbox_id: bytes, signing: SigningKeyPair, identity: DHKeyPair, *, pq: bool
    ) -> LinkRequest:
        """The request of a device with these keys, for the mailbox ``mailbox_id``."""
        statement = link_statement(mailbox_id, signing.public_key, identity.public_key, pq)
        return cls(signing.public_key, identity.public_key, pq, signing.sign(Label.LINK, statement))

    def to_bytes(self) -> bytes:
        """Canonical CBOR."""
        return cbor.encode(
            {0: LINK_VERSION, 1: self.signing_pk, 2: self.x25519_ik, 3: self.pq, 4: self.proof}
        )

    @classmethod
    def from_bytes(cls, data: bytes, mailbox_id: bytes) -> LinkRequest:
        """Decode, validate both public keys, and verify the proof for ``mailbox_id``.

        Raises:
            DecodeError: malformed, an unknown version, or an invalid key.
            BadSignature: the proof does not verify.
        """
        m = cbor.expect_map(cbor.decode(data, max_size=_MAX_REQUEST), "link request", _REQUEST_KEYS)
        if cbor.field_int(m, 0, "link request version") != LINK_VERSION:
            raise DecodeError("unknown link request version")
        request = cls(
            ed25519_validate_public(cbor.field_bytes(m, 1, "signing key", size=32)),
            x25519_validate_public(cbor.field_bytes(m, 2, "identity key", size=32)),
            cbor.field_bool(m, 3, "pq"),
            cbor.field_bytes(m, 4, "proof", size=ED25519_SIGNATURE_SIZE),
        )
        statement = link_statement(mailbox_id, request.signing_pk, request.x25519_ik, request.pq)
        verify_statement(request.signing_pk, Label.LINK, statement, request.proof)
        return request

    def entry(self, device_id: int, added_at_ms: int) -> DeviceEntry:
        """This device as an entry of the account's device list."""
        return DeviceEntry(device_id, self.signing_pk, self.x25519_ik, self.pq, added_at_ms)


@dataclass(frozen=True, slots=True)
class LinkAnswer:
    """The primary's answer: CBOR ``{0: version, 1: 0 (accepted), 2: user_id,
    3: device_id, 4: master_pk, 5: signed device list, 6: account state}``. The account
    state is opaque here (the SDK defines it)."""

    user_id: str
    device_id: int
    master_pk: bytes
    signed_list: SignedDeviceList
    state: bytes = field(repr=False)

    def to_bytes(self) -> bytes:
        """Canonical CBOR."""
        return cbor.encode(
            {
                0: LINK_VERSION,
                1: _ACCEPTED,
                2: self.user_id,
                3: self.device_id,
                4: self.master_pk,
                5: self.signed_list.to_bytes(),
                6: self.state,
            }
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> LinkAnswer:
        """Decode an answer; the signed list is decoded and its signature verified
        under the master key it names (:meth:`our_entry` checks the rest).

        Raises:
            LinkRefused: the primary's refusal.
            DecodeError: malformed, or an unknown version.
            BadSignature: the list's signature does not verify.
        """
        value = cbor.decode(data, max_size=MAX_LINK_PLAINTEXT)
        if isinstance(value, dict) and value.get(1) == _REFUSED:
            m = cbor.expect_map(value, "link refusal", _REFUSAL_KEYS)
            if cbor.field_int(m, 0, "link refusal version") != LINK_VERSION:
                raise DecodeError("unknown link refusal version")
            raise LinkRefused("the primary device refused to link this device")
        m = cbor.expect_map(value, "link answer", _ANSWER_KEYS)
        if cbor.field_int(m, 0, "link answer version") != LINK_VERSION:
            raise DecodeError("unknown link answer version")
        if cbor.field_int(m, 1, "link answer kind") != _ACCEPTED:
            raise DecodeError("unknown link answer kind")
        return cls(
            check_user_id(m[2]),
            cbor.field_int(m, 3, "device id", 0, DEVICE_ID_MAX),
            ed25519_validate_public(cbor.field_bytes(m, 4, "master key", size=32)),
            SignedDeviceList.from_bytes(
                cbor.field_bytes(m, 5, "device list", max_size=MAX_LINK_PLAINTEXT)
            ),
            cbor.field_bytes(m, 6, "account state", max_size=MAX_LINK_PLAINTEXT),
        )

    def our_entry(self, signing_pk: bytes, x25519_ik: bytes, pq: bool) -> DeviceEntry:
        """Check that the list is the user's list signed by the master key the answer
        names, past version 1, and holds exactly this device's keys under the device id
        it was given, and under no other id; return that entry.

        Raises:
            UntrustedIdentity: any of these fails.
        """
        statement = self.signed_list.statement
        if statement.user_id != self.user_id:
            raise UntrustedIdentity("the linked device list names another user", self.user_id)
        if not constant_time_equal(statement.master_pk, self.master_pk):
            raise UntrustedIdentity("the device list is signed by another master key", self.user_id)
        if statement.version < 2:
            raise UntrustedIdentity("a linked device is never in version 1", self.user_id)
        entry = statement.device(self.device_id)
        if (
            entry is None
            or not constant_time_equal(entry.signing_pk, signing_pk)
            or not constant_time_equal(entry.x25519_ik, x25519_ik)
            or entry.pq != pq
        ):
            raise UntrustedIdentity(
                "the device list does not hold this device's keys", self.user_id
            )
        for other in statement.devices:
            if other.device_id != self.device_id and (
                other.signing_pk == signing_pk or other.x25519_ik == x25519_ik
            ):
                raise UntrustedIdentity("this device's keys appear twice in the list", self.user_id)
        return entry


def seal_request(code: LinkCode, request: LinkRequest, rng: Rng = default_rng) -> bytes:
    """The new device's slot-0 blob."""
    return code.seal(LinkDirection.TO_PRIMARY, request.to_bytes(), rng)


def open_request(code: LinkCode, sealed: bytes) -> LinkRequest:
    """Open and check the new device's slot-0 blob (the primary's side).

    Raises:
        DecodeError, DecryptionError: it does not open under ``code`` (a wrong code, a
            modified blob) or is malformed.
        BadSignature: the proof of possession fails.
    """
    return LinkRequest.from_bytes(code.open(LinkDirection.TO_PRIMARY, sealed), code.mailbox_id)


def seal_answer(code: LinkCode, answer: LinkAnswer, rng: Rng = default_rng) -> bytes:
    """The primary's slot-1 blob.

    Raises:
        InvalidArgument: the answer is larger than :data:`MAX_LINK_PLAINTEXT`.
    """
    return code.seal(LinkDirection.TO_NEW_DEVICE, answer.to_bytes(), rng)


def seal_refusal(code: LinkCode, rng: Rng = default_rng) -> bytes:
    """The primary's slot-1 blob when it refuses (so the new device stops waiting)."""
    return code.seal(LinkDirection.TO_NEW_DEVICE, cbor.encode({0: LINK_VERSION, 1: _REFUSED}), rng)


def open_answer(code: LinkCode, sealed: bytes) -> LinkAnswer:
    """Open the primary's slot-1 blob (the new device's side); check it with
    :meth:`LinkAnswer.our_entry`.

    Raises:
        LinkRefused: the primary refused.
        DecodeError, DecryptionError: it does not open under ``code`` or is malformed.
        BadSignature: the device list's signature fails.
    """
    return LinkAnswer.from_bytes(code.open(LinkDirection.TO_NEW_DEVICE, sealed))
