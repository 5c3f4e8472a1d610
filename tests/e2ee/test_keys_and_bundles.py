"""Key pairs, secret hygiene in reprs, prekey bundles, and the example command."""

from __future__ import annotations

import argparse

import pytest

from e2ee import cbor
from e2ee.envelope import PreKeyEnvelope
from e2ee.errors import DecodeError, InvalidKey
from e2ee.example import ExampleCommand, command, run_example
from e2ee.keys import DHKeyPair, KEMKeyPair, SigningKeyPair, signed_message, verify_statement
from e2ee.labels import Label
from e2ee.prekeys import PreKeyBundle, PreKeyKind, SignedPublicPreKey
from e2ee.primitives import MLKEM768PrivateKey
from e2ee.ratchet import RatchetState, kdf_ck, message_key_material
from e2ee.session import decrypt, start_session
from e2ee.x3dh import initiate, respond

from .helpers import NOW, make_user, seeded_rng


def test_key_pairs_compare_in_constant_time_and_hash_by_public_key() -> None:
    rng = seeded_rng(60)
    seed = rng(32)
    assert SigningKeyPair(seed) == SigningKeyPair(seed)
    assert SigningKeyPair(seed) != SigningKeyPair.generate(rng)
    assert hash(SigningKeyPair(seed)) == hash(SigningKeyPair(seed).public_key)
    dh = DHKeyPair.generate(rng)
    assert dh == DHKeyPair(dh.private_bytes()) and dh != DHKeyPair.generate(rng)
    assert hash(dh) == hash(dh.public_key)
    kem = KEMKeyPair.generate(rng)
    assert kem == KEMKeyPair(kem.seed()) and hash(kem) == hash(kem.public_key)
    expanded = MLKEM768PrivateKey(kem.seed())
    assert repr(expanded) == f"MLKEM768PrivateKey(public_key={kem.public_key[:8].hex()}...)"
    assert kem != KEMKeyPair.generate(rng)
    for a in (SigningKeyPair(seed), dh, kem):
        assert a.__eq__(object()) is NotImplemented


def test_signed_message_layout() -> None:
    statement = {0: "alice", 1: 7}
    assert signed_message(Label.LINK, statement) == b"e2ee/v1/link\x00" + cbor.encode(statement)
    key = SigningKeyPair.generate()
    verify_statement(key.public_key, Label.LINK, statement, key.sign(Label.LINK, statement))


def test_no_secret_appears_in_any_repr() -> None:
    alice, bob = make_user("alice", seed=61), make_user("bob", seed=62)
    a, b = alice.devices[0], bob.devices[0]
    setup = initiate(a.device, bob.peer(), b.bundle(), NOW, seeded_rng(1))
    record = start_session(a.device, bob.peer(), b.bundle(), None, NOW)
    envelope = record.encrypt(b"top secret plaintext", NOW)
    result = decrypt(b.device, b.prekeys, None, alice.peer(), envelope, NOW)
    session = result.record.active
    assert session is not None
    responder = respond(b.device, b.prekeys, alice.peer(), PreKeyEnvelope.from_bytes(envelope))
    secrets = [
        a.device.signing.seed(),
        a.device.identity.private_bytes(),
        alice.master.seed(),
        setup.shared_key,
        responder.shared_key,
        responder.signed_prekey.private_bytes(),
        session.ratchet.root_key,
        session.ratchet.our_ratchet.private_bytes(),
        session.ratchet.root_key[::-1],
        b"top secret plaintext",
    ]
    objects = [
        a.device,
        a.prekeys,
        alice.master,
        a.device.identity,
        KEMKeyPair.generate(),
        setup,
        responder,
        result,
        result.record,
        session,
        session.ratchet,
    ]
    for obj in objects:
        text = repr(obj)
        for secret in secrets:
            assert secret.hex() not in text and secret.hex()[:16] not in text, type(obj)
        assert "top secret" not in text


def test_chain_kdfs_match_the_ratchet() -> None:
    spk = DHKeyPair.generate()
    alice = RatchetState.initiator_start(bytes(32), bytes(range(32)), spk.public_key)
    chain_key = alice.send_ck
    assert chain_key is not None
    message_key, next_key = kdf_ck(chain_key)
    assert len(message_key_material(message_key)) == 56
    alice.encrypt(b"x")
    assert alice.send_ck == next_key


def test_bundle_round_trips_with_and_without_optional_keys() -> None:
    bob = make_user("bob", seed=63)
    device = bob.devices[0]
    full = device.bundle()
    assert PreKeyBundle.from_bytes(full.to_bytes()) == full
    last = device.bundle(opk=False, last_resort=True)
    assert last.kem_prekey is not None and last.kem_prekey.kind is PreKeyKind.KEM_LAST_RESORT
    assert PreKeyBundle.from_bytes(last.to_bytes()) == last
    bare = device.bundle(opk=False, kem=False)
    assert PreKeyBundle.from_bytes(bare.to_bytes()) == bare
    value = cbor.decode(bare.to_bytes())
    assert isinstance(value, dict)
    with pytest.raises(DecodeError):  # last-resort flag without a KEM prekey
        PreKeyBundle.from_bytes(cbor.encode({**value, 5: True}))
    with pytest.raises(DecodeError):  # the flag is only ever true
        PreKeyBundle.from_bytes(cbor.encode({**value, 5: False}))


def test_prekey_decoding_validates_keys() -> None:
    bob = make_user("bob", seed=64)
    spk = bob.devices[0].signed_prekey
    value = spk.to_value()
    assert isinstance(value, dict)
    assert SignedPublicPreKey.from_value(value, PreKeyKind.SIGNED) == spk
    with pytest.raises(InvalidKey):
        SignedPublicPreKey.from_value({**value, 2: bytes(32)}, PreKeyKind.SIGNED)
    with pytest.raises(DecodeError):  # an X25519 key where a KEM key belongs
        SignedPublicPreKey.from_value(value, PreKeyKind.KEM)
    kem = bob.devices[0].kem_one_time[0].to_value()
    assert isinstance(kem, dict)
    with pytest.raises(InvalidKey):
        SignedPublicPreKey.from_value({**kem, 2: b"\xff" * 1184}, PreKeyKind.KEM)


def test_example_command_tells_the_whole_story(capsys: pytest.CaptureFixture[str]) -> None:
    lines: list[str] = []
    run_example(lines)
    story = "\n".join(lines)
    for expected in [
        "PQXDH",
        "bob decrypted: 'hello bob",
        "DuplicateMessage",
        "refused a tampered message",
        "verifies: True",
    ]:
        assert expected in story
    parser = argparse.ArgumentParser()
    command.configure(parser)
    assert isinstance(command, ExampleCommand)
    assert command.run(parser.parse_args([])) == 0
    assert "safety number:" in capsys.readouterr().out
