"""The transport against a real relay (uvicorn on 127.0.0.1, real WebSockets)."""

from __future__ import annotations

import asyncio
import logging
import secrets
from pathlib import Path

import pytest
from websockets.asyncio.server import ServerConnection, serve

from client_sdk.errors import (
    AuthFailed,
    ConnectedElsewhere,
    DeviceRemoved,
    GoingAway,
    IdempotencyConflict,
    MalformedFrame,
    NoPreKeys,
    RateLimited,
    UnknownUser,
    UserIdTaken,
)
from client_sdk.transport import (
    CaughtUpEvent,
    Delivery,
    ReconnectingRelay,
    ReconnectPolicy,
    RelayConnection,
    RelayEvent,
    fetch_config,
    register,
)
from e2ee.device_list import SignedDeviceList
from e2ee.prekeys import PreKeyBundle
from e2ee.relay_frames import Accepted, AuthOk, Hello, Mismatch
from server.settings import RateLimit
from tests.client_sdk.transport.helpers import connect, identity
from tests.server.relay_client import (
    NOW,
    ORIGIN,
    WAIT,
    RunningRelay,
    TestAccount,
    make_account,
    relay_settings,
    running_relay,
)


async def _registered(relay: RunningRelay) -> TestAccount:
    account = make_account()
    created = await register(
        f"http://127.0.0.1:{relay.port}",
        signed_list=account.device_list,
        master=account.master,
        device_signing=account.devices[0].device.signing,
    )
    assert (created.user_id, created.device_id) == (account.user_id, 1001)
    return account


async def _next(conn: RelayConnection) -> RelayEvent:
    async with asyncio.timeout(WAIT):
        async for event in conn.events():
            return event
    raise AssertionError("the events ended")


@pytest.mark.asyncio
async def test_register_connect_send_deliver_ack(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="client_sdk")
    async with running_relay(relay_settings()) as relay:
        http = f"http://127.0.0.1:{relay.port}"
        config = await fetch_config(http)
        assert config.origin == ORIGIN and 1 in config.protocol_versions
        alice, bob = await _registered(relay), await _registered(relay)
        with pytest.raises(UserIdTaken):
            await register(
                http,
                signed_list=alice.device_list,
                master=alice.master,
                device_signing=alice.devices[0].device.signing,
            )

        async with await connect(relay, alice) as a, await connect(relay, bob) as b:
            assert a.is_open and a.relay_time_ms is not None and a.spki_sha256 is None
            assert isinstance(await _next(b), CaughtUpEvent)
            msg_id = secrets.token_bytes(16)
            accepted = await a.send(msg_id, [(bob.user_id, [(1001, b"ct-1")])])
            assert isinstance(accepted, Accepted) and accepted.client_msg_id == msg_id
            # A retry of the same id and content gets the same answer (idempotent).
            assert await a.send(msg_id, [(bob.user_id, [(1001, b"ct-1")])]) == accepted
            with pytest.raises(IdempotencyConflict):
                await a.send(msg_id, [(bob.user_id, [(1001, b"other")])])
            mismatch = await a.send(secrets.token_bytes(16), [(bob.user_id, [(1002, b"x")])])
            assert isinstance(mismatch, Mismatch)
            assert mismatch.users[0].missing == (1001,) and mismatch.users[0].extra == (1002,)
            with pytest.raises(UnknownUser):
                await a.send(secrets.token_bytes(16), [("nobody", [(1001, b"x")])])

            delivery = await _next(b)
            assert isinstance(delivery, Delivery)
            assert (delivery.sender_user, delivery.sender_device) == (alice.user_id, 1001)
            assert delivery.ciphertext == b"ct-1"
            await b.ack([delivery.seq])
            depth = relay.ctx.storage.messages.depth
            async with asyncio.timeout(WAIT):
                while await depth(bob.user_id, 1001) != 0:
                    await asyncio.sleep(0.01)
    # Logs name events, never a ciphertext or message id (nor any key or signature).
    sdk_logs = [r.getMessage() for r in caplog.records if r.name.startswith("client_sdk")]
    assert any("connected to the relay" in line for line in sdk_logs)
    text = "\n".join(sdk_logs)
    for secret in (b"ct-1", msg_id, alice.devices[0].device.signing.seed()):
        assert secret.hex() not in text and repr(secret) not in text


@pytest.mark.asyncio
async def test_keys_and_device_lists_round_trip() -> None:
    async with running_relay(relay_settings()) as relay:
        alice, bob = await _registered(relay), await _registered(relay)
        async with await connect(relay, alice) as a, await connect(relay, bob) as b:
            with pytest.raises(NoPreKeys):
                await a.claim_bundle(bob.user_id, 1001)
            device, prekeys = bob.devices[0].device, bob.devices[0].prekeys
            await b.upload_prekeys(
                signed_prekey=prekeys.rotate_signed_prekey(device, NOW),
                one_time=prekeys.one_time_batch(device, NOW, count=5),
                kem=prekeys.one_time_batch(device, NOW, kem=True, count=5),
                last_resort=prekeys.rotate_last_resort(device, NOW),
            )
            status = await b.key_check()
            assert (status.one_time_left, status.kem_left) == (5, 5)
            assert status.device_list_digest == bob.device_list.digest
            bundle = PreKeyBundle.from_bytes(await a.claim_bundle(bob.user_id, 1001))
            assert bundle.device_id == 1001
            assert (await b.key_check()).one_time_left == 4

            listed = SignedDeviceList.from_bytes(await a.get_device_list(bob.user_id))
            assert listed.digest == bob.device_list.digest
            successor = bob.add_device(1002)
            await b.put_device_list(successor.to_bytes())
            assert await a.get_device_list(bob.user_id) == successor.to_bytes()


@pytest.mark.asyncio
async def test_connected_elsewhere_and_reconnect_policy() -> None:
    async with running_relay(relay_settings()) as relay:
        alice = await _registered(relay)
        first = await connect(relay, alice)
        second = await connect(relay, alice)
        assert isinstance(await first.wait_closed(), ConnectedElsewhere)
        with pytest.raises(ConnectedElsewhere):
            async for _ in first.events():
                pass
        assert second.is_open
        await second.close()

        # Two copies of one device keep taking the connection from each other: the
        # reconnecting side gives up after three reconnects with ConnectedElsewhere.
        slept: list[float] = []

        async def sleep(delay: float) -> None:
            slept.append(delay)

        rival: list[RelayConnection] = []
        relay_loop = ReconnectingRelay(
            lambda: connect(relay, alice), policy=ReconnectPolicy(rng=lambda: 0.0), sleep=sleep
        )
        with pytest.raises(ConnectedElsewhere):
            async for conn in relay_loop.connections():
                assert conn.is_open
                rival.append(await connect(relay, alice))  # takes the device's connection
        assert len(rival) == 4 and len(slept) == 3
        for conn in rival:
            await conn.close()


@pytest.mark.asyncio
async def test_device_removed_stops_and_cannot_reconnect() -> None:
    async with running_relay(relay_settings()) as relay:
        alice = await _registered(relay)
        async with await connect(relay, alice) as primary:
            await primary.put_device_list(alice.add_device(1002).to_bytes())
            second = await connect(relay, alice, 1)
            removed = identity(alice, 1)
            await primary.put_device_list(alice.remove_device(1002).to_bytes())
            error = await second.wait_closed()
            assert isinstance(error, DeviceRemoved)
            with pytest.raises(DeviceRemoved):
                ReconnectPolicy().delay_after(error)
            with pytest.raises(AuthFailed):
                await RelayConnection.connect(
                    f"ws://127.0.0.1:{relay.port}/v1/ws",
                    origin=ORIGIN,
                    identity=removed,
                )


@pytest.mark.asyncio
async def test_going_away_then_reconnect_on_the_same_storage(tmp_path: Path) -> None:
    settings = relay_settings(tmp_path, database_url=f"sqlite+aiosqlite:///{tmp_path}/relay.db")
    async with running_relay(settings) as relay:
        alice = await _registered(relay)
        conn = await connect(relay, alice)
        await relay.stop()
        assert isinstance(await conn.wait_closed(), GoingAway)
    async with running_relay(settings) as relay, await connect(relay, alice) as conn:
        assert conn.is_open
        assert (await conn.key_check()).device_list_digest == alice.device_list.digest


@pytest.mark.asyncio
async def test_rate_limited_registration_is_typed() -> None:
    settings = relay_settings(rate_http=RateLimit(per_second=0.001, burst=1))
    async with running_relay(settings) as relay:
        await _registered(relay)
        with pytest.raises(RateLimited) as info:
            await _registered(relay)
        assert info.value.http_status == 429


@pytest.mark.asyncio
async def test_malformed_frames_from_a_fake_relay_are_typed() -> None:
    garbage = [b"\xff\xfe not cbor", b"\xa1\x00\x18\x63"]  # bad CBOR; unknown frame type

    close_codes: list[int | None] = []

    async def handler(ws: ServerConnection) -> None:
        path = ws.request.path if ws.request else ""
        if path == "/hello":  # garbage instead of Hello
            await ws.send(garbage[0])
            await ws.wait_closed()
            close_codes.append(ws.close_code)
            return
        await ws.send(Hello((1,), b"n" * 32, 1 << 20).to_bytes())
        await ws.recv()
        await ws.send(AuthOk(1).to_bytes())
        await ws.send(garbage[int(path.rsplit("/", 1)[1])])
        await ws.wait_closed()
        close_codes.append(ws.close_code)

    async with serve(handler, "127.0.0.1", 0) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        for index in range(len(garbage)):
            conn = await RelayConnection.connect(
                f"ws://127.0.0.1:{port}/{index}",
                origin=ORIGIN,
                identity=identity(make_account()),
            )
            async with asyncio.timeout(WAIT):
                assert isinstance(await conn.wait_closed(), MalformedFrame)
            with pytest.raises(MalformedFrame):
                await conn.key_check()
            assert not conn.is_open
        with pytest.raises(MalformedFrame):
            await RelayConnection.connect(
                f"ws://127.0.0.1:{port}/hello", origin=ORIGIN, identity=identity(make_account())
            )
        async with asyncio.timeout(WAIT):
            while len(close_codes) < 3:
                await asyncio.sleep(0.01)
    # The client closed each connection as a protocol error.
    assert close_codes == [1002, 1002, 1002]
