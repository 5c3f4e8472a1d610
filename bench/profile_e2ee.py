"""Where e2ee's time goes: a stage breakdown of each benchmarked operation, the cost
of e2ee's primitive wrappers against the raw bindings and against alternative
bindings, and cProfile listings. For the lead's tuning work; changes nothing.

Run ``python -m bench.profile_e2ee [--rounds N] [--no-cprofile]``. Figures are
microseconds per call, medians of interleaved rounds (same method as bench.run).
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import hashlib
import hmac
import io
import pstats
import secrets
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import nacl.bindings as sodium
from cryptography.hazmat.primitives.asymmetric import ed25519 as ossl_ed25519
from cryptography.hazmat.primitives.asymmetric import mlkem
from cryptography.hazmat.primitives.asymmetric import x25519 as ossl_x25519
from nacl._sodium import ffi, lib

from bench.run import (
    NOW,
    P_MID,
    E2EEPair,
    e2ee_pair,
    make_user,
)
from bench.run import loop_timer as body_loop
from e2ee import primitives
from e2ee.envelope import MessageEnvelope, PreKeyEnvelope, envelope_type
from e2ee.keys import DHKeyPair, signed_message
from e2ee.labels import Label
from e2ee.prekeys import PreKeyBundle, prekey_statement, validate_bundle
from e2ee.ratchet import RatchetState, kdf_rk
from e2ee.session import decrypt as session_decrypt
from e2ee.session import start_session
from e2ee.x3dh import derive_shared_key, initiate, respond, session_ad

Loop = Callable[[int], int]  # runs k calls, returns elapsed ns


def measure(cases: dict[str, tuple[Loop, int]], rounds: int) -> dict[str, float]:
    """Median over ``rounds`` interleaved (rotating) rounds of us per call."""
    names = list(cases)
    samples: dict[str, list[float]] = {n: [] for n in names}
    for name in names:  # warm-up
        loop, k = cases[name]
        loop(max(2, k // 4))
    for r in range(rounds):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            loop, k = cases[name]
            samples[name].append(loop(k) / k / 1000.0)
    return {n: statistics.median(v) for n, v in samples.items()}


def show(title: str, figures: dict[str, float]) -> None:
    print(f"\n== {title}")
    for name, value in figures.items():
        print(f"  {name:<64} {value:9.2f} us")


# --- one direction -------------------------------------------------------------------------


def one_direction_cases() -> dict[str, tuple[Loop, int]]:
    pair = e2ee_pair(101)
    a = pair.a
    raw = a.encrypt(P_MID)
    pk = raw[2:34]

    # decrypt alone: Bob restored from a snapshot, envelopes parsed beforehand (untimed)
    k_dec = 1000
    dpair = e2ee_pair(102)
    snapshot = dpair.b.to_bytes()
    envs = [MessageEnvelope.from_bytes(dpair.a.encrypt(P_MID)) for _ in range(k_dec)]

    def decrypt_only(k: int) -> int:
        b = RatchetState.from_bytes(snapshot)
        gc.collect()
        gc.disable()
        try:
            t0 = time.process_time_ns()
            for env in envs[:k]:
                b.decrypt(env, NOW)
            return time.process_time_ns() - t0
        finally:
            gc.enable()

    spair = e2ee_pair(103)
    s_rec = spair.a_rec
    blake2b = hashlib.blake2b
    seen_full = e2ee_pair(104)
    for _ in range(2100):  # fill the 2,000-digest duplicate window
        seen_full.b.decrypt(MessageEnvelope.from_bytes(seen_full.a.encrypt(P_MID)), NOW)
    remember_fresh = e2ee_pair(105).b
    counter = [0]

    def remember(state: RatchetState) -> Callable[[], object]:
        def body() -> None:
            counter[0] += 1
            state._remember(counter[0].to_bytes(16, "big"))

        return body

    return {
        "RatchetState.encrypt": (body_loop(lambda: a.encrypt(P_MID)), 3000),
        "SessionRecord.encrypt": (body_loop(lambda: s_rec.encrypt(P_MID, NOW)), 3000),
        "MessageEnvelope.from_bytes": (body_loop(lambda: MessageEnvelope.from_bytes(raw)), 5000),
        "  of which x25519_validate_public": (
            body_loop(lambda: primitives.x25519_validate_public(pk)),
            10000,
        ),
        "  of which envelope_type (session API)": (body_loop(lambda: envelope_type(raw)), 10000),
        "RatchetState.decrypt (same chain, parsed envelope)": (decrypt_only, k_dec),
        "  of which blake2b-128 duplicate digest": (
            body_loop(lambda: blake2b(raw, digest_size=16).digest()),
            10000,
        ),
        "  of which _remember, window not full": (body_loop(remember(remember_fresh)), 1500),
        "  of which _remember, window full (evicts the oldest)": (
            body_loop(remember(seen_full.b)),
            5000,
        ),
        "  of which aead_decrypt wrapper": (aead_case(decrypt=True), 5000),
    }


def aead_case(*, decrypt: bool) -> Loop:
    key, nonce, ad = secrets.token_bytes(32), secrets.token_bytes(24), secrets.token_bytes(75)
    ct = primitives.aead_encrypt(key, nonce, P_MID, ad)
    if decrypt:
        return body_loop(lambda: primitives.aead_decrypt(key, nonce, ct, ad))
    return body_loop(lambda: primitives.aead_encrypt(key, nonce, P_MID, ad))


def one_direction_micro() -> dict[str, tuple[Loop, int]]:
    """The steps of RatchetState.encrypt / MessageEnvelope.from_bytes / decrypt
    (same chain) one by one, to split each call into primitives and Python work."""
    pair = e2ee_pair(106)
    a, b = pair.a, pair.b
    raw = a.encrypt(P_MID)
    env = MessageEnvelope.from_bytes(raw)
    pk, header, ct = env.ratchet_pk, env.header, env.ciphertext
    key, nonce, ad = secrets.token_bytes(32), secrets.token_bytes(24), b._ad_in + header
    blake2b = hashlib.blake2b
    new, buffer, null = ffi.new, ffi.buffer, ffi.NULL
    enc_c = lib.crypto_aead_xchacha20poly1305_ietf_encrypt
    size = len(P_MID)

    def raw_aead() -> bytes:
        out = new("unsigned char[]", size + 16)
        enc_c(out, null, P_MID, size, ad, len(ad), null, nonce, key)
        return buffer(out)[:]

    big = {(secrets.token_bytes(32), i): (key, NOW) for i in range(2000)}
    digests = [secrets.token_bytes(16) for _ in range(400_000)]
    full = e2ee_pair(107).b
    for d in digests[:2000]:
        full._remember(d)
    it = iter(digests[2000:])
    it2 = iter(digests[2000:])
    remember = full._remember
    chain = b._chain
    return {
        "encode_header (struct.pack, IntEnum arg)": (
            body_loop(lambda: MessageEnvelope.encode_header(pk, 1, 5)),
            20000,
        ),
        "assemble (concat + length)": (
            body_loop(lambda: MessageEnvelope.assemble(header, ct)),
            20000,
        ),
        "aead_encrypt wrapper (e2ee.primitives)": (
            body_loop(lambda: primitives.aead_encrypt(key, nonce, P_MID, ad)),
            10000,
        ),
        "aead_encrypt raw cffi call": (body_loop(raw_aead), 10000),
        "blake2b keyed 32 (one KDF_CK half)": (
            body_loop(lambda: blake2b(b"\x01", key=key, digest_size=32).digest()),
            20000,
        ),
        "MessageEnvelope(...) construction (frozen slots dataclass)": (
            body_loop(lambda: MessageEnvelope(pk, 1, 5, ct, header, raw)),
            20000,
        ),
        "x25519_validate_public call": (
            body_loop(lambda: primitives.x25519_validate_public(pk)),
            20000,
        ),
        "skipped.get((pk, n)), empty dict": (body_loop(lambda: b.skipped.get((pk, 5))), 20000),
        "skipped.get((pk, n)), 2,000 entries": (body_loop(lambda: big.get((pk, 5))), 20000),
        "_chain(pk) (receiving-chain scan)": (body_loop(lambda: chain(pk)), 20000),
        "_remember, window full (+ next(it) ~0.05)": (
            body_loop(lambda: remember(next(it))),
            20000,
        ),
        "  baseline next(it)": (body_loop(lambda: next(it2)), 20000),
    }


# --- DH step --------------------------------------------------------------------------------


def dh_step_stages(pair: E2EEPair, n: int) -> dict[str, float]:
    """Per-stage time of a ping-pong loop, with a clock read around each stage."""
    a, b = pair.a, pair.b
    clock = time.perf_counter_ns  # a vDSO read: the CPU-time clock is a syscall per read
    acc = {"encrypt": 0, "MessageEnvelope.from_bytes": 0, "decrypt (new chain, DH step)": 0}
    gc.collect()
    gc.disable()
    try:
        for i in range(n):
            src, dst = (b, a) if i % 2 else (a, b)
            t0 = clock()
            raw = src.encrypt(P_MID)
            t1 = clock()
            env = MessageEnvelope.from_bytes(raw)
            t2 = clock()
            dst.decrypt(env, NOW)
            t3 = clock()
            acc["encrypt"] += t1 - t0
            acc["MessageEnvelope.from_bytes"] += t2 - t1
            acc["decrypt (new chain, DH step)"] += t3 - t2
    finally:
        gc.enable()
    return {k: v / n / 1000.0 for k, v in acc.items()}


def dh_step_cases() -> dict[str, tuple[Loop, int]]:
    rk, dh_out = secrets.token_bytes(32), secrets.token_bytes(32)
    priv = secrets.token_bytes(32)
    pub = sodium.crypto_scalarmult_base(secrets.token_bytes(32))
    ours = DHKeyPair(priv)
    info = Label.RATCHET.value
    hmac_digest = hmac.digest

    def hkdf64_oneshot() -> bytes:
        prk = hmac_digest(rk, dh_out, "sha256")
        t1 = hmac_digest(prk, info + b"\x01", "sha256")
        return t1 + hmac_digest(prk, t1 + info + b"\x02", "sha256")

    ossl_priv = ossl_x25519.X25519PrivateKey.from_private_bytes(priv)
    ossl_pub = ossl_x25519.X25519PublicKey.from_public_bytes(pub)
    from_pub = ossl_x25519.X25519PublicKey.from_public_bytes
    out = ffi.new("unsigned char[]", 32)

    def cffi_scalarmult() -> bytes:
        lib.crypto_scalarmult(out, priv, pub)
        return bytes(out)

    def ossl_generate() -> tuple[Any, bytes]:
        key = ossl_x25519.X25519PrivateKey.generate()
        return key, key.public_key().public_bytes_raw()

    return {
        "kdf_rk (hkdf_sha256 wrapper, 64 bytes, hmac.new)": (
            body_loop(lambda: kdf_rk(rk, dh_out)),
            5000,
        ),
        "  same HKDF with hmac.digest one-shots": (body_loop(hkdf64_oneshot), 5000),
        "DHKeyPair.generate (token_bytes + sodium scalarmult_base)": (
            body_loop(DHKeyPair.generate),
            600,
        ),
        "  OpenSSL X25519PrivateKey.generate + public_bytes_raw": (body_loop(ossl_generate), 600),
        "DHKeyPair.dh (e2ee x25519 wrapper -> PyNaCl)": (body_loop(lambda: ours.dh(pub)), 600),
        "  nacl.bindings.crypto_scalarmult": (
            body_loop(lambda: sodium.crypto_scalarmult(priv, pub)),
            600,
        ),
        "  libsodium crypto_scalarmult through cffi directly": (body_loop(cffi_scalarmult), 600),
        "  OpenSSL exchange, private key object cached": (
            body_loop(lambda: ossl_priv.exchange(from_pub(pub))),
            600,
        ),
        "  OpenSSL exchange, both objects cached": (
            body_loop(lambda: ossl_priv.exchange(ossl_pub)),
            600,
        ),
    }


# --- setup ------------------------------------------------------------------------------------


def setup_cases(pq: bool) -> dict[str, tuple[Loop, int]]:
    alice = make_user("alice", pq=pq, seed=110 + pq)
    bob = make_user("bob", pq=pq, seed=120 + pq)
    a_dev, b_dev, b_pre = alice.device.device, bob.device.device, bob.device.prekeys
    a_peer, b_peer = alice.peer, bob.peer
    bundle_bytes = bob.device.bundle(opk=True, kem=pq).to_bytes()
    bundle = PreKeyBundle.from_bytes(bundle_bytes)
    setup = initiate(a_dev, b_peer, bundle, NOW)
    record = start_session(a_dev, b_peer, bundle, None, NOW)
    data = record.encrypt(P_MID, NOW)
    header = PreKeyEnvelope.from_bytes(data)
    rsetup = respond(b_dev, b_pre, a_peer, header)
    spk = bundle.signed_prekey
    statement = prekey_statement(
        bundle.user_id, bundle.device_id, spk.prekey_id, spk.created_at_ms, spk.public_key
    )
    signing_pk = b_peer.entry.signing_pk

    def first_decrypt() -> bytes:
        state = RatchetState.responder_start(
            rsetup.session_ad, rsetup.shared_key, rsetup.signed_prekey
        )
        return state.decrypt(header.message, NOW)

    def full() -> bytes:
        rec = start_session(a_dev, b_peer, PreKeyBundle.from_bytes(bundle_bytes), None, NOW)
        return session_decrypt(b_dev, b_pre, None, a_peer, rec.encrypt(P_MID, NOW), NOW).plaintext

    def ad() -> bytes:
        return session_ad(
            suite=header.suite,
            initiator=a_peer,
            responder=b_peer,
            base_key=header.base_key,
            signed_prekey=(spk.prekey_id, spk.public_key),
            one_time_prekey=None,
            kem_prekey=None if bundle.kem_prekey is None else (1, bundle.kem_prekey.public_key),
            kem_ciphertext=header.kem_ciphertext,
        )

    k = 60
    cases: dict[str, tuple[Loop, int]] = {
        "whole setup (as bench.run times it)": (body_loop(full), 40),
        "A: PreKeyBundle.from_bytes": (
            body_loop(lambda: PreKeyBundle.from_bytes(bundle_bytes)),
            300,
        ),
        "A: validate_bundle (all prekey signatures)": (
            body_loop(lambda: validate_bundle(bundle, b_peer, NOW)),
            k,
        ),
        "A:   of which signed_message (CBOR of one statement)": (
            body_loop(lambda: signed_message(Label.SIGNED_PREKEY, statement)),
            2000,
        ),
        "A:   of which ed25519_verify, one signature": (
            body_loop(
                lambda: primitives.ed25519_verify(
                    signing_pk, signed_message(Label.SIGNED_PREKEY, statement), spk.signature
                )
            ),
            k,
        ),
        "A: initiate (validate_bundle + X3DH/PQXDH)": (
            body_loop(lambda: initiate(a_dev, b_peer, bundle, NOW)),
            k,
        ),
        "A: RatchetState.initiator_start": (
            body_loop(
                lambda: RatchetState.initiator_start(
                    setup.session_ad, setup.shared_key, setup.their_signed_prekey
                )
            ),
            k,
        ),
        "A: start_session (initiate + initiator_start + header)": (
            body_loop(lambda: start_session(a_dev, b_peer, bundle, None, NOW)),
            k,
        ),
        "A/B: session_ad (CBOR + SHA-256)": (body_loop(ad), 2000),
        "A/B: OurDevice.as_peer": (body_loop(a_dev.as_peer), 5000),
        "A/B: derive_shared_key (HKDF-32)": (
            body_loop(lambda: derive_shared_key(header.suite, [rsetup.shared_key] * 4, None)),
            3000,
        ),
        "B: envelope_type + PreKeyEnvelope.from_bytes": (
            body_loop(lambda: (envelope_type(data), PreKeyEnvelope.from_bytes(data))),
            2000,
        ),
        "B: respond (X3DH/PQXDH responder)": (
            body_loop(lambda: respond(b_dev, b_pre, a_peer, header)),
            k,
        ),
        "B: responder_start + first decrypt (DH step)": (body_loop(first_decrypt), k),
    }
    if pq:
        kem = bundle.kem_prekey
        assert kem is not None and header.kem_ciphertext is not None
        kem_pub = kem.public_key
        kem_ct = header.kem_ciphertext
        found = b_pre.kem_prekey(header.kem_prekey_id or 0)
        assert found is not None
        seed = found[0].seed()
        cached = mlkem.MLKEM768PrivateKey.from_seed_bytes(seed)
        cases |= {
            "A: mlkem768_validate_public (bundle decode)": (
                body_loop(lambda: primitives.mlkem768_validate_public(kem_pub)),
                300,
            ),
            "A: mlkem768_encapsulate (parses the key again)": (
                body_loop(lambda: primitives.mlkem768_encapsulate(kem_pub)),
                300,
            ),
            "B: mlkem768_decapsulate (from_seed_bytes + decapsulate)": (
                body_loop(lambda: primitives.mlkem768_decapsulate(seed, kem_ct)),
                300,
            ),
            "B:   decapsulate with the private key object cached": (
                body_loop(lambda: cached.decapsulate(kem_ct)),
                300,
            ),
        }
    return cases


def signature_cases() -> dict[str, tuple[Loop, int]]:
    pk, sk = sodium.crypto_sign_seed_keypair(secrets.token_bytes(32))
    msg = signed_message(Label.SIGNED_PREKEY, prekey_statement("bob", 1, 1, NOW, bytes(32)))
    sig = sodium.crypto_sign(msg, sk)[:64]
    ossl_pk = ossl_ed25519.Ed25519PublicKey.from_public_bytes(pk)
    from_pk = ossl_ed25519.Ed25519PublicKey.from_public_bytes
    cases: dict[str, tuple[Loop, int]] = {
        "libsodium crypto_sign_open (e2ee today)": (
            body_loop(lambda: sodium.crypto_sign_open(sig + msg, pk)),
            300,
        ),
        "OpenSSL Ed25519 verify, key parsed per call": (
            body_loop(lambda: from_pk(pk).verify(sig, msg)),
            300,
        ),
        "OpenSSL Ed25519 verify, key object cached": (
            body_loop(lambda: ossl_pk.verify(sig, msg)),
            300,
        ),
    }
    try:
        import vodozemac as vz  # noqa: PLC0415

        account = vz.Account()
        vsig = account.sign(msg)
        vkey = account.ed25519_key
        cases["vodozemac (ed25519-dalek) verify_signature"] = (
            body_loop(lambda: vkey.verify_signature(msg, vsig)),
            300,
        )
    except ImportError:  # pragma: no cover - optional
        pass
    return cases


# --- cProfile ---------------------------------------------------------------------------------


def cprofile(title: str, fn: Callable[[], object], n: int, top: int = 18) -> None:
    for _ in range(max(2, n // 10)):
        fn()
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(n):
        fn()
    profiler.disable()
    stream = io.StringIO()
    stats = pstats.Stats(profiler, stream=stream)
    stats.sort_stats("tottime").print_stats(top)
    print(f"\n== cProfile: {title} ({n} ops; profiler overhead inflates Python-level parts)")
    lines = stream.getvalue().splitlines()
    start = next(i for i, line in enumerate(lines) if "ncalls" in line)
    print("\n".join(lines[start : start + top + 1]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile_e2ee")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--no-cprofile", action="store_true")
    args = parser.parse_args(argv)
    rounds = args.rounds

    show("one direction: stages", measure(one_direction_cases(), rounds))
    show("one direction: steps one by one", measure(one_direction_micro(), rounds))
    stage_runs = [dh_step_stages(e2ee_pair(130 + i), 1000) for i in range(rounds)]
    show(
        "DH step (ping-pong): stages, clock around each stage",
        {k: statistics.median(run[k] for run in stage_runs) for k in stage_runs[0]},
    )
    show(
        "DH step: building blocks, wrappers vs raw and alternative bindings",
        measure(dh_step_cases(), rounds),
    )
    show("X3DH setup: stages", measure(setup_cases(False), rounds))
    show("PQXDH setup: stages", measure(setup_cases(True), rounds))
    show("Ed25519 verification", measure(signature_cases(), rounds))

    if not args.no_cprofile:
        pair = e2ee_pair(140)
        a, b = pair.a, pair.b
        cprofile(
            "one direction",
            lambda: b.decrypt(MessageEnvelope.from_bytes(a.encrypt(P_MID)), NOW),
            20000,
        )
        alice = make_user("alice", pq=False, seed=150)
        bob = make_user("bob", pq=False, seed=151)
        bb = bob.device.bundle(opk=True, kem=False).to_bytes()

        def x3dh() -> bytes:
            rec = start_session(
                alice.device.device, bob.peer, PreKeyBundle.from_bytes(bb), None, NOW
            )
            return session_decrypt(
                bob.device.device,
                bob.device.prekeys,
                None,
                alice.peer,
                rec.encrypt(P_MID, NOW),
                NOW,
            ).plaintext

        cprofile("X3DH setup", x3dh, 500)
    return 0


if __name__ == "__main__":
    sys.exit(main())
