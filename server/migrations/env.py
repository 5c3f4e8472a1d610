"""Alembic environment: runs the migrations on SQLite (pysqlite) or PostgreSQL (asyncpg).

:mod:`server.storage.migrate` builds the Alembic ``Config`` (no ``alembic.ini``): the
URL is its ``sqlalchemy.url`` option, or an open connection is passed in
``config.attributes["connection"]``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures

from alembic import context
from sqlalchemy import Connection, pool
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

from server.storage.migrate import current_revision
from server.storage.schema import metadata
from server.storage.sql import sqlite_engine


def _configure_and_run(connection: Connection) -> None:
    current_revision(connection)  # SchemaTooNew: never run old code's migrations on it
    sqlite = connection.dialect.name == "sqlite"
    context.configure(
        connection=connection,
        target_metadata=metadata,
        compare_type=True,
        render_as_batch=sqlite,
        # Our SQLite engine begins transactions itself, so DDL is transactional there
        # too: a failed upgrade leaves the previous schema intact.
        transactional_ddl=True,
    )
    with context.begin_transaction():
        context.run_migrations()


async def _run_async(url: str) -> None:
    engine = create_async_engine(url, poolclass=pool.NullPool)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(_configure_and_run)
    finally:
        await engine.dispose()


def _run_online() -> None:
    given = context.config.attributes.get("connection")
    if isinstance(given, Connection):
        _configure_and_run(given)
        return
    url = context.config.get_main_option("sqlalchemy.url")
    if url is None:
        raise RuntimeError("migrations need sqlalchemy.url or a connection")
    if make_url(url).get_dialect().is_async:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            asyncio.run(_run_async(url))
        else:  # called from async code: run the upgrade on its own loop in a thread
            with concurrent.futures.ThreadPoolExecutor(1) as worker:
                worker.submit(asyncio.run, _run_async(url)).result()
        return
    engine = sqlite_engine(url)
    try:
        with engine.begin() as conn:
            _configure_and_run(conn)
    finally:
        engine.dispose()


if context.is_offline_mode():
    context.configure(
        url=context.config.get_main_option("sqlalchemy.url"),
        target_metadata=metadata,
        literal_binds=True,
    )
    with context.begin_transaction():
        context.run_migrations()
else:
    _run_online()
