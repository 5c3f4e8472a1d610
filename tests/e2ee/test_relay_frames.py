"""The frames between a device and the relay, and the registration body (e2ee/relay_frames.py).

* every frame type: its wire layout pinned as a CBOR map, round trips through its
  decoder to an equal frame and the very same bytes, and is refused by the other
  side's decoder as an unknown frame type;
* every refusal of the decoders: top level, frame type, missing and unknown keys,
  and each field (types, ranges, sizes, duplicates, counts);
* the ``register`` statement (sign and verify with the master and the device key)
  and :class:`RegisterRequest`;
* Hypothesis: arbitrary bytes, arbitrary frame-shaped maps and mutated valid frames
  fed to both decoders (and the registration parser) either decode to something that
  re-encodes to the same bytes, or raise :class:`DecodeError`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from e2ee import cbor
from e2ee.auth import sign_relay_auth, verify_relay_auth
from e2ee.device_list import SignedDeviceList
from e2ee.errors import BadSignature, CBORTooLarge, DecodeError, InvalidArgument
from e2ee.identifiers import DEVICE_ID_MAX, InvalidUserId
from e2ee.keys import signed_message
from e2ee.labels import Label
from e2ee.limits import MAX_DEVICES_PER_LIST
from e2ee.prekeys import PreKeyBundle, PreKeyKind, SignedPublicPreKey, validate_bundle
from e2ee.relay_frames import (
    CLIENT_MSG_ID_SIZE,
    MAX_ACKS_PER_FRAME,
    MAX_ADDRESSED_USERS,
    MAX_PREKEYS_PER_UPLOAD,
    MAX_RELAY_FRAME,
    RELAY_PROTOCOL_VERSIONS,
    Accepted,
    Ack,
    Auth,
    AuthOk,
    BundleResult,
    CaughtUp,
    ClaimBundle,
    CloseCode,
    Deliver,
    DeviceListResult,
    Error,
    ErrorCode,
    FrameType,
    GetDeviceList,
    Hello,
    KeyCheck,
    KeyStatus,
    Mismatch,
    MismatchedUser,
    Ok,
    PreKeysLow,
    PutDeviceList,
    RegisterRequest,
    Send,
    UnknownFrameType,
    UploadPreKeys,
    decode_client_frame,
    decode_relay_frame,
    register_statement,
    sign_register,
    verify_register,
)
from e2ee.session import start_session
from tests.hypothesis_profiles import DECODER_SETTINGS

from .helpers import NOW, make_user, seeded_rng

# --- realistic values -----------------------------------------------------------------------

ALICE = make_user("alice", devices=2, seed=31)
BOB = make_user("bob", seed=32)
CAROL = make_user("carol", seed=33)  # registers
A0, A1 = ALICE.devices
B0 = BOB.devices[0]
C0 = CAROL.devices[0]
A0_ID = A0.device.device_id
A1_ID = A1.device.device_id
B0_ID = B0.device.device_id
C0_ID = C0.device.device_id

SPK = A0.signed_prekey
ONE_TIME = tuple(A0.one_time)
KEM = tuple(A0.kem_one_time)
_last_resort = A0.last_resort
assert _last_resort is not None
LAST_RESORT: SignedPublicPreKey = _last_resort

ORIGIN = "https://relay.example"
_rng = seeded_rng(34)
NONCE = _rng(32)
MSG_ID = _rng(CLIENT_MSG_ID_SIZE)
AUTH_SIG = sign_relay_auth(
    A0.device.signing,
    origin=ORIGIN,
    user_id="alice",
    device_id=A0_ID,
    nonce=NONCE,
    spki_sha256=None,
)
# Real envelopes: the first message to Bob's device and its copy to Alice's other device.
TO_BOB = start_session(A0.device, BOB.peer(), B0.bundle(), None, NOW).encrypt(b"hi", NOW)
TO_A1 = start_session(A0.device, ALICE.peer(1), A1.bundle(), None, NOW).encrypt(b"hi", NOW)
BUNDLE = B0.bundle().to_bytes()
ALICE_LIST = ALICE.device_list.to_bytes()
BOB_LIST = BOB.device_list.to_bytes()


# --- every frame, with its layout ------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    name: str
    frame: Any
    layout: dict[int, cbor.Value]
    """The wire map, written from the docstrings with literal frame types."""

    @property
    def client(self) -> bool:
        return bool(self.frame.TYPE < 64)

    def decode(self, data: bytes) -> Any:
        return (decode_client_frame if self.client else decode_relay_frame)(data)

    def other_decode(self, data: bytes) -> Any:
        return (decode_relay_frame if self.client else decode_client_frame)(data)


def _pk(prekey: SignedPublicPreKey) -> dict[int, cbor.Value]:
    return {0: prekey.prekey_id, 1: prekey.created_at_ms, 2: prekey.public_key, 3: prekey.signature}


CASES = [
    Case(
        "auth",
        Auth("alice", A0_ID, AUTH_SIG),
        {0: 1, 1: "alice", 2: A0_ID, 3: AUTH_SIG},
    ),
    Case(
        "send",
        Send(MSG_ID, (("bob", ((B0_ID, TO_BOB),)), ("alice", ((A1_ID, TO_A1),)))),
        {0: 2, 1: MSG_ID, 2: [["bob", [[B0_ID, TO_BOB]]], ["alice", [[A1_ID, TO_A1]]]]},
    ),
    Case(
        "send_own_user_without_devices",
        Send(MSG_ID, (("bob", ((0, b""), (DEVICE_ID_MAX, TO_BOB))), ("alice", ()))),
        {0: 2, 1: MSG_ID, 2: [["bob", [[0, b""], [DEVICE_ID_MAX, TO_BOB]]], ["alice", []]]},
    ),
    Case("ack", Ack((7, 1, 2**63 - 1)), {0: 3, 1: [7, 1, 2**63 - 1]}),
    Case(
        "upload_prekeys",
        UploadPreKeys(2**32 - 1, SPK, ONE_TIME, KEM, LAST_RESORT),
        {
            0: 4,
            1: 2**32 - 1,
            2: _pk(SPK),
            3: [_pk(p) for p in ONE_TIME],
            4: [_pk(p) for p in KEM],
            5: _pk(LAST_RESORT),
        },
    ),
    Case(
        "upload_prekeys_empty",
        UploadPreKeys(0, None, (), (), None),
        {0: 4, 1: 0, 2: None, 3: [], 4: [], 5: None},
    ),
    Case("claim_bundle", ClaimBundle(5, "bob", B0_ID), {0: 5, 1: 5, 2: "bob", 3: B0_ID}),
    Case("get_device_list", GetDeviceList(6, "bob"), {0: 6, 1: 6, 2: "bob"}),
    Case("put_device_list", PutDeviceList(7, ALICE_LIST), {0: 7, 1: 7, 2: ALICE_LIST}),
    Case("key_check", KeyCheck(8), {0: 8, 1: 8}),
    Case(
        "hello",
        Hello(RELAY_PROTOCOL_VERSIONS, NONCE, MAX_RELAY_FRAME),
        {0: 64, 1: [1], 2: NONCE, 3: MAX_RELAY_FRAME},
    ),
    Case(
        "hello_bounds", Hello((255, 1), NONCE, 1 << 30), {0: 64, 1: [255, 1], 2: NONCE, 3: 1 << 30}
    ),
    Case("hello_no_version", Hello((), NONCE, 1024), {0: 64, 1: [], 2: NONCE, 3: 1024}),
    Case("auth_ok", AuthOk(NOW), {0: 65, 1: NOW}),
    Case("accepted", Accepted(MSG_ID, NOW), {0: 66, 1: MSG_ID, 2: NOW}),
    Case(
        "mismatch",
        Mismatch(
            MSG_ID,
            (MismatchedUser("bob", (1001, 1002), ()), MismatchedUser("alice", (), (A1_ID,))),
        ),
        {0: 67, 1: MSG_ID, 2: [["bob", [1001, 1002], []], ["alice", [], [A1_ID]]]},
    ),
    Case(
        "deliver",
        Deliver(1, "alice", A0_ID, NOW, TO_BOB),
        {0: 68, 1: 1, 2: "alice", 3: A0_ID, 4: NOW, 5: TO_BOB},
    ),
    Case("caught_up", CaughtUp(), {0: 69}),
    Case("prekeys_low", PreKeysLow(24, 0), {0: 70, 1: 24, 2: 0}),
    Case("bundle", BundleResult(9, BUNDLE), {0: 71, 1: 9, 2: BUNDLE}),
    Case("device_list", DeviceListResult(10, BOB_LIST), {0: 72, 1: 10, 2: BOB_LIST}),
    Case(
        "key_status",
        KeyStatus(11, SPK, LAST_RESORT, 5, 2**63 - 1, ALICE.device_list.digest),
        {
            0: 73,
            1: 11,
            2: _pk(SPK),
            3: _pk(LAST_RESORT),
            4: 5,
            5: 2**63 - 1,
            6: ALICE.device_list.digest,
        },
    ),
    Case(
        "key_status_empty",
        KeyStatus(12, None, None, 0, 0, bytes(32)),
        {0: 73, 1: 12, 2: None, 3: None, 4: 0, 5: 0, 6: bytes(32)},
    ),
    Case("ok", Ok(13), {0: 74, 1: 13}),
    Case(
        "error_for_request",
        Error(ErrorCode.RATE_LIMITED, "too many claims", 14),
        {0: 79, 1: 5, 2: "too many claims", 3: 14, 4: None},
    ),
    Case(
        "error_for_send",
        Error(ErrorCode.QUEUE_FULL, "", client_msg_id=MSG_ID),
        {0: 79, 1: 7, 2: "", 3: None, 4: MSG_ID},
    ),
    Case(
        "error_plain",
        Error(ErrorCode.NO_PREKEYS, "r" * 200, 0, None),
        {0: 79, 1: 16, 2: "r" * 200, 3: 0, 4: None},
    ),
]
BY_NAME = {c.name: c for c in CASES}
_case_ids = [c.name for c in CASES]


def test_the_cases_cover_every_frame_type() -> None:
    assert {c.frame.TYPE for c in CASES} == set(FrameType)
    assert {c.layout[0] for c in CASES} == {int(t) for t in FrameType}


@pytest.mark.parametrize("case", CASES, ids=_case_ids)
def test_layout(case: Case) -> None:
    assert case.frame.to_bytes() == cbor.encode(case.layout)


@pytest.mark.parametrize("case", CASES, ids=_case_ids)
def test_round_trip(case: Case) -> None:
    data = case.frame.to_bytes()
    decoded = case.decode(data)
    assert type(decoded) is type(case.frame)
    assert decoded == case.frame
    assert decoded.to_bytes() == data


@pytest.mark.parametrize("case", CASES, ids=_case_ids)
def test_the_other_side_refuses_it_as_an_unknown_frame_type(case: Case) -> None:
    with pytest.raises(UnknownFrameType) as caught:
        case.other_decode(case.frame.to_bytes())
    assert caught.value.frame_type == case.frame.TYPE
    assert isinstance(caught.value, DecodeError)


def test_decoded_values_still_verify() -> None:
    """The decoded frames carry the real signatures and documents, intact."""
    signing_pk = A0.device.signing.public_key
    upload = decode_client_frame(BY_NAME["upload_prekeys"].frame.to_bytes())
    assert isinstance(upload, UploadPreKeys)
    assert upload.signed_prekey is not None
    assert upload.last_resort is not None
    prekeys = [upload.signed_prekey, *upload.one_time, *upload.kem, upload.last_resort]
    assert [p.kind for p in prekeys] == [
        PreKeyKind.SIGNED,
        *[PreKeyKind.ONE_TIME] * len(ONE_TIME),
        *[PreKeyKind.KEM] * len(KEM),
        PreKeyKind.KEM_LAST_RESORT,
    ]
    for prekey in prekeys:
        prekey.verify("alice", A0_ID, signing_pk)

    status = decode_relay_frame(BY_NAME["key_status"].frame.to_bytes())
    assert isinstance(status, KeyStatus)
    assert status.signed_prekey is not None
    assert status.last_resort is not None
    status.signed_prekey.verify("alice", A0_ID, signing_pk)
    status.last_resort.verify("alice", A0_ID, signing_pk)
    assert status.device_list_digest == ALICE.device_list.digest

    auth = decode_client_frame(BY_NAME["auth"].frame.to_bytes())
    assert isinstance(auth, Auth)
    verify_relay_auth(
        signing_pk,
        auth.signature,
        origin=ORIGIN,
        user_id=auth.user_id,
        device_id=auth.device_id,
        nonce=NONCE,
        spki_sha256=None,
    )

    put = decode_client_frame(BY_NAME["put_device_list"].frame.to_bytes())
    assert isinstance(put, PutDeviceList)
    assert SignedDeviceList.from_bytes(put.signed_list).to_bytes() == ALICE_LIST

    result = decode_relay_frame(BY_NAME["bundle"].frame.to_bytes())
    assert isinstance(result, BundleResult)
    validate_bundle(PreKeyBundle.from_bytes(result.bundle), BOB.peer(), NOW)


def test_a_full_prekey_upload_fits_one_frame() -> None:
    """The limit's stated reason: 100 + 100 one-time prekeys and both long-lived ones."""
    full = UploadPreKeys(
        1,
        SPK,
        (ONE_TIME[0],) * MAX_PREKEYS_PER_UPLOAD,
        (KEM[0],) * MAX_PREKEYS_PER_UPLOAD,
        LAST_RESORT,
    )
    data = full.to_bytes()
    assert len(data) <= MAX_RELAY_FRAME
    assert decode_client_frame(data) == full


def test_enum_values_are_pinned() -> None:
    assert {t.name: t.value for t in FrameType} == {
        "AUTH": 1,
        "SEND": 2,
        "ACK": 3,
        "UPLOAD_PREKEYS": 4,
        "CLAIM_BUNDLE": 5,
        "GET_DEVICE_LIST": 6,
        "PUT_DEVICE_LIST": 7,
        "KEY_CHECK": 8,
        "HELLO": 64,
        "AUTH_OK": 65,
        "ACCEPTED": 66,
        "MISMATCH": 67,
        "DELIVER": 68,
        "CAUGHT_UP": 69,
        "PREKEYS_LOW": 70,
        "BUNDLE": 71,
        "DEVICE_LIST": 72,
        "KEY_STATUS": 73,
        "OK": 74,
        "ERROR": 79,
    }
    assert {c.name: c.value for c in ErrorCode} == {
        "MALFORMED": 1,
        "UNKNOWN_FRAME": 2,
        "NOT_AUTHENTICATED": 3,
        "AUTH_FAILED": 4,
        "RATE_LIMITED": 5,
        "IDEMPOTENCY_CONFLICT": 6,
        "QUEUE_FULL": 7,
        "BAD_SIGNATURE": 8,
        "PREKEY_ID_REUSED": 9,
        "DEVICE_LIST_ROLLBACK": 10,
        "UNKNOWN_USER": 11,
        "UNKNOWN_DEVICE": 12,
        "TOO_LARGE": 13,
        "UNAVAILABLE": 14,
        "INVALID": 15,
        "NO_PREKEYS": 16,
    }
    assert {c.name: c.value for c in CloseCode} == {
        "NORMAL": 1000,
        "GOING_AWAY": 1001,
        "PROTOCOL_ERROR": 1002,
        "POLICY_VIOLATION": 1008,
        "TOO_BIG": 1009,
        "INTERNAL_ERROR": 1011,
        "TRY_AGAIN_LATER": 1013,
        "CONNECTED_ELSEWHERE": 4001,
        "DEVICE_REMOVED": 4002,
        "OVERFLOW": 4003,
        "AUTH_TIMEOUT": 4004,
        "AUTH_FAILED": 4005,
        "RATE_LIMITED": 4006,
    }


@pytest.mark.parametrize("code", list(ErrorCode), ids=lambda c: c.name)
def test_every_error_code_round_trips(code: ErrorCode) -> None:
    error = Error(code, code.name.lower(), 3, MSG_ID)
    decoded = decode_relay_frame(error.to_bytes())
    assert decoded == error
    assert isinstance(decoded, Error)
    assert decoded.code is code


def test_error_reason_is_cut_to_its_limit_on_encoding() -> None:
    decoded = decode_relay_frame(Error(ErrorCode.INVALID, "x" * 500 + "y").to_bytes())
    assert decoded == Error(ErrorCode.INVALID, "x" * 200)


# --- refusals: the top level and the frame type -----------------------------------------------

DECODERS = [decode_client_frame, decode_relay_frame]
_decoder_ids = ["client", "relay"]


@pytest.mark.parametrize("decode", DECODERS, ids=_decoder_ids)
@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xff",
        b"\xa1\x00\x01\x00",  # trailing byte
        b"\xa2\x01\x01\x00\x01",  # unsorted keys
        b"\xa1\x00\x18\x01",  # non-minimal integer
        b"\xa1\x00\xf9\x3c\x00",  # a float
        cbor.encode([1, 2]),
        cbor.encode(1),
        cbor.encode(b"\x01"),
        cbor.encode("auth"),
        cbor.encode(None),
        cbor.encode({}),
        cbor.encode({1: 2}),
        cbor.encode({0: "auth"}),
        cbor.encode({0: b"\x01"}),
        cbor.encode({0: True}),
        cbor.encode({0: None}),
        cbor.encode({0: [1]}),
    ],
)
def test_not_a_frame(decode: Callable[[bytes], Any], data: bytes) -> None:
    with pytest.raises(DecodeError) as caught:
        decode(data)
    assert not isinstance(caught.value, UnknownFrameType)


@pytest.mark.parametrize("decode", DECODERS, ids=_decoder_ids)
@pytest.mark.parametrize("frame_type", [0, 9, 63, 75, 78, 80, 255, 2**64 - 1, -1, -(2**64)])
def test_unknown_frame_type(decode: Callable[[bytes], Any], frame_type: int) -> None:
    extras: list[dict[int, cbor.Value]] = [{}, {1: 2, 7: b"x"}]
    for extra in extras:
        with pytest.raises(UnknownFrameType, match="unknown frame type") as caught:
            decode(cbor.encode({0: frame_type, **extra}))
        assert caught.value.frame_type == frame_type


def _sized(build: Callable[[bytes], bytes], size: int) -> bytes:
    """``build(filler)`` with the filler chosen so the result is exactly ``size`` bytes."""
    n = size - len(build(b""))
    for _ in range(4):
        data = build(bytes(n))
        if len(data) == size:
            return data
        n -= len(data) - size
    raise AssertionError(f"cannot build {size} bytes")


SIZED_BUILDERS: list[tuple[str, Callable[[bytes], bytes], Callable[[bytes], Any]]] = [
    ("client", lambda b: PutDeviceList(1, b).to_bytes(), decode_client_frame),
    ("relay", lambda b: Deliver(1, "alice", 1, NOW, b).to_bytes(), decode_relay_frame),
    (
        "register",
        lambda b: RegisterRequest(b, NONCE, bytes(64), bytes(64), None).to_bytes(),
        RegisterRequest.from_bytes,
    ),
]


@pytest.mark.parametrize(
    ("build", "decode"), [b[1:] for b in SIZED_BUILDERS], ids=[b[0] for b in SIZED_BUILDERS]
)
def test_size_limit(build: Callable[[bytes], bytes], decode: Callable[[bytes], Any]) -> None:
    largest = _sized(build, MAX_RELAY_FRAME)
    assert decode(largest).to_bytes() == largest
    too_large = _sized(build, MAX_RELAY_FRAME + 1)
    with pytest.raises(CBORTooLarge):
        decode(too_large)


# --- refusals: keys ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("case", "key"),
    [(c, k) for c in CASES for k in c.layout if k != 0],
    ids=[f"{c.name}-{k}" for c in CASES for k in c.layout if k != 0],
)
def test_missing_key(case: Case, key: int) -> None:
    m = {k: v for k, v in case.layout.items() if k != key}
    with pytest.raises(DecodeError, match=r"missing field\(s\)"):
        case.decode(cbor.encode(m))


@pytest.mark.parametrize("case", CASES, ids=_case_ids)
@pytest.mark.parametrize("key", [9, 255])
def test_unknown_key(case: Case, key: int) -> None:
    with pytest.raises(DecodeError, match=r"unknown field\(s\)"):
        case.decode(cbor.encode({**case.layout, key: 0}))


# --- refusals: fields ------------------------------------------------------------------------

U63 = 2**63 - 1
BAD_USERS: list[cbor.Value] = ["Alice", "", "-alice", "a" * 64, "al ice", 5, b"alice", None]
BAD_DEVICES: list[cbor.Value] = [-1, DEVICE_ID_MAX + 1, "1", True, None, b"\x01"]
BAD_REQS: list[cbor.Value] = [-1, 2**32, "1", False, None]
BAD_MSG_IDS: list[cbor.Value] = [bytes(15), bytes(17), b"", "id", None, 1]
OTK = _pk(ONE_TIME[0])
KEM_PK = _pk(KEM[0])
SMALL_ORDER: dict[int, cbor.Value] = {**OTK, 2: bytes(32)}
PREKEY = "prekey|public key|signature"
BAD_PREKEY_VALUES: list[cbor.Value] = [
    1,
    [],
    {0: 1, 1: 2, 2: ONE_TIME[0].public_key},  # no signature
    {**OTK, 3: bytes(63)},
    {**OTK, 0: 2**32},
    SMALL_ORDER,
    KEM_PK,  # an ML-KEM key where an X25519 key goes
]


def _cases(name: str, key: int, bads: list[cbor.Value], match: str) -> list[Any]:
    return [
        pytest.param(name, key, bad, match, id=f"{name}-{key}-{i}") for i, bad in enumerate(bads)
    ]


FIELD_REFUSALS = [
    # auth
    *_cases("auth", 1, BAD_USERS, "user id"),
    *_cases("auth", 2, BAD_DEVICES, "device id"),
    *_cases("auth", 3, [bytes(63), bytes(65), "sig", None], "signature"),
    # send
    *_cases("send", 1, BAD_MSG_IDS, "client message id"),
    *_cases("send", 2, [None, {}, "bob", b""], "addressed users: expected a list"),
    *_cases("send", 2, [[]], "no addressed user"),
    *_cases(
        "send",
        2,
        [[["u" + str(i), [[1, b"c"]]] for i in range(MAX_ADDRESSED_USERS + 1)]],
        "addressed users: more than 2",
    ),
    *_cases("send", 2, [["bob"], [None], [b"x"]], "addressed user: expected a list"),
    *_cases("send", 2, [[[]], [["bob"]]], r"expected \[user_id, devices\]"),
    *_cases("send", 2, [[["bob", [], []]]], "addressed user: more than 2"),
    *_cases("send", 2, [[[u, []]] for u in BAD_USERS], "user id"),
    *_cases("send", 2, [[["bob", None]], [["bob", {}]]], "addressed devices: expected a list"),
    *_cases(
        "send",
        2,
        [[["bob", [[i, b"c"] for i in range(MAX_DEVICES_PER_LIST + 1)]]]],
        f"addressed devices: more than {MAX_DEVICES_PER_LIST}",
    ),
    *_cases("send", 2, [[["bob", [1]]], [["bob", [b"c"]]]], "addressed device: expected a list"),
    *_cases(
        "send",
        2,
        [[["bob", [[]]]], [["bob", [[1]]]], [["bob", [[1, "c"]]]], [["bob", [[1, None]]]]],
        r"expected \[device_id, ciphertext\]",
    ),
    *_cases("send", 2, [[["bob", [[1, b"c", b"d"]]]]], "addressed device: more than 2"),
    *_cases("send", 2, [[["bob", [[d, b"c"]]]] for d in BAD_DEVICES], "device id"),
    *_cases(
        "send",
        2,
        [[["bob", [[1, b"c"], [1, b"c"]]]], [["bob", [[1, b"c"], [2, b"d"], [1, b"e"]]]]],
        "a device is addressed twice",
    ),
    *_cases(
        "send",
        2,
        [[["bob", [[1, b"c"]]], ["bob", [[2, b"d"]]]], [["bob", []], ["bob", []]]],
        "a user is addressed twice",
    ),
    # ack
    *_cases("ack", 1, [None, 1, {}], "acknowledged sequences: expected a list"),
    *_cases("ack", 1, [[]], "no sequence number"),
    *_cases("ack", 1, [[1] * (MAX_ACKS_PER_FRAME + 1)], "more than 1000"),
    *_cases(
        "ack", 1, [[0], [-1], [U63 + 1], [True], ["1"], [b"\x01"], [None], [[1]], [1, 0]], "ack:"
    ),
    # upload prekeys
    *_cases("upload_prekeys", 1, BAD_REQS, "request id"),
    *_cases("upload_prekeys", 2, BAD_PREKEY_VALUES, PREKEY),
    *_cases("upload_prekeys", 3, [[v] for v in BAD_PREKEY_VALUES], PREKEY),
    *_cases("upload_prekeys", 3, [None, OTK], "one_time prekeys: expected a list"),
    *_cases(
        "upload_prekeys", 3, [[OTK] * (MAX_PREKEYS_PER_UPLOAD + 1)], "one_time prekeys: more than"
    ),
    *_cases("upload_prekeys", 4, [[OTK], [{**KEM_PK, 2: b"\xff" * 1184}], [None]], PREKEY),
    *_cases("upload_prekeys", 4, [[KEM_PK] * (MAX_PREKEYS_PER_UPLOAD + 1)], "kem prekeys: more"),
    *_cases("upload_prekeys", 5, [OTK, [], 0], PREKEY),
    # claim bundle, get / put device list, key check
    *_cases("claim_bundle", 1, BAD_REQS, "request id"),
    *_cases("claim_bundle", 2, BAD_USERS, "user id"),
    *_cases("claim_bundle", 3, BAD_DEVICES, "device id"),
    *_cases("get_device_list", 1, BAD_REQS, "request id"),
    *_cases("get_device_list", 2, BAD_USERS, "user id"),
    *_cases("put_device_list", 1, BAD_REQS, "request id"),
    *_cases("put_device_list", 2, ["list", None, [ALICE_LIST]], "signed device list"),
    *_cases("key_check", 1, BAD_REQS, "request id"),
    # hello
    *_cases("hello", 1, [None, 1, b"\x01"], "versions: expected a list"),
    *_cases("hello", 1, [[1] * 17], "versions: more than 16"),
    *_cases("hello", 1, [[0], [256], [-1], [True], ["1"], [None], [1, 0]], "hello: versions"),
    *_cases("hello", 2, [bytes(31), bytes(33), "nonce", None], "nonce"),
    *_cases("hello", 3, [1023, (1 << 30) + 1, -1, "1", None], "max frame"),
    # auth ok, accepted
    *_cases("auth_ok", 1, [-1, U63 + 1, "1", None, True], "relay time"),
    *_cases("accepted", 1, BAD_MSG_IDS, "client message id"),
    *_cases("accepted", 2, [-1, U63 + 1, "1", None], "accepted at"),
    # mismatch
    *_cases("mismatch", 1, BAD_MSG_IDS, "client message id"),
    *_cases("mismatch", 2, [None, "bob"], "mismatched users: expected a list"),
    *_cases("mismatch", 2, [[["a", [], []], ["b", [], []], ["c", [], []]]], "more than 2"),
    *_cases("mismatch", 2, [["bob"], [None]], "mismatched user: expected a list"),
    *_cases("mismatch", 2, [[[]], [["bob", []]]], r"expected \[user_id, missing, extra\]"),
    *_cases("mismatch", 2, [[["bob", [], [], []]]], "mismatched user: more than 3"),
    *_cases("mismatch", 2, [[[u, [], []]] for u in BAD_USERS], "user id"),
    *_cases("mismatch", 2, [[["bob", None, []]], [["bob", 1, []]]], "missing devices: expected"),
    *_cases("mismatch", 2, [[["bob", [], None]]], "extra devices: expected"),
    *_cases(
        "mismatch",
        2,
        [[["bob", list(range(MAX_DEVICES_PER_LIST + 1)), []]]],
        "missing devices: more than",
    ),
    *_cases("mismatch", 2, [[["bob", [d], []]] for d in BAD_DEVICES], "device id"),
    *_cases("mismatch", 2, [[["bob", [], [d]]] for d in BAD_DEVICES], "device id"),
    *_cases("mismatch", 2, [[["bob", [1, 2, 1], []]]], "missing devices: duplicate device id"),
    *_cases("mismatch", 2, [[["bob", [], [3, 3]]]], "extra devices: duplicate device id"),
    # deliver
    *_cases("deliver", 1, [0, -1, U63 + 1, "1", None], "sequence"),
    *_cases("deliver", 2, BAD_USERS, "user id"),
    *_cases("deliver", 3, BAD_DEVICES, "device id"),
    *_cases("deliver", 4, [-1, U63 + 1, None], "accepted at"),
    *_cases("deliver", 5, ["ct", None, [TO_BOB]], "ciphertext"),
    # prekeys low
    *_cases("prekeys_low", 1, [-1, U63 + 1, None, "1"], "one-time left"),
    *_cases("prekeys_low", 2, [-1, U63 + 1, None, "1"], "KEM left"),
    # bundle, device list
    *_cases("bundle", 1, BAD_REQS, "request id"),
    *_cases("bundle", 2, ["bundle", None], "bundle"),
    *_cases("device_list", 1, BAD_REQS, "request id"),
    *_cases("device_list", 2, ["list", None], "signed device list"),
    # key status
    *_cases("key_status", 1, BAD_REQS, "request id"),
    *_cases("key_status", 2, BAD_PREKEY_VALUES, PREKEY),
    *_cases("key_status", 3, [OTK, [], 0, {**KEM_PK, 3: b""}], PREKEY),
    *_cases("key_status", 4, [-1, U63 + 1, None], "one-time left"),
    *_cases("key_status", 5, [-1, U63 + 1, None], "KEM left"),
    *_cases("key_status", 6, [bytes(31), bytes(33), None, "digest"], "device list digest"),
    # ok
    *_cases("ok", 1, BAD_REQS, "request id"),
    # error
    *_cases("error_plain", 1, [0, 17, 78, 255], "unknown error code"),
    *_cases("error_plain", 1, [-1, 256, "1", None, True], "error code"),
    *_cases("error_plain", 2, [None, 1, b"reason", "r" * 201], "reason"),
    *_cases("error_plain", 3, [-1, 2**32, "1", True, b""], "request id"),
    *_cases("error_plain", 4, [*BAD_MSG_IDS[:-2], 1], "client message id"),
]


@pytest.mark.parametrize(("name", "key", "bad", "match"), FIELD_REFUSALS)
def test_field_refusal(name: str, key: int, bad: cbor.Value, match: str) -> None:
    case = BY_NAME[name]
    data = cbor.encode({**case.layout, key: bad})
    with pytest.raises(DecodeError, match=match) as caught:
        case.decode(data)
    assert not isinstance(caught.value, UnknownFrameType)


def test_user_ids_are_refused_with_their_own_error() -> None:
    with pytest.raises(InvalidUserId):
        decode_client_frame(cbor.encode({**BY_NAME["auth"].layout, 1: "Alice"}))


# --- the register statement --------------------------------------------------------------------

SIGNERS = {"master": CAROL.master, "device": C0.device.signing}


def test_register_statement_layout() -> None:
    pk = CAROL.master.public_key
    statement = register_statement("carol", C0_ID, NONCE, pk)
    assert statement == {0: "carol", 1: C0_ID, 2: NONCE, 3: pk}
    signature = sign_register(CAROL.master, "carol", C0_ID, NONCE)
    assert len(signature) == 64
    assert signed_message(Label.REGISTER, statement).startswith(b"e2ee/v1/register\x00")
    assert signature == CAROL.master.sign(Label.REGISTER, statement)


@pytest.mark.parametrize("signer", list(SIGNERS), ids=list(SIGNERS))
def test_register_sign_and_verify(signer: str) -> None:
    key = SIGNERS[signer]
    signature = sign_register(key, "carol", C0_ID, NONCE)
    verify_register(key.public_key, signature, "carol", C0_ID, NONCE)


@pytest.mark.parametrize("signer", list(SIGNERS), ids=list(SIGNERS))
@pytest.mark.parametrize(
    ("field", "other"),
    [
        ("nonce", bytes(32)),
        ("user_id", "mallory"),
        ("device_id", C0_ID + 1),
        ("signer_pk", "other"),
    ],
)
def test_register_binds_every_field(signer: str, field: str, other: object) -> None:
    key = SIGNERS[signer]
    values: dict[str, Any] = {
        "signer_pk": key.public_key,
        "user_id": "carol",
        "device_id": C0_ID,
        "nonce": NONCE,
    }
    signature = sign_register(key, values["user_id"], values["device_id"], values["nonce"])
    if other == "other":  # the other signer's key
        other = next(k for k in SIGNERS.values() if k is not key).public_key
    with pytest.raises(BadSignature):
        verify_register(signature=signature, **{**values, field: other})


def test_register_binds_the_named_signer() -> None:
    """A statement naming the device key, signed by the master key, verifies for neither."""
    master, device = CAROL.master, C0.device.signing
    forged = master.sign(
        Label.REGISTER, register_statement("carol", C0_ID, NONCE, device.public_key)
    )
    for pk in (master.public_key, device.public_key):
        with pytest.raises(BadSignature):
            verify_register(pk, forged, "carol", C0_ID, NONCE)


def test_register_refuses_other_labels_and_bad_signatures() -> None:
    key = CAROL.master
    statement = register_statement("carol", C0_ID, NONCE, key.public_key)
    for signature in (
        key.sign(Label.RELAY_AUTH, statement),
        bytes(64),
        sign_register(key, "carol", C0_ID, NONCE)[:63],
        sign_register(key, "carol", C0_ID, NONCE) + b"\x00",
    ):
        with pytest.raises(BadSignature):
            verify_register(key.public_key, signature, "carol", C0_ID, NONCE)


@pytest.mark.parametrize(
    ("field", "bad", "error"),
    [
        ("nonce", bytes(31), InvalidArgument),
        ("nonce", bytes(33), InvalidArgument),
        ("nonce", b"", InvalidArgument),
        ("signer_pk", bytes(31), InvalidArgument),
        ("signer_pk", bytes(33), InvalidArgument),
        ("user_id", "Carol", InvalidUserId),
        ("user_id", "", InvalidUserId),
        ("device_id", -1, DecodeError),
        ("device_id", DEVICE_ID_MAX + 1, DecodeError),
    ],
)
def test_register_malformed_values(field: str, bad: object, error: type[Exception]) -> None:
    values: dict[str, Any] = {
        "user_id": "carol",
        "device_id": C0_ID,
        "nonce": NONCE,
        "signer_pk": CAROL.master.public_key,
    }
    bad_values = {**values, field: bad}
    with pytest.raises(error):
        register_statement(**bad_values)
    with pytest.raises(error):
        verify_register(signature=bytes(64), **bad_values)
    if field != "signer_pk":
        del bad_values["signer_pk"]
        with pytest.raises(error):
            sign_register(CAROL.master, **bad_values)


# --- the registration body ---------------------------------------------------------------------

CAROL_LIST = CAROL.device_list.to_bytes()
MASTER_SIG = sign_register(CAROL.master, "carol", C0_ID, NONCE)
DEVICE_SIG = sign_register(C0.device.signing, "carol", C0_ID, NONCE)
REGISTER_LAYOUT: dict[int, cbor.Value] = {
    0: CAROL_LIST,
    1: NONCE,
    2: MASTER_SIG,
    3: DEVICE_SIG,
    4: None,
}
REGISTRATIONS = [
    (RegisterRequest(CAROL_LIST, NONCE, MASTER_SIG, DEVICE_SIG), REGISTER_LAYOUT),
    (
        RegisterRequest(CAROL_LIST, NONCE, MASTER_SIG, DEVICE_SIG, "invite-2024.x"),
        {**REGISTER_LAYOUT, 4: "invite-2024.x"},
    ),
    (
        RegisterRequest(CAROL_LIST, NONCE, MASTER_SIG, DEVICE_SIG, "t" * 256),
        {**REGISTER_LAYOUT, 4: "t" * 256},
    ),
    (
        RegisterRequest(CAROL_LIST, NONCE, MASTER_SIG, DEVICE_SIG, ""),
        {**REGISTER_LAYOUT, 4: ""},
    ),
]


@pytest.mark.parametrize(("request_", "layout"), REGISTRATIONS)
def test_register_request_round_trip(
    request_: RegisterRequest, layout: dict[int, cbor.Value]
) -> None:
    data = request_.to_bytes()
    assert data == cbor.encode(layout)
    decoded = RegisterRequest.from_bytes(data)
    assert decoded == request_
    assert decoded.to_bytes() == data


def test_register_request_carries_what_the_relay_checks() -> None:
    decoded = RegisterRequest.from_bytes(REGISTRATIONS[0][0].to_bytes())
    signed = SignedDeviceList.from_bytes(decoded.signed_list)
    statement = signed.statement
    assert statement.user_id == "carol"
    assert statement.version == 1
    (entry,) = statement.devices
    verify_register(
        statement.master_pk, decoded.master_signature, "carol", entry.device_id, decoded.nonce
    )
    verify_register(
        entry.signing_pk, decoded.device_signature, "carol", entry.device_id, decoded.nonce
    )
    with pytest.raises(BadSignature):  # the two signatures are not interchangeable
        verify_register(
            statement.master_pk, decoded.device_signature, "carol", entry.device_id, decoded.nonce
        )


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xff",
        cbor.encode([CAROL_LIST, NONCE, MASTER_SIG, DEVICE_SIG, None]),
        cbor.encode(CAROL_LIST),
        cbor.encode(None),
        *[
            cbor.encode({k: v for k, v in REGISTER_LAYOUT.items() if k != key})
            for key in REGISTER_LAYOUT
        ],
        cbor.encode({**REGISTER_LAYOUT, 5: None}),
        cbor.encode({**REGISTER_LAYOUT, 0: "list"}),
        cbor.encode({**REGISTER_LAYOUT, 0: None}),
        cbor.encode({**REGISTER_LAYOUT, 1: bytes(31)}),
        cbor.encode({**REGISTER_LAYOUT, 1: bytes(33)}),
        cbor.encode({**REGISTER_LAYOUT, 1: None}),
        cbor.encode({**REGISTER_LAYOUT, 2: MASTER_SIG[:63]}),
        cbor.encode({**REGISTER_LAYOUT, 2: None}),
        cbor.encode({**REGISTER_LAYOUT, 3: DEVICE_SIG + b"\x00"}),
        cbor.encode({**REGISTER_LAYOUT, 3: "sig"}),
        cbor.encode({**REGISTER_LAYOUT, 4: 5}),
        cbor.encode({**REGISTER_LAYOUT, 4: b"token"}),
        cbor.encode({**REGISTER_LAYOUT, 4: False}),
        cbor.encode({**REGISTER_LAYOUT, 4: "t" * 257}),
        BY_NAME["auth"].frame.to_bytes(),  # a frame is not a registration
    ],
)
def test_register_request_refusals(data: bytes) -> None:
    with pytest.raises(DecodeError):
        RegisterRequest.from_bytes(data)


# --- fuzzing ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    name: str
    decode: Callable[[bytes], Any]
    seeds: list[bytes]


TARGETS = [
    Target("client", decode_client_frame, [c.frame.to_bytes() for c in CASES if c.client]),
    Target("relay", decode_relay_frame, [c.frame.to_bytes() for c in CASES if not c.client]),
    Target("register", RegisterRequest.from_bytes, [r.to_bytes() for r, _ in REGISTRATIONS]),
]
_target_ids = [t.name for t in TARGETS]


def _run(target: Target, data: bytes) -> None:
    """Decode ``data``: a DecodeError is fine, any other exception fails the test; an
    accepted input re-encodes to the very same bytes."""
    try:
        value = target.decode(data)
    except DecodeError:
        return
    assert value.to_bytes() == data


_OPS = ("flip", "set", "insert", "delete", "truncate", "append")


@st.composite
def byte_mutations(draw: st.DrawFn, seeds: list[bytes]) -> bytes:
    """A valid encoding with one to four random byte edits."""
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(1, 4))):
        size = len(data)
        pos = draw(st.integers(0, max(size - 1, 0)) | st.integers(0, min(size, 48)))
        op = draw(st.sampled_from(_OPS))
        if op in ("flip", "set") and pos >= size:
            op = "append"
        if op == "flip":
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "set":
            data[pos] = draw(st.integers(0, 255))
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=9))
        elif op == "delete":
            del data[pos : pos + draw(st.integers(1, 9))]
        elif op == "truncate":
            del data[pos:]
        else:
            data += draw(st.binary(min_size=1, max_size=9))
    return bytes(data)


_ATOMS = (
    st.integers(-(2**64), 2**64 - 1)
    | st.integers(-2, 2**32 + 1)
    | st.binary(max_size=40)
    | st.sampled_from([bytes(16), bytes(32), bytes(64), NONCE])
    | st.text(max_size=8)
    | st.sampled_from(["alice", "bob", "Alice", ""])
    | st.booleans()
    | st.none()
)
CBOR_VALUES: st.SearchStrategy[cbor.Value] = st.recursive(
    _ATOMS,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.integers(0, 6) | st.integers(0, 255), inner, max_size=4)
    ),
    max_leaves=12,
)


def _replace_somewhere(draw: st.DrawFn, value: cbor.Value, depth: int = 0) -> cbor.Value:
    """``value`` with one nested item replaced, dropped or duplicated."""
    if isinstance(value, dict) and value and draw(st.integers(0, 3)) and depth < 4:
        key = draw(st.sampled_from(sorted(value)))
        if draw(st.integers(0, 9)) == 0:
            return {k: v for k, v in value.items() if k != key}
        return {**value, key: _replace_somewhere(draw, value[key], depth + 1)}
    if isinstance(value, list) and value and draw(st.integers(0, 3)) and depth < 4:
        index = draw(st.integers(0, len(value) - 1))
        copy = list(value)
        choice = draw(st.integers(0, 9))
        if choice == 0:
            del copy[index]
        elif choice == 1:
            copy.append(copy[index])
        else:
            copy[index] = _replace_somewhere(draw, value[index], depth + 1)
        return copy
    return draw(CBOR_VALUES)


@st.composite
def structural_mutations(draw: st.DrawFn, seeds: list[bytes]) -> bytes:
    """A valid encoding with one item somewhere inside replaced by an arbitrary value."""
    value = cbor.decode(draw(st.sampled_from(seeds)), max_size=MAX_RELAY_FRAME)
    if isinstance(value, dict) and 0 in value and draw(st.booleans()):
        # Keep the frame type, so the field checks are reached.
        mutated = _replace_somewhere(draw, {k: v for k, v in value.items() if k != 0})
        if isinstance(mutated, dict):
            mutated = {**mutated, 0: value[0]}
    else:
        mutated = _replace_somewhere(draw, value)
    return cbor.encode(mutated)


@st.composite
def frame_shaped(draw: st.DrawFn) -> bytes:
    """A map with a frame type at key 0 and arbitrary values at the usual keys."""
    frame_type = draw(st.sampled_from([int(t) for t in FrameType]) | st.integers(-1, 300))
    fields = draw(st.dictionaries(st.integers(1, 7), CBOR_VALUES, max_size=7))
    return cbor.encode({0: frame_type, **fields})


@pytest.mark.parametrize("target", TARGETS, ids=_target_ids)
@DECODER_SETTINGS
@given(data=st.binary())
def test_arbitrary_bytes(target: Target, data: bytes) -> None:
    _run(target, data)


@pytest.mark.parametrize("target", TARGETS, ids=_target_ids)
@DECODER_SETTINGS
@given(data=st.data())
def test_byte_mutations_of_valid_frames(target: Target, data: st.DataObject) -> None:
    _run(target, data.draw(byte_mutations(target.seeds)))


@pytest.mark.parametrize("target", TARGETS, ids=_target_ids)
@DECODER_SETTINGS
@given(data=st.data())
def test_structural_mutations_of_valid_frames(target: Target, data: st.DataObject) -> None:
    _run(target, data.draw(structural_mutations(target.seeds)))


@pytest.mark.parametrize("target", TARGETS[:2], ids=_target_ids[:2])
@DECODER_SETTINGS
@given(data=frame_shaped())
def test_arbitrary_frame_shaped_maps(target: Target, data: bytes) -> None:
    _run(target, data)


@pytest.mark.parametrize("target", TARGETS, ids=_target_ids)
def test_every_proper_prefix_is_refused(target: Target) -> None:
    """A cut connection is never a frame."""
    for seed in target.seeds:
        for cut in {*range(min(len(seed), 40)), *range(0, len(seed), 101), len(seed) - 1}:
            with pytest.raises(DecodeError):
                target.decode(seed[:cut])
