"""The pinned vectors ``tests/vectors/*.json``, checked against the package *and* the
independent reference (CONVENTIONS 13).

For every file, one group of tests feeds the vector's inputs to ``e2ee`` and another
feeds them to ``reference.py`` (written from ``docs/protocol.md`` alone, never
importing ``e2ee``); both must reproduce every expected output byte for byte, so a
mistake made the same way in the package and in the reading of the document is the
only one that could pass. A missing vector file is a failure, not a skip.
``generate.py`` (run by hand) wrote the files.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from e2ee import cbor
from e2ee import x3dh as e2ee_x3dh
from e2ee.device_list import DeviceEntry, DeviceList, PeerDevice, SignedDeviceList
from e2ee.envelope import MessageEnvelope, PreKeyEnvelope, Suite
from e2ee.keys import DHKeyPair, KEMKeyPair, SigningKeyPair, signed_message
from e2ee.labels import Label
from e2ee.payload import Payload
from e2ee.prekeys import PreKeyBundle, PreKeyKind, SignedPublicPreKey, prekey_statement
from e2ee.primitives import sha256
from e2ee.ratchet import RatchetState, kdf_ck, message_key_material
from e2ee.safety_numbers import SafetyNumber, fingerprint
from e2ee.session import decrypt

HERE = Path(__file__).resolve().parent
Vector = dict[str, Any]


def _load_module(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"tests_vectors_{name}", HERE / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while building
    spec.loader.exec_module(module)
    return module


ref = _load_module("reference")
gen = _load_module("generate")  # the builders that read a vector's inputs into e2ee objects
b = bytes.fromhex


def load(name: str) -> Vector:
    path = HERE / name
    if not path.exists():
        pytest.fail(f"vector file {name} is missing: run tests/vectors/generate.py")
    data: Vector = json.loads(path.read_text())
    return data


def cases_of(name: str, key: str = "cases") -> list[Any]:
    """Parametrize over a file's cases (a missing file fails in the test itself)."""
    path = HERE / name
    if not path.exists():
        return [pytest.param(None, id=f"{name}-missing")]
    return [pytest.param(c, id=str(c.get("name", i))) for i, c in enumerate(load(name)[key])]


# --- the reference stands alone ----------------------------------------------------------

ALLOWED_REFERENCE_IMPORTS = frozenset(
    {"__future__", "hashlib", "hmac", "struct", "json", "dataclasses", "nacl", "cryptography"}
)


def imported_modules(source: str) -> set[str]:
    """Every module a source imports, including ``importlib.import_module("x")`` and
    ``__import__("x")`` with a literal name."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            found.add("." * node.level + (node.module or ""))
        elif (
            isinstance(node, ast.Call)
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
            and (
                (isinstance(node.func, ast.Name) and node.func.id == "__import__")
                or (isinstance(node.func, ast.Attribute) and node.func.attr == "import_module")
            )
        ):
            found.add(node.args[0].value)
    return found


def disallowed(source: str) -> set[str]:
    return {
        name
        for name in imported_modules(source)
        if name.startswith(".") or name.split(".")[0] not in ALLOWED_REFERENCE_IMPORTS
    }


@pytest.mark.parametrize(
    "planted",
    [
        "import e2ee",
        "import e2ee.ratchet as r",
        "from e2ee import cbor",
        "from e2ee.x3dh import session_ad",
        "from . import generate",
        "import importlib\nimportlib.import_module('e2ee.cbor')",
        "__import__('e2ee')",
    ],
)
def test_import_check_catches_a_planted_e2ee_import(planted: str) -> None:
    assert disallowed("import hashlib\n" + planted)


def test_reference_imports_only_stdlib_nacl_and_cryptography() -> None:
    source = (HERE / "reference.py").read_text()
    assert disallowed(source) == set()
    assert not any(name.split(".")[0] == "e2ee" for name in imported_modules(source))


# --- shared helpers -----------------------------------------------------------------------


def ref_party(p: Vector) -> dict[int, object]:
    """The reference's session-AD party of a vector party (keys from the seeds)."""
    return ref.party(
        p["user_id"],
        p["device_id"],
        ref.ed25519_pub(b(p["master_seed"])),
        ref.ed25519_pub(b(p["signing_seed"])),
        ref.x25519_pub(b(p["identity_priv"])),
    )


def prekey(data: Vector, kind: str) -> Vector:
    found: Vector = next(pk for pk in data["bob_prekeys"] if pk["kind"] == kind)
    return found


def check_party_keys(p: Vector) -> None:
    assert ref.ed25519_pub(b(p["master_seed"])).hex() == p["master_pk"]
    assert ref.ed25519_pub(b(p["signing_seed"])).hex() == p["signing_pk"]
    assert ref.x25519_pub(b(p["identity_priv"])).hex() == p["identity_pub"]


KEY_AGREEMENT = [
    pytest.param(name, case.values[0], id=f"{name.removesuffix('.json')}-{case.id}")
    for name in ("x3dh.json", "pqxdh.json")
    for case in cases_of(name)
]


# --- x3dh.json, pqxdh.json: e2ee ------------------------------------------------------


@pytest.mark.parametrize(("name", "case"), KEY_AGREEMENT)
def test_key_agreement_e2ee_initiator(name: str, case: Vector | None) -> None:
    data = load(name)
    assert case is not None
    suite = Suite(data["suite"])
    dh = [b(x) for x in case["dh_outputs"]]
    kem_ss = b(case["kem_ss"]) if suite is Suite.PQXDH else None
    assert e2ee_x3dh.derive_shared_key(suite, dh, kem_ss).hex() == case["sk"]
    assert gen.dh_outputs(data, case) == dh
    if suite is Suite.PQXDH:
        kem_seed = b(prekey(data, case["kem_kind"])["private"])
        # The only randomness that is not an rng input: replaced by the pinned ciphertext.
        with gen.pinned_encapsulation(kem_seed, b(case["kem_ct"])):
            setup, envelope = gen.e2ee_first_message(data, case)
    else:
        setup, envelope = gen.e2ee_first_message(data, case)
    assert setup.suite is suite
    assert setup.shared_key.hex() == case["sk"]
    assert setup.session_ad.hex() == case["session_ad"]
    assert setup.base_key.hex() == case["ek_a_pub"]
    assert envelope.hex() == case["prekey_envelope"]


@pytest.mark.parametrize(("name", "case"), KEY_AGREEMENT)
def test_key_agreement_e2ee_responder(name: str, case: Vector | None) -> None:
    data = load(name)
    assert case is not None
    bob = gen.e2ee_device(data["bob"])
    prekeys, _ = gen.e2ee_prekeys(bob, data["bob_prekeys"])
    alice = gen.e2ee_peer(data["alice"])
    raw = b(case["prekey_envelope"])
    setup = e2ee_x3dh.respond(bob, prekeys, alice, PreKeyEnvelope.from_bytes(raw))
    assert setup.shared_key.hex() == case["sk"]
    assert setup.session_ad.hex() == case["session_ad"]
    if "kem_ct" in case:
        kem = KEMKeyPair(b(prekey(data, case["kem_kind"])["private"]))
        assert kem.decapsulate(b(case["kem_ct"])).hex() == case["kem_ss"]
    result = decrypt(bob, prekeys, None, alice, raw, data["now_ms"])
    assert result.new_session
    assert result.plaintext.hex() == case["plaintext"]


# --- x3dh.json, pqxdh.json: reference -----------------------------------------------------


@pytest.mark.parametrize(("name", "case"), KEY_AGREEMENT)
def test_key_agreement_reference(name: str, case: Vector | None) -> None:
    data = load(name)
    assert case is not None
    alice, bob = data["alice"], data["bob"]
    check_party_keys(alice)
    check_party_keys(bob)
    for pk in data["bob_prekeys"]:
        private = b(pk["private"])
        public = ref.kem_pub(private) if pk["kind"].startswith("kem") else ref.x25519_pub(private)
        assert public.hex() == pk["public"]
    assert [pk["id"] for pk in data["bob_prekeys"]] == list(range(1, len(data["bob_prekeys"]) + 1))
    ek_a = b(case["ek_a_priv"])
    ek_a_pub = ref.x25519_pub(ek_a)
    ik_a_pub = ref.x25519_pub(b(alice["identity_priv"]))
    assert ek_a_pub.hex() == case["ek_a_pub"]
    spk, opk = prekey(data, "spk"), prekey(data, "opk") if case["opk"] else None
    kem = prekey(data, case["kem_kind"]) if "kem_kind" in case else None
    ik_b_pub = ref.x25519_pub(b(bob["identity_priv"]))  # from B's device-list entry

    kem_ss = None
    if kem is not None:
        kem_ss = ref.kem_decaps(b(kem["private"]), b(case["kem_ct"]))
        assert kem_ss.hex() == case["kem_ss"]
    sk_a = ref.shared_key_initiator(
        b(alice["identity_priv"]),
        ek_a,
        ik_b_pub,
        b(spk["public"]),
        None if opk is None else b(opk["public"]),
        kem_ss,
    )
    sk_b = ref.shared_key_responder(
        b(bob["identity_priv"]),
        b(spk["private"]),
        ik_a_pub,
        ek_a_pub,
        None if opk is None else b(opk["private"]),
        None if kem is None else b(kem["private"]),
        None if kem is None else b(case["kem_ct"]),
    )
    assert sk_a.hex() == sk_b.hex() == case["sk"]
    ad = ref.session_ad(
        data["suite"],
        ref_party(alice),
        ref_party(bob),
        ek_a_pub,
        (spk["id"], b(spk["public"])),
        None if opk is None else (opk["id"], b(opk["public"])),
        None if kem is None else (kem["id"], b(kem["public"])),
        None if kem is None else b(case["kem_ct"]),
    )
    assert ad.hex() == case["session_ad"]

    # Alice's first pre-key envelope, rebuilt byte for byte ...
    alice_ratchet = ref.Ratchet.initiator(ad, sk_a, b(spk["public"]), b(case["ratchet_priv"]))
    message = alice_ratchet.encrypt(b(case["plaintext"]))
    built = ref.build_prekey_envelope(
        ref.PreKeyEnvelope(
            data["suite"],
            alice["user_id"],
            alice["device_id"],
            ik_a_pub,
            ek_a_pub,
            spk["id"],
            None if opk is None else opk["id"],
            None if kem is None else kem["id"],
            None if kem is None else b(case["kem_ct"]),
            message,
        )
    )
    assert built.hex() == case["prekey_envelope"]
    # ... and opened on Bob's side from the parsed header alone.
    env = ref.parse_prekey_envelope(built)
    assert (env.ik_a, env.ek_a, env.spk_id) == (ik_a_pub, ek_a_pub, spk["id"])
    bob_ratchet = ref.Ratchet.responder(ad, sk_b, b(spk["private"]))
    plaintext = bob_ratchet.decrypt(env.message)
    assert plaintext.hex() == case["plaintext"]


# --- session_ad.json ----------------------------------------------------------------------


def e2ee_peer_of(p: Vector) -> PeerDevice:
    entry = DeviceEntry(p["device_id"], b(p["signing_pk"]), b(p["x25519_ik"]), True, 0)
    return PeerDevice(p["user_id"], b(p["master_pk"]), entry)


def ref_party_of(p: Vector) -> dict[int, object]:
    return ref.party(
        p["user_id"], p["device_id"], b(p["master_pk"]), b(p["signing_pk"]), b(p["x25519_ik"])
    )


def _opt(pair: Vector | None) -> tuple[int, bytes] | None:
    return None if pair is None else (pair["id"], b(pair["public"]))


@pytest.mark.parametrize("case", cases_of("session_ad.json"))
def test_session_ad_e2ee(case: Vector | None) -> None:
    load("session_ad.json")
    assert case is not None
    ad = e2ee_x3dh.session_ad(
        suite=Suite(case["suite"]),
        initiator=e2ee_peer_of(case["initiator"]),
        responder=e2ee_peer_of(case["responder"]),
        base_key=b(case["ek_a_pub"]),
        signed_prekey=(case["spk"]["id"], b(case["spk"]["public"])),
        one_time_prekey=_opt(case["opk"]),
        kem_prekey=_opt(case["kem"]),
        kem_ciphertext=None if case["kem_ct"] is None else b(case["kem_ct"]),
    )
    assert ad.hex() == case["session_ad"]
    assert sha256(b(case["hash_input"])).hex() == case["session_ad"]


@pytest.mark.parametrize("case", cases_of("session_ad.json"))
def test_session_ad_reference(case: Vector | None) -> None:
    load("session_ad.json")
    assert case is not None
    args = (
        case["suite"],
        ref_party_of(case["initiator"]),
        ref_party_of(case["responder"]),
        b(case["ek_a_pub"]),
        (case["spk"]["id"], b(case["spk"]["public"])),
        _opt(case["opk"]),
        _opt(case["kem"]),
        None if case["kem_ct"] is None else b(case["kem_ct"]),
    )
    assert ref.session_ad_input(*args).hex() == case["hash_input"]
    assert ref.session_ad(*args).hex() == case["session_ad"]


# --- ratchet.json -------------------------------------------------------------------------


def test_ratchet_e2ee() -> None:
    data = load("ratchet.json")
    sk, ad = b(data["sk"]), b(data["session_ad"])
    states = {
        "alice": RatchetState.initiator_start(
            ad, sk, b(data["bob_spk_pub"]), gen.queue_rng(b(data["alice_ratchet_priv"]))
        ),
        "bob": RatchetState.responder_start(ad, sk, DHKeyPair(b(data["bob_spk_priv"]))),
    }
    for who in ("alice", "bob"):
        assert gen.chain_state(states[who], None) == data["initial"][who]
    for i, step in enumerate(data["steps"]):
        sender = step["sender"]
        tx, rx = states[sender], states["bob" if sender == "alice" else "alice"]
        new_key = step["sender_new_ratchet_priv"]
        # A new sending chain starts exactly when the vector says so.
        assert (tx.send_ck is None) == (new_key is not None), i
        rng = gen.queue_rng(b(new_key)) if new_key else gen.queue_rng()
        envelope = tx.encrypt(b(step["plaintext"]), rng)
        assert envelope.hex() == step["envelope"], i
        message_key, next_ck = kdf_ck(b(step["chain_key"]))
        assert message_key.hex() == step["message_key"], i
        material = message_key_material(message_key)
        assert (material[:32].hex(), material[32:].hex()) == (step["aead_key"], step["nonce"])
        assert next_ck == tx.send_ck
        assert gen.chain_state(tx, None) == step["sender_after"], i
        parsed = MessageEnvelope.from_bytes(envelope)
        assert rx.decrypt(parsed, data["now_ms"]).hex() == step["plaintext"], i
        assert gen.chain_state(rx, parsed.ratchet_pk) == step["receiver_after"], i


def ref_state(r: Any, their_pk: bytes | None) -> Vector:
    """A reference ratchet's state in the vector's shape (``recv_ck`` of ``their_pk``)."""
    return {
        "root_key": r.rk.hex(),
        "send_ck": None if r.cks is None else r.cks.hex(),
        "send_n": r.ns,
        "prev_n": r.pn,
        "ratchet_pub": ref.x25519_pub(r.ratchet_sk).hex(),
        "recv_ck": None if their_pk is None or r.ckr is None else r.ckr.hex(),
    }


def test_ratchet_reference() -> None:
    data = load("ratchet.json")
    sk, ad = b(data["sk"]), b(data["session_ad"])
    assert ref.x25519_pub(b(data["bob_spk_priv"])).hex() == data["bob_spk_pub"]
    parties = {
        "alice": ref.Ratchet.initiator(
            ad, sk, b(data["bob_spk_pub"]), b(data["alice_ratchet_priv"])
        ),
        "bob": ref.Ratchet.responder(ad, sk, b(data["bob_spk_priv"])),
    }
    for who in ("alice", "bob"):
        assert ref_state(parties[who], None) == data["initial"][who]
    for i, step in enumerate(data["steps"]):
        sender = step["sender"]
        tx, rx = parties[sender], parties["bob" if sender == "alice" else "alice"]
        plaintext = b(step["plaintext"])
        # The pinned keys alone give the exact envelope ...
        mk, next_ck = ref.kdf_ck(b(step["chain_key"]))
        assert mk.hex() == step["message_key"], i
        assert next_ck.hex() == step["sender_after"]["send_ck"], i
        key, nonce = ref.message_key_material(mk)
        assert (key.hex(), nonce.hex()) == (step["aead_key"], step["nonce"]), i
        direction = step["direction"]
        assert direction == (
            ref.DIRECTION_INITIATOR if sender == "alice" else ref.DIRECTION_RESPONDER
        )
        pinned = ref.encrypt_message(
            mk, ad, direction, b(step["ratchet_pub"]), step["pn"], step["n"], plaintext
        )
        assert pinned.hex() == step["envelope"], i
        assert ref.decrypt_message(mk, ad, direction, pinned) == plaintext
        env = ref.parse_message_envelope(pinned)
        assert (env.ratchet_pub.hex(), env.pn, env.n) == (
            step["ratchet_pub"],
            step["pn"],
            step["n"],
        )
        # ... and so does the reference's own ratchet, replayed from SK.
        new_key = step["sender_new_ratchet_priv"]
        sent = tx.encrypt(plaintext, None if new_key is None else b(new_key))
        assert sent.hex() == step["envelope"], i
        assert ref_state(tx, None) == step["sender_after"], i
        assert rx.decrypt(pinned) == plaintext, i
        assert ref_state(rx, env.ratchet_pub) == step["receiver_after"], i


# --- envelope.json ------------------------------------------------------------------------


def test_message_envelopes_e2ee() -> None:
    data = load("envelope.json")
    assert data["message_envelopes"]
    for v in data["message_envelopes"]:
        env = MessageEnvelope.from_bytes(b(v["bytes"]))
        fields = (env.ratchet_pk.hex(), env.pn, env.n, env.ciphertext.hex(), env.header.hex())
        assert fields == (v["ratchet_pub"], v["pn"], v["n"], v["ciphertext"], v["header"])
        header = MessageEnvelope.encode_header(b(v["ratchet_pub"]), v["pn"], v["n"])
        assert MessageEnvelope.assemble(header, b(v["ciphertext"])).hex() == v["bytes"]


def test_message_envelopes_reference() -> None:
    data = load("envelope.json")
    assert data["message_envelopes"]
    for v in data["message_envelopes"]:
        env = ref.parse_message_envelope(b(v["bytes"]))
        fields = (env.ratchet_pub.hex(), env.pn, env.n, env.ct.hex(), env.header.hex())
        assert fields == (v["ratchet_pub"], v["pn"], v["n"], v["ciphertext"], v["header"])
        built = ref.build_message_envelope(b(v["ratchet_pub"]), v["pn"], v["n"], b(v["ciphertext"]))
        assert built.hex() == v["bytes"]


def _hex_or_none(value: bytes | None) -> str | None:
    return None if value is None else value.hex()


@pytest.mark.parametrize("v", cases_of("envelope.json", "prekey_envelopes"))
def test_prekey_envelope_e2ee(v: Vector | None) -> None:
    load("envelope.json")
    assert v is not None
    env = PreKeyEnvelope.from_bytes(b(v["bytes"]))
    assert gen.prekey_fields(env) == {k: v[k] for k in gen.prekey_fields(env)}
    assert env.to_bytes().hex() == v["bytes"]


@pytest.mark.parametrize("v", cases_of("envelope.json", "prekey_envelopes"))
def test_prekey_envelope_reference(v: Vector | None) -> None:
    load("envelope.json")
    assert v is not None
    env = ref.parse_prekey_envelope(b(v["bytes"]))
    fields = {
        "suite": env.suite,
        "user_id": env.user_id,
        "device_id": env.device_id,
        "ik_a": env.ik_a.hex(),
        "ek_a": env.ek_a.hex(),
        "spk_id": env.spk_id,
        "opk_id": env.opk_id,
        "kem_id": env.kem_id,
        "kem_ct": _hex_or_none(env.kem_ct),
        "message": env.message.hex(),
    }
    assert fields == {k: v[k] for k in fields}
    rebuilt = ref.PreKeyEnvelope(
        v["suite"],
        v["user_id"],
        v["device_id"],
        b(v["ik_a"]),
        b(v["ek_a"]),
        v["spk_id"],
        v["opk_id"],
        v["kem_id"],
        None if v["kem_ct"] is None else b(v["kem_ct"]),
        b(v["message"]),
    )
    assert ref.build_prekey_envelope(rebuilt).hex() == v["bytes"]
    ref.parse_message_envelope(env.message)


# --- payload.json -------------------------------------------------------------------------

# Body fields that are byte strings (hex in the vector); the others are text or ints.
BYTE_FIELDS = frozenset(
    {"original_id", "client_msg_id", "ratchet_pub", "blob_id", "key", "digest", "bytes"}
)


def ref_body(kind: int, body: Vector) -> object:
    if kind == ref.PAYLOAD_TEXT:
        return body["text"]
    if kind == ref.PAYLOAD_BYTES:
        return b(body["bytes"])
    fields = {k: b(x) if k in BYTE_FIELDS else x for k, x in body.items()}
    if "original_body" in fields:
        original = fields["original_body"]
        fields["original_body"] = original["text"] if "text" in original else b(original["bytes"])
    return ref.payload_body(kind, fields)


@pytest.mark.parametrize("v", cases_of("payload.json", "payloads"))
def test_payload_e2ee(v: Vector | None) -> None:
    load("payload.json")
    assert v is not None
    payload = gen.e2ee_payload(v)
    encoded = payload.to_bytes()
    assert encoded.hex() == v["bytes"]
    assert Payload.from_bytes(encoded, from_own_device=True) == payload


@pytest.mark.parametrize("v", cases_of("payload.json", "payloads"))
def test_payload_reference(v: Vector | None) -> None:
    load("payload.json")
    assert v is not None
    body = ref_body(v["type"], v["body"])
    encoded = ref.encode_payload(v["type"], b(v["client_msg_id"]), v["sender_ts_ms"], body)
    assert encoded.hex() == v["bytes"]
    decoded = ref.decode_payload(encoded)
    assert decoded[4] == body
    assert len(decoded[5]) == v["padding_len"]  # type: ignore[arg-type]


# --- safety_number.json -------------------------------------------------------------------


@pytest.mark.parametrize("case", cases_of("safety_number.json"))
def test_safety_number_e2ee(case: Vector | None) -> None:
    load("safety_number.json")
    assert case is not None
    local, remote = case["local"], case["remote"]
    for side in (local, remote):
        assert fingerprint(side["user_id"], b(side["master_pk"])).hex() == side["fingerprint"]
    ours = SafetyNumber.compute(
        local["user_id"], b(local["master_pk"]), remote["user_id"], b(remote["master_pk"])
    )
    theirs = SafetyNumber.compute(
        remote["user_id"], b(remote["master_pk"]), local["user_id"], b(local["master_pk"])
    )
    assert ours.digits == theirs.digits == case["digits"]
    assert ours.qr_payload().hex() == case["qr_payload_local"]
    assert theirs.qr_payload().hex() == case["qr_payload_remote"]
    assert ours.verify_qr(b(case["qr_payload_remote"]))
    assert theirs.verify_qr(b(case["qr_payload_local"]))
    assert not ours.verify_qr(b(case["qr_payload_local"]))


@pytest.mark.parametrize("case", cases_of("safety_number.json"))
def test_safety_number_reference(case: Vector | None) -> None:
    load("safety_number.json")
    assert case is not None
    local = (case["local"]["user_id"], b(case["local"]["master_pk"]))
    remote = (case["remote"]["user_id"], b(case["remote"]["master_pk"]))
    for side, who in ((case["local"], local), (case["remote"], remote)):
        assert ref.fingerprint(*who).hex() == side["fingerprint"]
    assert ref.digits(ref.fingerprint(*local)) == case["local_digits"]
    assert ref.digits(ref.fingerprint(*remote)) == case["remote_digits"]
    assert ref.safety_number(local, remote) == ref.safety_number(remote, local) == case["digits"]
    assert len(case["digits"]) == 60 and case["digits"].isdigit()
    assert ref.qr_payload(local, remote).hex() == case["qr_payload_local"]
    assert ref.qr_payload(remote, local).hex() == case["qr_payload_remote"]


# --- signatures.json ----------------------------------------------------------------------

_KINDS = {
    "spk": PreKeyKind.SIGNED,
    "opk": PreKeyKind.ONE_TIME,
    "kem": PreKeyKind.KEM,
    "kem_last_resort": PreKeyKind.KEM_LAST_RESORT,
}


def e2ee_published(v: Vector) -> SignedPublicPreKey:
    return SignedPublicPreKey(
        _KINDS[v["kind"]], v["prekey_id"], v["created_at_ms"], b(v["public_key"]), b(v["signature"])
    )


def test_prekey_signatures_e2ee() -> None:
    data = load("signatures.json")
    signer = SigningKeyPair(b(data["signer"]["signing_seed"]))
    assert signer.public_key.hex() == data["signer"]["signing_pk"]
    assert [v["kind"] for v in data["prekeys"]] == list(_KINDS)
    published = {}
    for v in data["prekeys"]:
        kind = _KINDS[v["kind"]]
        assert kind.label.value.decode() == v["label"]
        statement = prekey_statement(
            v["user_id"], v["device_id"], v["prekey_id"], v["created_at_ms"], b(v["public_key"])
        )
        assert signed_message(kind.label, statement).hex() == v["signing_bytes"]
        assert signer.sign(kind.label, statement).hex() == v["signature"]
        made = e2ee_published(v)
        made.verify(v["user_id"], v["device_id"], signer.public_key)
        assert cbor.encode(made.to_value()).hex() == v["wire"]
        published[v["kind"]] = made
    for v in data["bundles"]:
        bundle = gen.e2ee_bundle(data["signer"], published, v)
        assert bundle.to_bytes().hex() == v["wire"]
        assert PreKeyBundle.from_bytes(b(v["wire"])) == bundle


def test_prekey_signatures_reference() -> None:
    data = load("signatures.json")
    seed = b(data["signer"]["signing_seed"])
    assert ref.ed25519_pub(seed).hex() == data["signer"]["signing_pk"]
    wire = {}
    for v in data["prekeys"]:
        assert ref.PREKEY_LABELS[v["kind"]].decode() == v["label"]
        statement = ref.prekey_statement(
            v["user_id"], v["device_id"], v["prekey_id"], v["created_at_ms"], b(v["public_key"])
        )
        assert ref.prekey_signing_bytes(v["kind"], statement).hex() == v["signing_bytes"]
        assert ref.ed25519_sign(seed, b(v["signing_bytes"])).hex() == v["signature"]
        wire[v["kind"]] = ref.published_prekey(statement, v["kind"], seed)
        assert ref.cbor(wire[v["kind"]]).hex() == v["wire"]
    signer = data["signer"]
    for v in data["bundles"]:
        kem = v["kem_kind"]
        built = ref.bundle_wire(
            signer["user_id"],
            signer["device_id"],
            wire["spk"],
            wire["opk"] if v["opk"] else None,
            wire[kem] if kem else None,
            kem == "kem_last_resort",
        )
        assert built.hex() == v["wire"]


def e2ee_device_list_of(v: Vector) -> DeviceList:
    return DeviceList(
        v["user_id"],
        b(v["master_pk"]),
        v["version"],
        v["issued_at_ms"],
        None if v["prev_hash"] is None else b(v["prev_hash"]),
        tuple(
            DeviceEntry(
                d["device_id"], b(d["signing_pk"]), b(d["x25519_ik"]), d["pq"], d["added_at_ms"]
            )
            for d in v["devices"]
        ),
    )


def test_device_lists_e2ee() -> None:
    data = load("signatures.json")
    master = SigningKeyPair(b(data["signer"]["master_seed"]))
    previous: SignedDeviceList | None = None
    assert [v["version"] for v in data["device_lists"]] == [1, 2]
    for v in data["device_lists"]:
        statement = e2ee_device_list_of(v)
        assert signed_message(Label.DEVICE_LIST, statement.to_value()).hex() == v["signing_bytes"]
        signed = SignedDeviceList.sign(statement, master)
        assert signed.signature.hex() == v["signature"]
        assert signed.to_bytes().hex() == v["wire"]
        assert signed.digest.hex() == v["digest"]
        assert SignedDeviceList.from_bytes(b(v["wire"])) == signed
        if previous is not None:
            successor = previous.successor(master, statement.devices, v["issued_at_ms"])
            assert successor.to_bytes().hex() == v["wire"]
        previous = signed
    assert gen.e2ee_device_list(data["signer"]).to_bytes().hex() == data["device_lists"][0]["wire"]


def test_device_lists_reference() -> None:
    data = load("signatures.json")
    seed = b(data["signer"]["master_seed"])
    previous_wire: bytes | None = None
    for v in data["device_lists"]:
        assert ref.ed25519_pub(seed).hex() == v["master_pk"]
        prev_hash = None if previous_wire is None else ref.device_list_hash(previous_wire)
        assert _hex_or_none(prev_hash) == v["prev_hash"]
        entries = [
            ref.device_entry(
                d["device_id"], b(d["signing_pk"]), b(d["x25519_ik"]), d["pq"], d["added_at_ms"]
            )
            for d in v["devices"]
        ]
        statement = ref.device_list_statement(
            v["user_id"], b(v["master_pk"]), v["version"], v["issued_at_ms"], prev_hash, entries
        )
        assert ref.signing_bytes(ref.LABEL_DEVICE_LIST, statement).hex() == v["signing_bytes"]
        wire = ref.device_list_wire(statement, seed)
        assert wire.hex() == v["wire"]
        assert ref.device_list_hash(wire).hex() == v["digest"]
        decoded = ref.cbor_decode(wire)
        assert isinstance(decoded, dict)
        assert decoded[1].hex() == v["signature"]
        previous_wire = wire
