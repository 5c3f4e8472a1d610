"""``e2ee example``: a runnable walk through the protocol core, in memory.

Alice and Bob each create an account (master key, signed device list, prekeys);
Alice validates Bob's bundle and starts a PQXDH session; they exchange padded
payloads over the Double Ratchet; Bob sees a replayed and a tampered message
refused; both compute the same safety number. No network and no clock: time is
simulated, so the run is the same everywhere.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Final

from .device import OurDevice, OurPreKeys
from .device_list import DeviceList, PeerDevice, SignedDeviceList, check_device_list
from .errors import DecodeError, DecryptionError, DuplicateMessage
from .keys import SigningKeyPair
from .payload import Payload, PayloadType
from .prekeys import PreKeyBundle
from .primitives import default_rng
from .safety_numbers import SafetyNumber
from .session import SessionRecord, decrypt, start_session

__all__ = ["ExampleCommand", "command", "run_example"]

_START_MS: Final = 1_767_225_600_000  # 2026-01-01T00:00:00Z, simulated


@dataclass
class _Account:
    user_id: str
    master: SigningKeyPair
    device: OurDevice
    prekeys: OurPreKeys
    device_list: SignedDeviceList
    bundle: PreKeyBundle


def _register(user_id: str, device_id: int, now_ms: int) -> _Account:
    master = SigningKeyPair.generate()
    device = OurDevice.generate(user_id, device_id, master.public_key, pq=True, now_ms=now_ms)
    device_list = SignedDeviceList.sign(
        DeviceList(user_id, master.public_key, 1, now_ms, None, (device.entry(),)), master
    )
    prekeys = OurPreKeys()
    spk = prekeys.rotate_signed_prekey(device, now_ms)
    one_time = prekeys.one_time_batch(device, now_ms, count=5)
    kem = prekeys.one_time_batch(device, now_ms, kem=True, count=5)
    prekeys.rotate_last_resort(device, now_ms)
    bundle = PreKeyBundle(user_id, device_id, spk, one_time[0], kem[0])
    return _Account(user_id, master, device, prekeys, device_list, bundle)


def _fetch_device(account: _Account, now_ms: int) -> PeerDevice:
    """What a contact does with a device list served by the relay: decode it (the
    signature is checked), pin the master key, and take the device entry."""
    received = SignedDeviceList.from_bytes(account.device_list.to_bytes())
    check = check_device_list(
        received, user_id=account.user_id, pinned_master_pk=None, last_seen=None, now_ms=now_ms
    )
    peer = check.accepted.statement.peer(account.device.device_id)
    if peer is None:  # pragma: no cover - the list was just built with this device
        raise DecodeError("device missing from its own list")
    return peer


def _text(body: str, now_ms: int) -> bytes:
    return Payload(PayloadType.TEXT, default_rng(16), now_ms, body).to_bytes()


def run_example(out: list[str]) -> None:
    """Run the walk-through, appending each line of the story to ``out``."""
    now = _START_MS
    alice = _register("alice", 1, now)
    bob = _register("bob", 7, now)
    out.append("alice and bob registered: master keys, signed device lists, prekeys")

    bob_device = _fetch_device(bob, now)
    alice_device = _fetch_device(alice, now)
    bundle = PreKeyBundle.from_bytes(bob.bundle.to_bytes())
    alice_sessions = start_session(alice.device, bob_device, bundle, None, now)
    active = alice_sessions.active
    suite = "?" if active is None else active.suite.name
    out.append(f"alice validated bob's bundle (every signature) and ran {suite}")

    first = alice_sessions.encrypt(_text("hello bob, this is end-to-end encrypted", now), now)
    out.append(f"alice -> bob: pre-key envelope of {len(first)} bytes")
    result = decrypt(bob.device, bob.prekeys, None, alice_device, first, now + 1_000)
    result.commit_prekeys(bob.prekeys)
    bob_sessions: SessionRecord = result.record
    payload = Payload.from_bytes(result.plaintext, from_own_device=False)
    out.append(f"bob decrypted: {payload.body!r} (sent at {payload.sender_ts_ms})")

    reply = bob_sessions.encrypt(_text("hi alice! got it.", now + 2_000), now + 2_000)
    got = decrypt(alice.device, alice.prekeys, alice_sessions, bob_device, reply, now + 3_000)
    out.append(
        f"alice decrypted: {Payload.from_bytes(got.plaintext, from_own_device=False).body!r}"
    )

    try:
        decrypt(bob.device, bob.prekeys, bob_sessions, alice_device, first, now + 4_000)
    except DuplicateMessage:
        out.append("bob refused a replay of the first message: DuplicateMessage")
    second = alice_sessions.encrypt(_text("second message", now + 5_000), now + 5_000)
    tampered = bytearray(second)
    tampered[-1] ^= 0x01
    try:
        decrypt(bob.device, bob.prekeys, bob_sessions, alice_device, bytes(tampered), now + 6_000)
    except DecryptionError as exc:
        out.append(f"bob refused a tampered message: {type(exc).__name__}")
    ok = decrypt(bob.device, bob.prekeys, bob_sessions, alice_device, second, now + 7_000)
    out.append(
        "bob still decrypts the genuine one: "
        f"{Payload.from_bytes(ok.plaintext, from_own_device=False).body!r}"
    )

    alice_view = SafetyNumber.compute(
        "alice", alice.master.public_key, "bob", bob.master.public_key
    )
    bob_view = SafetyNumber.compute("bob", bob.master.public_key, "alice", alice.master.public_key)
    out.append(f"safety number: {alice_view.display()}")
    same = alice_view.digits == bob_view.digits and bob_view.verify_qr(alice_view.qr_payload())
    out.append(f"both see the same number and bob's scan of alice's QR verifies: {same}")


class ExampleCommand:
    """The ``e2ee example`` subcommand."""

    name = "example"
    help = "run an in-memory walk through the protocol core (no network)"

    def configure(self, parser: argparse.ArgumentParser) -> None:
        """No options."""
        parser.description = __doc__

    def run(self, args: argparse.Namespace) -> int:
        """Print the walk-through; exit code 0."""
        lines: list[str] = []
        run_example(lines)
        for line in lines:
            print(line)
        return 0


command: Final = ExampleCommand()
