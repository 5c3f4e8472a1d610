"""1,000 concurrent bundle claims for 500 one-time prekeys of each kind, from two
storages (two engines, 10 pooled connections each) on one PostgreSQL database: none is
served twice, exactly 500 of each are served, none is left afterwards."""

from __future__ import annotations

import asyncio
from collections import Counter

import asyncpg
import pytest
from sqlalchemy.engine import make_url

from server.storage import open_storage
from server.storage.base import ClaimedBundle, PreKeyStatus
from tests.server.pg import pg_url, truncate_all

from .helpers import make, prekey

__all__ = ["pg_url"]

pytestmark = pytest.mark.asyncio

PREKEYS = 500
CLAIMS = 1000
BATCH = 100  # the most one upload carries (issue 3)


async def test_concurrent_claims_from_two_engines(pg_url: str) -> None:
    await truncate_all(pg_url)
    first = await open_storage(pg_url, pool_size=10)
    second = await open_storage(pg_url, pool_size=10)
    try:
        await make(first, "bob", [1])
        for start in range(0, PREKEYS, BATCH):
            await first.prekeys.upload(
                "bob",
                1,
                prekey(1, b"spk") if start == 0 else None,
                [prekey(1000 + start + i, b"ec") for i in range(BATCH)],
                [prekey(5000 + start + i, b"kem") for i in range(BATCH)],
                prekey(2, b"lr") if start == 0 else None,
            )
        assert await second.prekeys.status("bob", 1) == PreKeyStatus(
            prekey(1, b"spk").encoded, prekey(2, b"lr").encoded, PREKEYS, PREKEYS
        )

        results = await asyncio.gather(
            *((first if i % 2 else second).prekeys.claim("bob", 1) for i in range(CLAIMS))
        )

        bundles = [b for b in results if isinstance(b, ClaimedBundle)]
        assert len(bundles) == CLAIMS  # every claim got the signed prekey
        ec = Counter(b.one_time for b in bundles if b.one_time is not None)
        kem = Counter(b.kem for b in bundles if not b.kem_is_last_resort)
        assert max(ec.values()) == 1  # never served twice
        assert max(kem.values()) == 1
        assert set(ec) == {prekey(1000 + i, b"ec").encoded for i in range(PREKEYS)}
        assert set(kem) == {prekey(5000 + i, b"kem").encoded for i in range(PREKEYS)}
        last_resort = [b for b in bundles if b.kem_is_last_resort]
        assert len(last_resort) == CLAIMS - PREKEYS
        assert {b.kem for b in last_resort} == {prekey(2, b"lr").encoded}
        assert sum(b.one_time is None for b in bundles) == CLAIMS - PREKEYS

        assert await first.prekeys.status("bob", 1) == PreKeyStatus(
            prekey(1, b"spk").encoded, prekey(2, b"lr").encoded, 0, 0
        )
        dsn = make_url(pg_url).set(drivername="postgresql").render_as_string(hide_password=False)
        conn = await asyncpg.connect(dsn)
        try:
            assert await conn.fetchval("SELECT count(*) FROM one_time_prekeys") == 0
            assert await conn.fetchval("SELECT count(*) FROM used_prekey_ids") == 2 * PREKEYS + 2
        finally:
            await conn.close()
    finally:
        await first.aclose()
        await second.aclose()
