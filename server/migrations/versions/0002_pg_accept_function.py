"""PostgreSQL: ``relay_accept``, the whole of a send in one call.

The relay's hot path on PostgreSQL (:mod:`server.storage.pg_hot`) stores a send with
one ``SELECT * FROM relay_accept(...)`` in autocommit mode: one round trip and one
commit instead of BEGIN, five statements and COMMIT (``docs/storage.md``: the
figures). The function does exactly what :func:`server.storage.sql_ops.accept` does,
in the same order, and answers with rows that :mod:`server.storage.pg_hot` turns into
the same outcomes (see :data:`ACCEPT_FUNCTION` for the row format). Nothing changes
on SQLite (its hot path is raw SQL on the event loop); no table changes.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24
"""

from __future__ import annotations

from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | None = None
depends_on: str | None = None

ACCEPT_FUNCTION = r"""
CREATE OR REPLACE FUNCTION relay_accept(
    p_su text, p_sd bigint, p_id bytea, p_digest bytea,
    p_now bigint, p_exp bigint, p_quota bigint,
    p_users text[], p_tu text[], p_td bigint[], p_tct bytea[]
) RETURNS TABLE (
    o_status smallint, o_user text, o_device bigint, o_value bigint,
    o_missing bigint[], o_extra bigint[]
)
LANGUAGE plpgsql VOLATILE
-- Plan each statement once per session: custom plans (the default for the first
-- calls, and whenever they look cheaper) re-plan every statement on every call,
-- which cost three times the function's run time.
SET plan_cache_mode = force_generic_plan
AS $fn$
-- One send (server.storage.sql_ops.accept). p_users: the addressed users in the
-- send's order; p_tu/p_td/p_tct: one (user, device, ciphertext) per target, in order.
-- Rows answered (o_status):
--   1 accepted: (user, device, seq) per target in order; one row of NULLs if none
--   2 duplicate (same id and digest): o_value = the original accepted_at_ms
--   3 idempotency conflict (same id, other digest)
--   4 unknown account: o_user (the first in order)
--   5 device mismatch: (user, missing, extra) per mismatched user, in order
--   6 queue full: (user, device) of the first full target in order
-- Statuses 2-6 wrote nothing. A target device that went after the device-set check
-- raises serialization_failure: the caller runs the send again.
DECLARE
    v_digest bytea;
    v_at bigint;
    v_user text;
    v_device bigint;
    v_locked bigint;
BEGIN
    SELECT i.digest, i.accepted_at_ms INTO v_digest, v_at FROM idempotency i
     WHERE i.sender_user = p_su AND i.sender_device = p_sd AND i.client_msg_id = p_id;
    IF FOUND THEN
        IF v_digest = p_digest THEN
            RETURN QUERY SELECT 2::smallint, NULL::text, NULL::bigint, v_at,
                NULL::bigint[], NULL::bigint[];
        ELSE
            RETURN QUERY SELECT 3::smallint, NULL::text, NULL::bigint, NULL::bigint,
                NULL::bigint[], NULL::bigint[];
        END IF;
        RETURN;
    END IF;

    SELECT a.u INTO v_user FROM unnest(p_users) WITH ORDINALITY a(u, i)
     WHERE NOT EXISTS (SELECT 1 FROM accounts c WHERE c.user_id = a.u)
     ORDER BY a.i LIMIT 1;
    IF FOUND THEN
        RETURN QUERY SELECT 4::smallint, v_user, NULL::bigint, NULL::bigint,
            NULL::bigint[], NULL::bigint[];
        RETURN;
    END IF;

    RETURN QUERY
    SELECT 5::smallint, a.u, NULL::bigint, NULL::bigint, m.missing, m.extra
      FROM unnest(p_users) WITH ORDINALITY a(u, i)
     CROSS JOIN LATERAL (
        SELECT ARRAY(
                   SELECT d.device_id FROM devices d
                    WHERE d.user_id = a.u AND NOT (a.u = p_su AND d.device_id = p_sd)
                   EXCEPT
                   SELECT t.dv FROM unnest(p_tu, p_td) t(u, dv) WHERE t.u = a.u
                   ORDER BY 1) AS missing,
               ARRAY(
                   SELECT t.dv FROM unnest(p_tu, p_td) t(u, dv) WHERE t.u = a.u
                   EXCEPT
                   SELECT d.device_id FROM devices d
                    WHERE d.user_id = a.u AND NOT (a.u = p_su AND d.device_id = p_sd)
                   ORDER BY 1) AS extra
     ) m
     WHERE cardinality(m.missing) > 0 OR cardinality(m.extra) > 0
     ORDER BY a.i;
    IF FOUND THEN
        RETURN;
    END IF;

    -- Lock the targets' rows in one order (byte order: Python's str order, the order
    -- every other multi-device locker uses), so two sends never deadlock.
    PERFORM 1 FROM devices d
      WHERE (d.user_id, d.device_id) IN (SELECT t.u, t.dv FROM unnest(p_tu, p_td) t(u, dv))
      ORDER BY d.user_id COLLATE "C", d.device_id
      FOR UPDATE OF d;
    GET DIAGNOSTICS v_locked = ROW_COUNT;
    IF v_locked < coalesce(cardinality(p_tu), 0) THEN
        RAISE EXCEPTION 'an addressed device went during a send'
            USING ERRCODE = 'serialization_failure';
    END IF;

    SELECT t.u, t.dv INTO v_user, v_device
      FROM unnest(p_tu, p_td) WITH ORDINALITY t(u, dv, i)
      JOIN devices d ON d.user_id = t.u AND d.device_id = t.dv
     WHERE d.queued >= p_quota
     ORDER BY t.i LIMIT 1;
    IF FOUND THEN
        RETURN QUERY SELECT 6::smallint, v_user, v_device, NULL::bigint,
            NULL::bigint[], NULL::bigint[];
        RETURN;
    END IF;

    RETURN QUERY
    WITH s AS (
        UPDATE devices d SET next_seq = d.next_seq + 1, queued = d.queued + 1
          FROM unnest(p_tu, p_td) t(u, dv)
         WHERE d.user_id = t.u AND d.device_id = t.dv
        RETURNING d.user_id AS u, d.device_id AS dv, d.next_seq - 1 AS seq
    ), q AS (
        INSERT INTO message_queue (user_id, device_id, seq, sender_user, sender_device,
                                   accepted_at_ms, expires_at_ms, ciphertext)
        SELECT t.u, t.dv, s.seq, p_su, p_sd, p_now, p_exp, t.ct
          FROM unnest(p_tu, p_td, p_tct) t(u, dv, ct)
          JOIN s ON s.u = t.u AND s.dv = t.dv
    ), r AS (
        INSERT INTO idempotency (sender_user, sender_device, client_msg_id, digest,
                                 accepted_at_ms)
        VALUES (p_su, p_sd, p_id, p_digest, p_now)
    )
    SELECT 1::smallint, t.u, t.dv, s.seq, NULL::bigint[], NULL::bigint[]
      FROM unnest(p_tu, p_td) WITH ORDINALITY t(u, dv, i)
      JOIN s ON s.u = t.u AND s.dv = t.dv
     ORDER BY t.i;
    IF NOT FOUND THEN
        RETURN QUERY SELECT 1::smallint, NULL::text, NULL::bigint, NULL::bigint,
            NULL::bigint[], NULL::bigint[];
    END IF;
END
$fn$
"""
"""The function (PostgreSQL only)."""

DROP_ACCEPT_FUNCTION = (
    "DROP FUNCTION IF EXISTS relay_accept("
    "text, bigint, bytea, bytea, bigint, bigint, bigint, text[], text[], bigint[], bytea[])"
)


def upgrade() -> None:
    """Create ``relay_accept`` on PostgreSQL."""
    if op.get_bind().dialect.name == "postgresql":
        op.execute(ACCEPT_FUNCTION)


def downgrade() -> None:
    """Drop ``relay_accept``."""
    if op.get_bind().dialect.name == "postgresql":
        op.execute(DROP_ACCEPT_FUNCTION)
