"""Builders shared by the core's tests: users with devices, device lists and bundles."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from e2ee.device import OurDevice, OurPreKeys
from e2ee.device_list import DeviceList, PeerDevice, SignedDeviceList
from e2ee.keys import SigningKeyPair
from e2ee.prekeys import PreKeyBundle, SignedPublicPreKey
from e2ee.primitives import Rng

NOW = 1_700_000_000_000


def seeded_rng(seed: int) -> Rng:
    """A deterministic rng for reproducible tests (never for real keys)."""
    generator = random.Random(seed)
    return generator.randbytes


@dataclass
class TestDevice:
    __test__ = False  # a builder, not a test class

    device: OurDevice
    prekeys: OurPreKeys
    signed_prekey: SignedPublicPreKey
    one_time: list[SignedPublicPreKey]
    kem_one_time: list[SignedPublicPreKey]
    last_resort: SignedPublicPreKey | None

    def bundle(
        self, *, opk: bool = True, kem: bool = True, last_resort: bool = False
    ) -> PreKeyBundle:
        one_time = self.one_time.pop(0) if opk and self.one_time else None
        kem_key: SignedPublicPreKey | None = None
        if kem and self.last_resort is not None:
            kem_key = (
                self.last_resort
                if last_resort or not self.kem_one_time
                else self.kem_one_time.pop(0)
            )
        return PreKeyBundle(
            self.device.user_id, self.device.device_id, self.signed_prekey, one_time, kem_key
        )


@dataclass
class TestUser:
    __test__ = False  # a builder, not a test class

    user_id: str
    master: SigningKeyPair
    devices: list[TestDevice]
    device_list: SignedDeviceList
    rng: Rng = field(repr=False)

    def peer(self, index: int = 0) -> PeerDevice:
        peer = self.device_list.statement.peer(self.devices[index].device.device_id)
        assert peer is not None
        return peer


def make_device(
    user_id: str,
    device_id: int,
    master_pk: bytes,
    rng: Rng,
    *,
    pq: bool = True,
    now: int = NOW,
    batch: int = 5,
) -> TestDevice:
    device = OurDevice.generate(user_id, device_id, master_pk, pq=pq, now_ms=now, rng=rng)
    prekeys = OurPreKeys()
    spk = prekeys.rotate_signed_prekey(device, now, rng)
    one_time = prekeys.one_time_batch(device, now, count=batch, rng=rng)
    kem_one_time: list[SignedPublicPreKey] = []
    last_resort = None
    if pq:
        kem_one_time = prekeys.one_time_batch(device, now, kem=True, count=batch, rng=rng)
        last_resort = prekeys.rotate_last_resort(device, now, rng)
    return TestDevice(device, prekeys, spk, one_time, kem_one_time, last_resort)


def make_user(
    user_id: str, *, devices: int = 1, pq: bool = True, seed: int = 1, now: int = NOW
) -> TestUser:
    rng = seeded_rng(seed)
    master = SigningKeyPair.generate(rng)
    built = [
        make_device(user_id, 1000 + i, master.public_key, rng, pq=pq, now=now)
        for i in range(devices)
    ]
    statement = DeviceList(
        user_id, master.public_key, 1, now, None, tuple(d.device.entry() for d in built)
    )
    return TestUser(user_id, master, built, SignedDeviceList.sign(statement, master), rng)
