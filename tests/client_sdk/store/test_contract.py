"""The store contract (DESIGN 6): every test runs on MemoryStore and on SqliteStore
over a real file (see conftest.py)."""

from __future__ import annotations

import asyncio

import pytest

from client_sdk.errors import StoreClosed, UsageError
from client_sdk.store import (
    LOOKUP_KEY_SIZE,
    MAX_KEY_SIZE,
    MAX_VALUE_SIZE,
    Store,
    Table,
    Transaction,
)
from tests.client_sdk.store.helpers import ORIGIN

pytestmark = pytest.mark.asyncio

KEYS = [
    b"\x00",
    b"\x00\x00",
    b"\x00\xff",
    b"a",
    b"ab",
    b"abc",
    b"ab\xff",
    b"ac",
    b"\xff",
    b"\xff\xff",
]


async def fill(store: Store, table: Table = Table.SESSIONS) -> None:
    async with store.transaction() as tx:
        for i, key in enumerate(reversed(KEYS)):
            await tx.put(table, key, b"v%d" % i)


async def snapshot(store: Store) -> dict[tuple[Table, bytes], bytes]:
    async with store.transaction() as tx:
        return {(t, k): v for t in Table for k, v in await tx.scan(t)}


async def test_put_get_overwrite_delete(store: Store) -> None:
    async with store.transaction() as tx:
        assert await tx.get(Table.SESSIONS, b"k") is None
        await tx.put(Table.SESSIONS, b"k", b"one")
        assert await tx.get(Table.SESSIONS, b"k") == b"one"
        await tx.put(Table.SESSIONS, b"k", b"two")
        assert await tx.get(Table.SESSIONS, b"k") == b"two"
        await tx.put(Table.SESSIONS, b"empty", b"")
    async with store.transaction() as tx:
        assert await tx.get(Table.SESSIONS, b"k") == b"two"
        assert await tx.get(Table.SESSIONS, b"empty") == b""
        assert await tx.delete(Table.SESSIONS, b"k") is True
        assert await tx.delete(Table.SESSIONS, b"k") is False
        assert await tx.get(Table.SESSIONS, b"k") is None
    async with store.transaction() as tx:
        assert await tx.get(Table.SESSIONS, b"k") is None
        assert await tx.count(Table.SESSIONS) == 1


async def test_tables_are_separate(store: Store) -> None:
    async with store.transaction() as tx:
        for table in Table:
            await tx.put(table, b"same", table.value.encode())
    async with store.transaction() as tx:
        for table in Table:
            assert await tx.get(table, b"same") == table.value.encode()
            assert await tx.count(table) == 1
        assert await tx.delete(Table.INBOX, b"same")
        assert await tx.get(Table.OUTBOX, b"same") == b"outbox"


async def test_bytes_like_arguments_are_accepted(store: Store) -> None:
    async with store.transaction() as tx:
        # typed as bytes, but bytes-like values are accepted and copied
        await tx.put(Table.META, bytearray(b"k"), memoryview(b"value"))  # type: ignore[arg-type]
        assert await tx.get(Table.META, memoryview(b"k")) == b"value"  # type: ignore[arg-type]
        assert await tx.scan(Table.META, bytearray(b"k")) == [(b"k", b"value")]  # type: ignore[arg-type]


async def test_scan_is_ordered_bytewise_with_prefix_and_limit(store: Store) -> None:
    await fill(store)
    async with store.transaction() as tx:
        everything = await tx.scan(Table.SESSIONS)
        assert [k for k, _ in everything] == sorted(KEYS)
        assert await tx.scan(Table.SESSIONS, b"ab") == [
            (k, v) for k, v in everything if k.startswith(b"ab")
        ]
        for prefix in (b"\x00", b"a", b"ab", b"abc", b"\xff", b"\xff\xff", b"\xff\xff\xff", b"b"):
            expected = [k for k in sorted(KEYS) if k.startswith(prefix)]
            assert [k for k, _ in await tx.scan(Table.SESSIONS, prefix)] == expected, prefix
            assert await tx.count(Table.SESSIONS, prefix) == len(expected), prefix
        assert await tx.scan(Table.SESSIONS, limit=0) == []
        assert await tx.scan(Table.SESSIONS, limit=3) == everything[:3]
        assert (
            await tx.scan(Table.SESSIONS, b"a", limit=2)
            == [(k, v) for k, v in everything if k.startswith(b"a")][:2]
        )
        assert await tx.scan(Table.SESSIONS, limit=100) == everything
        assert await tx.count(Table.SESSIONS) == len(KEYS)
        assert await tx.scan(Table.INBOX) == []
        assert await tx.count(Table.INBOX) == 0


async def test_delete_prefix(store: Store) -> None:
    await fill(store)
    await fill(store, Table.INBOX)
    async with store.transaction() as tx:
        assert await tx.delete_prefix(Table.SESSIONS, b"ab") == 3
        assert await tx.delete_prefix(Table.SESSIONS, b"ab") == 0
        assert await tx.delete_prefix(Table.SESSIONS, b"\xff") == 2
        remaining = [k for k, _ in await tx.scan(Table.SESSIONS)]
    assert remaining == [k for k in sorted(KEYS) if not k.startswith((b"ab", b"\xff"))]
    async with store.transaction() as tx:
        assert await tx.count(Table.INBOX) == len(KEYS)
        with pytest.raises(UsageError):
            await tx.delete_prefix(Table.SESSIONS, b"")


async def test_reads_see_the_transactions_own_writes(store: Store) -> None:
    await fill(store)
    async with store.transaction() as tx:
        await tx.delete(Table.SESSIONS, b"a")
        await tx.put(Table.SESSIONS, b"aa", b"new")
        keys = [k for k, _ in await tx.scan(Table.SESSIONS, b"a")]
        assert keys == [b"aa", b"ab", b"abc", b"ab\xff", b"ac"]
        assert await tx.count(Table.SESSIONS, b"a") == 5


async def test_an_exception_rolls_everything_back(store: Store) -> None:
    await fill(store)
    before = await snapshot(store)

    class Boom(Exception):
        pass

    with pytest.raises(Boom):
        async with store.transaction() as tx:
            await tx.put(Table.SESSIONS, b"a", b"overwritten")
            await tx.put(Table.INBOX, b"new", b"inserted")
            await tx.delete(Table.SESSIONS, b"ab")
            await tx.delete_prefix(Table.SESSIONS, b"\xff")
            await tx.put(Table.SESSIONS, b"ab", b"reinserted")
            assert await tx.get(Table.SESSIONS, b"a") == b"overwritten"
            raise Boom
    assert await snapshot(store) == before


async def test_cancellation_inside_the_block_rolls_back(store: Store) -> None:
    before = await snapshot(store)
    inside = asyncio.Event()

    async def writer() -> None:
        async with store.transaction() as tx:
            await tx.put(Table.OUTBOX, b"m", b"x")
            inside.set()
            await asyncio.Event().wait()

    task = asyncio.create_task(writer())
    await asyncio.wait_for(inside.wait(), 10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await snapshot(store) == before


async def test_the_transaction_object_dies_with_its_block(store: Store) -> None:
    async with store.transaction() as tx:
        await tx.put(Table.META, b"k", b"v")
    kept: Transaction = tx
    for call in (
        kept.get(Table.META, b"k"),
        kept.put(Table.META, b"k", b"w"),
        kept.delete(Table.META, b"k"),
        kept.delete_prefix(Table.META, b"k"),
        kept.scan(Table.META),
        kept.count(Table.META),
    ):
        with pytest.raises(UsageError):
            await call
    context = store.transaction()
    async with context:
        pass
    with pytest.raises(UsageError):
        async with context:
            pass


async def test_a_nested_transaction_is_refused_instead_of_deadlocking(store: Store) -> None:
    async with store.transaction() as tx:
        await tx.put(Table.META, b"outer", b"1")
        with pytest.raises(UsageError):
            async with store.transaction():
                pass
    async with store.transaction() as tx:  # the lock was not left held
        assert await tx.get(Table.META, b"outer") == b"1"


async def test_transactions_are_serialized(store: Store) -> None:
    async with store.transaction() as tx:
        await tx.put(Table.META, b"counter", b"0")

    async def increment() -> None:
        async with store.transaction() as tx:
            value = int(await tx.get(Table.META, b"counter") or b"")
            await asyncio.sleep(0)  # another task would interleave here if it could
            await tx.put(Table.META, b"counter", str(value + 1).encode())

    await asyncio.gather(*(increment() for _ in range(50)))
    async with store.transaction() as tx:
        assert await tx.get(Table.META, b"counter") == b"50"


async def test_a_second_transaction_waits_for_the_first(store: Store) -> None:
    first_in, release, order = asyncio.Event(), asyncio.Event(), []

    async def first() -> None:
        async with store.transaction():
            first_in.set()
            await release.wait()
            order.append("first done")

    async def second() -> None:
        await first_in.wait()
        async with store.transaction():
            order.append("second in")

    tasks = [asyncio.create_task(first()), asyncio.create_task(second())]
    await asyncio.wait_for(first_in.wait(), 10)
    for _ in range(5):
        await asyncio.sleep(0)
    assert order == []
    release.set()
    await asyncio.wait_for(asyncio.gather(*tasks), 10)
    assert order == ["first done", "second in"]


@pytest.mark.parametrize(
    ("method", "args"),
    [
        ("get", ("sessions", b"k")),
        ("get", (Table.META, "k")),
        ("get", (Table.META, b"")),
        ("get", (Table.META, b"k" * (MAX_KEY_SIZE + 1))),
        ("put", (Table.META, b"k", "v")),
        ("put", (Table.META, b"k", None)),
        ("delete", (Table.META, 7)),
        ("delete_prefix", (Table.META, "p")),
        ("scan", (Table.META, "p")),
        ("scan", (Table.META, b"p" * (MAX_KEY_SIZE + 1))),
        ("scan", (Table.META, b"", -1)),
        ("scan", (Table.META, b"", True)),
        ("scan", (Table.META, b"", 1.5)),
        ("count", (Table.META, None)),
    ],
)
async def test_bad_arguments_are_usage_errors(
    store: Store, method: str, args: tuple[object, ...]
) -> None:
    async with store.transaction() as tx:
        with pytest.raises(UsageError):
            await getattr(tx, method)(*args)


async def test_size_limits(store: Store) -> None:
    async with store.transaction() as tx:
        await tx.put(Table.INBOX, b"k" * MAX_KEY_SIZE, b"v")
        with pytest.raises(UsageError):
            await tx.put(Table.INBOX, b"big", bytes(MAX_VALUE_SIZE + 1))
    async with store.transaction() as tx:
        assert await tx.get(Table.INBOX, b"k" * MAX_KEY_SIZE) == b"v"
        assert await tx.get(Table.INBOX, b"big") is None


async def test_lookup_keys(store: Store) -> None:
    key = store.lookup_key("alice@example", 7)
    assert len(key) == LOOKUP_KEY_SIZE
    assert store.lookup_key("alice@example", 7) == key
    distinct = {
        key,
        store.lookup_key("alice@example", 8),
        store.lookup_key("alice@example"),
        store.lookup_key("alice@exampl", "e"),
        store.lookup_key(b"alice@example", 7),
        store.lookup_key("alice@example", b"\x00\x00\x00\x07"),
        store.lookup_key("bob@example", 7),
        store.lookup_key(7, "alice@example"),
        store.lookup_key(2**64 - 1),
        store.lookup_key(b""),
    }
    assert len(distinct) == 10
    assert b"alice" not in b"".join(distinct)
    for bad in ((), (True,), (-1,), (2**64,), (1.5,), (None,)):
        with pytest.raises(UsageError):
            store.lookup_key(*bad)


async def test_origin_and_close(store: Store) -> None:
    assert store.origin == ORIGIN
    await store.aclose()
    await store.aclose()
    with pytest.raises(StoreClosed):
        async with store.transaction():
            pass


async def test_close_waits_for_the_running_transaction(store: Store) -> None:
    inside, release = asyncio.Event(), asyncio.Event()

    async def writer() -> None:
        async with store.transaction() as tx:
            await tx.put(Table.META, b"k", b"v")
            inside.set()
            await release.wait()

    task = asyncio.create_task(writer())
    await asyncio.wait_for(inside.wait(), 10)
    closing = asyncio.create_task(store.aclose())
    for _ in range(5):
        await asyncio.sleep(0)
    assert not closing.done()
    release.set()
    await asyncio.wait_for(asyncio.gather(task, closing), 10)
    with pytest.raises(StoreClosed):
        async with store.transaction():
            pass


async def test_a_transaction_waiting_when_the_store_closes_gets_store_closed(store: Store) -> None:
    inside, release = asyncio.Event(), asyncio.Event()

    async def holder() -> None:
        async with store.transaction():
            inside.set()
            await release.wait()

    async def late() -> None:
        async with store.transaction():
            pass

    first = asyncio.create_task(holder())
    await asyncio.wait_for(inside.wait(), 10)
    closing = asyncio.create_task(store.aclose())  # queued before the late transaction
    await asyncio.sleep(0)
    waiting = asyncio.create_task(late())
    await asyncio.sleep(0)
    release.set()
    await asyncio.wait_for(asyncio.gather(first, closing), 10)
    with pytest.raises(StoreClosed):
        await asyncio.wait_for(waiting, 10)


async def test_the_store_is_an_async_context_manager(store: Store) -> None:
    async with store as same:
        assert same is store
        async with same.transaction() as tx:
            await tx.put(Table.META, b"k", b"v")
    with pytest.raises(StoreClosed):
        async with store.transaction():
            pass
