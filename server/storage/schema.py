"""The relay's SQL schema (SQLAlchemy Core), the single source of the Alembic migrations.

Every table is indexed for each of its access paths (``docs/storage.md`` lists them
with their query plans). Identifiers of the protocol map to columns as follows: user
ids are ``String(64)`` (DESIGN 4.1: at most 63 ASCII characters), device ids and
prekey ids are ``BigInteger`` (unsigned 32-bit values do not fit PostgreSQL's signed
``integer``), times are ``BigInteger`` milliseconds, and keys, lists and ciphertexts
are ``LargeBinary`` (``bytea`` / ``BLOB``).

There are deliberately few foreign keys: the hot tables (queue, prekeys) are
cleaned up explicitly by the operations that remove a device, so no insert on the
hot path pays for a parent lookup.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    SmallInteger,
    String,
    Table,
    UniqueConstraint,
)

from .base import MAX_BLOB_CHUNK, SHARE_PROOF_HASH_SIZE

__all__ = [
    "KIND_EC",
    "KIND_KEM",
    "QUEUE_AUTOVACUUM",
    "accounts",
    "blob_chunks",
    "blobs",
    "devices",
    "idempotency",
    "link_mailbox",
    "message_queue",
    "metadata",
    "nonces",
    "one_time_prekeys",
    "removed_devices",
    "share_links",
    "used_prekey_ids",
]

USER_ID_LENGTH = 64
"""Room for a user id (DESIGN 4.1 allows 63 characters)."""
PURPOSE_LENGTH = 32
"""Room for a nonce purpose label (``register``, ``blob-upload``, ...)."""

KIND_EC = 0
"""``one_time_prekeys.kind`` of a one-time X25519 prekey."""
KIND_KEM = 1
"""``one_time_prekeys.kind`` of a one-time ML-KEM-768 prekey."""

QUEUE_AUTOVACUUM = {
    "autovacuum_vacuum_scale_factor": "0",
    "autovacuum_vacuum_threshold": "1000",
    "autovacuum_analyze_scale_factor": "0",
    "autovacuum_analyze_threshold": "1000",
}
"""PostgreSQL storage parameters of the queue: it stays nearly empty while every row
is inserted and deleted once, so the default thresholds (a fraction of the table)
would let dead rows pile up; vacuum and analyze instead after every 1,000 changes."""

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)


def _user(name: str = "user_id") -> Column[str]:
    return Column(name, String(USER_ID_LENGTH), nullable=False)


def _int(name: str, *, nullable: bool = False) -> Column[int]:
    return Column(name, BigInteger, nullable=nullable)


def _bytes(name: str, *, nullable: bool = False) -> Column[bytes]:
    return Column(name, LargeBinary, nullable=nullable)


accounts = Table(
    "accounts",
    metadata,
    _user(),
    _bytes("master_pk"),
    _int("list_version"),
    _bytes("signed_list"),
    _bytes("list_digest"),
    _int("created_at_ms"),
    _int("updated_at_ms"),
    PrimaryKeyConstraint("user_id"),
)
"""One row per account: the master key and the accepted signed device list."""

devices = Table(
    "devices",
    metadata,
    Column(
        "user_id",
        String(USER_ID_LENGTH),
        ForeignKey("accounts.user_id", ondelete="CASCADE"),
        nullable=False,
    ),
    _int("device_id"),
    Column("position", Integer, nullable=False),
    _bytes("signing_pk"),
    _bytes("x25519_ik"),
    Column("pq", Boolean, nullable=False),
    _int("next_seq"),
    _int("queued"),
    _int("signed_prekey_id", nullable=True),
    _bytes("signed_prekey", nullable=True),
    _int("last_resort_id", nullable=True),
    _bytes("last_resort", nullable=True),
    PrimaryKeyConstraint("user_id", "device_id"),
)
"""The devices of each account's current list (``position`` keeps the list order),
each with its queue's next sequence number and current depth (``queued``, kept by
every operation that adds or deletes queue rows, so a quota check costs one row, not a
count of the queue), and its signed and last-resort prekeys.
Access: by primary key; by ``user_id`` (a prefix of it)."""

removed_devices = Table(
    "removed_devices",
    metadata,
    _user(),
    _int("device_id"),
    _int("removed_at_ms"),
    PrimaryKeyConstraint("user_id", "device_id"),
)
"""Device ids removed from an account, never accepted again."""

one_time_prekeys = Table(
    "one_time_prekeys",
    metadata,
    _user(),
    _int("device_id"),
    Column("kind", SmallInteger, nullable=False),
    _int("prekey_id"),
    _bytes("encoded"),
    PrimaryKeyConstraint("user_id", "device_id", "kind", "prekey_id"),
)
"""Unclaimed one-time prekeys (``kind``: :data:`KIND_EC` or :data:`KIND_KEM`). The
primary key is the claim path: the lowest ``prekey_id`` of one device and kind, and
its count."""

used_prekey_ids = Table(
    "used_prekey_ids",
    metadata,
    _user(),
    _int("device_id"),
    _int("prekey_id"),
    PrimaryKeyConstraint("user_id", "device_id", "prekey_id"),
)
"""Every prekey id a device has uploaded (any kind), never accepted again."""

message_queue = Table(
    "message_queue",
    metadata,
    _user(),
    _int("device_id"),
    _int("seq"),
    _user("sender_user"),
    _int("sender_device"),
    _int("accepted_at_ms"),
    _int("expires_at_ms"),
    _bytes("ciphertext"),
    PrimaryKeyConstraint("user_id", "device_id", "seq"),
    Index(None, "expires_at_ms"),
    postgresql_with=QUEUE_AUTOVACUUM,
)
"""Per-device FIFO queues. Access: fetch, ack and the quota count by primary key
range ``(user_id, device_id, seq > n)``; purge by ``expires_at_ms``."""

idempotency = Table(
    "idempotency",
    metadata,
    _user("sender_user"),
    _int("sender_device"),
    _bytes("client_msg_id"),
    _bytes("digest"),
    _int("accepted_at_ms"),
    PrimaryKeyConstraint("sender_user", "sender_device", "client_msg_id"),
    Index(None, "accepted_at_ms"),
)
"""One row per accepted send. Access: by primary key; purge by ``accepted_at_ms``."""

blobs = Table(
    "blobs",
    metadata,
    _bytes("blob_id"),
    _user("owner_user"),
    _int("owner_device"),
    _int("size"),
    Column("chunks", Integer, nullable=False),
    Column("complete", Boolean, nullable=False),
    _int("created_at_ms"),
    _int("expires_at_ms"),
    PrimaryKeyConstraint("blob_id"),
    Index(None, "owner_user", "owner_device"),
    Index(None, "expires_at_ms"),
)
"""Blob metadata. Access: by id; the owner's quota sum by owner; purge by expiry."""

blob_chunks = Table(
    "blob_chunks",
    metadata,
    Column("blob_id", LargeBinary, ForeignKey("blobs.blob_id"), nullable=False),
    Column("idx", Integer, nullable=False),
    _bytes("data"),
    PrimaryKeyConstraint("blob_id", "idx"),
    CheckConstraint(f"length(data) <= {MAX_BLOB_CHUNK}", name="chunk_size"),
)
"""Blob contents, one row per chunk of at most ``MAX_BLOB_CHUNK`` bytes."""

link_mailbox = Table(
    "link_mailbox",
    metadata,
    _bytes("link_id"),
    Column("slot", SmallInteger, nullable=False),
    _bytes("blob", nullable=True),
    _int("expires_at_ms"),
    PrimaryKeyConstraint("link_id", "slot"),
    Index(None, "expires_at_ms"),
)
"""Device-link mailbox slots; ``blob`` is NULL once read (the slot stays taken until
it expires)."""

share_links = Table(
    "share_links",
    metadata,
    _bytes("share_id"),
    Column(
        "blob_id",
        LargeBinary,
        ForeignKey("blobs.blob_id", ondelete="CASCADE"),
        nullable=False,
    ),
    _user("owner_user"),
    _int("owner_device"),
    _bytes("proof_hash"),
    _int("created_at_ms"),
    _int("expires_at_ms"),
    Column("max_views", Integer, nullable=True),
    Column("views", Integer, nullable=False),
    Column("wrong_proofs", Integer, nullable=False),
    PrimaryKeyConstraint("share_id"),
    UniqueConstraint("blob_id"),
    Index(None, "expires_at_ms"),
    CheckConstraint(f"length(proof_hash) = {SHARE_PROOF_HASH_SIZE}", name="proof_hash_size"),
)
"""Share links (DESIGN 4.7): the SHA-256 of the download proof, the view limit
(``NULL``: none) and the counters; the ciphertext is the blob ``blob_id`` (created and
deleted with the share; deleting or purging the blob deletes the share by cascade).
Access: open, get and delete by ``share_id``; the cascade by ``blob_id`` (unique);
purge by ``expires_at_ms``."""

nonces = Table(
    "nonces",
    metadata,
    _bytes("nonce"),
    Column("purpose", String(PURPOSE_LENGTH), nullable=False),
    _int("expires_at_ms"),
    PrimaryKeyConstraint("nonce"),
    Index(None, "expires_at_ms"),
)
"""Single-use relay nonces. Access: by nonce; purge by expiry."""
