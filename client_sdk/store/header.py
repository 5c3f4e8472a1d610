"""The store header: schema version, key derivation parameters and the sealed origin
(DESIGN 6 "Store encryption").

One row holds the canonical CBOR map::

    {0: schema_version, 1: kdf (0 raw key, 1 Argon2id), 2: opslimit, 3: memlimit_bytes,
     4: salt (16 bytes, empty for a raw key), 5: store_id[16],
     6: verifier = nonce[24] || XChaCha20-Poly1305(header key, nonce, 32 zero bytes,
                                                   ad = store_ad("verifier")),
     7: body     = nonce[24] || XChaCha20-Poly1305(header key, nonce, CBOR({0: origin}),
                                                   ad = store_ad("header", CBOR(fields 0..5)))}

Fields 0..5 must be readable before a key exists; the body's associated data
authenticates all of them. The verifier depends on the root key alone, so a wrong
key (:class:`~client_sdk.errors.WrongKey`) is told apart from an edited header
(:class:`~client_sdk.errors.StoreCorrupt`). Opening checks, in order: the schema
version (a newer one is refused before anything else, since its layout may differ),
the Argon2id parameters against the floor and ceiling (before any derivation), the
verifier, then the body.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import Final

from e2ee import cbor
from e2ee.errors import DecodeError, DecryptionError
from e2ee.primitives import (
    AEAD_NONCE_SIZE,
    AEAD_TAG_SIZE,
    ARGON2ID_SALT_SIZE,
    Rng,
    aead_decrypt,
    aead_encrypt,
    argon2id,
)

from ..errors import (
    StoreCorrupt,
    UnsupportedStoreVersion,
    UsageError,
    WeakParameters,
    WrongKey,
    WrongPassphrase,
)
from .base import MAX_ORIGIN_LENGTH
from .crypto import (
    CONTEXT_HEADER,
    CONTEXT_VERIFIER,
    ROOT_KEY_SIZE,
    STORE_ID_SIZE,
    derive_subkey,
    store_ad,
)

__all__ = [
    "DEFAULT_KDF",
    "KDF_CEILING",
    "KDF_FLOOR",
    "SCHEMA_VERSION",
    "KdfKind",
    "KdfParams",
    "StoreHeader",
    "check_kdf",
    "derive_root",
]

SCHEMA_VERSION: Final = 1
"""The store layout this SDK writes and the newest it reads (see docs/sdk-store.md)."""


class KdfKind(IntEnum):
    """How the root key comes from the app's secret."""

    RAW_KEY = 0
    ARGON2ID = 1


@dataclass(frozen=True, slots=True)
class KdfParams:
    """Argon2id cost: passes and memory in bytes (libsodium ``crypto_pwhash`` argon2id13)."""

    opslimit: int
    memlimit: int

    def at_least(self, floor: KdfParams) -> bool:
        """Whether both costs reach ``floor``'s."""
        return self.opslimit >= floor.opslimit and self.memlimit >= floor.memlimit


DEFAULT_KDF: Final = KdfParams(opslimit=3, memlimit=64 * 1024 * 1024)
"""What a new passphrase store uses: libsodium's "moderate" memory with 3 passes
(about 0.1 s here); the same cost as the recovery export's floor."""
KDF_FLOOR: Final = DEFAULT_KDF
"""The least a header may ask for: a header below it was lowered by an attacker to
make guessing cheap, and is refused before any derivation."""
KDF_CEILING: Final = KdfParams(opslimit=16, memlimit=1024 * 1024 * 1024)
"""The most a header may ask for: bounds the work and memory an edited header can
demand of the device."""

_VERIFIER_PLAINTEXT: Final = bytes(32)
_VERIFIER_SIZE: Final = AEAD_NONCE_SIZE + len(_VERIFIER_PLAINTEXT) + AEAD_TAG_SIZE
_MAX_BODY: Final = AEAD_NONCE_SIZE + MAX_ORIGIN_LENGTH * 4 + 16 + AEAD_TAG_SIZE
_MAX_HEADER: Final = 4 * 1024 + _MAX_BODY
_FIELDS: Final = frozenset(range(8))
_BODY_FIELDS: Final = frozenset({0})


@dataclass(frozen=True, slots=True)
class StoreHeader:
    """The decoded header row (every field public; the secrets inside are sealed)."""

    schema_version: int
    kdf: KdfKind
    opslimit: int
    memlimit: int
    salt: bytes
    store_id: bytes
    verifier: bytes
    body: bytes

    def _public_map(self) -> dict[int, cbor.Value]:
        return {
            0: self.schema_version,
            1: int(self.kdf),
            2: self.opslimit,
            3: self.memlimit,
            4: self.salt,
            5: self.store_id,
        }

    def to_bytes(self) -> bytes:
        """The canonical CBOR of the header row."""
        return cbor.encode({**self._public_map(), 6: self.verifier, 7: self.body})

    @classmethod
    def from_bytes(cls, data: object) -> StoreHeader:
        """Decode a header row; the schema version is checked first.

        Raises:
            UnsupportedStoreVersion: written by a newer SDK.
            StoreCorrupt: anything malformed.
        """
        if not isinstance(data, bytes):
            raise StoreCorrupt("the store header is not a byte string")
        try:
            m = cbor.decode(data, max_size=_MAX_HEADER)
            claimed = m.get(0) if isinstance(m, dict) else None
            if type(claimed) is int and claimed > SCHEMA_VERSION:
                raise UnsupportedStoreVersion(version=claimed, supported=SCHEMA_VERSION)
            m = cbor.expect_map(m, "store header", _FIELDS)
            version = cbor.field_int(m, 0, "schema version", 1, SCHEMA_VERSION)
            kdf = KdfKind(cbor.field_int(m, 1, "kdf", 0, max(KdfKind)))
            opslimit = cbor.field_int(m, 2, "Argon2id passes")
            memlimit = cbor.field_int(m, 3, "Argon2id memory")
            salt = cbor.field_bytes(m, 4, "salt", max_size=ARGON2ID_SALT_SIZE)
            store_id = cbor.field_bytes(m, 5, "store id", size=STORE_ID_SIZE)
            verifier = cbor.field_bytes(m, 6, "verifier", size=_VERIFIER_SIZE)
            body = cbor.field_bytes(m, 7, "header body", max_size=_MAX_BODY)
        except DecodeError as exc:
            raise StoreCorrupt(f"the store header does not decode: {exc}") from None
        if kdf is KdfKind.RAW_KEY:
            consistent = (len(salt), opslimit, memlimit) == (0, 0, 0)
        else:
            consistent = len(salt) == ARGON2ID_SALT_SIZE
        if not consistent:
            raise StoreCorrupt("the store header's key derivation fields are inconsistent")
        return cls(version, kdf, opslimit, memlimit, salt, store_id, verifier, body)

    def body_ad(self) -> bytes:
        """The body's associated data: every public field."""
        return store_ad(CONTEXT_HEADER, cbor.encode(self._public_map()))

    @classmethod
    def create(
        cls,
        root: bytes,
        *,
        kdf: KdfKind,
        params: KdfParams | None,
        salt: bytes,
        store_id: bytes,
        origin: str,
        rng: Rng,
    ) -> StoreHeader:
        """A new header for ``root`` (from ``kdf`` with ``params`` and ``salt``)."""
        header_key = derive_subkey(root, CONTEXT_HEADER)
        nonce = rng(AEAD_NONCE_SIZE)
        verifier = nonce + aead_encrypt(
            header_key, nonce, _VERIFIER_PLAINTEXT, store_ad(CONTEXT_VERIFIER)
        )
        unsealed = cls(
            SCHEMA_VERSION,
            kdf,
            params.opslimit if params else 0,
            params.memlimit if params else 0,
            salt,
            store_id,
            verifier,
            b"",
        )
        return unsealed.with_origin(root, origin, rng)

    def with_origin(self, root: bytes, origin: str, rng: Rng) -> StoreHeader:
        """This header with its body resealed for ``origin``."""
        header_key = derive_subkey(root, CONTEXT_HEADER)
        nonce = rng(AEAD_NONCE_SIZE)
        body = nonce + aead_encrypt(header_key, nonce, cbor.encode({0: origin}), self.body_ad())
        return StoreHeader(
            self.schema_version,
            self.kdf,
            self.opslimit,
            self.memlimit,
            self.salt,
            self.store_id,
            self.verifier,
            body,
        )

    def unlock(self, root: bytes) -> str:
        """Check ``root`` against the verifier, then open the body; the stored origin.

        Raises:
            WrongPassphrase: the verifier does not open (Argon2id store).
            WrongKey: the verifier does not open (raw-key store).
            StoreCorrupt: the verifier opens but the body does not (the header was
                edited) or does not decode.
        """
        header_key = derive_subkey(root, CONTEXT_HEADER)
        try:
            aead_decrypt(
                header_key,
                self.verifier[:AEAD_NONCE_SIZE],
                self.verifier[AEAD_NONCE_SIZE:],
                store_ad(CONTEXT_VERIFIER),
            )
        except DecryptionError:
            if self.kdf is KdfKind.ARGON2ID:
                raise WrongPassphrase("the passphrase does not open this store") from None
            raise WrongKey("the key does not open this store") from None
        try:
            plain = aead_decrypt(
                header_key, self.body[:AEAD_NONCE_SIZE], self.body[AEAD_NONCE_SIZE:], self.body_ad()
            )
        except DecryptionError:
            raise StoreCorrupt("the store header fails authentication (edited)") from None
        try:
            body = cbor.expect_map(cbor.decode(plain, max_size=_MAX_BODY), "body", _BODY_FIELDS)
            return cbor.field_str(body, 0, "origin", max_len=MAX_ORIGIN_LENGTH)
        except DecodeError:  # pragma: no cover - authenticated, so written by us
            raise StoreCorrupt("the store header body does not decode") from None


def check_kdf(header: StoreHeader, floor: KdfParams) -> None:
    """Refuse Argon2id parameters below ``floor`` or above :data:`KDF_CEILING`, before
    any derivation (nothing to check for a raw-key store).

    Raises:
        WeakParameters: below the floor.
        StoreCorrupt: above the ceiling.
    """
    if header.kdf is not KdfKind.ARGON2ID:
        return
    params = KdfParams(header.opslimit, header.memlimit)
    if not params.at_least(floor):
        raise WeakParameters(
            opslimit=params.opslimit,
            memlimit=params.memlimit,
            floor_opslimit=floor.opslimit,
            floor_memlimit=floor.memlimit,
        )
    if not KDF_CEILING.at_least(params):
        raise StoreCorrupt("the store header asks for Argon2id costs above the ceiling")


def derive_root(header: StoreHeader, secret: bytes) -> bytes:
    """The root key: Argon2id over the passphrase with the header's parameters, or the
    raw key itself. Slow for Argon2id: call it off the event loop.

    Raises:
        UsageError: a raw key that is not 32 bytes.
    """
    if header.kdf is KdfKind.ARGON2ID:
        return argon2id(
            secret, salt=header.salt, opslimit=header.opslimit, memlimit=header.memlimit
        )
    if len(secret) != ROOT_KEY_SIZE:
        raise UsageError(f"a store key must be {ROOT_KEY_SIZE} bytes")
    return secret
