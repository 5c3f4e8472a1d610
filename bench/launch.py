"""Server processes of the relay benchmark: the relay and the bare forwarder, each in
its own process on the relay's own uvicorn configuration
(``server.serving.uvicorn_config``: ``websockets-sansio``, no per-message
compression, ``ws_max_size = MAX_FRAME``).

``python -m bench.launch bare --port P``: the forwarder (bench/forwarder.py).

``python -m bench.launch relay --port P --report FILE [--data-dir D] [--db URL]
[--upgrade] [--set NAME=JSON ...]``: the relay, started as ``e2ee serve`` starts it
(``open_storage_for``, ``create_app(settings, storage=...)``, ``RelayServer``), with
the shipped settings except the ``--set`` overrides the bench needs (its own
generous rate limits). Before serving, the launcher opens the relay's storage itself, reads the
durability settings back *through the relay's own engine* (SQLite: ``PRAGMA
journal_mode`` and ``synchronous``; PostgreSQL: ``SHOW synchronous_commit`` and
``fsync``) and writes them, with the settings in force, as JSON to ``--report``;
bench/relay.py refuses to report figures when they are not the shipped defaults.

The bench raises ``RLIMIT_NOFILE`` to its hard limit in the parent; children
inherit it (10,000 idle sockets need more than the usual 1,024 descriptors).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import uvicorn
from sqlalchemy import Connection

from server.app import create_app, open_storage_for
from server.serving import RelayServer, uvicorn_config
from server.settings import RelaySettings, load_settings
from server.storage.base import Storage

from .forwarder import create_forwarder_app

__all__ = ["HOST", "durability_of", "main"]

HOST = "127.0.0.1"


def _bare_settings(port: int) -> RelaySettings:
    return load_settings(None, host=HOST, port=port, log_level="warning")


async def _serve_bare(port: int) -> None:
    # The relay's own uvicorn configuration (server.serving.uvicorn_config), so both
    # servers run the same WebSocket implementation, limits and options.
    settings = _bare_settings(port)
    await uvicorn.Server(uvicorn_config(create_forwarder_app(), settings)).serve()


def _sqlite_pragmas(conn: Connection) -> dict[str, str]:
    journal = conn.exec_driver_sql("PRAGMA journal_mode").scalar()
    synchronous = conn.exec_driver_sql("PRAGMA synchronous").scalar()
    names = {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}
    return {
        "journal_mode": str(journal).lower(),
        "synchronous": f"{synchronous} ({names.get(int(str(synchronous)), '?')})",
    }


def _pg_settings(conn: Connection) -> dict[str, str]:
    out = {}
    for name in ("synchronous_commit", "fsync", "wal_sync_method", "full_page_writes"):
        out[name] = str(conn.exec_driver_sql(f"SHOW {name}").scalar())
    return out


async def durability_of(storage: Storage) -> dict[str, str]:
    """The durability settings in force on the relay storage's own connection(s), read
    through the storage's runner (the connection the relay writes with).

    Raises:
        RuntimeError: the storage is not a SQL storage this function knows.
    """
    runner: Any = getattr(storage, "_runner", None)
    dialect = getattr(storage, "dialect", None)
    if runner is None or dialect not in ("sqlite", "postgresql"):
        raise RuntimeError(f"cannot read durability settings of {storage!r}")
    if dialect == "sqlite":
        # Through the write path: the pragmas of the connection that commits (SQLite
        # reads go through a second connection, opened with the same pragmas).
        found: dict[str, str] = await runner.write(_sqlite_pragmas)
    else:
        found = await runner.read(_pg_settings)
    return found


async def _serve_relay(args: argparse.Namespace) -> None:
    overrides: dict[str, Any] = {"host": HOST, "port": args.port}
    if args.data_dir is not None:
        overrides["data_dir"] = Path(args.data_dir)
    if args.db is not None:
        overrides["database_url"] = args.db
    for item in args.set or []:
        name, _, value = item.partition("=")
        overrides[name] = json.loads(value)
    settings = load_settings(None, **overrides)
    if args.upgrade:
        from server.storage.migrate import upgrade_database  # noqa: PLC0415

        await asyncio.to_thread(upgrade_database, settings.effective_database_url)
    # As `e2ee serve` does (server/cli.py): open the storage, build the app on it,
    # serve with the relay's uvicorn configuration and server class.
    storage = await open_storage_for(settings)
    try:
        report = {
            "settings": settings.redacted(),
            "overrides": sorted(k for k in overrides if k not in {"host", "port"}),
            "durability": await durability_of(storage),
            "database": settings.redacted()["database_url"],
        }
        Path(args.report).write_text(json.dumps(report))
        app = create_app(settings, storage=storage)
        await RelayServer(uvicorn_config(app, settings), app.state.ctx).serve()
    finally:
        await storage.aclose()


def main(argv: list[str] | None = None) -> int:
    """Run one bench server until it is terminated."""
    parser = argparse.ArgumentParser(prog="python -m bench.launch")
    sub = parser.add_subparsers(dest="kind", required=True)
    bare = sub.add_parser("bare", help="the bare in-memory forwarder")
    bare.add_argument("--port", type=int, required=True)
    relay = sub.add_parser("relay", help="the relay")
    relay.add_argument("--port", type=int, required=True)
    relay.add_argument("--report", required=True, help="JSON file: settings and durability")
    relay.add_argument("--data-dir")
    relay.add_argument("--db", help="database URL (default: the SQLite file in the data dir)")
    relay.add_argument("--upgrade", action="store_true", help="migrate the database first")
    relay.add_argument("--set", action="append", metavar="NAME=JSON", help="a setting")
    args = parser.parse_args(argv)
    if args.kind == "bare":
        asyncio.run(_serve_bare(args.port))
    else:
        asyncio.run(_serve_relay(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
