"""The one exception tree of the protocol core (CONVENTIONS 9).

Every error the core raises is an :class:`E2EEError`. Subclasses are split by
who is to blame and which operation failed, carry structured attributes, and
never include secret bytes in their message.
"""

from __future__ import annotations

__all__ = [
    "BadSignature",
    "CBORDecodeError",
    "CBORDepthExceeded",
    "CBORDuplicateKey",
    "CBORFloatNotAllowed",
    "CBORIndefiniteLength",
    "CBORInvalidKey",
    "CBORInvalidUTF8",
    "CBORNonCanonical",
    "CBORNonMinimalInteger",
    "CBORTagNotAllowed",
    "CBORTooLarge",
    "CBORTrailingBytes",
    "CBORTruncated",
    "CBORUnsortedKeys",
    "CBORUnsupportedType",
    "CorruptState",
    "DecodeError",
    "DecryptionError",
    "DeviceListError",
    "DeviceListRollback",
    "DowngradeError",
    "DuplicateMessage",
    "E2EEError",
    "Equivocation",
    "InvalidArgument",
    "InvalidKey",
    "KeyAgreementError",
    "LimitExceeded",
    "LowOrderPoint",
    "MessageKeyUnavailable",
    "ReflectedMessage",
    "StalePreKey",
    "TooManySkippedMessages",
    "UnknownPreKey",
    "UnsupportedVersion",
    "UntrustedIdentity",
]


class E2EEError(Exception):
    """Root of every error raised by the protocol core."""


# --- decoding: the peer (or the relay) sent malformed bytes ---------------------------


class DecodeError(E2EEError):
    """Bytes that do not decode to the structure expected (blame: the sender)."""


class InvalidKey(DecodeError):
    """A public key that fails validation: wrong length, non-canonical, small order."""


class UnsupportedVersion(DecodeError):
    """A version below ``MIN_PROTOCOL_VERSION`` or above the one this code speaks."""

    def __init__(self, what: str, version: int) -> None:
        super().__init__(f"unsupported {what} version {version}")
        self.what = what
        self.version = version


class CBORDecodeError(DecodeError):
    """Input refused by the strict canonical CBOR decoder (DESIGN 4.1)."""


class CBORTooLarge(CBORDecodeError):
    """Input longer than the size limit given to the decoder."""


class CBORTruncated(CBORDecodeError):
    """Input ends inside an item."""


class CBORTrailingBytes(CBORDecodeError):
    """Input continues after the top-level item."""


class CBORDuplicateKey(CBORDecodeError):
    """A map holds the same key twice."""


class CBORUnsortedKeys(CBORDecodeError):
    """Map keys are not in canonical (ascending) order."""


class CBORNonMinimalInteger(CBORDecodeError):
    """An integer or length is not encoded in its shortest form."""


class CBORIndefiniteLength(CBORDecodeError):
    """An indefinite-length string, array or map."""


class CBORFloatNotAllowed(CBORDecodeError):
    """A floating-point number (never valid in this protocol)."""


class CBORTagNotAllowed(CBORDecodeError):
    """A semantic tag (never valid in this protocol)."""


class CBORUnsupportedType(CBORDecodeError):
    """A simple value other than false, true and null, or a reserved encoding."""


class CBORInvalidKey(CBORDecodeError):
    """A map key that is not a small non-negative integer."""


class CBORInvalidUTF8(CBORDecodeError):
    """A text string that is not valid UTF-8."""


class CBORDepthExceeded(CBORDecodeError):
    """Nesting deeper than the decoder's limit."""


class CBORNonCanonical(CBORDecodeError):
    """Re-encoding the decoded value canonically does not give the input bytes."""


# --- authentication and key agreement ------------------------------------------------


class BadSignature(E2EEError):
    """An Ed25519 signature that does not verify under the expected key and label."""


class KeyAgreementError(E2EEError):
    """X3DH/PQXDH could not establish a session."""


class LowOrderPoint(KeyAgreementError):
    """An X25519 computation produced the all-zero output (a small-order peer key)."""


class DowngradeError(KeyAgreementError):
    """A post-quantum device reached (or offered) without ML-KEM (DESIGN 4.3)."""


class StalePreKey(KeyAgreementError):
    """A signed prekey older than the initiator accepts (30 days)."""


class UnknownPreKey(KeyAgreementError):
    """A pre-key message names a prekey this device does not (or no longer) hold."""

    def __init__(self, kind: str, prekey_id: int) -> None:
        super().__init__(f"unknown {kind} prekey id {prekey_id}")
        self.kind = kind
        self.prekey_id = prekey_id


class UntrustedIdentity(E2EEError):
    """A peer's keys do not match its verified device list."""

    def __init__(self, message: str, user_id: str | None = None, device_id: int | None = None):
        super().__init__(message)
        self.user_id = user_id
        self.device_id = device_id


class DeviceListError(E2EEError):
    """A signed device list that must not be accepted."""


class DeviceListRollback(DeviceListError):
    """A device list whose version is lower than one already seen."""

    def __init__(self, user_id: str, seen: int, offered: int) -> None:
        super().__init__(f"device list of {user_id!r}: version {offered} < last seen {seen}")
        self.user_id = user_id
        self.seen = seen
        self.offered = offered


class Equivocation(DeviceListError):
    """Two different device lists signed with the same version (DESIGN 4.2)."""

    def __init__(self, user_id: str, version: int) -> None:
        super().__init__(f"device list of {user_id!r}: two different lists at version {version}")
        self.user_id = user_id
        self.version = version


# --- message decryption -----------------------------------------------------------


class DecryptionError(E2EEError):
    """A message that cannot be decrypted (authentication failed or no usable state)."""


class DuplicateMessage(DecryptionError):
    """A byte-identical envelope that was already decrypted."""


class MessageKeyUnavailable(DecryptionError):
    """An old counter whose message key is gone (used, evicted or expired)."""


class TooManySkippedMessages(DecryptionError):
    """A counter jump beyond ``MAX_SKIP`` (refused before any DH or KDF)."""

    def __init__(self, skip: int, limit: int) -> None:
        super().__init__(f"message would skip {skip} keys (limit {limit})")
        self.skip = skip
        self.limit = limit


class ReflectedMessage(DecryptionError):
    """A message carrying our own ratchet key: our own ciphertext sent back to us."""


# --- local misuse and state ---------------------------------------------------------


class InvalidArgument(E2EEError, ValueError):
    """The caller passed a value this API does not accept (blame: the local caller)."""


class LimitExceeded(InvalidArgument):
    """A local input larger than a protocol limit (for example ``MAX_PLAINTEXT``)."""


class CorruptState(E2EEError):
    """Serialized state that does not decode (wrong version, truncated, tampered)."""
