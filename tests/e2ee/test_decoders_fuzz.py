"""Every decoder fed arbitrary and mutated bytes accepts or raises its documented error.

Each decoder of the core (wire formats and serialized state) gets:

* arbitrary bytes (``st.binary()``);
* mutations of valid encodings: bytes flipped, overwritten, inserted, deleted,
  appended, or the input truncated, a few times over;

and must either decode or raise the error its docstring names (``DecodeError`` and
its subclasses for wire formats, plus ``BadSignature`` for signed device lists and
``UntrustedIdentity`` for a ``sync_sent`` from another user; ``CorruptState`` for
state). Any other exception fails the test. Whatever is accepted must re-encode:
to the very same bytes for the canonical wire formats, and to a stable encoding for
state. Valid encodings decode and re-encode to themselves.

The second half holds targeted cases for every refusal of the two fixed-layout
envelopes (e2ee/envelope.py).
"""

from __future__ import annotations

import dataclasses
import functools
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from e2ee import cbor
from e2ee.device import OurDevice, OurPreKeys
from e2ee.device_list import SignedDeviceList
from e2ee.envelope import (
    HEADER_SIZE,
    MIN_PROTOCOL_VERSION,
    PROTOCOL_VERSION,
    EnvelopeType,
    MessageEnvelope,
    PreKeyEnvelope,
    Suite,
    encode_prekey_header,
    envelope_type,
)
from e2ee.errors import (
    BadSignature,
    CorruptState,
    DecodeError,
    InvalidKey,
    UnsupportedVersion,
    UntrustedIdentity,
)
from e2ee.identifiers import InvalidUserId
from e2ee.keys import DHKeyPair
from e2ee.limits import MAX_ENVELOPE_SIZE
from e2ee.payload import (
    AttachmentRef,
    DeviceListNotice,
    Payload,
    PayloadType,
    RetryRequest,
    SyncSent,
)
from e2ee.prekeys import PreKeyBundle
from e2ee.primitives import MLKEM768_CIPHERTEXT_SIZE
from e2ee.ratchet import RatchetState
from e2ee.safety_numbers import SafetyNumber
from e2ee.session import SessionRecord, decrypt, start_session
from tests.e2ee.helpers import NOW, make_user, seeded_rng
from tests.hypothesis_profiles import DECODER_SETTINGS

# --- a corpus of valid encodings -----------------------------------------------------------


@dataclass(frozen=True)
class Corpus:
    message_envelopes: list[bytes]
    prekey_envelopes: list[bytes]
    device_lists: list[bytes]
    bundles: list[bytes]
    payloads: list[bytes]
    sync_sent: list[bytes]
    qr_view: SafetyNumber
    """The safety number of the side that scans: ``qr`` verifies against it."""
    qr: bytes
    ratchet_states: list[bytes]
    session_records: list[bytes]
    devices: list[bytes]
    prekeys: list[bytes]

    @property
    def cbor(self) -> list[bytes]:
        return [
            *self.device_lists,
            *self.bundles,
            *self.payloads,
            self.qr,
            *self.ratchet_states,
            *self.session_records,
            *self.devices,
            *self.prekeys,
            cbor.encode([0, -1, 2**64 - 1, -(2**64), b"", "", True, False, None, {}, []]),
            cbor.encode({0: {1: [b"x" * 24, "y" * 256]}, 255: [[[[[0]]]]]}),
        ]


def _handmade_prekey_envelope(suite: Suite, opk: int | None, message: bytes) -> bytes:
    rng = seeded_rng(99)
    header = encode_prekey_header(
        suite,
        "mallory.x",
        2**32 - 1,
        DHKeyPair.generate(rng).public_key,
        DHKeyPair.generate(rng).public_key,
        1,
        opk,
        7 if suite is Suite.PQXDH else None,
        rng(MLKEM768_CIPHERTEXT_SIZE) if suite is Suite.PQXDH else None,
    )
    return header + struct.pack(">I", len(message)) + message


@functools.cache
def corpus() -> Corpus:
    """Real encodings from a PQXDH session (with a one-time prekey), a classical X3DH
    session (without one), and every payload type; built once."""
    alice = make_user("alice", seed=21)
    bob = make_user("bob", devices=2, seed=22)
    carol = make_user("carol", pq=False, seed=23)
    dave = make_user("dave", pq=False, seed=24)
    a, b, c, d = alice.devices[0], bob.devices[0], carol.devices[0], dave.devices[0]
    bundles = [
        b.bundle().to_bytes(),  # one-time EC and KEM prekeys
        b.bundle(opk=False, last_resort=True).to_bytes(),
        d.bundle(opk=False, kem=False).to_bytes(),
    ]

    # PQXDH with a one-time prekey; Bob replies; Alice sends three, Bob gets the last
    # first (two skipped keys).
    rec_a = start_session(a.device, bob.peer(), b.bundle(), None, NOW)
    first = rec_a.encrypt(b"one", NOW)
    got = decrypt(b.device, b.prekeys, None, alice.peer(), first, NOW)
    assert got.prekey_use is not None
    b.prekeys.commit_use(got.prekey_use)
    rec_b = got.record
    reply = rec_b.encrypt(b"two", NOW)
    decrypt(a.device, a.prekeys, rec_a, bob.peer(), reply, NOW)
    later = [rec_a.encrypt(bytes([i]) * 40, NOW) for i in range(3)]
    decrypt(b.device, b.prekeys, rec_b, alice.peer(), later[2], NOW)

    # Classical X3DH without a one-time prekey: Dave records the base key.
    rec_c = start_session(c.device, dave.peer(), d.bundle(opk=False), None, NOW, carol.rng)
    classic = rec_c.encrypt(b"classic", NOW)
    got = decrypt(d.device, d.prekeys, None, carol.peer(), classic, NOW)
    assert got.prekey_use is not None
    d.prekeys.commit_use(got.prekey_use)
    rec_d = got.record

    message_envelopes = [reply, *later]
    prekey_envelopes = [
        first,
        classic,
        _handmade_prekey_envelope(Suite.X3DH, 5, reply),
        _handmade_prekey_envelope(Suite.PQXDH, None, reply),
    ]
    # Re-signed device lists: version 2 carries a prev_hash.
    successor = bob.device_list.successor(
        bob.master, bob.device_list.statement.devices[:1], NOW + 1
    )
    device_lists = [
        alice.device_list.to_bytes(),
        bob.device_list.to_bytes(),
        successor.to_bytes(),
        carol.device_list.to_bytes(),
    ]

    msg_id = bytes(range(16))
    key = bytes(range(32))
    attachment = AttachmentRef(b"blob", key, key[::-1], 123_456)
    sync = SyncSent("alice", msg_id, PayloadType.TEXT, "copy")
    bodies = [
        (PayloadType.TEXT, "hello " * 30),
        (PayloadType.BYTES, bytes(range(256))),
        (PayloadType.RETRY_REQUEST, RetryRequest(msg_id, 1001, DHKeyPair(key).public_key, 9)),
        (PayloadType.DEVICE_LIST_NOTICE, DeviceListNotice(2)),
        (PayloadType.ATTACHMENT, attachment),
    ]
    payloads = [Payload(t, msg_id, NOW, body).to_bytes() for t, body in bodies]
    attachment_copy = SyncSent("alice", msg_id, PayloadType.ATTACHMENT, attachment)
    sync_sent = [
        Payload(PayloadType.SYNC_SENT, msg_id, NOW, copy).to_bytes()
        for copy in (sync, attachment_copy)
    ]

    alice_view = SafetyNumber.compute(
        "alice", alice.master.public_key, "bob", bob.master.public_key
    )
    bob_view = SafetyNumber.compute("bob", bob.master.public_key, "alice", alice.master.public_key)

    records = [rec_a, rec_b, rec_c, rec_d]
    ratchets = [r.active.ratchet.to_bytes() for r in records if r.active is not None]
    return Corpus(
        message_envelopes=message_envelopes,
        prekey_envelopes=prekey_envelopes,
        device_lists=device_lists,
        bundles=bundles,
        payloads=[*payloads, *sync_sent],
        sync_sent=sync_sent,
        qr_view=bob_view,
        qr=alice_view.qr_payload(),
        ratchet_states=ratchets,
        session_records=[r.to_bytes() for r in records] + [SessionRecord().to_bytes()],
        devices=[x.device.to_bytes() for x in (a, b, c)],
        prekeys=[x.prekeys.to_bytes() for x in (b, d)] + [OurPreKeys().to_bytes()],
    )


# --- the decoders --------------------------------------------------------------------------


def _check_cbor(data: bytes, value: cbor.Value) -> None:
    assert cbor.encode(value) == data


def _check_message(data: bytes, envelope: MessageEnvelope) -> None:
    header = MessageEnvelope.encode_header(envelope.ratchet_pk, envelope.pn, envelope.n)
    assert MessageEnvelope.assemble(header, envelope.ciphertext) == data
    assert envelope.raw == data
    assert envelope.header == data[:HEADER_SIZE]


def _check_prekey(data: bytes, envelope: PreKeyEnvelope) -> None:
    assert envelope.to_bytes() == data
    assert data.startswith(envelope.header_bytes())


def _check_type(data: bytes, kind: EnvelopeType) -> None:
    assert isinstance(kind, EnvelopeType)
    assert data[0] == PROTOCOL_VERSION
    assert data[1] == kind


def _check_device_list(data: bytes, signed: SignedDeviceList) -> None:
    assert cbor.encode({0: signed.statement.to_value(), 1: signed.signature}) == data
    assert signed.to_bytes() == data


def _check_bundle(data: bytes, bundle: PreKeyBundle) -> None:
    assert bundle.to_bytes() == data


def _check_payload(data: bytes, payload: Payload) -> None:
    # The smallest padding is what the encoder writes; re-encoding gives the same payload.
    assert len(data) % 160 == 0
    assert Payload.from_bytes(payload.to_bytes(), from_own_device=True) == payload


def _check_contact_payload(data: bytes, payload: Payload) -> None:
    assert payload.type is not PayloadType.SYNC_SENT
    _check_payload(data, payload)


def _check_qr(data: bytes, verified: bool) -> None:
    assert isinstance(verified, bool)
    if verified:  # only the contact's exact payload verifies
        assert data == corpus().qr


def _verify_qr(data: bytes) -> bool:
    return corpus().qr_view.verify_qr(data)


def _state_checker(cls: Any) -> Callable[[bytes, Any], None]:
    def check(data: bytes, state: Any) -> None:
        # Whatever is accepted re-serializes, and that encoding is stable.
        encoded = state.to_bytes()
        assert cls.from_bytes(encoded).to_bytes() == encoded

    return check


@dataclass(frozen=True)
class Decoder:
    name: str
    decode: Callable[[bytes], Any]
    errors: tuple[type[BaseException], ...]
    """The documented errors: anything else fails."""
    seeds: Callable[[Corpus], list[bytes]]
    check: Callable[[bytes, Any], None]
    """Checks on an accepted input."""
    prefix_free: bool = True
    """No proper prefix of a valid encoding is accepted."""


DECODERS = [
    Decoder("cbor.decode", cbor.decode, (DecodeError,), lambda c: c.cbor, _check_cbor),
    Decoder(
        "MessageEnvelope.from_bytes",
        MessageEnvelope.from_bytes,
        (DecodeError,),
        lambda c: c.message_envelopes,
        _check_message,
    ),
    Decoder(
        "PreKeyEnvelope.from_bytes",
        PreKeyEnvelope.from_bytes,
        (DecodeError,),
        lambda c: c.prekey_envelopes,
        _check_prekey,
    ),
    Decoder(
        "envelope_type",
        envelope_type,
        (DecodeError,),
        lambda c: c.message_envelopes + c.prekey_envelopes,
        _check_type,
        prefix_free=False,  # reads the first two bytes only
    ),
    Decoder(
        "SignedDeviceList.from_bytes",
        SignedDeviceList.from_bytes,
        (DecodeError, BadSignature),
        lambda c: c.device_lists,
        _check_device_list,
    ),
    Decoder(
        "PreKeyBundle.from_bytes",
        PreKeyBundle.from_bytes,
        (DecodeError,),
        lambda c: c.bundles,
        _check_bundle,
    ),
    Decoder(
        "Payload.from_bytes(own)",
        functools.partial(Payload.from_bytes, from_own_device=True),
        (DecodeError,),
        lambda c: c.payloads,
        _check_payload,
    ),
    Decoder(
        "Payload.from_bytes(contact)",
        functools.partial(Payload.from_bytes, from_own_device=False),
        (DecodeError, UntrustedIdentity),
        lambda c: [p for p in c.payloads if p not in c.sync_sent],
        _check_contact_payload,
    ),
    Decoder(
        "SafetyNumber.verify_qr",
        _verify_qr,
        (DecodeError,),
        lambda c: [c.qr],
        _check_qr,
    ),
    Decoder(
        "RatchetState.from_bytes",
        RatchetState.from_bytes,
        (CorruptState,),
        lambda c: c.ratchet_states,
        _state_checker(RatchetState),
    ),
    Decoder(
        "SessionRecord.from_bytes",
        SessionRecord.from_bytes,
        (CorruptState,),
        lambda c: c.session_records,
        _state_checker(SessionRecord),
    ),
    Decoder(
        "OurDevice.from_bytes",
        OurDevice.from_bytes,
        (CorruptState,),
        lambda c: c.devices,
        _state_checker(OurDevice),
    ),
    Decoder(
        "OurPreKeys.from_bytes",
        OurPreKeys.from_bytes,
        (CorruptState,),
        lambda c: c.prekeys,
        _state_checker(OurPreKeys),
    ),
]


def _reencode(decoder: Decoder, value: Any) -> bytes:
    """The canonical re-encoding of a decoded value."""
    if isinstance(value, MessageEnvelope):
        return MessageEnvelope.assemble(
            MessageEnvelope.encode_header(value.ratchet_pk, value.pn, value.n), value.ciphertext
        )
    if isinstance(value, SignedDeviceList):
        return cbor.encode({0: value.statement.to_value(), 1: value.signature})
    if decoder.name == "cbor.decode":
        return cbor.encode(value)
    encoded: bytes = value.to_bytes()
    return encoded


def run(decoder: Decoder, data: bytes) -> None:
    """Decode ``data``: a documented error is fine, any other exception fails the test;
    an accepted input must pass the decoder's checks."""
    try:
        value = decoder.decode(data)
    except decoder.errors:
        return
    decoder.check(data, value)


# --- mutations -----------------------------------------------------------------------------

_OPS = ("flip", "set", "insert", "delete", "truncate", "append", "swap")


@st.composite
def mutations(draw: st.DrawFn, seeds: list[bytes]) -> bytes:
    """A valid encoding with one to four random edits."""
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(1, 4))):
        size = len(data)
        # Half the edits land in the first 64 bytes, where the structure is.
        pos = draw(st.integers(0, max(size - 1, 0)) | st.integers(0, min(size, 64)))
        op = draw(st.sampled_from(_OPS))
        if op in ("flip", "set", "swap") and pos >= size:
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
        elif op == "swap":
            other = draw(st.integers(0, size - 1))
            data[pos], data[other] = data[other], data[pos]
        else:
            data += draw(st.binary(min_size=1, max_size=9))
    return bytes(data)


# --- the properties ------------------------------------------------------------------------

_ids = [d.name for d in DECODERS]


@pytest.mark.parametrize("decoder", DECODERS, ids=_ids)
@DECODER_SETTINGS
@given(data=st.binary())
def test_arbitrary_bytes(decoder: Decoder, data: bytes) -> None:
    run(decoder, data)


@pytest.mark.parametrize("decoder", DECODERS, ids=_ids)
@DECODER_SETTINGS
@given(data=st.data())
def test_mutated_valid_encodings(decoder: Decoder, data: st.DataObject) -> None:
    run(decoder, data.draw(mutations(decoder.seeds(corpus()))))


@pytest.mark.parametrize("decoder", DECODERS, ids=_ids)
def test_valid_encodings_decode_and_re_encode_to_the_same_bytes(decoder: Decoder) -> None:
    seeds = decoder.seeds(corpus())
    assert seeds
    for seed in seeds:
        value = decoder.decode(seed)
        decoder.check(seed, value)
        if decoder.name == "envelope_type":
            assert value in (EnvelopeType.MESSAGE, EnvelopeType.PREKEY)
        elif decoder.name == "SafetyNumber.verify_qr":
            assert value is True
            assert corpus().qr_view.qr_payload() != seed  # our own is the swapped one
        else:
            assert _reencode(decoder, value) == seed


@pytest.mark.parametrize("decoder", [d for d in DECODERS if d.prefix_free], ids=lambda d: d.name)
def test_every_proper_prefix_is_refused(decoder: Decoder) -> None:
    """No valid encoding has a valid proper prefix (a cut connection is never a message)."""
    for seed in decoder.seeds(corpus())[:2]:
        for cut in {*range(min(len(seed), 80)), *range(0, len(seed), 97), len(seed) - 1}:
            with pytest.raises(decoder.errors):
                decoder.decode(seed[:cut])


def test_the_corpus_is_varied() -> None:
    c = corpus()
    suites = {PreKeyEnvelope.from_bytes(e).suite for e in c.prekey_envelopes}
    assert suites == {Suite.X3DH, Suite.PQXDH}
    opks = {PreKeyEnvelope.from_bytes(e).one_time_prekey_id is None for e in c.prekey_envelopes}
    assert opks == {True, False}
    states = [RatchetState.from_bytes(s) for s in c.ratchet_states]
    assert any(s.skipped for s in states)
    assert any(s.seen for s in states)
    assert any(s.receiving for s in states)
    kinds = {Payload.from_bytes(p, from_own_device=True).type for p in c.payloads}
    assert kinds == set(PayloadType)
    ledgers = [OurPreKeys.from_bytes(p).seen_base_key_count for p in c.prekeys]
    assert any(ledgers)
    bundles = [PreKeyBundle.from_bytes(b) for b in c.bundles]
    assert {b.kem_prekey is None for b in bundles} == {True, False}
    assert {b.one_time_prekey is None for b in bundles} == {True, False}


# --- the fixed-layout envelopes, refusal by refusal ----------------------------------------

RATCHET_PK = DHKeyPair.generate(seeded_rng(5)).public_key
IK = DHKeyPair.generate(seeded_rng(6)).public_key
EK = DHKeyPair.generate(seeded_rng(7)).public_key
SMALL_ORDER = [bytes(32), b"\x01" + bytes(31), b"\xff" * 31 + b"\x7f"]
NON_CANONICAL = b"\xff" * 32  # top bit set


def message(ct: bytes = bytes(16), pn: int = 3, n: int = 4, pk: bytes = RATCHET_PK) -> bytes:
    return MessageEnvelope.assemble(MessageEnvelope.encode_header(pk, pn, n), ct)


def prekey(
    suite: Suite = Suite.PQXDH,
    user_id: str = "alice",
    opk: int | None = 9,
    inner: bytes | None = None,
    ik: bytes = IK,
    ek: bytes = EK,
) -> bytes:
    pq = suite is Suite.PQXDH
    header = encode_prekey_header(
        suite,
        user_id,
        77,
        ik,
        ek,
        5,
        opk,
        11 if pq else None,
        bytes(range(256)) * 4 + bytes(64) if pq else None,
    )
    inner = message() if inner is None else inner
    return header + struct.pack(">I", len(inner)) + inner


def test_message_envelope_layout() -> None:
    data = message(b"c" * 20, pn=2**32 - 1, n=0)
    assert data[:2] == b"\x01\x01"
    assert data[2:34] == RATCHET_PK
    assert data[34:46] == struct.pack(">III", 2**32 - 1, 0, 20)
    envelope = MessageEnvelope.from_bytes(data)
    assert (envelope.pn, envelope.n, envelope.ciphertext) == (2**32 - 1, 0, b"c" * 20)
    assert MessageEnvelope.from_bytes(bytearray(data)).raw == data
    with pytest.raises(struct.error):
        MessageEnvelope.encode_header(RATCHET_PK, 2**32, 0)


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"", "truncated"),
        (message()[:-1], "truncated"),  # ciphertext shorter than a tag
        (message(bytes(15)), "truncated"),
        (message(bytes(MAX_ENVELOPE_SIZE)), "too large"),
        (bytes([1, 2]) + message()[2:], "not a message envelope"),
        (bytes([1, 9]) + message()[2:], "not a message envelope"),
        (message() + b"\x00", "length mismatch"),
        (message(bytes(20))[:-1], "length mismatch"),
        (message()[:HEADER_SIZE] + struct.pack(">I", 15) + bytes(16), "length mismatch"),
    ],
)
def test_message_envelope_refusals(data: bytes, match: str) -> None:
    with pytest.raises(DecodeError, match=match):
        MessageEnvelope.from_bytes(data)


def test_message_envelope_size_limit() -> None:
    largest = message(bytes(MAX_ENVELOPE_SIZE - HEADER_SIZE - 4))
    assert len(largest) == MAX_ENVELOPE_SIZE
    assert MessageEnvelope.from_bytes(largest).ciphertext == bytes(len(largest) - 46)
    with pytest.raises(DecodeError, match="too large"):
        MessageEnvelope.from_bytes(message(bytes(MAX_ENVELOPE_SIZE - HEADER_SIZE - 3)))


@pytest.mark.parametrize("version", [0, 2, 255])
def test_unsupported_versions(version: int) -> None:
    assert MIN_PROTOCOL_VERSION == PROTOCOL_VERSION == 1
    for data in (message(), prekey()):
        with pytest.raises(UnsupportedVersion) as info:
            envelope_type(bytes([version]) + data[1:])
        assert (info.value.what, info.value.version) == ("envelope", version)
    with pytest.raises(UnsupportedVersion):
        MessageEnvelope.from_bytes(bytes([version]) + message()[1:])
    with pytest.raises(UnsupportedVersion):
        PreKeyEnvelope.from_bytes(bytes([version]) + prekey()[1:])


@pytest.mark.parametrize("key", [*SMALL_ORDER, NON_CANONICAL])
def test_message_envelope_invalid_ratchet_key(key: bytes) -> None:
    with pytest.raises(InvalidKey):
        MessageEnvelope.from_bytes(message(pk=key))


def test_envelope_type() -> None:
    assert envelope_type(message()) is EnvelopeType.MESSAGE
    assert envelope_type(prekey()) is EnvelopeType.PREKEY
    assert envelope_type(b"\x01\x02") is EnvelopeType.PREKEY  # only the first two bytes
    for short in (b"", b"\x01"):
        with pytest.raises(DecodeError, match="shorter"):
            envelope_type(short)
    for kind in (0, 3, 255):
        with pytest.raises(DecodeError, match="unknown envelope type"):
            envelope_type(bytes([1, kind]))


@pytest.mark.parametrize("suite", list(Suite))
@pytest.mark.parametrize("opk", [None, 0, 2**32 - 1])
def test_prekey_envelope_round_trip(suite: Suite, opk: int | None) -> None:
    data = prekey(suite, "a." + "b" * 61, opk)
    envelope = PreKeyEnvelope.from_bytes(data)
    assert envelope.suite is suite
    assert envelope.user_id == "a." + "b" * 61
    assert envelope.device_id == 77
    assert (envelope.identity_key, envelope.base_key) == (IK, EK)
    assert envelope.signed_prekey_id == 5
    assert envelope.one_time_prekey_id == opk
    assert (envelope.kem_prekey_id is None) == (suite is Suite.X3DH)
    assert (envelope.kem_ciphertext is None) == (suite is Suite.X3DH)
    assert envelope.message == MessageEnvelope.from_bytes(message())
    assert envelope.to_bytes() == data
    assert data[3] == (0 if opk is None else 1)


def _prefix(data: bytes, **fields: int) -> bytes:
    """``data`` with some of its first five bytes replaced."""
    order = ("version", "kind", "suite", "flags", "uid_len")
    head = bytearray(data[:5])
    for name, value in fields.items():
        head[order.index(name)] = value
    return bytes(head) + data[5:]


def _uid(data: bytes, raw_uid: bytes) -> bytes:
    """``data`` (user id "alice") with the user id bytes replaced by ``raw_uid``."""
    return data[:4] + bytes([len(raw_uid)]) + raw_uid + data[10:]


@pytest.mark.parametrize(
    ("data", "error", "match"),
    [
        (b"", DecodeError, "truncated"),
        (b"\x01\x02\x02\x01", DecodeError, "truncated"),
        (prekey() + bytes(MAX_ENVELOPE_SIZE + 2048), DecodeError, "too large"),
        (_prefix(prekey(), kind=1), DecodeError, "not a pre-key envelope"),
        (_prefix(prekey(), kind=3), DecodeError, "not a pre-key envelope"),
        (_prefix(prekey(), suite=0), DecodeError, "unknown key-agreement suite"),
        (_prefix(prekey(), suite=3), DecodeError, "unknown key-agreement suite"),
        (_prefix(prekey(), flags=2), DecodeError, "flags"),
        (_prefix(prekey(), flags=0x81), DecodeError, "flags"),
        (_prefix(prekey(), flags=0xFF), DecodeError, "flags"),
        # The OPK flag without the field (and vice versa) shifts every later field.
        (_prefix(prekey(opk=None), flags=1), DecodeError, None),
        (_prefix(prekey(opk=3), flags=0), DecodeError, None),
        # The suite byte decides whether the KEM fields are there.
        (_prefix(prekey(Suite.X3DH), suite=2), DecodeError, "truncated"),
        (_prefix(prekey(Suite.PQXDH), suite=1), DecodeError, None),
        (prekey()[:-1], DecodeError, None),
        (prekey() + b"\x00", DecodeError, "length mismatch"),
        (prekey(inner=b"")[:-4], DecodeError, "truncated"),
        (prekey(inner=b""), DecodeError, "truncated"),  # an empty inner message
        (prekey(inner=message()[:50]), DecodeError, "truncated"),
        (prekey(inner=bytes([1, 2]) + message()[2:]), DecodeError, "not a message envelope"),
        (_prefix(prekey(), uid_len=200), DecodeError, "truncated"),
        (_uid(prekey(), b"Alice"), InvalidUserId, None),
        (_uid(prekey(), b""), InvalidUserId, None),
        (_uid(prekey(), b".alic"), InvalidUserId, None),
        (_uid(prekey(), b"al\xc3\xa9c"), DecodeError, "not ASCII"),
        (_uid(prekey(), b"alic\x80"), DecodeError, "not ASCII"),
        (prekey(ik=SMALL_ORDER[0]), InvalidKey, None),
        (prekey(ik=NON_CANONICAL), InvalidKey, None),
        (prekey(ek=SMALL_ORDER[2]), InvalidKey, None),
        (prekey(ek=SMALL_ORDER[1]), InvalidKey, None),
        (prekey(inner=message(pk=SMALL_ORDER[0])), InvalidKey, None),
    ],
)
def test_prekey_envelope_refusals(data: bytes, error: type[Exception], match: str | None) -> None:
    with pytest.raises(error, match=match):
        PreKeyEnvelope.from_bytes(data)


def test_prekey_envelope_kem_fields_follow_the_suite() -> None:
    envelope = PreKeyEnvelope.from_bytes(prekey(Suite.PQXDH))
    assert envelope.kem_ciphertext is not None
    with pytest.raises(DecodeError, match="KEM"):
        dataclasses.replace(envelope, suite=Suite.X3DH)
    with pytest.raises(DecodeError, match="KEM"):
        dataclasses.replace(envelope, kem_prekey_id=None)
    with pytest.raises(DecodeError, match="KEM"):
        dataclasses.replace(envelope, kem_ciphertext=None)
    classical = PreKeyEnvelope.from_bytes(prekey(Suite.X3DH))
    with pytest.raises(DecodeError, match="KEM"):
        dataclasses.replace(classical, suite=Suite.PQXDH)
    with pytest.raises(DecodeError, match="KEM"):
        dataclasses.replace(classical, kem_prekey_id=1)


def test_prekey_header_without_kem_ciphertext_omits_the_kem_fields() -> None:
    with_id_only = encode_prekey_header(Suite.X3DH, "alice", 1, IK, EK, 2, None, 3, None)
    assert with_id_only == encode_prekey_header(Suite.X3DH, "alice", 1, IK, EK, 2, None, None, None)
    assert len(with_id_only) == 5 + 5 + 4 + 32 + 32 + 4
