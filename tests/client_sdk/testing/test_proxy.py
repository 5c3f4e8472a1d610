"""The fault-injecting proxy (``client_sdk/testing/proxy.py``).

Two kinds of upstream: a small ``websockets`` server on 127.0.0.1 (echo, flood) for the
framing itself (fragments, 16/64-bit lengths, control frames, masking of re-encoded
frames, back-pressure), and a real relay (uvicorn in process, a SQLite file) with real
SDK clients for what the proxy is for: pass-through, hooks, injection, dropped
connections, a relay restarted on a fresh port, delay, stalled readers.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from client_sdk.client import Client, Message
from client_sdk.errors import MessageQueued, TransportError, UsageError
from client_sdk.events import ReplayDropped
from client_sdk.testing.proxy import (
    MAX_MESSAGE,
    FaultProxy,
    FrameHook,
    ProxiedConnection,
    ProxyError,
)
from e2ee.relay_frames import (
    Ack,
    Auth,
    BundleResult,
    ClientFrame,
    Deliver,
    Ok,
    RelayFrame,
    Send,
    decode_relay_frame,
)
from server.settings import RelaySettings
from tests.server.relay_client import ORIGIN, RunningRelay, relay_settings, running_relay

WAIT = 20.0
"""Bound for anything a test waits for."""
POLL = 0.01


async def _until(condition: Callable[[], bool], what: str) -> None:
    """Poll ``condition`` (bounded by :data:`WAIT`)."""
    try:
        async with asyncio.timeout(WAIT):
            while not condition():
                await asyncio.sleep(POLL)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


def _auth(user_id: str = "alice", device_id: int = 1001) -> bytes:
    return Auth(user_id, device_id, bytes(64)).to_bytes()


# --- a websockets upstream -----------------------------------------------------------------


@contextlib.asynccontextmanager
async def _upstream(handler: Callable[[ServerConnection], Awaitable[None]]) -> AsyncIterator[int]:
    """A ``websockets`` server on 127.0.0.1 running ``handler``; yields its port."""
    async with serve(handler, "127.0.0.1", 0, compression=None, max_size=None) as server:
        port: int = next(iter(server.sockets)).getsockname()[1]
        yield port


async def _echo(ws: ServerConnection) -> None:
    with contextlib.suppress(ConnectionClosed):
        async for message in ws:
            await ws.send(message)


def _ws(proxy: FaultProxy) -> contextlib.AbstractAsyncContextManager[ClientConnection]:
    return connect(
        f"{proxy.url}/v1/ws", compression=None, max_size=None, open_timeout=WAIT, close_timeout=2
    )


async def _recv(ws: ClientConnection) -> bytes:
    async with asyncio.timeout(WAIT):
        data = await ws.recv(decode=False)
    return data


class Recorder(FrameHook):
    """Records what it sees; replaces nothing."""

    def __init__(self) -> None:
        self.to_clients: list[tuple[int, RelayFrame]] = []
        self.to_relays: list[tuple[int, str | None, int | None, ClientFrame]] = []

    async def to_client(
        self, conn: ProxiedConnection, frame: RelayFrame, raw: bytes
    ) -> Sequence[bytes] | None:
        self.to_clients.append((conn.id, frame))
        return None

    async def to_relay(
        self, conn: ProxiedConnection, frame: ClientFrame, raw: bytes
    ) -> Sequence[bytes] | None:
        self.to_relays.append((conn.id, conn.user_id, conn.device_id, frame))
        return None


@pytest.mark.asyncio
async def test_frames_of_every_length_and_fragmented_messages_pass() -> None:
    recorder = Recorder()
    async with _upstream(_echo) as port, FaultProxy(port, hooks=[recorder]) as proxy:
        async with _ws(proxy) as ws:
            auth = _auth()
            # a fragmented client frame is reassembled before a hook sees it
            await ws.send([auth[:10], auth[10:40], auth[40:]])
            assert await _recv(ws) == auth
            for size in (0, 125, 126, 65_535, 65_536, 200_000):
                payload = secrets.token_bytes(size)
                await ws.send(payload)
                assert await _recv(ws) == payload
            big = secrets.token_bytes(150_000)
            await ws.send([big[:50_000], big[50_000:100_000], big[100_000:]])
            assert await _recv(ws) == big
            await ws.send("text passes too")
            async with asyncio.timeout(WAIT):
                assert await ws.recv() == "text passes too"
            # control frames both ways (the upstream answers the ping)
            pong = await ws.ping(b"are you there")
            async with asyncio.timeout(WAIT):
                await pong
            (conn,) = proxy.connections()
            assert conn.websocket and (conn.user_id, conn.device_id) == ("alice", 1001)
        # the closing handshake went through both ways
        assert ws.close_code == 1000
        await _until(lambda: not proxy.connections(), "the connection to end")
    assert [(u, d, type(f)) for _, u, d, f in recorder.to_relays] == [("alice", 1001, Auth)]
    assert recorder.to_clients == []  # nothing the upstream echoed decodes as a relay frame
    assert proxy.stats.messages_from_client == 8 == proxy.stats.messages_from_relay
    assert proxy.stats.hooked == 0


class Replacer(FrameHook):
    """``Ok(5)`` to the client becomes ``Ok(6), Ok(7)``; an ``Auth`` of alice to the
    relay becomes bob's; bob's own messages are dropped."""

    async def to_client(
        self, conn: ProxiedConnection, frame: RelayFrame, raw: bytes
    ) -> Sequence[bytes] | None:
        if frame == Ok(5):
            return [Ok(6).to_bytes(), Ok(7).to_bytes()]
        return None

    async def to_relay(
        self, conn: ProxiedConnection, frame: ClientFrame, raw: bytes
    ) -> Sequence[bytes] | None:
        if isinstance(frame, Auth) and frame.user_id == "alice":
            return [_auth("bob", 1002)]
        if isinstance(frame, Auth):
            return []
        return None


@pytest.mark.asyncio
async def test_hooks_replace_drop_and_chain_with_masked_reencoding() -> None:
    recorder = Recorder()
    async with (
        _upstream(_echo) as port,
        FaultProxy(port, hooks=[Replacer(), recorder]) as proxy,
        _ws(proxy) as ws,
    ):
        # client to relay: replaced (re-encoded and masked: the websockets server
        # fails unmasked client frames); the identity is the original Auth's
        await ws.send(_auth())
        assert await _recv(ws) == _auth("bob", 1002)
        (conn,) = proxy.connections()
        assert (conn.user_id, conn.device_id) == ("alice", 1001)
        await ws.send(_auth("bob", 1002))  # dropped by the first hook
        # relay to client: one frame becomes two; the second hook sees the new ones
        await ws.send(Ok(5).to_bytes())
        assert await _recv(ws) == Ok(6).to_bytes()
        assert await _recv(ws) == Ok(7).to_bytes()
        assert [f for _, f in recorder.to_clients] == [Ok(6), Ok(7)]
        assert [f for *_, f in recorder.to_relays] == [Auth("bob", 1002, bytes(64))]
        assert proxy.stats.hooked == 3
        proxy.remove_hook(recorder)
        proxy.remove_hook(recorder)  # a no-op
        await ws.send(Ok(8).to_bytes())
        assert await _recv(ws) == Ok(8).to_bytes()
        assert len(recorder.to_clients) == 2


@pytest.mark.asyncio
async def test_inject_to_relay_and_to_client() -> None:
    received: list[bytes] = []

    async def collect(ws: ServerConnection) -> None:
        with contextlib.suppress(ConnectionClosed):
            async for message in ws:
                assert isinstance(message, bytes)
                received.append(message)

    async with _upstream(collect) as port, FaultProxy(port) as proxy, _ws(proxy) as ws:
        await ws.send(_auth())
        await _until(lambda: received == [_auth()], "the Auth upstream")
        (conn,) = proxy.connections()
        await conn.inject_to_relay(b"injected upstream")
        await _until(lambda: len(received) == 2, "the injected message")
        assert received[1] == b"injected upstream"
        await conn.inject_to_client(Ok(1).to_bytes())
        assert await _recv(ws) == Ok(1).to_bytes()
        assert proxy.stats.injected == 2
        with pytest.raises(UsageError):
            await conn.inject_to_client("text")  # type: ignore[arg-type]
        await proxy.drop_connections()
        with pytest.raises(ProxyError):
            await conn.inject_to_client(b"too late")


@pytest.mark.asyncio
async def test_a_raising_hook_resets_its_connection_only() -> None:
    class Broken(FrameHook):
        async def to_relay(
            self, conn: ProxiedConnection, frame: ClientFrame, raw: bytes
        ) -> Sequence[bytes] | None:
            if isinstance(frame, Auth) and frame.user_id == "mallory":
                raise RuntimeError("a bug in a test's hook")
            return None

    async with (
        _upstream(_echo) as port,
        FaultProxy(port, hooks=[Broken()]) as proxy,
        _ws(proxy) as good,
        _ws(proxy) as bad,
    ):
        await bad.send(_auth("mallory", 1001))
        with pytest.raises(ConnectionClosed):
            await _recv(bad)
        assert proxy.stats.hook_errors == 1
        assert [type(e) for e in proxy.hook_errors] == [RuntimeError]
        await good.send(_auth())
        assert await _recv(good) == _auth()


@pytest.mark.asyncio
async def test_an_oversized_frame_resets_only_its_connection() -> None:
    async with (
        _upstream(_echo) as port,
        FaultProxy(port) as proxy,
        _ws(proxy) as good,
        _ws(proxy) as big,
    ):
        await good.send(_auth())
        assert await _recv(good) == _auth()
        await big.send(_auth("bob", 1002))
        assert await _recv(big) == _auth("bob", 1002)
        # a fragmented message whose total is above the limit counts as one message
        with contextlib.suppress(ConnectionClosed):
            await big.send([bytes(MAX_MESSAGE // 2), bytes(MAX_MESSAGE // 2 + 2)])
        with pytest.raises(ConnectionClosed):
            await _recv(big)
        assert proxy.stats.oversized == 1
        await _until(lambda: len(proxy.connections()) == 1, "the oversized connection to end")
        (left,) = proxy.connections()
        assert left.user_id == "alice"
        payload = bytes(MAX_MESSAGE)  # the limit itself passes
        await good.send(payload)
        assert await _recv(good) == payload


@pytest.mark.asyncio
async def test_a_stalled_reader_holds_data_and_back_pressure_reaches_the_upstream() -> None:
    count, size = 512, 64 * 1024  # 32 MiB: more than the kernel buffers between them
    sent: list[int] = []
    conns: list[ServerConnection] = []

    async def flood(ws: ServerConnection) -> None:
        with contextlib.suppress(ConnectionClosed):
            await ws.recv()  # the Auth
            conns.append(ws)
            for i in range(count):
                await ws.send(i.to_bytes(4, "big") + bytes(size - 4))
                sent.append(i)
            await ws.wait_closed()

    async with _upstream(flood) as port, FaultProxy(port) as proxy:
        proxy.stall_reader("alice", 1001)  # before the device connects
        async with _ws(proxy) as ws:
            await ws.send(_auth())
            # the upstream cannot write any more: its socket buffer backs up
            await _until(
                lambda: bool(conns) and conns[0].transport.get_write_buffer_size() > 0,
                "back-pressure on the upstream",
            )
            assert len(sent) < count
            (conn,) = proxy.connections()
            assert conn.stalled
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.2):
                    await ws.recv()
            proxy.resume_reader("alice", 1001)
            got = [int.from_bytes((await _recv(ws))[:4], "big") for _ in range(count)]
            assert got == list(range(count))
            assert len(sent) == count


@pytest.mark.asyncio
async def test_arguments_are_checked() -> None:
    with pytest.raises(UsageError):
        FaultProxy(0)
    with pytest.raises(UsageError):
        FaultProxy(1234, port=70_000)
    proxy = FaultProxy(1234)
    with pytest.raises(ProxyError):
        _ = proxy.url  # port 0 until started
    for delay, jitter in ((-1.0, 0.0), (0.0, -0.1), (float("nan"), 0.0), (float("inf"), 0.0)):
        with pytest.raises(UsageError):
            proxy.set_delay(delay, jitter)
    for p in (-0.1, 1.5):
        with pytest.raises(UsageError):
            proxy.set_duplicate_probability(p)
    with pytest.raises(UsageError):
        proxy.add_hook(object())  # type: ignore[arg-type]
    with pytest.raises(UsageError):
        proxy.set_upstream(0)
    with pytest.raises(UsageError):
        await proxy.drop_connections(device_id=1001)


# --- a real relay and SDK clients -------------------------------------------------------------


def _settings(tmp_path: Path) -> RelaySettings:
    return relay_settings(tmp_path, database_url=f"sqlite:///{tmp_path / 'relay.db'}")


# (the ``relay`` and ``proxy`` fixtures are in conftest.py)


@dataclass
class Inbox:
    """A ``messages()`` loop of one client, collecting what it yields."""

    client: Client
    got: list[Message] = field(default_factory=list)
    task: asyncio.Task[None] | None = None

    async def _loop(self) -> None:
        async for message in self.client.messages():
            self.got.append(message)

    def bodies(self) -> list[str | bytes]:
        return [m.body for m in self.got]

    async def until(self, count: int) -> None:
        def enough() -> bool:
            if self.task is not None and self.task.done():
                self.task.result()
                raise AssertionError("the messages() loop ended")
            return len(self.got) >= count

        await _until(enough, f"{count} messages")


@contextlib.asynccontextmanager
async def _inbox(client: Client) -> AsyncIterator[Inbox]:
    inbox = Inbox(client)
    inbox.task = asyncio.create_task(inbox._loop())
    try:
        yield inbox
    finally:
        inbox.task.cancel()
        await asyncio.gather(inbox.task, return_exceptions=True)


@dataclass
class Pair:
    alice: Client
    bob: Client
    alice_id: str
    bob_id: str


@contextlib.asynccontextmanager
async def _pair(url: str, tmp_path: Path) -> AsyncIterator[Pair]:
    """Alice and Bob, registered through ``url``."""
    alice_id, bob_id = f"alice-{secrets.token_hex(4)}", f"bob-{secrets.token_hex(4)}"
    async with (
        Client.open(url, store=tmp_path / "a.db", key=secrets.token_bytes(32), origin=ORIGIN) as a,
        Client.open(url, store=tmp_path / "b.db", key=secrets.token_bytes(32), origin=ORIGIN) as b,
    ):
        await a.register(alice_id)
        await b.register(bob_id)
        yield Pair(a, b, alice_id, bob_id)


async def _send_all(client: Client, to: str, bodies: list[str]) -> None:
    """Send in order; ``MessageQueued`` is committed (it goes on the next connection);
    another transport error (nothing committed) is retried, bounded."""
    for body in bodies:
        async with asyncio.timeout(WAIT):
            while True:
                try:
                    await client.send(to, body)
                except MessageQueued:
                    pass
                except TransportError:
                    await asyncio.sleep(0.05)
                    continue
                break


async def _events(client: Client) -> list[object]:
    return [item.event async for item in client.events(wait=False)]


@pytest.mark.asyncio
async def test_clients_talk_through_the_proxy_and_hooks_see_who(
    proxy: FaultProxy, tmp_path: Path
) -> None:
    recorder = Recorder()
    proxy.add_hook(recorder)
    async with _pair(proxy.url, tmp_path) as p, _inbox(p.alice) as a_in, _inbox(p.bob) as b_in:
        await _send_all(p.alice, p.bob_id, ["one", "two", "three"])
        await _send_all(p.bob, p.alice_id, ["un", "deux"])
        await b_in.until(3)
        await a_in.until(2)
        assert b_in.bodies() == ["one", "two", "three"]
        assert a_in.bodies() == ["un", "deux"]
        who = {(u, d) for _, u, d, f in recorder.to_relays if isinstance(f, Auth)}
        assert who == {(p.alice_id, p.alice.device_id), (p.bob_id, p.bob.device_id)}
        sends = [f for *_, f in recorder.to_relays if isinstance(f, Send)]
        assert len(sends) == 5
        assert sum(isinstance(f, Deliver) for _, f in recorder.to_clients) == 5
        identities = {(c.user_id, c.device_id) for c in proxy.connections() if c.websocket}
        assert identities == {(p.alice_id, p.alice.device_id), (p.bob_id, p.bob.device_id)}
    # the HTTP requests (configuration, registration) went through the same port
    assert proxy.stats.connections > 2
    assert proxy.stats.hooked == proxy.stats.dropped == proxy.stats.duplicated == 0


@pytest.mark.asyncio
async def test_plain_http_passes_on_a_kept_alive_connection(proxy: FaultProxy) -> None:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{proxy.port}", timeout=WAIT) as http:
        for _ in range(3):
            response = await http.get("/healthz")
            assert response.status_code == 200
    assert proxy.stats.connections == 1


class DropOneDelivery(FrameHook):
    """Drops the first ``Deliver`` to ``user_id`` once armed."""

    def __init__(self, user_id: str) -> None:
        self.user_id = user_id
        self.dropped: list[int] = []

    async def to_client(
        self, conn: ProxiedConnection, frame: RelayFrame, raw: bytes
    ) -> Sequence[bytes] | None:
        if isinstance(frame, Deliver) and conn.user_id == self.user_id and not self.dropped:
            self.dropped.append(frame.seq)
            return []
        return None


@pytest.mark.asyncio
async def test_a_dropped_delivery_comes_again_on_the_next_connection(
    proxy: FaultProxy, tmp_path: Path
) -> None:
    async with _pair(proxy.url, tmp_path) as p, _inbox(p.bob) as b_in:
        await _send_all(p.alice, p.bob_id, ["hello"])  # the session exists before the loss
        await b_in.until(1)
        hook = DropOneDelivery(p.bob_id)
        proxy.add_hook(hook)
        await _send_all(p.alice, p.bob_id, ["lost", "two", "three"])
        await b_in.until(3)
        assert b_in.bodies() == ["hello", "two", "three"] and len(hook.dropped) == 1
        assert await proxy.drop_connections(p.bob_id, p.bob.device_id) == 1
        await b_in.until(4)  # bob reconnects by itself; the relay delivers it again
        assert b_in.bodies() == ["hello", "two", "three", "lost"]
        assert proxy.stats.hooked == 1 and proxy.stats.dropped == 1


class Duplicate(FrameHook):
    """Sends every ``Deliver`` to ``user_id`` twice."""

    def __init__(self, user_id: str) -> None:
        self.user_id = user_id

    async def to_client(
        self, conn: ProxiedConnection, frame: RelayFrame, raw: bytes
    ) -> Sequence[bytes] | None:
        if isinstance(frame, Deliver) and conn.user_id == self.user_id:
            return [raw, raw]
        return None


def _acks(recorder: Recorder, user_id: str) -> list[int]:
    """The sequence numbers ``user_id`` acknowledged, in order."""
    return [
        seq
        for _, u, _, f in recorder.to_relays
        if u == user_id and isinstance(f, Ack)
        for seq in f.seqs
    ]


@pytest.mark.asyncio
async def test_duplicated_deliveries_by_hook_and_by_probability(
    proxy: FaultProxy, tmp_path: Path
) -> None:
    async with _pair(proxy.url, tmp_path) as p, _inbox(p.bob) as b_in:
        hook, recorder = Duplicate(p.bob_id), Recorder()
        proxy.add_hook(hook)
        proxy.add_hook(recorder)
        await _send_all(p.alice, p.bob_id, ["a", "b", "c"])
        await b_in.until(3)
        proxy.remove_hook(hook)
        proxy.set_duplicate_probability(1.0)
        await _send_all(p.alice, p.bob_id, ["d", "e"])
        await b_in.until(5)
        # bob processed (and acknowledged) every delivery twice, showed each once
        await _until(lambda: len(_acks(recorder, p.bob_id)) == 10, "two acks per delivery")
        acks = _acks(recorder, p.bob_id)
        assert acks == [seq for seq in sorted(set(acks)) for _ in (1, 2)]
        assert b_in.bodies() == ["a", "b", "c", "d", "e"]
        assert await _events(p.bob) == []  # a redelivery under its own seq is no replay
        assert proxy.stats.hooked == 3 and proxy.stats.duplicated == 2


class Rewriter(FrameHook):
    """Re-encodes every ``Send`` and ``BundleResult`` (same payload, a new frame) and
    keeps the last ``Deliver`` to ``user_id``."""

    def __init__(self, user_id: str) -> None:
        self.user_id = user_id
        self.bundles = 0
        self.sends = 0
        self.last_delivery: bytes | None = None

    async def to_client(
        self, conn: ProxiedConnection, frame: RelayFrame, raw: bytes
    ) -> Sequence[bytes] | None:
        if isinstance(frame, Deliver) and conn.user_id == self.user_id:
            self.last_delivery = raw
        if isinstance(frame, BundleResult):
            self.bundles += 1
            return [raw]
        return None

    async def to_relay(
        self, conn: ProxiedConnection, frame: ClientFrame, raw: bytes
    ) -> Sequence[bytes] | None:
        if isinstance(frame, Send):
            self.sends += 1
            return [frame.to_bytes()]
        return None


@pytest.mark.asyncio
async def test_replaced_frames_work_and_an_injected_replay_is_dropped(
    proxy: FaultProxy, tmp_path: Path
) -> None:
    async with _pair(proxy.url, tmp_path) as p, _inbox(p.bob) as b_in:
        hook = Rewriter(p.bob_id)
        proxy.add_hook(hook)
        await _send_all(p.alice, p.bob_id, ["first", "second"])
        await b_in.until(2)
        assert b_in.bodies() == ["first", "second"]
        assert hook.bundles == 1  # alice claimed bob's bundle once
        assert hook.sends == 2
        assert proxy.stats.hooked == 3
        assert hook.last_delivery is not None
        (bob_conn,) = [c for c in proxy.connections() if c.user_id == p.bob_id]
        # "second" again under a new sequence number: what an honest relay never sends
        second = decode_relay_frame(hook.last_delivery)
        assert isinstance(second, Deliver)
        replay = dataclasses.replace(second, seq=second.seq + 1000)
        await bob_conn.inject_to_client(replay.to_bytes())
        await _until(lambda: proxy.stats.injected == 1, "the injection")
        replays: list[object] = []
        async with asyncio.timeout(WAIT):
            while not replays:
                replays += await _events(p.bob)
                await asyncio.sleep(POLL)
        assert replays == [ReplayDropped(p.alice_id, p.alice.device_id)]
        assert b_in.bodies() == ["first", "second"]


@pytest.mark.asyncio
async def test_dropped_connections_reconnect_and_nothing_is_lost(
    proxy: FaultProxy, tmp_path: Path
) -> None:
    to_bob = [f"a->b {i}" for i in range(12)]
    to_alice = [f"b->a {i}" for i in range(12)]
    async with _pair(proxy.url, tmp_path) as p, _inbox(p.alice) as a_in, _inbox(p.bob) as b_in:
        await _send_all(p.alice, p.bob_id, to_bob[:4])
        await _send_all(p.bob, p.alice_id, to_alice[:4])
        await b_in.until(4)
        assert await proxy.drop_connections() >= 2
        await _send_all(p.alice, p.bob_id, to_bob[4:8])
        await _until(
            lambda: any(c.user_id == p.bob_id and c.websocket for c in proxy.connections()),
            "bob to reconnect",
        )
        assert await proxy.drop_connections(p.bob_id) == 1
        await _send_all(p.bob, p.alice_id, to_alice[4:])
        await _send_all(p.alice, p.bob_id, to_bob[8:])
        await b_in.until(len(to_bob))
        await a_in.until(len(to_alice))
        assert b_in.bodies() == to_bob
        assert a_in.bodies() == to_alice
        assert await p.alice.pending_outbox() == 0 and await p.bob.pending_outbox() == 0
    assert proxy.stats.dropped >= 2


@pytest.mark.asyncio
async def test_the_relay_restarts_on_a_fresh_port_behind_the_same_proxy(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    async with contextlib.AsyncExitStack() as stack:
        first = await stack.enter_async_context(running_relay(settings))
        proxy = await stack.enter_async_context(FaultProxy(first.port))
        url, port = proxy.url, proxy.port
        p = await stack.enter_async_context(_pair(url, tmp_path))
        b_in = await stack.enter_async_context(_inbox(p.bob))
        await _send_all(p.alice, p.bob_id, ["before"])
        await b_in.until(1)
        await first.stop()
        second = await stack.enter_async_context(running_relay(settings))
        assert second.port != first.port
        proxy.set_upstream(second.port)
        assert proxy.upstream_port == second.port
        await _send_all(p.alice, p.bob_id, ["after"])
        await b_in.until(2)
        assert b_in.bodies() == ["before", "after"]
        assert (proxy.url, proxy.port) == (url, port)
        upstreams = {c.user_id for c in proxy.connections() if c.websocket}
        assert upstreams == {p.alice_id, p.bob_id}


@pytest.mark.asyncio
async def test_a_delay_keeps_the_order(proxy: FaultProxy, tmp_path: Path) -> None:
    bodies = [f"m{i}" for i in range(10)]
    async with _pair(proxy.url, tmp_path) as p, _inbox(p.bob) as b_in:
        await _send_all(p.alice, p.bob_id, ["warm up"])
        await b_in.until(1)
        proxy.set_delay(0.05, jitter=0.05)
        started = time.monotonic()
        await p.alice.send(p.bob_id, bodies[0])
        assert time.monotonic() - started >= 0.1  # the Send and its Accepted, each delayed
        await _send_all(p.alice, p.bob_id, bodies[1:])
        await b_in.until(len(bodies) + 1)
        assert b_in.bodies() == ["warm up", *bodies]
        assert proxy.stats.delayed >= 2 * len(bodies)
        proxy.set_delay(0)


@pytest.mark.asyncio
async def test_a_stalled_reader_gets_its_messages_after_resume_in_order(
    proxy: FaultProxy, relay: RunningRelay, tmp_path: Path
) -> None:
    bodies = [f"held {i}" for i in range(5)]
    async with _pair(proxy.url, tmp_path) as p, _inbox(p.bob) as b_in:
        await _send_all(p.alice, p.bob_id, ["first"])
        await b_in.until(1)
        await _until(
            lambda: any(c.user_id == p.bob_id and c.websocket for c in proxy.connections()),
            "bob's connection",
        )
        proxy.stall_reader(p.bob_id, p.bob.device_id)
        await _send_all(p.alice, p.bob_id, bodies)
        storage = relay.ctx.storage.messages
        async with asyncio.timeout(WAIT):
            while await storage.depth(p.bob_id, p.bob.device_id) < len(bodies):
                await asyncio.sleep(POLL)
        # stored and written by the relay, held by the proxy: bob sees none for a while
        deadline = time.monotonic() + 0.5
        while time.monotonic() < deadline:
            assert b_in.bodies() == ["first"]
            await asyncio.sleep(POLL)
        proxy.resume_reader(p.bob_id, p.bob.device_id)
        await b_in.until(1 + len(bodies))
        assert b_in.bodies() == ["first", *bodies]


@pytest.mark.asyncio
async def test_an_oversized_frame_closes_only_that_connection_on_a_relay(
    proxy: FaultProxy, tmp_path: Path
) -> None:
    async with _pair(proxy.url, tmp_path) as p, _inbox(p.bob) as b_in:
        await _send_all(p.alice, p.bob_id, ["before"])
        await b_in.until(1)
        before = {c.id for c in proxy.connections() if c.websocket}
        async with _ws(proxy) as raw:
            await _recv(raw)  # the relay's Hello
            with contextlib.suppress(ConnectionClosed):
                await raw.send(bytes(MAX_MESSAGE + 1))
            with pytest.raises(ConnectionClosed):
                await _recv(raw)
        assert proxy.stats.oversized == 1
        await _send_all(p.alice, p.bob_id, ["after"])
        await b_in.until(2)
        assert {c.id for c in proxy.connections() if c.websocket} == before


@pytest.mark.asyncio
async def test_stop_leaves_nothing_running_and_start_reuses_the_port(
    relay: RunningRelay,
) -> None:
    proxy = FaultProxy(relay.port)
    await proxy.start()
    port = proxy.port
    with pytest.raises(UsageError):
        await proxy.start()
    async with _ws(proxy) as ws:
        await _recv(ws)  # the relay's Hello
        await _until(lambda: len(proxy.connections()) == 1, "the connection")
        await proxy.stop()
        await proxy.stop()  # idempotent
        with pytest.raises(ConnectionClosed):
            await _recv(ws)
    assert proxy.connections() == [] and not proxy.running
    assert not [t for t in asyncio.all_tasks() if t.get_name().startswith("proxy-")]
    with pytest.raises(OSError):
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.close()
        await writer.wait_closed()
    await proxy.start()
    try:
        assert proxy.port == port
        async with _ws(proxy) as ws:
            await _recv(ws)
    finally:
        await proxy.stop()
    assert not [t for t in asyncio.all_tasks() if t.get_name().startswith("proxy-")]
