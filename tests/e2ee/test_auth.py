"""The relay-auth statement (DESIGN 5)."""

from __future__ import annotations

from typing import Any

import pytest

from e2ee import cbor
from e2ee.auth import RELAY_NONCE_SIZE, relay_auth_statement, sign_relay_auth, verify_relay_auth
from e2ee.errors import BadSignature, DecodeError, InvalidArgument
from e2ee.keys import SigningKeyPair, signed_message
from e2ee.labels import Label

from .helpers import seeded_rng

DEVICE = SigningKeyPair.generate(seeded_rng(90))
VALUES: dict[str, Any] = {
    "origin": "https://relay.example",
    "user_id": "alice",
    "device_id": 7,
    "nonce": bytes(range(RELAY_NONCE_SIZE)),
    "spki_sha256": bytes(32),
}


def test_statement_layout() -> None:
    statement = relay_auth_statement(**VALUES)
    assert statement == {
        0: "https://relay.example",
        1: "alice",
        2: 7,
        3: VALUES["nonce"],
        4: bytes(32),
    }
    signature = sign_relay_auth(DEVICE, **VALUES)
    assert len(signature) == 64
    assert signed_message(Label.RELAY_AUTH, statement).startswith(b"e2ee/v1/relay-auth\x00")
    assert cbor.decode(cbor.encode(statement)) == statement
    verify_relay_auth(DEVICE.public_key, signature, **VALUES)
    verify_relay_auth(
        DEVICE.public_key,
        sign_relay_auth(DEVICE, **{**VALUES, "spki_sha256": None}),
        **{**VALUES, "spki_sha256": None},
    )


@pytest.mark.parametrize(
    ("field", "other"),
    [
        ("origin", "https://evil.example"),
        ("user_id", "mallory"),
        ("device_id", 8),
        ("nonce", bytes(RELAY_NONCE_SIZE)),
        ("spki_sha256", None),
        ("spki_sha256", b"\x01" * 32),
    ],
)
def test_every_field_is_bound(field: str, other: object) -> None:
    signature = sign_relay_auth(DEVICE, **VALUES)
    with pytest.raises(BadSignature):
        verify_relay_auth(DEVICE.public_key, signature, **{**VALUES, field: other})


def test_another_label_or_key_does_not_verify() -> None:
    statement = relay_auth_statement(**VALUES)
    with pytest.raises(BadSignature):
        verify_relay_auth(DEVICE.public_key, DEVICE.sign(Label.REGISTER, statement), **VALUES)
    with pytest.raises(BadSignature):
        verify_relay_auth(
            SigningKeyPair.generate().public_key, sign_relay_auth(DEVICE, **VALUES), **VALUES
        )


@pytest.mark.parametrize(
    ("field", "bad", "error"),
    [
        ("origin", "", InvalidArgument),
        ("origin", "x" * 513, InvalidArgument),
        ("nonce", bytes(31), InvalidArgument),
        ("spki_sha256", bytes(31), InvalidArgument),
        ("user_id", "Alice", DecodeError),
        ("device_id", 2**32, DecodeError),
    ],
)
def test_malformed_values_are_refused(field: str, bad: object, error: type[Exception]) -> None:
    with pytest.raises(error):
        relay_auth_statement(**{**VALUES, field: bad})
