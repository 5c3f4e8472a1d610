"""Storage URLs: which database :func:`server.storage.open_storage` opens.

Accepted forms (``docs/storage.md``):

* ``memory://``: :class:`~server.storage.memory.MemoryStorage` (nothing persists);
* ``sqlite:///relative/path.db``, ``sqlite:////absolute/path.db``: a SQLite file,
  used through the standard library's ``sqlite3`` (SQLAlchemy's ``pysqlite``);
  ``sqlite+pysqlite://`` and ``sqlite+aiosqlite://`` are accepted as the same thing
  (the relay never uses aiosqlite: it measured slowest). In-memory SQLite is refused
  (use ``memory://``);
* ``postgresql+asyncpg://user:password@host:port/db`` (``postgresql://`` and
  ``postgres://`` mean the same), query parameters passed on to asyncpg.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

__all__ = ["MEMORY_URL", "StorageUrl", "parse_storage_url"]

MEMORY_URL = "memory://"

_SQLITE_DRIVERS = frozenset({"sqlite", "sqlite+pysqlite", "sqlite+aiosqlite"})
_POSTGRES_DRIVERS = frozenset({"postgresql", "postgres", "postgresql+asyncpg"})


@dataclass(frozen=True, slots=True)
class StorageUrl:
    """A parsed storage URL."""

    kind: Literal["memory", "sqlite", "postgresql"]
    url: URL | None
    """The SQLAlchemy URL with the driver the relay uses (``None`` for memory)."""
    path: Path | None
    """The SQLite file (``None`` otherwise)."""

    def __repr__(self) -> str:
        shown = "" if self.url is None else self.url.render_as_string(hide_password=True)
        return f"StorageUrl({self.kind!r}, {shown!r})"

    def sqlalchemy_url(self) -> str:
        """The URL to give SQLAlchemy (with the password: never log it).

        Raises:
            ValueError: a memory URL has none.
        """
        if self.url is None:
            raise ValueError("memory storage has no database URL")
        return self.url.render_as_string(hide_password=False)


def parse_storage_url(url: str) -> StorageUrl:
    """Parse and normalise one of the accepted forms.

    Raises:
        ValueError: anything else (the message never repeats a password).
    """
    if url.strip() in {MEMORY_URL, "memory:"}:
        return StorageUrl("memory", None, None)
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise ValueError(
            "not a storage URL (memory://, sqlite:///path or postgresql+asyncpg://...)"
        ) from None
    driver = parsed.drivername
    if driver in _SQLITE_DRIVERS:
        database = parsed.database
        if not database or database == ":memory:" or database.startswith("file:"):
            raise ValueError("a SQLite URL needs a file path: sqlite:///path/to/relay.db")
        if parsed.query:
            raise ValueError("a SQLite URL takes no query parameters")
        path = Path(database).expanduser()
        return StorageUrl("sqlite", URL.create("sqlite+pysqlite", database=str(path)), path)
    if driver in _POSTGRES_DRIVERS:
        return StorageUrl("postgresql", parsed.set(drivername="postgresql+asyncpg"), None)
    raise ValueError(f"unsupported storage URL scheme {driver!r}")
