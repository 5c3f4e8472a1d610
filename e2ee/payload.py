"""The inner payload: what every decrypted message holds (DESIGN 4.5).

CBOR ``{0: v, 1: type, 2: client_msg_id (16 B), 3: sender_ts_ms, 4: body,
5: padding}``, with ``padding`` zero bytes making the whole encoding a multiple of
160 bytes. ``sender_ts_ms`` is the sender's own clock: the relay's timestamp is never
presented as the send time. An unknown type raises :class:`UnknownPayloadType`
(never shown as text); ``sync_sent`` is accepted only from one's own devices.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum
from typing import Final, TypeAlias, cast

from . import cbor
from .errors import DecodeError, InvalidArgument, LimitExceeded, UntrustedIdentity
from .identifiers import check_user_id
from .limits import MAX_PLAINTEXT, PAYLOAD_PADDING_BLOCK

__all__ = [
    "PAYLOAD_VERSION",
    "AttachmentRef",
    "Body",
    "DeviceListNotice",
    "Payload",
    "PayloadType",
    "RetryRequest",
    "SyncSent",
    "UnknownPayloadType",
]

PAYLOAD_VERSION: Final = 1
_KEYS: Final = frozenset(range(6))
_U63: Final = 2**63 - 1
_ID_SIZE: Final = 16


class UnknownPayloadType(DecodeError):
    """A payload of a type this code does not know: report it, never show it as text."""

    def __init__(self, payload_type: int) -> None:
        super().__init__(f"unknown payload type {payload_type}")
        self.payload_type = payload_type


class PayloadType(IntEnum):
    """The payload types of DESIGN 4.5."""

    TEXT = 1
    BYTES = 2
    SYNC_SENT = 3
    RETRY_REQUEST = 4
    DEVICE_LIST_NOTICE = 5
    ATTACHMENT = 6


@dataclass(frozen=True, slots=True)
class SyncSent:
    """A copy of a message we sent from another of our devices: ``{0: destination_user,
    1: original_id, 2: original type, 3: original body}``."""

    destination_user: str
    original_id: bytes
    original_type: PayloadType
    original_body: str | bytes | AttachmentRef = field(repr=False)


@dataclass(frozen=True, slots=True)
class RetryRequest:
    """ "Please resend": ``{0: client_msg_id, 1: device_id, 2: ratchet_pk, 3: counter}``
    naming the message that failed to decrypt."""

    client_msg_id: bytes
    device_id: int
    ratchet_pk: bytes
    counter: int


@dataclass(frozen=True, slots=True)
class DeviceListNotice:
    """ "My device list changed; fetch version ``version``": ``{0: version}``."""

    version: int


@dataclass(frozen=True, slots=True)
class AttachmentRef:
    """An encrypted attachment on the relay: ``{0: blob_id, 1: key, 2: digest, 3: size}``."""

    blob_id: bytes
    key: bytes
    digest: bytes
    size: int

    def __repr__(self) -> str:
        return f"AttachmentRef(blob_id={self.blob_id.hex()}, size={self.size})"


Body: TypeAlias = str | bytes | SyncSent | RetryRequest | DeviceListNotice | AttachmentRef

_BODY_TYPES: Final[dict[PayloadType, type]] = {
    PayloadType.TEXT: str,
    PayloadType.BYTES: bytes,
    PayloadType.SYNC_SENT: SyncSent,
    PayloadType.RETRY_REQUEST: RetryRequest,
    PayloadType.DEVICE_LIST_NOTICE: DeviceListNotice,
    PayloadType.ATTACHMENT: AttachmentRef,
}


def _body_value(payload_type: PayloadType, body: Body) -> cbor.Value:
    if not isinstance(body, _BODY_TYPES[payload_type]):
        raise InvalidArgument(f"a {payload_type.name} payload cannot carry {type(body).__name__}")
    if isinstance(body, str | bytes):
        return body
    if isinstance(body, SyncSent):
        if body.original_type not in (PayloadType.TEXT, PayloadType.BYTES, PayloadType.ATTACHMENT):
            raise InvalidArgument("sync_sent copies text, bytes or attachment messages")
        return {
            0: body.destination_user,
            1: body.original_id,
            2: int(body.original_type),
            3: _body_value(body.original_type, body.original_body),
        }
    if isinstance(body, RetryRequest):
        return {0: body.client_msg_id, 1: body.device_id, 2: body.ratchet_pk, 3: body.counter}
    if isinstance(body, DeviceListNotice):
        return {0: body.version}
    return {0: body.blob_id, 1: body.key, 2: body.digest, 3: body.size}


def _body_from(payload_type: PayloadType, value: cbor.Value) -> Body:
    if payload_type is PayloadType.TEXT:
        if not isinstance(value, str):
            raise DecodeError("text payload: body is not text")
        return value
    if payload_type is PayloadType.BYTES:
        if not isinstance(value, bytes):
            raise DecodeError("bytes payload: body is not bytes")
        return value
    if payload_type is PayloadType.SYNC_SENT:
        m = cbor.expect_map(value, "sync_sent", frozenset(range(4)))
        original_type = cbor.field_int(m, 2, "original type", 1, 6)
        if original_type not in (PayloadType.TEXT, PayloadType.BYTES, PayloadType.ATTACHMENT):
            raise DecodeError("sync_sent: unsupported original type")
        # Text, bytes or an attachment, as the original type (checked above) says.
        original = cast("str | bytes | AttachmentRef", _body_from(PayloadType(original_type), m[3]))
        return SyncSent(
            check_user_id(m[0]),
            cbor.field_bytes(m, 1, "original id", size=_ID_SIZE),
            PayloadType(original_type),
            original,
        )
    if payload_type is PayloadType.RETRY_REQUEST:
        m = cbor.expect_map(value, "retry_request", frozenset(range(4)))
        return RetryRequest(
            cbor.field_bytes(m, 0, "client message id", size=_ID_SIZE),
            cbor.field_int(m, 1, "device id", 0, 2**32 - 1),
            cbor.field_bytes(m, 2, "ratchet key", size=32),
            cbor.field_int(m, 3, "counter", 0, 2**32 - 1),
        )
    if payload_type is PayloadType.DEVICE_LIST_NOTICE:
        m = cbor.expect_map(value, "device_list_notice", frozenset({0}))
        return DeviceListNotice(cbor.field_int(m, 0, "version", 1, _U63))
    m = cbor.expect_map(value, "attachment", frozenset(range(4)))
    return AttachmentRef(
        cbor.field_bytes(m, 0, "blob id", max_size=64),
        cbor.field_bytes(m, 1, "key", size=32),
        cbor.field_bytes(m, 2, "digest", size=32),
        cbor.field_int(m, 3, "size", 0, _U63),
    )


def _padding_for(unpadded_len: int) -> int:
    """How many padding bytes make the encoding a multiple of the block, given the
    encoded length with an empty padding field (whose head is then one byte)."""
    target = -(-unpadded_len // PAYLOAD_PADDING_BLOCK) * PAYLOAD_PADDING_BLOCK
    while True:
        pad = target - unpadded_len
        # A byte string of length pad >= 24 needs a longer head: 1 + 1 or 1 + 2 bytes.
        extra = 0 if pad < 24 else (1 if pad < 256 else 2)
        if pad - extra >= 0 and _head_extra(pad - extra) == extra:
            return pad - extra
        target += PAYLOAD_PADDING_BLOCK


def _head_extra(length: int) -> int:
    return 0 if length < 24 else (1 if length < 256 else 2)


@dataclass(frozen=True, slots=True)
class Payload:
    """A decrypted message's content."""

    type: PayloadType
    client_msg_id: bytes
    sender_ts_ms: int
    body: Body

    def __post_init__(self) -> None:
        if len(self.client_msg_id) != _ID_SIZE:
            raise InvalidArgument("client message ids are 16 bytes")

    def __repr__(self) -> str:
        return (
            f"Payload({self.type.name}, id={self.client_msg_id.hex()}, "
            f"sender_ts_ms={self.sender_ts_ms})"
        )

    def to_bytes(self) -> bytes:
        """The padded CBOR encoding (a multiple of 160 bytes).

        Raises:
            InvalidArgument: the body does not fit the type, or a field is one the
                receiver would refuse (a bad user id, size or range).
            LimitExceeded: the padded payload exceeds ``MAX_PLAINTEXT``.
        """
        if type(self.sender_ts_ms) is not int or not 0 <= self.sender_ts_ms <= _U63:
            raise InvalidArgument("sender_ts_ms must be an integer in 0..2^63-1")
        body = _body_value(self.type, self.body)
        try:  # refuse what the receiver would refuse (bad ids, sizes, ranges)
            _body_from(self.type, body)
        except DecodeError as exc:
            raise InvalidArgument(f"{self.type.name} body does not decode: {exc}") from exc
        value: dict[int, cbor.Value] = {
            0: PAYLOAD_VERSION,
            1: int(self.type),
            2: self.client_msg_id,
            3: self.sender_ts_ms,
            4: body,
            5: b"",
        }
        unpadded = len(cbor.encode(value))
        value[5] = bytes(_padding_for(unpadded))
        encoded = cbor.encode(value)
        if len(encoded) > MAX_PLAINTEXT:
            raise LimitExceeded(f"payload larger than {MAX_PLAINTEXT} bytes: send an attachment")
        return encoded

    @classmethod
    def from_bytes(cls, data: bytes, *, from_own_device: bool) -> Payload:
        """Decode a payload received from a device of our own user
        (``from_own_device``) or of a contact.

        Raises:
            DecodeError: malformed, badly padded, or a body that does not fit its type.
            UnknownPayloadType: a type this code does not know.
            UntrustedIdentity: a ``sync_sent`` from another user's device.
        """
        if len(data) % PAYLOAD_PADDING_BLOCK or len(data) > MAX_PLAINTEXT:
            raise DecodeError("payload length is not a padded length")
        m = cbor.expect_map(cbor.decode(data, max_size=MAX_PLAINTEXT), "payload", _KEYS)
        if cbor.field_int(m, 0, "payload version") != PAYLOAD_VERSION:
            raise DecodeError(f"unknown payload version {m[0]!r}")
        raw_type = cbor.field_int(m, 1, "payload type", 0, 255)
        padding = cbor.field_bytes(m, 5, "padding", max_size=MAX_PLAINTEXT)
        if padding.count(0) != len(padding):
            raise DecodeError("payload padding is not zero")
        if len(padding) != _padding_for(len(data) - len(padding) - _head_extra(len(padding))):
            raise DecodeError("payload padding is not the smallest that fills the block")
        try:
            payload_type = PayloadType(raw_type)
        except ValueError:
            raise UnknownPayloadType(raw_type) from None
        if payload_type is PayloadType.SYNC_SENT and not from_own_device:
            raise UntrustedIdentity("sync_sent from a device of another user")
        return cls(
            payload_type,
            cbor.field_bytes(m, 2, "client message id", size=_ID_SIZE),
            cbor.field_int(m, 3, "sender_ts_ms", 0, _U63),
            _body_from(payload_type, m[4]),
        )
