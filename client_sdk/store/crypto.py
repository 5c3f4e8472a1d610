"""Record encryption and lookup keys of the store (DESIGN 6 "Store encryption").

Every key the store uses comes from one 32-byte root key (Argon2id over the
passphrase, or the app's raw key) through keyed BLAKE2b-256 under the store label
with a distinct context string::

    subkey(context, store_id) = BLAKE2b-256(key = root,
                                            data = "e2ee/v1/store" || 0x00 || context || 0x00 || store_id)

    header key = subkey("header", "")          seals the header's verifier and body
    record key = subkey("record", store_id)    seals every record value
    lookup key = subkey("lookup", store_id)    keys the peer lookup hashes

The contexts are fixed NUL-free ASCII and ``store_id`` is a fixed 16 random bytes
from the header, so every input is unambiguous; the store id makes the record and
lookup keys of two stores opened with one raw key unrelated.

A record value is stored as ``nonce[24] || XChaCha20-Poly1305(record key, nonce,
value, ad)`` with a random nonce per write and::

    ad = "e2ee/v1/store" || 0x00 || "record" || 0x00
         || u32be(len(table)) || table || u32be(len(key)) || key

so a row copied to another key or table, or to another store, fails to open.
A lookup key is ``BLAKE2b-256(key = lookup key, data = parts)`` with each part
encoded as ``tag || u32be(len) || bytes`` (tag ``s`` UTF-8 text, ``b`` bytes, ``i``
unsigned 64-bit big-endian integer).
"""

from __future__ import annotations

from typing import Final

from e2ee.errors import DecryptionError
from e2ee.labels import Label
from e2ee.primitives import (
    AEAD_KEY_SIZE,
    AEAD_NONCE_SIZE,
    AEAD_TAG_SIZE,
    Rng,
    aead_decrypt,
    aead_encrypt,
    blake2b,
)

from ..errors import StoreCorrupt, UsageError
from .base import LookupPart, Table

__all__ = [
    "LOOKUP_KEY_SIZE",
    "ROOT_KEY_SIZE",
    "SEALED_OVERHEAD",
    "STORE_ID_SIZE",
    "RecordKeys",
    "derive_subkey",
    "store_ad",
]

ROOT_KEY_SIZE: Final = AEAD_KEY_SIZE
"""A raw store key, and Argon2id's output, are 32 bytes."""
STORE_ID_SIZE: Final = 16
"""Random per store; separates the record and lookup keys of stores sharing a root."""
LOOKUP_KEY_SIZE: Final = 32
"""Output of :meth:`RecordKeys.lookup` (BLAKE2b-256: collision-resistant)."""
SEALED_OVERHEAD: Final = AEAD_NONCE_SIZE + AEAD_TAG_SIZE
"""Bytes a sealed value adds to its plaintext."""
_U64_LIMIT: Final = 2**64

CONTEXT_HEADER: Final = b"header"
CONTEXT_RECORD: Final = b"record"
CONTEXT_LOOKUP: Final = b"lookup"
CONTEXT_VERIFIER: Final = b"verifier"


def derive_subkey(root: bytes, context: bytes, store_id: bytes = b"") -> bytes:
    """A 32-byte subkey of ``root`` for ``context`` (see the module docstring)."""
    return blake2b(Label.STORE.value + b"\x00" + context + b"\x00" + store_id, key=root)


def store_ad(context: bytes, *fields: bytes) -> bytes:
    """``"e2ee/v1/store" || 0x00 || context || 0x00`` then each field length-prefixed
    (u32be), so no field can be shifted into another."""
    parts = [Label.STORE.value, b"\x00", context, b"\x00"]
    for field in fields:
        parts += [len(field).to_bytes(4, "big"), field]
    return b"".join(parts)


def _encode_part(part: LookupPart) -> bytes:
    if isinstance(part, bool):
        raise UsageError("a lookup key part cannot be a bool")
    if isinstance(part, str):
        tag, data = b"s", part.encode("utf-8")
    elif isinstance(part, bytes):
        tag, data = b"b", part
    elif isinstance(part, int):
        if not 0 <= part < _U64_LIMIT:
            raise UsageError("a lookup key integer must be in 0..2**64-1")
        tag, data = b"i", part.to_bytes(8, "big")
    else:
        raise UsageError(f"a lookup key part must be str, bytes or int, not {type(part).__name__}")
    return tag + len(data).to_bytes(4, "big") + data


class RecordKeys:
    """The record and lookup keys of one store (secret: the repr shows the store id only)."""

    __slots__ = ("_lookup_key", "_record_key", "store_id")

    def __init__(self, root: bytes, store_id: bytes) -> None:
        """Derive both keys from the 32-byte ``root`` and the store's id.

        Raises:
            UsageError: ``root`` is not 32 bytes or ``store_id`` not 16.
        """
        if len(root) != ROOT_KEY_SIZE or len(store_id) != STORE_ID_SIZE:
            raise UsageError("a store root key is 32 bytes and a store id 16")
        self.store_id = store_id
        self._record_key = derive_subkey(root, CONTEXT_RECORD, store_id)
        self._lookup_key = derive_subkey(root, CONTEXT_LOOKUP, store_id)

    def seal(self, table: Table, key: bytes, value: bytes, rng: Rng) -> bytes:
        """``nonce || ciphertext`` of ``value`` bound to ``(table, key)``."""
        nonce = rng(AEAD_NONCE_SIZE)
        ad = store_ad(CONTEXT_RECORD, table.value.encode(), key)
        return nonce + aead_encrypt(self._record_key, nonce, value, ad)

    def open(self, table: Table, key: bytes, sealed: object) -> bytes:
        """The value sealed at ``(table, key)``.

        Raises:
            StoreCorrupt: ``sealed`` is not bytes, too short, or fails authentication
                (edited, or moved from another key, table or store).
        """
        if not isinstance(sealed, bytes) or len(sealed) < SEALED_OVERHEAD:
            raise StoreCorrupt(f"a record of {table.value} is malformed", table=table.value)
        ad = store_ad(CONTEXT_RECORD, table.value.encode(), key)
        try:
            return aead_decrypt(
                self._record_key, sealed[:AEAD_NONCE_SIZE], sealed[AEAD_NONCE_SIZE:], ad
            )
        except DecryptionError:
            raise StoreCorrupt(
                f"a record of {table.value} fails authentication (edited, swapped or moved)",
                table=table.value,
            ) from None

    def lookup(self, *parts: LookupPart) -> bytes:
        """The keyed hash of ``parts`` (see the module docstring).

        Raises:
            UsageError: no parts, or a part of another type or out of range.
        """
        if not parts:
            raise UsageError("a lookup key needs at least one part")
        data = b"".join(_encode_part(part) for part in parts)
        return blake2b(data, key=self._lookup_key, digest_size=LOOKUP_KEY_SIZE)

    def __repr__(self) -> str:
        return f"RecordKeys(store_id={self.store_id.hex()})"
