"""The PostgreSQL hot path (server/storage/pg_hot.py and the ``relay_accept`` function
of migration 0002): the same outcomes as the SQLAlchemy Core versions, the function's
rows, concurrent sends from two storages, lost races, a killed connection, the
migration's function, and index plans for the raw statements."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
import pytest_asyncio
from alembic import command
from sqlalchemy.engine import make_url

from server.storage import open_storage, pg_hot, warn_without_autovacuum
from server.storage.base import (
    Acceptance,
    DeviceMismatch,
    MismatchedDevices,
    QueueFull,
    Storage,
    StorageUnavailable,
    UnknownAccount,
)
from server.storage.migrate import alembic_config, upgrade_database
from server.storage.pg_hot import HOT_STATEMENTS, PgHot
from server.storage.sql import PG_APPLICATION_NAME, PostgresRunner, SqlStorage, postgres_engine
from tests.server.pg import pg_url, scratch_database, truncate_all

from .helpers import QUOTA, T0, TTL_MS, digest, make
from .test_pg_plans import churn

__all__ = ["pg_url"]

pytestmark = pytest.mark.asyncio

Addressed = list[tuple[str, list[tuple[int, bytes]]]]


def _dsn(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


async def _admin(url: str) -> asyncpg.Connection:
    conn: asyncpg.Connection = await asyncpg.connect(_dsn(url))
    return conn


async def send(
    s: Storage,
    msg_id: bytes,
    addressed: Addressed,
    *,
    sender: tuple[str, int] = ("alice", 1),
    quota: int = QUOTA,
    body: bytes | None = None,
) -> object:
    return await s.messages.accept(
        sender[0],
        sender[1],
        msg_id,
        digest(msg_id if body is None else body),
        addressed,
        T0,
        T0 + TTL_MS,
        quota,
    )


async def outcome(coro: object) -> object:
    """The operation's result, or its error as (type name, args)."""
    assert asyncio.iscoroutine(coro)
    try:
        return await coro
    except Exception as exc:  # compared, not swallowed
        return (type(exc).__name__, exc.args)


async def scenario(s: Storage) -> list[object]:
    """Every outcome of accept, fetch, ack, depth and get_device, in order."""
    await make(s, "alice", [1, 2])
    await make(s, "bob", [10, 11])
    await make(s, "carol", [20])
    await make(s, "solo", [1])
    bob = [(10, b"b10"), (11, b"b11")]
    steps = [
        send(s, b"m1", [("bob", bob), ("alice", [(2, b"a2")])]),
        send(s, b"m1", [("bob", bob), ("alice", [(2, b"a2")])]),  # duplicate
        send(s, b"m1", [("bob", bob), ("alice", [(2, b"a2")])], body=b"other"),  # conflict
        send(s, b"m2", [("bob", [(12, b"x"), (10, b"y")]), ("alice", [])]),  # mismatch
        send(s, b"m3", [("bob", [(10, b"y")]), ("zed", []), ("yan", [])]),  # unknown: zed
        send(s, b"m4", [("carol", [(20, b"c")]), ("alice", [(2, b"a")])], quota=1),
        send(s, b"m5", [("alice", [(2, b"a")]), ("carol", [(20, b"c")])], quota=1),  # full
        send(s, b"m5", [("alice", [(2, b"a")]), ("carol", [(20, b"c")])], quota=2),
        send(s, b"m6", [("solo", [])], sender=("solo", 1)),  # no target: accepted
        send(s, b"m7", [("bob", bob), ("alice", [(2, b"a2")])], sender=("alice", 2)),  # 2 is me
        s.messages.fetch("bob", 10, 0, 10, T0),
        s.messages.fetch("bob", 10, 1, 10, T0),
        s.messages.fetch("bob", 10, 0, 0, T0),
        s.messages.fetch("carol", 20, 0, 10, T0 + TTL_MS),  # expired
        s.messages.depth("carol", 20),
        s.messages.ack("bob", 10, [1, 1, 99]),
        s.messages.ack("bob", 10, []),
        s.messages.depth("bob", 10),
        s.messages.depth("nobody", 1),
        s.messages.fetch("bob", 10, 0, 10, T0),
        send(s, b"m8", [("bob", bob), ("alice", [(2, b"a2")])]),
        s.accounts.get_device("bob", 11),
        s.accounts.get_device("bob", 12),
    ]
    return [await outcome(step) for step in steps]


@pytest_asyncio.fixture
async def pg_pair(pg_url: str) -> AsyncIterator[tuple[Storage, Storage]]:
    """Two storages on the same database: the hot path and the Core path."""
    engines = [postgres_engine(pg_url), postgres_engine(pg_url)]
    hot = SqlStorage(PostgresRunner(engines[0]), dialect="postgresql")
    core = SqlStorage(PostgresRunner(engines[1]), dialect="postgresql", hot=False)
    try:
        yield hot, core
    finally:
        await hot.aclose()
        await core.aclose()


async def test_hot_path_answers_exactly_as_core(
    pg_url: str, pg_pair: tuple[Storage, Storage]
) -> None:
    hot, core = pg_pair
    await truncate_all(pg_url)
    by_hot = await scenario(hot)
    await truncate_all(pg_url)
    by_core = await scenario(core)
    assert by_hot == by_core
    # and the scenario says something: every kind of outcome happened
    kinds = {type(o).__name__ if not isinstance(o, tuple) else o[0] for o in by_hot}
    assert {"Acceptance", "DeviceMismatch", "IdempotencyConflict", "UnknownAccount"} <= kinds
    assert {"QueueFull", "list", "int", "DeviceRecord", "NoneType"} <= kinds
    assert by_hot[4] == ("UnknownAccount", UnknownAccount("zed").args)
    assert by_hot[6] == ("QueueFull", QueueFull("alice", 2).args)  # the first full, in order
    assert by_hot[3] == DeviceMismatch(
        (MismatchedDevices("bob", (11,), (12,)), MismatchedDevices("alice", (2,), ()))
    )
    accepted = by_hot[7]
    assert isinstance(accepted, Acceptance)
    # two refused sends to the full alice.2 (m4, m5) took no sequence number
    assert by_hot[5] == by_hot[6]
    assert accepted.deliveries == (("alice", 2, 2), ("carol", 20, 1))


async def test_relay_accept_rows(pg_url: str) -> None:
    """The function's row format (server/migrations/versions/0002_...)."""
    await truncate_all(pg_url)
    storage = await open_storage(pg_url)
    try:
        await make(storage, "alice", [1, 2, 3])
        await make(storage, "bob", [10, 11, 12])
    finally:
        await storage.aclose()
    conn = await _admin(pg_url)
    call = "SELECT * FROM relay_accept($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"
    try:
        # bob: 12 and 10 missing, 13 and 14 extra; alice (the sender is 1): 2 missing
        rows = await conn.fetch(
            call, "alice", 1, b"id", b"d", T0, T0 + 1, 10, ["bob", "alice"],
            ["bob", "bob", "bob", "alice"], [14, 11, 13, 3], [b"a", b"b", b"c", b"d"],
        )  # fmt: skip
        assert [tuple(r) for r in rows] == [
            (5, "bob", None, None, [10, 12], [13, 14]),
            (5, "alice", None, None, [2], []),
        ]
        rows = await conn.fetch(
            call, "alice", 1, b"id", b"d", T0, T0 + 1, 10, ["bob", "alice"],
            ["bob", "bob", "bob", "alice", "alice"], [12, 10, 11, 3, 2], [b"x"] * 5,
        )  # fmt: skip
        assert [tuple(r) for r in rows] == [
            (1, "bob", 12, 1, None, None),
            (1, "bob", 10, 1, None, None),
            (1, "bob", 11, 1, None, None),
            (1, "alice", 3, 1, None, None),
            (1, "alice", 2, 1, None, None),
        ]
        rows = await conn.fetch(
            call, "alice", 1, b"id", b"d", T0 + 5, T0 + 9, 10, [], [], [], []
        )  # a retry (even with other content: the digest decides)
        assert [tuple(r) for r in rows] == [(2, None, None, T0, None, None)]
        rows = await conn.fetch(call, "alice", 1, b"id", b"e", T0, T0, 10, [], [], [], [])
        assert [tuple(r) for r in rows] == [(3, None, None, None, None, None)]
        before = await conn.fetchval("SELECT sum(next_seq) FROM devices")
        rows = await conn.fetch(
            call, "alice", 1, b"id2", b"d", T0, T0 + 1, 1, ["alice", "bob"],
            ["alice", "alice", "bob", "bob", "bob"], [2, 3, 10, 11, 12], [b"x"] * 5,
        )  # fmt: skip
        assert [tuple(r) for r in rows] == [(6, "alice", 2, None, None, None)]
        assert await conn.fetchval("SELECT sum(next_seq) FROM devices") == before
        assert await conn.fetchval("SELECT count(*) FROM idempotency") == 1
    finally:
        await conn.close()


async def test_concurrent_sends_from_two_storages(pg_url: str) -> None:
    """Sends addressing the same devices in opposite orders from two processes' worth
    of connections: no deadlock surfaces, every device numbers its queue 1..n."""
    await truncate_all(pg_url)
    first = await open_storage(pg_url)
    second = await open_storage(pg_url)
    n = 120
    try:
        await make(first, "alice", [1])
        await make(first, "bob", [10, 11])
        await make(first, "carol", [20, 21])
        await make(first, "zoe", [30])
        forward: Addressed = [
            ("bob", [(10, b"x"), (11, b"x")]),
            ("carol", [(20, b"x"), (21, b"x")]),
            ("zoe", [(30, b"x")]),
            ("alice", []),
        ]
        backward: Addressed = [(u, list(reversed(d))) for u, d in reversed(forward)]
        results = await asyncio.gather(
            *(
                send(
                    first if i % 2 else second,
                    b"c%d" % i,
                    forward if i % 3 else backward,
                    quota=10 * n,
                )
                for i in range(n)
            )
        )
        assert all(isinstance(r, Acceptance) and not r.duplicate for r in results)
        for user, device in [("bob", 10), ("bob", 11), ("carol", 20), ("carol", 21), ("zoe", 30)]:
            seqs = [m.seq for m in await first.messages.fetch(user, device, 0, 10 * n, T0)]
            assert seqs == list(range(1, n + 1))
            assert await second.messages.depth(user, device) == n
        # one send's numbers are the same position on every device it reached
        for r in results:
            assert isinstance(r, Acceptance)
            assert len({seq for _, _, seq in r.deliveries}) >= 1
    finally:
        await first.aclose()
        await second.aclose()


async def test_cross_traffic_of_two_nodes_never_deadlocks(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two relay nodes, each sending to a device connected to the other and
    acknowledging for a device connected to itself, in the same batches: every batch
    takes its device locks at once, in the one order, so none deadlocks (a deadlock
    costs PostgreSQL's deadlock timeout and a call-by-call rerun; before the acking
    devices were locked with the rest, 100 rounds each met several)."""
    await truncate_all(pg_url)
    reruns: list[str] = []
    original = PgHot._fetch

    async def counting(self: PgHot, query: str, *args: object) -> list[Any]:
        if query in (pg_hot._ACCEPT, pg_hot._ACK):
            reruns.append(query)
        return await original(self, query, *args)

    monkeypatch.setattr(PgHot, "_fetch", counting)
    first = await open_storage(pg_url)
    second = await open_storage(pg_url)
    try:
        for user in ("p", "q", "s1", "s2"):
            await make(first, user, [1])

        async def node(s: Storage, sender: str, target: str, acker: str) -> int:
            deleted = 0
            for i in range(100):
                accepted, *acked = await asyncio.gather(
                    send(s, b"%d" % i, [(target, [(1, b"x")])], sender=(sender, 1)),
                    *([s.messages.ack(acker, 1, [i - 1])] if i >= 2 else []),
                )
                assert isinstance(accepted, Acceptance) and not accepted.duplicate
                deleted += sum(n for n in acked if isinstance(n, int))
            return deleted

        gone_p, gone_q = await asyncio.gather(
            node(first, "s1", "q", "p"), node(second, "s2", "p", "q")
        )
        assert reruns == []
        assert await first.messages.depth("p", 1) == 100 - gone_p
        assert await first.messages.depth("q", 1) == 100 - gone_q
    finally:
        await first.aclose()
        await second.aclose()


async def test_one_client_id_sent_concurrently_is_stored_once(pg_url: str) -> None:
    """Concurrent retries of one send race on the idempotency record: the losers run
    again (unique violation) and get the original acceptance."""
    await truncate_all(pg_url)
    first = await open_storage(pg_url)
    second = await open_storage(pg_url)
    try:
        await make(first, "alice", [1])
        await make(first, "bob", [10])
        addressed: Addressed = [("bob", [(10, b"once")]), ("alice", [])]
        results = await asyncio.gather(
            *(send(first if i % 2 else second, b"same", addressed) for i in range(20))
        )
        accepted = [r for r in results if isinstance(r, Acceptance)]
        assert len(accepted) == 20
        assert Counter(r.duplicate for r in accepted) == {False: 1, True: 19}
        assert len({r.accepted_at_ms for r in accepted}) == 1
        assert [m.ciphertext for m in await first.messages.fetch("bob", 10, 0, 10, T0)] == [b"once"]
        assert await first.messages.depth("bob", 10) == 1
    finally:
        await first.aclose()
        await second.aclose()


async def test_killed_hot_connections_are_replaced(pg_url: str) -> None:
    await truncate_all(pg_url)
    storage = await open_storage(pg_url, pool_size=2)
    admin = await _admin(pg_url)
    try:
        await make(storage, "alice", [1])
        await make(storage, "bob", [10])
        assert isinstance(await send(storage, b"m1", [("bob", [(10, b"a")])]), Acceptance)
        killed = await admin.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE application_name = $1 AND datname = current_database()",
            PG_APPLICATION_NAME,
        )
        assert killed >= 1
        failures = 0
        for _ in range(4):  # a dead idle connection fails once, then is replaced
            try:
                await storage.messages.depth("bob", 10)
            except StorageUnavailable:
                failures += 1
        assert failures <= 2  # the pool held at most 2 connections
        assert await storage.messages.depth("bob", 10) == 1
        assert isinstance(await send(storage, b"m2", [("bob", [(10, b"b")])]), Acceptance)
        assert [m.seq for m in await storage.messages.fetch("bob", 10, 0, 10, T0)] == [1, 2]
    finally:
        await admin.close()
        await storage.aclose()


async def test_migration_creates_and_drops_the_function() -> None:
    async with scratch_database() as url:
        await asyncio.to_thread(upgrade_database, url)
        conn = await _admin(url)
        exists = "SELECT count(*) FROM pg_proc WHERE proname = 'relay_accept'"
        try:
            assert await conn.fetchval(exists) == 1
            await asyncio.to_thread(command.downgrade, alembic_config(url), "0001")
            assert await conn.fetchval(exists) == 0
            await asyncio.to_thread(upgrade_database, url)
            assert await conn.fetchval(exists) == 1
        finally:
            await conn.close()


RAW_PARAMS: dict[str, tuple[str, tuple[object, ...]]] = {
    "fetch": ("text, bigint, bigint, bigint, bigint", ("b0", 1, 0, 1, 10)),
    "ack": ("text, bigint, bigint[]", ("b0", 1, [1, 2, 3])),
    "depth": ("text, bigint", ("b0", 1)),
    "device": ("text, bigint", ("b0", 1)),
}


async def raw_plans(url: str, seqscan: str) -> dict[str, str]:
    """Generic and custom plans of the hot path's plain statements, on a session with
    the relay's settings (``enable_seqscan`` as given)."""
    conn = await _admin(url)
    out: dict[str, str] = {}
    try:
        await conn.execute(f"SET enable_seqscan = {seqscan}")
        for name, sql in HOT_STATEMENTS.items():
            types, args = RAW_PARAMS[name]
            rows = await conn.fetch("EXPLAIN " + sql, *args)
            out[f"{name} custom"] = "\n".join(r[0] for r in rows)
            await conn.execute(f"PREPARE p_{name} ({types}) AS {sql}")
            await conn.execute("SET plan_cache_mode = force_generic_plan")
            literal = ", ".join(
                "ARRAY[1,2,3]::bigint[]" if isinstance(a, list) else repr(a) for a in args
            )
            rows = await conn.fetch(f"EXPLAIN EXECUTE p_{name} ({literal})")
            out[f"{name} generic"] = "\n".join(r[0] for r in rows)
            await conn.execute("RESET plan_cache_mode")
    finally:
        await conn.close()
    return out


async def test_raw_statements_use_indexes_on_an_empty_churned_queue(pg_url: str) -> None:
    await truncate_all(pg_url)
    await churn(pg_url)
    for name, plan in (await raw_plans(pg_url, "off")).items():
        assert "Seq Scan" not in plan, f"{name}:\n{plan}"
        assert "Index" in plan, f"{name}:\n{plan}"
    scanned = {n for n, plan in (await raw_plans(pg_url, "on")).items() if "Seq Scan" in plan}
    assert {"fetch custom", "ack custom"} <= scanned  # the check above can fail


class _FakeConnection:
    """A hot-path connection whose batch (the group's first statement, in a transaction)
    fails with ``batch_error`` and whose single ``relay_accept`` calls fail for the
    client message id ``b"bad"``."""

    def __init__(self, batch_error: BaseException, *, closes: bool) -> None:
        self.batch_error = batch_error
        self.closes = closes
        self.closed = False
        self.single_calls = 0
        self.transactions = 0

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[None]:
        self.transactions += 1
        yield

    async def fetch(self, query: str, *args: object) -> list[object]:
        if not query.startswith("SELECT * FROM relay_accept("):
            self.closed = self.closes
            raise self.batch_error
        self.single_calls += 1
        if args[2] == b"bad":
            raise asyncpg.CheckViolationError("a bad call")
        return [(1, "bob", 10, self.single_calls, None, None)]

    async def close(self, *, timeout: float | None = None) -> None:
        self.closed = True

    def terminate(self) -> None:
        self.closed = True

    def is_closed(self) -> bool:
        return self.closed

    def is_in_transaction(self) -> bool:
        return False


class _FakePool:
    def __init__(self, conn: _FakeConnection) -> None:
        self.conn = conn

    async def acquire(self) -> _FakeConnection:
        return self.conn

    def release(self, conn: object, *, reusable: bool) -> None:
        pass

    async def aclose(self) -> None:
        pass


async def _three_sends(hot: PgHot) -> list[object]:
    ids = [b"good1", b"bad", b"good2"]
    return await asyncio.gather(
        *(
            outcome(hot.accept("alice", 1, i, digest(i), [("bob", [(10, b"x")])], T0, T0 + 1, 10))
            for i in ids
        )
    )


async def test_a_failed_batch_runs_its_calls_one_by_one() -> None:
    """A batch rolled back by a server error (the session still open) is run again call
    by call, in order: the bad call fails alone, typed, without its parameters."""
    conn = _FakeConnection(asyncpg.CheckViolationError("a bad call"), closes=False)
    hot = PgHot(_FakePool(conn), attempts=1)  # type: ignore[arg-type]
    good1, bad, good2 = await _three_sends(hot)
    assert isinstance(good1, Acceptance) and good1.deliveries == (("bob", 10, 1),)
    assert isinstance(good2, Acceptance) and good2.deliveries == (("bob", 10, 3),)
    assert bad == ("StorageUnavailable", ("CheckViolationError: a bad call",))
    assert conn.single_calls == 3
    assert conn.transactions == 1
    await hot.aclose()


async def test_a_batch_whose_session_ended_fails_every_call() -> None:
    """The server ended the session during the batch (terminated, shut down): whether
    it committed is unknown, so nothing is run again; every call is unavailable."""
    conn = _FakeConnection(asyncpg.AdminShutdownError("terminating connection"), closes=True)
    hot = PgHot(_FakePool(conn), attempts=1)  # type: ignore[arg-type]
    results = await _three_sends(hot)
    assert results == [("StorageUnavailable", ("AdminShutdownError: terminating connection",))] * 3
    assert conn.single_calls == 0
    await hot.aclose()


async def test_a_server_without_autovacuum_is_reported(
    pg_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The relay warns at startup when PostgreSQL runs without autovacuum (the queue
    table's dead rows would pile up); with it on, nothing is logged. Either way the
    storage opens."""
    conn = await _admin(pg_url)
    try:
        setting = await conn.fetchval("SHOW autovacuum")
    finally:
        await conn.close()
    with caplog.at_level("WARNING", logger="server.storage"):
        s = await open_storage(pg_url)
    try:
        warned = [r for r in caplog.records if "autovacuum" in r.getMessage()]
        assert bool(warned) == (setting != "on")
        assert await warn_without_autovacuum(s) == (setting != "on")
        assert not await warn_without_autovacuum(await open_storage("memory://"))
    finally:
        await s.aclose()


def unconditioned_scans(node: dict[str, Any]) -> list[str]:
    """The scans of a JSON plan (and its subplans) that read a whole table or index:
    a sequential scan, or an index scan without an index condition."""
    found = []
    kind = node["Node Type"]
    if kind == "Seq Scan" or ("Index" in kind and "Index Cond" not in node):
        found.append(f"{kind} on {node.get('Relation Name', node.get('Index Name'))}")
    for child in node.get("Plans", []):
        found += unconditioned_scans(child)
    return found


async def test_group_statements_use_indexes_on_an_empty_churned_queue(pg_url: str) -> None:
    """The grouped sends' read (with its row locks) and the batch's write (with the
    acks' deletions) reach every row by an index condition (or its row id), with the
    relay's session settings, in custom and in generic plans, on a queue vacuumed and
    analysed empty: the worst case, where a join of the acknowledged keys with the
    queue was planned as a walk of the whole queue index for every batch."""
    await truncate_all(pg_url)
    await churn(pg_url)
    read_args = (["b0", "b1"], ["a0"], [1], [b"m" * 16])
    write_args = (
        *(["b0"], [1], [1], ["a0"], [1], [T0], [T0 + 1], [b"c"]),
        *(["a0"], [1], [b"m" * 16], [b"d"], [T0]),
        *(["b0"], [1], [2], [1]),
        *(["b1", "b1"], [1, 1], [1, 2]),  # acknowledged entries
    )
    conn = await _admin(pg_url)
    try:
        await conn.execute("SET enable_seqscan = off")
        for mode in ("force_custom_plan", "force_generic_plan"):
            await conn.execute(f"SET plan_cache_mode = {mode}")
            for name, sql, args in (
                ("group read", pg_hot._GROUP_READ, read_args),
                ("group write", pg_hot._GROUP_WRITE, write_args),
            ):
                async with conn.transaction():  # EXPLAIN runs nothing; the locks go
                    text = await conn.fetchval("EXPLAIN (FORMAT JSON) " + sql, *args)
                plan = json.loads(text)[0]["Plan"]
                assert unconditioned_scans(plan) == [], f"{name}, {mode}:\n{text}"
    finally:
        await conn.close()
