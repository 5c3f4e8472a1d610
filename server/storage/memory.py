"""In-memory storage (CONVENTIONS 4): the reference implementation of every store.

It keeps everything in dictionaries of one :class:`MemoryStorage` and is meant for
tests and for a relay run without persistence. Every method checks everything it
needs before it changes anything and never awaits in between, so on one event loop
each call is atomic (all or nothing) exactly like one SQL transaction.
"""

from __future__ import annotations

import hmac
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field

from .base import (
    IDEMPOTENCY_TTL_MS,
    MAX_BLOB_CHUNK,
    SHARE_PROOF_HASH_SIZE,
    Acceptance,
    AcceptOutcome,
    AccountExists,
    AccountRecord,
    BlobExists,
    BlobQuotaExceeded,
    BlobRecord,
    ClaimedBundle,
    DeviceIdReused,
    DeviceMismatch,
    DeviceRecord,
    IdempotencyConflict,
    LinkMailboxFull,
    MismatchedDevices,
    PreKeyIdReused,
    PreKeyStatus,
    QueuedMessage,
    QueueFull,
    ShareExists,
    ShareOpened,
    ShareOpenOutcome,
    ShareRecord,
    ShareWrongProof,
    StoredPreKey,
    UnknownAccount,
    UnknownBlob,
    UnknownDevice,
    VersionConflict,
)

__all__ = ["MemoryStorage"]

_DeviceKey = tuple[str, int]
_LINK_SLOTS = (0, 1)


def check_account_record(account: AccountRecord) -> None:
    """Refuse a record whose devices belong to another user or repeat an id.

    Raises:
        ValueError: the record is inconsistent (a caller bug: the relay builds it
            from a verified device list).
    """
    ids = [d.device_id for d in account.devices]
    if len(set(ids)) != len(ids):
        raise ValueError("device list record repeats a device id")
    if any(d.user_id != account.user_id for d in account.devices):
        raise ValueError("device record of another user in the account record")


def check_addressed(addressed: Sequence[tuple[str, Sequence[tuple[int, bytes]]]]) -> None:
    """Refuse a send that addresses a user or a device twice.

    Raises:
        ValueError: a repeated user or device (the frame decoder refuses these).
    """
    users = [u for u, _ in addressed]
    if len(set(users)) != len(users):
        raise ValueError("a user is addressed twice")
    for _, devices in addressed:
        ids = [d for d, _ in devices]
        if len(set(ids)) != len(ids):
            raise ValueError("a device is addressed twice")


def device_mismatch(
    addressed: Sequence[tuple[str, Sequence[tuple[int, bytes]]]],
    current: Mapping[str, set[int]],
    sender_user: str,
    sender_device: int,
) -> DeviceMismatch | None:
    """Compare each addressed user's device set with ``current`` (their current
    devices; the sending device itself is never expected), in the order addressed.

    Returns:
        The mismatch to answer with, or ``None`` when every set is exact.

    Raises:
        UnknownAccount: an addressed user is not in ``current`` (the first in order).
    """
    mismatched: list[MismatchedDevices] = []
    for user_id, devices in addressed:
        if user_id not in current:
            raise UnknownAccount(user_id)
        expected = current[user_id]
        if user_id == sender_user:
            expected = expected - {sender_device}
        given = {d for d, _ in devices}
        if given != expected:
            mismatched.append(
                MismatchedDevices(
                    user_id, tuple(sorted(expected - given)), tuple(sorted(given - expected))
                )
            )
    return DeviceMismatch(tuple(mismatched)) if mismatched else None


def check_link_slot(slot: int) -> None:
    """Raises: ValueError: ``slot`` is not 0 or 1."""
    if slot not in _LINK_SLOTS:
        raise ValueError(f"link slot must be 0 or 1, not {slot}")


@dataclass(slots=True)
class _Device:
    record: DeviceRecord
    next_seq: int = 1
    queue: dict[int, tuple[QueuedMessage, int]] = field(default_factory=dict)
    """seq -> (message, expires_at_ms), insertion (= sequence) order."""
    signed_prekey: StoredPreKey | None = None
    last_resort: StoredPreKey | None = None
    one_time: dict[int, bytes] = field(default_factory=dict)
    kem: dict[int, bytes] = field(default_factory=dict)
    used_prekey_ids: set[int] = field(default_factory=set)


@dataclass(slots=True)
class _Account:
    record: AccountRecord
    removed_ids: set[int] = field(default_factory=set)


@dataclass(slots=True)
class _Blob:
    owner: _DeviceKey
    created_at_ms: int
    expires_at_ms: int
    chunks: list[bytes] = field(default_factory=list)
    size: int = 0
    complete: bool = False


@dataclass(slots=True)
class _Share:
    blob_id: bytes
    blob: _Blob
    """The blob object itself: the share is live only while ``blobs[blob_id]`` is this
    object (a deleted or purged blob takes its share with it, as the SQL cascade)."""
    proof_hash: bytes
    max_views: int | None
    views: int = 0
    wrong_proofs: int = 0


@dataclass(slots=True)
class _Link:
    blob: bytes | None
    expires_at_ms: int


class _State:
    """Everything one :class:`MemoryStorage` holds."""

    def __init__(self) -> None:
        self.accounts: dict[str, _Account] = {}
        self.devices: dict[_DeviceKey, _Device] = {}
        self.idempotency: dict[tuple[str, int, bytes], tuple[bytes, int]] = {}
        """(sender user, sender device, client id) -> (digest, accepted_at_ms)."""
        self.blobs: dict[bytes, _Blob] = {}
        self.links: dict[tuple[bytes, int], _Link] = {}
        self.nonces: dict[bytes, tuple[str, int]] = {}
        self.shares: dict[bytes, _Share] = {}


class MemoryAccountStore:
    """:class:`~server.storage.base.AccountStore` in memory."""

    def __init__(self, state: _State) -> None:
        self._s = state

    async def create_account(self, account: AccountRecord, now_ms: int) -> None:
        """See :meth:`server.storage.base.AccountStore.create_account`.

        Raises:
            AccountExists: the user id is taken.
            ValueError: an inconsistent record.
        """
        check_account_record(account)
        if account.user_id in self._s.accounts:
            raise AccountExists(account.user_id)
        self._s.accounts[account.user_id] = _Account(account)
        for dev in account.devices:
            self._s.devices[(account.user_id, dev.device_id)] = _Device(dev)

    async def get_account(self, user_id: str) -> AccountRecord | None:
        """See :meth:`server.storage.base.AccountStore.get_account`."""
        acc = self._s.accounts.get(user_id)
        return None if acc is None else acc.record

    async def get_device(self, user_id: str, device_id: int) -> DeviceRecord | None:
        """See :meth:`server.storage.base.AccountStore.get_device`."""
        dev = self._s.devices.get((user_id, device_id))
        return None if dev is None else dev.record

    async def replace_device_list(
        self, account: AccountRecord, expected_version: int, now_ms: int
    ) -> tuple[int, ...]:
        """See :meth:`server.storage.base.AccountStore.replace_device_list`.

        Raises:
            UnknownAccount: no such account.
            VersionConflict: the stored version is not ``expected_version``.
            DeviceIdReused: the new list re-adds a removed device id.
            ValueError: an inconsistent record.
        """
        check_account_record(account)
        acc = self._s.accounts.get(account.user_id)
        if acc is None:
            raise UnknownAccount(account.user_id)
        if acc.record.list_version != expected_version:
            raise VersionConflict(account.user_id)
        new_ids = {d.device_id for d in account.devices}
        for dev in account.devices:
            if dev.device_id in acc.removed_ids:
                raise DeviceIdReused(dev.device_id)
        old_ids = [d.device_id for d in acc.record.devices]
        removed = tuple(sorted(i for i in old_ids if i not in new_ids))
        user = account.user_id
        for device_id in removed:
            del self._s.devices[(user, device_id)]
            for blob_id in [
                b
                for b, blob in self._s.blobs.items()
                if blob.owner == (user, device_id) and not blob.complete
            ]:
                del self._s.blobs[blob_id]
        acc.removed_ids.update(removed)
        for dev in account.devices:
            existing = self._s.devices.get((user, dev.device_id))
            if existing is None:
                self._s.devices[(user, dev.device_id)] = _Device(dev)
            else:
                existing.record = dev
        acc.record = account
        return removed


class MemoryPreKeyStore:
    """:class:`~server.storage.base.PreKeyStore` in memory."""

    def __init__(self, state: _State) -> None:
        self._s = state

    async def upload(
        self,
        user_id: str,
        device_id: int,
        signed_prekey: StoredPreKey | None,
        one_time: Sequence[StoredPreKey],
        kem: Sequence[StoredPreKey],
        last_resort: StoredPreKey | None,
    ) -> None:
        """See :meth:`server.storage.base.PreKeyStore.upload`.

        Raises:
            UnknownDevice: the device is not in the account's current list.
            PreKeyIdReused: an id this device used before (or twice in this upload).
        """
        dev = self._s.devices.get((user_id, device_id))
        if dev is None:
            raise UnknownDevice(user_id, device_id)
        everything = [*one_time, *kem]
        for single in (signed_prekey, last_resort):
            if single is not None:
                everything.append(single)
        seen: set[int] = set()
        for key in everything:
            if key.prekey_id in dev.used_prekey_ids or key.prekey_id in seen:
                raise PreKeyIdReused(key.prekey_id)
            seen.add(key.prekey_id)
        dev.used_prekey_ids.update(seen)
        for key in one_time:
            dev.one_time[key.prekey_id] = key.encoded
        for key in kem:
            dev.kem[key.prekey_id] = key.encoded
        if signed_prekey is not None:
            dev.signed_prekey = signed_prekey
        if last_resort is not None:
            dev.last_resort = last_resort

    async def claim(self, user_id: str, device_id: int) -> ClaimedBundle | None:
        """See :meth:`server.storage.base.PreKeyStore.claim` (lowest ids first)."""
        dev = self._s.devices.get((user_id, device_id))
        if dev is None or dev.signed_prekey is None:
            return None
        one_time = dev.one_time.pop(min(dev.one_time)) if dev.one_time else None
        kem: bytes | None
        if dev.kem:
            kem, last_resort = dev.kem.pop(min(dev.kem)), False
        elif dev.last_resort is not None:
            kem, last_resort = dev.last_resort.encoded, True
        else:
            kem, last_resort = None, False
        return ClaimedBundle(
            signed_prekey=dev.signed_prekey.encoded,
            one_time=one_time,
            kem=kem,
            kem_is_last_resort=last_resort,
            one_time_left=len(dev.one_time),
            kem_left=len(dev.kem),
        )

    async def status(self, user_id: str, device_id: int) -> PreKeyStatus:
        """See :meth:`server.storage.base.PreKeyStore.status`."""
        dev = self._s.devices.get((user_id, device_id))
        if dev is None:
            return PreKeyStatus(None, None, 0, 0)
        return PreKeyStatus(
            signed_prekey=None if dev.signed_prekey is None else dev.signed_prekey.encoded,
            last_resort=None if dev.last_resort is None else dev.last_resort.encoded,
            one_time_left=len(dev.one_time),
            kem_left=len(dev.kem),
        )


class MemoryMessageStore:
    """:class:`~server.storage.base.MessageStore` in memory."""

    def __init__(self, state: _State) -> None:
        self._s = state

    @property
    def accepts_in_order(self) -> bool:
        """``True``: every call runs to completion before the next starts."""
        return True

    async def accept(
        self,
        sender_user: str,
        sender_device: int,
        client_msg_id: bytes,
        digest: bytes,
        addressed: Sequence[tuple[str, Sequence[tuple[int, bytes]]]],
        now_ms: int,
        expires_at_ms: int,
        queue_quota: int,
    ) -> AcceptOutcome:
        """See :meth:`server.storage.base.MessageStore.accept`.

        Raises:
            IdempotencyConflict: the id was accepted before with another digest.
            UnknownAccount: an addressed user does not exist.
            QueueFull: an addressed device's queue is at ``queue_quota``.
            ValueError: a user or device addressed twice.
        """
        check_addressed(addressed)
        key = (sender_user, sender_device, client_msg_id)
        previous = self._s.idempotency.get(key)
        if previous is not None:
            if previous[0] != digest:
                raise IdempotencyConflict(client_msg_id.hex())
            return Acceptance(accepted_at_ms=previous[1], deliveries=(), duplicate=True)
        current = {
            user_id: {d.device_id for d in acc.record.devices}
            for user_id, _ in addressed
            if (acc := self._s.accounts.get(user_id)) is not None
        }
        mismatch = device_mismatch(addressed, current, sender_user, sender_device)
        if mismatch is not None:
            return mismatch
        targets = [
            (self._s.devices[(user_id, d)], ct)
            for user_id, devices in addressed
            for d, ct in devices
        ]
        for dev, _ in targets:
            if len(dev.queue) >= queue_quota:
                raise QueueFull(dev.record.user_id, dev.record.device_id)
        deliveries: list[tuple[str, int, int]] = []
        for dev, ciphertext in targets:
            seq = dev.next_seq
            dev.next_seq += 1
            message = QueuedMessage(seq, sender_user, sender_device, now_ms, ciphertext)
            dev.queue[seq] = (message, expires_at_ms)
            deliveries.append((dev.record.user_id, dev.record.device_id, seq))
        self._s.idempotency[key] = (digest, now_ms)
        return Acceptance(accepted_at_ms=now_ms, deliveries=tuple(deliveries), duplicate=False)

    async def fetch(
        self, user_id: str, device_id: int, after_seq: int, limit: int, now_ms: int
    ) -> list[QueuedMessage]:
        """See :meth:`server.storage.base.MessageStore.fetch`."""
        dev = self._s.devices.get((user_id, device_id))
        if dev is None or limit <= 0:
            return []
        out: list[QueuedMessage] = []
        for seq, (message, expires_at_ms) in dev.queue.items():
            if seq > after_seq and expires_at_ms > now_ms:
                out.append(message)
                if len(out) == limit:
                    break
        return out

    async def ack(self, user_id: str, device_id: int, seqs: Sequence[int]) -> int:
        """See :meth:`server.storage.base.MessageStore.ack`."""
        dev = self._s.devices.get((user_id, device_id))
        if dev is None:
            return 0
        return sum(dev.queue.pop(seq, None) is not None for seq in set(seqs))

    async def depth(self, user_id: str, device_id: int) -> int:
        """See :meth:`server.storage.base.MessageStore.depth`."""
        dev = self._s.devices.get((user_id, device_id))
        return 0 if dev is None else len(dev.queue)

    async def purge_expired(self, now_ms: int, limit: int) -> int:
        """See :meth:`server.storage.base.MessageStore.purge_expired` (soonest expiry
        first, like the SQL implementation)."""
        if limit <= 0:
            return 0
        expired = sorted(
            (exp, dev.record.user_id, dev.record.device_id, seq)
            for dev in self._s.devices.values()
            for seq, (_, exp) in dev.queue.items()
            if exp <= now_ms
        )[:limit]
        for _, user_id, device_id, seq in expired:
            del self._s.devices[(user_id, device_id)].queue[seq]
        cutoff = now_ms - IDEMPOTENCY_TTL_MS
        old = sorted((at, key) for key, (_, at) in self._s.idempotency.items() if at <= cutoff)[
            : limit - len(expired)
        ]
        for _, key in old:
            del self._s.idempotency[key]
        return len(expired) + len(old)


class MemoryBlobStore:
    """:class:`~server.storage.base.BlobStore` in memory."""

    def __init__(self, state: _State) -> None:
        self._s = state

    def _held(self, owner: _DeviceKey) -> int:
        return sum(b.size for b in self._s.blobs.values() if b.owner == owner)

    async def begin(
        self,
        blob_id: bytes,
        owner_user: str,
        owner_device: int,
        now_ms: int,
        expires_at_ms: int,
        quota_bytes: int,
    ) -> None:
        """See :meth:`server.storage.base.BlobStore.begin`.

        Raises:
            BlobExists: the id is taken.
            BlobQuotaExceeded: the owner already holds ``quota_bytes`` or more.
        """
        if blob_id in self._s.blobs:
            raise BlobExists(blob_id.hex())
        owner = (owner_user, owner_device)
        if self._held(owner) >= quota_bytes:
            raise BlobQuotaExceeded(f"{owner_user}.{owner_device}")
        self._s.blobs[blob_id] = _Blob(owner, now_ms, expires_at_ms)

    async def append(self, blob_id: bytes, index: int, chunk: bytes, quota_bytes: int) -> None:
        """See :meth:`server.storage.base.BlobStore.append`.

        Raises:
            UnknownBlob: no upload in progress with this id.
            BlobQuotaExceeded: the owner would exceed ``quota_bytes``.
            ValueError: ``index`` is not the next chunk's or the chunk is over
                :data:`~server.storage.base.MAX_BLOB_CHUNK`.
        """
        blob = self._s.blobs.get(blob_id)
        if blob is None or blob.complete:
            raise UnknownBlob(blob_id.hex())
        check_chunk(index, len(blob.chunks), chunk)
        if self._held(blob.owner) + len(chunk) > quota_bytes:
            raise BlobQuotaExceeded(f"{blob.owner[0]}.{blob.owner[1]}")
        blob.chunks.append(bytes(chunk))
        blob.size += len(chunk)

    async def complete(self, blob_id: bytes) -> BlobRecord:
        """See :meth:`server.storage.base.BlobStore.complete`.

        Raises:
            UnknownBlob: no upload in progress with this id.
        """
        blob = self._s.blobs.get(blob_id)
        if blob is None or blob.complete:
            raise UnknownBlob(blob_id.hex())
        blob.complete = True
        return _blob_record(blob_id, blob)

    async def get(self, blob_id: bytes, now_ms: int) -> BlobRecord | None:
        """See :meth:`server.storage.base.BlobStore.get`."""
        blob = self._s.blobs.get(blob_id)
        if blob is None or not blob.complete or blob.expires_at_ms <= now_ms:
            return None
        return _blob_record(blob_id, blob)

    async def chunks(self, blob_id: bytes) -> AsyncIterator[bytes]:
        """See :meth:`server.storage.base.BlobStore.chunks`.

        Raises:
            UnknownBlob: no complete blob with this id, or it went mid-stream.
        """
        blob = self._s.blobs.get(blob_id)
        if blob is None or not blob.complete:
            raise UnknownBlob(blob_id.hex())
        for index in range(len(blob.chunks)):
            if self._s.blobs.get(blob_id) is not blob:
                raise UnknownBlob(blob_id.hex())
            yield blob.chunks[index]

    async def delete(self, blob_id: bytes) -> bool:
        """See :meth:`server.storage.base.BlobStore.delete`."""
        return self._s.blobs.pop(blob_id, None) is not None

    async def purge_expired(self, now_ms: int, limit: int) -> int:
        """See :meth:`server.storage.base.BlobStore.purge_expired`."""
        expired = sorted(
            (blob.expires_at_ms, b)
            for b, blob in self._s.blobs.items()
            if blob.expires_at_ms <= now_ms
        )[: max(limit, 0)]
        for _, blob_id in expired:
            del self._s.blobs[blob_id]
        return len(expired)


def check_chunk(index: int, expected: int, chunk: bytes) -> None:
    """Raises: ValueError: ``index`` is not ``expected`` or ``chunk`` is too big."""
    if index != expected:
        raise ValueError(f"blob chunk {index} out of order (expected {expected})")
    if len(chunk) > MAX_BLOB_CHUNK:
        raise ValueError(f"blob chunk of {len(chunk)} bytes exceeds {MAX_BLOB_CHUNK}")


def check_proof_hash(proof_hash: bytes) -> None:
    """Raises: ValueError: ``proof_hash`` is not a SHA-256 (32 bytes)."""
    if len(proof_hash) != SHARE_PROOF_HASH_SIZE:
        raise ValueError(f"a share proof hash is {SHARE_PROOF_HASH_SIZE} bytes")


def check_new_share(proof_hash: bytes, data: bytes, max_views: int | None) -> None:
    """Raises: ValueError: a malformed proof hash, empty ``data`` or ``max_views`` < 1."""
    check_proof_hash(proof_hash)
    if not data:
        raise ValueError("a share holds at least one byte")
    if max_views is not None and max_views < 1:
        raise ValueError("max_views must be at least 1 (None: no limit)")


def check_max_wrong_proofs(max_wrong_proofs: int) -> None:
    """Raises: ValueError: ``max_wrong_proofs`` < 1."""
    if max_wrong_proofs < 1:
        raise ValueError("max_wrong_proofs must be at least 1")


def share_chunks(data: bytes) -> list[bytes]:
    """``data`` cut into blob chunks of at most :data:`~server.storage.base.MAX_BLOB_CHUNK`."""
    return [data[i : i + MAX_BLOB_CHUNK] for i in range(0, len(data), MAX_BLOB_CHUNK)]


def _blob_record(blob_id: bytes, blob: _Blob) -> BlobRecord:
    return BlobRecord(
        blob_id=blob_id,
        owner_user=blob.owner[0],
        owner_device=blob.owner[1],
        size=blob.size,
        chunks=len(blob.chunks),
        created_at_ms=blob.created_at_ms,
        expires_at_ms=blob.expires_at_ms,
    )


class MemoryLinkStore:
    """:class:`~server.storage.base.LinkStore` in memory."""

    def __init__(self, state: _State) -> None:
        self._s = state

    async def put(
        self, link_id: bytes, slot: int, blob: bytes, now_ms: int, expires_at_ms: int
    ) -> None:
        """See :meth:`server.storage.base.LinkStore.put`.

        Raises:
            LinkMailboxFull: the slot was written before (and has not expired).
            ValueError: ``slot`` is not 0 or 1.
        """
        check_link_slot(slot)
        existing = self._s.links.get((link_id, slot))
        if existing is not None and existing.expires_at_ms > now_ms:
            raise LinkMailboxFull(link_id.hex())
        self._s.links[(link_id, slot)] = _Link(bytes(blob), expires_at_ms)

    async def take(self, link_id: bytes, slot: int, now_ms: int) -> bytes | None:
        """See :meth:`server.storage.base.LinkStore.take`.

        Raises:
            ValueError: ``slot`` is not 0 or 1.
        """
        check_link_slot(slot)
        entry = self._s.links.get((link_id, slot))
        if entry is None or entry.blob is None or entry.expires_at_ms <= now_ms:
            return None
        blob, entry.blob = entry.blob, None
        return blob

    async def purge_expired(self, now_ms: int, limit: int) -> int:
        """See :meth:`server.storage.base.LinkStore.purge_expired`."""
        expired = sorted(
            (e.expires_at_ms, k) for k, e in self._s.links.items() if e.expires_at_ms <= now_ms
        )[: max(limit, 0)]
        for _, key in expired:
            del self._s.links[key]
        return len(expired)


class MemoryShareStore:
    """:class:`~server.storage.base.ShareStore` in memory, over the blobs of the same
    state."""

    def __init__(self, state: _State) -> None:
        self._s = state

    def _live(self, share_id: bytes) -> _Share | None:
        """The share, if its blob is still there (else it is forgotten: the cascade)."""
        share = self._s.shares.get(share_id)
        if share is not None and self._s.blobs.get(share.blob_id) is not share.blob:
            del self._s.shares[share_id]
            return None
        return share

    def _drop(self, share_id: bytes) -> None:
        share = self._s.shares.pop(share_id)
        if self._s.blobs.get(share.blob_id) is share.blob:
            del self._s.blobs[share.blob_id]

    async def create(
        self,
        share_id: bytes,
        blob_id: bytes,
        owner_user: str,
        owner_device: int,
        proof_hash: bytes,
        data: bytes,
        now_ms: int,
        expires_at_ms: int,
        max_views: int | None,
        quota_bytes: int,
    ) -> ShareRecord:
        """See :meth:`server.storage.base.ShareStore.create`.

        Raises:
            ShareExists: an unexpired share with this id exists.
            BlobExists: the blob id is taken.
            BlobQuotaExceeded: the owner's blobs would exceed ``quota_bytes``.
            ValueError: a malformed proof hash, empty ``data`` or ``max_views`` < 1.
        """
        check_new_share(proof_hash, data, max_views)
        existing = self._live(share_id)
        if existing is not None and existing.blob.expires_at_ms > now_ms:
            raise ShareExists(share_id.hex())
        if blob_id in self._s.blobs:
            raise BlobExists(blob_id.hex())
        owner = (owner_user, owner_device)
        held = sum(b.size for b in self._s.blobs.values() if b.owner == owner)
        if existing is not None and existing.blob.owner == owner:
            held -= existing.blob.size  # replaced below
        if held + len(data) > quota_bytes:
            raise BlobQuotaExceeded(f"{owner_user}.{owner_device}")
        if existing is not None:
            self._drop(share_id)
        blob = _Blob(owner, now_ms, expires_at_ms, share_chunks(bytes(data)), len(data), True)
        self._s.blobs[blob_id] = blob
        share = _Share(blob_id, blob, bytes(proof_hash), max_views)
        self._s.shares[share_id] = share
        return _share_record(share_id, share)

    async def get(self, share_id: bytes, now_ms: int) -> ShareRecord | None:
        """See :meth:`server.storage.base.ShareStore.get`."""
        share = self._live(share_id)
        if share is None or share.blob.expires_at_ms <= now_ms:
            return None
        return _share_record(share_id, share)

    async def open(
        self, share_id: bytes, proof_hash: bytes, now_ms: int, max_wrong_proofs: int
    ) -> ShareOpenOutcome:
        """See :meth:`server.storage.base.ShareStore.open`.

        Raises:
            ValueError: a malformed proof hash or ``max_wrong_proofs`` < 1.
        """
        check_proof_hash(proof_hash)
        check_max_wrong_proofs(max_wrong_proofs)
        share = self._live(share_id)
        if share is None or share.blob.expires_at_ms <= now_ms:
            return None
        if share.max_views is not None and share.views >= share.max_views:
            return None
        if not hmac.compare_digest(share.proof_hash, proof_hash):
            share.wrong_proofs += 1
            burned = share.wrong_proofs >= max_wrong_proofs
            if burned:
                self._drop(share_id)
            return ShareWrongProof(share.wrong_proofs, burned)
        share.views += 1
        used_up = share.max_views is not None and share.views >= share.max_views
        record = _share_record(share_id, share)
        data = b"".join(share.blob.chunks)
        if used_up:
            self._drop(share_id)
        return ShareOpened(record, data, used_up)

    async def delete(
        self, share_id: bytes, owner_user: str, owner_device: int, now_ms: int
    ) -> bool:
        """See :meth:`server.storage.base.ShareStore.delete`."""
        share = self._live(share_id)
        if share is None or share.blob.owner != (owner_user, owner_device):
            return False
        self._drop(share_id)
        return share.blob.expires_at_ms > now_ms

    async def purge_expired(self, now_ms: int, limit: int) -> int:
        """See :meth:`server.storage.base.ShareStore.purge_expired` (shares whose blob
        went already are forgotten on the way, uncounted)."""
        for share_id in list(self._s.shares):
            self._live(share_id)
        expired = sorted(
            (share.blob.expires_at_ms, s)
            for s, share in self._s.shares.items()
            if share.blob.expires_at_ms <= now_ms
        )[: max(limit, 0)]
        for _, share_id in expired:
            self._drop(share_id)
        return len(expired)


def _share_record(share_id: bytes, share: _Share) -> ShareRecord:
    blob = share.blob
    return ShareRecord(
        share_id=share_id,
        blob_id=share.blob_id,
        owner_user=blob.owner[0],
        owner_device=blob.owner[1],
        size=blob.size,
        created_at_ms=blob.created_at_ms,
        expires_at_ms=blob.expires_at_ms,
        max_views=share.max_views,
        views=share.views,
        wrong_proofs=share.wrong_proofs,
    )


class MemoryNonceStore:
    """:class:`~server.storage.base.NonceStore` in memory."""

    def __init__(self, state: _State) -> None:
        self._s = state

    async def issue(self, nonce: bytes, purpose: str, expires_at_ms: int) -> None:
        """See :meth:`server.storage.base.NonceStore.issue`.

        Raises:
            ValueError: the nonce was issued before (nonces are random; a repeat is a
                caller bug).
        """
        if nonce in self._s.nonces:
            raise ValueError("nonce issued twice")
        self._s.nonces[bytes(nonce)] = (purpose, expires_at_ms)

    async def consume(self, nonce: bytes, purpose: str, now_ms: int) -> bool:
        """See :meth:`server.storage.base.NonceStore.consume`."""
        entry = self._s.nonces.pop(nonce, None)
        return entry is not None and entry[0] == purpose and entry[1] > now_ms

    async def purge_expired(self, now_ms: int, limit: int) -> int:
        """See :meth:`server.storage.base.NonceStore.purge_expired`."""
        expired = sorted((exp, n) for n, (_, exp) in self._s.nonces.items() if exp <= now_ms)[
            : max(limit, 0)
        ]
        for _, nonce in expired:
            del self._s.nonces[nonce]
        return len(expired)


class MemoryStorage:
    """:class:`~server.storage.base.Storage` in memory (nothing survives the process)."""

    def __init__(self) -> None:
        state = _State()
        self._accounts = MemoryAccountStore(state)
        self._prekeys = MemoryPreKeyStore(state)
        self._messages = MemoryMessageStore(state)
        self._blobs = MemoryBlobStore(state)
        self._links = MemoryLinkStore(state)
        self._nonces = MemoryNonceStore(state)
        self._shares = MemoryShareStore(state)
        self._closed = False

    def __repr__(self) -> str:
        return "MemoryStorage()"

    @property
    def accounts(self) -> MemoryAccountStore:
        """Accounts and device lists."""
        return self._accounts

    @property
    def prekeys(self) -> MemoryPreKeyStore:
        """The key directory."""
        return self._prekeys

    @property
    def messages(self) -> MemoryMessageStore:
        """Queues and idempotency records."""
        return self._messages

    @property
    def blobs(self) -> MemoryBlobStore:
        """Blobs."""
        return self._blobs

    @property
    def links(self) -> MemoryLinkStore:
        """The link mailbox."""
        return self._links

    @property
    def nonces(self) -> MemoryNonceStore:
        """Single-use nonces."""
        return self._nonces

    @property
    def shares(self) -> MemoryShareStore:
        """Share links."""
        return self._shares

    async def ping(self) -> None:
        """Always answers (there is no database to lose)."""

    async def aclose(self) -> None:
        """Nothing to release; the data stays readable until the object goes."""
        self._closed = True
