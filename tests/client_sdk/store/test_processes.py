"""The store across processes: a SIGKILL mid-transaction or mid-commit leaves the
last commit, and the lock keeps a second process out until the first is gone
(DESIGN 6). Each test starts a real child process (child.py) and stops it by its
own handle."""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from client_sdk.errors import StoreLocked
from client_sdk.store import Table
from tests.client_sdk.store.helpers import new_key, open_keyed

pytestmark = pytest.mark.asyncio

CHILD = Path(__file__).with_name("child.py")
WAIT = 30.0  # seconds a child may take to start (imports) and report


class Child:
    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process

    async def line(self) -> str:
        assert self.process.stdout is not None
        raw = await asyncio.wait_for(self.process.stdout.readline(), WAIT)
        if not raw:
            assert self.process.stderr is not None
            err = await self.process.stderr.read()
            raise AssertionError(f"child exited: {err.decode(errors='replace')}")
        return raw.decode().strip()

    async def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        assert await asyncio.wait_for(self.process.wait(), WAIT) == -signal.SIGKILL

    async def finish(self) -> int:
        assert self.process.stdin is not None
        self.process.stdin.close()
        return await asyncio.wait_for(self.process.wait(), WAIT)


@asynccontextmanager
async def child(path: Path, key: bytes, mode: str) -> AsyncIterator[Child]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(CHILD),
        str(path),
        key.hex(),
        mode,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        yield Child(process)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_sigkill_mid_transaction_leaves_the_previous_commit(tmp_path: Path) -> None:
    path, key = tmp_path / "s.db", new_key()
    async with child(path, key, "mid-transaction") as proc:
        assert await proc.line() == "committed"
        assert await proc.line() == "inside"
        wal = Path(str(path) + "-wal")
        assert wal.stat().st_size > 2 * 1024 * 1024  # uncommitted pages reached the WAL
        await proc.kill()
    async with await open_keyed(path, key) as store, store.transaction() as tx:
        assert await tx.get(Table.META, b"a") == b"1"
        assert await tx.get(Table.META, b"b") == b"1"
        assert await tx.count(Table.INBOX) == 0


async def test_sigkill_at_an_arbitrary_moment_keeps_every_acknowledged_commit(
    tmp_path: Path,
) -> None:
    path, key = tmp_path / "s.db", new_key()
    for round_ in range(3):  # each kill lands somewhere else in the commit loop
        async with child(path, key, "loop") as proc:
            acknowledged = 0
            for _ in range(20 + 15 * round_):
                acknowledged = int(await proc.line())
            await proc.kill()
        async with await open_keyed(path, key) as store, store.transaction() as tx:
            x, y = await tx.get(Table.META, b"x"), await tx.get(Table.META, b"y")
            assert x == y  # never half a transaction
            assert x is not None and int(x) >= acknowledged
            assert await tx.count(Table.INBOX) == int(x)  # one bulk row per commit
            bulk = [k for k, _ in await tx.scan(Table.INBOX)]
            assert bulk[-1] == b"bulk/%08d" % int(x)
        # the child counts from 1 again: start each round from an empty store
        path.unlink()
        for suffix in ("-wal", "-shm"):
            Path(str(path) + suffix).unlink(missing_ok=True)


async def test_a_second_process_is_locked_out_until_the_first_closes(tmp_path: Path) -> None:
    path, key = tmp_path / "s.db", new_key()
    async with child(path, key, "hold") as proc:
        assert await proc.line() == "open"
        with pytest.raises(StoreLocked):
            await open_keyed(path, key)
        assert await proc.finish() == 0
    await (await open_keyed(path, key)).aclose()


async def test_the_lock_dies_with_a_killed_process(tmp_path: Path) -> None:
    path, key = tmp_path / "s.db", new_key()
    async with child(path, key, "hold") as proc:
        assert await proc.line() == "open"
        with pytest.raises(StoreLocked):
            await open_keyed(path, key)
        await proc.kill()
    await (await open_keyed(path, key)).aclose()
