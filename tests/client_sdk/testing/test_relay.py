"""client_sdk.testing.relay (issue 5): restarting a relay process, and temporary
PostgreSQL databases (created, migrated, dropped whatever happens)."""

from __future__ import annotations

import re
import socket
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy.engine import make_url

from client_sdk.testing import relay as relay_harness
from client_sdk.testing.relay import (
    PostgresUnavailable,
    RelayProcess,
    RelayProcessError,
    check_postgres_admin_url,
    create_postgres_database,
    drop_postgres_database,
    free_port,
    temporary_postgres_database,
)
from tests.server.pg import pg_admin_url


async def _databases(prefix: str) -> set[str]:
    try:
        conn = await asyncpg.connect(pg_admin_url(), timeout=5)
    except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
        pytest.skip(f"PostgreSQL is not reachable: {exc}")
    try:
        rows = await conn.fetch(
            "SELECT datname FROM pg_database WHERE datname LIKE $1", prefix + "%"
        )
    finally:
        await conn.close()
    return {row["datname"] for row in rows}


async def _tables(url: str) -> set[str]:
    dsn = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    conn = await asyncpg.connect(dsn, timeout=5)
    try:
        rows = await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
    finally:
        await conn.close()
    return {row["tablename"] for row in rows}


@pytest.mark.asyncio
async def test_temporary_database_exists_inside_is_migrated_and_is_gone_after() -> None:
    before = await _databases("e2ee_sim_")
    async with temporary_postgres_database(pg_admin_url()) as url:
        parsed = make_url(url)
        assert parsed.drivername == "postgresql+asyncpg"
        name = parsed.database
        assert name is not None and re.fullmatch(r"e2ee_sim_[0-9a-f]{12}", name)
        assert await _databases("e2ee_sim_") == before | {name}
        assert {"alembic_version", "message_queue"} <= await _tables(url)
        # a session left open (a SIGKILLed relay's) does not keep it alive
        dsn = parsed.set(drivername="postgresql").render_as_string(hide_password=False)
        lingering = await asyncpg.connect(dsn, timeout=5)
    try:
        assert name not in await _databases("e2ee_sim_")
    finally:
        await lingering.close()


@pytest.mark.asyncio
async def test_temporary_database_is_dropped_when_the_block_fails() -> None:
    names: list[str] = []
    with pytest.raises(KeyError):
        async with temporary_postgres_database(pg_admin_url(), migrate=False) as url:
            names.append(make_url(url).database or "")
            assert await _tables(url) == set()  # unmigrated: empty
            raise KeyError("boom")
    assert names[0] and names[0] not in await _databases("e2ee_sim_")


@pytest.mark.asyncio
async def test_create_and_drop_with_a_prefix_of_ones_own() -> None:
    try:
        name, url = await create_postgres_database(pg_admin_url(), prefix="e2ee_t_relay_")
    except PostgresUnavailable as exc:
        pytest.skip(str(exc))
    try:
        assert name.startswith("e2ee_t_relay_") and make_url(url).database == name
        assert name in await _databases("e2ee_t_relay_")
    finally:
        await drop_postgres_database(name, pg_admin_url())
    assert name not in await _databases("e2ee_t_relay_")
    await drop_postgres_database(name, pg_admin_url())  # again: nothing to drop, no error


@pytest.mark.asyncio
async def test_bad_urls_prefixes_and_names_are_refused() -> None:
    for bad in ("sqlite:///x.db", "not a url", "mysql://u@h/db"):
        with pytest.raises(ValueError):
            check_postgres_admin_url(bad)
        with pytest.raises(ValueError):
            async with temporary_postgres_database(bad):
                pass
    check_postgres_admin_url("postgresql+asyncpg://u@127.0.0.1/db")
    for prefix in ("", "Upper_", 'x"; DROP', "9abc", "a" * 41):
        with pytest.raises(ValueError, match="prefix"):
            await create_postgres_database(pg_admin_url(), prefix=prefix)
    with pytest.raises(ValueError, match="database name"):
        await drop_postgres_database('x"; DROP DATABASE postgres; --', pg_admin_url())


@pytest.mark.asyncio
async def test_an_unreachable_server_is_a_typed_error_without_the_password() -> None:
    port = free_port()  # nothing listens there
    url = f"postgresql://user:hunter2-secret@127.0.0.1:{port}/postgres"
    with pytest.raises(PostgresUnavailable) as caught:
        async with temporary_postgres_database(url):
            pass
    assert str(port) in str(caught.value)
    assert "hunter2-secret" not in str(caught.value)


def test_repr_hides_the_database_and_redis_urls(tmp_path: Path) -> None:
    relay = RelayProcess(
        "postgresql+asyncpg://u:db-secret@127.0.0.1/x",
        tmp_path,
        redis_url="redis://:redis-secret@127.0.0.1",
    )
    text = repr(relay)
    assert "db-secret" not in text and "redis-secret" not in text
    assert "name='relay'" in text


@pytest.mark.asyncio
async def test_misuse_is_refused(tmp_path: Path) -> None:
    relay = RelayProcess(f"sqlite:///{tmp_path / 'relay.db'}", tmp_path)
    with pytest.raises(RelayProcessError, match="never started"):
        await relay.restart(same_port=True)
    with pytest.raises(RelayProcessError, match="never started"):
        _ = relay.url
    for port in (0, 65536, -1, True):
        with pytest.raises(ValueError, match="port"):
            await relay.start_on(port)
    assert relay.starts == 0 and await relay.kill() is None


@pytest.mark.asyncio
async def test_restart_on_a_fresh_port_and_on_the_same_port(tmp_path: Path) -> None:
    relay = RelayProcess(f"sqlite:///{tmp_path / 'relay.db'}", tmp_path)
    try:
        await relay.start()
        with pytest.raises(RelayProcessError, match="already running"):
            await relay.start()
        first_pid, port = relay.pid, relay.port
        assert relay.url == f"ws://127.0.0.1:{port}"

        await relay.restart(same_port=True)
        assert relay.running and relay.pid != first_pid and relay.port == port
        assert await relay.health_status() == 200

        second_pid = relay.pid
        await relay.restart()  # a free port (the old one, if the kernel hands it out again)
        assert relay.running and relay.pid != second_pid
        assert await relay.health_status() == 200
        assert relay.starts == 3 and len(relay.logs) == 3
        assert "Uvicorn running on" in relay.log_text()

        # restarting a relay that is not running just starts it
        await relay.kill()
        await relay.restart(same_port=True)
        assert relay.running and relay.starts == 4
    finally:
        await relay.kill()
    assert not relay.running


@pytest.mark.asyncio
async def test_restart_on_a_port_that_stays_taken_gives_up_in_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(relay_harness, "RESTART_PORT_SECONDS", 0.3)
    relay = RelayProcess(f"sqlite:///{tmp_path / 'relay.db'}", tmp_path)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        relay.port = taken.getsockname()[1]  # as if it had run there
        with pytest.raises(RelayProcessError, match="not free again"):
            await relay.restart(same_port=True)
    assert relay.starts == 0 and not relay.running
