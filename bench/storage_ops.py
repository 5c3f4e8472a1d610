"""How the relay's storage should be wired: the figures behind ``docs/storage.md``.

Run ``python -m bench.storage_ops`` (about a minute; ``--quick`` for a smoke run,
``--no-pg`` without PostgreSQL). It prints:

1. Statement cost on SQLite (no commit; CPU time per operation, median of rounds):
   each hot operation (accept = one send to one recipient device, fetch, ack) written
   with SQLAlchemy Core on a sync ``Connection`` against the same operation as fixed
   SQL on the raw ``sqlite3`` connection; plus a read transaction and a SAVEPOINT
   issued through SQLAlchemy.
2. End-to-end through the real runners (group commit with ``synchronous=FULL`` on
   SQLite; one transaction per operation on PostgreSQL with ``synchronous_commit``
   on): P concurrent sender/recipient pairs each loop accept -> fetch -> ack;
   messages per second (wall clock) and commits per second on SQLite; on PostgreSQL
   the hot path as SQLAlchemy Core through ``run_sync`` (the former wiring) against
   the shipped raw asyncpg one (``server/storage/pg_hot.py``), with this process's
   CPU time per message.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import secrets
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, event

from server.storage import sql_ops, sqlite_hot
from server.storage.base import AccountRecord, DeviceRecord, Storage
from server.storage.migrate import upgrade_database
from server.storage.sql import (
    PostgresRunner,
    SqliteRunner,
    SqlStorage,
    postgres_engine,
    sqlite_engine,
)

TTL = 30 * 24 * 3600 * 1000
QUOTA = 10_000
CIPHERTEXT = secrets.token_bytes(200)
PG_ADMIN = os.environ.get("E2EE_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")


def _account(user: str) -> AccountRecord:
    dev = DeviceRecord(user, 1, b"s" * 32, b"x" * 32, True)
    return AccountRecord(user, b"m" * 32, 1, b"list", b"d" * 32, (dev,))


def _seed(conn: Connection, pairs: int, prefix: str = "") -> None:
    for i in range(pairs):
        for role in ("a", "b"):
            sql_ops.create_account(conn, _account(f"{prefix}{role}{i}"), 0)


# --- 1. statement cost -----------------------------------------------------------------


def _time_loop(fn: Callable[[int], Any], n: int) -> float:
    gc.collect()
    gc.disable()
    try:
        t0 = time.process_time_ns()
        for i in range(n):
            fn(i)
        return (time.process_time_ns() - t0) / n / 1000
    finally:
        gc.enable()


def statement_costs(path: Path, n: int, rounds: int) -> dict[str, float]:
    """Microseconds per operation, Core vs raw, inside one open transaction."""
    url = f"sqlite:///{path}"
    upgrade_database(url)
    engine = sqlite_engine(url)
    conn = engine.connect()
    with conn.begin():
        _seed(conn, 2)
    samples: dict[str, list[float]] = {}
    counter = iter(range(10**9))

    def accept_with(op: Callable[..., Any]) -> Callable[[int], Any]:
        def run(_: int) -> Any:
            k = next(counter)
            return op(
                conn,
                "a0",
                1,
                k.to_bytes(8, "big"),
                b"d",
                [("b0", [(1, CIPHERTEXT)]), ("a0", [])],
                1,
                TTL,
                QUOTA,
            )

        return run

    def fetch_with(op: Callable[..., Any]) -> Callable[[int], Any]:
        return lambda _: op(conn, "b0", 1, 0, 1, 1)

    def ack_with(op: Callable[..., Any]) -> Callable[[int], Any]:
        return lambda i: op(conn, "b0", 1, [i])

    for _ in range(rounds):
        for name, kind in (("core", sql_ops), ("raw", sqlite_hot)):
            with conn.begin():
                samples.setdefault(f"accept {name}", []).append(
                    _time_loop(accept_with(kind.accept), n)
                )
                samples.setdefault(f"fetch {name}", []).append(
                    _time_loop(fetch_with(kind.fetch), n)
                )
                samples.setdefault(f"ack {name}", []).append(_time_loop(ack_with(kind.ack), n))
                conn.rollback()

        def read_txn(_: int) -> None:
            with conn.begin():
                sqlite_hot.fetch(conn, "b0", 1, 0, 1, 1)

        conn.rollback()
        samples.setdefault("fetch raw in a SQLAlchemy read txn", []).append(_time_loop(read_txn, n))

        def savepoint(_: int) -> None:
            sp = conn.begin_nested()
            sp.commit()

        with conn.begin():
            samples.setdefault("SAVEPOINT+RELEASE via SQLAlchemy", []).append(
                _time_loop(savepoint, n)
            )
            conn.rollback()

        def raw_savepoint(_: int) -> None:
            db = conn.connection.driver_connection
            db.execute("SAVEPOINT op")
            db.execute("RELEASE op")

        with conn.begin():
            samples.setdefault("SAVEPOINT+RELEASE raw", []).append(_time_loop(raw_savepoint, n))
            conn.rollback()
    conn.close()
    engine.dispose()
    return {k: statistics.median(v) for k, v in samples.items()}


# --- 2. end to end ---------------------------------------------------------------------


async def _pairs_loop(storage: Storage, pairs: int, per_pair: int, prefix: str = "") -> float:
    async def pair(i: int) -> None:
        a, b = f"{prefix}a{i}", f"{prefix}b{i}"
        cursor = 0
        for k in range(per_pair):
            await storage.messages.accept(
                a, 1, k.to_bytes(8, "big"), b"d", [(b, [(1, CIPHERTEXT)]), (a, [])], 1, TTL, QUOTA
            )
            got = await storage.messages.fetch(b, 1, cursor, 10, 1)
            if not got:
                raise RuntimeError("accepted message not fetched")
            cursor = got[-1].seq
            await storage.messages.ack(b, 1, [m.seq for m in got])

    t0 = time.perf_counter()
    await asyncio.gather(*(pair(i) for i in range(pairs)))
    return time.perf_counter() - t0


async def end_to_end_sqlite(
    path: Path, pairs: int, per_pair: int, hot: bool
) -> tuple[float, float]:
    """(messages/s, commits/s) through the group-commit runner."""
    if path.exists():
        path.unlink()
    url = f"sqlite:///{path}"
    upgrade_database(url)
    engine = sqlite_engine(url)
    with engine.begin() as conn:
        _seed(conn, pairs)
    commits = 0

    def on_commit(_conn: Any) -> None:
        nonlocal commits
        commits += 1

    event.listen(engine, "commit", on_commit)
    storage = SqlStorage(SqliteRunner(engine), dialect="sqlite", hot=hot)
    commits = 0
    elapsed = await _pairs_loop(storage, pairs, per_pair)
    await storage.aclose()
    return pairs * per_pair / elapsed, commits / elapsed


async def end_to_end_pg(url: str, pairs: int, per_pair: int, hot: bool) -> tuple[float, float]:
    """(messages/s, this process's CPU ms per message), each operation its own
    transaction (``hot``: the raw asyncpg path, else Core through ``run_sync``)."""
    engine = postgres_engine(url)
    prefix = f"p{pairs}{'h' if hot else 'c'}{secrets.token_hex(2)}"
    async with engine.begin() as conn:
        await conn.run_sync(_seed, pairs, prefix)
    storage = SqlStorage(PostgresRunner(engine), dialect="postgresql", hot=hot)
    cpu0 = time.process_time()
    elapsed = await _pairs_loop(storage, pairs, per_pair, prefix)
    cpu = time.process_time() - cpu0
    await storage.aclose()
    return pairs * per_pair / elapsed, cpu * 1000 / (pairs * per_pair)


async def _pg_database() -> tuple[str, str] | None:
    import asyncpg  # noqa: PLC0415

    name = f"e2ee_bench_{secrets.token_hex(4)}"
    try:
        conn = await asyncpg.connect(PG_ADMIN, timeout=5)
    except (OSError, asyncpg.PostgresError) as exc:
        print(f"PostgreSQL unreachable ({exc}); skipping its rows", file=sys.stderr)
        return None
    await conn.execute(f'CREATE DATABASE "{name}"')
    await conn.close()
    base = PG_ADMIN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://")
    return name, f"{base}/{name}"


async def _drop(name: str) -> None:
    import asyncpg  # noqa: PLC0415

    conn = await asyncpg.connect(PG_ADMIN, timeout=5)
    await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    await conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run")
    parser.add_argument("--no-pg", action="store_true", help="skip PostgreSQL")
    parser.add_argument("--pg-only", action="store_true", help="only the PostgreSQL rows")
    parser.add_argument(
        "--pg-rounds", type=int, default=3, help="PostgreSQL rounds (Core and raw alternate)"
    )
    args = parser.parse_args()
    n, rounds, per_pair = (50, 2, 20) if args.quick else (2000, 5, 200)
    if not args.pg_only:
        with tempfile.TemporaryDirectory() as tmp:
            costs = statement_costs(Path(tmp) / "costs.db", n, rounds)
            print("1. statement cost on SQLite, CPU us/op (median of rounds, no commit)")
            for name, us in costs.items():
                print(f"   {name:40s} {us:8.1f}")
            print("2. end to end: accept -> fetch -> ack per pair, wall clock")
            for pairs in (10, 100):
                for hot in (False, True):
                    label = "raw hot path" if hot else "Core everywhere"
                    rate, commits = asyncio.run(
                        end_to_end_sqlite(Path(tmp) / "e2e.db", pairs, per_pair, hot)
                    )
                    print(
                        f"   SQLite {label:16s} {pairs:4d} pairs: {rate:8.0f} msg/s,"
                        f" {commits:7.0f} commits/s"
                        f" ({rate * 2 / max(commits, 1):.1f} writes/commit)"
                    )
    if args.no_pg:
        return
    made = asyncio.run(_pg_database())
    if made is None:
        return
    name, url = made
    try:
        upgrade_database(url)
        for r in range(1 if args.quick else args.pg_rounds):
            for pairs in (10, 100):
                for hot in (False, True):
                    label = "raw asyncpg (shipped)" if hot else "Core + run_sync"
                    rate, cpu_ms = asyncio.run(
                        end_to_end_pg(url, pairs, per_pair if hot else per_pair // 2, hot)
                    )
                    print(
                        f"   PostgreSQL {label:22s} {pairs:4d} pairs: {rate:8.0f} msg/s,"
                        f" {cpu_ms:5.2f} ms CPU/msg (round {r + 1})"
                    )
    finally:
        asyncio.run(_drop(name))


if __name__ == "__main__":
    main()
