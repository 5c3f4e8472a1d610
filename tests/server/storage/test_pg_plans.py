"""PostgreSQL query plans: the hot statements use their indexes even in the worst case
(a churned queue vacuumed down to nothing and analysed as empty), with the relay's
session settings. Without ``enable_seqscan=off`` the same plans are sequential scans
(docs/storage.md shows both)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import asyncpg
import pytest
from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.sql import Executable

from server.storage import sql_ops
from server.storage.sql import postgres_engine
from tests.server.pg import pg_url, truncate_all

__all__ = ["pg_url"]

pytestmark = pytest.mark.asyncio

HOT: list[tuple[str, Executable, dict[str, object]]] = [
    ("fetch", sql_ops._FETCH, {"u": "b0", "d": 1, "after": 0, "now": 1, "limit": 10}),
    ("ack", sql_ops._ACK, {"u": "b0", "d": 1, "seqs": [1, 2, 3]}),
    ("depth", sql_ops._DEPTH, {"u": "b0", "d": 1}),
    ("claim", sql_ops._TAKE_ONE_TIME, {"u": "b0", "d": 1, "kind": 0}),
    ("expired", sql_ops._EXPIRED_QUEUE, {"now": 1, "limit": 100}),
    ("delete expired", sql_ops._DELETE_QUEUED, {"u": "b0", "d": 1, "seq": 1}),
    ("old records", sql_ops._OLD_RECORDS, {"cutoff": 1, "limit": 100}),
    ("delete record", sql_ops._DELETE_RECORD, {"su": "a0", "sd": 1, "id": b"x"}),
    ("idempotency", sql_ops._IDEMPOTENCY, {"su": "a0", "sd": 1, "id": b"x"}),
    ("addressed devices", sql_ops._ADDRESSED_DEVICES, {"users": ["a0", "b0"]}),
    ("next seq", sql_ops._NEXT_SEQ, {"u": "b0", "d": 1}),
]


async def churn(url: str) -> None:
    """Push 3,000 rows through the queue and prekeys, then VACUUM ANALYZE them empty."""
    dsn = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("INSERT INTO accounts VALUES ('b0', 'm', 1, 'l', 'd', 0, 0)")
        await conn.execute(
            "INSERT INTO devices (user_id, device_id, position, signing_pk, x25519_ik, pq,"
            " next_seq, queued) VALUES ('b0', 1, 0, 's', 'x', true, 1, 0)"
        )
        await conn.execute(
            "INSERT INTO message_queue SELECT 'b0', 1, g, 'a0', 1, 1, 100000, 'ct'"
            " FROM generate_series(1, 3000) g"
        )
        await conn.execute(
            "INSERT INTO one_time_prekeys SELECT 'b0', 1, 0, g, 'pk'"
            " FROM generate_series(1, 3000) g"
        )
        await conn.execute("DELETE FROM message_queue; DELETE FROM one_time_prekeys")
        await conn.execute("VACUUM ANALYZE message_queue")
        await conn.execute("VACUUM ANALYZE one_time_prekeys")
        pages = await conn.fetchval("SELECT relpages FROM pg_class WHERE relname = 'message_queue'")
        assert pages == 0  # the worst case: truncated away, estimated empty
    finally:
        await conn.close()


async def plans(url: str, settings: dict[str, str]) -> Iterator[tuple[str, str, str]]:
    """(statement name, plan cache mode, plan text) of every hot statement."""
    engine = postgres_engine(url)
    explaining = False

    @event.listens_for(engine.sync_engine, "before_cursor_execute", retval=True)
    def _explain(
        _c: Any, _cur: Any, statement: str, params: Any, _ctx: Any, _many: bool
    ) -> tuple[str, Any]:
        return ("EXPLAIN " + statement if explaining else statement), params

    out: list[tuple[str, str, str]] = []
    try:
        async with engine.connect() as conn:
            for key, value in settings.items():
                await conn.exec_driver_sql(f"SET {key} = {value}")
            for mode in ("auto", "force_generic_plan"):
                await conn.exec_driver_sql(f"SET plan_cache_mode = {mode}")
                for name, stmt, params in HOT:
                    explaining = True
                    try:
                        rows = (await conn.execute(stmt, params)).all()
                    finally:
                        explaining = False
                    out.append((name, mode, "\n".join(str(r[0]) for r in rows)))
            await conn.rollback()
    finally:
        await engine.dispose()
    return iter(out)


async def test_hot_statements_use_indexes_on_an_empty_churned_queue(pg_url: str) -> None:
    await truncate_all(pg_url)
    await churn(pg_url)
    for name, mode, plan in await plans(pg_url, {}):
        assert "Seq Scan" not in plan, f"{name} ({mode}):\n{plan}"
        assert "Index" in plan, f"{name} ({mode}):\n{plan}"


async def test_without_the_setting_the_planner_scans(pg_url: str) -> None:
    """The check above can fail: the same statements without the relay's setting."""
    await truncate_all(pg_url)
    await churn(pg_url)
    scanned = {
        name
        for name, _, plan in await plans(pg_url, {"enable_seqscan": "on"})
        if "Seq Scan" in plan
    }
    assert {"fetch", "ack", "claim"} <= scanned
