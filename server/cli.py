"""The relay's commands for the ``e2ee`` console script (DESIGN 3): ``serve``, ``db``
and ``config``, registered as ``e2ee.commands`` entry points.

Every command reads the settings the same way (:func:`server.settings.load_settings`):
flags over ``E2EE_*`` environment variables over the TOML file of ``--config`` (or
``E2EE_CONFIG``). Errors print one line ``e2ee: error: ...`` and exit with 1.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from pathlib import Path
from typing import Any, Final

from .errors import RelayError
from .settings import RelaySettings, load_settings
from .storage.base import StorageError

__all__ = [
    "ConfigCommand",
    "DbCommand",
    "ServeCommand",
    "config_command",
    "db_command",
    "serve_command",
]

_EXIT_ERROR: Final = 1

_SETTINGS_EPILOG: Final = """\
Settings come from, highest first: these flags, E2EE_* environment variables
(e.g. E2EE_DATABASE_URL, E2EE_REDIS_URL, E2EE_ORIGIN, E2EE_RATE_SEND__PER_SECOND),
then the TOML file given by --config or E2EE_CONFIG. Secrets may be read from files:
registration_token_file, database_url_file, redis_url_file.
`e2ee config check` prints the effective settings with secrets hidden."""


def _fail(message: str) -> int:
    print(f"e2ee: error: {message}", file=sys.stderr)
    return _EXIT_ERROR


def _add_settings_flags(parser: argparse.ArgumentParser, *, server: bool) -> None:
    parser.add_argument(
        "--config", type=Path, metavar="FILE", help="TOML settings file (default: $E2EE_CONFIG)"
    )
    parser.add_argument(
        "--db",
        metavar="URL",
        help="storage URL: sqlite:///path/relay.db or postgresql+asyncpg://user@host/db "
        "(default: relay.db in the data directory)",
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        metavar="DIR",
        help="directory of the default SQLite database (created when missing; "
        "default: ~/.local/share/e2ee-relay)",
    )
    if server:
        parser.add_argument("--host", help="address to listen on (default 127.0.0.1)")
        parser.add_argument("--port", type=int, help="TCP port (default 8080)")
        parser.add_argument(
            "--redis", metavar="URL", help="Redis URL for several relay nodes (optional)"
        )
        parser.add_argument(
            "--origin",
            metavar="URL",
            help="the public URL clients are configured with, e.g. wss://relay.example "
            "(part of every authentication statement; default ws://HOST:PORT)",
        )


def _settings(args: argparse.Namespace) -> RelaySettings:
    overrides: dict[str, Any] = {
        "database_url": getattr(args, "db", None),
        "data_dir": getattr(args, "data_dir", None),
        "host": getattr(args, "host", None),
        "port": getattr(args, "port", None),
        "redis_url": getattr(args, "redis", None),
        "origin": getattr(args, "origin", None),
    }
    return load_settings(getattr(args, "config", None), **overrides)


class ServeCommand:
    """``e2ee serve``: run the relay."""

    name = "serve"
    help = "run the relay server (zero configuration: SQLite in a per-user data directory)"

    def configure(self, parser: argparse.ArgumentParser) -> None:
        """Add the settings flags."""
        parser.formatter_class = argparse.RawDescriptionHelpFormatter
        parser.epilog = (
            "With no configuration the relay listens on 127.0.0.1:8080 and keeps its\n"
            "SQLite database in ~/.local/share/e2ee-relay (created and migrated on first\n"
            "start; a database migrated by a newer relay is refused). Stop it with\n"
            "Ctrl-C or SIGTERM: every socket is closed with 1001 (going away).\n\n"
            + _SETTINGS_EPILOG
        )
        _add_settings_flags(parser, server=True)

    def run(self, args: argparse.Namespace) -> int:
        """Serve until interrupted."""
        try:
            settings = _settings(args)
        except RelayError as exc:
            return _fail(str(exc))
        logging.basicConfig(
            level=logging.DEBUG if settings.log_level in ("debug", "trace") else logging.INFO,
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        )
        # Alembic announces each of its plug-ins at INFO when it is first imported; an
        # operator wants the migrations applied (still logged), not that.
        logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)
        try:
            asyncio.run(_serve(settings))
        except (RelayError, StorageError) as exc:
            return _fail(str(exc))
        return 0


async def _serve(settings: RelaySettings) -> None:
    from .app import create_app, open_storage_for  # noqa: PLC0415  # keep --help fast
    from .serving import RelayServer, uvicorn_config  # noqa: PLC0415

    storage = await open_storage_for(settings)
    try:
        app = create_app(settings, storage=storage)
        server = RelayServer(uvicorn_config(app, settings), app.state.ctx)
        await server.serve()
    finally:
        await storage.aclose()


class DbCommand:
    """``e2ee db upgrade``: migrate the database to this relay's schema."""

    name = "db"
    help = "database administration (upgrade the schema)"

    def configure(self, parser: argparse.ArgumentParser) -> None:
        """Add the ``upgrade`` action and the settings flags."""
        parser.epilog = _SETTINGS_EPILOG
        parser.formatter_class = argparse.RawDescriptionHelpFormatter
        parser.add_argument(
            "action",
            choices=["upgrade"],
            help="upgrade: apply every migration the database lacks (safe to repeat)",
        )
        _add_settings_flags(parser, server=False)

    def run(self, args: argparse.Namespace) -> int:
        """Upgrade the schema."""
        from .storage.migrate import upgrade_database  # noqa: PLC0415

        try:
            settings = _settings(args)
            if settings.uses_default_database:
                settings.data_dir.mkdir(parents=True, exist_ok=True)
            upgrade_database(settings.effective_database_url)
        except (RelayError, StorageError, ValueError) as exc:
            return _fail(str(exc))
        print("database schema is up to date")
        return 0


class ConfigCommand:
    """``e2ee config check``: validate and print the effective settings."""

    name = "config"
    help = "check the relay's settings and print them (secrets hidden)"

    def configure(self, parser: argparse.ArgumentParser) -> None:
        """Add the ``check`` action and the settings flags."""
        parser.epilog = _SETTINGS_EPILOG
        parser.formatter_class = argparse.RawDescriptionHelpFormatter
        parser.add_argument("action", choices=["check"], help="check: validate and print as JSON")
        _add_settings_flags(parser, server=True)

    def run(self, args: argparse.Namespace) -> int:
        """Validate and print."""
        try:
            settings = _settings(args)
        except RelayError as exc:
            return _fail(str(exc))
        print(json.dumps(settings.redacted(), indent=2, sort_keys=True))
        return 0


serve_command = ServeCommand()
db_command = DbCommand()
config_command = ConfigCommand()
