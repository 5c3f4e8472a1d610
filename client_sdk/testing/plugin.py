"""A pytest plugin for app developers (issue 5): a real relay, a fault-injecting proxy
in front of it, and clients on throwaway stores, as fixtures.

Enable it in the app's ``conftest.py``::

    pytest_plugins = ["client_sdk.testing.plugin"]

Fixtures (all function-scoped and async, for pytest-asyncio in strict mode; they run
on the event loop of the app's ``asyncio_default_fixture_loop_scope``, which must be
the loop its tests run on):

``e2ee_relay``
    A :class:`~client_sdk.testing.relay.RelayProcess` (``e2ee serve`` as a separate
    process on 127.0.0.1), started and healthy, SIGKILLed at teardown. Its storage is
    a SQLite file in the test's ``tmp_path``, or, with ``--e2ee-db URL`` (or the
    ``E2EE_SIM_DB`` environment variable), a temporary PostgreSQL database created
    through the maintenance URL ``URL`` and dropped at teardown
    (:func:`~client_sdk.testing.relay.temporary_postgres_database`).
``e2ee_proxy``
    A :class:`~client_sdk.testing.proxy.FaultProxy` in front of ``e2ee_relay``,
    started, stopped at teardown. After ``await e2ee_relay.restart()`` (a fresh port)
    tell it ``e2ee_proxy.set_upstream(e2ee_relay.port)``; ``restart(same_port=True)``
    needs nothing.
``e2ee_client``
    An :class:`E2EEClients` factory: ``await e2ee_client.open("alice")`` is an open
    :class:`client_sdk.Client` of the relay (through the proxy with
    ``via_proxy=True``) on its own store file in ``tmp_path`` with a random 32-byte
    key; every client it opened is closed at teardown. The test registers it.

The plugin needs the ``relay`` extra (the relay runs from this installation).
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Final

import pytest
import pytest_asyncio
from sqlalchemy.engine import make_url

from client_sdk import Client

from .proxy import FaultProxy
from .relay import RelayProcess, check_postgres_admin_url, temporary_postgres_database

__all__ = [
    "DB_ENV",
    "DB_OPTION",
    "E2EEClients",
    "e2ee_client",
    "e2ee_proxy",
    "e2ee_relay",
    "pytest_addoption",
    "pytest_configure",
    "pytest_report_header",
]

DB_OPTION: Final = "--e2ee-db"
"""Command-line option: the PostgreSQL maintenance URL ``e2ee_relay`` creates its
temporary databases through (default: a SQLite file per test)."""
DB_ENV: Final = "E2EE_SIM_DB"
"""Environment variable read when :data:`DB_OPTION` is not given (empty: SQLite)."""
KEY_BYTES: Final = 32
"""Length of the raw store keys :class:`E2EEClients` generates."""

_DB_KEY: Final = pytest.StashKey[str | None]()
_NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def pytest_addoption(parser: pytest.Parser) -> None:
    """Register ``--e2ee-db``."""
    group = parser.getgroup("e2ee", "e2ee relay fixtures (client_sdk.testing.plugin)")
    group.addoption(
        DB_OPTION,
        dest="e2ee_db",
        default=None,
        metavar="URL",
        help=(
            "run the e2ee_relay fixture on a temporary PostgreSQL database created through "
            "this maintenance URL (postgresql://user@host:port/db) and dropped afterwards; "
            f"default: ${DB_ENV}, else a SQLite file per test"
        ),
    )


def pytest_configure(config: pytest.Config) -> None:
    """Read and check the database choice once per session.

    Raises:
        pytest.UsageError: the option or variable is not a ``postgresql://`` URL.
    """
    option: str | None = config.getoption("e2ee_db")
    source = DB_OPTION if option is not None else DB_ENV
    value = (option if option is not None else os.environ.get(DB_ENV, "")).strip()
    if not value:
        config.stash[_DB_KEY] = None
        return
    try:
        check_postgres_admin_url(value)
    except ValueError as exc:
        raise pytest.UsageError(f"{source}: {exc}") from None
    config.stash[_DB_KEY] = value


def pytest_report_header(config: pytest.Config) -> str:
    """Name the database ``e2ee_relay`` runs on (a URL's password is hidden)."""
    admin = config.stash.get(_DB_KEY, None)
    if admin is None:
        return "e2ee_relay: SQLite file per test"
    shown = make_url(admin).render_as_string(hide_password=True)
    return f"e2ee_relay: temporary PostgreSQL databases via {shown}"


@pytest_asyncio.fixture
async def e2ee_relay(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[RelayProcess]:
    """A started relay process on a fresh database; killed (and its PostgreSQL
    database dropped) at teardown."""
    admin = request.config.stash.get(_DB_KEY, None)
    workdir = tmp_path / "e2ee-relay"
    async with contextlib.AsyncExitStack() as stack:
        if admin is None:
            database_url = f"sqlite:///{workdir / 'relay.db'}"
        else:
            database_url = await stack.enter_async_context(temporary_postgres_database(admin))
        relay = RelayProcess(database_url, workdir)
        stack.push_async_callback(relay.kill)  # before the database is dropped
        await relay.start()
        yield relay


@pytest_asyncio.fixture
async def e2ee_proxy(e2ee_relay: RelayProcess) -> AsyncIterator[FaultProxy]:
    """A fault-injecting proxy in front of ``e2ee_relay``; stopped at teardown."""
    async with FaultProxy(e2ee_relay.port) as proxy:
        yield proxy


class E2EEClients:
    """Opens clients of one relay on store files in one directory, and closes them all.

    Each name has its own store file (``<name>.db``) and random raw key, kept for the
    test: opening a name again after its client was closed reopens the same store (an
    app restart).
    """

    def __init__(self, relay: RelayProcess, proxy: FaultProxy, directory: Path) -> None:
        self._relay = relay
        self._proxy = proxy
        self._directory = directory
        self._keys: dict[str, bytes] = {}
        self._stack = contextlib.AsyncExitStack()
        self._closed = False

    def __repr__(self) -> str:
        return f"E2EEClients(names={sorted(self._keys)}, directory={str(self._directory)!r})"

    def store_path(self, name: str) -> Path:
        """The store file of ``name``.

        Raises:
            ValueError: ``name`` is not 1 to 64 of ``[A-Za-z0-9_.-]`` starting with a
                letter or digit.
        """
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise ValueError("name must be 1 to 64 of [A-Za-z0-9_.-], starting alphanumeric")
        return self._directory / f"{name}.db"

    async def open(self, name: str, *, via_proxy: bool = False) -> Client:
        """An open client on ``name``'s store, connecting to the relay directly or,
        with ``via_proxy``, through ``e2ee_proxy``. It is closed at teardown (closing
        it earlier is fine).

        Raises:
            ValueError: a bad name (see :meth:`store_path`).
            RuntimeError: the fixture was torn down.
            client_sdk.errors.ClientError: the store cannot be opened (``StoreLocked``:
                a client of this name is still open).
        """
        path = self.store_path(name)
        if self._closed:
            raise RuntimeError("the e2ee_client fixture was torn down")
        key = self._keys.setdefault(name, secrets.token_bytes(KEY_BYTES))
        url = self._proxy.url if via_proxy else self._relay.url
        return await self._stack.enter_async_context(
            Client.open(url, store=path, key=key, origin=self._relay.origin)
        )

    async def aclose(self) -> None:
        """Close every client opened here (idempotent)."""
        self._closed = True
        await self._stack.aclose()


@pytest_asyncio.fixture
async def e2ee_client(
    e2ee_relay: RelayProcess, e2ee_proxy: FaultProxy, tmp_path: Path
) -> AsyncIterator[E2EEClients]:
    """``await e2ee_client.open(name, via_proxy=False)``: open clients of ``e2ee_relay``;
    all closed at teardown."""
    directory = tmp_path / "e2ee-clients"
    directory.mkdir()
    clients = E2EEClients(e2ee_relay, e2ee_proxy, directory)
    try:
        yield clients
    finally:
        await clients.aclose()
