"""Frames between a device and the relay (DESIGN 5), shared by the relay and the SDK.

Every frame is one WebSocket binary message holding a canonical CBOR map whose key
0 is the :class:`FrameType`. The relay may import this module (it is wire parsing);
the SDK builds and parses the same frames. ``docs/relay-protocol.md`` restates the
layouts.

Client to relay: :class:`Auth`, :class:`Send`, :class:`Ack`, :class:`UploadPreKeys`,
:class:`ClaimBundle`, :class:`GetDeviceList`, :class:`PutDeviceList`,
:class:`KeyCheck`. Relay to client: :class:`Hello`, :class:`AuthOk`,
:class:`Accepted`, :class:`Mismatch`, :class:`Deliver`, :class:`CaughtUp`,
:class:`PreKeysLow`, :class:`BundleResult`, :class:`DeviceListResult`,
:class:`KeyStatus`, :class:`Ok`, :class:`Error`.

Requests that expect an answer carry a client-chosen request id (``req``), echoed
in the answer or in the :class:`Error` that refuses it. A :class:`Send` is answered
by :class:`Accepted`, :class:`Mismatch` or an :class:`Error` naming its client
message id.

The HTTP registration body, :class:`RegisterRequest`, and the ``register`` proof of
possession are defined here too.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import ClassVar, Final, TypeAlias

from . import cbor
from .errors import DecodeError, InvalidArgument
from .identifiers import check_device_id, check_user_id
from .keys import SigningKeyPair, verify_statement
from .labels import Label
from .limits import MAX_DEVICES_PER_LIST
from .prekeys import PreKeyKind, SignedPublicPreKey

__all__ = [
    "CLIENT_MSG_ID_SIZE",
    "MAX_ACKS_PER_FRAME",
    "MAX_ADDRESSED_USERS",
    "MAX_PREKEYS_PER_UPLOAD",
    "MAX_RELAY_FRAME",
    "RELAY_PROTOCOL_VERSIONS",
    "Accepted",
    "Ack",
    "Auth",
    "AuthOk",
    "BundleResult",
    "CaughtUp",
    "ClaimBundle",
    "ClientFrame",
    "CloseCode",
    "Deliver",
    "DeviceListResult",
    "Error",
    "ErrorCode",
    "FrameType",
    "GetDeviceList",
    "Hello",
    "KeyCheck",
    "KeyStatus",
    "Mismatch",
    "MismatchedUser",
    "Ok",
    "PreKeysLow",
    "PutDeviceList",
    "RegisterRequest",
    "RelayFrame",
    "Send",
    "UnknownFrameType",
    "UploadPreKeys",
    "decode_client_frame",
    "decode_relay_frame",
    "register_statement",
    "sign_register",
    "verify_register",
]

RELAY_PROTOCOL_VERSIONS: Final = (1,)
"""Relay-protocol versions this code speaks (the relay lists its own in :class:`Hello`)."""
MAX_RELAY_FRAME: Final = 256 * 1024
"""Largest frame either side accepts: one upload of 100 + 100 prekeys, or one message to
every device of two users, fits."""
CLIENT_MSG_ID_SIZE: Final = 16
"""Client message ids are 16 random bytes."""
MAX_ADDRESSED_USERS: Final = 2
"""A send addresses the recipient and the sender's own user (groups come later)."""
MAX_ACKS_PER_FRAME: Final = 1_000
"""Sequence numbers one :class:`Ack` may carry."""
MAX_PREKEYS_PER_UPLOAD: Final = 100
"""One-time prekeys of each kind one upload may carry."""
_MAX_REQ: Final = 2**32 - 1
_U63: Final = 2**63 - 1
_SIGNATURE_SIZE: Final = 64
_NONCE_SIZE: Final = 32
_MAX_REASON: Final = 200
_MAX_TOKEN: Final = 256


class FrameType(IntEnum):
    """Key 0 of every frame."""

    AUTH = 1
    SEND = 2
    ACK = 3
    UPLOAD_PREKEYS = 4
    CLAIM_BUNDLE = 5
    GET_DEVICE_LIST = 6
    PUT_DEVICE_LIST = 7
    KEY_CHECK = 8
    HELLO = 64
    AUTH_OK = 65
    ACCEPTED = 66
    MISMATCH = 67
    DELIVER = 68
    CAUGHT_UP = 69
    PREKEYS_LOW = 70
    BUNDLE = 71
    DEVICE_LIST = 72
    KEY_STATUS = 73
    OK = 74
    ERROR = 79


class ErrorCode(IntEnum):
    """Why the relay refused a frame or a request (the :class:`Error` frame's code)."""

    MALFORMED = 1
    """The frame is not a well-formed frame of a known type."""
    UNKNOWN_FRAME = 2
    """A frame type the relay does not accept from a client (or not in this state)."""
    NOT_AUTHENTICATED = 3
    """A request before authentication."""
    AUTH_FAILED = 4
    """The authentication statement did not verify, or the device may not connect."""
    RATE_LIMITED = 5
    """Too many requests of this kind; retry later."""
    IDEMPOTENCY_CONFLICT = 6
    """A client message id reused for different content."""
    QUEUE_FULL = 7
    """A recipient device's queue is at its quota."""
    BAD_SIGNATURE = 8
    """A prekey or device-list signature did not verify."""
    PREKEY_ID_REUSED = 9
    """A prekey id the device has used before."""
    DEVICE_LIST_ROLLBACK = 10
    """A device list whose version does not increase, or that does not chain."""
    UNKNOWN_USER = 11
    """No such account."""
    UNKNOWN_DEVICE = 12
    """No such device in the account's accepted device list."""
    TOO_LARGE = 13
    """A payload above a limit."""
    UNAVAILABLE = 14
    """The relay could not complete the request (storage); nothing was changed."""
    INVALID = 15
    """A well-formed request the relay refuses (wrong account, bad values)."""
    NO_PREKEYS = 16
    """The device has no signed prekey on the relay."""


class CloseCode(IntEnum):
    """WebSocket close codes the relay uses."""

    NORMAL = 1000
    GOING_AWAY = 1001
    """The relay is shutting down; reconnect (with backoff)."""
    PROTOCOL_ERROR = 1002
    POLICY_VIOLATION = 1008
    TOO_BIG = 1009
    """A frame above :data:`MAX_RELAY_FRAME`."""
    INTERNAL_ERROR = 1011
    TRY_AGAIN_LATER = 1013
    CONNECTED_ELSEWHERE = 4001
    """A newer connection of the same device replaced this one."""
    DEVICE_REMOVED = 4002
    """The device is no longer in its account's device list."""
    OVERFLOW = 4003
    """The client stopped reading; its messages stay queued."""
    AUTH_TIMEOUT = 4004
    """No valid authentication within the nonce's lifetime."""
    AUTH_FAILED = 4005
    """Authentication refused."""
    RATE_LIMITED = 4006
    """Too many frames or failed attempts."""


# --- helpers -------------------------------------------------------------------------


def _req(m: dict[int, cbor.Value]) -> int:
    return cbor.field_int(m, 1, "request id", 0, _MAX_REQ)


def _msg_id(m: dict[int, cbor.Value], key: int) -> bytes:
    return cbor.field_bytes(m, key, "client message id", size=CLIENT_MSG_ID_SIZE)


def _device_ids(value: cbor.Value, what: str) -> tuple[int, ...]:
    ids = tuple(check_device_id(v) for v in cbor.expect_list(value, what, MAX_DEVICES_PER_LIST))
    if len(set(ids)) != len(ids):
        raise DecodeError(f"{what}: duplicate device id")
    return ids


def _prekey_value(prekey: SignedPublicPreKey | None) -> cbor.Value:
    return None if prekey is None else prekey.to_value()


def _optional_prekey(value: cbor.Value, kind: PreKeyKind) -> SignedPublicPreKey | None:
    return None if value is None else SignedPublicPreKey.from_value(value, kind)


def _prekey_list(value: cbor.Value, kind: PreKeyKind) -> tuple[SignedPublicPreKey, ...]:
    items = cbor.expect_list(value, f"{kind.name.lower()} prekeys", MAX_PREKEYS_PER_UPLOAD)
    return tuple(SignedPublicPreKey.from_value(v, kind) for v in items)


def _check_keys(m: dict[int, cbor.Value], name: str, keys: frozenset[int]) -> None:
    cbor.expect_map(m, name, keys | {0})


# --- client to relay -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Auth:
    """``{0: 1, 1: user_id, 2: device_id, 3: signature}``: the device's ``relay-auth``
    signature over the connection's nonce (:mod:`e2ee.auth`)."""

    TYPE: ClassVar[FrameType] = FrameType.AUTH
    user_id: str
    device_id: int
    signature: bytes

    def to_bytes(self) -> bytes:
        return cbor.encode({0: self.TYPE, 1: self.user_id, 2: self.device_id, 3: self.signature})

    @classmethod
    def _from_map(cls, m: dict[int, cbor.Value]) -> Auth:
        _check_keys(m, "auth", frozenset({1, 2, 3}))
        return cls(
            check_user_id(m[1]),
            check_device_id(m[2]),
            cbor.field_bytes(m, 3, "signature", size=_SIGNATURE_SIZE),
        )


DeviceCiphertexts: TypeAlias = tuple[tuple[int, bytes], ...]
"""``((device_id, ciphertext), ...)`` for one addressed user."""


@dataclass(frozen=True, slots=True)
class Send:
    """``{0: 2, 1: client_msg_id, 2: [[user_id, [[device_id, ciphertext], ...]], ...]}``:
    one ciphertext per device of each addressed user (the recipient and the sender's
    own user; the sending device itself is never addressed)."""

    TYPE: ClassVar[FrameType] = FrameType.SEND
    client_msg_id: bytes
    addressed: tuple[tuple[str, DeviceCiphertexts], ...]

    def to_bytes(self) -> bytes:
        users: list[cbor.Value] = [
            [user_id, [[device_id, ct] for device_id, ct in devices]]
            for user_id, devices in self.addressed
        ]
        return cbor.encode({0: self.TYPE, 1: self.client_msg_id, 2: users})

    @classmethod
    def _from_map(cls, m: dict[int, cbor.Value]) -> Send:
        _check_keys(m, "send", frozenset({1, 2}))
        msg_id = _msg_id(m, 1)
        users = cbor.field_list(m, 2, "addressed users", MAX_ADDRESSED_USERS)
        if not users:
            raise DecodeError("send: no addressed user")
        addressed: list[tuple[str, DeviceCiphertexts]] = []
        for entry in users:
            pair = cbor.expect_list(entry, "addressed user", 2)
            if len(pair) != 2:
                raise DecodeError("addressed user: expected [user_id, devices]")
            user_id = check_user_id(pair[0])
            devices: list[tuple[int, bytes]] = []
            for item in cbor.expect_list(pair[1], "addressed devices", MAX_DEVICES_PER_LIST):
                dev = cbor.expect_list(item, "addressed device", 2)
                if len(dev) != 2 or not isinstance(dev[1], bytes):
                    raise DecodeError("addressed device: expected [device_id, ciphertext]")
                devices.append((check_device_id(dev[0]), dev[1]))
            if len({d for d, _ in devices}) != len(devices):
                raise DecodeError("send: a device is addressed twice")
            addressed.append((user_id, tuple(devices)))
        if len({u for u, _ in addressed}) != len(addressed):
            raise DecodeError("send: a user is addressed twice")
        return cls(msg_id, tuple(addressed))


@dataclass(frozen=True, slots=True)
class Ack:
    """``{0: 3, 1: [seq, ...]}``: the device has durably processed these deliveries;
    the relay deletes them."""

    TYPE: ClassVar[FrameType] = FrameType.ACK
    seqs: tuple[int, ...]

    def to_bytes(self) -> bytes:
        return cbor.encode({0: self.TYPE, 1: list(self.seqs)})

    @classmethod
    def _from_map(cls, m: dict[int, cbor.Value]) -> Ack:
        _check_keys(m, "ack", frozenset({1}))
        items = cbor.field_list(m, 1, "acknowledged sequences", MAX_ACKS_PER_FRAME)
        seqs = []
        for item in items:
            if type(item) is not int or not 1 <= item <= _U63:
                raise DecodeError("ack: sequence numbers are integers from 1")
            seqs.append(item)
        if not seqs:
            raise DecodeError("ack: no sequence number")
        return cls(tuple(seqs))


@dataclass(frozen=True, slots=True)
class UploadPreKeys:
    """``{0: 4, 1: req, 2: signed prekey or null, 3: [one-time], 4: [KEM one-time],
    5: last-resort KEM prekey or null}``; each signed by the uploading device."""

    TYPE: ClassVar[FrameType] = FrameType.UPLOAD_PREKEYS
    req: int
    signed_prekey: SignedPublicPreKey | None
    one_time: tuple[SignedPublicPreKey, ...]
    kem: tuple[SignedPublicPreKey, ...]
    last_resort: SignedPublicPreKey | None

    def to_bytes(self) -> bytes:
        return cbor.encode(
            {
                0: self.TYPE,
                1: self.req,
                2: _prekey_value(self.signed_prekey),
                3: [p.to_value() for p in self.one_time],
                4: [p.to_value() for p in self.kem],
                5: _prekey_value(self.last_resort),
            }
        )

    @classmethod
    def _from_map(cls, m: dict[int, cbor.Value]) -> UploadPreKeys:
        _check_keys(m, "upload prekeys", frozenset({1, 2, 3, 4, 5}))
        return cls(
            _req(m),
            _optional_prekey(m[2], PreKeyKind.SIGNED),
            _prekey_list(m[3], PreKeyKind.ONE_TIME),
            _prekey_list(m[4], PreKeyKind.KEM),
            _optional_prekey(m[5], PreKeyKind.KEM_LAST_RESORT),
        )


@dataclass(frozen=True, slots=True)
class ClaimBundle:
    """``{0: 5, 1: req, 2: user_id, 3: device_id}``: claim one device's prekey bundle
    (consuming a one-time prekey of each kind where there is one)."""

    TYPE: ClassVar[FrameType] = FrameType.CLAIM_BUNDLE
    req: int
    user_id: str
    device_id: int

    def to_bytes(self) -> bytes:
        return cbor.encode({0: self.TYPE, 1: self.req, 2: self.user_id, 3: self.device_id})

    @classmethod
    def _from_map(cls, m: dict[int, cbor.Value]) -> ClaimBundle:
        _check_keys(m, "claim bundle", frozenset({1, 2, 3}))
        return cls(_req(m), check_user_id(m[2]), check_device_id(m[3]))


@dataclass(frozen=True, slots=True)
class GetDeviceList:
    """``{0: 6, 1: req, 2: user_id}``: fetch a user's signed device list."""

    TYPE: ClassVar[FrameType] = FrameType.GET_DEVICE_LIST
    req: int
    user_id: str

    def to_bytes(self) -> bytes:
        return cbor.encode({0: self.TYPE, 1: self.req, 2: self.user_id})

    @classmethod
    def _from_map(cls, m: dict[int, cbor.Value]) -> GetDeviceList:
        _check_keys(m, "get device list", frozenset({1, 2}))
        return cls(_req(m), check_user_id(m[2]))


@dataclass(frozen=True, slots=True)
class PutDeviceList:
    """``{0: 7, 1: req, 2: signed device list}``: publish version v+1 of one's own
    account's list (signed by the master key; the relay checks it chains)."""

    TYPE: ClassVar[FrameType] = FrameType.PUT_DEVICE_LIST
    req: int
    signed_list: bytes

    def to_bytes(self) -> bytes:
        return cbor.encode({0: self.TYPE, 1: self.req, 2: self.signed_list})

    @classmethod
    def _from_map(cls, m: dict[int, cbor.Value]) -> PutDeviceList:
        _check_keys(m, "put device list", frozenset({1, 2}))
        return cls(_req(m), cbor.field_bytes(m, 2, "signed device list", max_size=MAX_RELAY_FRAME))


@dataclass(frozen=True, slots=True)
class KeyCheck:
    """``{0: 8, 1: req}``: ask what the relay holds for this device (answered by
    :class:`KeyStatus`)."""

    TYPE: ClassVar[FrameType] = FrameType.KEY_CHECK
    req: int

    def to_bytes(self) -> bytes:
        return cbor.encode({0: self.TYPE, 1: self.req})

    @classmethod
    def _from_map(cls, m: dict[int, cbor.Value]) -> KeyCheck:
        _check_keys(m, "key check", frozenset({1}))
        return cls(_req(m))


# --- relay to client -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Hello:
    """``{0: 64, 1: [versions], 2: nonce, 3: max frame}``: the relay's first frame; the
    nonce is bound to this connection, single use, valid 30 s."""

    TYPE: ClassVar[FrameType] = FrameType.HELLO
    versions: tuple[int, ...]
    nonce: bytes
    max_frame: int

    def to_bytes(self) -> bytes:
        return cbor.encode({0: self.TYPE, 1: list(self.versions), 2: self.nonce, 3: self.max_frame})

    @classmethod
    def _from_map(cls, m: dict[int, cbor.Value]) -> Hello:
        _check_keys(m, "hello", frozenset({1, 2, 3}))
        versions = []
        for v in cbor.field_list(m, 1, "versions", 16):
            if type(v) is not int or not 0 < v < 256:
                raise DecodeError("hello: versions are integers 1..255")
            versions.append(v)
        return cls(
            tuple(versions),
            cbor.field_bytes(m, 2, "nonce", size=_NONCE_SIZE),
            cbor.field_int(m, 3, "max frame", 1024, 1 << 30),
        )


@dataclass(frozen=True, slots=True)
class AuthOk:
    """``{0: 65, 1: relay time ms}``: the connection is authenticated; stored messages
    follow, then :class:`CaughtUp`."""

    TYPE: ClassVar[FrameType] = FrameType.AUTH_OK
    relay_time_ms: int

    def to_bytes(self) -> bytes:
        return cbor.encode({0: self.TYPE, 1: self.relay_time_ms})

    @classmethod
    def _from_map(cls, m: dict[int, cbor.Value]) -> AuthOk:
        _check_keys(m, "auth ok", frozenset({1}))
        return cls(cbor.field_int(m, 1, "relay time", 0, _U63))


@dataclass(frozen=True, slots=True)
class Accepted:
    """``{0: 66, 1: client_msg_id, 2: accepted_at_ms}``: the send is durably stored for
    every addressed device (a retry of the same id and content gets the same answer)."""

    TYPE: ClassVar[FrameType] = FrameType.ACCEPTED
    client_msg_id: bytes
    accepted_at_ms: int

    def to_bytes(self) -> bytes:
        return cbor.encode({0: self.TYPE, 1: self.client_msg_id, 2: self.accepted_at_ms})

    @classmethod
    def _from_map(cls, m: dict[int, cbor.Value]) -> Accepted:
        _check_keys(m, "accepted", frozenset({1, 2}))
        return cls(_msg_id(m, 1), cbor.field_int(m, 2, "accepted at", 0, _U63))


@dataclass(frozen=True, slots=True)
class MismatchedUser:
    """One addressed user whose device set was not exact."""

    user_id: str
    missing: tuple[int, ...]
    extra: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Mismatch:
    """``{0: 67, 1: client_msg_id, 2: [[user_id, [missing], [extra]], ...]}``: nothing was
    stored; refresh these users' device lists and send again."""

    TYPE: ClassVar[FrameType] = FrameType.MISMATCH
    client_msg_id: bytes
    users: tuple[MismatchedUser, ...]

    def to_bytes(self) -> bytes:
        users: list[cbor.Value] = [[u.user_id, list(u.missing), list(u.extra)] for u in self.users]
        return cbor.encode({0: self.TYPE, 1: self.client_msg_id, 2: users})

    @classmethod
    def _from_map(cls, m: dict[int, cbor.Value]) -> Mismatch:
        _check_keys(m, "mismatch", frozenset({1, 2}))
        users = []
        for item in cbor.field_list(m, 2, "mismatched users", MAX_ADDRESSED_USERS):
            triple = cbor.expect_list(item, "mismatched user", 3)
            if len(triple) != 3:
                raise DecodeError("mismatched user: expected [user_id, missing, extra]")
            users.append(
                MismatchedUser(
                    check_user_id(triple[0]),
                    _device_ids(triple[1], "missing devices"),
                    _device_ids(triple[2], "extra devices"),
                )
            )
        return cls(_msg_id(m, 1), tuple(users))


@dataclass(frozen=True, slots=True)
class Deliver:
    """``{0: 68, 1: seq, 2: sender user, 3: sender device, 4: accepted_at_ms,
    5: ciphertext}``: one queued message, in acceptance order. The relay's time is
    never shown as the send time (the sender's is inside the ciphertext)."""

    TYPE: ClassVar[FrameType] = FrameType.DELIVER
    seq: int
    sender_user: str
    sender_device: int
    accepted_at_ms: int
    ciphertext: bytes

    def to_bytes(self) -> bytes:
        return cbor.encode(
            {
                0: self.TYPE,
                1: self.seq,
                2: self.sender_user,
                3: self.sender_device,
                4: self.accepted_at_ms,
                5: self.ciphertext,
            }
        )

    @classmethod
    def _from_map(cls, m: dict[int, cbor.Value]) -> Deliver:
        _check_keys(m, "deliver", frozenset({1, 2, 3, 4, 5}))
        return cls(
            cbor.field_int(m, 1, "sequence", 1, _U63),
            check_user_id(m[2]),
            check_device_id(m[3]),
            cbor.field_int(m, 4, "accepted at", 0, _U63),
            cbor.field_bytes(m, 5, "ciphertext", max_size=MAX_RELAY_FRAME),
        )


@dataclass(frozen=True, slots=True)
class CaughtUp:
    """``{0: 69}``: every message stored before this connection authenticated has been
    delivered on it; what follows is live."""

    TYPE: ClassVar[FrameType] = FrameType.CAUGHT_UP

    def to_bytes(self) -> bytes:
        return cbor.encode({0: self.TYPE})

    @classmethod
    def _from_map(cls, m: dict[int, cbor.Value]) -> CaughtUp:
        _check_keys(m, "caught up", frozenset())
        return cls()


@dataclass(frozen=True, slots=True)
class PreKeysLow:
    """``{0: 70, 1: one-time EC prekeys left, 2: one-time KEM prekeys left}``: upload
    more (sent when a claim drops either below 25)."""

    TYPE: ClassVar[FrameType] = FrameType.PREKEYS_LOW
    one_time_left: int
    kem_left: int

    def to_bytes(self) -> bytes:
        return cbor.encode({0: self.TYPE, 1: self.one_time_left, 2: self.kem_left})

    @classmethod
    def _from_map(cls, m: dict[int, cbor.Value]) -> PreKeysLow:
        _check_keys(m, "prekeys low", frozenset({1, 2}))
        return cls(
            cbor.field_int(m, 1, "one-time left", 0, _U63),
            cbor.field_int(m, 2, "KEM left", 0, _U63),
        )


@dataclass(frozen=True, slots=True)
class BundleResult:
    """``{0: 71, 1: req, 2: bundle bytes}`` (:class:`e2ee.prekeys.PreKeyBundle`; the
    client validates it against the verified device list)."""

    TYPE: ClassVar[FrameType] = FrameType.BUNDLE
    req: int
    bundle: bytes

    def to_bytes(self) -> bytes:
        return cbor.encode({0: self.TYPE, 1: self.req, 2: self.bundle})

    @classmethod
    def _from_map(cls, m: dict[int, cbor.Value]) -> BundleResult:
        _check_keys(m, "bundle", frozenset({1, 2}))
        return cls(_req(m), cbor.field_bytes(m, 2, "bundle", max_size=MAX_RELAY_FRAME))


@dataclass(frozen=True, slots=True)
class DeviceListResult:
    """``{0: 72, 1: req, 2: signed device list bytes}``."""

    TYPE: ClassVar[FrameType] = FrameType.DEVICE_LIST
    req: int
    signed_list: bytes

    def to_bytes(self) -> bytes:
        return cbor.encode({0: self.TYPE, 1: self.req, 2: self.signed_list})

    @classmethod
    def _from_map(cls, m: dict[int, cbor.Value]) -> DeviceListResult:
        _check_keys(m, "device list", frozenset({1, 2}))
        return cls(_req(m), cbor.field_bytes(m, 2, "signed device list", max_size=MAX_RELAY_FRAME))


@dataclass(frozen=True, slots=True)
class KeyStatus:
    """``{0: 73, 1: req, 2: signed prekey or null, 3: last-resort KEM prekey or null,
    4: one-time EC prekeys left, 5: one-time KEM prekeys left, 6: SHA-256 of the
    accepted device list}``: what the relay holds for the asking device, so it can
    confirm the relay serves its current long-lived keys."""

    TYPE: ClassVar[FrameType] = FrameType.KEY_STATUS
    req: int
    signed_prekey: SignedPublicPreKey | None
    last_resort: SignedPublicPreKey | None
    one_time_left: int
    kem_left: int
    device_list_digest: bytes

    def to_bytes(self) -> bytes:
        return cbor.encode(
            {
                0: self.TYPE,
                1: self.req,
                2: _prekey_value(self.signed_prekey),
                3: _prekey_value(self.last_resort),
                4: self.one_time_left,
                5: self.kem_left,
                6: self.device_list_digest,
            }
        )

    @classmethod
    def _from_map(cls, m: dict[int, cbor.Value]) -> KeyStatus:
        _check_keys(m, "key status", frozenset({1, 2, 3, 4, 5, 6}))
        return cls(
            _req(m),
            _optional_prekey(m[2], PreKeyKind.SIGNED),
            _optional_prekey(m[3], PreKeyKind.KEM_LAST_RESORT),
            cbor.field_int(m, 4, "one-time left", 0, _U63),
            cbor.field_int(m, 5, "KEM left", 0, _U63),
            cbor.field_bytes(m, 6, "device list digest", size=32),
        )


@dataclass(frozen=True, slots=True)
class Ok:
    """``{0: 74, 1: req}``: the request succeeded."""

    TYPE: ClassVar[FrameType] = FrameType.OK
    req: int

    def to_bytes(self) -> bytes:
        return cbor.encode({0: self.TYPE, 1: self.req})

    @classmethod
    def _from_map(cls, m: dict[int, cbor.Value]) -> Ok:
        _check_keys(m, "ok", frozenset({1}))
        return cls(_req(m))


@dataclass(frozen=True, slots=True)
class Error:
    """``{0: 79, 1: code, 2: reason, 3: req or null, 4: client_msg_id or null}``: a
    refusal. The reason is for logs and developers; clients act on the code."""

    TYPE: ClassVar[FrameType] = FrameType.ERROR
    code: ErrorCode
    reason: str
    req: int | None = None
    client_msg_id: bytes | None = None

    def to_bytes(self) -> bytes:
        return cbor.encode(
            {
                0: self.TYPE,
                1: int(self.code),
                2: self.reason[:_MAX_REASON],
                3: self.req,
                4: self.client_msg_id,
            }
        )

    @classmethod
    def _from_map(cls, m: dict[int, cbor.Value]) -> Error:
        _check_keys(m, "error", frozenset({1, 2, 3, 4}))
        code = cbor.field_int(m, 1, "error code", 0, 255)
        try:
            error_code = ErrorCode(code)
        except ValueError:
            raise DecodeError(f"error: unknown error code {code}") from None
        req = None if m[3] is None else _req({1: m[3]})
        return cls(
            error_code,
            cbor.field_str(m, 2, "reason", _MAX_REASON),
            req,
            cbor.field_optional_bytes(m, 4, "client message id", size=CLIENT_MSG_ID_SIZE),
        )


ClientFrame: TypeAlias = (
    Auth | Send | Ack | UploadPreKeys | ClaimBundle | GetDeviceList | PutDeviceList | KeyCheck
)
RelayFrame: TypeAlias = (
    Hello
    | AuthOk
    | Accepted
    | Mismatch
    | Deliver
    | CaughtUp
    | PreKeysLow
    | BundleResult
    | DeviceListResult
    | KeyStatus
    | Ok
    | Error
)

_CLIENT_FRAMES: Final[dict[int, type[ClientFrame]]] = {
    cls.TYPE: cls
    for cls in (Auth, Send, Ack, UploadPreKeys, ClaimBundle, GetDeviceList, PutDeviceList, KeyCheck)
}
_RELAY_FRAMES: Final[dict[int, type[RelayFrame]]] = {
    cls.TYPE: cls
    for cls in (
        Hello,
        AuthOk,
        Accepted,
        Mismatch,
        Deliver,
        CaughtUp,
        PreKeysLow,
        BundleResult,
        DeviceListResult,
        KeyStatus,
        Ok,
        Error,
    )
}


class UnknownFrameType(DecodeError):
    """A well-formed frame whose type this side does not accept."""

    def __init__(self, frame_type: int) -> None:
        super().__init__(f"unknown frame type {frame_type}")
        self.frame_type = frame_type


def _frame_map(data: bytes) -> tuple[int, dict[int, cbor.Value]]:
    value = cbor.decode(data, max_size=MAX_RELAY_FRAME)
    frame_type = value.get(0) if isinstance(value, dict) else None
    if not isinstance(value, dict) or type(frame_type) is not int:
        raise DecodeError("frame: expected a map with an integer type at key 0")
    return frame_type, value


def decode_client_frame(data: bytes) -> ClientFrame:
    """Parse a frame a client sent to the relay.

    Raises:
        UnknownFrameType: a well-formed map whose type is not a client frame.
        DecodeError: anything else malformed (CBOR, fields, keys, sizes).
    """
    frame_type, m = _frame_map(data)
    cls = _CLIENT_FRAMES.get(frame_type)
    if cls is None:
        raise UnknownFrameType(frame_type)
    return cls._from_map(m)


def decode_relay_frame(data: bytes) -> RelayFrame:
    """Parse a frame the relay sent to a client.

    Raises:
        UnknownFrameType: a well-formed map whose type is not a relay frame.
        DecodeError: anything else malformed.
    """
    frame_type, m = _frame_map(data)
    cls = _RELAY_FRAMES.get(frame_type)
    if cls is None:
        raise UnknownFrameType(frame_type)
    return cls._from_map(m)


# --- registration (HTTP) ---------------------------------------------------------------


def register_statement(user_id: str, device_id: int, nonce: bytes, signer_pk: bytes) -> cbor.Value:
    """The ``register`` statement: ``{0: user_id, 1: device_id, 2: nonce, 3: signer_pk}``.

    Both the master key and the first device's signing key sign it over the relay's
    fresh nonce (proof of possession); ``signer_pk`` names which key signs.

    Raises:
        InvalidArgument: a nonce or key of the wrong size.
        DecodeError: a malformed user id or device id.
    """
    if len(nonce) != _NONCE_SIZE:
        raise InvalidArgument(f"register nonce must be {_NONCE_SIZE} bytes")
    if len(signer_pk) != 32:
        raise InvalidArgument("signer key must be 32 bytes")
    return {0: check_user_id(user_id), 1: check_device_id(device_id), 2: nonce, 3: signer_pk}


def sign_register(signer: SigningKeyPair, user_id: str, device_id: int, nonce: bytes) -> bytes:
    """Sign the ``register`` statement with ``signer`` (the master key or the device key).

    Raises:
        InvalidArgument, DecodeError: as :func:`register_statement`.
    """
    statement = register_statement(user_id, device_id, nonce, signer.public_key)
    return signer.sign(Label.REGISTER, statement)


def verify_register(
    signer_pk: bytes, signature: bytes, user_id: str, device_id: int, nonce: bytes
) -> None:
    """Check a ``register`` signature by ``signer_pk``.

    Raises:
        BadSignature: it does not verify for exactly these values.
        InvalidArgument, DecodeError: as :func:`register_statement`.
    """
    statement = register_statement(user_id, device_id, nonce, signer_pk)
    verify_statement(signer_pk, Label.REGISTER, statement, signature)


@dataclass(frozen=True, slots=True)
class RegisterRequest:
    """The body of ``POST /v1/register`` (``application/cbor``)::

        {0: signed device list (version 1, exactly one device), 1: nonce,
         2: master signature, 3: device signature, 4: registration token or null}

    The user id, master key and first device come from the device list.
    """

    signed_list: bytes
    nonce: bytes
    master_signature: bytes
    device_signature: bytes
    registration_token: str | None = None

    def to_bytes(self) -> bytes:
        return cbor.encode(
            {
                0: self.signed_list,
                1: self.nonce,
                2: self.master_signature,
                3: self.device_signature,
                4: self.registration_token,
            }
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> RegisterRequest:
        """Parse a registration body.

        Raises:
            DecodeError: malformed.
        """
        m = cbor.expect_map(
            cbor.decode(data, max_size=MAX_RELAY_FRAME), "register", frozenset(range(5))
        )
        token = None if m[4] is None else cbor.field_str(m, 4, "registration token", _MAX_TOKEN)
        return cls(
            cbor.field_bytes(m, 0, "signed device list", max_size=MAX_RELAY_FRAME),
            cbor.field_bytes(m, 1, "nonce", size=_NONCE_SIZE),
            cbor.field_bytes(m, 2, "master signature", size=_SIGNATURE_SIZE),
            cbor.field_bytes(m, 3, "device signature", size=_SIGNATURE_SIZE),
            token,
        )
