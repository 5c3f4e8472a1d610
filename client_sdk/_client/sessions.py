"""Session records in the store, with skipped message keys as rows of their own
(issue 4 "Store", DESIGN 4.4, 6).

A peer device's :class:`~e2ee.session.SessionRecord` is stored in ``SESSIONS`` under
``lookup(user, device)`` *without* its skipped message keys; each skipped key is a
row of ``SKIPPED_KEYS`` under ``lookup || base key || ratchet key || counter``. A
message that arrives in order (the common case) then rewrites only the small
session row, never up to ``MAX_STORED_SKIPPED`` keys per session, and a skipped key
that is used or evicted is one deleted row.

Only decryption reads or changes skipped keys: :func:`load` attaches them when asked
(``skipped=True``); :meth:`LoadedRecord.save` writes the session row and the
difference of the skipped rows against what was loaded, and deletes the rows of
sessions the record no longer holds (evicted beyond ``MAX_SESSIONS_PER_DEVICE``), even
when the skipped keys were not loaded. The eviction order of the core (oldest
inserted first) survives a reload: each row carries its position.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Final

from e2ee import cbor
from e2ee.errors import E2EEError
from e2ee.session import SessionRecord

from ..errors import StoreCorrupt, UsageError
from ..store import Table, Transaction

__all__ = ["LoadedRecord", "delete_all", "load"]

_VERSION: Final = 1
_KEY_SIZE: Final = 32
_U63: Final = 2**63 - 1
_MAX_ROW: Final = 256

SkippedKey = tuple[bytes, bytes, int]
"""``(session base key, ratchet public key, counter)``."""


def _row_key(lookup: bytes, base_key: bytes, ratchet_pk: bytes, n: int) -> bytes:
    return lookup + base_key + ratchet_pk + n.to_bytes(4, "big")


def _encode_row(message_key: bytes, at_ms: int, position: int) -> bytes:
    return cbor.encode({0: _VERSION, 1: message_key, 2: at_ms, 3: position})


def _decode_row(lookup: bytes, key: bytes, value: bytes) -> tuple[SkippedKey, bytes, int, int]:
    rest = key[len(lookup) :]
    if not key.startswith(lookup) or len(rest) != 2 * _KEY_SIZE + 4:
        raise StoreCorrupt("a skipped-key row has a malformed key", table=Table.SKIPPED_KEYS)
    try:
        m = cbor.expect_map(
            cbor.decode(value, max_size=_MAX_ROW), "skipped key", frozenset(range(4))
        )
        if m[0] != _VERSION:
            raise StoreCorrupt("unknown skipped-key row version", table=Table.SKIPPED_KEYS)
        message_key = cbor.field_bytes(m, 1, "message key", max_size=_MAX_ROW)
        at_ms = cbor.field_int(m, 2, "stored at", 0, _U63)
        position = cbor.field_int(m, 3, "position", 0, _U63)
    except E2EEError as exc:
        raise StoreCorrupt(
            f"a skipped-key row does not decode: {type(exc).__name__}", table=Table.SKIPPED_KEYS
        ) from exc
    base_key, ratchet_pk = rest[:_KEY_SIZE], rest[_KEY_SIZE : 2 * _KEY_SIZE]
    n = int.from_bytes(rest[2 * _KEY_SIZE :], "big")
    return (base_key, ratchet_pk, n), message_key, at_ms, position


@dataclass(slots=True)
class LoadedRecord:
    """A session record as loaded from the store, remembering what the store held
    so :meth:`save` writes only the difference."""

    lookup: bytes
    record: SessionRecord | None
    with_skipped: bool
    stored_sessions: frozenset[bytes] = frozenset()
    """Base keys of the sessions the stored row held."""
    stored_skipped: dict[SkippedKey, int] = field(default_factory=dict)
    """Skipped keys as loaded (only with ``with_skipped``), with their positions."""

    async def save(self, tx: Transaction, record: SessionRecord) -> None:
        """Store ``record`` (the same object as :attr:`record`, or a new one) in ``tx``.

        Raises:
            UsageError: ``record`` has skipped keys that were not loaded (a decrypt on a
                record loaded with ``skipped=False`` would lose them).
        """
        current = {s.base_key for s in record.sessions}
        for base_key in self.stored_sessions - current:  # evicted: its rows go too
            await tx.delete_prefix(Table.SKIPPED_KEYS, self.lookup + base_key)
        detached: list[OrderedDict[tuple[bytes, int], tuple[bytes, int]]] = []
        try:
            next_position = max(self.stored_skipped.values(), default=-1) + 1
            for session in record.sessions:
                skipped = session.ratchet.skipped
                detached.append(skipped)
                if skipped and not self.with_skipped:
                    raise UsageError("skipped keys changed on a record loaded without them")
                for (ratchet_pk, n), (message_key, at_ms) in skipped.items():
                    name = (session.base_key, ratchet_pk, n)
                    if name in self.stored_skipped:
                        continue
                    await tx.put(
                        Table.SKIPPED_KEYS,
                        _row_key(self.lookup, *name),
                        _encode_row(message_key, at_ms, next_position),
                    )
                    self.stored_skipped[name] = next_position
                    next_position += 1
                session.ratchet.skipped = OrderedDict()
            if self.with_skipped:
                kept = {
                    (s.base_key, pk, n)
                    for s, d in zip(record.sessions, detached, strict=True)
                    for pk, n in d
                }
                for name in [k for k in self.stored_skipped if k not in kept]:
                    if name[0] in current:  # rows of evicted sessions are gone already
                        await tx.delete(Table.SKIPPED_KEYS, _row_key(self.lookup, *name))
                    del self.stored_skipped[name]
            await tx.put(Table.SESSIONS, self.lookup, record.to_bytes())
        finally:
            # detached may be shorter when a put failed: restore what was taken
            for session, skipped in zip(record.sessions, detached, strict=False):
                session.ratchet.skipped = skipped
        self.record = record
        self.stored_sessions = frozenset(current)


async def load(tx: Transaction, lookup: bytes, *, skipped: bool) -> LoadedRecord:
    """The session record of the peer device ``lookup`` (``record`` is ``None`` when
    there is none), with its skipped keys attached when ``skipped``.

    Raises:
        StoreCorrupt: the record or a skipped-key row does not decode, or a row names a
            session the record does not hold.
    """
    data = await tx.get(Table.SESSIONS, lookup)
    if data is None:
        return LoadedRecord(lookup, None, skipped)
    try:
        record = SessionRecord.from_bytes(data)
    except E2EEError as exc:
        raise StoreCorrupt("a session record does not decode", table=Table.SESSIONS) from exc
    sessions = {s.base_key: s for s in record.sessions}
    # A record written before skipped keys had rows holds them inline: load the rows
    # too, so the next save moves the inline keys to rows instead of losing them.
    skipped = skipped or any(s.ratchet.skipped for s in record.sessions)
    loaded = LoadedRecord(lookup, record, skipped, frozenset(sessions))
    if not skipped:
        return loaded
    rows = [_decode_row(lookup, k, v) for k, v in await tx.scan(Table.SKIPPED_KEYS, lookup)]
    rows.sort(key=lambda row: row[3])
    for name, message_key, at_ms, position in rows:
        session = sessions.get(name[0])
        if session is None:
            raise StoreCorrupt(
                "a skipped key names a session that is not stored", table=Table.SKIPPED_KEYS
            )
        session.ratchet.skipped[(name[1], name[2])] = (message_key, at_ms)
        loaded.stored_skipped[name] = position
    return loaded


async def delete_all(tx: Transaction, lookup: bytes) -> None:
    """Delete the session record of ``lookup`` and all its skipped keys."""
    await tx.delete(Table.SESSIONS, lookup)
    await tx.delete_prefix(Table.SKIPPED_KEYS, lookup)
