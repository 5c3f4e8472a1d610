"""The one table from the relay's error codes and close codes to the SDK's typed
errors (CONVENTIONS 9): every ``Error`` frame, HTTP error body and close code the
transport meets becomes one :class:`~client_sdk.errors.TransportError` here."""

from __future__ import annotations

from typing import Final

from e2ee.relay_frames import CloseCode, ErrorCode

from ..errors import (
    AuthFailed,
    BadSignatureRefused,
    ConnectedElsewhere,
    DeviceListRollback,
    DeviceRemoved,
    Disconnected,
    GoingAway,
    IdempotencyConflict,
    NoPreKeys,
    Overflow,
    PreKeyIdReused,
    QueueFull,
    RateLimited,
    RelayRefused,
    RelayUnavailable,
    TooLarge,
    TransportError,
    UnknownDevice,
    UnknownUser,
)

__all__ = ["ERROR_CLASSES", "close_error", "refusal"]

ERROR_CLASSES: Final[dict[ErrorCode, type[RelayRefused]]] = {
    ErrorCode.AUTH_FAILED: AuthFailed,
    ErrorCode.RATE_LIMITED: RateLimited,
    ErrorCode.IDEMPOTENCY_CONFLICT: IdempotencyConflict,
    ErrorCode.QUEUE_FULL: QueueFull,
    ErrorCode.BAD_SIGNATURE: BadSignatureRefused,
    ErrorCode.PREKEY_ID_REUSED: PreKeyIdReused,
    ErrorCode.DEVICE_LIST_ROLLBACK: DeviceListRollback,
    ErrorCode.UNKNOWN_USER: UnknownUser,
    ErrorCode.UNKNOWN_DEVICE: UnknownDevice,
    ErrorCode.TOO_LARGE: TooLarge,
    ErrorCode.UNAVAILABLE: RelayUnavailable,
    ErrorCode.NO_PREKEYS: NoPreKeys,
}
"""Error code -> exception class; codes not listed (MALFORMED, UNKNOWN_FRAME,
NOT_AUTHENTICATED, INVALID: the client's own mistakes) give plain
:class:`RelayRefused`."""

_CLOSE_CLASSES: Final[dict[int, type[Disconnected]]] = {
    CloseCode.GOING_AWAY: GoingAway,
    CloseCode.OVERFLOW: Overflow,
    CloseCode.CONNECTED_ELSEWHERE: ConnectedElsewhere,
    CloseCode.DEVICE_REMOVED: DeviceRemoved,
}


def refusal(code: int, reason: str, *, http_status: int | None = None) -> RelayRefused:
    """The typed error for one of the relay's error codes (an unknown ``int`` code, from
    an HTTP body, gives plain :class:`RelayRefused`)."""
    try:
        known = ErrorCode(code)
    except ValueError:
        return RelayRefused(code, reason, http_status=http_status)
    cls = ERROR_CLASSES.get(known, RelayRefused)
    return cls(known, reason, http_status=http_status)


def close_error(close_code: int | None, reason: str) -> TransportError:
    """The typed error for the relay closing the connection with ``close_code``
    (``AUTH_FAILED`` and ``AUTH_TIMEOUT`` give :class:`AuthFailed`; ``RATE_LIMITED``
    gives :class:`RateLimited`; anything else unlisted a plain :class:`Disconnected`)."""
    if close_code in (CloseCode.AUTH_FAILED, CloseCode.AUTH_TIMEOUT):
        return AuthFailed(ErrorCode.AUTH_FAILED, reason or "authentication refused")
    if close_code == CloseCode.RATE_LIMITED:
        return RateLimited(ErrorCode.RATE_LIMITED, reason or "too many frames")
    cls = _CLOSE_CLASSES.get(close_code, Disconnected) if close_code is not None else Disconnected
    return cls(close_code, reason)
