"""Thin, typed, synchronous wrappers over every cryptographic primitive (CONVENTIONS 6).

This is the only module of the packages that imports ``nacl`` or ``cryptography``.
Nothing here is home-made: X25519, Ed25519, XChaCha20-Poly1305, Argon2id and
secretstream come from libsodium (PyNaCl); ML-KEM-768 from ``cryptography``;
HMAC/HKDF-SHA-256, SHA-2 and keyed BLAKE2b from the standard library.

Every failure is a typed :class:`~e2ee.errors.E2EEError`, never a bare
``RuntimeError`` or ``ValueError`` from a binding. Randomness is always passed
in as ``rng`` (default :func:`secrets.token_bytes`), so tests can pin it.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Callable
from typing import Final

import nacl.bindings as _sodium
import nacl.exceptions as _nacl_exc
from cryptography import x509 as _x509
from cryptography.exceptions import UnsupportedAlgorithm as _UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization as _serialization
from cryptography.hazmat.primitives.asymmetric import mlkem as _mlkem
from nacl._sodium import ffi as _ffi
from nacl._sodium import lib as _lib

from .errors import BadSignature, DecryptionError, InvalidArgument, InvalidKey, LowOrderPoint

__all__ = [
    "AEAD_KEY_SIZE",
    "AEAD_NONCE_SIZE",
    "AEAD_TAG_SIZE",
    "ARGON2ID_MEMLIMIT_MIN",
    "ARGON2ID_OPSLIMIT_MIN",
    "ARGON2ID_SALT_SIZE",
    "ED25519_PUBLIC_KEY_SIZE",
    "ED25519_SEED_SIZE",
    "ED25519_SIGNATURE_SIZE",
    "MLKEM768_CIPHERTEXT_SIZE",
    "MLKEM768_PUBLIC_KEY_SIZE",
    "MLKEM768_SEED_SIZE",
    "MLKEM768_SHARED_SECRET_SIZE",
    "SECRETSTREAM_ABYTES",
    "SECRETSTREAM_HEADER_SIZE",
    "SECRETSTREAM_KEY_SIZE",
    "SECRETSTREAM_TAG_FINAL",
    "SECRETSTREAM_TAG_MESSAGE",
    "SECRETSTREAM_TAG_PUSH",
    "SECRETSTREAM_TAG_REKEY",
    "X25519_KEY_SIZE",
    "MLKEM768PrivateKey",
    "Rng",
    "SecretStreamPullState",
    "SecretStreamPushState",
    "aead_decrypt",
    "aead_encrypt",
    "argon2id",
    "blake2b",
    "constant_time_equal",
    "default_rng",
    "ed25519_keypair_from_seed",
    "ed25519_public_from_seed",
    "ed25519_sign",
    "ed25519_validate_public",
    "ed25519_verify",
    "hkdf_sha256",
    "hmac_sha256",
    "mlkem768_decapsulate",
    "mlkem768_encapsulate",
    "mlkem768_public_from_seed",
    "mlkem768_validate_public",
    "secretstream_init_pull",
    "secretstream_init_push",
    "secretstream_keygen",
    "secretstream_pull",
    "secretstream_push",
    "sha256",
    "sha512",
    "spki_sha256",
    "x25519",
    "x25519_public_from_private",
    "x25519_validate_public",
]

Rng = Callable[[int], bytes]
"""A source of random bytes: ``rng(n)`` returns ``n`` uniformly random bytes."""

default_rng: Final[Rng] = secrets.token_bytes

X25519_KEY_SIZE: Final = 32
ED25519_PUBLIC_KEY_SIZE: Final = 32
ED25519_SEED_SIZE: Final = 32
ED25519_SIGNATURE_SIZE: Final = 64
AEAD_KEY_SIZE: Final = 32
AEAD_NONCE_SIZE: Final = 24
AEAD_TAG_SIZE: Final = 16
MLKEM768_SEED_SIZE: Final = 64
MLKEM768_PUBLIC_KEY_SIZE: Final = 1184
MLKEM768_CIPHERTEXT_SIZE: Final = 1088
MLKEM768_SHARED_SECRET_SIZE: Final = 32
ARGON2ID_SALT_SIZE: Final = 16
ARGON2ID_OPSLIMIT_MIN: Final = 1
ARGON2ID_MEMLIMIT_MIN: Final = 8 * 1024
SECRETSTREAM_KEY_SIZE: Final = 32
"""``crypto_secretstream_xchacha20poly1305_KEYBYTES``."""
SECRETSTREAM_HEADER_SIZE: Final = 24
"""``crypto_secretstream_xchacha20poly1305_HEADERBYTES``: the stream's header (its nonce)."""
SECRETSTREAM_ABYTES: Final = 17
"""``crypto_secretstream_xchacha20poly1305_ABYTES``: each message grows by a 1-byte
encrypted tag and a 16-byte MAC."""
SECRETSTREAM_TAG_MESSAGE: Final = 0
"""The most common tag: nothing special about this message."""
SECRETSTREAM_TAG_PUSH: Final = 1
"""Marks the end of a set of messages, not of the stream."""
SECRETSTREAM_TAG_REKEY: Final = 2
"""Derive a new key after this message (forgets the old one)."""
SECRETSTREAM_TAG_FINAL: Final = 3
"""The last message of the stream (it also rekeys)."""

_P25519: Final = 2**255 - 19
# The canonical u-coordinates of the points of small order on Curve25519 (orders 1, 2,
# 4 and 8): 0, 1, the two points of order 8, and p - 1.
_X25519_SMALL_ORDER_U: Final = frozenset(
    {
        0,
        1,
        325606250916557431795983626356110631294008115727848805560023387167927233504,
        39382357235489614581723060781553021112529911719440698176882885853963445705823,
        _P25519 - 1,
    }
)
_ZERO32: Final = bytes(32)
_HASH_LEN: Final = 32

# X25519 too goes straight to libsodium through PyNaCl's cffi binding: PyNaCl's
# Python-level wrapper adds about 2 us of argument checks to every call.
_scalarmult_c = _lib.crypto_scalarmult
_scalarmult_base_c = _lib.crypto_scalarmult_base
# XChaCha20-Poly1305 is on every message's hot path. PyNaCl's Python-level wrapper
# re-checks every argument with eagerly formatted messages (about 2-3 us a call);
# the wrappers below check lengths once and call the same libsodium functions through
# PyNaCl's own cffi binding (measured: 4.5 -> 1.5 us per encrypt of 100 bytes).
_aead_encrypt_c = _lib.crypto_aead_xchacha20poly1305_ietf_encrypt
_aead_decrypt_c = _lib.crypto_aead_xchacha20poly1305_ietf_decrypt
_ffi_new = _ffi.new
_ffi_buffer = _ffi.buffer
_NULL = _ffi.NULL
_AEAD_MAX_MESSAGE: Final = _sodium.crypto_aead_xchacha20poly1305_ietf_MESSAGEBYTES_MAX
_hmac_digest = hmac.digest  # one-shot, in C: about 1 us cheaper per call than new().digest()
_sha256 = hashlib.sha256
_blake2b = hashlib.blake2b


def _require_len(what: str, value: bytes, size: int) -> None:
    if len(value) != size:
        raise InvalidArgument(f"{what} must be {size} bytes, got {len(value)}")


# --- hashes and MACs (stdlib) ---------------------------------------------------------


def sha256(data: bytes) -> bytes:
    """SHA-256 of ``data`` (FIPS 180-4)."""
    return _sha256(data).digest()


def sha512(data: bytes) -> bytes:
    """SHA-512 of ``data`` (FIPS 180-4)."""
    return hashlib.sha512(data).digest()


def hmac_sha256(key: bytes, data: bytes) -> bytes:
    """HMAC-SHA-256 (RFC 2104) of ``data`` under ``key``."""
    return _hmac_digest(key, data, "sha256")


def hkdf_sha256(ikm: bytes, *, salt: bytes, info: bytes, length: int) -> bytes:
    """HKDF-SHA-256 extract-then-expand (RFC 5869).

    An empty ``salt`` means HashLen zero bytes, as RFC 5869 section 2.2 says.

    Raises:
        InvalidArgument: ``length`` is not in ``1..255*32``.
    """
    if not 0 < length <= 255 * _HASH_LEN:
        raise InvalidArgument(f"HKDF-SHA-256 output length must be 1..{255 * _HASH_LEN}")
    prk = _hmac_digest(salt or bytes(_HASH_LEN), ikm, "sha256")
    if length <= _HASH_LEN:  # session keys: one block
        return _hmac_digest(prk, info + b"\x01", "sha256")[:length]
    blocks: list[bytes] = []
    previous = b""
    for counter in range(1, -(-length // _HASH_LEN) + 1):
        previous = _hmac_digest(prk, previous + info + bytes((counter,)), "sha256")
        blocks.append(previous)
    return b"".join(blocks)[:length]


def blake2b(data: bytes, *, key: bytes = b"", digest_size: int = 32) -> bytes:
    """BLAKE2b (RFC 7693), keyed when ``key`` is given; the same function as
    libsodium's ``crypto_generichash``.

    Raises:
        InvalidArgument: ``key`` longer than 64 bytes or ``digest_size`` not in 1..64.
    """
    if len(key) > 64 or not 0 < digest_size <= 64:
        raise InvalidArgument("BLAKE2b takes a key of at most 64 bytes and 1..64 output bytes")
    return _blake2b(data, key=key, digest_size=digest_size).digest()


def constant_time_equal(a: bytes, b: bytes) -> bool:
    """Compare two byte strings in time independent of where they differ."""
    return hmac.compare_digest(a, b)


# --- X25519 (libsodium) -----------------------------------------------------------------


def x25519_public_from_private(private_key: bytes) -> bytes:
    """The X25519 public key of a 32-byte private scalar (RFC 7748, clamped).

    Raises:
        InvalidArgument: the private key is not 32 bytes.
    """
    _require_len("X25519 private key", private_key, X25519_KEY_SIZE)
    out = _ffi_new("unsigned char[]", X25519_KEY_SIZE)
    _scalarmult_base_c(out, private_key)
    public_key: bytes = _ffi_buffer(out, X25519_KEY_SIZE)[:]
    return public_key


def x25519_validate_public(public_key: bytes) -> bytes:
    """Check that ``public_key`` is a canonical X25519 key of large order and return it.

    Used when a key is decoded from the wire (DESIGN 4.2): keys with the top bit set,
    with ``u >= 2^255 - 19``, or of small order are refused.

    Raises:
        InvalidKey: the key is the wrong length, non-canonical or of small order.
    """
    if len(public_key) != X25519_KEY_SIZE:
        raise InvalidKey(f"X25519 public key must be 32 bytes, got {len(public_key)}")
    u = int.from_bytes(public_key, "little")
    if u >= _P25519:  # covers the top bit too, since 2^255 > p
        raise InvalidKey("X25519 public key is not canonical")
    if u in _X25519_SMALL_ORDER_U:
        raise InvalidKey("X25519 public key has small order")
    return public_key


def x25519(private_key: bytes, public_key: bytes) -> bytes:
    """X25519 Diffie-Hellman (RFC 7748) through libsodium's ``crypto_scalarmult``.

    Raises:
        InvalidArgument: a key is not 32 bytes.
        LowOrderPoint: the output is all zero (the peer's key has small order); never
            a bare ``RuntimeError``.
    """
    if len(private_key) != X25519_KEY_SIZE or len(public_key) != X25519_KEY_SIZE:
        raise InvalidArgument("X25519 keys must be 32 bytes")
    out = _ffi_new("unsigned char[]", X25519_KEY_SIZE)
    if _scalarmult_c(out, private_key, public_key):
        # libsodium refuses a blocklist of small-order inputs and an all-zero result.
        raise LowOrderPoint("X25519 produced the all-zero output")
    shared: bytes = _ffi_buffer(out, X25519_KEY_SIZE)[:]
    if shared == _ZERO32:  # pragma: no cover - libsodium already refuses this case
        raise LowOrderPoint("X25519 produced the all-zero output")
    return shared


# --- Ed25519 (libsodium) ----------------------------------------------------------------


def ed25519_keypair_from_seed(seed: bytes) -> tuple[bytes, bytes]:
    """Return ``(public_key, secret_key_64)`` for a 32-byte Ed25519 seed (RFC 8032).

    Raises:
        InvalidArgument: the seed is not 32 bytes.
    """
    _require_len("Ed25519 seed", seed, ED25519_SEED_SIZE)
    public_key, secret_key = _sodium.crypto_sign_seed_keypair(seed)
    return public_key, secret_key


def ed25519_public_from_seed(seed: bytes) -> bytes:
    """The Ed25519 public key of a 32-byte seed."""
    return ed25519_keypair_from_seed(seed)[0]


def ed25519_validate_public(public_key: bytes) -> bytes:
    """Check an Ed25519 public key at decode and return it (DESIGN 4.2).

    ``crypto_core_ed25519_is_valid_point`` refuses non-canonical encodings, points off
    the curve, small-order points and mixed-order points (outside the prime-order
    subgroup).

    Raises:
        InvalidKey: the key is the wrong length or not a valid prime-order point.
    """
    if len(public_key) != ED25519_PUBLIC_KEY_SIZE:
        raise InvalidKey(f"Ed25519 public key must be 32 bytes, got {len(public_key)}")
    if not _sodium.crypto_core_ed25519_is_valid_point(public_key):
        raise InvalidKey("Ed25519 public key is not a valid prime-order point")
    return public_key


def ed25519_sign(secret_key: bytes, message: bytes) -> bytes:
    """Sign ``message`` with a 64-byte libsodium Ed25519 secret key; 64-byte signature.

    Raises:
        InvalidArgument: the secret key is not 64 bytes.
    """
    _require_len("Ed25519 secret key", secret_key, 64)
    signed: bytes = _sodium.crypto_sign(message, secret_key)
    return signed[:ED25519_SIGNATURE_SIZE]


def ed25519_verify(public_key: bytes, message: bytes, signature: bytes) -> None:
    """Verify an Ed25519 signature with libsodium's strict, cofactorless check
    (``S < L``, canonical ``R`` and ``A``, small-order ``R`` and ``A`` refused).

    Raises:
        BadSignature: the signature does not verify, or has the wrong length.
        InvalidKey: the public key is not 32 bytes.
    """
    if len(public_key) != ED25519_PUBLIC_KEY_SIZE:
        raise InvalidKey(f"Ed25519 public key must be 32 bytes, got {len(public_key)}")
    if len(signature) != ED25519_SIGNATURE_SIZE:
        raise BadSignature("Ed25519 signature must be 64 bytes")
    try:
        _sodium.crypto_sign_open(signature + message, public_key)
    except _nacl_exc.BadSignatureError as exc:
        raise BadSignature("Ed25519 signature does not verify") from exc


# --- XChaCha20-Poly1305 (libsodium) ---------------------------------------------------


def aead_encrypt(key: bytes, nonce: bytes, plaintext: bytes, associated_data: bytes) -> bytes:
    """XChaCha20-Poly1305 (IETF) encryption; returns ciphertext || 16-byte tag.

    Raises:
        InvalidArgument: the key is not 32 bytes or the nonce not 24.
    """
    if len(key) != AEAD_KEY_SIZE or len(nonce) != AEAD_NONCE_SIZE:
        raise InvalidArgument("XChaCha20-Poly1305 takes a 32-byte key and a 24-byte nonce")
    size = len(plaintext)
    if size > _AEAD_MAX_MESSAGE:  # pragma: no cover - 256 GiB, far beyond any limit here
        raise InvalidArgument("plaintext too long for XChaCha20-Poly1305")
    out = _ffi_new("unsigned char[]", size + AEAD_TAG_SIZE)
    _aead_encrypt_c(
        out, _NULL, plaintext, size, associated_data, len(associated_data), _NULL, nonce, key
    )
    ciphertext: bytes = _ffi_buffer(out, size + AEAD_TAG_SIZE)[:]
    return ciphertext


def aead_decrypt(key: bytes, nonce: bytes, ciphertext: bytes, associated_data: bytes) -> bytes:
    """XChaCha20-Poly1305 (IETF) decryption of ciphertext || tag.

    Raises:
        InvalidArgument: the key is not 32 bytes or the nonce not 24.
        DecryptionError: the tag does not verify (or the input is shorter than a tag).
    """
    if len(key) != AEAD_KEY_SIZE or len(nonce) != AEAD_NONCE_SIZE:
        raise InvalidArgument("XChaCha20-Poly1305 takes a 32-byte key and a 24-byte nonce")
    if len(ciphertext) < AEAD_TAG_SIZE:
        raise DecryptionError("ciphertext shorter than the authentication tag")
    size = len(ciphertext) - AEAD_TAG_SIZE
    out = _ffi_new("unsigned char[]", size or 1)
    if _aead_decrypt_c(
        out,
        _NULL,
        _NULL,
        ciphertext,
        len(ciphertext),
        associated_data,
        len(associated_data),
        nonce,
        key,
    ):
        raise DecryptionError("authentication failed")
    plaintext: bytes = _ffi_buffer(out, size)[:]
    return plaintext


# --- ML-KEM-768 (cryptography, FIPS 203) ------------------------------------------------


def mlkem768_public_from_seed(seed: bytes) -> bytes:
    """The 1184-byte encapsulation key of a 64-byte ML-KEM-768 seed ``d || z``.

    Raises:
        InvalidArgument: the seed is not 64 bytes.
    """
    return MLKEM768PrivateKey(seed).public_key


def mlkem768_validate_public(public_key: bytes) -> bytes:
    """Check an ML-KEM-768 encapsulation key (length and FIPS 203 modulus check).

    Raises:
        InvalidKey: the key is refused.
    """
    if len(public_key) != MLKEM768_PUBLIC_KEY_SIZE:
        raise InvalidKey(f"ML-KEM-768 public key must be 1184 bytes, got {len(public_key)}")
    try:
        _mlkem.MLKEM768PublicKey.from_public_bytes(public_key)
    except ValueError as exc:
        raise InvalidKey("ML-KEM-768 public key fails the modulus check") from exc
    return public_key


def mlkem768_encapsulate(public_key: bytes) -> tuple[bytes, bytes]:
    """Encapsulate to an ML-KEM-768 key; returns ``(shared_secret_32, ciphertext_1088)``.

    The randomness comes from the library's own generator (``cryptography`` offers no
    deterministic encapsulation).

    Raises:
        InvalidKey: the public key is refused.
    """
    if len(public_key) != MLKEM768_PUBLIC_KEY_SIZE:
        raise InvalidKey(f"ML-KEM-768 public key must be 1184 bytes, got {len(public_key)}")
    try:
        key = _mlkem.MLKEM768PublicKey.from_public_bytes(public_key)
    except ValueError as exc:
        raise InvalidKey("ML-KEM-768 public key fails the modulus check") from exc
    shared_secret, ciphertext = key.encapsulate()
    return shared_secret, ciphertext


class MLKEM768PrivateKey:
    """An ML-KEM-768 decapsulation key expanded once from its 64-byte seed ``d || z``
    (expanding costs about 65 us; keep the object to decapsulate repeatedly)."""

    __slots__ = ("_key", "public_key")

    def __init__(self, seed: bytes) -> None:
        """Expand ``seed``.

        Raises:
            InvalidArgument: the seed is not 64 bytes.
        """
        _require_len("ML-KEM-768 seed", seed, MLKEM768_SEED_SIZE)
        self._key = _mlkem.MLKEM768PrivateKey.from_seed_bytes(seed)
        self.public_key: bytes = self._key.public_key().public_bytes_raw()

    def decapsulate(self, ciphertext: bytes) -> bytes:
        """The 32-byte shared secret of ``ciphertext`` (implicit rejection, FIPS 203).

        Raises:
            InvalidKey: the ciphertext is not 1088 bytes.
        """
        if len(ciphertext) != MLKEM768_CIPHERTEXT_SIZE:
            raise InvalidKey(f"ML-KEM-768 ciphertext must be 1088 bytes, got {len(ciphertext)}")
        secret: bytes = self._key.decapsulate(ciphertext)
        return secret

    def __repr__(self) -> str:
        return f"MLKEM768PrivateKey(public_key={self.public_key[:8].hex()}...)"


def mlkem768_decapsulate(seed: bytes, ciphertext: bytes) -> bytes:
    """Decapsulate an ML-KEM-768 ciphertext with the key of a 64-byte seed.

    A well-formed but wrong ciphertext gives the implicit-rejection secret, as FIPS 203
    prescribes, so the session keys then simply differ.

    Raises:
        InvalidArgument: the seed is not 64 bytes.
        DecodeError: the ciphertext is not 1088 bytes (``InvalidKey`` subclass of it).
    """
    return MLKEM768PrivateKey(seed).decapsulate(ciphertext)


# --- Argon2id (libsodium) ---------------------------------------------------------------


def argon2id(
    password: bytes, *, salt: bytes, opslimit: int, memlimit: int, length: int = 32
) -> bytes:
    """Argon2id (RFC 9106, libsodium ``crypto_pwhash``), ``memlimit`` in bytes.

    Raises:
        InvalidArgument: the salt is not 16 bytes or a limit is outside libsodium's range.
    """
    _require_len("Argon2id salt", salt, ARGON2ID_SALT_SIZE)
    if opslimit < ARGON2ID_OPSLIMIT_MIN or memlimit < ARGON2ID_MEMLIMIT_MIN or length < 16:
        raise InvalidArgument("Argon2id parameters below the minimum")
    if (
        opslimit > _sodium.crypto_pwhash_argon2id_OPSLIMIT_MAX
        or memlimit > _sodium.crypto_pwhash_argon2id_MEMLIMIT_MAX
        or length > _sodium.crypto_pwhash_BYTES_MAX
    ):
        raise InvalidArgument("Argon2id parameters above the maximum")
    derived: bytes = _sodium.crypto_pwhash_alg(
        length, password, salt, opslimit, memlimit, _sodium.crypto_pwhash_ALG_ARGON2ID13
    )
    return derived


# --- secretstream: XChaCha20-Poly1305 streams (libsodium) ---------------------------

_SECRETSTREAM_TAGS: Final = frozenset(
    {
        SECRETSTREAM_TAG_MESSAGE,
        SECRETSTREAM_TAG_PUSH,
        SECRETSTREAM_TAG_REKEY,
        SECRETSTREAM_TAG_FINAL,
    }
)
_SECRETSTREAM_MESSAGE_MAX: Final = _sodium.crypto_secretstream_xchacha20poly1305_MESSAGEBYTES_MAX


class SecretStreamPushState:
    """The sending state of one ``crypto_secretstream_xchacha20poly1305`` stream (opaque:
    it holds the stream's current key, so its ``repr`` shows nothing of it). Made by
    :func:`secretstream_init_push`, advanced by :func:`secretstream_push`."""

    __slots__ = ("_state",)

    def __init__(self) -> None:
        self._state = _sodium.crypto_secretstream_xchacha20poly1305_state()

    def __repr__(self) -> str:
        return "SecretStreamPushState(<secret>)"


class SecretStreamPullState:
    """The receiving state of one ``crypto_secretstream_xchacha20poly1305`` stream
    (opaque, as :class:`SecretStreamPushState`). Made by :func:`secretstream_init_pull`,
    advanced by :func:`secretstream_pull`."""

    __slots__ = ("_state",)

    def __init__(self) -> None:
        self._state = _sodium.crypto_secretstream_xchacha20poly1305_state()

    def __repr__(self) -> str:
        return "SecretStreamPullState(<secret>)"


def secretstream_keygen(rng: Rng = default_rng) -> bytes:
    """A fresh 32-byte secretstream key from ``rng`` (libsodium's
    ``crypto_secretstream_xchacha20poly1305_keygen`` is exactly 32 random bytes; taking
    them from ``rng`` lets tests pin them)."""
    key = rng(SECRETSTREAM_KEY_SIZE)
    _require_len("secretstream key", key, SECRETSTREAM_KEY_SIZE)
    return key


def secretstream_init_push(key: bytes) -> tuple[SecretStreamPushState, bytes]:
    """Start a stream under ``key``: ``(state, header)``.

    The 24-byte header comes from libsodium's own generator (the binding offers no way
    to pass it in); the receiver needs it to start pulling.

    Raises:
        InvalidArgument: the key is not 32 bytes.
    """
    _require_len("secretstream key", key, SECRETSTREAM_KEY_SIZE)
    state = SecretStreamPushState()
    header: bytes = _sodium.crypto_secretstream_xchacha20poly1305_init_push(
        state._state, bytes(key)
    )
    return state, header


def secretstream_push(
    state: SecretStreamPushState,
    message: bytes,
    *,
    tag: int = SECRETSTREAM_TAG_MESSAGE,
    associated_data: bytes = b"",
) -> bytes:
    """Encrypt the next message of a stream with ``tag``; returns ``len(message) + 17``
    bytes.

    Raises:
        InvalidArgument: ``state`` is not a push state, or ``tag`` is not one of the four
            ``SECRETSTREAM_TAG_*`` values.
    """
    if not isinstance(state, SecretStreamPushState):
        raise InvalidArgument("secretstream_push needs a state from secretstream_init_push")
    if tag not in _SECRETSTREAM_TAGS:
        raise InvalidArgument(f"unknown secretstream tag {tag!r}")
    if len(message) > _SECRETSTREAM_MESSAGE_MAX:  # pragma: no cover - 256 GiB
        raise InvalidArgument("message too long for secretstream")
    ciphertext: bytes = _sodium.crypto_secretstream_xchacha20poly1305_push(
        state._state, bytes(message), bytes(associated_data) or None, tag
    )
    return ciphertext


def secretstream_init_pull(key: bytes, header: bytes) -> SecretStreamPullState:
    """Start reading the stream of ``header`` under ``key``.

    Raises:
        InvalidArgument: the key is not 32 bytes or the header not 24.
    """
    _require_len("secretstream key", key, SECRETSTREAM_KEY_SIZE)
    _require_len("secretstream header", header, SECRETSTREAM_HEADER_SIZE)
    state = SecretStreamPullState()
    _sodium.crypto_secretstream_xchacha20poly1305_init_pull(state._state, bytes(header), bytes(key))
    return state


def secretstream_pull(
    state: SecretStreamPullState, ciphertext: bytes, *, associated_data: bytes = b""
) -> tuple[bytes, int]:
    """Decrypt the next message of a stream: ``(message, tag)``.

    A message that fails (the wrong key or header, modified, truncated, reordered,
    replayed or from another stream) leaves ``state`` unchanged; a caller that reads a
    stream as a whole treats the stream as broken from then on.

    Raises:
        InvalidArgument: ``state`` is not a pull state.
        DecryptionError: the message does not authenticate, or is shorter than 17
            bytes or longer than secretstream allows.
    """
    if not isinstance(state, SecretStreamPullState):
        raise InvalidArgument("secretstream_pull needs a state from secretstream_init_pull")
    if (
        not SECRETSTREAM_ABYTES
        <= len(ciphertext)
        <= _SECRETSTREAM_MESSAGE_MAX + SECRETSTREAM_ABYTES
    ):
        raise DecryptionError("secretstream message of an impossible length")
    try:
        message, tag = _sodium.crypto_secretstream_xchacha20poly1305_pull(
            state._state, bytes(ciphertext), bytes(associated_data) or None
        )
    except _nacl_exc.RuntimeError:
        raise DecryptionError("secretstream message does not authenticate") from None
    return message, tag


# --- certificates ----------------------------------------------------------------------


def spki_sha256(cert_der: bytes) -> bytes:
    """SHA-256 of a DER certificate's SubjectPublicKeyInfo: the value TLS pins compare.

    Raises:
        InvalidKey: ``cert_der`` is not a DER X.509 certificate, or its public key is of
            an unsupported type or does not decode.
    """
    try:
        certificate = _x509.load_der_x509_certificate(cert_der)
    except ValueError as exc:
        raise InvalidKey("not a DER X.509 certificate") from exc
    try:
        public_key = certificate.public_key()
    except (ValueError, _UnsupportedAlgorithm) as exc:
        raise InvalidKey("certificate public key is unsupported or malformed") from exc
    spki = public_key.public_bytes(
        _serialization.Encoding.DER, _serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return sha256(spki)
