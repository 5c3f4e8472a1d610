"""Migrations: shipped in the package, equal to schema.py, idempotent, and a database
migrated by a newer relay is refused (SchemaTooNew) on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import importlib.resources
import sqlite3
import stat
from pathlib import Path

import asyncpg
import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection
from sqlalchemy.engine import make_url

from server.storage import open_storage
from server.storage.base import SchemaOutdated, SchemaTooNew
from server.storage.memory import MemoryStorage
from server.storage.migrate import (
    MIGRATIONS_DIR,
    alembic_config,
    check_schema,
    head_revision,
    upgrade_database,
)
from server.storage.schema import metadata
from server.storage.sql import postgres_engine, sqlite_engine
from server.storage.urls import parse_storage_url
from tests.server.pg import scratch_database

FUTURE = "9999_from_a_newer_relay"


def _diff(conn: Connection) -> list[object]:
    return list(compare_metadata(MigrationContext.configure(conn), metadata))


def test_migrations_ship_inside_the_package() -> None:
    shipped = importlib.resources.files("server.migrations")
    assert shipped.joinpath("env.py").is_file()
    assert shipped.joinpath("versions").joinpath("0001_initial_schema.py").is_file()
    assert Path(str(shipped)).resolve() == MIGRATIONS_DIR
    assert head_revision() == "0003"


def test_sqlite_migration_equals_schema_and_round_trips(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/a/b/relay.db"
    upgrade_database(url)
    upgrade_database(url)  # again: nothing to do
    assert stat.S_IMODE((tmp_path / "a" / "b").stat().st_mode) == 0o700
    engine = sqlite_engine(parse_storage_url(url).sqlalchemy_url())
    try:
        with engine.connect() as conn:
            assert _diff(conn) == []
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        sa_url = parse_storage_url(url).sqlalchemy_url()
        command.downgrade(alembic_config(sa_url), "base")
        with engine.connect() as conn:
            assert (
                conn.exec_driver_sql(
                    "SELECT count(*) FROM sqlite_master WHERE name = 'devices'"
                ).scalar()
                == 0
            )
        upgrade_database(url)
        with engine.connect() as conn:
            assert _diff(conn) == []
    finally:
        engine.dispose()


@pytest.mark.asyncio
async def test_sqlite_new_file_is_created_newer_schema_refused(tmp_path: Path) -> None:
    path = tmp_path / "data" / "relay.db"
    url = f"sqlite:///{path}"
    assert await check_schema(url) is None
    assert not path.exists()  # looking does not create it
    storage = await open_storage(url)  # a new file: created and migrated
    await storage.aclose()
    assert await check_schema(url) == head_revision()
    with sqlite3.connect(path) as db:
        db.execute("UPDATE alembic_version SET version_num = ?", (FUTURE,))
    with pytest.raises(SchemaTooNew) as info:
        await check_schema(url)
    assert (info.value.found, info.value.known) == (FUTURE, head_revision())
    with pytest.raises(SchemaTooNew):
        await open_storage(url)
    with pytest.raises(SchemaTooNew):
        await asyncio.to_thread(upgrade_database, url)
    with sqlite3.connect(path) as db:  # the refused upgrade changed nothing
        assert db.execute("SELECT version_num FROM alembic_version").fetchall() == [(FUTURE,)]


@pytest.mark.asyncio
async def test_sqlite_file_without_schema_is_outdated(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE unrelated (x)")
    url = f"sqlite:///{path}"
    assert await check_schema(url) is None
    with pytest.raises(SchemaOutdated) as info:
        await open_storage(url)
    assert (info.value.found, info.value.known) == (None, head_revision())
    storage = await open_storage(url, upgrade=True)
    await storage.ping()
    await storage.aclose()
    assert await check_schema(url) == head_revision()


@pytest.mark.asyncio
async def test_postgres_upgrade_then_newer_schema_refused() -> None:
    async with scratch_database() as url:
        assert await check_schema(url) is None
        with pytest.raises(SchemaOutdated):
            await open_storage(url)
        await asyncio.to_thread(upgrade_database, url)
        upgrade_database(url)  # from inside a running loop, and a second time
        assert await check_schema(url) == head_revision()
        engine = postgres_engine(url, pool_size=1)
        try:
            async with engine.connect() as conn:
                assert await conn.run_sync(_diff) == []
        finally:
            await engine.dispose()
        storage = await open_storage(url)
        await storage.ping()
        await storage.aclose()

        dsn = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
        admin = await asyncpg.connect(dsn)
        try:
            await admin.execute("UPDATE alembic_version SET version_num = $1", FUTURE)
            with pytest.raises(SchemaTooNew) as info:
                await check_schema(url)
            assert info.value.found == FUTURE
            with pytest.raises(SchemaTooNew):
                await open_storage(url, upgrade=True)
            with pytest.raises(SchemaTooNew):
                await asyncio.to_thread(upgrade_database, url)
            assert await admin.fetchval("SELECT version_num FROM alembic_version") == FUTURE
        finally:
            await admin.close()


@pytest.mark.asyncio
async def test_memory_url() -> None:
    assert isinstance(await open_storage("memory://"), MemoryStorage)
    with pytest.raises(ValueError, match="schema"):
        upgrade_database("memory://")


@pytest.mark.parametrize(
    ("url", "kind", "driver"),
    [
        ("memory://", "memory", None),
        ("sqlite:///relay.db", "sqlite", "sqlite+pysqlite"),
        ("sqlite+aiosqlite:////var/lib/e2ee/relay.db", "sqlite", "sqlite+pysqlite"),
        ("sqlite+pysqlite:///~/relay.db", "sqlite", "sqlite+pysqlite"),
        ("postgresql://u:pw@db:5432/relay", "postgresql", "postgresql+asyncpg"),
        ("postgres://u@db/relay", "postgresql", "postgresql+asyncpg"),
        ("postgresql+asyncpg://u:pw@db/relay?ssl=require", "postgresql", "postgresql+asyncpg"),
    ],
)
def test_url_forms(url: str, kind: str, driver: str | None) -> None:
    parsed = parse_storage_url(url)
    assert parsed.kind == kind
    assert (None if parsed.url is None else parsed.url.drivername) == driver
    assert "pw" not in repr(parsed)
    if kind == "sqlite":
        assert parsed.path is not None
        assert "~" not in str(parsed.path)


@pytest.mark.parametrize(
    "url",
    ["sqlite://", "sqlite:///:memory:", "sqlite:///x.db?mode=ro", "mysql://u@h/db", "nonsense", ""],
)
def test_url_refusals(url: str) -> None:
    with pytest.raises(ValueError):
        parse_storage_url(url)
