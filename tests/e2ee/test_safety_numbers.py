"""Safety numbers and their QR payload (e2ee/safety_numbers.py; docs/protocol.md 7)."""

from __future__ import annotations

import hashlib

import pytest

from e2ee import cbor
from e2ee.errors import DecodeError
from e2ee.identifiers import InvalidUserId
from e2ee.keys import SigningKeyPair
from e2ee.safety_numbers import (
    FINGERPRINT_ITERATIONS,
    FINGERPRINT_VERSION,
    SafetyNumber,
    fingerprint,
)
from tests.e2ee.helpers import seeded_rng

_rng = seeded_rng(7)
ALICE_PK = SigningKeyPair.generate(_rng).public_key
BOB_PK = SigningKeyPair.generate(_rng).public_key
OTHER_PK = SigningKeyPair.generate(_rng).public_key

ALICE_VIEW = SafetyNumber.compute("alice", ALICE_PK, "bob", BOB_PK)
BOB_VIEW = SafetyNumber.compute("bob", BOB_PK, "alice", ALICE_PK)


def reference_fingerprint(user_id: str, master_pk: bytes) -> bytes:
    """docs/protocol.md 7, written out independently."""
    key = b"\x45" + master_pk
    h = (1).to_bytes(2, "big") + key + user_id.encode("ascii")
    for _ in range(5200):
        h = hashlib.sha512(h + key).digest()
    return h


def reference_digits(h: bytes) -> str:
    return "".join(
        str(int.from_bytes(h[i : i + 5], "big") % 100000).zfill(5) for i in range(0, 30, 5)
    )


def qr(version: cbor.Value, local: cbor.Value, remote: cbor.Value) -> bytes:
    return cbor.encode({0: version, 1: local, 2: remote})


def test_fingerprint_matches_the_specification() -> None:
    assert FINGERPRINT_VERSION == 1
    assert FINGERPRINT_ITERATIONS == 5200
    assert fingerprint("alice", ALICE_PK) == reference_fingerprint("alice", ALICE_PK)
    assert len(fingerprint("alice", ALICE_PK)) == 64
    assert ALICE_VIEW.local_fingerprint == reference_fingerprint("alice", ALICE_PK)
    assert ALICE_VIEW.remote_fingerprint == reference_fingerprint("bob", BOB_PK)


def test_fingerprint_iterations_parameter() -> None:
    key = b"\x45" + ALICE_PK
    start = b"\x00\x01" + key + b"alice"
    assert fingerprint("alice", ALICE_PK, iterations=0) == start
    assert fingerprint("alice", ALICE_PK, iterations=1) == hashlib.sha512(start + key).digest()


def test_fingerprint_checks_the_user_id() -> None:
    with pytest.raises(InvalidUserId):
        fingerprint("Alice", ALICE_PK)
    with pytest.raises(InvalidUserId):
        SafetyNumber.compute("alice", ALICE_PK, "", BOB_PK)


def test_sixty_digits() -> None:
    digits = ALICE_VIEW.digits
    assert len(digits) == 60
    assert digits.isdigit()
    assert digits.isascii()
    halves = {
        reference_digits(reference_fingerprint("alice", ALICE_PK)),
        reference_digits(reference_fingerprint("bob", BOB_PK)),
    }
    assert digits == min(halves) + max(halves)


def test_symmetric_between_the_two_users() -> None:
    assert ALICE_VIEW.digits == BOB_VIEW.digits
    assert ALICE_VIEW.display() == BOB_VIEW.display()
    # The fingerprints themselves are swapped, not equal.
    assert ALICE_VIEW.local_fingerprint == BOB_VIEW.remote_fingerprint
    assert ALICE_VIEW.remote_fingerprint == BOB_VIEW.local_fingerprint
    assert ALICE_VIEW != BOB_VIEW


def test_smaller_half_first_whichever_side_is_local() -> None:
    # One of the two views has the smaller half local, the other the larger.
    orders = set()
    for view in (ALICE_VIEW, BOB_VIEW):
        local = reference_digits(view.local_fingerprint)
        remote = reference_digits(view.remote_fingerprint)
        orders.add(local <= remote)
        assert view.digits == min(local, remote) + max(local, remote)
    assert orders == {True, False}


def test_same_key_on_both_sides() -> None:
    view = SafetyNumber.compute("alice", ALICE_PK, "alice", ALICE_PK)
    assert view.digits[:30] == view.digits[30:]


def test_display_groups() -> None:
    display = ALICE_VIEW.display()
    groups = display.split(" ")
    assert len(groups) == 12
    assert all(len(g) == 5 and g.isdigit() for g in groups)
    assert "".join(groups) == ALICE_VIEW.digits
    assert len(display) == 60 + 11


def test_changed_master_key_changes_the_number() -> None:
    changed = SafetyNumber.compute("alice", ALICE_PK, "bob", OTHER_PK)
    assert changed.digits != ALICE_VIEW.digits
    assert reference_digits(ALICE_VIEW.local_fingerprint) in changed.digits  # alice's half stays
    assert changed.qr_payload() != ALICE_VIEW.qr_payload()
    assert not ALICE_VIEW.verify_digits(changed.digits)
    # Bob's key replaced by an attacker: Alice's scan of the attacker-side QR fails.
    attacker_view = SafetyNumber.compute("bob", OTHER_PK, "alice", ALICE_PK)
    assert not ALICE_VIEW.verify_qr(attacker_view.qr_payload())
    # Own key changed too.
    assert SafetyNumber.compute("alice", OTHER_PK, "bob", BOB_PK).digits != ALICE_VIEW.digits


def test_changed_user_id_changes_the_number() -> None:
    assert SafetyNumber.compute("alice", ALICE_PK, "bob2", BOB_PK).digits != ALICE_VIEW.digits


def test_verify_digits() -> None:
    assert ALICE_VIEW.verify_digits(ALICE_VIEW.digits)
    assert ALICE_VIEW.verify_digits(BOB_VIEW.digits)
    assert ALICE_VIEW.verify_digits(ALICE_VIEW.display())
    assert ALICE_VIEW.verify_digits("  " + ALICE_VIEW.display().replace(" ", "\n") + "\t")
    wrong = ALICE_VIEW.digits[:-1] + str((int(ALICE_VIEW.digits[-1]) + 1) % 10)
    for candidate in (
        wrong,
        ALICE_VIEW.digits[:-1],
        ALICE_VIEW.digits + "0",
        "",
        ALICE_VIEW.digits[30:] + ALICE_VIEW.digits[:30],  # halves swapped
        "\u0661" * 60,  # Arabic-Indic digits are not the number
    ):
        assert not ALICE_VIEW.verify_digits(candidate)


def test_qr_payload_layout() -> None:
    payload = ALICE_VIEW.qr_payload()
    assert cbor.decode(payload) == {
        0: 1,
        1: ALICE_VIEW.local_fingerprint[:32],
        2: ALICE_VIEW.remote_fingerprint[:32],
    }
    assert payload == qr(1, ALICE_VIEW.local_fingerprint[:32], ALICE_VIEW.remote_fingerprint[:32])


def test_verify_qr_accepts_the_contacts_payload() -> None:
    assert BOB_VIEW.verify_qr(ALICE_VIEW.qr_payload())
    assert ALICE_VIEW.verify_qr(BOB_VIEW.qr_payload())


def test_verify_qr_refuses_our_own_payload() -> None:
    """Our own payload has the halves swapped relative to what we expect."""
    assert not ALICE_VIEW.verify_qr(ALICE_VIEW.qr_payload())
    assert not BOB_VIEW.verify_qr(BOB_VIEW.qr_payload())


def test_verify_qr_refuses_duplicated_halves() -> None:
    local = ALICE_VIEW.local_fingerprint[:32]
    remote = ALICE_VIEW.remote_fingerprint[:32]
    assert ALICE_VIEW.verify_qr(qr(1, remote, local))  # the genuine one, for contrast
    assert not ALICE_VIEW.verify_qr(qr(1, local, local))
    assert not ALICE_VIEW.verify_qr(qr(1, remote, remote))


def test_verify_qr_refuses_one_wrong_half() -> None:
    local = ALICE_VIEW.local_fingerprint[:32]
    remote = ALICE_VIEW.remote_fingerprint[:32]
    flipped_remote = bytes([remote[0] ^ 1]) + remote[1:]
    flipped_local = local[:-1] + bytes([local[-1] ^ 0x80])
    assert not ALICE_VIEW.verify_qr(qr(1, flipped_remote, local))
    assert not ALICE_VIEW.verify_qr(qr(1, remote, flipped_local))


@pytest.mark.parametrize("version", [0, 2, 255, 2**64 - 1])
def test_verify_qr_other_version(version: int) -> None:
    payload = qr(version, ALICE_VIEW.remote_fingerprint[:32], ALICE_VIEW.local_fingerprint[:32])
    with pytest.raises(DecodeError, match="version"):
        ALICE_VIEW.verify_qr(payload)


LOCAL = BOB_VIEW.local_fingerprint[:32]
REMOTE = BOB_VIEW.remote_fingerprint[:32]


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"\x00",
        b"\xa0",
        ALICE_VIEW.qr_payload()[:-1],  # truncated
        ALICE_VIEW.qr_payload() + b"\x00",  # trailing byte
        cbor.encode([1, REMOTE, LOCAL]),  # not a map
        cbor.encode({0: 1, 1: REMOTE}),  # missing half
        cbor.encode({0: 1, 1: REMOTE, 2: LOCAL, 3: b""}),  # unknown field
        qr(-1, REMOTE, LOCAL),
        qr(True, REMOTE, LOCAL),  # a boolean is not a version
        qr("1", REMOTE, LOCAL),
        qr(1, REMOTE[:31], LOCAL),  # halves of the wrong size
        qr(1, REMOTE, LOCAL + b"\x00"),
        qr(1, bytes(64), LOCAL),  # the whole 64-byte fingerprint is not the QR half
        qr(1, REMOTE.hex(), LOCAL),
        qr(1, REMOTE, None),
        b"\xa3\x00\x01\x01\x58\x20" + REMOTE + b"\x02\x58\x20" + LOCAL[:-1],  # cut short
        bytes(300),  # over the QR size limit
    ],
)
def test_verify_qr_malformed(payload: bytes) -> None:
    with pytest.raises(DecodeError):
        ALICE_VIEW.verify_qr(payload)


def test_verify_qr_size_limit_checked_first() -> None:
    genuine = ALICE_VIEW.qr_payload()
    # A valid payload padded past 256 bytes with trailing junk is refused as too large.
    with pytest.raises(DecodeError):
        BOB_VIEW.verify_qr(genuine + bytes(256))
