"""User ids, device ids, addresses (e2ee/identifiers.py) and the label registry
(e2ee/labels.py; docs/protocol.md 1.3, 1.4), with the security case "a signature
made under one label fails under every other"."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from e2ee.errors import BadSignature, DecodeError
from e2ee.identifiers import (
    DEVICE_ID_MAX,
    Address,
    InvalidUserId,
    check_device_id,
    check_user_id,
    new_device_id,
)
from e2ee.keys import SigningKeyPair, signed_message, verify_statement
from e2ee.labels import ALL_LABELS, SIGNATURE_LABELS, Label
from tests.e2ee.helpers import seeded_rng
from tests.hypothesis_profiles import DECODER_SETTINGS

USER_ID = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")

# --- user ids ------------------------------------------------------------------------------

VALID_USER_IDS = [
    "a",
    "0",
    "alice",
    "bob.smith",
    "carol_1",
    "dave-2",
    "a" * 63,
    "9" + "._-" * 20 + "z",
    "a.",
    "a-",
    "a_",
    "a..b",
]

INVALID_USER_IDS: list[object] = [
    "",
    "a" * 64,  # 64 characters
    "b" * 100,
    "Alice",  # upper case
    "alicE",
    "ALICE",
    ".alice",  # leading punctuation
    "-alice",
    "_alice",
    "alice bob",  # space
    " alice",
    "alice\n",  # a trailing newline ($ would have matched it)
    "\nalice",
    "alice\x00",
    "ali/ce",
    "ali@ce",
    "alice+1",
    "\u00e9lise",  # unicode letters
    "alic\u0435",  # Cyrillic e
    "\u0131",  # dotless i (lower-cases from I in some locales)
    "\uff41",  # fullwidth a
    "\u0661",  # Arabic-Indic digit one
    "a\u200b",  # zero-width space
    b"alice",  # not a string
    None,
    1,
    ["alice"],
]


@pytest.mark.parametrize("user_id", VALID_USER_IDS)
def test_valid_user_ids(user_id: str) -> None:
    assert check_user_id(user_id) is user_id


@pytest.mark.parametrize("user_id", INVALID_USER_IDS, ids=repr)
def test_invalid_user_ids(user_id: object) -> None:
    with pytest.raises(InvalidUserId):
        check_user_id(user_id)
    assert issubclass(InvalidUserId, DecodeError)


def test_user_id_length_boundary() -> None:
    assert check_user_id("x" * 63) == "x" * 63
    with pytest.raises(InvalidUserId):
        check_user_id("x" * 64)


@DECODER_SETTINGS
@given(st.text(max_size=70) | st.from_regex(USER_ID, fullmatch=True))
def test_user_id_rule_is_the_regex(user_id: str) -> None:
    valid = user_id.isascii() and USER_ID.fullmatch(user_id) is not None
    if valid:
        assert check_user_id(user_id) == user_id
    else:
        with pytest.raises(InvalidUserId):
            check_user_id(user_id)


# --- device ids and addresses ---------------------------------------------------------------


@pytest.mark.parametrize("device_id", [0, 1, 1000, DEVICE_ID_MAX])
def test_valid_device_ids(device_id: int) -> None:
    assert DEVICE_ID_MAX == 2**32 - 1
    assert check_device_id(device_id) == device_id


@pytest.mark.parametrize(
    "device_id", [-1, DEVICE_ID_MAX + 1, 2**64, True, False, 1.0, "1", None, b"\x01"], ids=repr
)
def test_invalid_device_ids(device_id: object) -> None:
    with pytest.raises(DecodeError):
        check_device_id(device_id)


def test_address() -> None:
    address = Address("alice", 42)
    assert str(address) == "alice.42"
    assert address == Address("alice", 42)
    assert hash(address) == hash(Address("alice", 42))
    assert address != Address("alice", 43)
    assert str(Address("a.b", DEVICE_ID_MAX)) == f"a.b.{DEVICE_ID_MAX}"


@pytest.mark.parametrize(
    ("user_id", "device_id"),
    [("Alice", 1), ("", 1), ("alice", -1), ("alice", DEVICE_ID_MAX + 1), ("alice", True)],
)
def test_address_validates(user_id: str, device_id: int) -> None:
    with pytest.raises(DecodeError):
        Address(user_id, device_id)


def test_new_device_id_is_32_bit_and_random() -> None:
    rng = seeded_rng(3)
    ids = {new_device_id(frozenset(), rng) for _ in range(50)}
    assert len(ids) == 50
    assert all(0 <= i <= DEVICE_ID_MAX for i in ids)
    assert new_device_id(set()) in range(DEVICE_ID_MAX + 1)  # the default rng


def test_new_device_id_avoids_used_ids() -> None:
    """A scripted rng offers used ids first: they are skipped, never returned."""
    offered = [7, 9, 7, 0, DEVICE_ID_MAX, 12345]
    calls: list[int] = []

    def scripted(n: int) -> bytes:
        calls.append(n)
        return offered[len(calls) - 1].to_bytes(n, "big")

    used = {7, 9, 0, DEVICE_ID_MAX}
    assert new_device_id(used, scripted) == 12345
    assert calls == [4] * 6
    assert new_device_id(frozenset(used), lambda n: (5).to_bytes(n, "big")) == 5


@DECODER_SETTINGS
@given(st.sets(st.integers(0, 255), max_size=200), st.integers(0, 2**32))
def test_new_device_id_never_returns_a_used_id(used: set[int], seed: int) -> None:
    # A tiny id space (one random byte, zero-extended) makes collisions frequent.
    rng = seeded_rng(seed)

    def small(n: int) -> bytes:
        return bytes(n - 1) + rng(1)

    assert new_device_id(used, small) not in used


# --- labels --------------------------------------------------------------------------------


def test_labels_are_distinct_nul_free_ascii() -> None:
    values = [label.value for label in ALL_LABELS]
    assert len(values) == len(set(values)) == len(Label)
    for value in values:
        assert isinstance(value, bytes)
        assert value.isascii()
        assert b"\x00" not in value
        assert value.startswith(b"e2ee/v1/")
        assert all(0x20 < byte < 0x7F for byte in value)  # printable, no spaces


def test_no_label_is_a_prefix_of_another() -> None:
    # With the NUL separator this is not needed for signatures, but it keeps the
    # registry unambiguous for HKDF info strings too.
    for a in ALL_LABELS:
        for b in ALL_LABELS:
            assert a is b or not b.value.startswith(a.value)


def test_label_registry_matches_the_specification() -> None:
    assert {label.value.decode() for label in ALL_LABELS} == {
        "e2ee/v1/device-list",
        "e2ee/v1/signed-prekey",
        "e2ee/v1/one-time-prekey",
        "e2ee/v1/kem-prekey",
        "e2ee/v1/kem-last-resort",
        "e2ee/v1/relay-auth",
        "e2ee/v1/register",
        "e2ee/v1/link",
        "e2ee/v1/session-ad",
        "e2ee/v1/x3dh",
        "e2ee/v1/pqxdh",
        "e2ee/v1/ratchet",
        "e2ee/v1/message",
        "e2ee/v1/store",
        "e2ee/v1/share-key",
        "e2ee/v1/share-proof",
        "e2ee/v1/recovery",  # docs/protocol.md 2.4
    }
    assert set(SIGNATURE_LABELS) <= set(ALL_LABELS)
    assert len(set(SIGNATURE_LABELS)) == len(SIGNATURE_LABELS) == 8
    assert tuple(Label) == ALL_LABELS


def test_signed_message_layout() -> None:
    statement = {0: "alice", 1: 5}
    message = signed_message(Label.DEVICE_LIST, statement)
    assert message == b"e2ee/v1/device-list\x00" + bytes.fromhex("a20065616c6963650105")


SIGNER = SigningKeyPair.generate(seeded_rng(11))
STATEMENTS = [
    {0: "alice", 1: 1001, 2: 7, 3: 1_700_000_000_000, 4: bytes(32)},
    {},
    [b"x", None, True],
    0,
]


@pytest.mark.parametrize("label", ALL_LABELS, ids=lambda label: label.value.decode())
def test_a_signature_made_under_one_label_fails_under_every_other(label: Label) -> None:
    """The security case of DESIGN 4.1: domain separation by label. Checked for every
    signature label and, beyond what the protocol needs, for every label."""
    for statement in STATEMENTS:
        signature = SIGNER.sign(label, statement)
        verify_statement(SIGNER.public_key, label, statement, signature)
        for other in ALL_LABELS:
            if other is label:
                continue
            with pytest.raises(BadSignature):
                verify_statement(SIGNER.public_key, other, statement, signature)


def test_signature_labels_are_all_covered() -> None:
    # The test above runs for every label, so for every signature label.
    assert set(SIGNATURE_LABELS) <= set(ALL_LABELS)
    assert {label.value for label in SIGNATURE_LABELS} == {
        b"e2ee/v1/device-list",
        b"e2ee/v1/signed-prekey",
        b"e2ee/v1/one-time-prekey",
        b"e2ee/v1/kem-prekey",
        b"e2ee/v1/kem-last-resort",
        b"e2ee/v1/relay-auth",
        b"e2ee/v1/register",
        b"e2ee/v1/link",
    }


def test_a_signature_fails_for_another_statement_or_key() -> None:
    statement = STATEMENTS[0]
    signature = SIGNER.sign(Label.DEVICE_LIST, statement)
    with pytest.raises(BadSignature):
        verify_statement(SIGNER.public_key, Label.DEVICE_LIST, {**statement, 2: 8}, signature)
    other = SigningKeyPair.generate(seeded_rng(12))
    with pytest.raises(BadSignature):
        verify_statement(other.public_key, Label.DEVICE_LIST, statement, signature)
    tampered = bytes([signature[0] ^ 1]) + signature[1:]
    with pytest.raises(BadSignature):
        verify_statement(SIGNER.public_key, Label.DEVICE_LIST, statement, tampered)
