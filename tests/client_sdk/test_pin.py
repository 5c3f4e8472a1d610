"""A wrong SPKI pin, seen through the Client (issue 4 "What the tests must show";
DESIGN 6: the pin is checked on the TLS handshake, before any authentication
statement is signed): a real TLS relay (uvicorn on 127.0.0.1, a self-signed
certificate) and real encrypted stores.

``tests/client_sdk/transport/test_tls.py`` covers the transport
(``RelayConnection.connect`` and the HTTP helpers); here ``Client.open(..., pin=wrong)``
then ``connect()``, ``send()``, ``messages()`` and ``register()`` each raise
``PinMismatch``, and the relay, asserted on its side, received no ``Auth`` frame (no
authentication statement) and no registration, and authenticated no connection.
"""

from __future__ import annotations

import asyncio
import secrets
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from client_sdk.client import Client
from client_sdk.errors import PinMismatch
from e2ee.primitives import spki_sha256
from e2ee.relay_frames import ClientFrame, decode_client_frame
from server.session import RelaySession, Reply
from tests.server.relay_client import ORIGIN, RunningRelay, relay_settings, running_relay
from tests.server.test_relay_tls import _self_signed

WAIT = 20.0


class TlsRelay:
    def __init__(self, relay: RunningRelay, context: ssl.SSLContext, pin: bytes, wrong: bytes):
        self.relay = relay
        self.url = f"wss://127.0.0.1:{relay.port}"
        self.context = context
        self.pin = pin
        self.wrong = wrong
        self.frames: list[str] = []
        """Type names of every client frame the relay's sessions received."""


@pytest_asyncio.fixture
async def tls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[TlsRelay]:
    cert, key, der = _self_signed(tmp_path, "relay")
    _, _, other_der = _self_signed(tmp_path, "other")
    context = ssl.create_default_context(cafile=str(cert))
    settings = relay_settings(
        tmp_path, database_url=f"sqlite:///{tmp_path / 'relay.db'}", tls_cert=cert, tls_key=key
    )
    async with running_relay(settings) as relay:
        state = TlsRelay(relay, context, spki_sha256(der), spki_sha256(other_der))
        original = RelaySession.parse

        def spy(self: RelaySession, data: bytes) -> ClientFrame | Reply:
            try:
                state.frames.append(type(decode_client_frame(data)).__name__)
            except Exception:
                state.frames.append("undecodable")
            return original(self, data)

        monkeypatch.setattr(RelaySession, "parse", spy)
        yield state


async def _relay_idle(relay: RunningRelay) -> None:
    """Poll (bounded) until the relay has finished with every connection (its reader
    has read all a client sent)."""
    registry = relay.ctx.metrics.registry
    async with asyncio.timeout(WAIT):
        while registry.get_sample_value("relay_connections") != 0:
            await asyncio.sleep(0.01)


@pytest.mark.asyncio
async def test_a_wrong_pin_signs_nothing_and_the_relay_sees_no_auth(
    tls: TlsRelay, tmp_path: Path
) -> None:
    alice_path, key = tmp_path / "alice.db", secrets.token_bytes(32)
    alice_id, bob_id = f"alice-{secrets.token_hex(4)}", f"bob-{secrets.token_hex(4)}"
    async with Client.open(
        tls.url,
        store=tmp_path / "bob.db",
        key=secrets.token_bytes(32),
        pin=tls.pin,
        ssl=tls.context,
        origin=ORIGIN,
    ) as bob:
        await bob.register(bob_id)
    async with Client.open(
        tls.url, store=alice_path, key=key, pin=tls.pin, ssl=tls.context, origin=ORIGIN
    ) as alice:
        await alice.register(alice_id)
        await alice.connect()
        assert tls.frames.count("Auth") >= 1  # the right pin authenticates: the spy sees it
    await _relay_idle(tls.relay)
    before = list(tls.frames)

    async with Client.open(
        tls.url, store=alice_path, key=key, pin=tls.wrong, ssl=tls.context, origin=ORIGIN
    ) as alice:
        with pytest.raises(PinMismatch) as caught:
            await alice.connect()
        assert (caught.value.expected, caught.value.seen) == (tls.wrong, tls.pin)
        with pytest.raises(PinMismatch):
            await alice.send(bob_id, "never leaves")
        assert await alice.pending_outbox() == 0  # refused before anything was encrypted
        with pytest.raises(PinMismatch):
            async with asyncio.timeout(WAIT):
                async for _ in alice.messages():
                    pytest.fail("no message over a connection with a wrong pin")
    await _relay_idle(tls.relay)
    assert tls.frames == before  # the relay received no frame at all, so no Auth
    registry = tls.relay.ctx.metrics.registry
    assert registry.get_sample_value("relay_authenticated_connections") == 0

    # registration with a wrong pin: refused before the relay is asked anything
    carol_id = f"carol-{secrets.token_hex(4)}"
    with pytest.raises(PinMismatch):
        async with Client.open(
            tls.url,
            store=tmp_path / "carol.db",
            key=secrets.token_bytes(32),
            pin=tls.wrong,
            ssl=tls.context,
            origin=ORIGIN,
        ) as carol:
            await carol.register(carol_id)
    await _relay_idle(tls.relay)
    assert tls.frames == before
    accounts = tls.relay.ctx.storage.accounts
    assert await accounts.get_account(alice_id) is not None
    assert await accounts.get_account(carol_id) is None

    # the same store with the right pin still works
    async with Client.open(
        tls.url, store=alice_path, key=key, pin=tls.pin, ssl=tls.context, origin=ORIGIN
    ) as alice:
        await alice.send(bob_id, "with the right pin")
    assert tls.frames.count("Auth") == before.count("Auth") + 1
