"""The per-connection relay protocol (DESIGN 5; CONVENTIONS 3).

:class:`RelaySession` takes the bytes of one client frame (:meth:`RelaySession.parse`,
then :meth:`RelaySession.handle`) and returns a :class:`Reply`: the frames to send
and whether to close (with which code). It calls storage and the notifier through the
:class:`~server.context.RelayContext`, but owns no socket, task or timer:
:mod:`server.ws` moves the bytes, owns the timeouts, the sender, the delivery task,
the sends in flight and the background deletion of acknowledged messages.
:class:`DeliveryWindow` is the flow-control state of deliveries (at most
:data:`~server.limits.DELIVERY_WINDOW` unacknowledged).

Every refusal becomes an ``Error`` frame or a close code through the one table in
:mod:`server.errors`; nothing a client sends can crash the session, and a storage
failure answers ``UNAVAILABLE`` and changes nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Final

from e2ee import cbor
from e2ee.auth import verify_relay_auth
from e2ee.device_list import SignedDeviceList
from e2ee.errors import BadSignature, DecodeError
from e2ee.prekeys import PreKeyBundle, PreKeyKind, SignedPublicPreKey
from e2ee.primitives import constant_time_equal, sha256
from e2ee.relay_frames import (
    RELAY_PROTOCOL_VERSIONS,
    Accepted,
    Ack,
    Auth,
    AuthOk,
    BundleResult,
    ClaimBundle,
    ClientFrame,
    CloseCode,
    Deliver,
    DeviceListResult,
    Error,
    ErrorCode,
    GetDeviceList,
    Hello,
    KeyCheck,
    KeyStatus,
    Mismatch,
    MismatchedUser,
    Ok,
    PreKeysLow,
    PutDeviceList,
    Send,
    UnknownFrameType,
    UploadPreKeys,
    decode_client_frame,
)

from . import limits
from .context import RelayContext
from .errors import (
    AuthFailed,
    CiphertextTooLarge,
    DeviceListRejected,
    InvalidRequest,
    NoPreKeys,
    RateLimited,
    TooLarge,
    refusal_for,
)
from .fast_decode import fast_client_frame
from .hub import control_key
from .notify import device_key
from .ratelimit import RateLimiter
from .storage.base import (
    Acceptance,
    AccountRecord,
    DeviceRecord,
    QueuedMessage,
    StorageUnavailable,
    StoredPreKey,
    UnknownAccount,
)

__all__ = [
    "MAX_CIPHERTEXT",
    "DeliveryWindow",
    "RelaySession",
    "Reply",
    "accepted_frame",
    "deliver_frame",
]

logger = logging.getLogger(__name__)

MAX_CIPHERTEXT: Final = limits.MAX_FRAME - 1024
"""Largest ciphertext one device may be sent: its ``Deliver`` frame (sender address,
sequence, time) must itself fit in :data:`~server.limits.MAX_FRAME`."""


@dataclass(slots=True)
class Reply:
    """What the driver does after one client frame."""

    frames: list[bytes] = field(default_factory=list)
    close: tuple[CloseCode, str] | None = None
    authenticated: bool = False
    """The frame authenticated the connection: start delivery."""
    acked: tuple[int, ...] = ()
    """Sequences acknowledged: the driver opens the delivery window and deletes them
    (:meth:`RelaySession.delete_acked`)."""


class DeliveryWindow:
    """Deliveries sent on this connection and not yet acknowledged."""

    __slots__ = ("_bytes", "_in_flight", "max_bytes", "max_count")

    def __init__(
        self, max_count: int = limits.DELIVERY_WINDOW, max_bytes: int = limits.DELIVERY_WINDOW_BYTES
    ) -> None:
        self.max_count = max_count
        self.max_bytes = max_bytes
        self._in_flight: dict[int, int] = {}
        self._bytes = 0

    def has_room(self) -> bool:
        """Whether one more delivery may go out (one always may when none is out)."""
        if not self._in_flight:
            return True
        return len(self._in_flight) < self.max_count and self._bytes < self.max_bytes

    def sent(self, seq: int, size: int) -> None:
        """Record a delivery written to the client."""
        if seq not in self._in_flight:
            self._in_flight[seq] = size
            self._bytes += size

    def acked(self, seqs: tuple[int, ...]) -> None:
        """Forget acknowledged deliveries."""
        for seq in seqs:
            size = self._in_flight.pop(seq, None)
            if size is not None:
                self._bytes -= size

    def __len__(self) -> int:
        return len(self._in_flight)


# --- the per-message frames, encoded directly ---------------------------------------------
#
# ``Deliver`` and ``Accepted`` go out once per message each; building the frame object
# and walking it through the generic canonical CBOR encoder cost several times the
# encoding itself. These functions write the same canonical bytes directly (a map with
# its integer keys in order, every head in its shortest form); tests/server/
# test_fast_frames.py pins them to ``Deliver(...).to_bytes()`` and
# ``Accepted(...).to_bytes()``. A value outside the plain cases (not exactly int,
# bytes or str; out of range) takes the generic encoder, which also raises its errors.

_U64_END: Final = 1 << 64
"""One past the largest CBOR unsigned integer."""


def _head(major: int, arg: int) -> bytes:
    """The canonical CBOR head of major type ``major`` (shifted: ``0x40`` for bytes)
    with argument ``0 <= arg < 2**64``."""
    if arg < 24:
        return bytes((major | arg,))
    if arg < 0x100:
        return bytes((major | 24, arg))
    if arg < 0x10000:
        return bytes((major | 25,)) + arg.to_bytes(2, "big")
    if arg < 0x100000000:
        return bytes((major | 26,)) + arg.to_bytes(4, "big")
    return bytes((major | 27,)) + arg.to_bytes(8, "big")


def _plain_uint(value: object) -> bool:
    return type(value) is int and 0 <= value < _U64_END


_DELIVER_HEAD: Final = b"\xa6\x00" + _head(0, int(Deliver.TYPE)) + b"\x01"
"""A six-entry map, key 0 the frame type, then key 1."""
_ACCEPTED_HEAD: Final = b"\xa3\x00" + _head(0, int(Accepted.TYPE)) + b"\x01"
"""A three-entry map, key 0 the frame type, then key 1."""


def deliver_frame(message: QueuedMessage) -> bytes:
    """The ``Deliver`` frame of one queued message (``Deliver(...).to_bytes()``)."""
    seq = message.seq
    sender_user = message.sender_user
    sender_device = message.sender_device
    accepted_at_ms = message.accepted_at_ms
    ciphertext = message.ciphertext
    if (
        _plain_uint(seq)
        and _plain_uint(sender_device)
        and _plain_uint(accepted_at_ms)
        and type(ciphertext) is bytes
        and type(sender_user) is str
        and sender_user.isascii()
    ):
        user = sender_user.encode("ascii")
        return b"".join(
            (
                _DELIVER_HEAD,
                _head(0, seq),
                b"\x02",
                _head(0x60, len(user)),
                user,
                b"\x03",
                _head(0, sender_device),
                b"\x04",
                _head(0, accepted_at_ms),
                b"\x05",
                _head(0x40, len(ciphertext)),
                ciphertext,
            )
        )
    return Deliver(seq, sender_user, sender_device, accepted_at_ms, ciphertext).to_bytes()


def accepted_frame(client_msg_id: bytes, accepted_at_ms: int) -> bytes:
    """The ``Accepted`` frame (``Accepted(client_msg_id, accepted_at_ms).to_bytes()``)."""
    if type(client_msg_id) is bytes and _plain_uint(accepted_at_ms):
        return b"".join(
            (
                _ACCEPTED_HEAD,
                _head(0x40, len(client_msg_id)),
                client_msg_id,
                b"\x02",
                _head(0, accepted_at_ms),
            )
        )
    return Accepted(client_msg_id, accepted_at_ms).to_bytes()


def _prekey(encoded: bytes | None, kind: PreKeyKind) -> SignedPublicPreKey | None:
    if encoded is None:
        return None
    return SignedPublicPreKey.from_value(cbor.decode(encoded), kind)


def _stored(prekey: SignedPublicPreKey) -> StoredPreKey:
    return StoredPreKey(prekey.prekey_id, cbor.encode(prekey.to_value()))


class RelaySession:
    """One connection's protocol state: waiting for ``Auth``, then authenticated."""

    def __init__(
        self,
        ctx: RelayContext,
        nonce: bytes,
        client_ip: str,
        acks_deleted: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        """``acks_deleted``: the driver's wait for the deletions of earlier ``Ack``
        frames (:meth:`delete_acked` runs in the background); every request but
        ``Send`` and ``Ack`` is handled after it, so its answer shows them applied."""
        self._ctx = ctx
        self._acks_deleted = acks_deleted
        self.nonce = nonce
        self.client_ip = client_ip
        self.user_id: str | None = None
        self.device_id: int | None = None
        self.device: DeviceRecord | None = None
        self._key: str | None = None
        self._auth_tried = False
        self._bad_frames = 0
        self._frames = RateLimiter("frames per connection", ctx.settings.rate_frames, max_keys=1)

    # --- public ------------------------------------------------------------------------

    def hello(self) -> bytes:
        """The relay's first frame: versions, this connection's nonce, the frame limit."""
        return Hello(RELAY_PROTOCOL_VERSIONS, self.nonce, limits.MAX_FRAME).to_bytes()

    @property
    def authenticated(self) -> bool:
        """Whether ``Auth`` succeeded on this connection."""
        return self.device is not None

    @property
    def key(self) -> str:
        """The notifier key of the authenticated device.

        Raises:
            InvalidRequest: not authenticated.
        """
        if self._key is None:
            raise InvalidRequest("not authenticated")
        return self._key

    def parse(self, data: bytes) -> ClientFrame | Reply:
        """Check one client frame's size and the frame rate, and decode it: the frame
        (for :meth:`handle`), or the refusal to answer with."""
        if len(data) > limits.MAX_FRAME:
            return self._refuse_close(TooLarge("frame", limits.MAX_FRAME))
        if not self._frames.allow(""):
            self._ctx.metrics.refused(ErrorCode.RATE_LIMITED.name.lower())
            return Reply(close=(CloseCode.RATE_LIMITED, "too many frames"))
        fast = fast_client_frame(data)  # Send and Ack, without the generic decoder
        if fast is not None:
            return fast
        try:
            return decode_client_frame(data)
        except (UnknownFrameType, DecodeError) as exc:
            return self._bad_frame(exc)

    def pipelines(self, frame: ClientFrame) -> bool:
        """Whether ``frame`` may be handled while the connection's earlier sends are
        still being stored: a ``Send`` of an authenticated device when the store
        accepts sends in the order they were started (their answers are written in
        order all the same)."""
        return (
            type(frame) is Send
            and self.device is not None
            and self._ctx.storage.messages.accepts_in_order
        )

    async def handle(self, frame: ClientFrame, data: bytes) -> Reply:
        """Answer a frame :meth:`parse` decoded from ``data`` (never raises: every
        refusal is in the reply)."""
        if isinstance(frame, Auth):
            return await self._auth(frame)
        if not self.authenticated:
            return self._error(ErrorCode.NOT_AUTHENTICATED, "authenticate first", frame)
        try:
            return await self._dispatch(frame, data)
        except Exception as exc:  # every refusal, and any bug, becomes a typed answer
            return self._refusal(exc, frame)

    async def state_check(self) -> Reply:
        """Re-read this device's state after a control notification: a removed device
        is closed; low one-time prekeys are pushed as ``PreKeysLow``."""
        if self.user_id is None or self.device_id is None:
            return Reply()
        try:
            device = await self._ctx.storage.accounts.get_device(self.user_id, self.device_id)
            if device is None:
                return Reply(close=(CloseCode.DEVICE_REMOVED, "device removed from its list"))
            status = await self._ctx.storage.prekeys.status(self.user_id, self.device_id)
        except StorageUnavailable:
            return Reply()
        low = status.one_time_left < limits.PREKEYS_LOW or (
            device.pq and status.kem_left < limits.PREKEYS_LOW
        )
        if not low:
            return Reply()
        return Reply([PreKeysLow(status.one_time_left, status.kem_left).to_bytes()])

    # --- refusals ------------------------------------------------------------------------

    def _error(
        self,
        code: ErrorCode,
        reason: str,
        frame: ClientFrame | None = None,
        close: CloseCode | None = None,
    ) -> Reply:
        self._ctx.metrics.refused(code.name.lower())
        req = getattr(frame, "req", None)
        msg_id = getattr(frame, "client_msg_id", None)
        error = Error(code, reason, req, msg_id).to_bytes()
        return Reply([error], close=None if close is None else (close, reason[:100]))

    def _refusal(self, exc: BaseException, frame: ClientFrame | None) -> Reply:
        refusal = refusal_for(exc)
        if refusal.http_status >= 500:
            logger.warning("request failed: %s", type(exc).__name__, exc_info=exc)
            reason = "the relay could not complete the request"
        else:
            reason = str(exc) or refusal.reason
        return self._error(refusal.code, reason, frame, refusal.close)

    def _refuse_close(self, exc: BaseException) -> Reply:
        refusal = refusal_for(exc)
        self._ctx.metrics.refused(refusal.reason)
        return Reply(close=(refusal.close or CloseCode.POLICY_VIOLATION, str(exc)[:100]))

    def _bad_frame(self, exc: DecodeError) -> Reply:
        self._bad_frames += 1
        reply = self._refusal(exc, None)
        if self._bad_frames > limits.MAX_MALFORMED_FRAMES:
            reply.close = (CloseCode.POLICY_VIOLATION, "too many malformed frames")
        return reply

    # --- authentication (DESIGN 5) ----------------------------------------------------------

    async def _auth(self, frame: Auth) -> Reply:
        if self._auth_tried:
            return self._error(ErrorCode.INVALID, "one Auth per connection", frame)
        self._auth_tried = True  # the nonce is single use: one attempt per connection
        ctx = self._ctx
        try:
            ctx.limiters.auth_ip.check(self.client_ip)
            ctx.limiters.auth_device.check(device_key(frame.user_id, frame.device_id))
            device = await ctx.storage.accounts.get_device(frame.user_id, frame.device_id)
            if device is None:
                raise AuthFailed("unknown or removed device")
            self._verify_auth(frame, device)
        except RateLimited as exc:
            return self._error(ErrorCode.RATE_LIMITED, str(exc), frame, CloseCode.RATE_LIMITED)
        except StorageUnavailable:
            return self._error(
                ErrorCode.UNAVAILABLE, "try again later", frame, CloseCode.TRY_AGAIN_LATER
            )
        except AuthFailed as exc:
            return self._error(ErrorCode.AUTH_FAILED, str(exc), frame, CloseCode.AUTH_FAILED)
        except Exception as exc:  # never crash on a client's input
            logger.warning("auth failed unexpectedly: %s", type(exc).__name__, exc_info=exc)
            return self._error(
                ErrorCode.AUTH_FAILED, "authentication failed", frame, CloseCode.AUTH_FAILED
            )
        self.user_id = frame.user_id
        self.device_id = frame.device_id
        self.device = device
        self._key = device_key(frame.user_id, frame.device_id)
        return Reply([AuthOk(ctx.now_ms()).to_bytes()], authenticated=True)

    def _verify_auth(self, frame: Auth, device: DeviceRecord) -> None:
        for spki in self._ctx.auth_spki:
            try:
                verify_relay_auth(
                    device.signing_pk,
                    frame.signature,
                    origin=self._ctx.settings.effective_origin,
                    user_id=frame.user_id,
                    device_id=frame.device_id,
                    nonce=self.nonce,
                    spki_sha256=spki,
                )
            except BadSignature:
                continue
            return
        raise AuthFailed("authentication signature does not verify")

    # --- authenticated requests -------------------------------------------------------------

    async def _dispatch(self, frame: ClientFrame, data: bytes) -> Reply:
        if isinstance(frame, Send):
            return await self._send(frame, data)
        if isinstance(frame, Ack):
            return await self._ack(frame)
        if self._acks_deleted is not None:
            await self._acks_deleted()
        if isinstance(frame, UploadPreKeys):
            return await self._upload(frame)
        if isinstance(frame, ClaimBundle):
            return await self._claim(frame)
        if isinstance(frame, KeyCheck):
            return await self._key_check(frame)
        if isinstance(frame, GetDeviceList):
            account = await self._ctx.storage.accounts.get_account(frame.user_id)
            if account is None:
                raise UnknownAccount(frame.user_id)
            return Reply([DeviceListResult(frame.req, account.signed_list).to_bytes()])
        if isinstance(frame, PutDeviceList):
            return await self._put_device_list(frame)
        raise InvalidRequest("unexpected frame")  # Auth is handled before dispatch

    def _me(self) -> tuple[str, int, DeviceRecord]:
        if self.user_id is None or self.device_id is None or self.device is None:
            raise InvalidRequest("not authenticated")
        return self.user_id, self.device_id, self.device

    async def _send(self, frame: Send, data: bytes) -> Reply:
        ctx = self._ctx
        user_id, device_id, _ = self._me()
        ctx.limiters.send.check(self.key)
        for _, devices in frame.addressed:
            for _, ciphertext in devices:
                if len(ciphertext) > MAX_CIPHERTEXT:
                    raise CiphertextTooLarge("ciphertext", MAX_CIPHERTEXT)
        now = ctx.now_ms()
        # The frame decoded canonically, so its bytes are the canonical encoding of
        # exactly (client_msg_id, addressed): the idempotency digest.
        outcome = await ctx.storage.messages.accept(
            user_id,
            device_id,
            frame.client_msg_id,
            sha256(data),
            frame.addressed,
            now,
            now + ctx.settings.message_ttl_seconds * 1000,
            ctx.settings.queue_quota,
        )
        if not isinstance(outcome, Acceptance):
            users = tuple(MismatchedUser(u.user_id, u.missing, u.extra) for u in outcome.users)
            ctx.metrics.refused("device_mismatch")
            return Reply([Mismatch(frame.client_msg_id, users).to_bytes()])
        if not outcome.duplicate:
            ctx.metrics.messages_in.inc()
        if outcome.deliveries:
            # Committed: a recipient connected to this node and waiting, caught up,
            # takes its copy at once instead of reading it back (hub.offer); the
            # notification still goes out, for other nodes and for a busy recipient.
            ciphertexts = {(u, d): ct for u, devices in frame.addressed for d, ct in devices}
            at = outcome.accepted_at_ms
            for target_user, target_device, seq in outcome.deliveries:
                key = device_key(target_user, target_device)
                ciphertext = ciphertexts[(target_user, target_device)]
                ctx.hub.offer(key, QueuedMessage(seq, user_id, device_id, at, ciphertext))
                await ctx.notifier.notify(key, seq)
        return Reply([accepted_frame(frame.client_msg_id, outcome.accepted_at_ms)])

    async def _ack(self, frame: Ack) -> Reply:
        self._me()
        return Reply(acked=frame.seqs)  # the driver deletes them: delete_acked

    async def delete_acked(self, seqs: Sequence[int]) -> int:
        """Delete acknowledged messages from this device's queue (the driver calls it
        for one or several ``Ack`` frames, in the background); returns how many were
        still queued.

        Raises:
            InvalidRequest: not authenticated.
            StorageError: the database failed; nothing was deleted.
        """
        user_id, device_id, _ = self._me()
        removed = await self._ctx.storage.messages.ack(user_id, device_id, seqs)
        self._ctx.metrics.acks.inc(removed)
        return removed

    async def _upload(self, frame: UploadPreKeys) -> Reply:
        user_id, device_id, device = self._me()
        prekeys = [frame.signed_prekey, *frame.one_time, *frame.kem, frame.last_resort]
        for prekey in prekeys:
            if prekey is not None:
                prekey.verify(user_id, device_id, device.signing_pk)
        await self._ctx.storage.prekeys.upload(
            user_id,
            device_id,
            None if frame.signed_prekey is None else _stored(frame.signed_prekey),
            [_stored(p) for p in frame.one_time],
            [_stored(p) for p in frame.kem],
            None if frame.last_resort is None else _stored(frame.last_resort),
        )
        return Reply([Ok(frame.req).to_bytes()])

    async def _claim(self, frame: ClaimBundle) -> Reply:
        ctx = self._ctx
        ctx.limiters.claim_requester.check(self.key)
        ctx.limiters.claim_target.check(device_key(frame.user_id, frame.device_id))
        claimed = await ctx.storage.prekeys.claim(frame.user_id, frame.device_id)
        if claimed is None:
            raise NoPreKeys(f"no signed prekey for {frame.user_id}.{frame.device_id}")
        signed = _prekey(claimed.signed_prekey, PreKeyKind.SIGNED)
        if signed is None:  # pragma: no cover - the record always holds one
            raise NoPreKeys("no signed prekey")
        kem_kind = PreKeyKind.KEM_LAST_RESORT if claimed.kem_is_last_resort else PreKeyKind.KEM
        bundle = PreKeyBundle(
            frame.user_id,
            frame.device_id,
            signed,
            _prekey(claimed.one_time, PreKeyKind.ONE_TIME),
            _prekey(claimed.kem, kem_kind),
        )
        took_low_ec = claimed.one_time is not None and claimed.one_time_left < limits.PREKEYS_LOW
        took_low_kem = (
            claimed.kem is not None
            and not claimed.kem_is_last_resort
            and claimed.kem_left < limits.PREKEYS_LOW
        )
        if took_low_ec or took_low_kem:
            # The target's connection (on any node) re-reads its status and pushes
            # PreKeysLow (hub.control_key; docs/relay-protocol.md).
            stamp = ctx.hub.next_stamp(ctx.now_ms())
            await ctx.notifier.notify(control_key(frame.user_id, frame.device_id), stamp)
        return Reply([BundleResult(frame.req, bundle.to_bytes()).to_bytes()])

    async def _key_check(self, frame: KeyCheck) -> Reply:
        user_id, device_id, _ = self._me()
        storage = self._ctx.storage
        status = await storage.prekeys.status(user_id, device_id)
        account = await storage.accounts.get_account(user_id)
        if account is None:
            raise UnknownAccount(user_id)
        return Reply(
            [
                KeyStatus(
                    frame.req,
                    _prekey(status.signed_prekey, PreKeyKind.SIGNED),
                    _prekey(status.last_resort, PreKeyKind.KEM_LAST_RESORT),
                    status.one_time_left,
                    status.kem_left,
                    account.list_digest,
                ).to_bytes()
            ]
        )

    async def _put_device_list(self, frame: PutDeviceList) -> Reply:
        ctx = self._ctx
        user_id, device_id, _ = self._me()
        signed = SignedDeviceList.from_bytes(frame.signed_list)
        statement = signed.statement
        if statement.user_id != user_id:
            raise InvalidRequest("a device may publish only its own account's device list")
        account = await ctx.storage.accounts.get_account(user_id)
        if account is None:
            raise UnknownAccount(user_id)
        if not constant_time_equal(statement.master_pk, account.master_pk):
            raise InvalidRequest("the device list names another master key")
        if statement.version != account.list_version + 1:
            raise DeviceListRejected(
                f"version {statement.version} does not follow {account.list_version}"
            )
        if statement.prev_hash is None or not constant_time_equal(
            statement.prev_hash, account.list_digest
        ):
            raise DeviceListRejected("prev_hash is not the digest of the current list")
        new = AccountRecord(
            user_id=user_id,
            master_pk=account.master_pk,
            list_version=statement.version,
            signed_list=signed.to_bytes(),
            list_digest=signed.digest,
            devices=tuple(
                DeviceRecord(user_id, d.device_id, d.signing_pk, d.x25519_ik, d.pq)
                for d in statement.devices
            ),
        )
        removed = await ctx.storage.accounts.replace_device_list(
            new, account.list_version, ctx.now_ms()
        )
        for gone in removed:
            ctx.hub.close_device(
                device_key(user_id, gone), CloseCode.DEVICE_REMOVED, "device removed"
            )
            stamp = ctx.hub.next_stamp(ctx.now_ms())
            await ctx.notifier.notify(control_key(user_id, gone), stamp)
        reply = Reply([Ok(frame.req).to_bytes()])
        if device_id in removed:
            reply.close = (CloseCode.DEVICE_REMOVED, "device removed")
        return reply
