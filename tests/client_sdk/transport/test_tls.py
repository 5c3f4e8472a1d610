"""TLS with an SPKI pin against a real TLS relay (a self-signed certificate): the pin
is checked on the handshake, before any authentication statement is signed."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path
from typing import Any

import pytest

from client_sdk.errors import PinMismatch, UsageError
from client_sdk.transport import RelayConnection, fetch_config, register
from e2ee.auth import sign_relay_auth
from e2ee.primitives import spki_sha256
from server.session import RelaySession
from tests.client_sdk.transport.helpers import identity
from tests.server.relay_client import ORIGIN, WAIT, make_account, relay_settings, running_relay
from tests.server.test_relay_tls import _self_signed


@pytest.mark.asyncio
async def test_pin_match_authenticates_and_mismatch_signs_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cert, key, der = _self_signed(tmp_path, "relay")
    _, _, other_der = _self_signed(tmp_path, "other")
    pin, wrong = spki_sha256(der), spki_sha256(other_der)
    context = ssl.create_default_context(cafile=str(cert))
    settings = relay_settings(tls_cert=cert, tls_key=key)

    relay_auth_frames: list[Any] = []
    original_auth = RelaySession._auth

    async def spy_auth(self: RelaySession, frame: Any) -> Any:
        relay_auth_frames.append(frame)
        return await original_auth(self, frame)

    monkeypatch.setattr(RelaySession, "_auth", spy_auth)
    signed: list[bytes] = []

    def spy_sign(*args: Any, **kwargs: Any) -> bytes:
        signed.append(kwargs["nonce"])
        return sign_relay_auth(*args, **kwargs)

    monkeypatch.setattr("client_sdk.transport.protocol.sign_relay_auth", spy_sign)

    async with running_relay(settings) as relay:
        http = f"https://127.0.0.1:{relay.port}"
        url = f"wss://127.0.0.1:{relay.port}/v1/ws"
        account = make_account()
        await register(
            http,
            signed_list=account.device_list,
            master=account.master,
            device_signing=account.devices[0].device.signing,
            ssl=context,
            spki_pin=pin,
        )
        with pytest.raises(PinMismatch):
            await fetch_config(http, ssl=context, spki_pin=wrong)

        async with await RelayConnection.connect(
            url, origin=ORIGIN, identity=identity(account), spki_pin=pin, ssl=context
        ) as conn:
            assert conn.is_open and conn.spki_sha256 == pin
            assert (await conn.key_check()).device_list_digest == account.device_list.digest
        assert len(relay_auth_frames) == 1 and len(signed) == 1

        with pytest.raises(PinMismatch) as info:
            await RelayConnection.connect(
                url, origin=ORIGIN, identity=identity(account), spki_pin=wrong, ssl=context
            )
        assert (info.value.expected, info.value.seen) == (wrong, pin)
        # Wait until the relay has finished with that connection (its reader has read
        # everything the client sent), then: nothing was signed, and the relay (on its
        # side) never received an Auth frame.
        registry = relay.ctx.metrics.registry
        async with asyncio.timeout(WAIT):
            while registry.get_sample_value("relay_connections") != 0:
                await asyncio.sleep(0.01)
        assert len(signed) == 1
        assert len(relay_auth_frames) == 1

        with pytest.raises(UsageError):
            await RelayConnection.connect(
                f"ws://127.0.0.1:{relay.port}/v1/ws",
                origin=ORIGIN,
                identity=identity(account),
                spki_pin=pin,
            )
