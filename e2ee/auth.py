"""Device authentication to the relay: the ``relay-auth`` statement (DESIGN 5).

The relay sends a fresh nonce bound to one connection; the device signs, with its
signing key under ``e2ee/v1/relay-auth``::

    {0: origin, 1: user_id, 2: device_id, 3: nonce, 4: spki_sha256 or null}

``origin`` is the URL the client itself was configured with (never a value the
relay supplies) and ``spki_sha256`` the SHA-256 of the relay certificate's
SubjectPublicKeyInfo when TLS ends at the relay. The relay only ever chooses the
nonce. Both sides build the statement with :func:`relay_auth_statement`; the relay
checks a signature with :func:`verify_relay_auth` against the signing key of the
device in the account's accepted device list.
"""

from __future__ import annotations

from typing import Final

from . import cbor
from .errors import InvalidArgument
from .identifiers import check_device_id, check_user_id
from .keys import SigningKeyPair, verify_statement
from .labels import Label

__all__ = [
    "MAX_ORIGIN_LENGTH",
    "RELAY_NONCE_SIZE",
    "relay_auth_statement",
    "sign_relay_auth",
    "verify_relay_auth",
]

RELAY_NONCE_SIZE: Final = 32
"""Bytes of the relay's per-connection authentication nonce."""
MAX_ORIGIN_LENGTH: Final = 512
"""Longest origin URL a statement may carry."""
_SPKI_HASH_SIZE: Final = 32


def relay_auth_statement(
    *, origin: str, user_id: str, device_id: int, nonce: bytes, spki_sha256: bytes | None
) -> cbor.Value:
    """The statement a device signs to authenticate one connection (DESIGN 5).

    Raises:
        InvalidArgument: an empty or overlong origin, a nonce or SPKI hash of the
            wrong size.
        InvalidUserId, DecodeError: a malformed user id or device id.
    """
    if not origin or len(origin) > MAX_ORIGIN_LENGTH:
        raise InvalidArgument(f"origin must be 1..{MAX_ORIGIN_LENGTH} characters")
    if len(nonce) != RELAY_NONCE_SIZE:
        raise InvalidArgument(f"relay nonce must be {RELAY_NONCE_SIZE} bytes")
    if spki_sha256 is not None and len(spki_sha256) != _SPKI_HASH_SIZE:
        raise InvalidArgument("SPKI hash must be 32 bytes (SHA-256)")
    return {
        0: origin,
        1: check_user_id(user_id),
        2: check_device_id(device_id),
        3: nonce,
        4: spki_sha256,
    }


def sign_relay_auth(
    signing: SigningKeyPair,
    *,
    origin: str,
    user_id: str,
    device_id: int,
    nonce: bytes,
    spki_sha256: bytes | None,
) -> bytes:
    """The device's signature over its ``relay-auth`` statement.

    Raises:
        InvalidArgument: as :func:`relay_auth_statement`.
    """
    statement = relay_auth_statement(
        origin=origin, user_id=user_id, device_id=device_id, nonce=nonce, spki_sha256=spki_sha256
    )
    return signing.sign(Label.RELAY_AUTH, statement)


def verify_relay_auth(
    signing_pk: bytes,
    signature: bytes,
    *,
    origin: str,
    user_id: str,
    device_id: int,
    nonce: bytes,
    spki_sha256: bytes | None,
) -> None:
    """Check a device's ``relay-auth`` signature; the relay supplies the values it
    expects (its own origin, the nonce it issued on this connection, its SPKI hash or
    ``None`` when TLS ends elsewhere).

    Raises:
        BadSignature: the signature does not verify for exactly these values.
        InvalidArgument: as :func:`relay_auth_statement`.
    """
    statement = relay_auth_statement(
        origin=origin, user_id=user_id, device_id=device_id, nonce=nonce, spki_sha256=spki_sha256
    )
    verify_statement(signing_pk, Label.RELAY_AUTH, statement, signature)
