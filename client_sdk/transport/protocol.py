"""The client side of the relay protocol, sans I/O (DESIGN 5, 6; CONVENTIONS 3).

:class:`RelayProtocol` holds one connection's state: it consumes the relay's frames
(bytes) and produces frames to send (:meth:`RelayProtocol.data_to_send`) and events.
It answers ``Hello`` with the device's ``relay-auth`` signature over the nonce and
the SPKI hash the driver observed on the TLS handshake (``None`` without TLS), and
correlates answers with requests: by request id for ``UploadPreKeys``,
``ClaimBundle``, ``GetDeviceList``, ``PutDeviceList`` and ``KeyCheck``, by client
message id for ``Send``. It never touches a socket, a clock or a task; the driver
(:mod:`client_sdk.transport.connection`) moves the bytes and owns the timeouts.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Final, TypeAlias

from e2ee.auth import sign_relay_auth
from e2ee.errors import E2EEError
from e2ee.keys import SigningKeyPair
from e2ee.prekeys import SignedPublicPreKey
from e2ee.relay_frames import (
    CLIENT_MSG_ID_SIZE,
    MAX_ACKS_PER_FRAME,
    RELAY_PROTOCOL_VERSIONS,
    Accepted,
    Ack,
    Auth,
    AuthOk,
    BundleResult,
    CaughtUp,
    ClaimBundle,
    Deliver,
    DeviceListResult,
    Error,
    GetDeviceList,
    Hello,
    KeyCheck,
    KeyStatus,
    Mismatch,
    Ok,
    PreKeysLow,
    PutDeviceList,
    RelayFrame,
    Send,
    UploadPreKeys,
    decode_relay_frame,
)

from ..errors import MalformedFrame, NoCommonVersion, RelayRefused, UsageError
from .refusals import refusal

__all__ = [
    "Answer",
    "Authenticated",
    "CaughtUpEvent",
    "Delivery",
    "DeviceIdentity",
    "PreKeysLowEvent",
    "ProtocolEvent",
    "RelayNotice",
    "RelayProtocol",
    "RequestKey",
    "State",
]

logger = logging.getLogger(__name__)

_MAX_REQ: Final = 2**32 - 1
"""Request ids are 32-bit on the wire; a connection never gets near this many."""


@dataclass(frozen=True, slots=True)
class DeviceIdentity:
    """Who authenticates: the user id, device id and the device's signing key (its
    repr shows only public parts)."""

    user_id: str
    device_id: int
    signing: SigningKeyPair = field(repr=False)


class State(Enum):
    """Where a connection is."""

    AWAITING_HELLO = "awaiting hello"
    AWAITING_AUTH_OK = "awaiting auth ok"
    OPEN = "open"
    CLOSED = "closed"


RequestKey: TypeAlias = int | bytes
"""A request id (``int``) or a send's client message id (``bytes``)."""


@dataclass(frozen=True, slots=True)
class Authenticated:
    """The relay accepted the authentication (``AuthOk``)."""

    relay_time_ms: int


@dataclass(frozen=True, slots=True)
class Delivery:
    """One queued message (``Deliver``); acknowledge ``seq`` once it is durably
    processed. The ciphertext never shows in the repr."""

    seq: int
    sender_user: str
    sender_device: int
    accepted_at_ms: int
    ciphertext: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class CaughtUpEvent:
    """Everything queued before this connection authenticated has been delivered."""


@dataclass(frozen=True, slots=True)
class PreKeysLowEvent:
    """The relay's one-time prekeys for this device run low: upload more."""

    one_time_left: int
    kem_left: int


@dataclass(frozen=True, slots=True)
class RelayNotice:
    """An ``Error`` frame naming no request (a refusal of a frame as a whole, such as
    a rate limit on frames)."""

    error: RelayRefused


@dataclass(frozen=True, slots=True)
class Answer:
    """The relay answered a request: ``result`` is the answer frame (``Accepted`` or
    ``Mismatch`` for a send; ``BundleResult``, ``DeviceListResult``, ``KeyStatus`` or
    ``Ok`` for the others) or the typed refusal."""

    key: RequestKey
    result: RelayFrame | RelayRefused


ProtocolEvent: TypeAlias = (
    Authenticated | Delivery | CaughtUpEvent | PreKeysLowEvent | RelayNotice | Answer
)


class RelayProtocol:
    """One connection's client-side protocol state (DESIGN 5).

    ``origin`` is the relay URL the client itself was configured with (never a value
    the relay supplies); ``spki_sha256`` the hash of the relay certificate's
    SubjectPublicKeyInfo the driver saw on the TLS handshake, after checking any pin,
    or ``None`` without TLS.
    """

    def __init__(self, *, origin: str, identity: DeviceIdentity, spki_sha256: bytes | None) -> None:
        self._origin = origin
        self._identity = identity
        self._spki = spki_sha256
        self.state = State.AWAITING_HELLO
        self.version: int | None = None
        """The protocol version agreed on ``Hello``."""
        self._out: list[bytes] = []
        self._next_req = 1
        self._pending: dict[int, type[RelayFrame]] = {}
        self._pending_sends: set[bytes] = set()

    def __repr__(self) -> str:
        return (
            f"RelayProtocol(user_id={self._identity.user_id!r}, "
            f"device_id={self._identity.device_id}, state={self.state.value!r})"
        )

    # --- output --------------------------------------------------------------------------

    def data_to_send(self) -> list[bytes]:
        """The frames produced since the last call, in order (the driver writes them)."""
        out, self._out = self._out, []
        return out

    # --- requests ------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self.state is not State.OPEN:
            raise UsageError(f"the connection is not open ({self.state.value})")

    def _request(self, expected: type[RelayFrame]) -> int:
        self._check_open()
        if self._next_req > _MAX_REQ:
            raise UsageError("this connection has used every request id; reconnect")
        req = self._next_req
        self._next_req += 1
        self._pending[req] = expected
        return req

    def send(
        self, client_msg_id: bytes, addressed: Sequence[tuple[str, Sequence[tuple[int, bytes]]]]
    ) -> bytes:
        """Queue a ``Send``; its answer is the :class:`Answer` keyed by ``client_msg_id``.

        Raises:
            UsageError: not open, a client message id of the wrong size, or one already
                waiting for an answer on this connection.
        """
        self._check_open()
        if len(client_msg_id) != CLIENT_MSG_ID_SIZE:
            raise UsageError(f"client message ids are {CLIENT_MSG_ID_SIZE} bytes")
        if client_msg_id in self._pending_sends:
            raise UsageError("this client message id is already being sent")
        frame = Send(client_msg_id, tuple((u, tuple(devices)) for u, devices in addressed))
        data = frame.to_bytes()
        self._pending_sends.add(client_msg_id)
        self._out.append(data)
        return client_msg_id

    def upload_prekeys(
        self,
        *,
        signed_prekey: SignedPublicPreKey | None = None,
        one_time: Iterable[SignedPublicPreKey] = (),
        kem: Iterable[SignedPublicPreKey] = (),
        last_resort: SignedPublicPreKey | None = None,
    ) -> int:
        """Queue an ``UploadPreKeys`` (answered by ``Ok``); its request id.

        Raises:
            UsageError: not open.
        """
        req = self._request(Ok)
        frame = UploadPreKeys(req, signed_prekey, tuple(one_time), tuple(kem), last_resort)
        self._out.append(frame.to_bytes())
        return req

    def claim_bundle(self, user_id: str, device_id: int) -> int:
        """Queue a ``ClaimBundle`` (answered by ``BundleResult``); its request id.

        Raises:
            UsageError: not open.
        """
        req = self._request(BundleResult)
        self._out.append(ClaimBundle(req, user_id, device_id).to_bytes())
        return req

    def get_device_list(self, user_id: str) -> int:
        """Queue a ``GetDeviceList`` (answered by ``DeviceListResult``); its request id.

        Raises:
            UsageError: not open.
        """
        req = self._request(DeviceListResult)
        self._out.append(GetDeviceList(req, user_id).to_bytes())
        return req

    def put_device_list(self, signed_list: bytes) -> int:
        """Queue a ``PutDeviceList`` (answered by ``Ok``); its request id.

        Raises:
            UsageError: not open.
        """
        req = self._request(Ok)
        self._out.append(PutDeviceList(req, signed_list).to_bytes())
        return req

    def key_check(self) -> int:
        """Queue a ``KeyCheck`` (answered by ``KeyStatus``); its request id.

        Raises:
            UsageError: not open.
        """
        req = self._request(KeyStatus)
        self._out.append(KeyCheck(req).to_bytes())
        return req

    def ack(self, seqs: Iterable[int]) -> None:
        """Queue ``Ack`` frames for ``seqs`` (split at the per-frame limit); no answer.

        Raises:
            UsageError: not open.
        """
        self._check_open()
        items = list(seqs)
        for start in range(0, len(items), MAX_ACKS_PER_FRAME):
            self._out.append(Ack(tuple(items[start : start + MAX_ACKS_PER_FRAME])).to_bytes())

    def forget(self, key: RequestKey) -> None:
        """Stop waiting for an answer (the driver's timeout expired); a late answer is
        then dropped."""
        if isinstance(key, bytes):
            self._pending_sends.discard(key)
        else:
            self._pending.pop(key, None)

    # --- input ---------------------------------------------------------------------------

    def receive(self, data: bytes) -> list[ProtocolEvent]:
        """Consume one frame from the relay; the events it gives.

        Raises:
            MalformedFrame: not a valid relay frame, or not valid in this state (the
                connection must be closed; the state becomes ``CLOSED``).
            NoCommonVersion: ``Hello`` offers no version this SDK speaks (closed too).
            RelayRefused: (a subclass, e.g. ``AuthFailed``) the relay refused the
                authentication.
            UsageError: the connection was already closed.
        """
        if self.state is State.CLOSED:
            raise UsageError("the connection is closed")
        try:
            frame = decode_relay_frame(data)
        except E2EEError as exc:
            self.state = State.CLOSED
            raise MalformedFrame(f"the relay sent a malformed frame: {exc}") from None
        try:
            return self._dispatch(frame)
        except (MalformedFrame, NoCommonVersion, RelayRefused):
            self.state = State.CLOSED
            raise

    def _dispatch(self, frame: RelayFrame) -> list[ProtocolEvent]:
        state = self.state
        if state is State.AWAITING_HELLO:
            if not isinstance(frame, Hello):
                raise MalformedFrame(f"expected Hello first, got {type(frame).__name__}")
            self._hello(frame)
            return []
        if state is State.AWAITING_AUTH_OK:
            if isinstance(frame, AuthOk):
                self.state = State.OPEN
                return [Authenticated(frame.relay_time_ms)]
            if isinstance(frame, Error):
                raise refusal(frame.code, frame.reason)
            raise MalformedFrame(f"expected AuthOk, got {type(frame).__name__}")
        return [event for event in (self._open_frame(frame),) if event is not None]

    def _hello(self, hello: Hello) -> None:
        common = set(hello.versions) & set(RELAY_PROTOCOL_VERSIONS)
        if not common:
            raise NoCommonVersion(offered=hello.versions, supported=tuple(RELAY_PROTOCOL_VERSIONS))
        self.version = max(common)
        identity = self._identity
        signature = sign_relay_auth(
            identity.signing,
            origin=self._origin,
            user_id=identity.user_id,
            device_id=identity.device_id,
            nonce=hello.nonce,
            spki_sha256=self._spki,
        )
        self._out.append(Auth(identity.user_id, identity.device_id, signature).to_bytes())
        self.state = State.AWAITING_AUTH_OK
        logger.debug("answered the relay's hello (version %d)", self.version)

    def _open_frame(self, frame: RelayFrame) -> ProtocolEvent | None:
        if isinstance(frame, Deliver):
            return Delivery(
                frame.seq,
                frame.sender_user,
                frame.sender_device,
                frame.accepted_at_ms,
                frame.ciphertext,
            )
        if isinstance(frame, CaughtUp):
            return CaughtUpEvent()
        if isinstance(frame, PreKeysLow):
            return PreKeysLowEvent(frame.one_time_left, frame.kem_left)
        if isinstance(frame, Accepted | Mismatch):
            return self._send_answer(frame.client_msg_id, frame)
        if isinstance(frame, Error):
            return self._error(frame)
        if isinstance(frame, BundleResult | DeviceListResult | KeyStatus | Ok):
            return self._answer(frame.req, frame)
        raise MalformedFrame(f"unexpected {type(frame).__name__} on an open connection")

    def _send_answer(self, msg_id: bytes, result: RelayFrame | RelayRefused) -> Answer | None:
        if msg_id not in self._pending_sends:
            logger.debug("dropped an answer to a send no longer awaited")
            return None
        self._pending_sends.discard(msg_id)
        return Answer(msg_id, result)

    def _answer(self, req: int, result: RelayFrame | RelayRefused) -> Answer | None:
        expected = self._pending.pop(req, None)
        if expected is None:
            if req >= self._next_req:
                raise MalformedFrame(f"an answer to request {req}, which was never sent")
            logger.debug("dropped a late answer to request %d", req)
            return None
        if not isinstance(result, RelayRefused) and not isinstance(result, expected):
            raise MalformedFrame(
                f"request {req} expected {expected.__name__}, got {type(result).__name__}"
            )
        return Answer(req, result)

    def _error(self, frame: Error) -> ProtocolEvent | None:
        error = refusal(frame.code, frame.reason)
        if frame.client_msg_id is not None:
            return self._send_answer(frame.client_msg_id, error)
        if frame.req is not None:
            return self._answer(frame.req, error)
        logger.info("the relay refused a frame: %s", frame.code.name)
        return RelayNotice(error)

    def closed(self) -> None:
        """The connection ended (either side); nothing more is produced or consumed."""
        self.state = State.CLOSED
        self._pending.clear()
        self._pending_sends.clear()
