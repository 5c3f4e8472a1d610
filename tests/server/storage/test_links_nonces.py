"""Contract: the link mailbox and single-use nonces (every implementation)."""

from __future__ import annotations

import pytest

from server.storage.base import LinkMailboxFull, Storage

from .helpers import T0

pytestmark = pytest.mark.asyncio

LINK = b"L" * 16


async def test_each_slot_written_once_read_once(storage: Storage) -> None:
    links = storage.links
    await links.put(LINK, 0, b"from new device", T0, T0 + 600)
    assert await links.take(LINK, 1, T0) is None
    await links.put(LINK, 1, b"from primary", T0, T0 + 600)
    with pytest.raises(LinkMailboxFull):
        await links.put(LINK, 0, b"replacement", T0, T0 + 600)
    assert await links.take(LINK, 0, T0) == b"from new device"
    assert await links.take(LINK, 0, T0) is None
    with pytest.raises(LinkMailboxFull):  # still taken after it was read
        await links.put(LINK, 0, b"replacement", T0, T0 + 600)
    assert await links.take(LINK, 1, T0 + 599) == b"from primary"
    assert await links.take(b"other", 0, T0) is None


async def test_expiry_and_purge(storage: Storage) -> None:
    links = storage.links
    await links.put(LINK, 0, b"a", T0, T0 + 10)
    await links.put(LINK, 1, b"b", T0, T0 + 10)
    await links.put(b"live", 0, b"c", T0, T0 + 100)
    assert await links.take(LINK, 0, T0 + 10) is None
    await links.put(LINK, 0, b"again", T0 + 10, T0 + 20)  # an expired slot is free
    assert await links.purge_expired(T0 + 10, 10) == 1
    assert await links.purge_expired(T0 + 20, 10) == 1
    assert await links.take(b"live", 0, T0 + 20) == b"c"
    with pytest.raises(ValueError, match="slot"):
        await links.put(LINK, 2, b"x", T0, T0 + 10)
    with pytest.raises(ValueError, match="slot"):
        await links.take(LINK, -1, T0)


async def test_nonce_single_use(storage: Storage) -> None:
    n = storage.nonces
    await n.issue(b"n1", "register", T0 + 30)
    assert await n.consume(b"n1", "register", T0)
    assert not await n.consume(b"n1", "register", T0)
    await n.issue(b"n2", "register", T0 + 30)
    assert not await n.consume(b"n2", "blob-upload", T0)  # wrong purpose burns it
    assert not await n.consume(b"n2", "register", T0)
    await n.issue(b"n3", "register", T0 + 30)
    assert not await n.consume(b"n3", "register", T0 + 30)  # expired
    assert not await n.consume(b"never", "register", T0)
    await n.issue(b"n4", "register", T0 + 30)
    with pytest.raises(ValueError, match="twice"):
        await n.issue(b"n4", "register", T0 + 60)
    assert await n.consume(b"n4", "register", T0 + 29)


async def test_nonce_purge(storage: Storage) -> None:
    n = storage.nonces
    for i in range(5):
        await n.issue(b"old%d" % i, "register", T0 + 10)
    await n.issue(b"live", "register", T0 + 100)
    assert await n.purge_expired(T0 + 10, 3) == 3
    assert await n.purge_expired(T0 + 10, 3) == 2
    assert await n.consume(b"live", "register", T0 + 10)


async def test_ping(storage: Storage) -> None:
    await storage.ping()
