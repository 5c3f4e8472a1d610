"""The sans-I/O relay protocol object: handshake, correlation and typed refusals, all
in memory (CONVENTIONS 3)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from client_sdk.errors import (
    AuthFailed,
    IdempotencyConflict,
    MalformedFrame,
    NoCommonVersion,
    QueueFull,
    RateLimited,
    RelayRefused,
    UnknownUser,
    UsageError,
)
from client_sdk.transport import (
    Answer,
    Authenticated,
    CaughtUpEvent,
    Delivery,
    PreKeysLowEvent,
    RelayNotice,
    RelayProtocol,
    State,
)
from client_sdk.transport.refusals import ERROR_CLASSES, refusal
from e2ee.auth import verify_relay_auth
from e2ee.relay_frames import (
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
    ErrorCode,
    Hello,
    KeyCheck,
    Mismatch,
    MismatchedUser,
    Ok,
    PreKeysLow,
    Send,
    decode_client_frame,
)
from tests.client_sdk.transport.helpers import identity
from tests.server.relay_client import ORIGIN, make_account

NONCE = bytes(range(32))
SPKI = b"\x07" * 32
MSG = b"m" * 16


def _open(spki: bytes | None = SPKI) -> tuple[RelayProtocol, bytes]:
    account = make_account()
    proto = RelayProtocol(origin=ORIGIN, identity=identity(account), spki_sha256=spki)
    assert proto.receive(Hello((1,), NONCE, 1 << 20).to_bytes()) == []
    (auth_bytes,) = proto.data_to_send()
    auth = decode_client_frame(auth_bytes)
    assert isinstance(auth, Auth)
    # The signature is over our origin, the relay's nonce and the observed SPKI hash.
    verify_relay_auth(
        account.devices[0].device.signing.public_key,
        auth.signature,
        origin=ORIGIN,
        user_id=account.user_id,
        device_id=1001,
        nonce=NONCE,
        spki_sha256=spki,
    )
    assert proto.state is State.AWAITING_AUTH_OK
    assert proto.receive(AuthOk(5).to_bytes()) == [Authenticated(5)]
    assert proto.state.value == State.OPEN.value
    return proto, auth.signature


@pytest.mark.parametrize("spki", [SPKI, None])
def test_handshake_signs_origin_nonce_and_spki(spki: bytes | None) -> None:
    _open(spki)


def test_no_common_version_is_typed_and_signs_nothing() -> None:
    proto = RelayProtocol(origin=ORIGIN, identity=identity(make_account()), spki_sha256=None)
    with pytest.raises(NoCommonVersion) as info:
        proto.receive(Hello((2, 3), NONCE, 1 << 20).to_bytes())
    assert info.value.offered == (2, 3)
    assert proto.data_to_send() == []
    assert proto.state is State.CLOSED


def test_frames_out_of_order_are_malformed() -> None:
    proto = RelayProtocol(origin=ORIGIN, identity=identity(make_account()), spki_sha256=None)
    with pytest.raises(MalformedFrame):
        proto.receive(AuthOk(1).to_bytes())
    assert proto.state is State.CLOSED
    with pytest.raises(UsageError):
        proto.receive(Hello((1,), NONCE, 1 << 20).to_bytes())


def test_auth_refusal_is_typed() -> None:
    proto = RelayProtocol(origin=ORIGIN, identity=identity(make_account()), spki_sha256=None)
    proto.receive(Hello((1,), NONCE, 1 << 20).to_bytes())
    with pytest.raises(AuthFailed) as info:
        proto.receive(Error(ErrorCode.AUTH_FAILED, "no").to_bytes())
    assert info.value.code is ErrorCode.AUTH_FAILED


@given(st.binary(max_size=200))
def test_arbitrary_bytes_give_malformed_frame_or_are_valid(data: bytes) -> None:
    proto, _ = _open()
    try:
        proto.receive(data)
    except MalformedFrame:
        assert proto.state is State.CLOSED


def test_events_and_correlation() -> None:
    proto, _ = _open()
    assert proto.receive(Deliver(3, "bob", 1001, 9, b"secret").to_bytes()) == [
        Delivery(3, "bob", 1001, 9, b"secret")
    ]
    assert "secret" not in repr(Delivery(3, "bob", 1001, 9, b"secret"))
    assert proto.receive(CaughtUp().to_bytes()) == [CaughtUpEvent()]
    assert proto.receive(PreKeysLow(3, 4).to_bytes()) == [PreKeysLowEvent(3, 4)]

    proto.send(MSG, [("bob", [(1001, b"ct")])])
    req = proto.claim_bundle("bob", 1001)
    frames = [decode_client_frame(f) for f in proto.data_to_send()]
    assert frames == [Send(MSG, (("bob", ((1001, b"ct"),)),)), ClaimBundle(req, "bob", 1001)]
    with pytest.raises(UsageError):
        proto.send(MSG, [("bob", [(1001, b"ct")])])  # the same id is in flight
    # Answers come back in any order, each to its request.
    (bundle,) = proto.receive(BundleResult(req, b"bundle").to_bytes())
    assert bundle == Answer(req, BundleResult(req, b"bundle"))
    (accepted,) = proto.receive(Accepted(MSG, 7).to_bytes())
    assert accepted == Answer(MSG, Accepted(MSG, 7))
    # A second answer to the same request is dropped (a late duplicate), not a crash.
    assert proto.receive(Accepted(MSG, 7).to_bytes()) == []

    proto.send(MSG, [("bob", [(1001, b"ct")])])
    proto.data_to_send()
    mismatch = Mismatch(MSG, (MismatchedUser("bob", (1002,), ()),))
    assert proto.receive(mismatch.to_bytes()) == [Answer(MSG, mismatch)]


def test_error_frames_are_typed_by_the_table() -> None:
    proto, _ = _open()
    proto.send(MSG, [("bob", [(1001, b"ct")])])
    req = proto.key_check()
    proto.data_to_send()
    (sent,) = proto.receive(Error(ErrorCode.QUEUE_FULL, "full", None, MSG).to_bytes())
    assert isinstance(sent, Answer) and isinstance(sent.result, QueueFull)
    (checked,) = proto.receive(Error(ErrorCode.UNKNOWN_USER, "who", req).to_bytes())
    assert isinstance(checked, Answer) and isinstance(checked.result, UnknownUser)
    (notice,) = proto.receive(Error(ErrorCode.RATE_LIMITED, "slow down").to_bytes())
    assert isinstance(notice, RelayNotice) and isinstance(notice.error, RateLimited)
    assert isinstance(refusal(ErrorCode.IDEMPOTENCY_CONFLICT, "x"), IdempotencyConflict)
    for code in ErrorCode:
        error = refusal(code, "r")
        assert type(error) is ERROR_CLASSES.get(code, RelayRefused)
        assert error.code is code
    assert type(refusal(250, "unknown")) is RelayRefused


def test_answers_to_unsent_or_wrongly_typed_requests_are_malformed() -> None:
    proto, _ = _open()
    with pytest.raises(MalformedFrame):
        proto.receive(Ok(99).to_bytes())  # never sent
    proto, _ = _open()
    req = proto.claim_bundle("bob", 1001)
    with pytest.raises(MalformedFrame):
        proto.receive(DeviceListResult(req, b"x").to_bytes())
    proto, _ = _open()
    req = proto.key_check()
    proto.forget(req)  # timed out: a late answer is dropped
    assert proto.receive(Ok(req).to_bytes()) == []
    assert isinstance(decode_client_frame(proto.data_to_send()[0]), KeyCheck)


def test_requests_need_an_open_connection_and_acks_split() -> None:
    proto = RelayProtocol(origin=ORIGIN, identity=identity(make_account()), spki_sha256=None)
    with pytest.raises(UsageError):
        proto.key_check()
    proto, _ = _open()
    with pytest.raises(UsageError):
        proto.send(b"short", [("bob", [(1001, b"ct")])])
    proto.ack(range(1, 2502))
    frames = [decode_client_frame(f) for f in proto.data_to_send()]
    assert [len(f.seqs) for f in frames if isinstance(f, Ack)] == [1000, 1000, 501]


def test_repr_shows_no_secret() -> None:
    proto, signature = _open()
    account_identity = proto._identity
    text = repr(proto) + repr(account_identity)
    assert signature.hex() not in text
    assert account_identity.signing.seed().hex() not in text
    assert NONCE.hex() not in text
