"""Recovery export of the master key (DESIGN 4.2; docs/protocol.md 2.4)."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from e2ee import cbor
from e2ee.errors import DecodeError, InvalidArgument
from e2ee.keys import SigningKeyPair
from e2ee.labels import Label
from e2ee.primitives import aead_encrypt, argon2id
from e2ee.recovery import (
    RECOVERY_MEMLIMIT_MAX,
    RECOVERY_MEMLIMIT_MIN,
    RECOVERY_OPSLIMIT_MAX,
    RECOVERY_OPSLIMIT_MIN,
    WrongPassphrase,
    export_master_key,
    import_master_key,
)
from tests.hypothesis_profiles import DECODER_SETTINGS

from .helpers import seeded_rng

PASSPHRASE = b"correct horse battery staple"


@pytest.fixture(scope="module")
def exported() -> tuple[SigningKeyPair, bytes]:
    master = SigningKeyPair.generate(seeded_rng(80))
    return master, export_master_key("alice", master, PASSPHRASE, rng=seeded_rng(81))


def test_round_trip(exported: tuple[SigningKeyPair, bytes]) -> None:
    master, blob = exported
    user_id, restored = import_master_key(blob, PASSPHRASE)
    assert user_id == "alice" and restored == master
    assert master.seed() not in blob


def test_wrong_passphrase_and_tampering(exported: tuple[SigningKeyPair, bytes]) -> None:
    _, blob = exported
    with pytest.raises(WrongPassphrase):
        import_master_key(blob, b"wrong")
    outer = cbor.decode(blob)
    assert isinstance(outer, dict) and isinstance(outer[0], bytes)
    header = cbor.decode(outer[0])
    assert isinstance(header, dict)
    # The header is authenticated: another user id (same parameters) does not open.
    with pytest.raises(WrongPassphrase):
        import_master_key(
            cbor.encode({**outer, 0: cbor.encode({**header, 1: "mallory"})}), PASSPHRASE
        )


@pytest.mark.parametrize(
    ("field", "value"),
    [
        (0, 2),
        (3, RECOVERY_OPSLIMIT_MIN - 1),
        (3, RECOVERY_OPSLIMIT_MAX + 1),
        (4, RECOVERY_MEMLIMIT_MIN - 1),
        (4, RECOVERY_MEMLIMIT_MAX + 1),
    ],
)
def test_header_checked_before_argon2id(
    exported: tuple[SigningKeyPair, bytes], field: int, value: int
) -> None:
    _, blob = exported
    outer = cbor.decode(blob)
    assert isinstance(outer, dict) and isinstance(outer[0], bytes)
    header = cbor.decode(outer[0])
    assert isinstance(header, dict)
    with pytest.raises(DecodeError):
        import_master_key(
            cbor.encode({**outer, 0: cbor.encode({**header, field: value})}), PASSPHRASE
        )


def test_export_refuses_weak_parameters_and_empty_passphrase() -> None:
    master = SigningKeyPair.generate()
    with pytest.raises(InvalidArgument):
        export_master_key("alice", master, b"")
    with pytest.raises(InvalidArgument):
        export_master_key("alice", master, PASSPHRASE, opslimit=1)


def test_sealed_key_must_be_the_named_master_key() -> None:
    named, other = SigningKeyPair.generate(), SigningKeyPair.generate()
    salt, nonce = bytes(16), bytes(24)
    header = cbor.encode(
        {
            0: 1,
            1: "alice",
            2: named.public_key,
            3: RECOVERY_OPSLIMIT_MIN,
            4: RECOVERY_MEMLIMIT_MIN,
            5: salt,
        }
    )
    key = argon2id(
        PASSPHRASE, salt=salt, opslimit=RECOVERY_OPSLIMIT_MIN, memlimit=RECOVERY_MEMLIMIT_MIN
    )
    sealed = aead_encrypt(key, nonce, other.seed(), Label.RECOVERY.value + header)
    with pytest.raises(DecodeError, match="not the master key"):
        import_master_key(cbor.encode({0: header, 1: nonce, 2: sealed}), PASSPHRASE)


@DECODER_SETTINGS
@given(st.binary(max_size=400))
def test_arbitrary_bytes_raise_the_documented_errors(data: bytes) -> None:
    with contextlib.suppress(DecodeError, WrongPassphrase):  # anything else fails
        import_master_key(data, PASSPHRASE)
