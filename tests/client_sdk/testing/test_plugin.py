"""The pytest plugin for apps (issue 5): an app's test file using the fixtures is run
with ``pytester`` (in this process, its own pytest session), on SQLite and on a
temporary PostgreSQL database, and must pass; the relay it started is gone afterwards
and so is its database; a bad database option is a usage error."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import asyncpg
import pytest

from client_sdk.testing.plugin import DB_ENV
from tests.server.pg import pg_admin_url

pytest_plugins = ["pytester"]

CONFTEST = 'pytest_plugins = ["client_sdk.testing.plugin"]\n'
INI = """\
[pytest]
asyncio_mode = strict
asyncio_default_fixture_loop_scope = function
filterwarnings = error
timeout = 120
"""

APP_TEST = """
import asyncio
import json
import os
from pathlib import Path

import pytest

from client_sdk import Client, Message


async def next_message(client: Client) -> Message:
    async with asyncio.timeout(30):
        async for message in client.messages():
            await message.done()
            return message
    raise AssertionError("the client was closed")


@pytest.mark.asyncio
async def test_two_clients_chat_one_through_the_proxy(e2ee_relay, e2ee_proxy, e2ee_client):
    alice = await e2ee_client.open("alice")
    bob = await e2ee_client.open("bob", via_proxy=True)
    await alice.register("alice")
    await bob.register("bob")
    await alice.send("bob", "hello bob")
    got = await next_message(bob)
    assert (got.sender_user, got.body) == ("alice", "hello bob")
    await bob.send("alice", "hi alice")
    got = await next_message(alice)
    assert (got.sender_user, got.body) == ("bob", "hi alice")
    # bob went through the proxy, alice did not
    assert {c.user_id for c in e2ee_proxy.connections()} == {"bob"}
    assert e2ee_proxy.stats.connections >= 1
    # closed and reopened under the same name: the same store and key
    await bob.aclose()
    bob = await e2ee_client.open("bob")
    assert bob.is_registered
    Path(os.environ["REPORT_TO"]).write_text(
        json.dumps({"pid": e2ee_relay.pid, "db": e2ee_relay.database_url})
    )


@pytest.mark.asyncio
async def test_each_test_gets_a_fresh_relay(e2ee_client):
    carol = await e2ee_client.open("carol")
    await carol.register("alice")  # the name is free again: a new database
    with pytest.raises(ValueError):
        await e2ee_client.open("../escape")
"""


@pytest.fixture
def app(pytester: pytest.Pytester, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An app's test directory using the plugin; the app's test reports the relay it
    had to this file."""
    pytester.makeini(INI)
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_app=APP_TEST)
    report = tmp_path / "report.json"
    monkeypatch.setenv("REPORT_TO", str(report))
    monkeypatch.delenv(DB_ENV, raising=False)
    return report


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


async def _pg(sql: str, *args: object) -> object:
    conn = await asyncpg.connect(pg_admin_url(), timeout=5)
    try:
        return await conn.fetchval(sql, *args)
    finally:
        await conn.close()


def test_an_app_test_runs_end_to_end_on_sqlite(pytester: pytest.Pytester, app: Path) -> None:
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["e2ee_relay: SQLite file per test"])
    seen = json.loads(app.read_text())
    assert seen["db"].startswith("sqlite:///")
    assert _gone(seen["pid"]), "the relay process outlived its test"


def test_an_app_test_runs_on_a_temporary_postgres_database(
    pytester: pytest.Pytester, app: Path
) -> None:
    try:  # PostgreSQL reachable, else skip (the skip policy of the suite applies)
        probe = asyncio.run(_pg("SELECT 1"))
    except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
        pytest.skip(f"PostgreSQL is not reachable: {exc}")
    assert probe == 1
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--e2ee-db", pg_admin_url())
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["e2ee_relay: temporary PostgreSQL databases via *"])
    seen = json.loads(app.read_text())
    assert seen["db"].startswith("postgresql+asyncpg://")
    database = seen["db"].rsplit("/", 1)[1]
    assert database.startswith("e2ee_sim_")
    exists = asyncio.run(_pg("SELECT count(*) FROM pg_database WHERE datname = $1", database))
    assert exists == 0, "the temporary database was not dropped"
    assert _gone(seen["pid"])


def test_the_environment_variable_selects_postgres_too(
    pytester: pytest.Pytester, app: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(DB_ENV, "mysql://nowhere/db")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*{DB_ENV}: admin_url must be a postgresql:// URL*"])


def test_a_bad_database_option_is_a_usage_error(pytester: pytest.Pytester, app: Path) -> None:
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--e2ee-db", "sqlite:///x.db")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--e2ee-db: admin_url must be a postgresql:// URL*"])
    assert not app.exists()
