"""A Hypothesis state machine compares each store with a dict over random puts,
deletes, prefix deletes, gets, scans, counts, aborted transactions and reopenings."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, precondition, rule

from client_sdk.store import MemoryStore, Store, Table, Transaction
from tests.client_sdk.store.helpers import ORIGIN, new_key, open_keyed
from tests.hypothesis_profiles import STATEFUL_SETTINGS

T = TypeVar("T")
Model = dict[tuple[Table, bytes], bytes]

TABLES = st.sampled_from([Table.SESSIONS, Table.INBOX])
# Few distinct bytes, short keys: collisions, shared prefixes and 0xff edges are common.
KEYS = st.lists(st.sampled_from([0x00, 0x01, 0x61, 0xFF]), min_size=1, max_size=3).map(bytes)
PREFIXES = st.one_of(st.just(b""), KEYS)
VALUES = st.binary(max_size=16)
OPS = st.lists(
    st.one_of(
        st.tuples(st.just("put"), TABLES, KEYS, VALUES),
        st.tuples(st.just("delete"), TABLES, KEYS),
        st.tuples(st.just("delete_prefix"), TABLES, KEYS),
        st.tuples(st.just("get"), TABLES, KEYS),
    ),
    max_size=8,
)


class Abort(Exception):
    """Raised inside a transaction to roll it back."""


def matching(model: Model, table: Table, prefix: bytes) -> list[tuple[bytes, bytes]]:
    return sorted((k, v) for (t, k), v in model.items() if t is table and k.startswith(prefix))


async def apply(tx: Transaction, model: Model, op: tuple[Any, ...]) -> None:
    kind, table, key = op[0], op[1], op[2]
    if kind == "put":
        await tx.put(table, key, op[3])
        model[(table, key)] = op[3]
    elif kind == "delete":
        assert await tx.delete(table, key) == ((table, key) in model)
        model.pop((table, key), None)
    elif kind == "delete_prefix":
        doomed = [k for k, _ in matching(model, table, key)]
        assert await tx.delete_prefix(table, key) == len(doomed)
        for k in doomed:
            del model[(table, k)]
    else:
        assert await tx.get(table, key) == model.get((table, key))


class StoreMachine(RuleBasedStateMachine):
    file_backed = True

    def __init__(self) -> None:
        super().__init__()
        self.runner = asyncio.Runner()
        self.dir = Path(tempfile.mkdtemp(prefix="store-machine-"))
        self.key = new_key()
        self.store: Store = self.run(self.open())
        self.model: Model = {}

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.runner.run(coro)

    async def open(self) -> Store:
        if self.file_backed:
            return await open_keyed(self.dir / "store.db", self.key)
        return MemoryStore(origin=ORIGIN)

    @rule(ops=OPS, abort=st.booleans())
    def transaction(self, ops: list[tuple[Any, ...]], abort: bool) -> None:
        async def go() -> None:
            shadow = dict(self.model)
            try:
                async with self.store.transaction() as tx:
                    for op in ops:
                        await apply(tx, shadow, op)
                    for table in (Table.SESSIONS, Table.INBOX):  # reads see own writes
                        assert await tx.scan(table) == matching(shadow, table, b"")
                    if abort:
                        raise Abort
            except Abort:
                return
            self.model = shadow

        self.run(go())

    @rule(table=TABLES, prefix=PREFIXES, limit=st.one_of(st.none(), st.integers(0, 5)))
    def scan_and_count(self, table: Table, prefix: bytes, limit: int | None) -> None:
        async def go() -> None:
            expected = matching(self.model, table, prefix)
            async with self.store.transaction() as tx:
                assert await tx.scan(table, prefix, limit) == expected[:limit]
                assert await tx.count(table, prefix) == len(expected)

        self.run(go())

    @precondition(lambda self: self.file_backed)
    @rule()
    def reopen(self) -> None:
        async def go() -> Store:
            await self.store.aclose()
            return await self.open()

        self.store = self.run(go())

    def teardown(self) -> None:
        try:
            self.run(self.store.aclose())
        finally:
            self.runner.close()
            shutil.rmtree(self.dir, ignore_errors=True)


class MemoryStoreMachine(StoreMachine):
    file_backed = False


TestSqliteStoreAgainstADict = StoreMachine.TestCase
TestSqliteStoreAgainstADict.settings = STATEFUL_SETTINGS
TestMemoryStoreAgainstADict = MemoryStoreMachine.TestCase
TestMemoryStoreAgainstADict.settings = STATEFUL_SETTINGS
