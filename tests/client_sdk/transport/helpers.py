"""Helpers for the transport tests: identities of test accounts, connections."""

from __future__ import annotations

from client_sdk.transport import DeviceIdentity, RelayConnection
from tests.server.relay_client import ORIGIN, RunningRelay, TestAccount

__all__ = ["connect", "identity"]


def identity(account: TestAccount, index: int = 0) -> DeviceIdentity:
    device = account.devices[index].device
    return DeviceIdentity(account.user_id, device.device_id, device.signing)


async def connect(
    relay: RunningRelay, account: TestAccount, index: int = 0, **kwargs: object
) -> RelayConnection:
    return await RelayConnection.connect(
        f"ws://127.0.0.1:{relay.port}/v1/ws",
        origin=ORIGIN,
        identity=identity(account, index),
        request_timeout=10.0,
        **kwargs,  # type: ignore[arg-type]
    )
