"""The one exception tree of the client SDK (CONVENTIONS 9).

Every error the SDK raises is a :class:`ClientError`. Subclasses are split by
blame and operation, carry structured attributes, and never include secret bytes
(keys, passphrases, plaintext) in their message or attributes. More subtrees join
as the SDK grows; the local store's errors are :class:`StoreError`.
"""

from __future__ import annotations

__all__ = [
    "AttachmentCorrupt",
    "AttachmentError",
    "AttachmentFileError",
    "AuthFailed",
    "BadLinkCode",
    "BadSignatureRefused",
    "BlobNotFound",
    "ClientError",
    "ConnectedElsewhere",
    "ConnectionFailed",
    "DeviceListRollback",
    "DeviceRemoved",
    "Disconnected",
    "GoingAway",
    "IdempotencyConflict",
    "IdentityChangeBlocked",
    "IdentityError",
    "InvalidShareLink",
    "LinkError",
    "LinkRejected",
    "LinkTimeout",
    "MalformedFrame",
    "MalformedResponse",
    "MessageQueued",
    "NoCommonVersion",
    "NoPreKeys",
    "OriginMismatch",
    "Overflow",
    "PinMismatch",
    "PreKeyIdReused",
    "QueueFull",
    "RateLimited",
    "RelayRefused",
    "RelayUnavailable",
    "RequestTimeout",
    "SafetyNumberMismatch",
    "SendFailed",
    "SessionResetTooSoon",
    "ShareLinkError",
    "ShareLinkExpired",
    "ShareLinkNotFound",
    "ShareLinkTTLTooLong",
    "ShareLinkTampered",
    "ShareLinkTooLarge",
    "ShareLinkUploadFailed",
    "ShareLinkWrongCode",
    "StoreClosed",
    "StoreCorrupt",
    "StoreError",
    "StoreLocked",
    "TooLarge",
    "TransportError",
    "UnknownDevice",
    "UnknownUser",
    "UnsupportedStoreVersion",
    "UsageError",
    "UserIdTaken",
    "WeakParameters",
    "WrongKey",
    "WrongPassphrase",
]


class ClientError(Exception):
    """Root of every error the client SDK raises."""


class UsageError(ClientError):
    """The application called the SDK wrongly (a bad argument, a call out of order)."""


# --- the local store -------------------------------------------------------------------


class StoreError(ClientError):
    """The local encrypted store failed (also raised, as such, for an I/O failure of
    the underlying database, with the database error as ``__cause__``)."""


class StoreClosed(StoreError):
    """The store was used after :meth:`aclose`."""


class StoreLocked(StoreError):
    """Another process, or another open store object of this process, holds the store.

    Attributes:
        path: the store file.
    """

    def __init__(self, path: str) -> None:
        super().__init__(f"the store {path} is open elsewhere (its lock file is held)")
        self.path = path


class WrongKey(StoreError):
    """The key does not open this store (the header's verification value does not open)."""


class WrongPassphrase(WrongKey):
    """The passphrase does not open this store.

    An attacker who edits the header's salt or raises its Argon2id parameters also
    gives this error: the derived key then differs, which cannot be told apart from a
    wrong passphrase. Parameters lowered below the floor give :class:`WeakParameters`.
    """


class StoreCorrupt(StoreError):
    """The store's content fails authentication or does not decode: a record was
    edited, swapped or moved to another key or table, the header was edited, or the
    file is not a store.

    Attributes:
        table: the record table involved, when a record failed (``None`` for the
            header or the file as a whole).
    """

    def __init__(self, message: str, *, table: str | None = None) -> None:
        super().__init__(message)
        self.table = table


class WeakParameters(StoreCorrupt):
    """The header asks for Argon2id parameters below the floor (an attacker lowering
    them to speed up guessing), so the store is refused before any derivation.

    Attributes:
        opslimit, memlimit: the header's parameters.
        floor_opslimit, floor_memlimit: the floor they fall below.
    """

    def __init__(
        self, *, opslimit: int, memlimit: int, floor_opslimit: int, floor_memlimit: int
    ) -> None:
        super().__init__(
            f"the store header asks for Argon2id ops={opslimit} mem={memlimit} bytes, below "
            f"the floor ops={floor_opslimit} mem={floor_memlimit} bytes"
        )
        self.opslimit = opslimit
        self.memlimit = memlimit
        self.floor_opslimit = floor_opslimit
        self.floor_memlimit = floor_memlimit


class OriginMismatch(StoreError):
    """The store was created for another relay origin (open with
    ``migrate_origin=True`` to move it).

    Attributes:
        stored: the origin the store remembers.
        requested: the origin it was opened with.
    """

    def __init__(self, *, stored: str, requested: str) -> None:
        super().__init__(f"the store belongs to relay {stored!r}, not {requested!r}")
        self.stored = stored
        self.requested = requested


class UnsupportedStoreVersion(StoreError):
    """The store was written by a newer SDK (a schema version above the supported one).

    Attributes:
        version: the store's schema version.
        supported: the newest version this SDK reads.
    """

    def __init__(self, *, version: int, supported: int) -> None:
        super().__init__(
            f"the store has schema version {version}; this SDK reads up to {supported}"
        )
        self.version = version
        self.supported = supported


# --- the relay transport (client_sdk.transport) ----------------------------------------


class TransportError(ClientError):
    """Talking to the relay failed: the network, TLS, the relay's refusals, or the
    connection's end. No attribute ever holds a nonce, signature or ciphertext."""


class ConnectionFailed(TransportError):
    """The relay could not be reached, the handshake failed, or the connection broke
    (the underlying error is ``__cause__``); reconnecting may help."""


class PinMismatch(TransportError):
    """The relay's TLS certificate does not carry the pinned public key. Raised on the
    handshake, before any authentication statement is signed; the connection is closed.

    Attributes:
        expected: the pinned SHA-256 of the SubjectPublicKeyInfo (public).
        seen: the SHA-256 of the SubjectPublicKeyInfo the handshake presented.
    """

    def __init__(self, *, expected: bytes, seen: bytes) -> None:
        super().__init__(
            f"the relay's certificate key {seen.hex()[:16]}... does not match the pin "
            f"{expected.hex()[:16]}..."
        )
        self.expected = expected
        self.seen = seen


class MalformedFrame(TransportError):
    """The relay sent something that is not a valid frame in this state (bad CBOR,
    an unexpected frame type, an answer to no request); the connection is closed."""


class MalformedResponse(TransportError):
    """An HTTP answer of the relay that does not parse (status line, headers, body or
    its CBOR/JSON content), or exceeds the SDK's limits."""


class NoCommonVersion(TransportError):
    """The relay speaks no relay-protocol version this SDK speaks.

    Attributes:
        offered: the relay's versions.
        supported: this SDK's versions.
    """

    def __init__(self, *, offered: tuple[int, ...], supported: tuple[int, ...]) -> None:
        super().__init__(f"the relay speaks versions {offered}; this SDK speaks {supported}")
        self.offered = offered
        self.supported = supported


class MessageQueued(TransportError):
    """``send`` committed the message (encrypted, in the outbox) but the relay could not
    be reached to accept it, even after reconnecting: it is sent, the same bytes under
    the same id, on the next connection. The app shows it as pending and must NOT send
    it again. (Any other :class:`TransportError` from ``send`` means nothing was
    committed: sending again is safe.)

    Attributes:
        client_msg_id: the queued message's id.
    """

    def __init__(self, client_msg_id: bytes) -> None:
        super().__init__(
            f"message {client_msg_id.hex()} is queued: the relay will get it on the next connection"
        )
        self.client_msg_id = client_msg_id


class RequestTimeout(TransportError):
    """The relay did not answer a request within its timeout (the request may still
    have taken effect: a send is retried with the same client message id).

    Attributes:
        operation: the request's name.
        timeout: the bound, in seconds.
    """

    def __init__(self, operation: str, timeout: float) -> None:
        super().__init__(f"no answer to {operation} within {timeout:g} s")
        self.operation = operation
        self.timeout = timeout


class RelayRefused(TransportError):
    """The relay refused a frame or an HTTP request (an ``Error`` frame or an HTTP error
    status). Subclasses name the codes a client acts on.

    Attributes:
        code: the relay's error code (an ``e2ee.relay_frames.ErrorCode`` value; an
            ``int`` when an HTTP answer carries an unknown code).
        reason: the relay's explanation, for logs (never shown as security advice).
        http_status: the HTTP status, for HTTP refusals (``None`` on the WebSocket).
    """

    def __init__(self, code: int, reason: str, *, http_status: int | None = None) -> None:
        name = getattr(code, "name", str(code))
        where = f" (HTTP {http_status})" if http_status is not None else ""
        super().__init__(f"the relay refused: {name}{where}: {reason}")
        self.code = code
        self.reason = reason
        self.http_status = http_status


class AuthFailed(RelayRefused):
    """The relay refused this device's authentication (or a registration's nonce); the
    device may have been removed, or its key or origin is not what the relay expects."""


class RateLimited(RelayRefused):
    """Too many requests; retry later."""


class IdempotencyConflict(RelayRefused):
    """A client message id was reused for different content."""


class QueueFull(RelayRefused):
    """A recipient device's queue is at its quota; nothing was stored."""


class UnknownUser(RelayRefused):
    """No such account on the relay."""


class UnknownDevice(RelayRefused):
    """No such device in the account's accepted device list."""


class BadSignatureRefused(RelayRefused):
    """The relay found a prekey or device-list signature that does not verify."""


class PreKeyIdReused(RelayRefused):
    """A prekey id this device has used before."""


class DeviceListRollback(RelayRefused):
    """A device list whose version does not increase or that does not chain."""


class TooLarge(RelayRefused):
    """A payload above one of the relay's limits."""


class RelayUnavailable(RelayRefused):
    """The relay could not complete the request (storage); nothing was changed."""


class NoPreKeys(RelayRefused):
    """The claimed device has no signed prekey on the relay."""


class UserIdTaken(RelayRefused):
    """Registration: the user id is already registered."""


class Disconnected(TransportError):
    """The relay closed the connection (or it was lost). Subclasses name the close
    codes the SDK acts on.

    Attributes:
        close_code: the WebSocket close code (``None`` when no close frame arrived).
        reason: the close reason the relay gave (for logs).
    """

    def __init__(self, close_code: int | None, reason: str = "") -> None:
        super().__init__(f"the relay closed the connection ({close_code}): {reason}")
        self.close_code = close_code
        self.reason = reason


class GoingAway(Disconnected):
    """The relay is shutting down; reconnect with backoff."""


class Overflow(Disconnected):
    """The relay closed the connection because this client stopped reading or
    acknowledging; its messages stay queued. Reconnect."""


class ConnectedElsewhere(Disconnected):
    """A newer connection of this same device replaced this one (another process or
    machine with this device's keys, or this app started twice). Raised as final by the
    reconnect policy after its allowance of reconnects is spent."""


class DeviceRemoved(Disconnected):
    """This device is no longer in its account's device list; do not reconnect."""


# --- the client -------------------------------------------------------------------------


class IdentityError(ClientError):
    """A user's device list, or a device's bundle, failed verification (a changed
    master key, a rollback or equivocation, a bad signature, a stale or downgraded
    bundle): nothing was sent to or accepted from that user.

    Attributes:
        user_id: the user concerned.
        reason: the core's error type name.
    """

    def __init__(self, user_id: str, reason: str) -> None:
        super().__init__(f"the identity of {user_id!r} failed verification: {reason}")
        self.user_id = user_id
        self.reason = reason


class SendFailed(ClientError):
    """The relay and the verified device lists kept disagreeing about a user's devices
    (``MAX_SEND_ATTEMPTS`` mismatches); the message stays in the outbox and is tried
    again on the next connection.

    Attributes:
        client_msg_id: the message's id.
    """

    def __init__(self, client_msg_id: bytes) -> None:
        super().__init__(f"message {client_msg_id.hex()} not accepted: device sets disagree")
        self.client_msg_id = client_msg_id


class IdentityChangeBlocked(IdentityError):
    """The relay offers a device list of a *verified* contact signed by a new master
    key: sending to that user is blocked (nothing is encrypted for the new key, nothing
    more for the old one) until ``accept_identity_change(user_id)`` or a successful
    ``verify`` of the new safety number. A message whose send found the change stays in
    the outbox and goes to the new devices once the change is accepted.

    Attributes:
        user_id: the contact.
        reason: ``"IdentityChangeBlocked"``.
    """

    def __init__(self, user_id: str) -> None:
        super().__init__(user_id, "IdentityChangeBlocked")
        self.args = (
            f"the master key of verified contact {user_id!r} changed: sending is blocked "
            "until accept_identity_change",
        )


class SafetyNumberMismatch(IdentityError):
    """``verify``: the safety number or QR payload given is not the one of this contact's
    current master key (a typo, another contact's code, swapped or duplicated QR halves,
    a QR payload that does not decode, or a key that changed meanwhile). Nothing was
    recorded.

    Attributes:
        user_id: the contact.
        reason: ``"SafetyNumberMismatch"``.
    """

    def __init__(self, user_id: str) -> None:
        super().__init__(user_id, "SafetyNumberMismatch")
        self.args = (f"the safety number does not match {user_id!r}'s current master key",)


class LinkError(ClientError):
    """Linking a new device failed (``link_device``/``LinkOffer.complete`` on the
    primary, ``Client.open(..., link_code=...)`` on the new device). The message never
    holds the code or any key.

    Attributes:
        reason: what failed, for logs and for the user.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class BadLinkCode(LinkError):
    """The link code does not parse (a typing mistake, a truncated or foreign QR
    payload); nothing was sent or stored."""


class LinkTimeout(LinkError):
    """The other device's sealed blob did not arrive in the link mailbox in time. The
    primary's device list is unchanged when :meth:`LinkOffer.complete` raises this;
    ``complete`` (or ``Client.open`` with the same code) may be called again while the
    mailbox lives (10 minutes).

    Attributes:
        timeout: the bound, in seconds.
    """

    def __init__(self, reason: str, timeout: float) -> None:
        super().__init__(f"{reason} (waited {timeout:g} s)")
        self.timeout = timeout


class LinkRejected(LinkError):
    """The other side's sealed blob did not open under the code, or failed its checks
    (a wrong code, a blob modified by the relay or someone else, a bad proof of
    possession, a device list that does not hold this device's keys), or the primary
    refused. The primary's device list is unchanged when the primary raises this; the
    code is spent: link again with a new one."""


class SessionResetTooSoon(ClientError):
    """``reset_session`` without ``force``: a session with this device was reset (by
    ``reset_session`` or by the recovery of an undecryptable message) less than an hour
    ago. Nothing was changed; call again later, or with ``force=True``.

    Attributes:
        user_id, device_id: the peer device.
        retry_after_ms: how long until a reset without ``force`` is accepted.
    """

    def __init__(self, user_id: str, device_id: int, retry_after_ms: int) -> None:
        super().__init__(
            f"the session with {user_id!r} device {device_id} was reset less than an hour "
            f"ago (again in {retry_after_ms // 1000} s, or pass force=True)"
        )
        self.user_id = user_id
        self.device_id = device_id
        self.retry_after_ms = retry_after_ms


# --- attachments (client_sdk._client.attachments, client_sdk.transport.blob_http) -------


class AttachmentError(ClientError):
    """Sending or downloading an encrypted attachment failed on this device (the
    transport's failures are :class:`TransportError`)."""


class AttachmentCorrupt(AttachmentError):
    """The downloaded blob is not exactly what the sender uploaded: truncated (no final
    chunk), a chunk modified, reordered or repeated, data after the final chunk, or a
    size or digest other than the message's pointer names. The core's
    ``e2ee.attachment.AttachmentCorrupt`` is ``__cause__``. Nothing was written to the
    destination (the temporary file was removed)."""


class AttachmentFileError(AttachmentError):
    """The local file could not be read (sending) or written (downloading), or it
    changed size while it was being sent; the ``OSError``, if any, is ``__cause__``. A
    failed download leaves the destination untouched."""


class BlobNotFound(RelayRefused):
    """The relay holds no such blob: the id is unknown, the blob expired (attachment
    blobs live for the relay's message TTL) or it was deleted."""


# --- share links (client_sdk.share, Client.make_share_link; docs/share-links.md) --------


class ShareLinkError(ClientError):
    """A share link could not be made, uploaded or opened. No message or attribute ever
    holds a link, its key, an auth code or the shared data."""


class InvalidShareLink(ShareLinkError, UsageError):
    """The text given as a share link (or a share id) does not parse: another scheme,
    a path other than ``/s/<id>``, a missing or malformed key after ``#``, characters
    outside printable ASCII. Nothing was sent."""


class ShareLinkTTLTooLong(ShareLinkError, UsageError):
    """``make_share_link``: the ttl is above the longest the relay last advertised
    (``GET /v1/config``; 300 s before any configuration is known). Nothing was stored.

    Attributes:
        ttl: the ttl asked for, in seconds.
        max_ttl: the longest allowed, in seconds.
    """

    def __init__(self, ttl: int, max_ttl: int) -> None:
        super().__init__(f"a share link lives at most {max_ttl} s on this relay, not {ttl} s")
        self.ttl = ttl
        self.max_ttl = max_ttl


class ShareLinkTooLarge(ShareLinkError, UsageError):
    """``make_share_link``: the data do not fit one share link (the relay's advertised
    ``max_share_size``, at most 64 KiB, less the blob's overhead). Nothing was stored;
    larger content goes as an attachment.

    Attributes:
        size: the data's size in bytes (UTF-8 for text).
        limit: the largest size accepted.
    """

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"a share link holds at most {limit} bytes of data, not {size}")
        self.size = size
        self.limit = limit


class ShareLinkUploadFailed(ShareLinkError):
    """The relay refused a share link's upload for good (``ttl_too_long``, ``expired``,
    ``too_large``, ``exists``, ``bad_request``, ...), or the link expired before it could
    be uploaded (``expired``, ``http_status`` ``None``). Its pending upload was dropped:
    the link will never open. ``share_link_status`` reports it as failed too.

    Attributes:
        share_id: the link's share id (base64url; not a secret).
        reason: the relay's refusal label, or ``"expired"``.
        http_status: the relay's HTTP status (``None`` when the SDK dropped the link).
    """

    def __init__(self, share_id: str, reason: str, http_status: int | None = None) -> None:
        where = f" (HTTP {http_status})" if http_status is not None else ""
        super().__init__(f"a share link's upload failed: {reason}{where}")
        self.share_id = share_id
        self.reason = reason
        self.http_status = http_status


class ShareLinkWrongCode(ShareLinkError):
    """The relay refused the download proof (``403 wrong_proof``): the auth code is
    wrong, missing (the link has one) or given (the link has none). The relay counts
    it: after 5 wrong proofs the link is deleted (then :class:`ShareLinkNotFound`)."""


class ShareLinkNotFound(ShareLinkError):
    """The relay holds no such link (``404``): it expired at the relay, its view limit
    was used up, it was deleted after 5 wrong codes or by its maker, or it was never
    uploaded. The relay gives one answer for all of these."""


class ShareLinkExpired(ShareLinkError):
    """The relay served the link, but its authenticated expiry has passed on the
    opener's clock. The data are not returned.

    Attributes:
        expires_at_ms: when the link expired (ms since the epoch).
    """

    def __init__(self, expires_at_ms: int) -> None:
        super().__init__(f"the share link expired at {expires_at_ms} ms")
        self.expires_at_ms = expires_at_ms


class ShareLinkTampered(ShareLinkError):
    """The relay accepted the download proof but what it served does not open under
    the link's key: modified, truncated or replaced bytes, or content in a format this
    SDK does not know. Nothing from it is returned."""
