"""Our own device: its identity and the private halves of its prekeys (DESIGN 4.2).

:class:`OurDevice` holds the device's signing key (Ed25519) and identity key
(X25519). :class:`OurPreKeys` holds the private halves of every prekey the device
has published, the persisted id counter (ids are never reused), and the durable set
of base keys seen in pre-key messages that used no one-time prekey (DESIGN 4.3).
Both serialize to versioned CBOR and never show secrets in ``repr``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from . import cbor
from .device_list import DeviceEntry, PeerDevice
from .errors import CorruptState, E2EEError, InvalidArgument
from .identifiers import DEVICE_ID_MAX, check_user_id
from .keys import DHKeyPair, KEMKeyPair, SigningKeyPair
from .limits import (
    DAY_MS,
    MAX_SEEN_BASE_KEYS,
    MAX_STATE_SIZE,
    ONE_TIME_PREKEY_BATCH,
    ONE_TIME_PREKEY_MAX_AGE_MS,
    SIGNED_PREKEY_RETENTION_MIN_MS,
)
from .prekeys import PREKEY_ID_MAX, PreKeyKind, SignedPublicPreKey, prekey_statement
from .primitives import Rng, default_rng

__all__ = ["OurDevice", "OurPreKeys", "PreKeyUse"]

_STATE_VERSION: Final = 1
_U63: Final = 2**63 - 1
_DEVICE_KEYS: Final = frozenset(range(8))
_PREKEYS_KEYS: Final = frozenset(range(6))
_NO_KEM: Final = -1


class OurDevice:
    """This device's long-term keys and its place in its user's account."""

    __slots__ = ("added_at_ms", "device_id", "identity", "master_pk", "pq", "signing", "user_id")

    def __init__(
        self,
        *,
        user_id: str,
        device_id: int,
        master_pk: bytes,
        signing: SigningKeyPair,
        identity: DHKeyPair,
        pq: bool = True,
        added_at_ms: int = 0,
    ) -> None:
        self.user_id = check_user_id(user_id)
        if not 0 <= device_id <= DEVICE_ID_MAX:
            raise InvalidArgument("device id must be an unsigned 32-bit integer")
        self.device_id = device_id
        self.master_pk = master_pk
        self.signing = signing
        self.identity = identity
        self.pq = pq
        self.added_at_ms = added_at_ms

    @classmethod
    def generate(
        cls,
        user_id: str,
        device_id: int,
        master_pk: bytes,
        *,
        pq: bool = True,
        now_ms: int = 0,
        rng: Rng = default_rng,
    ) -> OurDevice:
        """A new device with fresh signing and identity keys."""
        return cls(
            user_id=user_id,
            device_id=device_id,
            master_pk=master_pk,
            signing=SigningKeyPair.generate(rng),
            identity=DHKeyPair.generate(rng),
            pq=pq,
            added_at_ms=now_ms,
        )

    def entry(self) -> DeviceEntry:
        """This device as an entry of its user's device list."""
        return DeviceEntry(
            self.device_id,
            self.signing.public_key,
            self.identity.public_key,
            self.pq,
            self.added_at_ms,
        )

    def as_peer(self) -> PeerDevice:
        """This device as others see it (for the session AD)."""
        return PeerDevice(self.user_id, self.master_pk, self.entry())

    def to_bytes(self) -> bytes:
        """Versioned CBOR; holds secrets (store it encrypted)."""
        return cbor.encode(
            {
                0: _STATE_VERSION,
                1: self.user_id,
                2: self.device_id,
                3: self.master_pk,
                4: self.signing.seed(),
                5: self.identity.private_bytes(),
                6: self.pq,
                7: self.added_at_ms,
            }
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> OurDevice:
        """Inverse of :meth:`to_bytes`.

        Raises:
            CorruptState: the bytes do not decode.
        """
        try:
            m = cbor.expect_map(cbor.decode(data), "device", _DEVICE_KEYS)
            if m[0] != _STATE_VERSION:
                raise CorruptState(f"unknown device state version {m[0]!r}")
            return cls(
                user_id=check_user_id(m[1]),
                device_id=cbor.field_int(m, 2, "device id", 0, DEVICE_ID_MAX),
                master_pk=cbor.field_bytes(m, 3, "master key", size=32),
                signing=SigningKeyPair(cbor.field_bytes(m, 4, "signing seed", size=32)),
                identity=DHKeyPair(cbor.field_bytes(m, 5, "identity key", size=32)),
                pq=cbor.field_bool(m, 6, "pq"),
                added_at_ms=cbor.field_int(m, 7, "added_at_ms", 0, _U63),
            )
        except CorruptState:
            raise
        except E2EEError as exc:
            raise CorruptState(f"device state does not decode: {exc}") from exc

    def __repr__(self) -> str:
        return f"OurDevice({self.user_id}.{self.device_id}, pq={self.pq})"


@dataclass(frozen=True, slots=True)
class PreKeyUse:
    """What a successful pre-key message consumed, applied with
    :meth:`OurPreKeys.commit_use` in the same transaction as the new session."""

    signed_prekey_id: int
    one_time_prekey_id: int | None
    kem_prekey_id: int | None
    kem_one_time: bool
    base_key: bytes


class _Held:
    """One private prekey with its timestamps."""

    __slots__ = ("created_at_ms", "key", "superseded_at_ms")

    def __init__(
        self, key: DHKeyPair | KEMKeyPair, created_at_ms: int, superseded_at_ms: int | None = None
    ) -> None:
        self.key = key
        self.created_at_ms = created_at_ms
        self.superseded_at_ms = superseded_at_ms


class OurPreKeys:
    """Private prekeys of this device and the seen-base-key ledger (DESIGN 4.2-4.4)."""

    __slots__ = ("_held", "current_last_resort", "current_signed", "next_id", "seen_base_keys")

    def __init__(self) -> None:
        self.next_id = 1
        self._held: dict[PreKeyKind, dict[int, _Held]] = {kind: {} for kind in PreKeyKind}
        self.current_signed: int | None = None
        self.current_last_resort: int | None = None
        # (signed prekey id, KEM prekey id or -1) -> base keys of pre-key messages that
        # used no one-time prekey; evicted only with the signed prekey.
        self.seen_base_keys: dict[tuple[int, int], set[bytes]] = {}

    # --- generation -------------------------------------------------------------------

    def _new_id(self) -> int:
        prekey_id = self.next_id
        if prekey_id > PREKEY_ID_MAX:
            raise InvalidArgument("prekey ids exhausted")
        self.next_id = prekey_id + 1
        return prekey_id

    def _publish(
        self,
        device: OurDevice,
        kind: PreKeyKind,
        key: DHKeyPair | KEMKeyPair,
        now_ms: int,
    ) -> SignedPublicPreKey:
        prekey_id = self._new_id()
        self._held[kind][prekey_id] = _Held(key, now_ms)
        statement = prekey_statement(
            device.user_id, device.device_id, prekey_id, now_ms, key.public_key
        )
        signature = device.signing.sign(kind.label, statement)
        return SignedPublicPreKey(kind, prekey_id, now_ms, key.public_key, signature)

    def rotate_signed_prekey(
        self, device: OurDevice, now_ms: int, rng: Rng = default_rng
    ) -> SignedPublicPreKey:
        """A new signed prekey; the previous one is kept as superseded (DESIGN 4.4)."""
        if self.current_signed is not None:
            self._held[PreKeyKind.SIGNED][self.current_signed].superseded_at_ms = now_ms
        published = self._publish(device, PreKeyKind.SIGNED, DHKeyPair.generate(rng), now_ms)
        self.current_signed = published.prekey_id
        return published

    def rotate_last_resort(
        self, device: OurDevice, now_ms: int, rng: Rng = default_rng
    ) -> SignedPublicPreKey:
        """A new last-resort ML-KEM prekey; the previous one is kept as superseded."""
        kind = PreKeyKind.KEM_LAST_RESORT
        if self.current_last_resort is not None:
            self._held[kind][self.current_last_resort].superseded_at_ms = now_ms
        published = self._publish(device, kind, KEMKeyPair.generate(rng), now_ms)
        self.current_last_resort = published.prekey_id
        return published

    def one_time_batch(
        self,
        device: OurDevice,
        now_ms: int,
        *,
        kem: bool = False,
        count: int = ONE_TIME_PREKEY_BATCH,
        rng: Rng = default_rng,
    ) -> list[SignedPublicPreKey]:
        """``count`` new one-time prekeys (X25519, or ML-KEM-768 when ``kem``)."""
        if not 0 < count <= ONE_TIME_PREKEY_BATCH:
            raise InvalidArgument(f"batch size must be 1..{ONE_TIME_PREKEY_BATCH}")
        kind = PreKeyKind.KEM if kem else PreKeyKind.ONE_TIME
        make = KEMKeyPair.generate if kem else DHKeyPair.generate
        return [self._publish(device, kind, make(rng), now_ms) for _ in range(count)]

    # --- lookups for the responder --------------------------------------------------------

    def signed_prekey(self, prekey_id: int) -> DHKeyPair | None:
        """The private signed prekey ``prekey_id`` (current or superseded), if held."""
        held = self._held[PreKeyKind.SIGNED].get(prekey_id)
        return None if held is None else _dh(held)

    def one_time_prekey(self, prekey_id: int) -> DHKeyPair | None:
        """The private one-time prekey ``prekey_id``, if still held."""
        held = self._held[PreKeyKind.ONE_TIME].get(prekey_id)
        return None if held is None else _dh(held)

    def kem_prekey(self, prekey_id: int) -> tuple[KEMKeyPair, bool] | None:
        """The ML-KEM prekey ``prekey_id`` and whether it is one-time, if held."""
        held = self._held[PreKeyKind.KEM].get(prekey_id)
        if held is not None:
            return _kem(held), True
        held = self._held[PreKeyKind.KEM_LAST_RESORT].get(prekey_id)
        return None if held is None else (_kem(held), False)

    def count(self, kind: PreKeyKind) -> int:
        """How many private prekeys of ``kind`` are held."""
        return len(self._held[kind])

    @property
    def publishes_kem(self) -> bool:
        """Whether this device has ML-KEM prekeys (then classical pre-key messages are
        a downgrade, DESIGN 4.3)."""
        return self.current_last_resort is not None

    def base_key_seen(self, signed_prekey_id: int, kem_id: int | None, base_key: bytes) -> bool:
        """Whether a pre-key message without one-time prekey used ``base_key`` before."""
        key = (signed_prekey_id, _NO_KEM if kem_id is None else kem_id)
        return base_key in self.seen_base_keys.get(key, ())

    @property
    def seen_base_key_count(self) -> int:
        """How many base keys the ledger holds."""
        return sum(len(keys) for keys in self.seen_base_keys.values())

    @property
    def needs_rotation(self) -> bool:
        """Past ``MAX_SEEN_BASE_KEYS`` the device rotates its signed prekey and
        last-resort KEM key (DESIGN 4.3)."""
        return self.seen_base_key_count > MAX_SEEN_BASE_KEYS

    def commit_use(self, use: PreKeyUse) -> None:
        """Apply what a successfully decrypted pre-key message consumed: delete its
        one-time prekeys, or record its base key when it used none (DESIGN 4.3)."""
        if use.one_time_prekey_id is not None:
            self._held[PreKeyKind.ONE_TIME].pop(use.one_time_prekey_id, None)
        else:
            key = (
                use.signed_prekey_id,
                _NO_KEM if use.kem_prekey_id is None else use.kem_prekey_id,
            )
            self.seen_base_keys.setdefault(key, set()).add(use.base_key)
        if use.kem_one_time and use.kem_prekey_id is not None:
            self._held[PreKeyKind.KEM].pop(use.kem_prekey_id, None)

    # --- lifetimes (DESIGN 4.4) -------------------------------------------------------------

    def expire(self, now_ms: int, relay_message_ttl_ms: int = 30 * DAY_MS) -> None:
        """Delete superseded signed and last-resort prekeys ``max(35 days, relay TTL +
        5 days)`` after rotation (with their base-key ledger entries), and one-time
        prekeys unused for 90 days once a newer batch exists."""
        keep_ms = max(SIGNED_PREKEY_RETENTION_MIN_MS, relay_message_ttl_ms + 5 * DAY_MS)
        for kind in (PreKeyKind.SIGNED, PreKeyKind.KEM_LAST_RESORT):
            held = self._held[kind]
            for prekey_id in [
                i
                for i, h in held.items()
                if h.superseded_at_ms is not None and now_ms - h.superseded_at_ms > keep_ms
            ]:
                del held[prekey_id]
                if kind is PreKeyKind.SIGNED:
                    for key in [k for k in self.seen_base_keys if k[0] == prekey_id]:
                        del self.seen_base_keys[key]
        for kind in (PreKeyKind.ONE_TIME, PreKeyKind.KEM):
            held = self._held[kind]
            if not held:
                continue
            newest = max(h.created_at_ms for h in held.values())
            for prekey_id in [
                i
                for i, h in held.items()
                if h.created_at_ms < newest
                and now_ms - h.created_at_ms > ONE_TIME_PREKEY_MAX_AGE_MS
            ]:
                del held[prekey_id]

    # --- serialization ------------------------------------------------------------------

    def to_bytes(self) -> bytes:
        """Versioned CBOR; holds secrets (store it encrypted)."""

        def secret(h: _Held) -> bytes:
            return h.key.private_bytes() if isinstance(h.key, DHKeyPair) else h.key.seed()

        held: cbor.Value = [
            [int(kind), i, secret(h), h.created_at_ms, h.superseded_at_ms]
            for kind, entries in self._held.items()
            for i, h in entries.items()
        ]
        ledger: list[cbor.Value] = []
        for (spk, kem), keys in sorted(self.seen_base_keys.items()):
            base_keys: list[cbor.Value] = list(sorted(keys))
            ledger.append([spk, kem, base_keys])
        return cbor.encode(
            {
                0: _STATE_VERSION,
                1: self.next_id,
                2: self.current_signed,
                3: self.current_last_resort,
                4: held,
                5: ledger,
            }
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> OurPreKeys:
        """Inverse of :meth:`to_bytes`.

        Raises:
            CorruptState: the bytes do not decode.
        """
        try:
            m = cbor.expect_map(
                cbor.decode(data, max_size=MAX_STATE_SIZE), "prekeys", _PREKEYS_KEYS
            )
            if m[0] != _STATE_VERSION:
                raise CorruptState(f"unknown prekey state version {m[0]!r}")
            state = cls()
            state.next_id = cbor.field_int(m, 1, "next id", 1, PREKEY_ID_MAX + 1)
            state.current_signed = None if m[2] is None else cbor.field_int(m, 2, "spk", 1)
            state.current_last_resort = None if m[3] is None else cbor.field_int(m, 3, "lr", 1)
            for item in cbor.field_list(m, 4, "held", 1 << 20):
                row = cbor.expect_list(item, "held prekey", 5)
                kind_value, prekey_id, secret, created, superseded = row
                if (
                    type(kind_value) is not int
                    or kind_value not in (1, 2, 3, 4)
                    or type(prekey_id) is not int
                    or not isinstance(secret, bytes)
                    or type(created) is not int
                    or not (superseded is None or type(superseded) is int)
                ):
                    raise CorruptState("malformed held prekey")
                kind = PreKeyKind(kind_value)
                key: DHKeyPair | KEMKeyPair = (
                    KEMKeyPair(secret) if kind.is_kem else DHKeyPair(secret)
                )
                if any(prekey_id in held for held in state._held.values()):
                    raise CorruptState(f"prekey id {prekey_id} appears twice")
                state._held[kind][prekey_id] = _Held(key, created, superseded)
            for item in cbor.field_list(m, 5, "ledger", 1 << 20):
                spk, kem, keys = cbor.expect_list(item, "ledger row", 3)
                if type(spk) is not int or type(kem) is not int or not isinstance(keys, list):
                    raise CorruptState("malformed ledger row")
                state.seen_base_keys[(spk, kem)] = {k for k in keys if isinstance(k, bytes)}
            return state
        except CorruptState:
            raise
        except (E2EEError, ValueError, IndexError) as exc:
            raise CorruptState(f"prekey state does not decode: {exc}") from exc

    def __repr__(self) -> str:
        counts = ", ".join(f"{k.name.lower()}={len(v)}" for k, v in self._held.items())
        return f"OurPreKeys({counts}, next_id={self.next_id})"


def _dh(held: _Held) -> DHKeyPair:
    key = held.key
    if not isinstance(key, DHKeyPair):
        raise CorruptState("prekey of the wrong kind")
    return key


def _kem(held: _Held) -> KEMKeyPair:
    key = held.key
    if not isinstance(key, KEMKeyPair):
        raise CorruptState("prekey of the wrong kind")
    return key
