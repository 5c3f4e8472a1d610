"""Grouped sends: the checks and changes of many sends against state read once.

SQLite's writer (:func:`server.storage.sqlite_hot.accept_many`) and PostgreSQL's
(:mod:`server.storage.pg_hot`) read, for a whole group of sends, the idempotency
records of their ids and the addressed users' devices with their counters, run each
send's checks here in memory, in order, and write what :class:`AcceptGroup` collected
in a few set-based statements. Each send gets the outcome it would have had run alone
after the ones before it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .base import Acceptance, AcceptOutcome, IdempotencyConflict, QueueFull
from .memory import device_mismatch

__all__ = ["AcceptGroup"]


@dataclass
class AcceptGroup:
    """The state a group of sends needs (read once from the database, for every send of
    the group), and what the group writes; :meth:`accept` runs one send's checks and
    changes against it."""

    records: dict[tuple[str, int, bytes], tuple[bytes, int]] = field(default_factory=dict)
    """Idempotency records of the group's ids: key -> (digest, accepted_at_ms)."""
    current: dict[str, set[int]] = field(default_factory=dict)
    """Every addressed user's devices (a user without an account is absent)."""
    counters: dict[tuple[str, int], list[int]] = field(default_factory=dict)
    """``[next_seq, queued]`` of each of those devices."""
    changed: dict[tuple[str, int], list[int]] = field(default_factory=dict)
    """The counters the group changed (to write)."""
    rows: list[tuple[Any, ...]] = field(default_factory=list)
    """Queue rows to insert."""
    recorded: list[tuple[Any, ...]] = field(default_factory=list)
    """Idempotency records to insert."""

    def accept(
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
        """One send of the group (after :func:`~server.storage.memory.check_addressed`)
        against the group's state, as :func:`server.storage.sql_ops.accept` would run
        it after the sends before it: the same checks in the same order (idempotency
        record, unknown account, device sets, quota); a refusal changes nothing.

        Raises:
            IdempotencyConflict: the id was accepted before with another digest.
            UnknownAccount: an addressed user does not exist.
            QueueFull: an addressed device's queue is at ``queue_quota``.
        """
        key = (sender_user, sender_device, client_msg_id)
        previous = self.records.get(key)
        if previous is not None:
            if previous[0] != digest:
                raise IdempotencyConflict(client_msg_id.hex())
            return Acceptance(accepted_at_ms=previous[1], deliveries=(), duplicate=True)
        mismatch = device_mismatch(addressed, self.current, sender_user, sender_device)
        if mismatch is not None:
            return mismatch
        targets = [(u, d) for u, devs in addressed for d, _ in devs]
        for target in targets:
            if self.counters[target][1] + 1 > queue_quota:
                raise QueueFull(*target)
        seqs: dict[tuple[str, int], int] = {}
        for target in targets:
            counter = self.counters[target]
            seqs[target] = counter[0]
            counter[0] += 1
            counter[1] += 1
            self.changed[target] = counter
        self.rows.extend(
            (u, d, seqs[(u, d)], sender_user, sender_device, now_ms, expires_at_ms, ct)
            for u, devs in addressed
            for d, ct in devs
        )
        self.recorded.append((sender_user, sender_device, client_msg_id, digest, now_ms))
        self.records[key] = (digest, now_ms)
        return Acceptance(
            accepted_at_ms=now_ms,
            deliveries=tuple((u, d, seqs[(u, d)]) for u, d in targets),
            duplicate=False,
        )
