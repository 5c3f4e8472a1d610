"""Device linking in the core (DESIGN 4.2, ``e2ee/link.py``): the code's text and QR
forms, the sealing keys, the sealed request and answer, the link statement."""

from __future__ import annotations

import base64

import pytest

from e2ee import cbor
from e2ee.device_list import DeviceList, SignedDeviceList
from e2ee.errors import (
    BadSignature,
    DecodeError,
    DecryptionError,
    InvalidArgument,
    InvalidKey,
    UntrustedIdentity,
)
from e2ee.keys import DHKeyPair, SigningKeyPair, signed_message
from e2ee.labels import SIGNATURE_LABELS, Label
from e2ee.link import (
    LINK_CODE_TEXT_LENGTH,
    MAX_LINK_PLAINTEXT,
    MAX_SEALED_SIZE,
    SEAL_OVERHEAD,
    InvalidLinkCode,
    LinkAnswer,
    LinkCode,
    LinkDirection,
    LinkRefused,
    LinkRequest,
    link_statement,
    open_answer,
    open_request,
    seal_answer,
    seal_refusal,
    seal_request,
)
from e2ee.primitives import ed25519_verify, sha256

from .helpers import NOW, make_user, seeded_rng


def _code(seed: int = 1) -> LinkCode:
    return LinkCode.generate(seeded_rng(seed))


def _new_device(seed: int = 2) -> tuple[SigningKeyPair, DHKeyPair]:
    rng = seeded_rng(seed)
    return SigningKeyPair.generate(rng), DHKeyPair.generate(rng)


def _answer(code: LinkCode, request: LinkRequest, *, device_id: int = 77) -> LinkAnswer:
    user = make_user("alice", devices=1, seed=5)
    v2 = user.device_list.successor(
        user.master,
        tuple(
            sorted(
                (*user.device_list.statement.devices, request.entry(device_id, NOW)),
                key=lambda d: d.device_id,
            )
        ),
        NOW,
    )
    return LinkAnswer("alice", device_id, user.master.public_key, v2, b"state")


# --- the code -----------------------------------------------------------------------------


def test_text_round_trip_and_format() -> None:
    code = _code()
    text = code.text
    groups = text.split("-")
    assert len(groups) == 16 and all(len(g) == 5 for g in groups)
    assert len(text.replace("-", "")) == LINK_CODE_TEXT_LENGTH == 80
    assert LinkCode.from_text(text) == code
    # case, spaces and hyphens do not matter; the digits 0, 1, 8 read as O, I, B
    sloppy = " ".join(groups).lower()
    assert LinkCode.parse(sloppy) == code
    raw = text.replace("-", "")
    assert all(c not in raw for c in "018")
    confusable = raw.replace("O", "0").replace("I", "1").replace("B", "8")
    assert LinkCode.from_text(confusable) == code
    raw_bytes = base64.b32decode(raw)
    assert raw_bytes[:16] == code.mailbox_id
    check = sha256(Label.LINK.value + b"\x00" + raw_bytes[:48])[:2]
    assert raw_bytes[48:] == check


def test_qr_round_trip() -> None:
    code = _code(3)
    payload = code.qr_payload
    assert cbor.decode(payload) == {0: 1, 1: code.mailbox_id, 2: payload[-32:]}
    assert LinkCode.from_qr(payload) == code
    assert LinkCode.parse(payload) == code
    assert LinkCode.parse(code.text) == LinkCode.parse(payload)


def test_code_parsing_errors() -> None:
    raw = _code().text.replace("-", "")
    with pytest.raises(InvalidLinkCode, match="80 characters"):
        LinkCode.from_text(raw[:-1])
    with pytest.raises(InvalidLinkCode, match="80 characters"):
        LinkCode.from_text(raw + "A")
    with pytest.raises(InvalidLinkCode, match="letters"):
        LinkCode.from_text(raw[:-1] + "9")
    with pytest.raises(InvalidLinkCode, match="letters"):
        LinkCode.from_text(raw[:-1] + "=")
    with pytest.raises(InvalidLinkCode, match="letters"):
        LinkCode.from_text(raw[:-1] + "é")
    # one mistyped character: the checksum catches it
    swapped = raw[:10] + ("A" if raw[10] != "A" else "B") + raw[11:]
    with pytest.raises(InvalidLinkCode, match="checksum"):
        LinkCode.from_text(swapped)
    with pytest.raises(InvalidLinkCode):
        LinkCode.parse(12345)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"\xff",
        cbor.encode([1, bytes(16), bytes(32)]),
        cbor.encode({0: 2, 1: bytes(16), 2: bytes(32)}),
        cbor.encode({0: 1, 1: bytes(15), 2: bytes(32)}),
        cbor.encode({0: 1, 1: bytes(16), 2: bytes(31)}),
        cbor.encode({0: 1, 1: bytes(16)}),
        cbor.encode({0: 1, 1: bytes(16), 2: bytes(32), 3: 0}),
        bytes(300),
    ],
)
def test_qr_parsing_errors(payload: bytes) -> None:
    with pytest.raises(InvalidLinkCode):
        LinkCode.from_qr(payload)


def test_code_hides_its_secret() -> None:
    code = _code()
    assert repr(code) == "LinkCode(<secret>)"
    assert code.mailbox_id.hex() not in repr(code)
    assert code != _code(2)
    assert code.__eq__(object()) is NotImplemented
    assert hash(code) == hash(LinkCode.from_text(code.text))
    with pytest.raises(InvalidArgument):
        LinkCode(bytes(15), bytes(32))
    with pytest.raises(InvalidArgument):
        LinkCode(bytes(16), bytes(33))


# --- sealing ------------------------------------------------------------------------------


def test_seal_round_trip_both_directions() -> None:
    code, rng = _code(), seeded_rng(9)
    for direction in LinkDirection:
        sealed = code.seal(direction, b"hello", rng)
        assert len(sealed) == SEAL_OVERHEAD + 5
        assert sealed[:2] == bytes((1, int(direction)))
        assert code.open(direction, sealed) == b"hello"
    empty = code.seal(LinkDirection.TO_PRIMARY, b"", rng)
    assert code.open(LinkDirection.TO_PRIMARY, empty) == b""
    biggest = code.seal(LinkDirection.TO_NEW_DEVICE, bytes(MAX_LINK_PLAINTEXT), rng)
    assert len(biggest) == MAX_SEALED_SIZE
    assert code.open(LinkDirection.TO_NEW_DEVICE, biggest) == bytes(MAX_LINK_PLAINTEXT)
    with pytest.raises(InvalidArgument):
        code.seal(LinkDirection.TO_NEW_DEVICE, bytes(MAX_LINK_PLAINTEXT + 1), rng)


def test_directions_use_different_keys() -> None:
    code = _code()
    to_primary = code.seal(LinkDirection.TO_PRIMARY, b"x", seeded_rng(4))
    to_new = code.seal(LinkDirection.TO_NEW_DEVICE, b"x", seeded_rng(4))
    # same nonce and plaintext: only the key (and the AD) differ
    assert to_primary[2:26] == to_new[2:26] and to_primary[26:] != to_new[26:]


def test_wrong_secret_does_not_open() -> None:
    code = _code()
    other = LinkCode(code.mailbox_id, bytes(32))
    sealed = code.seal(LinkDirection.TO_PRIMARY, b"secret keys")
    with pytest.raises(DecryptionError):
        other.open(LinkDirection.TO_PRIMARY, sealed)


def test_other_mailbox_does_not_open() -> None:
    code = _code()
    moved = LinkCode(bytes(16), LinkCode.from_qr(code.qr_payload).qr_payload[-32:])
    sealed = code.seal(LinkDirection.TO_PRIMARY, b"secret keys")
    with pytest.raises(DecryptionError):
        moved.open(LinkDirection.TO_PRIMARY, sealed)


def test_swapped_direction_does_not_open() -> None:
    code = _code()
    sealed = code.seal(LinkDirection.TO_PRIMARY, b"request")
    with pytest.raises(DecryptionError):
        code.open(LinkDirection.TO_NEW_DEVICE, sealed)
    # relabelled as the other direction: the key and the AD both differ
    relabelled = sealed[:1] + b"\x01" + sealed[2:]
    with pytest.raises(DecryptionError):
        code.open(LinkDirection.TO_NEW_DEVICE, relabelled)


def test_truncated_and_tampered() -> None:
    code = _code()
    sealed = code.seal(LinkDirection.TO_NEW_DEVICE, b"answer bytes")
    for cut in (0, 1, SEAL_OVERHEAD - 1):
        with pytest.raises(DecodeError):
            code.open(LinkDirection.TO_NEW_DEVICE, sealed[:cut])
    with pytest.raises(DecryptionError):  # the plaintext's bytes are gone
        code.open(LinkDirection.TO_NEW_DEVICE, sealed[:-1])
    with pytest.raises(DecodeError):
        code.open(LinkDirection.TO_NEW_DEVICE, bytes(MAX_SEALED_SIZE + 1))
    with pytest.raises(DecodeError, match="version"):
        code.open(LinkDirection.TO_NEW_DEVICE, b"\x02" + sealed[1:])
    for index in range(2, len(sealed)):
        tampered = bytearray(sealed)
        tampered[index] ^= 0x01
        with pytest.raises(DecryptionError):
            code.open(LinkDirection.TO_NEW_DEVICE, bytes(tampered))


# --- the request ------------------------------------------------------------------------


def test_request_round_trip_and_proof() -> None:
    code = _code()
    signing, identity = _new_device()
    request = LinkRequest.create(code.mailbox_id, signing, identity, pq=True)
    opened = open_request(code, seal_request(code, request, seeded_rng(6)))
    assert opened == request
    assert (opened.signing_pk, opened.x25519_ik, opened.pq) == (
        signing.public_key,
        identity.public_key,
        True,
    )
    statement = link_statement(code.mailbox_id, signing.public_key, identity.public_key, True)
    assert statement == {0: code.mailbox_id, 1: signing.public_key, 2: identity.public_key, 3: True}
    ed25519_verify(signing.public_key, signed_message(Label.LINK, statement), request.proof)
    for label in SIGNATURE_LABELS:
        if label is not Label.LINK:
            with pytest.raises(BadSignature):
                ed25519_verify(signing.public_key, signed_message(label, statement), request.proof)
    entry = request.entry(42, NOW)
    assert (entry.device_id, entry.signing_pk, entry.x25519_ik, entry.pq, entry.added_at_ms) == (
        42,
        signing.public_key,
        identity.public_key,
        True,
        NOW,
    )
    assert "proof" not in repr(request)


def test_request_proof_is_bound_to_the_mailbox_and_keys() -> None:
    code = _code()
    signing, identity = _new_device()
    request = LinkRequest.create(code.mailbox_id, signing, identity, pq=True)
    with pytest.raises(BadSignature):  # replayed into another mailbox
        LinkRequest.from_bytes(request.to_bytes(), bytes(16))
    _, other_identity = _new_device(7)
    swapped = LinkRequest(signing.public_key, other_identity.public_key, True, request.proof)
    with pytest.raises(BadSignature):
        LinkRequest.from_bytes(swapped.to_bytes(), code.mailbox_id)
    downgraded = LinkRequest(signing.public_key, identity.public_key, False, request.proof)
    with pytest.raises(BadSignature):
        LinkRequest.from_bytes(downgraded.to_bytes(), code.mailbox_id)


def test_request_decoding_errors() -> None:
    code = _code()
    signing, identity = _new_device()
    good = LinkRequest.create(code.mailbox_id, signing, identity, pq=True)
    fields: dict[int, cbor.Value] = {
        0: 1,
        1: good.signing_pk,
        2: good.x25519_ik,
        3: True,
        4: good.proof,
    }
    with pytest.raises(DecodeError, match="version"):
        LinkRequest.from_bytes(cbor.encode({**fields, 0: 2}), code.mailbox_id)
    with pytest.raises(InvalidKey):
        LinkRequest.from_bytes(cbor.encode({**fields, 2: bytes(32)}), code.mailbox_id)
    with pytest.raises(DecodeError):
        LinkRequest.from_bytes(cbor.encode({**fields, 4: bytes(63)}), code.mailbox_id)
    with pytest.raises(DecodeError):
        LinkRequest.from_bytes(cbor.encode({k: v for k, v in fields.items() if k}), code.mailbox_id)
    with pytest.raises(DecodeError):
        LinkRequest.from_bytes(bytes(2000), code.mailbox_id)
    # sealed under the right code but not a request
    with pytest.raises(DecodeError):
        open_request(code, code.seal(LinkDirection.TO_PRIMARY, b"\xa0"))


# --- the answer ---------------------------------------------------------------------------


def test_answer_round_trip_and_check() -> None:
    code = _code()
    signing, identity = _new_device()
    request = LinkRequest.create(code.mailbox_id, signing, identity, pq=True)
    answer = _answer(code, request)
    opened = open_answer(code, seal_answer(code, answer, seeded_rng(8)))
    assert opened == answer and opened.state == b"state"
    assert opened.signed_list.to_bytes() == answer.signed_list.to_bytes()
    entry = opened.our_entry(signing.public_key, identity.public_key, True)
    assert entry == request.entry(77, NOW)
    assert "b'state'" not in repr(answer)


def test_answer_check_refuses_what_is_not_exactly_our_keys() -> None:
    code = _code()
    signing, identity = _new_device()
    request = LinkRequest.create(code.mailbox_id, signing, identity, pq=True)
    answer = _answer(code, request)
    other_signing, other_identity = _new_device(11)
    with pytest.raises(UntrustedIdentity):  # another signing key
        answer.our_entry(other_signing.public_key, identity.public_key, True)
    with pytest.raises(UntrustedIdentity):  # another identity key
        answer.our_entry(signing.public_key, other_identity.public_key, True)
    with pytest.raises(UntrustedIdentity):  # pq flag downgraded
        answer.our_entry(signing.public_key, identity.public_key, False)
    wrong_id = LinkAnswer(answer.user_id, 78, answer.master_pk, answer.signed_list, b"")
    with pytest.raises(UntrustedIdentity):
        wrong_id.our_entry(signing.public_key, identity.public_key, True)
    other_user = LinkAnswer("bob", 77, answer.master_pk, answer.signed_list, b"")
    with pytest.raises(UntrustedIdentity, match="another user"):
        other_user.our_entry(signing.public_key, identity.public_key, True)
    foreign_master = SigningKeyPair.generate(seeded_rng(12)).public_key
    other_master = LinkAnswer("alice", 77, foreign_master, answer.signed_list, b"")
    with pytest.raises(UntrustedIdentity, match="master"):
        other_master.our_entry(signing.public_key, identity.public_key, True)
    # version 1 holding the device
    user = make_user("alice", devices=1, seed=5)
    v1 = SignedDeviceList.sign(
        DeviceList("alice", user.master.public_key, 1, NOW, None, (request.entry(77, NOW),)),
        user.master,
    )
    first = LinkAnswer("alice", 77, user.master.public_key, v1, b"")
    with pytest.raises(UntrustedIdentity, match="version 1"):
        first.our_entry(signing.public_key, identity.public_key, True)
    # our keys listed twice (under another id too)
    doubled = user.device_list.successor(
        user.master,
        tuple(
            sorted(
                (
                    *user.device_list.statement.devices,
                    request.entry(77, NOW),
                    request.entry(78, NOW),
                ),
                key=lambda d: d.device_id,
            )
        ),
        NOW,
    )
    twice = LinkAnswer("alice", 77, user.master.public_key, doubled, b"")
    with pytest.raises(UntrustedIdentity, match="twice"):
        twice.our_entry(signing.public_key, identity.public_key, True)


def test_answer_decoding_errors() -> None:
    code = _code()
    signing, identity = _new_device()
    answer = _answer(code, LinkRequest.create(code.mailbox_id, signing, identity, pq=True))
    fields = cbor.decode(answer.to_bytes())
    assert isinstance(fields, dict)
    for key, value in ((0, 2), (1, 2), (3, -1), (4, bytes(31)), (2, "Not A User")):
        with pytest.raises(DecodeError):
            LinkAnswer.from_bytes(cbor.encode({**fields, key: value}))
    with pytest.raises(DecodeError):
        LinkAnswer.from_bytes(cbor.encode({k: v for k, v in fields.items() if k != 6}))
    listed = fields[5]
    assert isinstance(listed, bytes)
    forged = bytearray(listed)
    forged[-1] ^= 1
    with pytest.raises(BadSignature):
        LinkAnswer.from_bytes(cbor.encode({**fields, 5: bytes(forged)}))
    with pytest.raises(DecodeError):
        LinkAnswer.from_bytes(cbor.encode([1, 0]))


def test_refusal() -> None:
    code = _code()
    sealed = seal_refusal(code, seeded_rng(3))
    with pytest.raises(LinkRefused):
        open_answer(code, sealed)
    with pytest.raises(DecryptionError):  # under another code it does not even open
        open_answer(LinkCode(code.mailbox_id, bytes(32)), sealed)
    with pytest.raises(DecodeError, match="version"):
        LinkAnswer.from_bytes(cbor.encode({0: 2, 1: 1}))
    with pytest.raises(DecodeError):
        LinkAnswer.from_bytes(cbor.encode({0: 1, 1: 1, 2: "x"}))


def test_answer_larger_than_a_slot_is_refused() -> None:
    code = _code()
    signing, identity = _new_device()
    answer = _answer(code, LinkRequest.create(code.mailbox_id, signing, identity, pq=True))
    big = LinkAnswer(
        answer.user_id, answer.device_id, answer.master_pk, answer.signed_list, bytes(70_000)
    )
    with pytest.raises(InvalidArgument):
        seal_answer(code, big)
