"""Throughput of the protocol core against vodozemac (Olm) and python-doubleratchet.

Run ``python -m bench.run`` (or ``python bench/run.py``) from the repository root;
``--quick`` is a short smoke run, ``--json FILE`` writes every figure and sample.

Method: every contender of every row, and every primitive of the "floor", is a
*sampler* that times a loop of K operations. A round runs every sampler once, in an
order rotated from round to round; a figure is the median over rounds of the
per-operation time in microseconds. One discarded warm-up round comes first. The
clock is the process's CPU time by default (``--clock wall`` for perf_counter), so
time-slicing by other load on the machine is not counted. Samplers that are
compared run back to back within a round, and each ratio is the median over rounds
of the per-round ratio. The garbage collector is collected before and disabled
during each timed loop (as ``timeit`` does), for every contender alike. Each timed loop checks its first and
last result (decrypted plaintext equals the one sent); a sampler whose check did not
run or failed aborts the run. See bench/README.md for what each row measures.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import gc
import hashlib
import hmac
import importlib.metadata
import json
import os
import platform
import secrets
import statistics
import struct
import sys
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nacl.bindings as sodium
from cryptography.hazmat.primitives.asymmetric import mlkem
from nacl._sodium import ffi, lib

from e2ee.device import OurDevice, OurPreKeys
from e2ee.device_list import DeviceList, PeerDevice, SignedDeviceList
from e2ee.envelope import MessageEnvelope, PreKeyEnvelope, Suite
from e2ee.keys import SigningKeyPair, signed_message
from e2ee.labels import Label
from e2ee.limits import MAX_SKIP, MAX_STORED_SKIPPED
from e2ee.prekeys import PreKeyBundle, SignedPublicPreKey, prekey_statement
from e2ee.ratchet import RatchetState
from e2ee.session import SessionRecord, start_session
from e2ee.session import decrypt as session_decrypt

try:  # optional peers: the bench runs without them and prints "n/a"
    import vodozemac as vz
except ImportError:  # pragma: no cover - depends on the environment
    vz = None
try:
    import doubleratchet as dr
    from doubleratchet.recommended import (
        HashFunction,
        aead_aes_hmac,
        diffie_hellman_ratchet_curve25519,
        kdf_hkdf,
        kdf_separate_hmacs,
    )
except ImportError:  # pragma: no cover - depends on the environment
    dr = None

NOW = 1_700_000_000_000
MSG_SIZE = 100
# Three distinct 100-byte plaintexts: the first and last message of every timed loop
# are checked against theirs.
P_FIRST = b"F" * (MSG_SIZE - 1) + b"\x01"
P_MID = b"m" * MSG_SIZE
P_LAST = b"L" * (MSG_SIZE - 1) + b"\x02"

E2EE, VZ, VZ_BARE, DR = "e2ee", "vodozemac", "vodozemac_bare", "doubleratchet"
PEERS = (VZ, DR)

# Ops per timed loop (full run). --quick divides them; sizes aim at ~10-40 ms a sample.
K_FULL: dict[str, int] = {
    "one_direction/e2ee": 2000,
    "one_direction/vodozemac": 2000,
    "one_direction/doubleratchet": 200,
    "one_direction_session/e2ee": 2000,
    "dh_step/e2ee": 300,
    "dh_step/vodozemac": 300,
    "dh_step/doubleratchet": 100,
    "decrypt_skipped_2000/e2ee": 1000,
    "decrypt_skipped_0/e2ee": 1000,
    "decrypt_hit_skipped/e2ee": 1000,
    "setup_x3dh/e2ee": 40,
    "setup_pqxdh/e2ee": 30,
    "setup_x3dh/vodozemac": 40,  # at most 50: vodozemac keeps 50 unpublished one-time keys
    "setup_x3dh/vodozemac_bare": 40,
}
K_PRIM_DEFAULT = 5000

CLOCKS: dict[str, Callable[[], int]] = {
    # CPU time of this process: time-slicing by other load on the machine is not
    # counted (cache and frequency effects of that load still are).
    "cpu": time.process_time_ns,
    "wall": time.perf_counter_ns,
}
CLOCK: list[Callable[[], int]] = [CLOCKS["cpu"]]


class BenchError(RuntimeError):
    """A result check failed: the figure would be meaningless."""


# --- builders (a copy of tests/e2ee/helpers.py, trimmed) ---------------------------------


def _seeded_rng(seed: int) -> Callable[[int], bytes]:
    import random  # noqa: PLC0415 - only the builders use it (keys of no value)

    return random.Random(seed).randbytes


@dataclass
class BenchDevice:
    device: OurDevice
    prekeys: OurPreKeys
    signed_prekey: SignedPublicPreKey
    one_time: list[SignedPublicPreKey]
    kem_one_time: list[SignedPublicPreKey]
    last_resort: SignedPublicPreKey | None

    def bundle(self, *, opk: bool = True, kem: bool = True) -> PreKeyBundle:
        one_time = self.one_time.pop(0) if opk and self.one_time else None
        kem_key = None
        if kem and self.last_resort is not None:
            kem_key = self.kem_one_time.pop(0) if self.kem_one_time else self.last_resort
        return PreKeyBundle(
            self.device.user_id, self.device.device_id, self.signed_prekey, one_time, kem_key
        )


@dataclass
class BenchUser:
    device: BenchDevice
    peer: PeerDevice


def make_user(user_id: str, *, pq: bool, seed: int) -> BenchUser:
    rng = _seeded_rng(seed)
    master = SigningKeyPair.generate(rng)
    device = OurDevice.generate(user_id, 1000, master.public_key, pq=pq, now_ms=NOW, rng=rng)
    prekeys = OurPreKeys()
    spk = prekeys.rotate_signed_prekey(device, NOW, rng)
    one_time = prekeys.one_time_batch(device, NOW, count=5, rng=rng)
    kem_one_time: list[SignedPublicPreKey] = []
    last_resort = None
    if pq:
        kem_one_time = prekeys.one_time_batch(device, NOW, kem=True, count=5, rng=rng)
        last_resort = prekeys.rotate_last_resort(device, NOW, rng)
    built = BenchDevice(device, prekeys, spk, one_time, kem_one_time, last_resort)
    statement = DeviceList(user_id, master.public_key, 1, NOW, None, (device.entry(),))
    signed = SignedDeviceList.sign(statement, master)
    peer = signed.statement.peer(device.device_id)
    assert peer is not None
    return BenchUser(built, peer)


@dataclass
class E2EEPair:
    alice: BenchUser
    bob: BenchUser
    a_rec: SessionRecord
    b_rec: SessionRecord

    @property
    def a(self) -> RatchetState:
        active = self.a_rec.active
        assert active is not None
        return active.ratchet

    @property
    def b(self) -> RatchetState:
        active = self.b_rec.active
        assert active is not None
        return active.ratchet


def e2ee_pair(seed: int, *, pq: bool = True) -> E2EEPair:
    """Alice and Bob with a session in both directions (the first pre-key message
    answered, so Alice sends plain message envelopes)."""
    alice = make_user("alice", pq=pq, seed=seed)
    bob = make_user("bob", pq=pq, seed=seed + 1)
    a_rec = start_session(alice.device.device, bob.peer, bob.device.bundle(kem=pq), None, NOW)
    first = session_decrypt(
        bob.device.device, bob.device.prekeys, None, alice.peer, a_rec.encrypt(b"hi", NOW), NOW
    )
    if first.plaintext != b"hi" or first.prekey_use is None:
        raise BenchError("e2ee pair: first message")
    bob.device.prekeys.commit_use(first.prekey_use)
    b_rec = first.record
    reply = session_decrypt(
        alice.device.device, alice.device.prekeys, a_rec, bob.peer, b_rec.encrypt(b"yo", NOW), NOW
    )
    if reply.plaintext != b"yo":
        raise BenchError("e2ee pair: reply")
    return E2EEPair(alice, bob, a_rec, b_rec)


# --- the harness -------------------------------------------------------------------------

Op = Callable[[int, bytes], bytes]
AsyncOp = Callable[[int, bytes], Awaitable[bytes]]


def _timed(op: Op, k: int) -> tuple[int, bytes, bytes]:
    """Time ``k`` calls of ``op(i, plaintext)``; the first and last results are returned."""
    gc.collect()
    gc.disable()
    try:
        clock = CLOCK[0]
        t0 = clock()
        first = op(0, P_FIRST)
        for i in range(1, k - 1):
            op(i, P_MID)
        last = op(k - 1, P_LAST)
        elapsed = clock() - t0
    finally:
        gc.enable()
    return elapsed, first, last


async def _atimed(op: AsyncOp, k: int) -> tuple[int, bytes, bytes]:
    """:func:`_timed` for coroutine operations (doubleratchet's API is async)."""
    gc.collect()
    gc.disable()
    try:
        clock = CLOCK[0]
        t0 = clock()
        first = await op(0, P_FIRST)
        for i in range(1, k - 1):
            await op(i, P_MID)
        last = await op(k - 1, P_LAST)
        elapsed = clock() - t0
    finally:
        gc.enable()
    return elapsed, first, last


@dataclass
class Sampler:
    key: str
    k: int
    run: Callable[[], int]  # one timed loop of k ops; returns elapsed ns


class Bench:
    def __init__(self, *, scale: int, peers: tuple[str, ...]) -> None:
        self.scale = scale
        self.peers = peers
        self.samplers: list[Sampler] = []
        self.unavailable: dict[str, str] = {}
        self.checks: dict[str, int] = defaultdict(int)
        self.loop = asyncio.new_event_loop()

    def close(self) -> None:
        self.loop.close()

    def k_for(self, key: str, *, floor: int = 2) -> int:
        return max(floor, K_FULL.get(key, K_PRIM_DEFAULT) // self.scale)

    def check(self, key: str, got: bytes, want: bytes) -> None:
        if got != want:
            raise BenchError(f"{key}: decrypted plaintext differs from the one sent")
        self.checks[key] += 1

    def add_op(
        self,
        key: str,
        op: Op,
        *,
        k: int | None = None,
        prepare: Callable[[int], None] | None = None,
        expect: tuple[bytes, bytes] = (P_FIRST, P_LAST),
    ) -> None:
        """``op(i, plaintext)`` sends ``plaintext`` (or the i-th prepared message) and
        returns what the receiver decrypted; ``expect`` is what the first and last
        iterations must return."""
        kk = k if k is not None else self.k_for(key)

        def run() -> int:
            if prepare is not None:
                prepare(kk)
            ns, first, last = _timed(op, kk)
            self.check(key, first, expect[0])
            self.check(key, last, expect[1])
            return ns

        self.samplers.append(Sampler(key, kk, run))

    def add_async_op(self, key: str, op: AsyncOp) -> None:
        kk = self.k_for(key)

        def run() -> int:
            ns, first, last = self.loop.run_until_complete(_atimed(op, kk))
            self.check(key, first, P_FIRST)
            self.check(key, last, P_LAST)
            return ns

        self.samplers.append(Sampler(key, kk, run))

    def add_prim(self, name: str, loop: Callable[[int], int], k: int | None = None) -> None:
        kk = k if k is not None else max(20, K_PRIM_DEFAULT // self.scale)
        self.samplers.append(Sampler(f"prim/{name}", kk, lambda: loop(kk)))

    def guard(self, key_prefix: str, build: Callable[[], None]) -> None:
        """Build a peer's samplers; on any failure record why and go on without them."""
        before = len(self.samplers)
        try:
            build()
        except Exception as exc:  # a peer that cannot be set up is reported, not fatal
            del self.samplers[before:]
            self.unavailable[key_prefix] = f"{type(exc).__name__}: {exc}"


# --- e2ee contenders -----------------------------------------------------------------------


def add_e2ee(bench: Bench) -> None:
    parse = MessageEnvelope.from_bytes

    # 1. One direction, ratchet API: encrypt -> envelope bytes -> strict parse -> decrypt.
    pair = e2ee_pair(10)
    enc, dec = pair.a.encrypt, pair.b.decrypt

    def one_direction(_i: int, pt: bytes) -> bytes:
        return dec(parse(enc(pt)), NOW)

    bench.add_op("one_direction/e2ee", one_direction)

    # 1b. One direction through the session API the application calls.
    spair = e2ee_pair(20)
    a_rec, b_rec = spair.a_rec, spair.b_rec
    bob_dev, bob_pre, alice_peer = (
        spair.bob.device.device,
        spair.bob.device.prekeys,
        spair.alice.peer,
    )

    def one_direction_session(_i: int, pt: bytes) -> bytes:
        return session_decrypt(
            bob_dev, bob_pre, b_rec, alice_peer, a_rec.encrypt(pt, NOW), NOW
        ).plaintext

    bench.add_op("one_direction_session/e2ee", one_direction_session)

    # 2. A DH ratchet step on every message: A->B, B->A, ... alternately.
    ppair = e2ee_pair(30)
    a, b = ppair.a, ppair.b
    turn = [False]

    def ping_pong(_i: int, pt: bytes) -> bytes:
        back = turn[0]
        turn[0] = not back
        if back:
            return a.decrypt(parse(b.encrypt(pt)), NOW)
        return b.decrypt(parse(a.encrypt(pt)), NOW)

    # Sanity: every message of the loop carries a new ratchet key.
    sent_keys = set()
    for n in range(4):
        src, dst = (b, a) if n % 2 else (a, b)
        envelope = parse(src.encrypt(P_MID))
        sent_keys.add(envelope.ratchet_pk)
        dst.decrypt(envelope, NOW)
    if len(sent_keys) != 4:
        raise BenchError("dh_step: messages do not all carry a new ratchet key")
    bench.add_op("dh_step/e2ee", ping_pong)

    # 3. In-order decrypt on a session holding 2,000 stored skipped keys vs none.
    add_e2ee_skipped(bench)

    # 4. Session setup from a received bundle to the first message decrypted.
    for suite, pq in (("x3dh", False), ("pqxdh", True)):
        add_e2ee_setup(bench, suite, pq)


SKIPPED = 2000


def _jumps(total: int) -> list[int]:
    """Jumps of at most MAX_SKIP (one message may skip no more) adding up to ``total``;
    the empty case gets as many zero jumps, so both pairs see as many deliveries."""
    sizes = [min(MAX_SKIP, SKIPPED - i) for i in range(0, SKIPPED, MAX_SKIP)]
    return sizes if total else [0] * len(sizes)


def _skipped_pair(seed: int, total: int) -> tuple[E2EEPair, list[tuple[bytes, bytes]]]:
    """A pair where Bob holds ``total`` (2,000 or 0) skipped keys: jumps of at most
    MAX_SKIP undelivered messages, each followed by one delivered message. Returns the
    undelivered (envelope, plaintext) pairs."""
    pair = e2ee_pair(seed)
    a, b = pair.a, pair.b
    undelivered: list[tuple[bytes, bytes]] = []
    for jump in _jumps(total):
        for _ in range(jump):
            plaintext = len(undelivered).to_bytes(4, "big") + P_MID[4:]
            undelivered.append((a.encrypt(plaintext), plaintext))
        if b.decrypt(MessageEnvelope.from_bytes(a.encrypt(P_MID)), NOW) != P_MID:
            raise BenchError("skipped pair: delivered message")
    if len(b.skipped) != total:
        raise BenchError(f"skipped pair: Bob holds {len(b.skipped)} skipped keys, not {total}")
    return pair, undelivered


def add_e2ee_skipped(bench: Bench) -> None:
    if MAX_STORED_SKIPPED < SKIPPED:
        raise BenchError(f"MAX_STORED_SKIPPED = {MAX_STORED_SKIPPED} < {SKIPPED}")
    parse = MessageEnvelope.from_bytes
    for key, total in (("decrypt_skipped_2000/e2ee", SKIPPED), ("decrypt_skipped_0/e2ee", 0)):
        pair, _ = _skipped_pair(40 + bool(total), total)
        snapshot = pair.b.to_bytes()
        k = bench.k_for(key)
        # k in-order envelopes, the same ones every sample: Bob is restored from the
        # snapshot (untimed) before each sample, so each sample does identical work.
        envs = [pair.a.encrypt(P_FIRST)] + [pair.a.encrypt(P_MID) for _ in range(k - 2)]
        envs.append(pair.a.encrypt(P_LAST))
        holder: list[RatchetState] = [pair.b]

        def prepare(
            _k: int, snapshot: bytes = snapshot, holder: list[RatchetState] = holder
        ) -> None:
            holder[0] = RatchetState.from_bytes(snapshot)

        def decrypt_in_order(
            i: int, _pt: bytes, envs: list[bytes] = envs, holder: list[RatchetState] = holder
        ) -> bytes:
            return holder[0].decrypt(parse(envs[i]), NOW)

        bench.add_op(key, decrypt_in_order, k=k, prepare=prepare)

    # Informational: decrypts that each hit one of the 2,000 stored skipped keys
    # (newest first), Bob restored from the snapshot before each sample.
    key = "decrypt_hit_skipped/e2ee"
    hit_pair, undelivered = _skipped_pair(50, SKIPPED)
    hit_snapshot = hit_pair.b.to_bytes()
    k = min(bench.k_for(key), len(undelivered))
    picks = list(reversed(undelivered))[:k]
    hit_holder: list[RatchetState] = [hit_pair.b]

    def prepare_hit(_k: int) -> None:
        hit_holder[0] = RatchetState.from_bytes(hit_snapshot)

    def decrypt_hit(i: int, _pt: bytes) -> bytes:
        return hit_holder[0].decrypt(parse(picks[i][0]), NOW)

    bench.add_op(key, decrypt_hit, k=k, prepare=prepare_hit, expect=(picks[0][1], picks[-1][1]))


def add_e2ee_setup(bench: Bench, suite: str, pq: bool) -> None:
    alice = make_user("alice", pq=pq, seed=60 + pq)
    bob = make_user("bob", pq=pq, seed=70 + pq)
    # Decrypting does not consume the one-time prekeys (the caller commits the use),
    # so the same received bundle bytes can start a session on every iteration.
    bundle_bytes = bob.device.bundle(opk=True, kem=pq).to_bytes()
    a_dev, b_dev, b_pre = alice.device.device, bob.device.device, bob.device.prekeys
    b_peer, a_peer = bob.peer, alice.peer

    def setup(_i: int, pt: bytes) -> bytes:
        bundle = PreKeyBundle.from_bytes(bundle_bytes)
        record = start_session(a_dev, b_peer, bundle, None, NOW)
        data = record.encrypt(pt, NOW)
        return session_decrypt(b_dev, b_pre, None, a_peer, data, NOW).plaintext

    # Sanity: the suite, and a one-time prekey (X25519, plus ML-KEM for PQXDH), used.
    first = PreKeyEnvelope.from_bytes(
        start_session(a_dev, b_peer, PreKeyBundle.from_bytes(bundle_bytes), None, NOW).encrypt(
            P_MID, NOW
        )
    )
    want = Suite.PQXDH if pq else Suite.X3DH
    if first.suite is not want or first.one_time_prekey_id is None:
        raise BenchError(f"setup_{suite}: the pre-key message is not {want.name} with an OPK")
    bench.add_op(f"setup_{suite}/e2ee", setup)


# --- vodozemac (Olm) ---------------------------------------------------------------------


def _vz_pair() -> tuple[Any, Any, Any, Any]:
    """Two accounts and an Olm session both ways (the pre-key message answered)."""
    assert vz is not None
    alice, bob = vz.Account(), vz.Account()
    bob.generate_one_time_keys(1)
    otk = next(iter(bob.one_time_keys.values()))
    bob.mark_keys_as_published()
    a_s = alice.create_outbound_session(bob.curve25519_key, otk)
    kind, raw = a_s.encrypt(b"hi").to_parts()
    pre = vz.AnyOlmMessage.from_parts(kind, raw).to_pre_key()
    b_s, pt = bob.create_inbound_session(alice.curve25519_key, pre)
    if pt != b"hi":
        raise BenchError("vodozemac pair: first message")
    if a_s.decrypt(vz.AnyOlmMessage.from_parts(*b_s.encrypt(b"yo").to_parts())) != b"yo":
        raise BenchError("vodozemac pair: reply")
    kind, _ = a_s.encrypt(b"x").to_parts()
    if kind != 1:
        raise BenchError("vodozemac pair: still sending pre-key messages")
    b_s.decrypt(vz.AnyOlmMessage.from_parts(*a_s.encrypt(b"z").to_parts()))
    return alice, bob, a_s, b_s


def add_vodozemac(bench: Bench) -> None:
    assert vz is not None
    from_parts = vz.AnyOlmMessage.from_parts

    def build_one_direction() -> None:
        _, _, a_s, b_s = _vz_pair()
        enc, dec = a_s.encrypt, b_s.decrypt

        def one_direction(_i: int, pt: bytes) -> bytes:
            kind, raw = enc(pt).to_parts()  # envelope bytes out ...
            return dec(from_parts(kind, raw))  # ... and parsed back in

        bench.add_op("one_direction/vodozemac", one_direction)

    def build_ping_pong() -> None:
        _, _, a_s, b_s = _vz_pair()
        turn = [False]

        def ping_pong(_i: int, pt: bytes) -> bytes:
            back = turn[0]
            turn[0] = not back
            if back:
                return a_s.decrypt(from_parts(*b_s.encrypt(pt).to_parts()))
            return b_s.decrypt(from_parts(*a_s.encrypt(pt).to_parts()))

        bench.add_op("dh_step/vodozemac", ping_pong)

    def build_setup(verify: bool) -> None:
        key = "setup_x3dh/vodozemac" if verify else "setup_x3dh/vodozemac_bare"
        alice, bob = vz.Account(), vz.Account()
        a_ik, b_ik, b_ed = alice.curve25519_key, bob.curve25519_key, bob.ed25519_key
        claimed: list[tuple[str, bytes, Any]] = []

        def prepare(k: int) -> None:
            # Bob publishes k fresh one-time keys, each signed as Matrix signs them
            # (Ed25519 over the canonical JSON of {"key": ...}); untimed.
            bob.generate_one_time_keys(k)
            keys = list(bob.one_time_keys.values())
            bob.mark_keys_as_published()
            if len(keys) < k:
                raise BenchError(f"{key}: vodozemac gave {len(keys)} one-time keys, wanted {k}")
            claimed.clear()
            for otk in keys[:k]:
                b64 = otk.to_base64()
                signed = json.dumps({"key": b64}, separators=(",", ":")).encode()
                claimed.append((b64, signed, bob.sign(signed)))

        def setup(i: int, pt: bytes) -> bytes:
            b64, signed, signature = claimed[i]
            if verify:
                b_ed.verify_signature(signed, signature)  # the claimed key's signature
            otk = vz.Curve25519PublicKey.from_base64(b64)
            session = alice.create_outbound_session(b_ik, otk)
            kind, raw = session.encrypt(pt).to_parts()
            pre = from_parts(kind, raw).to_pre_key()
            _, plaintext = bob.create_inbound_session(a_ik, pre)
            return bytes(plaintext)

        bench.add_op(key, setup, prepare=prepare)

    bench.guard("one_direction/vodozemac", build_one_direction)
    bench.guard("dh_step/vodozemac", build_ping_pong)
    bench.guard("setup_x3dh/vodozemac", lambda: build_setup(True))
    bench.guard("setup_x3dh/vodozemac_bare", lambda: build_setup(False))


# --- python-doubleratchet (Syndace) --------------------------------------------------------


def _dr_config() -> tuple[Any, dict[str, Any]]:
    """The configuration the library's own example (examples/dr_chat.py) recommends:
    AES-256-CBC + HMAC-SHA-512 AEAD, HKDF-SHA-512 root chain, separate HMAC-SHA-512/256
    message chains, here with X25519 (the example uses X448; X25519 matches the others)."""
    assert dr is not None

    class DoubleRatchet(dr.DoubleRatchet):  # type: ignore[misc]
        @staticmethod
        def _build_associated_data(associated_data: bytes, header: Any) -> bytes:
            return (
                associated_data
                + header.ratchet_pub
                + header.sending_chain_length.to_bytes(8, "big")
                + header.previous_sending_chain_length.to_bytes(8, "big")
            )

    class AEAD(aead_aes_hmac.AEAD):  # type: ignore[misc]
        @staticmethod
        def _get_hash_function() -> Any:
            return HashFunction.SHA_512

        @staticmethod
        def _get_info() -> bytes:
            return b"bench AEAD"

    class RootChainKDF(kdf_hkdf.KDF):  # type: ignore[misc]
        @staticmethod
        def _get_hash_function() -> Any:
            return HashFunction.SHA_512

        @staticmethod
        def _get_info() -> bytes:
            return b"bench root chain KDF"

    class MessageChainKDF(kdf_separate_hmacs.KDF):  # type: ignore[misc]
        @staticmethod
        def _get_hash_function() -> Any:
            return HashFunction.SHA_512_256

    config = {
        "diffie_hellman_ratchet_class": diffie_hellman_ratchet_curve25519.DiffieHellmanRatchet,
        "root_chain_kdf": RootChainKDF,
        "message_chain_kdf": MessageChainKDF,
        "message_chain_constant": b"\x01\x02",
        "dos_protection_threshold": 100,
        "max_num_skipped_message_keys": 1000,
        "aead": AEAD,
    }
    return DoubleRatchet, config


# doubleratchet has no wire format: a minimal strict one (ratchet key, PN, N, ciphertext).
_DR_HEADER = struct.Struct(">32sII")


def _dr_to_bytes(message: Any) -> bytes:
    h = message.header
    return (
        _DR_HEADER.pack(h.ratchet_pub, h.previous_sending_chain_length, h.sending_chain_length)
        + message.ciphertext
    )


def _dr_from_bytes(data: bytes) -> Any:
    assert dr is not None
    if len(data) < _DR_HEADER.size + 32:
        raise BenchError("doubleratchet envelope truncated")
    pub, pn, n = _DR_HEADER.unpack_from(data)
    return dr.EncryptedMessage(dr.Header(pub, pn, n), data[_DR_HEADER.size :])


def add_doubleratchet(bench: Bench) -> None:
    assert dr is not None
    ad = b"bench associated data: alice + bob"

    async def make_pair() -> tuple[Any, Any]:
        cls, config = _dr_config()
        dh = config["diffie_hellman_ratchet_class"]
        bob_priv = dh._generate_priv()
        bob_pub = dh._derive_pub(bob_priv)
        shared = secrets.token_bytes(32)
        alice, first = await cls.encrypt_initial_message(
            shared_secret=shared, recipient_ratchet_pub=bob_pub, message=b"hi",
            associated_data=ad, **config,
        )  # fmt: skip
        bob, pt = await cls.decrypt_initial_message(
            shared_secret=shared, own_ratchet_priv=bob_priv,
            message=_dr_from_bytes(_dr_to_bytes(first)), associated_data=ad, **config,
        )  # fmt: skip
        if pt != b"hi":
            raise BenchError("doubleratchet pair: first message")
        reply = await alice.decrypt_message(
            _dr_from_bytes(_dr_to_bytes(await bob.encrypt_message(b"yo", ad))), ad
        )
        if reply != b"yo":
            raise BenchError("doubleratchet pair: reply")
        return alice, bob

    def build_one_direction() -> None:
        alice, bob = bench.loop.run_until_complete(make_pair())

        async def one_direction(_i: int, pt: bytes) -> bytes:
            data = _dr_to_bytes(await alice.encrypt_message(pt, ad))
            out: bytes = await bob.decrypt_message(_dr_from_bytes(data), ad)
            return out

        bench.add_async_op("one_direction/doubleratchet", one_direction)

    def build_ping_pong() -> None:
        alice, bob = bench.loop.run_until_complete(make_pair())
        turn = [False]

        async def ping_pong(_i: int, pt: bytes) -> bytes:
            back = turn[0]
            turn[0] = not back
            src, dst = (bob, alice) if back else (alice, bob)
            data = _dr_to_bytes(await src.encrypt_message(pt, ad))
            out: bytes = await dst.decrypt_message(_dr_from_bytes(data), ad)
            return out

        bench.add_async_op("dh_step/doubleratchet", ping_pong)

    bench.guard("one_direction/doubleratchet", build_one_direction)
    bench.guard("dh_step/doubleratchet", build_ping_pong)


# --- primitives (the floor) -------------------------------------------------------------------

_P25519 = 2**255 - 19
_SMALL_ORDER = frozenset(
    {
        0,
        1,
        325606250916557431795983626356110631294008115727848805560023387167927233504,
        39382357235489614581723060781553021112529911719440698176882885853963445705823,
        _P25519 - 1,
    }
)


def loop_timer(body: Callable[[], object]) -> Callable[[int], int]:
    def loop(k: int) -> int:
        gc.collect()
        gc.disable()
        try:
            clock = CLOCK[0]
            t0 = clock()
            for _ in range(k):
                body()
            return clock() - t0
        finally:
            gc.enable()

    return loop


def add_primitives(bench: Bench) -> None:
    """Each primitive call the e2ee operations make, each through the fastest Python
    binding of the same function: libsodium through PyNaCl's cffi library directly
    (PyNaCl's Python wrappers add argument checks), one-shot ``hmac.digest``,
    ``hashlib``, ``os.urandom``, ``cryptography`` for ML-KEM. ``call`` (an empty call
    in the same loop) is subtracted from each: the floor is the cost of the calls."""
    rnd = os.urandom
    key32, label = rnd(32), Label.MESSAGE.value
    blake2b, sha256 = hashlib.blake2b, hashlib.sha256
    pair = e2ee_pair(80)
    raw = pair.a.encrypt(P_MID)  # a real 162-byte message envelope
    ad = pair.a.session_ad + b"\x01" + raw[:42]
    nonce = rnd(24)
    new, buffer, null = ffi.new, ffi.buffer, ffi.NULL
    aead_enc = lib.crypto_aead_xchacha20poly1305_ietf_encrypt
    aead_dec = lib.crypto_aead_xchacha20poly1305_ietf_decrypt
    ct = sodium.crypto_aead_xchacha20poly1305_ietf_encrypt(P_MID, ad, nonce, key32)
    ct_len, pt_len, ad_len = len(ct), len(P_MID), len(ad)

    def aead_encrypt() -> bytes:
        out = new("unsigned char[]", ct_len)
        aead_enc(out, null, P_MID, pt_len, ad, ad_len, null, nonce, key32)
        return buffer(out)[:]

    def aead_decrypt() -> bytes:
        out = new("unsigned char[]", pt_len)
        if aead_dec(out, null, null, ct, ct_len, ad, ad_len, nonce, key32) != 0:
            raise BenchError("aead_decrypt")
        return buffer(out)[:]

    priv, pub = rnd(32), sodium.crypto_scalarmult_base(rnd(32))
    scalarmult, scalarmult_base = lib.crypto_scalarmult, lib.crypto_scalarmult_base

    def x25519() -> bytes:
        out = new("unsigned char[]", 32)
        if scalarmult(out, priv, pub) != 0:
            raise BenchError("x25519")
        return buffer(out)[:]

    def x25519_base() -> bytes:
        out = new("unsigned char[]", 32)
        scalarmult_base(out, priv)
        return buffer(out)[:]

    hmac_digest = hmac.digest
    info = Label.RATCHET.value + b"\x01"
    ad_input = rnd(320)  # about the size of the CBOR session-AD statement
    pk1184, ct1088 = rnd(1184), rnd(1088)
    cmp_a, cmp_b = rnd(32), rnd(32)
    ed_pk, ed_sk = sodium.crypto_sign_seed_keypair(rnd(32))
    kem_seed = rnd(64)
    kem_priv = mlkem.MLKEM768PrivateKey.from_seed_bytes(kem_seed)
    kem_pub_bytes = kem_priv.public_key().public_bytes_raw()
    kem_pub = mlkem.MLKEM768PublicKey.from_public_bytes(kem_pub_bytes)
    _, kem_ct = kem_pub.encapsulate()
    from_public = mlkem.MLKEM768PublicKey.from_public_bytes
    from_seed = mlkem.MLKEM768PrivateKey.from_seed_bytes
    signed_small = signed_message(
        Label.SIGNED_PREKEY,
        prekey_statement("bob", 1000, 1, NOW, sodium.crypto_scalarmult_base(rnd(32))),
    )
    signed_large = signed_message(
        Label.KEM_PREKEY, prekey_statement("bob", 1000, 2, NOW, kem_pub_bytes)
    )
    sig_small = sodium.crypto_sign(signed_small, ed_sk)[:64]
    sig_large = sodium.crypto_sign(signed_large, ed_sk)[:64]
    sign_open = lib.crypto_sign_open  # PyNaCl's cffi exposes no verify_detached

    def ed25519_verify(sig: bytes, msg: bytes) -> Callable[[], None]:
        size = len(sig) + len(msg)

        def body() -> None:
            signed = sig + msg
            out = new("unsigned char[]", size)
            if sign_open(out, null, signed, size, ed_pk) != 0:
                raise BenchError("ed25519 verify")

        return body

    from_le = int.from_bytes

    def validate() -> None:
        u = from_le(pub, "little")
        if u >= _P25519 or u in _SMALL_ORDER:
            raise BenchError("validate")

    bodies: dict[str, tuple[Callable[[], object], int]] = {
        "call": (lambda: None, 20000),
        "blake2b_keyed_32": (lambda: blake2b(b"\x01", key=key32, digest_size=32).digest(), 20000),
        "blake2b_keyed_56": (lambda: blake2b(label, key=key32, digest_size=56).digest(), 20000),
        "blake2b_128_envelope": (lambda: blake2b(raw, digest_size=16).digest(), 20000),
        "aead_encrypt_100": (aead_encrypt, 10000),
        "aead_decrypt_100": (aead_decrypt, 10000),
        "x25519_validate": (validate, 20000),
        "x25519": (x25519, 600),
        "x25519_base": (x25519_base, 1000),
        "rng_32": (lambda: rnd(32), 10000),
        "hmac_sha256": (lambda: hmac_digest(key32, info, "sha256"), 10000),
        "sha256_320": (lambda: sha256(ad_input).digest(), 10000),
        "sha256_1184": (lambda: sha256(pk1184).digest(), 5000),
        "sha256_1088": (lambda: sha256(ct1088).digest(), 5000),
        "compare_digest_32": (lambda: hmac.compare_digest(cmp_a, cmp_b), 20000),
        "ed25519_verify_prekey": (ed25519_verify(sig_small, signed_small), 400),
        "ed25519_verify_kem_prekey": (ed25519_verify(sig_large, signed_large), 400),
        "mlkem768_from_public": (lambda: from_public(kem_pub_bytes), 1000),
        "mlkem768_encapsulate": (kem_pub.encapsulate, 1000),
        "mlkem768_from_seed": (lambda: from_seed(kem_seed), 1000),
        "mlkem768_decapsulate": (lambda: kem_priv.decapsulate(kem_ct), 1000),
    }
    for name, (body, k) in bodies.items():
        bench.add_prim(name, loop_timer(body), max(20, k // bench.scale))


# Primitive calls per operation, counted from the code (see bench/README.md).
_ENCRYPT = {"blake2b_keyed_32": 2, "blake2b_keyed_56": 1, "aead_encrypt_100": 1}
_DECRYPT_SAME_CHAIN = {
    "x25519_validate": 1,  # MessageEnvelope.from_bytes
    "blake2b_128_envelope": 1,  # duplicate-detection digest
    "blake2b_keyed_32": 2,  # _advance: message key and next chain key
    "blake2b_keyed_56": 1,  # _open: key || nonce
    "aead_decrypt_100": 1,
}
_DH_STEP_EXTRA = {
    "x25519": 2,  # DH(ours, theirs) for the receiving chain, DH(new, theirs) for sending
    "hmac_sha256": 6,  # two KDF_RK = HKDF-SHA-256 of 64 bytes: extract + 2 expand blocks
    "rng_32": 1,  # DHKeyPair.generate
    "x25519_base": 1,
}
_X3DH_SETUP = {
    # initiator: PreKeyBundle.from_bytes, validate_bundle, X3DH, RatchetInitAlice, encrypt
    "x25519_validate": 2 + 3,  # SPK, OPK; responder: IK_A, EK_A, ratchet key
    "ed25519_verify_prekey": 2,  # SPK and OPK signatures
    # The responder's sending ratchet key is made at its first send (docs/protocol.md
    # 4.3), after the measured span.
    "rng_32": 2,  # ephemeral, first ratchet key
    "x25519_base": 2,
    "x25519": (4 + 1) + (4 + 1),  # DH1..DH4 + ratchet init; responder DH1..DH4 + receiving DH
    "sha256_320": 1 + 1,  # session AD on each side
    "hmac_sha256": (2 + 3) + (2 + 3),  # HKDF-32 SK, HKDF-64 KDF_RK
    "compare_digest_32": 1,  # responder: identity key against the device list
    "blake2b_keyed_32": 2 + 2,
    "blake2b_keyed_56": 1 + 1,
    "aead_encrypt_100": 1,
    "aead_decrypt_100": 1,
    "blake2b_128_envelope": 1,
}
_PQXDH_EXTRA = {
    "mlkem768_from_public": 2,  # bundle decode validates the key; encapsulate parses it again
    "ed25519_verify_kem_prekey": 1,
    "mlkem768_encapsulate": 1,
    "mlkem768_decapsulate": 1,
    "sha256_1184": 2,  # SHA-256(KEM public key) in the session AD, each side
    "sha256_1088": 2,  # SHA-256(KEM ciphertext) in the session AD, each side
}


def _sum(*parts: dict[str, int]) -> dict[str, int]:
    out: dict[str, int] = defaultdict(int)
    for part in parts:
        for name, count in part.items():
            out[name] += count
    return dict(out)


FLOOR_COUNTS: dict[str, dict[str, int]] = {
    "one_direction": _sum(_ENCRYPT, _DECRYPT_SAME_CHAIN),
    "one_direction_session": _sum(_ENCRYPT, _DECRYPT_SAME_CHAIN),
    "dh_step": _sum(_ENCRYPT, _DECRYPT_SAME_CHAIN, _DH_STEP_EXTRA),
    "decrypt_skipped_2000": dict(_DECRYPT_SAME_CHAIN),
    "decrypt_skipped_0": dict(_DECRYPT_SAME_CHAIN),
    # a stored key: digest, key || nonce, AEAD (no chain step)
    "decrypt_hit_skipped": {
        "x25519_validate": 1,
        "blake2b_128_envelope": 1,
        "blake2b_keyed_56": 1,
        "aead_decrypt_100": 1,
    },
    "setup_x3dh": dict(_X3DH_SETUP),
    "setup_pqxdh": _sum(_X3DH_SETUP, _PQXDH_EXTRA),
}


# --- the run ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    key: str
    label: str
    target: str


ROWS = (
    Row("one_direction", "one direction A->B (ratchet API)", "<=1.0x vz, <=1.5x floor"),
    Row("one_direction_session", "one direction A->B (session API)", "<=1.0x vz, <=1.5x floor"),
    Row("dh_step", "DH step every message (ping-pong)", "<=1.0x vz"),
    Row("decrypt_skipped_2000", "decrypt, 2,000 stored skipped keys", "<=1.5x empty"),
    Row("decrypt_skipped_0", "decrypt, no stored skipped key", "(baseline)"),
    Row("decrypt_hit_skipped", "decrypt hitting a stored skipped key", "(info)"),
    Row("setup_x3dh", "X3DH setup: bundle -> 1st msg decrypted", "<=2x vz pair"),
    Row("setup_pqxdh", "PQXDH setup: bundle -> 1st msg decrypted", "<=3x vz pair"),
)
# The peers' figure for rows where e2ee is measured two ways.
PEER_ROW = {"one_direction_session": "one_direction", "setup_pqxdh": "setup_x3dh"}


def _median(samples: list[float]) -> float:
    return statistics.median(samples)


def group_of(key: str) -> str:
    """Samplers compared with each other run back to back within a round (their
    per-round ratios are then paired against load drift): one group per comparison."""
    row = key.split("/", 1)[0]
    if row == "prim":
        return "prim"
    if row.startswith("decrypt_"):
        return "decrypt"
    return PEER_ROW.get(row, row)


def run_rounds(bench: Bench, rounds: int, *, warmup: bool = True) -> dict[str, list[float]]:
    """Run every sampler once per round; returns per-op microseconds, one per round.

    The order rotates from round to round: the groups' order, and the order of the
    samplers inside each group."""
    groups: dict[str, list[Sampler]] = defaultdict(list)
    for sampler in bench.samplers:
        groups[group_of(sampler.key)].append(sampler)
    names = list(groups)
    results: dict[str, list[float]] = {s.key: [] for s in bench.samplers}
    if warmup:
        for sampler in bench.samplers:
            sampler.run()
    for r in range(rounds):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            members = groups[name]
            inner = r % len(members)
            for sampler in members[inner:] + members[:inner]:
                ns = sampler.run()
                results[sampler.key].append(ns / sampler.k / 1000.0)
    return results


def _revision() -> str:
    """The commit of the e2ee/ being measured, marked when e2ee/ has local changes
    (read-only git calls; "unknown" outside a checkout)."""
    import subprocess  # noqa: PLC0415

    root = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "e2ee"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{head} + local changes to e2ee/" if dirty else head


def machine_info() -> dict[str, str]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass

    def version(dist: str) -> str:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            return "not installed"

    from cryptography.hazmat.backends.openssl import backend  # noqa: PLC0415

    return {
        "e2ee revision": _revision(),
        "platform": platform.platform(),
        "cpu": cpu,
        "cpus": str(os.cpu_count()),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "e2ee": version("e2ee"),
        "pynacl": version("PyNaCl") + " (bundled libsodium)",
        "cryptography": version("cryptography") + f" ({backend.openssl_version_text()})",
        "cbor2": version("cbor2"),
        "vodozemac": version("vodozemac"),
        "doubleratchet": version("DoubleRatchet"),
    }


def _fmt(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


def summarize(results: dict[str, list[float]]) -> dict[str, Any]:
    """Figures are medians over rounds. Ratios are medians over rounds of the per-round
    ratio (samplers of one comparison run back to back, so a load burst on the machine
    hits both sides); the ratio of the medians is kept as ``*_of_medians``."""
    med = {key: _median(vals) for key, vals in results.items() if vals}
    rounds = min((len(v) for v in results.values()), default=0)
    prim_keys = [k for k in results if k.startswith("prim/") and k != "prim/call"]

    def prim_at(name: str, r: int) -> float:
        return max(0.0, results[f"prim/{name}"][r] - results["prim/call"][r])

    prims = {k.removeprefix("prim/"): max(0.0, med[k] - med["prim/call"]) for k in prim_keys}
    # Noise check: the minimum over rounds (the least disturbed sample) of each figure.
    low = {key: min(vals) for key, vals in results.items() if vals}
    low_prims = {k.removeprefix("prim/"): max(0.0, low[k] - low["prim/call"]) for k in prim_keys}

    def key_of(row: str, who: str) -> str:
        return f"{row if who == E2EE else PEER_ROW.get(row, row)}/{who}"

    def paired(a_key: str, b: str | list[float]) -> float | None:
        a_vals = results.get(a_key)
        b_vals = results.get(b) if isinstance(b, str) else b
        if not a_vals or not b_vals:
            return None
        return _median([x / y for x, y in zip(a_vals, b_vals, strict=True) if y > 0])

    rows = []
    for row in ROWS:
        e2ee_key = key_of(row.key, E2EE)
        e2ee_us = med.get(e2ee_key)
        vz_us = med.get(key_of(row.key, VZ))
        dr_us = med.get(key_of(row.key, DR))
        counts = FLOOR_COUNTS[row.key]
        floor = sum(prims[name] * count for name, count in counts.items()) if prims else None
        floor_rounds = (
            [sum(prim_at(n, r) * c for n, c in counts.items()) for r in range(rounds)]
            if prims
            else []
        )
        r_vz = paired(e2ee_key, key_of(row.key, VZ))
        r_floor = paired(e2ee_key, floor_rounds)
        low_floor = sum(low_prims[n] * c for n, c in counts.items()) if low_prims else None
        extra: dict[str, Any] = {
            "ratio_e2ee_vodozemac_of_medians": _ratio(e2ee_us, vz_us),
            "ratio_e2ee_floor_of_medians": _ratio(e2ee_us, floor),
            "ratio_e2ee_vodozemac_of_minimums": _ratio(
                low.get(e2ee_key), low.get(key_of(row.key, VZ))
            ),
            "ratio_e2ee_floor_of_minimums": _ratio(low.get(e2ee_key), low_floor),
            "floor_breakdown_us": {n: prims[n] * c for n, c in counts.items()} if prims else {},
        }
        met: bool | None = None
        if row.key in ("one_direction", "one_direction_session"):
            parts = [r is None or r <= limit for r, limit in ((r_vz, 1.0), (r_floor, 1.5))]
            met = False if not all(parts) else (None if r_vz is None or r_floor is None else True)
        elif row.key == "dh_step":
            met = None if r_vz is None else r_vz <= 1.0
        elif row.key == "decrypt_skipped_2000":
            r_empty = paired(e2ee_key, "decrypt_skipped_0/e2ee")
            extra["ratio_vs_empty"] = r_empty
            extra["ratio_vs_empty_of_medians"] = _ratio(e2ee_us, med.get("decrypt_skipped_0/e2ee"))
            extra["ratio_vs_empty_of_minimums"] = _ratio(
                low.get(e2ee_key), low.get("decrypt_skipped_0/e2ee")
            )
            met = None if r_empty is None else r_empty <= 1.5
        elif row.key in ("setup_x3dh", "setup_pqxdh"):
            limit = 2.0 if row.key == "setup_x3dh" else 3.0
            met = None if r_vz is None else r_vz <= limit
            bare_key = key_of(row.key, VZ_BARE)
            r_bare = paired(e2ee_key, bare_key)
            extra["vodozemac_bare_us"] = med.get(bare_key)
            extra["ratio_vs_vodozemac_bare"] = r_bare
            extra["met_vs_bare"] = None if r_bare is None else r_bare <= limit
            extra["ratio_vs_vodozemac_bare_of_minimums"] = _ratio(
                low.get(e2ee_key), low.get(bare_key)
            )
        rows.append(
            {
                "key": row.key,
                "operation": row.label,
                "e2ee_us": e2ee_us,
                "vodozemac_us": vz_us,
                "doubleratchet_us": dr_us,
                "floor_us": floor,
                "ratio_e2ee_vodozemac": r_vz,
                "ratio_e2ee_floor": r_floor,
                "target": row.target,
                "met": met,
                **extra,
            }
        )
    return {"medians_us": med, "minimums_us": low, "primitives_us": prims, "rows": rows}


def print_table(summary: dict[str, Any], info: dict[str, str], meta: dict[str, Any]) -> None:
    print(
        f"e2ee benchmark  {meta['date']}  ({meta['mode']}, {meta['rounds']} rounds, medians, "
        f"{meta['clock']} clock)"
    )
    for name, value in info.items():
        print(f"  {name:<13} {value}")
    header = (
        f"{'operation':<42} | {'e2ee us':>8} | {'vodozemac us':>12} | {'doubleratchet us':>16} | "
        f"{'floor us':>8} | {'e2ee/vz':>7} | {'e2ee/floor':>10} | {'target':<24} | met?"
    )
    print()
    print(header)
    print("-" * len(header))
    for row in summary["rows"]:
        target = row["target"]
        if "ratio_vs_empty" in row:
            target = f"{target} ({_fmt(row['ratio_vs_empty'], 2)}x)"
        met = {True: "yes", False: "NO", None: "-"}[row["met"]]
        print(
            f"{row['operation']:<42} | {_fmt(row['e2ee_us']):>8} | {_fmt(row['vodozemac_us']):>12} | "
            f"{_fmt(row['doubleratchet_us']):>16} | {_fmt(row['floor_us']):>8} | "
            f"{_fmt(row['ratio_e2ee_vodozemac'], 2):>7} | {_fmt(row['ratio_e2ee_floor'], 2):>10} | "
            f"{target:<24} | {met}"
        )
    print()
    for row in summary["rows"]:
        if "vodozemac_bare_us" in row and row["vodozemac_bare_us"] is not None:
            print(
                f"{row['operation']}: vodozemac column = Olm pair setup + Ed25519 check of the "
                f"claimed one-time key; without that check {_fmt(row['vodozemac_bare_us'])} us "
                f"(e2ee/vz {_fmt(row['ratio_vs_vodozemac_bare'], 2)}x)."
            )
    print(
        "Ratios are medians of per-round ratios (paired samples), so they can differ slightly "
        "from the quotient of the medians shown."
    )
    print("Noise check, the same ratios from each figure's minimum over rounds:")
    for row in summary["rows"]:
        parts = []
        if row.get("ratio_e2ee_vodozemac_of_minimums") is not None:
            parts.append(f"e2ee/vz {row['ratio_e2ee_vodozemac_of_minimums']:.2f}")
        if row.get("ratio_e2ee_floor_of_minimums") is not None:
            parts.append(f"e2ee/floor {row['ratio_e2ee_floor_of_minimums']:.2f}")
        if row.get("ratio_vs_empty_of_minimums") is not None:
            parts.append(f"vs empty {row['ratio_vs_empty_of_minimums']:.2f}")
        if row.get("ratio_vs_vodozemac_bare_of_minimums") is not None:
            parts.append(f"e2ee/vz bare {row['ratio_vs_vodozemac_bare_of_minimums']:.2f}")
        if parts and row["target"] not in ("(info)", "(baseline)"):
            print(f"  {row['operation']:<42} " + ", ".join(parts))
    print(
        "vodozemac and doubleratchet have no X3DH/PQXDH with signed prekeys; doubleratchet has "
        "no session setup at all (n/a); the skipped-key rows are e2ee-only."
    )
    for key, reason in meta["unavailable"].items():
        print(f"unavailable: {key}: {reason}")
    print(
        "primitives (us/call): "
        + ", ".join(f"{k} {v:.3f}" for k, v in summary["primitives_us"].items())
    )


def run_benchmark(
    *,
    quick: bool = False,
    rounds: int | None = None,
    scale: int | None = None,
    peers: tuple[str, ...] = PEERS,
    json_path: str | Path | None = None,
    echo: bool = True,
    clock: str = "cpu",
) -> dict[str, Any]:
    """Build every sampler, run the rounds, print the table; returns the results."""
    CLOCK[0] = CLOCKS[clock]
    rounds = rounds if rounds is not None else (3 if quick else 15)
    scale = scale if scale is not None else (50 if quick else 1)
    bench = Bench(scale=scale, peers=peers)
    try:
        add_e2ee(bench)
        if VZ in peers:
            if vz is None:
                bench.unavailable[VZ] = "vodozemac is not installed (pip install -e '.[bench]')"
            else:
                add_vodozemac(bench)
        if DR in peers:
            if dr is None:
                bench.unavailable[DR] = "doubleratchet is not installed (pip install -e '.[bench]')"
            else:
                add_doubleratchet(bench)
        add_primitives(bench)
        started = time.perf_counter()
        results = run_rounds(bench, rounds, warmup=not quick)
        elapsed = time.perf_counter() - started
    finally:
        bench.close()
    expected_checks = 2 * (rounds + (0 if quick else 1))
    for sampler in bench.samplers:
        if sampler.key.startswith("prim/"):
            continue
        if bench.checks[sampler.key] != expected_checks:
            raise BenchError(f"{sampler.key}: {bench.checks[sampler.key]} result checks ran")
    summary = summarize(results)
    meta = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "mode": "quick" if quick else "full",
        "rounds": rounds,
        "scale": scale,
        "seconds": round(elapsed, 1),
        "unavailable": dict(bench.unavailable),
        "clock": clock,
    }
    info = machine_info()
    out = {
        "meta": meta,
        "machine": info,
        **summary,
        "ops_per_sample": {s.key: s.k for s in bench.samplers},
        "samples_us": results,
        "floor_counts": FLOOR_COUNTS,
        "checks": dict(bench.checks),
        "contenders": sorted({s.key for s in bench.samplers if not s.key.startswith("prim/")}),
    }
    if echo:
        print_table(summary, info, meta)
    if json_path is not None:
        Path(json_path).write_text(json.dumps(out, indent=2, sort_keys=True) + "\n")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.run", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--quick", action="store_true", help="short smoke run (few rounds, tiny loops)"
    )
    parser.add_argument("--json", metavar="FILE", help="write every figure and sample as JSON")
    parser.add_argument("--rounds", type=int, help="rounds (default 15, quick 3)")
    parser.add_argument("--no-peers", action="store_true", help="e2ee only")
    parser.add_argument(
        "--clock",
        choices=sorted(CLOCKS),
        default="cpu",
        help="cpu: process CPU time (default, robust to other load); wall: perf_counter",
    )
    args = parser.parse_args(argv)
    run_benchmark(
        quick=args.quick,
        rounds=args.rounds,
        peers=() if args.no_peers else PEERS,
        json_path=args.json,
        clock=args.clock,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
