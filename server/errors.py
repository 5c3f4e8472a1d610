"""The relay's errors and the one table that maps every refusal at the edge
(CONVENTIONS 9).

Every refusal the relay can make, from its own checks (:class:`RelayError`), from
storage (:class:`server.storage.base.StorageError`) or from wire parsing and
signature checks in ``e2ee`` (:class:`e2ee.errors.DecodeError`,
:class:`e2ee.errors.BadSignature`), is looked up in :data:`REFUSALS` by its class
(the nearest entry along the MRO): the :class:`~e2ee.relay_frames.ErrorCode` of the
``Error`` frame, the WebSocket close code when the refusal ends the connection, the
HTTP status, and the reason label (the ``error`` of an HTTP error body, counted in
``/metrics``): the error code's name, or a label of its own where an HTTP API pins
finer names (share links: ``bad_request``, ``ttl_too_long``, ``expired``, ``exists``,
``wrong_proof``, ``not_found``). Messages never carry secrets or payload bytes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from e2ee.errors import BadSignature, DecodeError, E2EEError, InvalidArgument
from e2ee.relay_frames import CloseCode, ErrorCode, UnknownFrameType

from .storage.base import (
    AccountExists,
    BlobExists,
    BlobQuotaExceeded,
    DeviceIdReused,
    IdempotencyConflict,
    LinkMailboxFull,
    PreKeyIdReused,
    QueueFull,
    SchemaTooNew,
    ShareExists,
    StorageError,
    StorageUnavailable,
    UnknownAccount,
    UnknownBlob,
    UnknownDevice,
    VersionConflict,
)

__all__ = [
    "REFUSALS",
    "AuthFailed",
    "CiphertextTooLarge",
    "ConfigError",
    "DeviceListRejected",
    "Forbidden",
    "InvalidRequest",
    "NoPreKeys",
    "NotAuthenticated",
    "NotFound",
    "RateLimited",
    "Refusal",
    "RelayError",
    "RelayNotStarted",
    "ShareBadRequest",
    "ShareExpired",
    "ShareNotFound",
    "ShareTTLTooLong",
    "TooLarge",
    "WrongProof",
    "refusal_for",
]


class RelayError(Exception):
    """Root of the relay's own errors."""


class ConfigError(RelayError):
    """The settings are invalid (the message names the field, never a secret)."""


class RelayNotStarted(RelayError):
    """Storage or notifier used before the app's lifespan opened them."""


class RateLimited(RelayError):
    """Too many requests of one kind for one key (IP, device)."""

    def __init__(self, what: str) -> None:
        super().__init__(f"rate limited: {what}")
        self.what = what


class TooLarge(RelayError):
    """A body or frame above its limit."""

    def __init__(self, what: str, limit: int) -> None:
        super().__init__(f"{what} is larger than {limit} bytes")
        self.what = what
        self.limit = limit


class CiphertextTooLarge(TooLarge):
    """One ciphertext of a send above its limit (answered with an Error frame; the
    connection stays open)."""


class AuthFailed(RelayError):
    """Authentication refused (bad signature, unknown or removed device, nonce used)."""


class NotAuthenticated(RelayError):
    """A request that needs an authenticated connection came before authentication."""


class Forbidden(RelayError):
    """An operator policy refuses the request (e.g. a wrong registration token)."""


class InvalidRequest(RelayError):
    """A well-formed request the relay refuses (wrong account, bad values)."""


class NotFound(RelayError):
    """No such resource (a blob, a link mailbox slot, a user for HTTP lookups)."""


class ShareBadRequest(InvalidRequest):
    """A share-link request with a malformed id, header or body."""


class ShareTTLTooLong(InvalidRequest):
    """A share link expiring later than ``max_share_link_ttl_seconds`` from now."""


class ShareExpired(InvalidRequest):
    """A share link uploaded with an expiry that has passed."""


class WrongProof(RelayError):
    """A share-link download proof that does not match (counted; the 5th deletes the
    share)."""


class ShareNotFound(NotFound):
    """No such share link: unknown, expired, deleted or used up (one answer for all)."""


class DeviceListRejected(RelayError):
    """A device list whose version does not increase by one, or does not chain."""


class NoPreKeys(RelayError):
    """The device has no signed prekey on the relay."""


@dataclass(frozen=True, slots=True)
class Refusal:
    """How one kind of refusal shows at the edge."""

    code: ErrorCode
    http_status: int
    close: CloseCode | None = None
    """Close the WebSocket with this code (``None``: answer with an Error frame and
    keep the connection)."""
    label: str | None = None
    """The reason label when it is not the code's name (HTTP-only refusals)."""

    @property
    def reason(self) -> str:
        """The ``error`` of an HTTP error body and the label counted in
        ``relay_refusals_total{reason=...}``."""
        return self.label if self.label is not None else self.code.name.lower()


REFUSALS: Final[dict[type[BaseException], Refusal]] = {
    # the relay's own checks
    RateLimited: Refusal(ErrorCode.RATE_LIMITED, 429),
    TooLarge: Refusal(ErrorCode.TOO_LARGE, 413, CloseCode.TOO_BIG),
    CiphertextTooLarge: Refusal(ErrorCode.TOO_LARGE, 413),
    AuthFailed: Refusal(ErrorCode.AUTH_FAILED, 401, CloseCode.AUTH_FAILED),
    NotAuthenticated: Refusal(ErrorCode.NOT_AUTHENTICATED, 401),
    Forbidden: Refusal(ErrorCode.AUTH_FAILED, 403),
    InvalidRequest: Refusal(ErrorCode.INVALID, 400),
    NotFound: Refusal(ErrorCode.INVALID, 404),
    DeviceListRejected: Refusal(ErrorCode.DEVICE_LIST_ROLLBACK, 409),
    NoPreKeys: Refusal(ErrorCode.NO_PREKEYS, 404),
    ShareBadRequest: Refusal(ErrorCode.MALFORMED, 400, label="bad_request"),
    ShareTTLTooLong: Refusal(ErrorCode.INVALID, 400, label="ttl_too_long"),
    ShareExpired: Refusal(ErrorCode.INVALID, 400, label="expired"),
    WrongProof: Refusal(ErrorCode.INVALID, 403, label="wrong_proof"),
    ShareNotFound: Refusal(ErrorCode.INVALID, 404, label="not_found"),
    RelayNotStarted: Refusal(ErrorCode.UNAVAILABLE, 503, CloseCode.TRY_AGAIN_LATER),
    ConfigError: Refusal(ErrorCode.UNAVAILABLE, 500),
    # wire parsing and signatures (e2ee)
    UnknownFrameType: Refusal(ErrorCode.UNKNOWN_FRAME, 400),
    DecodeError: Refusal(ErrorCode.MALFORMED, 400),
    BadSignature: Refusal(ErrorCode.BAD_SIGNATURE, 400),
    InvalidArgument: Refusal(ErrorCode.INVALID, 400),
    E2EEError: Refusal(ErrorCode.INVALID, 400),
    # storage
    StorageUnavailable: Refusal(ErrorCode.UNAVAILABLE, 503),
    SchemaTooNew: Refusal(ErrorCode.UNAVAILABLE, 503),
    AccountExists: Refusal(ErrorCode.INVALID, 409),
    UnknownAccount: Refusal(ErrorCode.UNKNOWN_USER, 404),
    UnknownDevice: Refusal(ErrorCode.UNKNOWN_DEVICE, 404),
    VersionConflict: Refusal(ErrorCode.DEVICE_LIST_ROLLBACK, 409),
    DeviceIdReused: Refusal(ErrorCode.INVALID, 409),
    PreKeyIdReused: Refusal(ErrorCode.PREKEY_ID_REUSED, 409),
    IdempotencyConflict: Refusal(ErrorCode.IDEMPOTENCY_CONFLICT, 409),
    QueueFull: Refusal(ErrorCode.QUEUE_FULL, 507),
    BlobExists: Refusal(ErrorCode.INVALID, 409),
    UnknownBlob: Refusal(ErrorCode.INVALID, 404),
    BlobQuotaExceeded: Refusal(ErrorCode.TOO_LARGE, 413),
    LinkMailboxFull: Refusal(ErrorCode.INVALID, 409),
    ShareExists: Refusal(ErrorCode.INVALID, 409, label="exists"),
    StorageError: Refusal(ErrorCode.UNAVAILABLE, 503),
}
"""The one table: refusal class -> how it shows (the nearest class along the MRO wins)."""

_INTERNAL: Final = Refusal(ErrorCode.UNAVAILABLE, 500)


def refusal_for(exc: BaseException) -> Refusal:
    """How ``exc`` shows at the edge: its nearest entry in :data:`REFUSALS`, or an
    internal error (``UNAVAILABLE``, HTTP 500) for anything unexpected."""
    for cls in type(exc).__mro__:
        refusal = REFUSALS.get(cls)
        if refusal is not None:
            return refusal
    return _INTERNAL
