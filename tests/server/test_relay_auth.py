"""Registration over HTTP and device authentication on the WebSocket, against a real
relay: good paths, replays, wrong origin, bad signatures, unknown and removed
devices, timeouts, one live connection per device."""

from __future__ import annotations

import asyncio
import secrets
from pathlib import Path

import pytest

from e2ee import cbor
from e2ee.device import OurDevice
from e2ee.device_list import DeviceList, SignedDeviceList
from e2ee.relay_frames import (
    AuthOk,
    CaughtUp,
    CloseCode,
    Deliver,
    DeviceListResult,
    Error,
    ErrorCode,
    GetDeviceList,
    RegisterRequest,
    sign_register,
)
from server import limits
from server.notify import RedisNotifier
from server.settings import RateLimit
from server.storage.memory import MemoryStorage
from tests.server.pg import pg_url
from tests.server.relay_client import (
    RunningRelay,
    make_account,
    relay_settings,
    running_relay,
)
from tests.server.relay_fixtures import memory_relay, relay
from tests.services import RUN_PREFIX, connect_redis, release_redis

__all__ = ["memory_relay", "pg_url", "relay"]


# --- registration ---------------------------------------------------------------------


@pytest.mark.asyncio
async def test_register_good_then_taken(relay: RunningRelay) -> None:
    client = relay.client()
    account = make_account()
    response = await client.register(account)
    assert response.status_code == 201
    assert cbor.decode(response.content) == {0: account.user_id, 1: 1001}
    again = await client.register(account)
    assert again.status_code == 409
    # The stored list is served as registered.
    conn = await client.connect(account)
    await conn.expect(CaughtUp)
    await conn.send(GetDeviceList(1, account.user_id))
    result = await conn.expect(DeviceListResult)
    assert result.signed_list == account.device_list.to_bytes()
    await conn.close()


@pytest.mark.asyncio
async def test_register_nonce_single_use(memory_relay: RunningRelay) -> None:
    client = memory_relay.client()
    account = make_account()
    nonce = await client.register_nonce()
    body = client.register_body(account, nonce).to_bytes()
    assert (await client.post_register(body)).status_code == 201
    other = make_account()
    replay = client.register_body(other, nonce).to_bytes()
    response = await client.post_register(replay)
    assert response.status_code == 401
    assert response.json()["error"] == "auth_failed"
    # A nonce the relay never issued.
    response = await client.post_register(
        client.register_body(make_account(), secrets.token_bytes(32)).to_bytes()
    )
    assert response.status_code == 401


@pytest.mark.asyncio
async def test_register_bad_signatures_refused(memory_relay: RunningRelay) -> None:
    client = memory_relay.client()
    account = make_account()
    device = account.devices[0].device
    for bad_master, bad_device in ((True, False), (False, True)):
        nonce = await client.register_nonce()
        good = client.register_body(account, nonce)
        wrong = sign_register(device.signing, account.user_id, 1001, secrets.token_bytes(32))
        body = RegisterRequest(
            good.signed_list,
            nonce,
            wrong if bad_master else good.master_signature,
            wrong if bad_device else good.device_signature,
        )
        response = await client.post_register(body.to_bytes())
        assert response.status_code == 400
        assert response.json()["error"] == "bad_signature"
    # Malformed bodies and a body above the limit.
    assert (await client.post_register(b"\xff\x00")).status_code == 400
    big = await client.post_register(b"\x00" * (limits.MAX_REGISTER_BODY + 1))
    assert big.status_code == 413
    # Nothing was created.
    assert await memory_relay.ctx.storage.accounts.get_account(account.user_id) is None


@pytest.mark.asyncio
async def test_register_wrong_version_or_devices(memory_relay: RunningRelay) -> None:
    client = memory_relay.client()
    account = make_account()
    v2 = account.device_list.successor(account.master, account.device_list.statement.devices, 1)
    nonce = await client.register_nonce()
    body = client.register_body(account, nonce)
    body = RegisterRequest(v2.to_bytes(), nonce, body.master_signature, body.device_signature)
    response = await client.post_register(body.to_bytes())
    assert response.status_code == 400 and response.json()["error"] == "invalid"
    # Two devices in the first list.
    extra = OurDevice.generate(account.user_id, 1002, account.master.public_key)
    entries = (account.devices[0].device.entry(), extra.entry())
    two = SignedDeviceList.sign(
        DeviceList(account.user_id, account.master.public_key, 1, 1, None, entries), account.master
    )
    nonce = await client.register_nonce()
    body = client.register_body(account, nonce)
    body = RegisterRequest(two.to_bytes(), nonce, body.master_signature, body.device_signature)
    assert (await client.post_register(body.to_bytes())).status_code == 400


@pytest.mark.asyncio
async def test_register_token_required(tmp_path: Path) -> None:
    settings = relay_settings(tmp_path, registration_token="s3cret-token")
    async with running_relay(settings) as running:
        client = running.client()
        assert (await client.register(make_account())).status_code == 403
        assert (await client.register(make_account(), token="wrong")).status_code == 403
        assert (await client.register(make_account(), token="s3cret-token")).status_code == 201


@pytest.mark.asyncio
async def test_register_rate_limited(tmp_path: Path) -> None:
    settings = relay_settings(tmp_path, rate_registration=RateLimit(per_second=0.001, burst=2))
    async with running_relay(settings) as running:
        client = running.client()
        statuses = [(await client.register(make_account())).status_code for _ in range(3)]
        assert statuses == [201, 201, 429]
        assert (await client.get_healthz()).status_code == 200


# --- authentication -----------------------------------------------------------------------


@pytest.mark.asyncio
async def test_auth_good_and_replayed_on_second_connection(relay: RunningRelay) -> None:
    client = relay.client()
    account = await client.create_account()
    first = await client.open(account)
    auth = first.auth_frame()
    await first.send(auth)
    ok = await first.expect(AuthOk)
    assert ok.relay_time_ms > 0
    await first.expect(CaughtUp)
    # The same auth response on another connection (another nonce) is refused.
    second = await client.open(account)
    await second.send(auth)
    error = await second.expect(Error)
    assert error.code is ErrorCode.AUTH_FAILED
    assert await second.closed() == CloseCode.AUTH_FAILED
    await first.close()


@pytest.mark.asyncio
async def test_auth_for_another_origin_or_spki_refused(memory_relay: RunningRelay) -> None:
    client = memory_relay.client()
    account = await client.create_account()
    conn = await client.open(account)
    await conn.send(conn.auth_frame(origin="wss://evil.example"))
    assert (await conn.expect(Error)).code is ErrorCode.AUTH_FAILED
    assert await conn.closed() == CloseCode.AUTH_FAILED
    # Binding off: a statement naming an SPKI hash is for another deployment.
    conn = await client.open(account)
    await conn.send(conn.auth_frame(spki=secrets.token_bytes(32)))
    assert (await conn.expect(Error)).code is ErrorCode.AUTH_FAILED
    # A second Auth after a failure is never tried: the connection is closed.
    assert await conn.closed() == CloseCode.AUTH_FAILED


@pytest.mark.asyncio
async def test_auth_spki_accepted_mode(tmp_path: Path) -> None:
    accepted = secrets.token_bytes(32)
    settings = relay_settings(
        tmp_path, spki_binding="accepted", spki_accepted=(secrets.token_hex(32), accepted.hex())
    )
    async with running_relay(settings) as running:
        client = running.client()
        account = await client.create_account()
        conn = await client.open(account)
        await conn.authenticate(spki=accepted)
        await conn.close()
        conn = await client.open(account)
        await conn.send(conn.auth_frame(spki=None))
        assert (await conn.expect(Error)).code is ErrorCode.AUTH_FAILED


@pytest.mark.asyncio
async def test_auth_unknown_device_and_unknown_user_refused(memory_relay: RunningRelay) -> None:
    client = memory_relay.client()
    account = await client.create_account()
    stranger = make_account()  # never registered
    conn = await client.open(stranger)
    await conn.send(conn.auth_frame())
    assert (await conn.expect(Error)).code is ErrorCode.AUTH_FAILED
    assert await conn.closed() == CloseCode.AUTH_FAILED
    account.add_device(1002)  # not published
    conn = await client.open(account, 1)
    await conn.send(conn.auth_frame())
    assert (await conn.expect(Error)).code is ErrorCode.AUTH_FAILED


@pytest.mark.asyncio
async def test_requests_before_auth_refused(memory_relay: RunningRelay) -> None:
    client = memory_relay.client()
    account = await client.create_account()
    conn = await client.open(account)
    await conn.send(GetDeviceList(5, account.user_id))
    error = await conn.expect(Error)
    assert error.code is ErrorCode.NOT_AUTHENTICATED and error.req == 5
    await conn.authenticate()
    await conn.close()


@pytest.mark.asyncio
async def test_auth_timeout_closes(
    memory_relay: RunningRelay, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(limits, "AUTH_TIMEOUT_SECONDS", 0.2)
    client = memory_relay.client()
    account = await client.create_account()
    conn = await client.open(account)
    assert await conn.closed() == CloseCode.AUTH_TIMEOUT


@pytest.mark.asyncio
async def test_auth_rate_limited_per_device(tmp_path: Path) -> None:
    settings = relay_settings(tmp_path, rate_auth_device=RateLimit(per_second=0.001, burst=2))
    async with running_relay(settings) as running:
        client = running.client()
        account = await client.create_account()
        for _ in range(2):
            conn = await client.connect(account)
            await conn.close()
        conn = await client.open(account)
        await conn.send(conn.auth_frame())
        assert (await conn.expect(Error)).code is ErrorCode.RATE_LIMITED
        assert await conn.closed() == CloseCode.RATE_LIMITED


@pytest.mark.asyncio
async def test_one_live_connection_per_device(relay: RunningRelay) -> None:
    client = relay.client()
    account = await client.create_account()
    old = await client.connect(account)
    await old.expect(CaughtUp)
    new = await client.connect(account)
    await new.expect(CaughtUp)
    assert await old.closed() == CloseCode.CONNECTED_ELSEWHERE
    # The new one still works.
    await new.send(GetDeviceList(1, account.user_id))
    await new.expect(DeviceListResult)
    await new.close()


@pytest.mark.asyncio
async def test_takeover_across_nodes_through_redis(tmp_path: Path) -> None:
    """Two relay nodes over one storage and Redis: a new connection on node B closes
    the device's connection on node A with CONNECTED_ELSEWHERE."""
    redis = await connect_redis()
    storage = MemoryStorage()
    prefix = f"{RUN_PREFIX}{secrets.token_hex(4)}:"
    notifiers = [RedisNotifier(redis, prefix), RedisNotifier(redis, prefix)]
    for notifier in notifiers:
        await notifier.start()
    try:
        settings = relay_settings(tmp_path)
        async with (
            running_relay(settings, storage=storage, notifier=notifiers[0]) as node_a,
            running_relay(settings, storage=storage, notifier=notifiers[1]) as node_b,
        ):
            account = await node_a.client().create_account()
            on_a = await node_a.client().connect(account)
            await on_a.expect(CaughtUp)
            on_b = await node_b.client().connect(account)
            await on_b.expect(CaughtUp)
            assert await on_a.closed() == CloseCode.CONNECTED_ELSEWHERE
            # A message accepted on node A reaches the device on node B live.
            sender = await node_a.client().create_account()
            s = await node_a.client().connect(sender)
            await s.expect(CaughtUp)
            await s.send_message(secrets.token_bytes(16), [(account.user_id, [(1001, b"x")])])
            assert (await on_b.expect(Deliver)).ciphertext == b"x"
            await s.close()
            await on_b.close()
    finally:
        for notifier in notifiers:
            await notifier.aclose()
        await release_redis(redis)


@pytest.mark.asyncio
async def test_many_connections_then_healthy(memory_relay: RunningRelay) -> None:
    client = memory_relay.client()
    accounts = [await client.create_account() for _ in range(5)]
    conns = await asyncio.gather(*(client.connect(a) for a in accounts))
    for conn in conns:
        await conn.expect(CaughtUp)
        await conn.close()
    assert (await client.get_healthz()).status_code == 200
