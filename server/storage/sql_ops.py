"""Every storage operation, written once as a synchronous function of a SQLAlchemy
:class:`~sqlalchemy.engine.Connection` (``docs/storage.md``: the wiring).

:mod:`server.storage.sql` runs these inside a transaction it owns: on SQLite on the
event loop over one connection (a group-commit batch, one SAVEPOINT per operation),
on PostgreSQL through ``AsyncConnection.run_sync`` (one transaction per operation).
An operation never commits; it checks before it writes, raises the typed refusals
of :mod:`server.storage.base`, and raises :class:`RetryOperation` when it lost a
race that only PostgreSQL's concurrent transactions can produce (the runner re-runs
it in a fresh transaction, where the same checks give the right typed answer).

Locks on PostgreSQL: an operation that changes a device's queue or quota locks that
device's ``devices`` row (``FOR UPDATE``, in sorted order when there are several, so
two sends never deadlock); ``with_for_update`` renders nothing on SQLite, whose
single writer already serialises everything.
"""

from __future__ import annotations

import hmac
from collections import Counter
from collections.abc import Sequence
from typing import Any

from sqlalchemy import (
    BigInteger,
    BindParameter,
    Connection,
    Integer,
    LargeBinary,
    Row,
    SmallInteger,
    String,
    bindparam,
    delete,
    func,
    insert,
    literal,
    select,
    update,
)

from .base import (
    IDEMPOTENCY_TTL_MS,
    Acceptance,
    AcceptOutcome,
    AccountExists,
    AccountRecord,
    BlobExists,
    BlobQuotaExceeded,
    BlobRecord,
    ClaimedBundle,
    DeviceIdReused,
    DeviceRecord,
    IdempotencyConflict,
    LinkMailboxFull,
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
from .memory import (
    check_account_record,
    check_addressed,
    check_chunk,
    check_link_slot,
    check_max_wrong_proofs,
    check_new_share,
    check_proof_hash,
    device_mismatch,
    share_chunks,
)
from .schema import (
    KIND_EC,
    KIND_KEM,
    accounts,
    blob_chunks,
    blobs,
    devices,
    idempotency,
    link_mailbox,
    message_queue,
    nonces,
    one_time_prekeys,
    removed_devices,
    share_links,
    used_prekey_ids,
)

__all__ = ["RetryOperation"]


class RetryOperation(Exception):
    """The operation lost a race with a concurrent transaction; run it again."""


_q = message_queue
_otp = one_time_prekeys


def _device_rows(account: AccountRecord) -> list[dict[str, object]]:
    return [
        {
            "user_id": account.user_id,
            "device_id": d.device_id,
            "position": i,
            "signing_pk": d.signing_pk,
            "x25519_ik": d.x25519_ik,
            "pq": d.pq,
        }
        for i, d in enumerate(account.devices)
    ]


# --- accounts --------------------------------------------------------------------------


def create_account(conn: Connection, account: AccountRecord, now_ms: int) -> None:
    """See :meth:`server.storage.base.AccountStore.create_account`.

    Raises:
        AccountExists: the user id is taken.
        ValueError: an inconsistent record.
    """
    check_account_record(account)
    taken = conn.execute(
        select(accounts.c.user_id).where(accounts.c.user_id == account.user_id)
    ).first()
    if taken is not None:
        raise AccountExists(account.user_id)
    conn.execute(
        insert(accounts).values(
            user_id=account.user_id,
            master_pk=account.master_pk,
            list_version=account.list_version,
            signed_list=account.signed_list,
            list_digest=account.list_digest,
            created_at_ms=now_ms,
            updated_at_ms=now_ms,
        )
    )
    rows = _device_rows(account)
    if rows:
        conn.execute(insert(devices).values(next_seq=1, queued=0), rows)


def get_account(conn: Connection, user_id: str) -> AccountRecord | None:
    """See :meth:`server.storage.base.AccountStore.get_account`."""
    row = conn.execute(
        select(
            accounts.c.master_pk,
            accounts.c.list_version,
            accounts.c.signed_list,
            accounts.c.list_digest,
        ).where(accounts.c.user_id == user_id)
    ).first()
    if row is None:
        return None
    devs = conn.execute(
        select(devices.c.device_id, devices.c.signing_pk, devices.c.x25519_ik, devices.c.pq)
        .where(devices.c.user_id == user_id)
        .order_by(devices.c.position)
    ).all()
    return AccountRecord(
        user_id=user_id,
        master_pk=row.master_pk,
        list_version=row.list_version,
        signed_list=row.signed_list,
        list_digest=row.list_digest,
        devices=tuple(
            DeviceRecord(user_id, d.device_id, d.signing_pk, d.x25519_ik, bool(d.pq)) for d in devs
        ),
    )


def get_device(conn: Connection, user_id: str, device_id: int) -> DeviceRecord | None:
    """See :meth:`server.storage.base.AccountStore.get_device`."""
    row = conn.execute(
        select(devices.c.signing_pk, devices.c.x25519_ik, devices.c.pq).where(
            devices.c.user_id == user_id, devices.c.device_id == device_id
        )
    ).first()
    if row is None:
        return None
    return DeviceRecord(user_id, device_id, row.signing_pk, row.x25519_ik, bool(row.pq))


def replace_device_list(
    conn: Connection, account: AccountRecord, expected_version: int, now_ms: int
) -> tuple[int, ...]:
    """See :meth:`server.storage.base.AccountStore.replace_device_list`.

    Raises:
        UnknownAccount: no such account.
        VersionConflict: the stored version is not ``expected_version``.
        DeviceIdReused: the new list re-adds a removed device id.
        ValueError: an inconsistent record.
    """
    check_account_record(account)
    user = account.user_id
    version = conn.execute(
        select(accounts.c.list_version).where(accounts.c.user_id == user).with_for_update()
    ).scalar()
    if version is None:
        raise UnknownAccount(user)
    if version != expected_version:
        raise VersionConflict(user)
    new_ids = [d.device_id for d in account.devices]
    if new_ids:
        reused = set(
            conn.execute(
                select(removed_devices.c.device_id).where(
                    removed_devices.c.user_id == user, removed_devices.c.device_id.in_(new_ids)
                )
            ).scalars()
        )
        for device_id in new_ids:
            if device_id in reused:
                raise DeviceIdReused(device_id)
    old_ids = set(
        conn.execute(
            select(devices.c.device_id).where(devices.c.user_id == user).with_for_update()
        ).scalars()
    )
    removed = tuple(sorted(old_ids.difference(new_ids)))
    if removed:
        _delete_devices(conn, user, removed, now_ms)
    rows = _device_rows(account)
    kept = [r for r in rows if r["device_id"] in old_ids]
    added = [r for r in rows if r["device_id"] not in old_ids]
    if kept:
        conn.execute(
            update(devices)
            .where(
                devices.c.user_id == bindparam("b_user"),
                devices.c.device_id == bindparam("b_device"),
            )
            .values(
                position=bindparam("position"),
                signing_pk=bindparam("signing_pk"),
                x25519_ik=bindparam("x25519_ik"),
                pq=bindparam("pq"),
            ),
            [{**r, "b_user": r["user_id"], "b_device": r["device_id"]} for r in kept],
        )
    if added:
        conn.execute(insert(devices).values(next_seq=1, queued=0), added)
    conn.execute(
        update(accounts)
        .where(accounts.c.user_id == user)
        .values(
            master_pk=account.master_pk,
            list_version=account.list_version,
            signed_list=account.signed_list,
            list_digest=account.list_digest,
            updated_at_ms=now_ms,
        )
    )
    return removed


def _delete_devices(conn: Connection, user: str, removed: tuple[int, ...], now_ms: int) -> None:
    """Delete the removed devices' queues, prekeys and uploads in progress; remember
    their ids."""
    for table in (_q, _otp, used_prekey_ids, devices):
        conn.execute(delete(table).where(table.c.user_id == user, table.c.device_id.in_(removed)))
    in_progress = select(blobs.c.blob_id).where(
        blobs.c.owner_user == user,
        blobs.c.owner_device.in_(removed),
        blobs.c.complete.is_(False),
    )
    conn.execute(delete(blob_chunks).where(blob_chunks.c.blob_id.in_(in_progress)))
    conn.execute(
        delete(blobs).where(
            blobs.c.owner_user == user,
            blobs.c.owner_device.in_(removed),
            blobs.c.complete.is_(False),
        )
    )
    conn.execute(
        insert(removed_devices),
        [{"user_id": user, "device_id": d, "removed_at_ms": now_ms} for d in removed],
    )


# --- prekeys ---------------------------------------------------------------------------


def _lock_device(conn: Connection, user_id: str, device_id: int) -> bool:
    """Lock the device's row (PostgreSQL); whether it exists."""
    found = conn.execute(
        select(devices.c.device_id)
        .where(devices.c.user_id == user_id, devices.c.device_id == device_id)
        .with_for_update()
    ).first()
    return found is not None


def upload_prekeys(
    conn: Connection,
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
    if not _lock_device(conn, user_id, device_id):
        raise UnknownDevice(user_id, device_id)
    everything = [*one_time, *kem]
    for single in (signed_prekey, last_resort):
        if single is not None:
            everything.append(single)
    if not everything:
        return
    ids = [k.prekey_id for k in everything]
    used = set(
        conn.execute(
            select(used_prekey_ids.c.prekey_id).where(
                used_prekey_ids.c.user_id == user_id,
                used_prekey_ids.c.device_id == device_id,
                used_prekey_ids.c.prekey_id.in_(ids),
            )
        ).scalars()
    )
    seen: set[int] = set()
    for prekey_id in ids:
        if prekey_id in used or prekey_id in seen:
            raise PreKeyIdReused(prekey_id)
        seen.add(prekey_id)
    conn.execute(
        insert(used_prekey_ids),
        [{"user_id": user_id, "device_id": device_id, "prekey_id": i} for i in ids],
    )
    rows = [
        {"kind": kind, "prekey_id": k.prekey_id, "encoded": k.encoded}
        for kind, keys in ((KIND_EC, one_time), (KIND_KEM, kem))
        for k in keys
    ]
    if rows:
        conn.execute(insert(_otp).values(user_id=user_id, device_id=device_id), rows)
    changes: dict[str, object] = {}
    if signed_prekey is not None:
        changes.update(
            signed_prekey_id=signed_prekey.prekey_id, signed_prekey=signed_prekey.encoded
        )
    if last_resort is not None:
        changes.update(last_resort_id=last_resort.prekey_id, last_resort=last_resort.encoded)
    if changes:
        conn.execute(
            update(devices)
            .where(devices.c.user_id == user_id, devices.c.device_id == device_id)
            .values(**changes)
        )


_U: BindParameter[str] = bindparam("u", type_=String)
_D: BindParameter[int] = bindparam("d", type_=BigInteger)
_KIND: BindParameter[int] = bindparam("kind", type_=SmallInteger)
_DEVICE_KEYS = select(devices.c.signed_prekey, devices.c.last_resort).where(
    devices.c.user_id == _U, devices.c.device_id == _D
)
_otp_where = (_otp.c.user_id == _U, _otp.c.device_id == _D, _otp.c.kind == _KIND)
_TAKE_ONE_TIME = (
    delete(_otp)
    .where(
        *_otp_where,
        _otp.c.prekey_id
        == (
            select(_otp.c.prekey_id)
            .where(*_otp_where)
            .order_by(_otp.c.prekey_id)
            .limit(1)
            .with_for_update(skip_locked=True)
            .scalar_subquery()
        ),
    )
    .returning(_otp.c.encoded)
)
"""Take the device's lowest one-time prekey of a kind: on PostgreSQL ``DELETE ... WHERE
prekey_id = (SELECT ... ORDER BY prekey_id LIMIT 1 FOR UPDATE SKIP LOCKED) RETURNING``,
so concurrent claims each take a different row without waiting for each other."""
_COUNTS = (
    select(_otp.c.kind, func.count())
    .where(_otp.c.user_id == _U, _otp.c.device_id == _D)
    .group_by(_otp.c.kind)
)


def _counts(conn: Connection, user_id: str, device_id: int) -> tuple[int, int]:
    counts = {kind: n for kind, n in conn.execute(_COUNTS, {"u": user_id, "d": device_id})}
    return counts.get(KIND_EC, 0), counts.get(KIND_KEM, 0)


def claim(conn: Connection, user_id: str, device_id: int) -> ClaimedBundle | None:
    """See :meth:`server.storage.base.PreKeyStore.claim`."""
    key = {"u": user_id, "d": device_id}
    row = conn.execute(_DEVICE_KEYS, key).first()
    if row is None or row.signed_prekey is None:
        return None
    one_time: bytes | None = conn.execute(_TAKE_ONE_TIME, {**key, "kind": KIND_EC}).scalar()
    kem: bytes | None = conn.execute(_TAKE_ONE_TIME, {**key, "kind": KIND_KEM}).scalar()
    last_resort = kem is None and row.last_resort is not None
    if last_resort:
        kem = row.last_resort
    one_time_left, kem_left = _counts(conn, user_id, device_id)
    return ClaimedBundle(
        signed_prekey=row.signed_prekey,
        one_time=one_time,
        kem=kem,
        kem_is_last_resort=last_resort,
        one_time_left=one_time_left,
        kem_left=kem_left,
    )


def prekey_status(conn: Connection, user_id: str, device_id: int) -> PreKeyStatus:
    """See :meth:`server.storage.base.PreKeyStore.status`."""
    row = conn.execute(_DEVICE_KEYS, {"u": user_id, "d": device_id}).first()
    if row is None:
        return PreKeyStatus(None, None, 0, 0)
    one_time_left, kem_left = _counts(conn, user_id, device_id)
    return PreKeyStatus(row.signed_prekey, row.last_resort, one_time_left, kem_left)


# --- messages --------------------------------------------------------------------------
# The hot path: statements built once (SQLAlchemy then only looks its compiled form up).

_IDEMPOTENCY = select(idempotency.c.digest, idempotency.c.accepted_at_ms).where(
    idempotency.c.sender_user == bindparam("su"),
    idempotency.c.sender_device == bindparam("sd"),
    idempotency.c.client_msg_id == bindparam("id"),
)
_ADDRESSED_DEVICES = (
    select(accounts.c.user_id, devices.c.device_id)
    .select_from(accounts.outerjoin(devices, devices.c.user_id == accounts.c.user_id))
    .where(accounts.c.user_id.in_(bindparam("users", expanding=True)))
)
"""Each addressed user that exists, with each of its current devices (one round trip)."""
_NEXT_SEQ = (
    update(devices)
    .where(devices.c.user_id == _U, devices.c.device_id == _D)
    .values(next_seq=devices.c.next_seq + 1, queued=devices.c.queued + 1)
    .returning(devices.c.next_seq, devices.c.queued)
)
"""Take a sequence number and count the new entry (locks the device row)."""
_ENQUEUE = insert(_q).values(
    user_id=bindparam("u"),
    device_id=bindparam("d"),
    seq=bindparam("seq"),
    sender_user=bindparam("su"),
    sender_device=bindparam("sd"),
    accepted_at_ms=bindparam("now"),
    expires_at_ms=bindparam("exp"),
    ciphertext=bindparam("ct"),
)
_RECORD = insert(idempotency).values(
    sender_user=bindparam("su"),
    sender_device=bindparam("sd"),
    client_msg_id=bindparam("id"),
    digest=bindparam("digest"),
    accepted_at_ms=bindparam("now"),
)
_FETCH = (
    select(_q.c.seq, _q.c.sender_user, _q.c.sender_device, _q.c.accepted_at_ms, _q.c.ciphertext)
    .where(
        _q.c.user_id == _U,
        _q.c.device_id == _D,
        _q.c.seq > bindparam("after"),
        _q.c.expires_at_ms > bindparam("now"),
    )
    .order_by(_q.c.seq)
    .limit(bindparam("limit", type_=Integer))
)
_ACK = delete(_q).where(
    _q.c.user_id == _U, _q.c.device_id == _D, _q.c.seq.in_(bindparam("seqs", expanding=True))
)
_UNCOUNT = (
    update(devices)
    .where(devices.c.user_id == _U, devices.c.device_id == _D)
    .values(queued=devices.c.queued - bindparam("n", type_=BigInteger))
)
_DEPTH = select(devices.c.queued).where(devices.c.user_id == _U, devices.c.device_id == _D)


def accept(
    conn: Connection,
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
        RetryOperation: an addressed device went while this send was being stored.
        ValueError: a user or device addressed twice.
    """
    check_addressed(addressed)
    sender = {"su": sender_user, "sd": sender_device}
    previous = conn.execute(_IDEMPOTENCY, {**sender, "id": client_msg_id}).first()
    if previous is not None:
        if previous.digest != digest:
            raise IdempotencyConflict(client_msg_id.hex())
        return Acceptance(accepted_at_ms=previous.accepted_at_ms, deliveries=(), duplicate=True)
    users = [u for u, _ in addressed]
    current: dict[str, set[int]] = {}
    for u, d in conn.execute(_ADDRESSED_DEVICES, {"users": users}):
        devices = current.setdefault(u, set())
        if d is not None:
            devices.add(d)
    mismatch = device_mismatch(addressed, current, sender_user, sender_device)
    if mismatch is not None:
        return mismatch
    targets = [(u, d) for u, devs in addressed for d, _ in devs]
    seqs: dict[tuple[str, int], int] = {}
    depths: dict[tuple[str, int], int] = {}
    for u, d in sorted(targets):  # one lock order: concurrent sends never deadlock
        row = conn.execute(_NEXT_SEQ, {"u": u, "d": d}).first()
        if row is None:
            raise RetryOperation(f"device {u}.{d} went during a send")
        seqs[(u, d)], depths[(u, d)] = row.next_seq - 1, row.queued
    for target in targets:
        if depths[target] > queue_quota:
            raise QueueFull(*target)
    common = {**sender, "now": now_ms, "exp": expires_at_ms}
    rows = [
        {**common, "u": u, "d": d, "seq": seqs[(u, d)], "ct": ct}
        for u, devs in addressed
        for d, ct in devs
    ]
    if rows:
        conn.execute(_ENQUEUE, rows)
    conn.execute(_RECORD, {**sender, "id": client_msg_id, "digest": digest, "now": now_ms})
    return Acceptance(
        accepted_at_ms=now_ms,
        deliveries=tuple((u, d, seqs[(u, d)]) for u, d in targets),
        duplicate=False,
    )


def fetch(
    conn: Connection, user_id: str, device_id: int, after_seq: int, limit: int, now_ms: int
) -> list[QueuedMessage]:
    """See :meth:`server.storage.base.MessageStore.fetch`."""
    if limit <= 0:
        return []
    params = {"u": user_id, "d": device_id, "after": after_seq, "now": now_ms, "limit": limit}
    return [QueuedMessage(*r) for r in conn.execute(_FETCH, params)]


def ack(conn: Connection, user_id: str, device_id: int, seqs: Sequence[int]) -> int:
    """See :meth:`server.storage.base.MessageStore.ack`."""
    if not seqs:
        return 0
    key = {"u": user_id, "d": device_id}
    gone: int = conn.execute(_ACK, {**key, "seqs": sorted(set(seqs))}).rowcount
    if gone:
        conn.execute(_UNCOUNT, {**key, "n": gone})
    return gone


def depth(conn: Connection, user_id: str, device_id: int) -> int:
    """See :meth:`server.storage.base.MessageStore.depth`."""
    n: int | None = conn.execute(_DEPTH, {"u": user_id, "d": device_id}).scalar()
    return n or 0


_LIMIT: BindParameter[int] = bindparam("limit", type_=Integer)
_EXPIRED_QUEUE = (
    select(_q.c.user_id, _q.c.device_id, _q.c.seq)
    .where(_q.c.expires_at_ms <= bindparam("now", type_=BigInteger))
    .order_by(_q.c.expires_at_ms)
    .limit(_LIMIT)
    .with_for_update(skip_locked=True)
)
"""A batch of expired queue entries, by the expiry index, locked (PostgreSQL) so the
delete below removes exactly them (a concurrent ack of one waits, then finds it gone)."""
_DELETE_QUEUED = delete(_q).where(
    _q.c.user_id == _U, _q.c.device_id == _D, _q.c.seq == bindparam("seq", type_=BigInteger)
)
_i = idempotency
_OLD_RECORDS = (
    select(_i.c.sender_user, _i.c.sender_device, _i.c.client_msg_id)
    .where(_i.c.accepted_at_ms <= bindparam("cutoff", type_=BigInteger))
    .order_by(_i.c.accepted_at_ms)
    .limit(_LIMIT)
    .with_for_update(skip_locked=True)
)
_DELETE_RECORD = delete(_i).where(
    _i.c.sender_user == bindparam("su", type_=String),
    _i.c.sender_device == bindparam("sd", type_=BigInteger),
    _i.c.client_msg_id == bindparam("id", type_=LargeBinary),
)


def purge_messages(conn: Connection, now_ms: int, limit: int) -> int:
    """See :meth:`server.storage.base.MessageStore.purge_expired`.

    Selects a batch by the expiry index, then deletes it by primary key: two plans
    that stay index scans however the queue's statistics look (a DELETE with a
    ``(pk) IN (SELECT ... LIMIT)`` subquery can be planned as a scan of the queue).
    """
    if limit <= 0:
        return 0
    expired = conn.execute(_EXPIRED_QUEUE, {"now": now_ms, "limit": limit}).all()
    if expired:
        conn.execute(_DELETE_QUEUED, [{"u": u, "d": d, "seq": seq} for u, d, seq in expired])
        went = Counter((u, d) for u, d, _ in expired)
        # sorted: the same lock order as accept
        conn.execute(_UNCOUNT, [{"u": u, "d": d, "n": went[(u, d)]} for u, d in sorted(went)])
    gone = len(expired)
    if gone < limit:
        cutoff = now_ms - IDEMPOTENCY_TTL_MS
        old = conn.execute(_OLD_RECORDS, {"cutoff": cutoff, "limit": limit - gone}).all()
        if old:
            conn.execute(_DELETE_RECORD, [{"su": u, "sd": d, "id": m} for u, d, m in old])
        gone += len(old)
    return gone


# --- blobs -----------------------------------------------------------------------------


def _held(conn: Connection, user: str, device: int) -> int:
    n: int = conn.execute(
        select(func.coalesce(func.sum(blobs.c.size), 0)).where(
            blobs.c.owner_user == user, blobs.c.owner_device == device
        )
    ).scalar_one()
    return n


def blob_begin(
    conn: Connection,
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
    if conn.execute(select(blobs.c.size).where(blobs.c.blob_id == blob_id)).first() is not None:
        raise BlobExists(blob_id.hex())
    _lock_device(conn, owner_user, owner_device)
    if _held(conn, owner_user, owner_device) >= quota_bytes:
        raise BlobQuotaExceeded(f"{owner_user}.{owner_device}")
    conn.execute(
        insert(blobs).values(
            blob_id=blob_id,
            owner_user=owner_user,
            owner_device=owner_device,
            size=0,
            chunks=0,
            complete=False,
            created_at_ms=now_ms,
            expires_at_ms=expires_at_ms,
        )
    )


def blob_append(
    conn: Connection, blob_id: bytes, index: int, chunk: bytes, quota_bytes: int
) -> None:
    """See :meth:`server.storage.base.BlobStore.append`.

    Raises:
        UnknownBlob: no upload in progress with this id.
        BlobQuotaExceeded: the owner would exceed ``quota_bytes``.
        ValueError: an out-of-order or oversized chunk.
    """
    row = conn.execute(
        select(blobs.c.owner_user, blobs.c.owner_device, blobs.c.chunks, blobs.c.complete)
        .where(blobs.c.blob_id == blob_id)
        .with_for_update()
    ).first()
    if row is None or row.complete:
        raise UnknownBlob(blob_id.hex())
    check_chunk(index, row.chunks, chunk)
    _lock_device(conn, row.owner_user, row.owner_device)
    if _held(conn, row.owner_user, row.owner_device) + len(chunk) > quota_bytes:
        raise BlobQuotaExceeded(f"{row.owner_user}.{row.owner_device}")
    conn.execute(insert(blob_chunks).values(blob_id=blob_id, idx=index, data=chunk))
    conn.execute(
        update(blobs)
        .where(blobs.c.blob_id == blob_id)
        .values(size=blobs.c.size + len(chunk), chunks=blobs.c.chunks + 1)
    )


_BLOB_COLUMNS = (
    blobs.c.blob_id,
    blobs.c.owner_user,
    blobs.c.owner_device,
    blobs.c.size,
    blobs.c.chunks,
    blobs.c.created_at_ms,
    blobs.c.expires_at_ms,
)


def blob_complete(conn: Connection, blob_id: bytes) -> BlobRecord:
    """See :meth:`server.storage.base.BlobStore.complete`.

    Raises:
        UnknownBlob: no upload in progress with this id.
    """
    row = conn.execute(
        select(*_BLOB_COLUMNS, blobs.c.complete).where(blobs.c.blob_id == blob_id).with_for_update()
    ).first()
    if row is None or row.complete:
        raise UnknownBlob(blob_id.hex())
    conn.execute(update(blobs).where(blobs.c.blob_id == blob_id).values(complete=True))
    return BlobRecord(*row[:7])


def blob_get(conn: Connection, blob_id: bytes, now_ms: int) -> BlobRecord | None:
    """See :meth:`server.storage.base.BlobStore.get`."""
    row = conn.execute(
        select(*_BLOB_COLUMNS).where(
            blobs.c.blob_id == blob_id,
            blobs.c.complete.is_(True),
            blobs.c.expires_at_ms > now_ms,
        )
    ).first()
    return None if row is None else BlobRecord(*row)


def blob_chunk_count(conn: Connection, blob_id: bytes) -> int:
    """How many chunks the complete blob has.

    Raises:
        UnknownBlob: no complete blob with this id.
    """
    n: int | None = conn.execute(
        select(blobs.c.chunks).where(blobs.c.blob_id == blob_id, blobs.c.complete.is_(True))
    ).scalar()
    if n is None:
        raise UnknownBlob(blob_id.hex())
    return n


def blob_chunk(conn: Connection, blob_id: bytes, index: int) -> bytes:
    """Chunk ``index`` of a blob.

    Raises:
        UnknownBlob: the chunk is not there (the blob went).
    """
    data: bytes | None = conn.execute(
        select(blob_chunks.c.data).where(
            blob_chunks.c.blob_id == blob_id, blob_chunks.c.idx == index
        )
    ).scalar()
    if data is None:
        raise UnknownBlob(blob_id.hex())
    return data


def blob_delete(conn: Connection, blob_id: bytes) -> bool:
    """See :meth:`server.storage.base.BlobStore.delete`."""
    conn.execute(delete(blob_chunks).where(blob_chunks.c.blob_id == blob_id))
    return conn.execute(delete(blobs).where(blobs.c.blob_id == blob_id)).rowcount > 0


def purge_blobs(conn: Connection, now_ms: int, limit: int) -> int:
    """See :meth:`server.storage.base.BlobStore.purge_expired`."""
    if limit <= 0:
        return 0
    ids = list(
        conn.execute(
            select(blobs.c.blob_id).where(blobs.c.expires_at_ms <= now_ms).limit(limit)
        ).scalars()
    )
    if not ids:
        return 0
    conn.execute(delete(blob_chunks).where(blob_chunks.c.blob_id.in_(ids)))
    return conn.execute(delete(blobs).where(blobs.c.blob_id.in_(ids))).rowcount


# --- link mailbox ----------------------------------------------------------------------

_lm = link_mailbox


def link_put(
    conn: Connection, link_id: bytes, slot: int, blob: bytes, now_ms: int, expires_at_ms: int
) -> None:
    """See :meth:`server.storage.base.LinkStore.put`.

    Raises:
        LinkMailboxFull: the slot was written before and has not expired.
        ValueError: ``slot`` is not 0 or 1.
    """
    check_link_slot(slot)
    where = (_lm.c.link_id == link_id, _lm.c.slot == slot)
    expires = conn.execute(select(_lm.c.expires_at_ms).where(*where).with_for_update()).scalar()
    if expires is not None:
        if expires > now_ms:
            raise LinkMailboxFull(link_id.hex())
        conn.execute(delete(_lm).where(*where))
    conn.execute(
        insert(_lm).values(link_id=link_id, slot=slot, blob=blob, expires_at_ms=expires_at_ms)
    )


def link_take(conn: Connection, link_id: bytes, slot: int, now_ms: int) -> bytes | None:
    """See :meth:`server.storage.base.LinkStore.take`.

    Raises:
        ValueError: ``slot`` is not 0 or 1.
    """
    check_link_slot(slot)
    where = (_lm.c.link_id == link_id, _lm.c.slot == slot, _lm.c.blob.is_not(None))
    row = conn.execute(
        select(_lm.c.blob, _lm.c.expires_at_ms).where(*where).with_for_update()
    ).first()
    if row is None or row.expires_at_ms <= now_ms:
        return None
    conn.execute(update(_lm).where(*where).values(blob=None))
    blob: bytes = row.blob
    return blob


def purge_links(conn: Connection, now_ms: int, limit: int) -> int:
    """See :meth:`server.storage.base.LinkStore.purge_expired`."""
    if limit <= 0:
        return 0
    expired = conn.execute(
        select(_lm.c.link_id, _lm.c.slot)
        .where(_lm.c.expires_at_ms <= now_ms)
        .order_by(_lm.c.expires_at_ms)
        .limit(limit)
        .with_for_update(skip_locked=True)
    ).all()
    if expired:
        conn.execute(
            delete(_lm).where(_lm.c.link_id == bindparam("l"), _lm.c.slot == bindparam("s")),
            [{"l": link_id, "s": slot} for link_id, slot in expired],
        )
    return len(expired)


# --- share links -----------------------------------------------------------------------

_sl = share_links

_SHARE_COLUMNS = (
    _sl.c.share_id,
    _sl.c.blob_id,
    _sl.c.owner_user,
    _sl.c.owner_device,
    blobs.c.size,
    _sl.c.created_at_ms,
    _sl.c.expires_at_ms,
    _sl.c.max_views,
    _sl.c.views,
    _sl.c.wrong_proofs,
)
"""A :class:`ShareRecord`'s columns, in its field order (over ``share_links JOIN blobs``)."""


def _share_record(row: Row[*tuple[Any, ...]], views: int) -> ShareRecord:
    """The record of a row of :data:`_SHARE_COLUMNS` (with ``views`` as given)."""
    return ShareRecord(
        share_id=row.share_id,
        blob_id=row.blob_id,
        owner_user=row.owner_user,
        owner_device=row.owner_device,
        size=row.size,
        created_at_ms=row.created_at_ms,
        expires_at_ms=row.expires_at_ms,
        max_views=row.max_views,
        views=views,
        wrong_proofs=row.wrong_proofs,
    )


def _drop_share(conn: Connection, share_id: bytes, blob_id: bytes) -> None:
    """Delete a share row and its blob (the row first: no cascade needed)."""
    conn.execute(delete(_sl).where(_sl.c.share_id == share_id))
    blob_delete(conn, blob_id)


def share_create(
    conn: Connection,
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
    """See :meth:`server.storage.base.ShareStore.create`: the blob through the blob
    operations (quota, chunk rows), then the share row. Two creates of one id race on
    the primary key; the loser is run again and finds the winner's share.

    Raises:
        ShareExists: an unexpired share with this id exists.
        BlobExists: the blob id is taken.
        BlobQuotaExceeded: the owner's blobs would exceed ``quota_bytes``.
        ValueError: a malformed proof hash, empty ``data`` or ``max_views`` < 1.
    """
    check_new_share(proof_hash, data, max_views)
    existing = conn.execute(
        select(_sl.c.blob_id, _sl.c.expires_at_ms)
        .where(_sl.c.share_id == share_id)
        .with_for_update()
    ).first()
    if existing is not None:
        if existing.expires_at_ms > now_ms:
            raise ShareExists(share_id.hex())
        _drop_share(conn, share_id, existing.blob_id)
    blob_begin(conn, blob_id, owner_user, owner_device, now_ms, expires_at_ms, quota_bytes)
    chunks = share_chunks(data)
    for index, chunk in enumerate(chunks):
        blob_append(conn, blob_id, index, chunk, quota_bytes)
    blob_complete(conn, blob_id)
    conn.execute(
        insert(_sl).values(
            share_id=share_id,
            blob_id=blob_id,
            owner_user=owner_user,
            owner_device=owner_device,
            proof_hash=proof_hash,
            created_at_ms=now_ms,
            expires_at_ms=expires_at_ms,
            max_views=max_views,
            views=0,
            wrong_proofs=0,
        )
    )
    return ShareRecord(
        share_id,
        blob_id,
        owner_user,
        owner_device,
        len(data),
        now_ms,
        expires_at_ms,
        max_views,
        0,
        0,
    )


def share_get(conn: Connection, share_id: bytes, now_ms: int) -> ShareRecord | None:
    """See :meth:`server.storage.base.ShareStore.get`."""
    row = conn.execute(
        select(*_SHARE_COLUMNS)
        .select_from(_sl.join(blobs, blobs.c.blob_id == _sl.c.blob_id))
        .where(_sl.c.share_id == share_id, _sl.c.expires_at_ms > now_ms)
    ).first()
    return None if row is None else _share_record(row, row.views)


def share_open(
    conn: Connection, share_id: bytes, proof_hash: bytes, now_ms: int, max_wrong_proofs: int
) -> ShareOpenOutcome:
    """See :meth:`server.storage.base.ShareStore.open`. The share row is locked
    (``FOR UPDATE``) before it is checked, so on PostgreSQL concurrent opens of one
    share run one after the other and each sees the counters the previous one left
    (or no row, once it was deleted); on SQLite the single writer does the same.

    Raises:
        ValueError: a malformed proof hash or ``max_wrong_proofs`` < 1.
    """
    check_proof_hash(proof_hash)
    check_max_wrong_proofs(max_wrong_proofs)
    row = conn.execute(
        select(*_SHARE_COLUMNS, _sl.c.proof_hash, blobs.c.chunks)
        .select_from(_sl.join(blobs, blobs.c.blob_id == _sl.c.blob_id))
        .where(_sl.c.share_id == share_id)
        .with_for_update(of=_sl)
    ).first()
    if row is None or row.expires_at_ms <= now_ms:
        return None
    if row.max_views is not None and row.views >= row.max_views:
        return None
    if not hmac.compare_digest(row.proof_hash, proof_hash):
        wrong: int = row.wrong_proofs + 1
        if wrong >= max_wrong_proofs:
            _drop_share(conn, share_id, row.blob_id)
            return ShareWrongProof(wrong, deleted=True)
        conn.execute(update(_sl).where(_sl.c.share_id == share_id).values(wrong_proofs=wrong))
        return ShareWrongProof(wrong, deleted=False)
    views: int = row.views + 1
    data = b"".join(blob_chunk(conn, row.blob_id, index) for index in range(row.chunks))
    used_up = row.max_views is not None and views >= row.max_views
    if used_up:
        _drop_share(conn, share_id, row.blob_id)
    else:
        conn.execute(update(_sl).where(_sl.c.share_id == share_id).values(views=views))
    return ShareOpened(_share_record(row, views), data, deleted=used_up)


def share_delete(
    conn: Connection, share_id: bytes, owner_user: str, owner_device: int, now_ms: int
) -> bool:
    """See :meth:`server.storage.base.ShareStore.delete`."""
    row = conn.execute(
        select(_sl.c.blob_id, _sl.c.expires_at_ms)
        .where(
            _sl.c.share_id == share_id,
            _sl.c.owner_user == owner_user,
            _sl.c.owner_device == owner_device,
        )
        .with_for_update()
    ).first()
    if row is None:
        return False
    _drop_share(conn, share_id, row.blob_id)
    live: bool = row.expires_at_ms > now_ms
    return live


def purge_shares(conn: Connection, now_ms: int, limit: int) -> int:
    """See :meth:`server.storage.base.ShareStore.purge_expired`."""
    if limit <= 0:
        return 0
    expired = conn.execute(
        select(_sl.c.share_id, _sl.c.blob_id)
        .where(_sl.c.expires_at_ms <= now_ms)
        .order_by(_sl.c.expires_at_ms)
        .limit(limit)
        .with_for_update(skip_locked=True)
    ).all()
    if not expired:
        return 0
    conn.execute(delete(_sl).where(_sl.c.share_id.in_([s for s, _ in expired])))
    blob_ids = [b for _, b in expired]
    conn.execute(delete(blob_chunks).where(blob_chunks.c.blob_id.in_(blob_ids)))
    conn.execute(delete(blobs).where(blobs.c.blob_id.in_(blob_ids)))
    return len(expired)


# --- nonces ----------------------------------------------------------------------------


def nonce_issue(conn: Connection, nonce: bytes, purpose: str, expires_at_ms: int) -> None:
    """See :meth:`server.storage.base.NonceStore.issue`.

    Raises:
        ValueError: the nonce was issued before.
    """
    if conn.execute(select(nonces.c.purpose).where(nonces.c.nonce == nonce)).first() is not None:
        raise ValueError("nonce issued twice")
    conn.execute(insert(nonces).values(nonce=nonce, purpose=purpose, expires_at_ms=expires_at_ms))


def nonce_consume(conn: Connection, nonce: bytes, purpose: str, now_ms: int) -> bool:
    """See :meth:`server.storage.base.NonceStore.consume`."""
    row = conn.execute(
        delete(nonces)
        .where(nonces.c.nonce == nonce)
        .returning(nonces.c.purpose, nonces.c.expires_at_ms)
    ).first()
    return row is not None and row.purpose == purpose and row.expires_at_ms > now_ms


def purge_nonces(conn: Connection, now_ms: int, limit: int) -> int:
    """See :meth:`server.storage.base.NonceStore.purge_expired`."""
    if limit <= 0:
        return 0
    expired = list(
        conn.execute(
            select(nonces.c.nonce)
            .where(nonces.c.expires_at_ms <= now_ms)
            .order_by(nonces.c.expires_at_ms)
            .limit(limit)
            .with_for_update(skip_locked=True)
        ).scalars()
    )
    if expired:
        conn.execute(delete(nonces).where(nonces.c.nonce.in_(expired)))
    return len(expired)


def ping(conn: Connection) -> None:
    """A trivial round trip."""
    conn.execute(select(literal(1))).scalar_one()
