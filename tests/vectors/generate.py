"""Write the pinned protocol vectors ``tests/vectors/*.json`` from fixed inputs.

Run by hand from the repository root when a vector is added or the protocol changes
on purpose (never to make a failing test pass)::

    /work/venv/bin/python tests/vectors/generate.py

Every input is fixed: private keys and seeds are ``bytes(range(32))``-style byte
runs (see :func:`fixed`), timestamps and ids are constants, and the ``rng`` the
package takes is a queue of those fixed values (:func:`queue_rng`). The outputs are
what the ``e2ee`` package computes from them; ``test_vectors.py`` then checks that
both the package and the independent ``reference.py`` reproduce every one.

One value cannot be derived from fixed inputs: ML-KEM encapsulation is randomized
in ``cryptography``. The PQXDH ciphertexts are therefore made once by a real
encapsulation and read back from the existing ``pqxdh.json`` on every later run
(the initiator's encapsulation is replaced by "return the pinned ciphertext and its
decapsulated secret"). Running the script twice gives byte-identical files; deleting
``pqxdh.json`` draws new KEM ciphertexts (and so changes ``pqxdh.json`` and the PQXDH
pre-key envelope in ``envelope.json``).

The ``e2ee_*`` builders below turn a vector's JSON inputs into package objects; the
tests use them too, so a vector is always read the way it was written.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from unittest import mock

from e2ee import cbor
from e2ee import x3dh as e2ee_x3dh
from e2ee.device import OurDevice, OurPreKeys
from e2ee.device_list import DeviceEntry, DeviceList, PeerDevice, SignedDeviceList
from e2ee.envelope import MessageEnvelope, PreKeyEnvelope, Suite
from e2ee.keys import DHKeyPair, KEMKeyPair, SigningKeyPair, signed_message
from e2ee.labels import Label
from e2ee.payload import (
    AttachmentRef,
    Body,
    DeviceListNotice,
    Payload,
    PayloadType,
    RetryRequest,
    SyncSent,
)
from e2ee.prekeys import PreKeyBundle, PreKeyKind, SignedPublicPreKey, prekey_statement
from e2ee.primitives import mlkem768_decapsulate, mlkem768_encapsulate, sha256
from e2ee.ratchet import RatchetState, kdf_ck, kdf_rk, message_key_material
from e2ee.safety_numbers import SafetyNumber, fingerprint
from e2ee.session import start_session

HERE = Path(__file__).resolve().parent
NOW = 1_700_000_000_000
DAY = 86_400_000

Vector = dict[str, Any]

# --- fixed inputs ------------------------------------------------------------------------


def fixed(tag: int, size: int = 32) -> bytes:
    """A fixed test key: the byte run ``tag, tag+1, ...`` (mod 256); ``fixed(0)`` is
    ``bytes(range(32))``. Never a real key."""
    return bytes((tag + i) & 0xFF for i in range(size))


def queue_rng(*values: bytes) -> Callable[[int], bytes]:
    """An ``rng`` that hands out ``values`` in order, each of exactly the size asked."""
    pending = list(values)

    def rng(size: int) -> bytes:
        if not pending:
            raise AssertionError("the vector's rng queue is exhausted")
        value = pending.pop(0)
        if len(value) != size:
            raise AssertionError(f"rng asked for {size} bytes, the vector has {len(value)}")
        return value

    return rng


def h(data: bytes) -> str:
    return data.hex()


def b(text: str) -> bytes:
    return bytes.fromhex(text)


def party_input(
    user_id: str, device_id: int, tag: int, *, pq: bool, added_at_ms: int = NOW - 10 * DAY
) -> Vector:
    """A user with one device: master seed, signing seed and identity key from ``tag``."""
    master = SigningKeyPair(fixed(tag))
    signing = SigningKeyPair(fixed(tag + 0x20))
    identity = DHKeyPair(fixed(tag + 0x40))
    return {
        "user_id": user_id,
        "device_id": device_id,
        "master_seed": h(master.seed()),
        "master_pk": h(master.public_key),
        "signing_seed": h(signing.seed()),
        "signing_pk": h(signing.public_key),
        "identity_priv": h(identity.private_bytes()),
        "identity_pub": h(identity.public_key),
        "pq": pq,
        "added_at_ms": added_at_ms,
        "device_list_issued_at_ms": NOW - 2 * DAY,
    }


# Prekeys are made in this order from one counter, so their ids are 1, 2, 3, 4.
_PREKEY_ORDER = ("spk", "opk", "kem", "kem_last_resort")
_PREKEY_KINDS = {
    "spk": PreKeyKind.SIGNED,
    "opk": PreKeyKind.ONE_TIME,
    "kem": PreKeyKind.KEM,
    "kem_last_resort": PreKeyKind.KEM_LAST_RESORT,
}


def prekeys_input(kinds: tuple[str, ...], tag: int, created_at_ms: int = NOW - DAY) -> list[Vector]:
    """Private prekeys of the given kinds (X25519 keys, or 64-byte ML-KEM seeds)."""
    out = []
    for index, kind in enumerate(k for k in _PREKEY_ORDER if k in kinds):
        if _PREKEY_KINDS[kind].is_kem:
            key = KEMKeyPair(fixed(tag + 0x10 * index, 64))
            private, public = key.seed(), key.public_key
        else:
            dh_key = DHKeyPair(fixed(tag + 0x10 * index))
            private, public = dh_key.private_bytes(), dh_key.public_key
        out.append(
            {
                "kind": kind,
                "id": index + 1,
                "created_at_ms": created_at_ms,
                "private": h(private),
                "public": h(public),
            }
        )
    return out


# --- builders from vector inputs (shared with test_vectors.py) ----------------------------


def e2ee_device(p: Vector) -> OurDevice:
    return OurDevice(
        user_id=p["user_id"],
        device_id=p["device_id"],
        master_pk=b(p["master_pk"]),
        signing=SigningKeyPair(b(p["signing_seed"])),
        identity=DHKeyPair(b(p["identity_priv"])),
        pq=p["pq"],
        added_at_ms=p["added_at_ms"],
    )


def e2ee_device_list(p: Vector) -> SignedDeviceList:
    """Version 1 of the party's device list, with its one device."""
    statement = DeviceList(
        p["user_id"],
        b(p["master_pk"]),
        1,
        p["device_list_issued_at_ms"],
        None,
        (e2ee_device(p).entry(),),
    )
    return SignedDeviceList.sign(statement, SigningKeyPair(b(p["master_seed"])))


def e2ee_peer(p: Vector) -> PeerDevice:
    peer = e2ee_device_list(p).statement.peer(p["device_id"])
    assert peer is not None
    return peer


def e2ee_prekeys(
    device: OurDevice, prekeys: list[Vector]
) -> tuple[OurPreKeys, dict[str, SignedPublicPreKey]]:
    """Bob's private prekeys, made through the package's own id counter."""
    ours = OurPreKeys()
    published: dict[str, SignedPublicPreKey] = {}
    for pk in prekeys:
        rng = queue_rng(b(pk["private"]))
        at = pk["created_at_ms"]
        kind = pk["kind"]
        if kind == "spk":
            made = ours.rotate_signed_prekey(device, at, rng)
        elif kind == "kem_last_resort":
            made = ours.rotate_last_resort(device, at, rng)
        else:
            (made,) = ours.one_time_batch(device, at, kem=kind == "kem", count=1, rng=rng)
        assert made.prekey_id == pk["id"], "prekey ids come from the device's counter"
        published[kind] = made
    return ours, published


def e2ee_bundle(p: Vector, published: dict[str, SignedPublicPreKey], case: Vector) -> PreKeyBundle:
    kem = case.get("kem_kind")
    return PreKeyBundle(
        p["user_id"],
        p["device_id"],
        published["spk"],
        published["opk"] if case["opk"] else None,
        published[kem] if kem else None,
    )


@contextmanager
def pinned_encapsulation(kem_seed: bytes, kem_ct: bytes) -> Iterator[None]:
    """Make the initiator's ML-KEM encapsulation return the pinned ciphertext (and the
    secret it decapsulates to) instead of a random one."""

    def encapsulate(public_key: bytes) -> tuple[bytes, bytes]:
        assert public_key == KEMKeyPair(kem_seed).public_key
        return mlkem768_decapsulate(kem_seed, kem_ct), kem_ct

    with mock.patch.object(e2ee_x3dh, "mlkem768_encapsulate", encapsulate):
        yield


def e2ee_first_message(data: Vector, case: Vector) -> tuple[e2ee_x3dh.InitiatorSetup, bytes]:
    """Alice's X3DH/PQXDH setup and her first pre-key envelope for one case."""
    alice, bob = data["alice"], data["bob"]
    our = e2ee_device(alice)
    _, published = e2ee_prekeys(e2ee_device(bob), data["bob_prekeys"])
    bundle = e2ee_bundle(bob, published, case)
    ek, ratchet = b(case["ek_a_priv"]), b(case["ratchet_priv"])
    setup = e2ee_x3dh.initiate(our, e2ee_peer(bob), bundle, data["now_ms"], queue_rng(ek))
    record = start_session(
        our, e2ee_peer(bob), bundle, None, data["now_ms"], queue_rng(ek, ratchet)
    )
    return setup, record.encrypt(b(case["plaintext"]), data["now_ms"])


# --- x3dh.json and pqxdh.json ------------------------------------------------------------


def dh_outputs(data: Vector, case: Vector) -> list[bytes]:
    ik_a = DHKeyPair(b(data["alice"]["identity_priv"]))
    ek_a = DHKeyPair(b(case["ek_a_priv"]))
    keys = {pk["kind"]: b(pk["public"]) for pk in data["bob_prekeys"]}
    dh = [
        ik_a.dh(keys["spk"]),
        ek_a.dh(b(data["bob"]["identity_pub"])),
        ek_a.dh(keys["spk"]),
    ]
    if case["opk"]:
        dh.append(ek_a.dh(keys["opk"]))
    return dh


def _fill_case(data: Vector, case: Vector) -> None:
    """Compute a case's expected outputs with the package."""
    case["ek_a_pub"] = h(DHKeyPair(b(case["ek_a_priv"])).public_key)
    case["dh_outputs"] = [h(x) for x in dh_outputs(data, case)]
    setup, envelope = e2ee_first_message(data, case)
    case["sk"] = h(setup.shared_key)
    case["session_ad"] = h(setup.session_ad)
    case["prekey_envelope"] = h(envelope)


def _key_agreement(suite: Suite, cases: list[Vector], kem: bool, previous: Vector | None) -> Vector:
    bob_kinds = ("spk", "opk", "kem", "kem_last_resort") if kem else ("spk", "opk")
    data: Vector = {
        "description": (
            f"{suite.name} (docs/protocol.md §3) from fixed keys: Alice (initiator) and Bob "
            "(responder) each have one device in a version-1 device list. Per case: the DH "
            "outputs DH1..DH4, SK, the session AD, and Alice's first pre-key envelope "
            "(her first ratchet key is ratchet_priv; plaintext is its inner message)."
            + (
                " kem_ct was made once by a real ML-KEM-768 encapsulation to Bob's KEM "
                "prekey and is pinned: check it on the responder side (decapsulate with "
                "the prekey's 64-byte seed)."
                if kem
                else ""
            )
        ),
        "suite": int(suite),
        "now_ms": NOW,
        "alice": party_input("alice", 0x12345678, 0x00, pq=kem),
        "bob": party_input("bob", 0xDEADBEEF, 0x80, pq=kem),
        "bob_prekeys": prekeys_input(bob_kinds, 0xA0),
        "cases": cases,
    }
    old_cases = {c["name"]: c for c in previous["cases"]} if previous else {}
    seeds = {pk["kind"]: b(pk["private"]) for pk in data["bob_prekeys"]}
    for case in cases:
        if not kem:
            _fill_case(data, case)
            continue
        kem_seed = seeds[case["kem_kind"]]
        old = old_cases.get(case["name"], {})
        if "kem_ct" in old:
            kem_ct = b(old["kem_ct"])
        else:  # made once; see the module docstring
            _, kem_ct = mlkem768_encapsulate(KEMKeyPair(kem_seed).public_key)
        kem_id = next(pk["id"] for pk in data["bob_prekeys"] if pk["kind"] == case["kem_kind"])
        case["kem_id"] = kem_id
        case["kem_ct"] = h(kem_ct)
        case["kem_ss"] = h(mlkem768_decapsulate(kem_seed, kem_ct))
        with pinned_encapsulation(kem_seed, kem_ct):
            _fill_case(data, case)
    return data


def _case(name: str, tag: int, *, opk: bool, kem_kind: str | None = None) -> Vector:
    case: Vector = {
        "name": name,
        "opk": opk,
        "ek_a_priv": h(fixed(tag)),
        "ratchet_priv": h(fixed(tag + 0x08)),
        "plaintext": h(f"first message of case {name}".encode()),
    }
    if kem_kind is not None:
        case["kem_kind"] = kem_kind
    return case


def x3dh_vectors() -> Vector:
    cases = [_case("with_opk", 0x30, opk=True), _case("without_opk", 0x50, opk=False)]
    return _key_agreement(Suite.X3DH, cases, kem=False, previous=None)


def pqxdh_vectors(previous: Vector | None) -> Vector:
    cases = [
        _case("opk_and_one_time_kem", 0x70, opk=True, kem_kind="kem"),
        _case("last_resort_kem_without_opk", 0x90, opk=False, kem_kind="kem_last_resort"),
    ]
    return _key_agreement(Suite.PQXDH, cases, kem=True, previous=previous)


# --- session_ad.json ------------------------------------------------------------------


def _party(p: Vector) -> Vector:
    return {k: p[k] for k in ("user_id", "device_id", "master_pk", "signing_pk")} | {
        "x25519_ik": p["identity_pub"]
    }


def session_ad_vectors(x3dh: Vector, pqxdh: Vector) -> Vector:
    """The session AD and its exact SHA-256 input for the X3DH and PQXDH cases."""
    out = []
    for data in (x3dh, pqxdh):
        keys = {pk["kind"]: pk for pk in data["bob_prekeys"]}
        for case in data["cases"]:
            kem = keys.get(case.get("kem_kind", ""))
            inputs: Vector = {
                "name": f"{Suite(data['suite']).name.lower()}_{case['name']}",
                "suite": data["suite"],
                "initiator": _party(data["alice"]),
                "responder": _party(data["bob"]),
                "ek_a_pub": case["ek_a_pub"],
                "spk": {"id": keys["spk"]["id"], "public": keys["spk"]["public"]},
                "opk": (
                    {"id": keys["opk"]["id"], "public": keys["opk"]["public"]}
                    if case["opk"]
                    else None
                ),
                "kem": None if kem is None else {"id": kem["id"], "public": kem["public"]},
                "kem_ct": case.get("kem_ct"),
            }
            statement: cbor.Value = [
                1,
                inputs["suite"],
                _party_value(inputs["initiator"]),
                _party_value(inputs["responder"]),
                b(inputs["ek_a_pub"]),
                {0: inputs["spk"]["id"], 1: b(inputs["spk"]["public"])},
                {0: keys["opk"]["id"], 1: b(keys["opk"]["public"])} if case["opk"] else None,
                None if kem is None else {0: kem["id"], 1: sha256(b(kem["public"]))},
                None if kem is None else sha256(b(case["kem_ct"])),
            ]
            ad = e2ee_x3dh.session_ad(
                suite=Suite(data["suite"]),
                initiator=e2ee_peer(data["alice"]),
                responder=e2ee_peer(data["bob"]),
                base_key=b(case["ek_a_pub"]),
                signed_prekey=(keys["spk"]["id"], b(keys["spk"]["public"])),
                one_time_prekey=(
                    (keys["opk"]["id"], b(keys["opk"]["public"])) if case["opk"] else None
                ),
                kem_prekey=None if kem is None else (kem["id"], b(kem["public"])),
                kem_ciphertext=None if kem is None else b(case["kem_ct"]),
            )
            assert ad.hex() == case["session_ad"]
            inputs["hash_input"] = h(b"e2ee/v1/session-ad" + cbor.encode(statement))
            assert sha256(b(inputs["hash_input"])) == ad
            inputs["session_ad"] = h(ad)
            out.append(inputs)
    return {
        "description": (
            "Session AD (docs/protocol.md §3): SHA-256 over hash_input = "
            '"e2ee/v1/session-ad" || CBOR([...]). The cases are those of x3dh.json and '
            "pqxdh.json; kem.public is the full ML-KEM-768 encapsulation key."
        ),
        "cases": out,
    }


def _party_value(p: Vector) -> cbor.Value:
    return {
        0: p["user_id"],
        1: p["device_id"],
        2: b(p["master_pk"]),
        3: b(p["signing_pk"]),
        4: b(p["x25519_ik"]),
    }


# --- ratchet.json ------------------------------------------------------------------------

# (sender, plaintext): delivered in order, each right after it is sent.
_CONVERSATION = (
    ("alice", b"A0: hello bob"),
    ("alice", b"A1: second message in alice's first chain"),
    ("alice", b""),
    ("bob", b"B0: hi alice, first reply (bob's first sending chain)"),
    ("bob", b"B1"),
    ("alice", b"A2: alice's second chain, PN = 3"),
    ("bob", b"B2: bob's second chain, PN = 2"),
    ("alice", bytes(range(256))),
)


def chain_state(state: RatchetState, their_pk: bytes | None) -> Vector:
    recv = None
    if their_pk is not None:
        chain = next((c for c in state.receiving if c.ratchet_pk == their_pk), None)
        recv = None if chain is None else h(chain.chain_key)
    return {
        "root_key": h(state.root_key),
        "send_ck": None if state.send_ck is None else h(state.send_ck),
        "send_n": state.send_n,
        "prev_n": state.prev_n,
        "ratchet_pub": h(state.our_ratchet.public_key),
        "recv_ck": recv,
    }


def ratchet_vectors(x3dh: Vector) -> Vector:
    case = x3dh["cases"][0]
    spk = next(pk for pk in x3dh["bob_prekeys"] if pk["kind"] == "spk")
    sk, ad = b(case["sk"]), b(case["session_ad"])
    alice_first = fixed(0xC0)
    new_keys = {
        "alice": [fixed(0xC8 + 8 * i) for i in range(4)],
        "bob": [fixed(0xE0 + 8 * i) for i in range(4)],
    }
    states = {
        "alice": RatchetState.initiator_start(ad, sk, b(spk["public"]), queue_rng(alice_first)),
        "bob": RatchetState.responder_start(ad, sk, DHKeyPair(b(spk["private"]))),
    }
    initial = {
        "alice": chain_state(states["alice"], None),
        "bob": chain_state(states["bob"], None),
    }
    steps = []
    for sender, plaintext in _CONVERSATION:
        receiver = "bob" if sender == "alice" else "alice"
        tx, rx = states[sender], states[receiver]
        # The first message after a DH step on receipt starts a sending chain with a
        # fresh ratchet key (docs/protocol.md §4.3): its chain key is derived here from
        # the public functions, independently of the state's own step.
        new_key: bytes | None = None
        if tx.send_ck is None:
            assert tx.their_ratchet_pk is not None
            new_key = new_keys[sender].pop(0)
            _, chain_key = kdf_rk(tx.root_key, DHKeyPair(new_key).dh(tx.their_ratchet_pk))
        else:
            chain_key = tx.send_ck
        message_key, _ = kdf_ck(chain_key)
        material = message_key_material(message_key)
        envelope = tx.encrypt(plaintext, queue_rng(new_key) if new_key else queue_rng())
        parsed = MessageEnvelope.from_bytes(envelope)
        assert rx.decrypt(parsed, NOW) == plaintext
        steps.append(
            {
                "sender": sender,
                "direction": 1 if sender == "alice" else 2,
                "plaintext": h(plaintext),
                "chain_key": h(chain_key),
                "message_key": h(message_key),
                "aead_key": h(material[:32]),
                "nonce": h(material[32:]),
                "ratchet_pub": h(parsed.ratchet_pk),
                "pn": parsed.pn,
                "n": parsed.n,
                "envelope": h(envelope),
                "sender_new_ratchet_priv": None if new_key is None else h(new_key),
                "sender_after": chain_state(tx, None),
                "receiver_after": chain_state(rx, parsed.ratchet_pk),
            }
        )
    return {
        "description": (
            "Double Ratchet chain (docs/protocol.md §4) from the x3dh.json case "
            "'with_opk': sk and session_ad from it, Bob's SPK as his first ratchet key, "
            "Alice's first ratchet private key alice_ratchet_priv. Messages are delivered "
            "in order, each right after it is sent; sender_new_ratchet_priv is the "
            "sender's new ratchet private key when the message starts a new sending chain "
            "(the first message after a DH step on receipt; else null). "
            "chain_key is the sending chain key the message key is derived from; "
            "*_after are the sender's and receiver's states after the step (recv_ck is "
            "the receiving chain of the message's ratchet key)."
        ),
        "now_ms": NOW,
        "sk": h(sk),
        "session_ad": h(ad),
        "bob_spk_priv": spk["private"],
        "bob_spk_pub": spk["public"],
        "alice_ratchet_priv": h(alice_first),
        "initial": initial,
        "steps": steps,
    }


# --- envelope.json ------------------------------------------------------------------


def prekey_fields(env: PreKeyEnvelope) -> Vector:
    return {
        "suite": int(env.suite),
        "user_id": env.user_id,
        "device_id": env.device_id,
        "ik_a": h(env.identity_key),
        "ek_a": h(env.base_key),
        "spk_id": env.signed_prekey_id,
        "opk_id": env.one_time_prekey_id,
        "kem_id": env.kem_prekey_id,
        "kem_ct": None if env.kem_ciphertext is None else h(env.kem_ciphertext),
        "message": h(env.message.raw),
    }


def envelope_vectors(x3dh: Vector, pqxdh: Vector, ratchet: Vector) -> Vector:
    messages = []
    for step in ratchet["steps"]:
        if step["pn"] or step["n"] == 2:
            env = MessageEnvelope.from_bytes(b(step["envelope"]))
            messages.append(
                {
                    "ratchet_pub": h(env.ratchet_pk),
                    "pn": env.pn,
                    "n": env.n,
                    "ciphertext": h(env.ciphertext),
                    "header": h(env.header),
                    "bytes": h(env.raw),
                }
            )
    prekey = []
    for data in (x3dh, pqxdh):
        for case in data["cases"]:
            raw = b(case["prekey_envelope"])
            env = PreKeyEnvelope.from_bytes(raw)
            assert env.to_bytes() == raw
            prekey.append(
                {"name": f"{Suite(data['suite']).name.lower()}_{case['name']}"}
                | prekey_fields(env)
                | {"bytes": h(raw)}
            )
    return {
        "description": (
            "Fixed-layout envelopes (docs/protocol.md §5): message envelopes (type 1) "
            "from ratchet.json and the pre-key envelopes (type 2) of x3dh.json and "
            "pqxdh.json, each with its fields; opk_id/kem_id/kem_ct are null when absent."
        ),
        "message_envelopes": messages,
        "prekey_envelopes": prekey,
    }


# --- payload.json -------------------------------------------------------------------


def e2ee_body(kind: int, body: Vector) -> Body:
    """The package's body object of a vector body (JSON: text as str, bytes as hex)."""
    t = PayloadType(kind)
    if t is PayloadType.TEXT:
        return str(body["text"])
    if t is PayloadType.BYTES:
        return b(body["bytes"])
    if t is PayloadType.SYNC_SENT:
        original = body["original_body"]
        return SyncSent(
            body["destination_user"],
            b(body["original_id"]),
            PayloadType(body["original_type"]),
            original["text"] if "text" in original else b(original["bytes"]),
        )
    if t is PayloadType.RETRY_REQUEST:
        return RetryRequest(
            b(body["client_msg_id"]), body["device_id"], b(body["ratchet_pub"]), body["counter"]
        )
    if t is PayloadType.DEVICE_LIST_NOTICE:
        return DeviceListNotice(body["version"])
    return AttachmentRef(b(body["blob_id"]), b(body["key"]), b(body["digest"]), body["size"])


def e2ee_payload(v: Vector) -> Payload:
    return Payload(
        PayloadType(v["type"]),
        b(v["client_msg_id"]),
        v["sender_ts_ms"],
        e2ee_body(v["type"], v["body"]),
    )


def _text_for_padding(pad: int) -> str:
    """A text body whose payload needs exactly ``pad`` padding bytes."""
    for length in range(400):
        v = {
            "type": 1,
            "client_msg_id": h(fixed(0x10, 16)),
            "sender_ts_ms": NOW,
            "body": {"text": "x" * length},
        }
        if _padding_len(e2ee_payload(v).to_bytes()) == pad:
            return "x" * length
    raise AssertionError(f"no text length needs {pad} padding bytes")


def _padding_len(encoded: bytes) -> int:
    value = cbor.decode(encoded)
    assert isinstance(value, dict)
    padding = value[5]
    assert isinstance(padding, bytes)
    return len(padding)


def payload_vectors() -> Vector:
    def entry(name: str, kind: int, tag: int, body: Vector) -> Vector:
        return {
            "name": name,
            "type": kind,
            "client_msg_id": h(fixed(tag, 16)),
            "sender_ts_ms": NOW + tag,
            "body": body,
        }

    cases = [
        entry("text", 1, 0x01, {"text": "hello, bob 👋"}),
        entry("text_empty", 1, 0x02, {"text": ""}),
        entry("text_multi_block", 1, 0x03, {"text": "lorem ipsum " * 40}),
        entry("bytes", 2, 0x04, {"bytes": h(bytes(range(40)))}),
        entry(
            "sync_sent_text",
            3,
            0x05,
            {
                "destination_user": "carol.d-e_f",
                "original_id": h(fixed(0x55, 16)),
                "original_type": 1,
                "original_body": {"text": "the copy"},
            },
        ),
        entry(
            "sync_sent_bytes",
            3,
            0x06,
            {
                "destination_user": "bob",
                "original_id": h(fixed(0x66, 16)),
                "original_type": 2,
                "original_body": {"bytes": h(b"\x00\x01\xff")},
            },
        ),
        entry(
            "retry_request",
            4,
            0x07,
            {
                "client_msg_id": h(fixed(0x77, 16)),
                "device_id": 0xDEADBEEF,
                "ratchet_pub": h(DHKeyPair(fixed(0xC0)).public_key),
                "counter": 70000,
            },
        ),
        entry("device_list_notice", 5, 0x08, {"version": 42}),
        entry(
            "attachment",
            6,
            0x09,
            {
                "blob_id": h(fixed(0x99, 16)),
                "key": h(fixed(0xA9)),
                "digest": h(fixed(0xB9)),
                "size": 5_000_000_000,
            },
        ),
    ]
    # Padding lengths around the byte-string head sizes (1 byte below 24, 2 below 256):
    # none, 23 and 24/25 bytes; and 183, the only way to fill a payload 24 bytes short
    # of a block (its padding head grows by one byte at 24: docs/protocol.md §6).
    for pad in (0, 23, 24, 25, 183):
        text = _text_for_padding(pad)
        cases.append(entry(f"text_padding_{pad}", 1, 0x10, {"text": text}))
    for v in cases:
        payload = e2ee_payload(v)
        encoded = payload.to_bytes()
        assert Payload.from_bytes(encoded, from_own_device=True) == payload
        v["padding_len"] = _padding_len(encoded)
        v["bytes"] = h(encoded)
    return {
        "description": (
            "Inner payloads (docs/protocol.md §6): CBOR {0: 1, 1: type, 2: client_msg_id, "
            "3: sender_ts_ms, 4: body, 5: zero padding} padded to a multiple of 160 bytes "
            "with the smallest padding. Bodies: text as a JSON string, byte strings as hex; "
            "map bodies by field name in the order of §6. padding_len is the length of "
            "field 5."
        ),
        "payloads": cases,
    }


# --- safety_number.json -----------------------------------------------------------------


def safety_number_vectors() -> Vector:
    cases = []
    for local, remote in (
        (("alice", fixed(0x00)), ("bob", fixed(0x80))),
        (("carol.d-e_f", fixed(0x11)), ("dave0", fixed(0x22))),
    ):
        users = []
        for user_id, seed in (local, remote):
            pk = SigningKeyPair(seed).public_key
            fp = fingerprint(user_id, pk)
            users.append((user_id, pk, fp))
        (lu, lpk, lfp), (ru, rpk, rfp) = users
        ours = SafetyNumber.compute(lu, lpk, ru, rpk)
        theirs = SafetyNumber.compute(ru, rpk, lu, lpk)
        assert ours.digits == theirs.digits
        assert ours.verify_qr(theirs.qr_payload()) and theirs.verify_qr(ours.qr_payload())
        cases.append(
            {
                "local": {"user_id": lu, "master_pk": h(lpk), "fingerprint": h(lfp)},
                "remote": {"user_id": ru, "master_pk": h(rpk), "fingerprint": h(rfp)},
                "local_digits": SafetyNumber(lfp, lfp).digits[:30],
                "remote_digits": SafetyNumber(rfp, rfp).digits[:30],
                "digits": ours.digits,
                "qr_payload_local": h(ours.qr_payload()),
                "qr_payload_remote": h(theirs.qr_payload()),
            }
        )
    return {
        "description": (
            "Safety numbers (docs/protocol.md §7): fingerprint is the 64-byte iterated "
            "SHA-512 h of each side, *_digits its 30 digits, digits the 60 shown (the same "
            "for both sides); qr_payload_local is the local side's QR payload and "
            "qr_payload_remote the remote side's (local and remote swapped)."
        ),
        "cases": cases,
    }


# --- signatures.json ----------------------------------------------------------------------


def signature_vectors() -> Vector:
    bob = party_input("bob", 0xDEADBEEF, 0x80, pq=True)
    device = e2ee_device(bob)
    keys = prekeys_input(_PREKEY_ORDER, 0xA0)
    _, published = e2ee_prekeys(device, keys)
    prekeys = []
    for pk in keys:
        made = published[pk["kind"]]
        statement = prekey_statement(
            device.user_id, device.device_id, made.prekey_id, made.created_at_ms, made.public_key
        )
        made.verify(device.user_id, device.device_id, device.signing.public_key)
        prekeys.append(
            {
                "kind": pk["kind"],
                "label": made.kind.label.value.decode(),
                "user_id": device.user_id,
                "device_id": device.device_id,
                "prekey_id": made.prekey_id,
                "created_at_ms": made.created_at_ms,
                "public_key": h(made.public_key),
                "signing_bytes": h(signed_message(made.kind.label, statement)),
                "signature": h(made.signature),
                "wire": h(cbor.encode(made.to_value())),
            }
        )
    bundles = []
    for name, opk, kem in (
        ("opk_and_one_time_kem", True, "kem"),
        ("last_resort_kem", False, "kem_last_resort"),
        ("classical_spk_only", False, None),
    ):
        bundle = e2ee_bundle(bob, published, {"opk": opk, "kem_kind": kem})
        assert PreKeyBundle.from_bytes(bundle.to_bytes()) == bundle
        bundles.append({"name": name, "opk": opk, "kem_kind": kem, "wire": h(bundle.to_bytes())})

    master = SigningKeyPair(b(bob["master_seed"]))
    second = DeviceEntry(
        0x0000_0007,
        SigningKeyPair(fixed(0x37)).public_key,
        DHKeyPair(fixed(0x47)).public_key,
        False,
        NOW - DAY,
    )
    v1 = e2ee_device_list(bob)
    v2 = v1.successor(master, tuple(sorted((*v1.statement.devices, second), key=_by_id)), NOW)
    lists = []
    for signed in (v1, v2):
        s = signed.statement
        assert SignedDeviceList.from_bytes(signed.to_bytes()) == signed
        lists.append(
            {
                "user_id": s.user_id,
                "master_pk": h(s.master_pk),
                "version": s.version,
                "issued_at_ms": s.issued_at_ms,
                "prev_hash": None if s.prev_hash is None else h(s.prev_hash),
                "devices": [
                    {
                        "device_id": d.device_id,
                        "signing_pk": h(d.signing_pk),
                        "x25519_ik": h(d.x25519_ik),
                        "pq": d.pq,
                        "added_at_ms": d.added_at_ms,
                    }
                    for d in s.devices
                ],
                "signing_bytes": h(signed_message(Label.DEVICE_LIST, s.to_value())),
                "signature": h(signed.signature),
                "wire": h(signed.to_bytes()),
                "digest": h(signed.digest),
            }
        )
    return {
        "description": (
            "Signed statements (docs/protocol.md §1.3, §2): Bob's four prekeys "
            "(signing_bytes = label || 0x00 || CBOR(statement), signature by his device "
            "signing key, wire = the published form), prekey bundles built from them, and "
            "versions 1 and 2 of his device list signed by his master key (wire = "
            "CBOR({0: statement, 1: signature}); version 2's prev_hash is version 1's "
            "digest = SHA-256(wire)). Ed25519 signatures are deterministic."
        ),
        "signer": bob,
        "prekeys": prekeys,
        "bundles": bundles,
        "device_lists": lists,
    }


def _by_id(entry: DeviceEntry) -> int:
    return entry.device_id


# --- main ---------------------------------------------------------------------------------


def _read(name: str) -> Vector | None:
    path = HERE / name
    return json.loads(path.read_text()) if path.exists() else None


def build_all() -> dict[str, Vector]:
    x3dh = x3dh_vectors()
    pqxdh = pqxdh_vectors(_read("pqxdh.json"))
    ratchet = ratchet_vectors(x3dh)
    return {
        "x3dh.json": x3dh,
        "pqxdh.json": pqxdh,
        "session_ad.json": session_ad_vectors(x3dh, pqxdh),
        "ratchet.json": ratchet,
        "envelope.json": envelope_vectors(x3dh, pqxdh, ratchet),
        "payload.json": payload_vectors(),
        "safety_number.json": safety_number_vectors(),
        "signatures.json": signature_vectors(),
    }


def main() -> None:
    for name, data in build_all().items():
        (HERE / name).write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
        print(f"wrote {HERE / name}")


if __name__ == "__main__":
    main()
