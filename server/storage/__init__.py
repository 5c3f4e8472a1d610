"""The relay's storage (CONVENTIONS 4): protocols in :mod:`.base`, an in-memory
implementation in :mod:`.memory`, SQLite and PostgreSQL in :mod:`.sql`, migrations in
:mod:`.migrate`. :func:`open_storage` picks one from a URL (``docs/storage.md``).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from .base import SchemaOutdated, Storage, StorageUnavailable
from .urls import MEMORY_URL, parse_storage_url

__all__ = ["MEMORY_URL", "open_storage", "warn_without_autovacuum"]

log = logging.getLogger(__name__)


async def open_storage(
    url: str, *, echo: bool = False, upgrade: bool = False, pool_size: int | None = None
) -> Storage:
    """Open the storage at ``url`` (see :mod:`server.storage.urls` for the forms).

    * ``memory://``: a fresh :class:`~server.storage.memory.MemoryStorage`.
    * SQLite: a missing (or empty) file is created with its directory (mode 0700)
      and migrated to the newest schema. An existing file must be at the newest
      schema, else it is upgraded when ``upgrade`` is true.
    * PostgreSQL: the database must be at the newest schema, else it is upgraded
      when ``upgrade`` is true (``pool_size`` connections, default
      :data:`~server.storage.sql.PG_POOL_SIZE`).

    ``echo`` logs every SQL statement (development only: statements carry no
    parameters' values, but they do show the traffic's shape).

    Raises:
        ValueError: an unsupported URL.
        SchemaTooNew: the database was migrated by a newer relay; refuse to start.
        SchemaOutdated: the database has no or an older schema and ``upgrade`` is false.
        StorageUnavailable: the database cannot be reached or opened.
    """
    parsed = parse_storage_url(url)
    if parsed.kind == "memory":
        from .memory import MemoryStorage  # noqa: PLC0415 (no SQLAlchemy for memory)

        return MemoryStorage()
    from .migrate import check_schema, head_revision, upgrade_database  # noqa: PLC0415
    from .sql import (  # noqa: PLC0415
        PG_POOL_SIZE,
        PostgresRunner,
        SqliteRunner,
        SqlStorage,
        postgres_engine,
        sqlite_engine,
    )

    if parsed.path is not None and (not parsed.path.exists() or parsed.path.stat().st_size == 0):
        upgrade_database(url)
    found = await check_schema(url)
    if found != head_revision():
        if not upgrade:
            raise SchemaOutdated(found, head_revision())
        await asyncio.to_thread(upgrade_database, url)
    if parsed.kind == "sqlite":
        engine = sqlite_engine(parsed.sqlalchemy_url(), echo=echo)
        try:
            runner = SqliteRunner(engine)
        except Exception as exc:
            engine.dispose()
            raise StorageUnavailable(f"cannot open {parsed.path}: {type(exc).__name__}") from exc
        return SqlStorage(runner, dialect="sqlite")
    aengine = postgres_engine(
        parsed.sqlalchemy_url(), echo=echo, pool_size=pool_size or PG_POOL_SIZE
    )
    storage = SqlStorage(PostgresRunner(aengine), dialect="postgresql")
    await warn_without_autovacuum(storage)
    return storage


async def warn_without_autovacuum(storage: Storage) -> bool:
    """Log a warning when the PostgreSQL server runs without autovacuum (returns whether
    it did): every message is inserted into ``message_queue`` and deleted from it, and
    the table's own autovacuum thresholds (``docs/storage.md``) only apply when the
    server's ``autovacuum`` is on; without it the dead rows pile up and every send,
    fetch and acknowledgement slows down. Never raises (a failed check is logged)."""
    from .sql import SqlStorage  # noqa: PLC0415

    if not isinstance(storage, SqlStorage) or storage.dialect != "postgresql":
        return False
    try:
        value = await storage.read_setting(_show_autovacuum)
    except Exception as exc:
        log.warning("could not read PostgreSQL's autovacuum setting: %s", type(exc).__name__)
        return False
    if value == "on":
        return False
    log.warning(
        "PostgreSQL runs with autovacuum=%s: the message queue's dead rows will pile up "
        "and slow the relay down; turn autovacuum on (the default), or run "
        "'VACUUM (ANALYZE) message_queue' regularly (docs/operating.md)",
        value,
    )
    return True


def _show_autovacuum(conn: Any) -> str:
    return str(conn.exec_driver_sql("SHOW autovacuum").scalar())
