"""The inner payload (e2ee/payload.py; docs/protocol.md 6).

Every type round trips; the encoding is padded with zero bytes to the smallest
multiple of 160 bytes; limits, unknown types, ``sync_sent`` from other users, bad
padding and bodies of the wrong type are refused; ``repr`` never shows a body or a key.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from e2ee import cbor
from e2ee.errors import DecodeError, InvalidArgument, LimitExceeded, UntrustedIdentity
from e2ee.limits import MAX_PLAINTEXT, PAYLOAD_PADDING_BLOCK
from e2ee.payload import (
    PAYLOAD_VERSION,
    AttachmentRef,
    Body,
    DeviceListNotice,
    Payload,
    PayloadType,
    RetryRequest,
    SyncSent,
    UnknownPayloadType,
)
from tests.hypothesis_profiles import DECODER_SETTINGS

MSG_ID = bytes(range(16))
NOW = 1_700_000_000_000
U63 = 2**63 - 1
U32 = 2**32 - 1
KEY = bytes(range(100, 132))
DIGEST = bytes(range(200, 232))

user_ids = st.from_regex(r"[a-z0-9][a-z0-9._-]{0,62}", fullmatch=True)
ids16 = st.binary(min_size=16, max_size=16)
keys32 = st.binary(min_size=32, max_size=32)

attachments = st.builds(AttachmentRef, st.binary(max_size=64), keys32, keys32, st.integers(0, U63))


@st.composite
def sync_sent(draw: st.DrawFn) -> SyncSent:
    """A copy of a text, bytes or attachment message, its body typed accordingly."""
    original_type = draw(
        st.sampled_from([PayloadType.TEXT, PayloadType.BYTES, PayloadType.ATTACHMENT])
    )
    original: st.SearchStrategy[str | bytes | AttachmentRef] = {
        PayloadType.TEXT: st.text(max_size=200),
        PayloadType.BYTES: st.binary(max_size=200),
        PayloadType.ATTACHMENT: attachments,
    }[original_type]
    return SyncSent(draw(user_ids), draw(ids16), original_type, draw(original))


bodies: dict[PayloadType, st.SearchStrategy[Body]] = {
    PayloadType.TEXT: st.text(max_size=500),
    PayloadType.BYTES: st.binary(max_size=500),
    PayloadType.SYNC_SENT: sync_sent(),
    PayloadType.RETRY_REQUEST: st.builds(
        RetryRequest, ids16, st.integers(0, U32), keys32, st.integers(0, U32)
    ),
    PayloadType.DEVICE_LIST_NOTICE: st.builds(DeviceListNotice, st.integers(1, U63)),
    PayloadType.ATTACHMENT: attachments,
}


@st.composite
def payloads(draw: st.DrawFn) -> Payload:
    payload_type = draw(st.sampled_from(PayloadType))
    return Payload(payload_type, draw(ids16), draw(st.integers(0, U63)), draw(bodies[payload_type]))


EXAMPLES: dict[PayloadType, Body] = {
    PayloadType.TEXT: "hello",
    PayloadType.BYTES: b"\x00\x01binary",
    PayloadType.SYNC_SENT: SyncSent("bob", MSG_ID, PayloadType.TEXT, "secret text"),
    PayloadType.RETRY_REQUEST: RetryRequest(MSG_ID, 1234, KEY, 7),
    PayloadType.DEVICE_LIST_NOTICE: DeviceListNotice(3),
    PayloadType.ATTACHMENT: AttachmentRef(b"blob-1", KEY, DIGEST, 4096),
}


def padded(fields: dict[int, cbor.Value]) -> bytes:
    """``fields`` with the smallest zero padding (key 5) making a multiple of 160 bytes:
    an independent, brute-force version of the encoder's padding rule."""
    for length in range(2 * PAYLOAD_PADDING_BLOCK):
        encoded = cbor.encode({**fields, 5: bytes(length)})
        if len(encoded) % PAYLOAD_PADDING_BLOCK == 0:
            return encoded
    raise AssertionError("no padding found")  # pragma: no cover


def raw(payload_type: int = 1, body: cbor.Value = "hi", **overrides: cbor.Value) -> bytes:
    """A padded payload built field by field (for bodies the encoder refuses to build)."""
    fields: dict[int, cbor.Value] = {
        0: PAYLOAD_VERSION,
        1: payload_type,
        2: MSG_ID,
        3: NOW,
        4: body,
    }
    for key, value in overrides.items():
        index = int(key[1:])
        if value is ...:
            del fields[index]
        else:
            fields[index] = value
    return padded(fields)


def without_padding(encoded: bytes) -> dict[int, cbor.Value]:
    value = cbor.decode(encoded)
    assert isinstance(value, dict)
    return {k: v for k, v in value.items() if k != 5}


# --- round trips --------------------------------------------------------------------------


@pytest.mark.parametrize("payload_type", list(PayloadType))
def test_every_type_round_trips(payload_type: PayloadType) -> None:
    payload = Payload(payload_type, MSG_ID, NOW, EXAMPLES[payload_type])
    encoded = payload.to_bytes()
    assert len(encoded) % PAYLOAD_PADDING_BLOCK == 0
    decoded = Payload.from_bytes(encoded, from_own_device=True)
    assert decoded == payload
    assert decoded.to_bytes() == encoded
    if payload_type is not PayloadType.SYNC_SENT:
        assert Payload.from_bytes(encoded, from_own_device=False) == payload


@DECODER_SETTINGS
@given(payloads())
def test_round_trip_property(payload: Payload) -> None:
    encoded = payload.to_bytes()
    assert encoded == padded(without_padding(encoded))
    decoded = Payload.from_bytes(encoded, from_own_device=True)
    assert decoded == payload
    assert type(decoded.body) is type(payload.body)
    assert decoded.to_bytes() == encoded


def test_sync_sent_of_each_original_type() -> None:
    for original_type, original in (
        (PayloadType.TEXT, "t"),
        (PayloadType.BYTES, b"b"),
        (PayloadType.ATTACHMENT, AttachmentRef(b"blob", KEY, DIGEST, 9)),
    ):
        body = SyncSent("carol.2", MSG_ID, original_type, original)
        payload = Payload(PayloadType.SYNC_SENT, MSG_ID, NOW, body)
        decoded = Payload.from_bytes(payload.to_bytes(), from_own_device=True)
        assert decoded.body == body
        assert isinstance(decoded.body, SyncSent)
        assert decoded.body.original_type is original_type
        assert type(decoded.body.original_body) is type(original)


def test_field_extremes_round_trip() -> None:
    for payload in (
        Payload(PayloadType.TEXT, MSG_ID, 0, ""),
        Payload(PayloadType.BYTES, MSG_ID, U63, b""),
        Payload(PayloadType.RETRY_REQUEST, MSG_ID, 0, RetryRequest(MSG_ID, U32, KEY, U32)),
        Payload(PayloadType.RETRY_REQUEST, MSG_ID, 0, RetryRequest(MSG_ID, 0, KEY, 0)),
        Payload(PayloadType.DEVICE_LIST_NOTICE, MSG_ID, 0, DeviceListNotice(U63)),
        Payload(PayloadType.ATTACHMENT, MSG_ID, 0, AttachmentRef(b"", KEY, DIGEST, 0)),
        Payload(PayloadType.ATTACHMENT, MSG_ID, 0, AttachmentRef(bytes(64), KEY, DIGEST, U63)),
    ):
        assert Payload.from_bytes(payload.to_bytes(), from_own_device=False) == payload


# --- padding -------------------------------------------------------------------------------


def _check_padding(payload: Payload) -> None:
    encoded = payload.to_bytes()
    assert len(encoded) % PAYLOAD_PADDING_BLOCK == 0
    assert encoded == padded(without_padding(encoded))
    padding = cbor.decode(encoded)[5]  # type: ignore[index]
    assert isinstance(padding, bytes)
    assert padding == bytes(len(padding))


@DECODER_SETTINGS
@given(st.integers(0, 3000))
def test_padding_is_the_smallest_multiple_of_160(length: int) -> None:
    _check_padding(Payload(PayloadType.TEXT, MSG_ID, NOW, "x" * length))


def test_padding_across_every_residue() -> None:
    """Every length modulo the block, including those where the padding's own length
    head grows (a pad of exactly 24 bytes cannot be written: the next block is used)."""
    sizes = set()
    for length in range(2 * PAYLOAD_PADDING_BLOCK + 40):
        payload = Payload(PayloadType.BYTES, MSG_ID, NOW, bytes(length))
        _check_padding(payload)
        sizes.add(len(payload.to_bytes()))
    assert {160, 320, 480} <= sizes


def test_max_plaintext() -> None:
    largest = MAX_PLAINTEXT // PAYLOAD_PADDING_BLOCK * PAYLOAD_PADDING_BLOCK

    def fits(n: int) -> bool:
        try:
            encoded = Payload(PayloadType.BYTES, MSG_ID, NOW, bytes(n)).to_bytes()
        except LimitExceeded:
            return False
        assert len(encoded) <= largest
        return True

    n = largest - 100
    assert fits(n)
    while fits(n + 1):
        n += 1
    # n bytes is the most one payload carries (in the largest padded size); then a
    # longer body is refused, however long.
    assert len(Payload(PayloadType.BYTES, MSG_ID, NOW, bytes(n)).to_bytes()) == largest
    for too_big in (n + 1, n + 1000, MAX_PLAINTEXT, 10 * MAX_PLAINTEXT):
        with pytest.raises(LimitExceeded):
            Payload(PayloadType.BYTES, MSG_ID, NOW, bytes(too_big)).to_bytes()
    with pytest.raises(LimitExceeded):
        Payload(PayloadType.TEXT, MSG_ID, NOW, "x" * MAX_PLAINTEXT).to_bytes()
    assert issubclass(LimitExceeded, InvalidArgument)


def test_length_not_a_padded_length() -> None:
    encoded = Payload(PayloadType.TEXT, MSG_ID, NOW, "hi").to_bytes()
    for data in (encoded[:-1], encoded + b"\x00", b"", bytes(161)):
        with pytest.raises(DecodeError):
            Payload.from_bytes(data, from_own_device=True)
    too_long = bytes(MAX_PLAINTEXT // PAYLOAD_PADDING_BLOCK * PAYLOAD_PADDING_BLOCK + 160)
    with pytest.raises(DecodeError, match="padded length"):
        Payload.from_bytes(too_long, from_own_device=True)


def test_non_zero_padding_refused() -> None:
    encoded = Payload(PayloadType.TEXT, MSG_ID, NOW, "hi").to_bytes()
    assert encoded.endswith(b"\x00")  # the padding is the last field
    for position in (-1, -5):
        tampered = bytearray(encoded)
        tampered[position] = 0x01
        with pytest.raises(DecodeError, match="padding is not zero"):
            Payload.from_bytes(bytes(tampered), from_own_device=True)


def test_padding_must_be_bytes() -> None:
    for padding in ("", None, 0):
        data = padded_with(padding)
        with pytest.raises(DecodeError):
            Payload.from_bytes(data, from_own_device=True)


def padded_with(padding: cbor.Value) -> bytes:
    """A payload whose field 5 is ``padding`` and whose body is grown to 160 bytes."""
    for n in range(PAYLOAD_PADDING_BLOCK):
        encoded = cbor.encode({0: 1, 1: 1, 2: MSG_ID, 3: NOW, 4: "x" * n, 5: padding})
        if len(encoded) % PAYLOAD_PADDING_BLOCK == 0:
            return encoded
    raise AssertionError("no length found")  # pragma: no cover


# --- types, senders, malformed payloads -----------------------------------------------------


@pytest.mark.parametrize("payload_type", [0, 7, 42, 255])
def test_unknown_type(payload_type: int) -> None:
    with pytest.raises(UnknownPayloadType) as info:
        Payload.from_bytes(raw(payload_type), from_own_device=True)
    assert info.value.payload_type == payload_type
    assert isinstance(info.value, DecodeError)
    assert str(payload_type) in str(info.value)


def test_type_beyond_a_byte_is_malformed() -> None:
    with pytest.raises(DecodeError) as info:
        Payload.from_bytes(raw(256), from_own_device=True)
    assert not isinstance(info.value, UnknownPayloadType)


def test_sync_sent_only_from_own_devices() -> None:
    encoded = Payload(
        PayloadType.SYNC_SENT, MSG_ID, NOW, EXAMPLES[PayloadType.SYNC_SENT]
    ).to_bytes()
    with pytest.raises(UntrustedIdentity):
        Payload.from_bytes(encoded, from_own_device=False)
    accepted = Payload.from_bytes(encoded, from_own_device=True)
    assert accepted.body == EXAMPLES[PayloadType.SYNC_SENT]


@pytest.mark.parametrize(
    "data",
    [
        raw(f0=2),  # unknown payload version
        raw(f0=0),
        raw(f0=True),
        raw(f0=...),  # missing fields
        raw(f4=...),
        raw(f9=0),  # unknown field
        raw(f2=bytes(15)),  # client message id of the wrong size
        raw(f2="0123456789abcdef"),
        raw(f3=-1),  # sender timestamp out of range
        raw(f3=2**63),
        raw(f1="text"),
    ],
)
def test_malformed_payload(data: bytes) -> None:
    with pytest.raises(DecodeError):
        Payload.from_bytes(data, from_own_device=True)


@pytest.mark.parametrize("make", [lambda n: [0] * n, lambda n: "x" * n, lambda n: b"x" * n])
def test_not_a_map(make: object) -> None:
    assert callable(make)
    encoded = next(
        e for n in range(2 * PAYLOAD_PADDING_BLOCK) if len(e := cbor.encode(make(n))) % 160 == 0
    )
    with pytest.raises(DecodeError, match="expected a map"):
        Payload.from_bytes(encoded, from_own_device=True)


WRONG_BODIES: dict[PayloadType, list[object]] = {
    PayloadType.TEXT: [b"bytes", 1, None, DeviceListNotice(1)],
    PayloadType.BYTES: ["text", 1, None, EXAMPLES[PayloadType.ATTACHMENT]],
    PayloadType.SYNC_SENT: ["text", b"bytes", EXAMPLES[PayloadType.RETRY_REQUEST]],
    PayloadType.RETRY_REQUEST: ["text", EXAMPLES[PayloadType.SYNC_SENT]],
    PayloadType.DEVICE_LIST_NOTICE: [3, b"x", EXAMPLES[PayloadType.RETRY_REQUEST]],
    PayloadType.ATTACHMENT: [b"ref", EXAMPLES[PayloadType.DEVICE_LIST_NOTICE]],
}


@pytest.mark.parametrize(
    ("payload_type", "body"),
    [(t, b) for t, bodies in WRONG_BODIES.items() for b in bodies],
    ids=repr,
)
def test_wrong_body_type_refused_on_encode(payload_type: PayloadType, body: Body) -> None:
    with pytest.raises(InvalidArgument):
        Payload(payload_type, MSG_ID, NOW, body).to_bytes()


@pytest.mark.parametrize(
    "body",
    [
        SyncSent("bob", MSG_ID, PayloadType.RETRY_REQUEST, "x"),  # not a copyable type
        SyncSent("bob", MSG_ID, PayloadType.SYNC_SENT, "x"),
        SyncSent("Bob", MSG_ID, PayloadType.TEXT, "x"),  # invalid user id
        SyncSent("bob", bytes(15), PayloadType.TEXT, "x"),  # original id not 16 bytes
        SyncSent("bob", MSG_ID, PayloadType.TEXT, 5),  # type: ignore[arg-type]
        # the copied body must have the original type's body type
        SyncSent("bob", MSG_ID, PayloadType.TEXT, b"x"),
        SyncSent("bob", MSG_ID, PayloadType.BYTES, "x"),
        SyncSent("bob", MSG_ID, PayloadType.ATTACHMENT, b"x"),
        SyncSent("bob", MSG_ID, PayloadType.TEXT, AttachmentRef(b"b", KEY, DIGEST, 1)),
        SyncSent("bob", MSG_ID, PayloadType.ATTACHMENT, AttachmentRef(b"b", KEY[:31], DIGEST, 1)),
        RetryRequest(bytes(15), 1, KEY, 0),
        RetryRequest(MSG_ID, -1, KEY, 0),
        RetryRequest(MSG_ID, U32 + 1, KEY, 0),
        RetryRequest(MSG_ID, 1, KEY[:31], 0),
        RetryRequest(MSG_ID, 1, KEY, U32 + 1),
        RetryRequest(MSG_ID, True, KEY, 0),
        DeviceListNotice(0),
        DeviceListNotice(2**63),
        AttachmentRef(bytes(65), KEY, DIGEST, 1),
        AttachmentRef(b"b", KEY[:31], DIGEST, 1),
        AttachmentRef(b"b", KEY, DIGEST + b"\x00", 1),
        AttachmentRef(b"b", KEY, DIGEST, -1),
    ],
    ids=repr,
)
def test_bodies_the_receiver_would_refuse_are_refused_on_encode(body: Body) -> None:
    payload_type = {
        SyncSent: PayloadType.SYNC_SENT,
        RetryRequest: PayloadType.RETRY_REQUEST,
        DeviceListNotice: PayloadType.DEVICE_LIST_NOTICE,
        AttachmentRef: PayloadType.ATTACHMENT,
    }[type(body)]
    with pytest.raises(InvalidArgument):
        Payload(payload_type, MSG_ID, NOW, body).to_bytes()


@pytest.mark.parametrize("timestamp", [-1, 2**63, True])
def test_sender_timestamp_out_of_range_refused_on_encode(timestamp: int) -> None:
    with pytest.raises(InvalidArgument):
        Payload(PayloadType.TEXT, MSG_ID, timestamp, "x").to_bytes()


def test_unencodable_text_refused_on_encode() -> None:
    with pytest.raises(InvalidArgument):
        Payload(PayloadType.TEXT, MSG_ID, NOW, "\ud800").to_bytes()


@pytest.mark.parametrize("size", [0, 15, 17])
def test_client_message_id_is_16_bytes(size: int) -> None:
    with pytest.raises(InvalidArgument):
        Payload(PayloadType.TEXT, bytes(size), NOW, "x")


SYNC = {0: "bob", 1: MSG_ID, 2: 1, 3: "x"}
RETRY = {0: MSG_ID, 1: 5, 2: KEY, 3: 0}
ATTACH = {0: b"blob", 1: KEY, 2: DIGEST, 3: 10}


@pytest.mark.parametrize(
    ("payload_type", "body"),
    [
        (PayloadType.TEXT, b"bytes"),
        (PayloadType.TEXT, 1),
        (PayloadType.TEXT, None),
        (PayloadType.BYTES, "text"),
        (PayloadType.BYTES, [b"x"]),
        (PayloadType.SYNC_SENT, "text"),
        (PayloadType.SYNC_SENT, SYNC | {2: 4}),  # original type not copyable
        (PayloadType.SYNC_SENT, SYNC | {2: 3}),
        (PayloadType.SYNC_SENT, SYNC | {2: 7}),
        (PayloadType.SYNC_SENT, SYNC | {3: 5}),  # original body of no payload type
        (PayloadType.SYNC_SENT, SYNC | {3: {0: 1}}),
        (PayloadType.SYNC_SENT, SYNC | {3: b"x"}),  # bytes copied as a text message
        (PayloadType.SYNC_SENT, SYNC | {2: 2, 3: "x"}),  # text copied as a bytes message
        (PayloadType.SYNC_SENT, SYNC | {2: 6, 3: b"x"}),  # an attachment copy needs a ref
        (PayloadType.SYNC_SENT, SYNC | {2: 6, 3: ATTACH | {1: bytes(31)}}),
        (PayloadType.SYNC_SENT, SYNC | {0: "Bob"}),
        (PayloadType.SYNC_SENT, SYNC | {0: 5}),
        (PayloadType.SYNC_SENT, SYNC | {1: bytes(15)}),
        (PayloadType.SYNC_SENT, {k: v for k, v in SYNC.items() if k != 3}),
        (PayloadType.SYNC_SENT, SYNC | {4: 0}),
        (PayloadType.RETRY_REQUEST, b"x"),
        (PayloadType.RETRY_REQUEST, RETRY | {0: bytes(17)}),
        (PayloadType.RETRY_REQUEST, RETRY | {1: U32 + 1}),
        (PayloadType.RETRY_REQUEST, RETRY | {2: bytes(31)}),
        (PayloadType.RETRY_REQUEST, RETRY | {3: -1}),
        (PayloadType.RETRY_REQUEST, RETRY | {3: False}),
        (PayloadType.DEVICE_LIST_NOTICE, {0: 0}),
        (PayloadType.DEVICE_LIST_NOTICE, {0: "1"}),
        (PayloadType.DEVICE_LIST_NOTICE, {0: 1, 1: 1}),
        (PayloadType.DEVICE_LIST_NOTICE, {}),
        (PayloadType.DEVICE_LIST_NOTICE, 1),
        (PayloadType.ATTACHMENT, ATTACH | {0: bytes(65)}),
        (PayloadType.ATTACHMENT, ATTACH | {1: bytes(33)}),
        (PayloadType.ATTACHMENT, ATTACH | {2: "digest"}),
        (PayloadType.ATTACHMENT, ATTACH | {3: -5}),
        (PayloadType.ATTACHMENT, [b"blob"]),
    ],
    ids=repr,
)
def test_wrong_body_refused_on_decode(payload_type: PayloadType, body: cbor.Value) -> None:
    data = raw(int(payload_type), body)
    with pytest.raises(DecodeError):
        Payload.from_bytes(data, from_own_device=True)


def test_well_formed_raw_bodies_decode() -> None:
    """The raw bodies above differ from these accepted ones in one field only."""
    cases = [
        (PayloadType.SYNC_SENT, SYNC),
        (PayloadType.SYNC_SENT, SYNC | {2: 2, 3: b"x"}),
        (PayloadType.SYNC_SENT, SYNC | {2: 6, 3: ATTACH}),
        (PayloadType.RETRY_REQUEST, RETRY),
        (PayloadType.DEVICE_LIST_NOTICE, {0: 1}),
        (PayloadType.ATTACHMENT, ATTACH),
    ]
    for payload_type, body in cases:
        data = raw(int(payload_type), body)
        assert Payload.from_bytes(data, from_own_device=True).type is payload_type
        assert Payload.from_bytes(data, from_own_device=True).to_bytes() == data


# --- repr ----------------------------------------------------------------------------------


@pytest.mark.parametrize("payload_type", list(PayloadType))
def test_repr_shows_no_body_or_key(payload_type: PayloadType) -> None:
    payload = Payload(payload_type, MSG_ID, NOW, EXAMPLES[payload_type])
    text = repr(payload)
    assert payload_type.name in text
    assert MSG_ID.hex() in text
    assert str(NOW) in text
    for secret in ("hello", "secret text", "binary", "blob-1", KEY.hex(), DIGEST.hex()):
        assert secret not in text
    assert repr(KEY) not in text
    assert str(payload) == text


def test_attachment_key_never_in_repr() -> None:
    ref = AttachmentRef(b"blob-1", KEY, DIGEST, 4096)
    for text in (
        repr(ref),
        str(ref),
        repr([ref]),
        repr(Payload(PayloadType.ATTACHMENT, MSG_ID, NOW, ref)),
    ):
        assert KEY.hex() not in text
        assert repr(KEY) not in text
        assert KEY.hex()[:16] not in text
    assert b"blob-1".hex() in repr(ref)
    assert "4096" in repr(ref)


def test_sync_sent_repr_hides_the_copied_body() -> None:
    body = SyncSent("bob", MSG_ID, PayloadType.TEXT, "secret text")
    assert "secret text" not in repr(body)
    assert "bob" in repr(body)
    copy = SyncSent("bob", MSG_ID, PayloadType.ATTACHMENT, AttachmentRef(b"b", KEY, DIGEST, 1))
    for text in (repr(copy), repr(Payload(PayloadType.SYNC_SENT, MSG_ID, NOW, copy))):
        assert KEY.hex() not in text
        assert repr(KEY) not in text


def test_padding_longer_than_needed_is_refused() -> None:
    payload = Payload(PayloadType.TEXT, bytes(16), 1, "hi")
    value = cbor.decode(payload.to_bytes())
    assert isinstance(value, dict) and isinstance(value[5], bytes)
    original = value[5]
    longer = next(
        extra
        for extra in range(1, 400)
        if len(cbor.encode({**value, 5: original + bytes(extra)})) % PAYLOAD_PADDING_BLOCK == 0
    )
    value[5] = original + bytes(longer)
    with pytest.raises(DecodeError, match="smallest"):
        Payload.from_bytes(cbor.encode(value), from_own_device=False)
