"""Recovery export of a user's master key (DESIGN 4.2).

The master key's private half lives only on the primary device. An optional
recovery export lets a new primary restore it instead of creating a new master key
(which contacts would see as a key change). The export is::

    header = CBOR({0: version, 1: user_id, 2: master_pk, 3: opslimit, 4: memlimit_bytes,
                   5: salt[16]})
    key    = Argon2id(passphrase, salt, opslimit, memlimit_bytes, 32)
    blob   = CBOR({0: header, 1: nonce[24],
                   2: XChaCha20-Poly1305(key, nonce, seed[32], ad = "e2ee/v1/recovery" || header)})

The Argon2id parameters travel in the authenticated header and are checked against a
floor (and a ceiling, so a crafted blob cannot make an import allocate without
bound) before any work. Importing checks that the seed gives the master key the
header names.
"""

from __future__ import annotations

from typing import Final

from . import cbor
from .errors import DecodeError, DecryptionError, InvalidArgument
from .identifiers import check_user_id
from .keys import SigningKeyPair
from .labels import Label
from .primitives import (
    AEAD_NONCE_SIZE,
    ARGON2ID_SALT_SIZE,
    Rng,
    aead_decrypt,
    aead_encrypt,
    argon2id,
    constant_time_equal,
    default_rng,
    ed25519_validate_public,
)

__all__ = [
    "RECOVERY_MEMLIMIT_MAX",
    "RECOVERY_MEMLIMIT_MIN",
    "RECOVERY_OPSLIMIT_MAX",
    "RECOVERY_OPSLIMIT_MIN",
    "WrongPassphrase",
    "export_master_key",
    "import_master_key",
]

_VERSION: Final = 1
RECOVERY_OPSLIMIT_MIN: Final = 3
"""Floor of Argon2id passes (with the memory floor: the share-link cost of DESIGN 4.7)."""
RECOVERY_MEMLIMIT_MIN: Final = 64 * 1024 * 1024
"""Floor of Argon2id memory, in bytes."""
RECOVERY_OPSLIMIT_MAX: Final = 16
"""Ceiling of Argon2id passes an import accepts (bounds the work a blob can demand)."""
RECOVERY_MEMLIMIT_MAX: Final = 1024 * 1024 * 1024
"""Ceiling of Argon2id memory an import accepts, in bytes."""
_HEADER_KEYS: Final = frozenset(range(6))
_BLOB_KEYS: Final = frozenset(range(3))
_MAX_BLOB: Final = 1024


class WrongPassphrase(DecryptionError):
    """The passphrase does not open this recovery export (or the export was altered)."""


def _check_limits(opslimit: int, memlimit: int) -> None:
    if not RECOVERY_OPSLIMIT_MIN <= opslimit <= RECOVERY_OPSLIMIT_MAX:
        raise DecodeError(
            f"recovery export: Argon2id passes {opslimit} outside "
            f"{RECOVERY_OPSLIMIT_MIN}..{RECOVERY_OPSLIMIT_MAX}"
        )
    if not RECOVERY_MEMLIMIT_MIN <= memlimit <= RECOVERY_MEMLIMIT_MAX:
        raise DecodeError(
            f"recovery export: Argon2id memory {memlimit} outside "
            f"{RECOVERY_MEMLIMIT_MIN}..{RECOVERY_MEMLIMIT_MAX} bytes"
        )


def export_master_key(
    user_id: str,
    master: SigningKeyPair,
    passphrase: bytes,
    *,
    opslimit: int = RECOVERY_OPSLIMIT_MIN,
    memlimit: int = RECOVERY_MEMLIMIT_MIN,
    rng: Rng = default_rng,
) -> bytes:
    """Encrypt ``master`` under ``passphrase`` (Argon2id + XChaCha20-Poly1305).

    Slow by design (Argon2id with at least 64 MiB): run it off an event loop.

    Raises:
        InvalidArgument: an empty passphrase, or Argon2id limits outside the floor and
            ceiling.
    """
    check_user_id(user_id)
    if not passphrase:
        raise InvalidArgument("a recovery passphrase cannot be empty")
    try:
        _check_limits(opslimit, memlimit)
    except DecodeError as exc:
        raise InvalidArgument(str(exc)) from None
    salt = rng(ARGON2ID_SALT_SIZE)
    header = cbor.encode(
        {0: _VERSION, 1: user_id, 2: master.public_key, 3: opslimit, 4: memlimit, 5: salt}
    )
    key = argon2id(passphrase, salt=salt, opslimit=opslimit, memlimit=memlimit)
    nonce = rng(AEAD_NONCE_SIZE)
    sealed = aead_encrypt(key, nonce, master.seed(), Label.RECOVERY.value + header)
    return cbor.encode({0: header, 1: nonce, 2: sealed})


def import_master_key(blob: bytes, passphrase: bytes) -> tuple[str, SigningKeyPair]:
    """Open a recovery export: ``(user_id, master key pair)``.

    The header (version, Argon2id limits, master key) is checked before Argon2id
    runs; the seed must give the master key the header names.

    Raises:
        DecodeError: a malformed blob, an unknown version or limits outside the floor
            and ceiling.
        WrongPassphrase: the passphrase is wrong or the blob was altered.
    """
    outer = cbor.expect_map(cbor.decode(blob, max_size=_MAX_BLOB), "recovery export", _BLOB_KEYS)
    header = cbor.field_bytes(outer, 0, "recovery header", max_size=_MAX_BLOB)
    nonce = cbor.field_bytes(outer, 1, "nonce", size=AEAD_NONCE_SIZE)
    sealed = cbor.field_bytes(outer, 2, "sealed seed", size=32 + 16)
    m = cbor.expect_map(cbor.decode(header, max_size=_MAX_BLOB), "recovery header", _HEADER_KEYS)
    if cbor.field_int(m, 0, "version") != _VERSION:
        raise DecodeError(f"recovery export: unknown version {m[0]!r}")
    user_id = check_user_id(m[1])
    master_pk = ed25519_validate_public(cbor.field_bytes(m, 2, "master key", size=32))
    opslimit = cbor.field_int(m, 3, "Argon2id passes")
    memlimit = cbor.field_int(m, 4, "Argon2id memory")
    _check_limits(opslimit, memlimit)
    salt = cbor.field_bytes(m, 5, "salt", size=ARGON2ID_SALT_SIZE)
    key = argon2id(passphrase, salt=salt, opslimit=opslimit, memlimit=memlimit)
    try:
        seed = aead_decrypt(key, nonce, sealed, Label.RECOVERY.value + header)
    except DecryptionError:
        raise WrongPassphrase("the passphrase does not open this recovery export") from None
    master = SigningKeyPair(seed)
    if not constant_time_equal(master.public_key, master_pk):
        raise DecodeError("recovery export: the sealed key is not the master key it names")
    return user_id, master
