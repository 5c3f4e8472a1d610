"""The relay's storage interfaces (CONVENTIONS 4): records, errors and protocols.

Every store has an in-memory implementation (:mod:`server.storage.memory`) and a
SQL one (:mod:`server.storage.sql`, SQLite or PostgreSQL), and all of them pass one
contract suite (``tests/server/storage``). The relay holds only public keys, signed
device lists and ciphertext, so nothing here is secret; it is still never logged.

Conventions of every method:

* times are ``now_ms`` integers passed in (no clocks inside a store);
* a method either completes entirely or changes nothing (one transaction), and
  returns only after its change is durable (committed with the shipped settings);
* a storage failure (database down, serialization failure, timeout) raises
  :class:`StorageUnavailable` and changes nothing;
* refusals are the typed :class:`StorageError` subclasses below, never ``None``;
* anything with an ``expires_at_ms`` has expired once ``expires_at_ms <= now_ms``;
* inputs the relay's decoders already refuse (a user or device addressed twice, a
  link slot other than 0 or 1, an out-of-order blob chunk, a chunk over
  :data:`MAX_BLOB_CHUNK`, an inconsistent :class:`AccountRecord`) raise
  ``ValueError``: they are caller bugs, not refusals.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

__all__ = [
    "IDEMPOTENCY_TTL_MS",
    "MAX_BLOB_CHUNK",
    "SHARE_PROOF_HASH_SIZE",
    "AcceptOutcome",
    "Acceptance",
    "AccountExists",
    "AccountRecord",
    "AccountStore",
    "BlobExists",
    "BlobQuotaExceeded",
    "BlobRecord",
    "BlobStore",
    "ClaimedBundle",
    "DeviceIdReused",
    "DeviceMismatch",
    "DeviceRecord",
    "IdempotencyConflict",
    "LinkMailboxFull",
    "LinkStore",
    "MessageStore",
    "MismatchedDevices",
    "NonceStore",
    "PreKeyIdReused",
    "PreKeyStatus",
    "PreKeyStore",
    "QueueFull",
    "QueuedMessage",
    "SchemaOutdated",
    "SchemaTooNew",
    "ShareExists",
    "ShareOpenOutcome",
    "ShareOpened",
    "ShareRecord",
    "ShareStore",
    "ShareWrongProof",
    "Storage",
    "StorageError",
    "StorageUnavailable",
    "StoredPreKey",
    "UnknownAccount",
    "UnknownBlob",
    "UnknownDevice",
    "VersionConflict",
]


IDEMPOTENCY_TTL_MS = 7 * 24 * 3600 * 1000
"""How long an idempotency record of a send is kept (DESIGN 5: 7 days): a client retries
a send well within this, and the table stays bounded."""

MAX_BLOB_CHUNK = 1 << 20
"""Largest blob chunk one row holds (1 MiB): a blob is streamed row by row, so neither
database ever materialises a whole blob in one value."""

SHARE_PROOF_HASH_SIZE = 32
"""A share link's stored proof hash: SHA-256 of the 32-byte download proof (DESIGN 4.7)."""


# --- errors ----------------------------------------------------------------------------


class StorageError(Exception):
    """Root of every storage refusal or failure."""


class StorageUnavailable(StorageError):
    """The database could not complete the operation; nothing was changed. Retryable."""


class SchemaTooNew(StorageError):
    """The database schema is newer than this relay knows; refuse to start."""

    def __init__(self, found: str, known: str) -> None:
        super().__init__(f"database schema {found!r} is newer than this relay's {known!r}")
        self.found = found
        self.known = known


class SchemaOutdated(StorageError):
    """The database has no schema yet, or an older one: run ``e2ee db upgrade``."""

    def __init__(self, found: str | None, known: str) -> None:
        super().__init__(
            f"database schema {found!r} is older than this relay's {known!r}: run `e2ee db upgrade`"
        )
        self.found = found
        self.known = known


class AccountExists(StorageError):
    """The user id is taken."""


class UnknownAccount(StorageError):
    """No account with this user id."""

    def __init__(self, user_id: str) -> None:
        super().__init__(f"unknown user {user_id!r}")
        self.user_id = user_id


class UnknownDevice(StorageError):
    """No such device in the account's accepted device list."""

    def __init__(self, user_id: str, device_id: int) -> None:
        super().__init__(f"unknown device {user_id}.{device_id}")
        self.user_id = user_id
        self.device_id = device_id


class VersionConflict(StorageError):
    """The account's device list is not at the version the caller expected (another
    writer published first); re-read and check again."""


class DeviceIdReused(StorageError):
    """A device id that was removed from the account is offered again."""

    def __init__(self, device_id: int) -> None:
        super().__init__(f"device id {device_id} was used before in this account")
        self.device_id = device_id


class PreKeyIdReused(StorageError):
    """The device has used this prekey id before (for any kind)."""

    def __init__(self, prekey_id: int) -> None:
        super().__init__(f"prekey id {prekey_id} was used before by this device")
        self.prekey_id = prekey_id


class IdempotencyConflict(StorageError):
    """The sender reused a client message id for different content."""


class QueueFull(StorageError):
    """A recipient device's queue is at its quota; nothing was stored."""

    def __init__(self, user_id: str, device_id: int) -> None:
        super().__init__(f"queue of {user_id}.{device_id} is full")
        self.user_id = user_id
        self.device_id = device_id


class BlobExists(StorageError):
    """A blob with this id exists already."""


class UnknownBlob(StorageError):
    """No complete, unexpired blob with this id."""


class BlobQuotaExceeded(StorageError):
    """The owner's blob byte quota would be exceeded."""


class LinkMailboxFull(StorageError):
    """The link mailbox slot holds a blob already (each slot is written once)."""


class ShareExists(StorageError):
    """An unexpired share link with this id exists already (ids are chosen by clients)."""


# --- records ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DeviceRecord:
    """One device of an accepted device list (public keys only)."""

    user_id: str
    device_id: int
    signing_pk: bytes
    x25519_ik: bytes
    pq: bool


@dataclass(frozen=True, slots=True)
class AccountRecord:
    """An account: its master key and its accepted signed device list."""

    user_id: str
    master_pk: bytes
    list_version: int
    signed_list: bytes
    """The canonical bytes of the signed device list, served as received."""
    list_digest: bytes
    """SHA-256 of ``signed_list`` (the next version's ``prev_hash``)."""
    devices: tuple[DeviceRecord, ...]


@dataclass(frozen=True, slots=True)
class StoredPreKey:
    """A signed public prekey as uploaded: its id and its canonical CBOR encoding
    (:meth:`e2ee.prekeys.SignedPublicPreKey.to_value`, encoded)."""

    prekey_id: int
    encoded: bytes


@dataclass(frozen=True, slots=True)
class ClaimedBundle:
    """What one claim took: the signed prekey, at most one one-time EC prekey and one
    KEM prekey (one-time, or the last-resort one when none is left), and how many
    one-time prekeys of each kind remain after the claim."""

    signed_prekey: bytes
    one_time: bytes | None
    kem: bytes | None
    kem_is_last_resort: bool
    one_time_left: int
    kem_left: int


@dataclass(frozen=True, slots=True)
class PreKeyStatus:
    """What the relay holds for a device (for the key-consistency check)."""

    signed_prekey: bytes | None
    last_resort: bytes | None
    one_time_left: int
    kem_left: int


@dataclass(frozen=True, slots=True)
class QueuedMessage:
    """One queued ciphertext for one device."""

    seq: int
    sender_user: str
    sender_device: int
    accepted_at_ms: int
    ciphertext: bytes


@dataclass(frozen=True, slots=True)
class Acceptance:
    """A send stored for every addressed device.

    ``deliveries`` lists ``(user_id, device_id, seq)`` of the queue entries this call
    created (empty when ``duplicate``: the same id and digest were accepted before,
    and ``accepted_at_ms`` is that first acceptance's)."""

    accepted_at_ms: int
    deliveries: tuple[tuple[str, int, int], ...]
    duplicate: bool


@dataclass(frozen=True, slots=True)
class MismatchedDevices:
    """One addressed user whose addressed device set is not exactly their current one
    (the sending device itself never counts as missing)."""

    user_id: str
    missing: tuple[int, ...]
    extra: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class DeviceMismatch:
    """Nothing was stored: these users' device sets did not match."""

    users: tuple[MismatchedDevices, ...]


AcceptOutcome = Acceptance | DeviceMismatch


@dataclass(frozen=True, slots=True)
class BlobRecord:
    """A complete blob's metadata."""

    blob_id: bytes
    owner_user: str
    owner_device: int
    size: int
    chunks: int
    created_at_ms: int
    expires_at_ms: int


@dataclass(frozen=True, slots=True)
class ShareRecord:
    """A share link's metadata (its ciphertext lives in the blob ``blob_id``)."""

    share_id: bytes
    blob_id: bytes
    """The blob holding the ciphertext: chosen by the relay and never shown to clients,
    so the bytes are reachable only through the share's proof check."""
    owner_user: str
    owner_device: int
    size: int
    created_at_ms: int
    expires_at_ms: int
    max_views: int | None
    """How many successful opens the share allows (``None``: no limit)."""
    views: int
    """Successful opens so far."""
    wrong_proofs: int
    """Opens refused for a wrong proof so far."""


@dataclass(frozen=True, slots=True)
class ShareOpened:
    """A matching proof: the view was counted and the ciphertext read in the same
    transaction."""

    record: ShareRecord
    """The share after this view (``views`` includes it)."""
    data: bytes = field(repr=False)
    """The ciphertext."""
    deleted: bool
    """This view reached ``max_views``: the share and its blob are gone."""


@dataclass(frozen=True, slots=True)
class ShareWrongProof:
    """A proof that does not match: counted."""

    wrong_proofs: int
    """Wrong proofs so far, this one included."""
    deleted: bool
    """This one reached the limit: the share and its blob are gone."""


ShareOpenOutcome = ShareOpened | ShareWrongProof | None
"""What :meth:`ShareStore.open` did (``None``: no such share: unknown, expired,
deleted or used up)."""


# --- protocols -------------------------------------------------------------------------


class AccountStore(Protocol):
    """Accounts and their accepted device lists."""

    async def create_account(self, account: AccountRecord, now_ms: int) -> None:
        """Create an account with its first device list (version as given).

        Raises:
            AccountExists: the user id is taken.
        """
        ...

    async def get_account(self, user_id: str) -> AccountRecord | None:
        """The account and its current device list, or ``None``."""
        ...

    async def get_device(self, user_id: str, device_id: int) -> DeviceRecord | None:
        """A device of the account's current list, or ``None`` (unknown or removed)."""
        ...

    async def replace_device_list(
        self, account: AccountRecord, expected_version: int, now_ms: int
    ) -> tuple[int, ...]:
        """Replace the account's list with ``account``'s (whose ``list_version`` the
        caller has checked is ``expected_version + 1`` and chains), if the stored
        version is still ``expected_version``. Every removed device's queue, prekeys
        and blobs-in-progress are deleted in the same transaction; removed ids are
        remembered and never accepted again. Returns the removed device ids.

        Raises:
            UnknownAccount: no such account.
            VersionConflict: the stored version is not ``expected_version``.
            DeviceIdReused: the new list re-adds a removed device id.
        """
        ...


class PreKeyStore(Protocol):
    """The key directory: each device's signed, one-time and KEM prekeys."""

    async def upload(
        self,
        user_id: str,
        device_id: int,
        signed_prekey: StoredPreKey | None,
        one_time: Sequence[StoredPreKey],
        kem: Sequence[StoredPreKey],
        last_resort: StoredPreKey | None,
    ) -> None:
        """Add one-time prekeys and replace the signed / last-resort prekey when given
        (signatures are checked by the caller). Every id is recorded as used.

        Raises:
            UnknownDevice: the device is not in the account's current list.
            PreKeyIdReused: an id this device used before (or twice in this upload).
        """
        ...

    async def claim(self, user_id: str, device_id: int) -> ClaimedBundle | None:
        """Atomically take one bundle: the signed prekey, one one-time EC prekey if any
        is left (none otherwise), one one-time KEM prekey if any is left, else the
        last-resort KEM prekey. Concurrent claims never receive the same one-time
        prekey; the lowest id of each kind goes first. ``None`` when the device has no signed prekey (or is unknown)."""
        ...

    async def status(self, user_id: str, device_id: int) -> PreKeyStatus:
        """What the relay holds for the device (empty status for an unknown device)."""
        ...


class MessageStore(Protocol):
    """Per-device FIFO queues of ciphertext and the idempotency records of sends."""

    @property
    def accepts_in_order(self) -> bool:
        """Whether :meth:`accept` calls started one after the other (without awaiting
        the first) are accepted in that order (a single writer), so one connection
        may have several sends in flight."""
        ...

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
        """Store one send, all or nothing, in one transaction.

        In order: a send with the same ``(sender_user, sender_device, client_msg_id)``
        accepted before returns that :class:`Acceptance` with ``duplicate=True`` when
        ``digest`` matches; every addressed user's addressed device set must equal
        their current devices minus the sending device (else
        :class:`DeviceMismatch`); every addressed device must have fewer than
        ``queue_quota`` queued messages; then one queue entry per device with the
        device's next sequence number (strictly increasing, in acceptance order), and
        the idempotency record (kept :data:`IDEMPOTENCY_TTL_MS`; a record counts until
        it is purged). Sequence numbers start at 1 and are never reused, so
        ``fetch(after_seq=0)`` reads a whole queue.

        Raises:
            IdempotencyConflict: the id was accepted before with another digest.
            UnknownAccount: an addressed user does not exist.
            QueueFull: an addressed device's queue is at ``queue_quota``.
        """
        ...

    async def fetch(
        self, user_id: str, device_id: int, after_seq: int, limit: int, now_ms: int
    ) -> list[QueuedMessage]:
        """Up to ``limit`` queued messages with ``seq > after_seq``, in sequence order
        (expired ones, ``expires_at_ms <= now_ms``, excluded)."""
        ...

    async def ack(self, user_id: str, device_id: int, seqs: Sequence[int]) -> int:
        """Delete these queue entries of the device; returns how many existed."""
        ...

    async def depth(self, user_id: str, device_id: int) -> int:
        """How many messages are queued for the device."""
        ...

    async def purge_expired(self, now_ms: int, limit: int) -> int:
        """Delete up to ``limit`` expired queue entries and idempotency records older
        than :data:`IDEMPOTENCY_TTL_MS` (``limit`` counts both together, queue entries
        first); returns how many rows went."""
        ...


class BlobStore(Protocol):
    """Blobs (attachments, share links): rows of at most 1 MiB chunks."""

    async def begin(
        self,
        blob_id: bytes,
        owner_user: str,
        owner_device: int,
        now_ms: int,
        expires_at_ms: int,
        quota_bytes: int,
    ) -> None:
        """Start an upload.

        Raises:
            BlobExists: the id is taken.
            BlobQuotaExceeded: the owner already holds ``quota_bytes`` or more.

        The quota is per owner device and counts every blob it holds (complete or in
        progress) until the blob is deleted or purged.
        """
        ...

    async def append(self, blob_id: bytes, index: int, chunk: bytes, quota_bytes: int) -> None:
        """Store chunk ``index`` (0, 1, ... in order) of an upload in progress.

        Raises:
            UnknownBlob: no upload in progress with this id.
            BlobQuotaExceeded: the owner would exceed ``quota_bytes``.
        """
        ...

    async def complete(self, blob_id: bytes) -> BlobRecord:
        """Mark an upload complete; only complete blobs are served.

        Raises:
            UnknownBlob: no upload in progress with this id.
        """
        ...

    async def get(self, blob_id: bytes, now_ms: int) -> BlobRecord | None:
        """A complete, unexpired blob's metadata, or ``None``."""
        ...

    def chunks(self, blob_id: bytes) -> AsyncIterator[bytes]:
        """The complete blob's chunks in order, one query per chunk (never the whole blob).

        Raises:
            UnknownBlob: no complete blob with this id, or it was deleted mid-stream
                (a stream is never silently cut short).
        """
        ...

    async def delete(self, blob_id: bytes) -> bool:
        """Delete a blob (complete or not); whether it existed."""
        ...

    async def purge_expired(self, now_ms: int, limit: int) -> int:
        """Delete up to ``limit`` expired blobs (and uploads abandoned past expiry);
        returns how many blobs went."""
        ...


class LinkStore(Protocol):
    """The device-link mailbox: per link id, two slots, each written once and read once."""

    async def put(
        self, link_id: bytes, slot: int, blob: bytes, now_ms: int, expires_at_ms: int
    ) -> None:
        """Write slot ``slot`` (0: from the new device, 1: from the primary).

        A slot that was written stays taken until it expires, even after its blob was
        read, so nobody can replace a blob the other side already read.

        Raises:
            LinkMailboxFull: the slot was written before and has not expired.
        """
        ...

    async def take(self, link_id: bytes, slot: int, now_ms: int) -> bytes | None:
        """Read and delete the slot's blob (``None`` when empty or expired)."""
        ...

    async def purge_expired(self, now_ms: int, limit: int) -> int:
        """Delete up to ``limit`` expired mailbox entries."""
        ...


class ShareStore(Protocol):
    """Share links (DESIGN 4.7): a ciphertext served only for a matching proof.

    A share's ciphertext is stored as a blob of the :class:`BlobStore` (its chunk
    rows, its owner's byte quota, its expiry); the share adds the proof hash and the
    counters. A share lives exactly as long as its blob: deleting or purging the blob
    deletes the share, and deleting the share deletes the blob.
    """

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
        """Store a complete share in one transaction: the blob ``blob_id`` holding
        ``data`` (in chunk rows, expiring with the share, counted in the owner's blob
        quota) and the share row. An expired share with the same id is replaced.

        Raises:
            ShareExists: an unexpired share with this id exists.
            BlobExists: the blob id is taken (never in practice: ids are random).
            BlobQuotaExceeded: the owner's blobs would exceed ``quota_bytes``.
            ValueError: ``proof_hash`` is not :data:`SHARE_PROOF_HASH_SIZE` bytes,
                ``data`` is empty or ``max_views`` is below 1.
        """
        ...

    async def get(self, share_id: bytes, now_ms: int) -> ShareRecord | None:
        """An unexpired share's metadata, or ``None``."""
        ...

    async def open(
        self, share_id: bytes, proof_hash: bytes, now_ms: int, max_wrong_proofs: int
    ) -> ShareOpenOutcome:
        """Check ``proof_hash`` against the stored one (constant time) and count the
        outcome, atomically (concurrent opens never both use the last view or both
        escape the wrong-proof limit):

        * a match counts a view and returns the ciphertext (:class:`ShareOpened`);
          the view that reaches ``max_views`` deletes the share and its blob;
        * a mismatch counts a wrong proof (:class:`ShareWrongProof`); the one that
          reaches ``max_wrong_proofs`` deletes the share and its blob;
        * ``None`` when there is no unexpired share with this id.

        Raises:
            ValueError: ``proof_hash`` is not :data:`SHARE_PROOF_HASH_SIZE` bytes.
        """
        ...

    async def delete(
        self, share_id: bytes, owner_user: str, owner_device: int, now_ms: int
    ) -> bool:
        """Delete the share and its blob if ``(owner_user, owner_device)`` uploaded it
        (an expired one too); ``True`` when an unexpired share was deleted."""
        ...

    async def purge_expired(self, now_ms: int, limit: int) -> int:
        """Delete up to ``limit`` expired shares (soonest expiry first) with their
        blobs; returns how many shares went."""
        ...


class NonceStore(Protocol):
    """Single-use relay nonces for HTTP proofs (registration, blob uploads), shared by
    every relay node through the database."""

    async def issue(self, nonce: bytes, purpose: str, expires_at_ms: int) -> None:
        """Record a fresh nonce.

        Raises:
            ValueError: the nonce was issued before (nonces are random: a caller bug).
        """
        ...

    async def consume(self, nonce: bytes, purpose: str, now_ms: int) -> bool:
        """Delete the nonce (whatever its purpose: one attempt burns it); ``True`` only
        if it existed for ``purpose`` and had not expired."""
        ...

    async def purge_expired(self, now_ms: int, limit: int) -> int:
        """Delete up to ``limit`` expired nonces."""
        ...


class Storage(Protocol):
    """Every store of one relay over one database."""

    @property
    def accounts(self) -> AccountStore: ...
    @property
    def prekeys(self) -> PreKeyStore: ...
    @property
    def messages(self) -> MessageStore: ...
    @property
    def blobs(self) -> BlobStore: ...
    @property
    def links(self) -> LinkStore: ...
    @property
    def nonces(self) -> NonceStore: ...
    @property
    def shares(self) -> ShareStore: ...

    async def ping(self) -> None:
        """A trivial round trip (readiness).

        Raises:
            StorageUnavailable: the database does not answer.
        """
        ...

    async def aclose(self) -> None:
        """Finish pending writes and release every connection."""
        ...
