"""Key pairs and signed statements (DESIGN 4.1, 4.2).

Secret-holding classes keep their secret in ``__slots__``, show only the public half
in ``repr``, and compare in constant time. Every Ed25519 signature of the protocol
is made over ``label || 0x00 || canonical-CBOR(statement)``
(:func:`signed_message`).
"""

from __future__ import annotations

from typing import Final

from . import cbor
from .labels import Label
from .primitives import (
    ED25519_SEED_SIZE,
    MLKEM768_SEED_SIZE,
    X25519_KEY_SIZE,
    MLKEM768PrivateKey,
    Rng,
    constant_time_equal,
    default_rng,
    ed25519_keypair_from_seed,
    ed25519_sign,
    ed25519_verify,
    x25519,
    x25519_public_from_private,
)

__all__ = [
    "DHKeyPair",
    "KEMKeyPair",
    "SigningKeyPair",
    "signed_message",
    "verify_statement",
]

_SEPARATOR: Final = b"\x00"


def signed_message(label: Label, statement: cbor.Value) -> bytes:
    """The exact bytes an Ed25519 signature covers: ``label || 0x00 || CBOR(statement)``."""
    return label.value + _SEPARATOR + cbor.encode(statement)


def verify_statement(
    public_key: bytes, label: Label, statement: cbor.Value, signature: bytes
) -> None:
    """Verify ``signature`` over ``statement`` under ``label`` with ``public_key``.

    Raises:
        BadSignature: the signature does not verify.
    """
    ed25519_verify(public_key, signed_message(label, statement), signature)


def _short(public_key: bytes) -> str:
    return public_key[:8].hex()


class SigningKeyPair:
    """An Ed25519 key pair (a user's master key or a device's signing key)."""

    __slots__ = ("_secret", "_seed", "public_key")

    def __init__(self, seed: bytes) -> None:
        """Build from a 32-byte seed.

        Raises:
            InvalidArgument: the seed is not 32 bytes.
        """
        self.public_key, self._secret = ed25519_keypair_from_seed(seed)
        self._seed = bytes(seed)

    @classmethod
    def generate(cls, rng: Rng = default_rng) -> SigningKeyPair:
        """A fresh key pair from ``rng``."""
        return cls(rng(ED25519_SEED_SIZE))

    def seed(self) -> bytes:
        """The 32-byte seed: secret, for the encrypted store only."""
        return self._seed

    def sign(self, label: Label, statement: cbor.Value) -> bytes:
        """Sign ``statement`` under ``label`` (DESIGN 4.1)."""
        return ed25519_sign(self._secret, signed_message(label, statement))

    def __repr__(self) -> str:
        return f"SigningKeyPair(public_key={_short(self.public_key)}...)"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SigningKeyPair):
            return NotImplemented
        return constant_time_equal(self._seed, other._seed)

    def __hash__(self) -> int:
        return hash(self.public_key)


class DHKeyPair:
    """An X25519 key pair (identity key, prekey, ephemeral or ratchet key)."""

    __slots__ = ("_private", "public_key")

    def __init__(self, private_key: bytes) -> None:
        """Build from a 32-byte private scalar.

        Raises:
            InvalidArgument: the key is not 32 bytes.
        """
        self.public_key = x25519_public_from_private(private_key)
        self._private = bytes(private_key)

    @classmethod
    def generate(cls, rng: Rng = default_rng) -> DHKeyPair:
        """A fresh key pair from ``rng``."""
        return cls(rng(X25519_KEY_SIZE))

    def private_bytes(self) -> bytes:
        """The 32-byte private key: secret, for serialized state only."""
        return self._private

    def dh(self, their_public: bytes) -> bytes:
        """X25519 with ``their_public``.

        Raises:
            LowOrderPoint: the result is all zero.
        """
        return x25519(self._private, their_public)

    def __repr__(self) -> str:
        return f"DHKeyPair(public_key={_short(self.public_key)}...)"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, DHKeyPair):
            return NotImplemented
        return constant_time_equal(self._private, other._private)

    def __hash__(self) -> int:
        return hash(self.public_key)


class KEMKeyPair:
    """An ML-KEM-768 key pair, kept as its 64-byte seed."""

    __slots__ = ("_private", "_seed", "public_key")

    def __init__(self, seed: bytes) -> None:
        """Build from a 64-byte seed ``d || z`` (FIPS 203).

        Raises:
            InvalidArgument: the seed is not 64 bytes.
        """
        self._private = MLKEM768PrivateKey(seed)
        self.public_key = self._private.public_key
        self._seed = bytes(seed)

    @classmethod
    def generate(cls, rng: Rng = default_rng) -> KEMKeyPair:
        """A fresh key pair from ``rng``."""
        return cls(rng(MLKEM768_SEED_SIZE))

    def seed(self) -> bytes:
        """The 64-byte seed: secret, for serialized state only."""
        return self._seed

    def decapsulate(self, ciphertext: bytes) -> bytes:
        """The 32-byte shared secret of ``ciphertext``.

        Raises:
            InvalidKey: the ciphertext is not 1088 bytes.
        """
        return self._private.decapsulate(ciphertext)

    def __repr__(self) -> str:
        return f"KEMKeyPair(public_key={_short(self.public_key)}...)"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, KEMKeyPair):
            return NotImplemented
        return constant_time_equal(self._seed, other._seed)

    def __hash__(self) -> int:
        return hash(self.public_key)
