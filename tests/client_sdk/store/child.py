"""A separate process that holds a store, for the crash and lock tests.

``python child.py PATH KEY_HEX MODE``; it reports progress on stdout, one line each,
and waits for its parent on stdin (never on a clock):

``hold``
    open, print ``open``, wait for EOF on stdin, close.
``mid-transaction``
    commit ``a=1, b=1``, print ``committed``; then inside a second transaction
    overwrite ``a``, delete ``b`` and write enough bulk rows that SQLite spills
    uncommitted pages into the WAL, print ``inside``, and wait (to be killed).
``loop``
    commit transaction after transaction, each writing its number ``n`` to ``x``,
    ``y`` and ``bulk/<n>``; print ``n`` after each commit returns (to be killed).
"""

from __future__ import annotations

import asyncio
import sys

from client_sdk.store import SqliteStore, Table

ORIGIN = "wss://relay.test:8443"
BULK_ROWS = 3000
BULK_VALUE = 1024  # 3 MB in all: beyond SQLite's default 2 MB page cache


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


async def main(path: str, key: bytes, mode: str) -> None:
    store = await SqliteStore.open(path, origin=ORIGIN, key=key)
    if mode == "hold":
        say("open")
        await asyncio.to_thread(sys.stdin.read)
        await store.aclose()
    elif mode == "mid-transaction":
        async with store.transaction() as tx:
            await tx.put(Table.META, b"a", b"1")
            await tx.put(Table.META, b"b", b"1")
        say("committed")
        async with store.transaction() as tx:
            await tx.put(Table.META, b"a", b"2")
            await tx.delete(Table.META, b"b")
            for i in range(BULK_ROWS):
                await tx.put(Table.INBOX, i.to_bytes(4, "big"), bytes(BULK_VALUE))
            say("inside")
            await asyncio.to_thread(sys.stdin.read)
    elif mode == "loop":
        n = 0
        while True:
            n += 1
            value = str(n).encode()
            async with store.transaction() as tx:
                await tx.put(Table.META, b"x", value)
                await tx.put(Table.INBOX, b"bulk/%08d" % n, bytes(4096))
                await tx.put(Table.META, b"y", value)
            say(str(n))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], bytes.fromhex(sys.argv[2]), sys.argv[3]))
