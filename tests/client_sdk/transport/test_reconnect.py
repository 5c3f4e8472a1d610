"""The reconnect policy with an injected clock, randomness and sleep."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from client_sdk.errors import (
    AuthFailed,
    ConnectedElsewhere,
    ConnectionFailed,
    DeviceRemoved,
    GoingAway,
    NoCommonVersion,
    Overflow,
    PinMismatch,
    TransportError,
)
from client_sdk.transport import ReconnectingRelay, ReconnectPolicy, RelayConnection
from e2ee.relay_frames import CloseCode, ErrorCode


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def _policy(clock: Clock, rng: Callable[[], float] = lambda: 0.0) -> ReconnectPolicy:
    return ReconnectPolicy(base=0.5, cap=60.0, now=clock, rng=rng)


@pytest.mark.parametrize("rng_value", [0.0, 0.999999])
def test_backoff_doubles_within_jitter_bounds_and_caps(rng_value: float) -> None:
    clock = Clock()
    policy = _policy(clock, lambda: rng_value)
    delays = [policy.delay_after(ConnectionFailed("down")) for _ in range(12)]
    for n, delay in enumerate(delays):
        ceiling = min(60.0, 0.5 * 2**n)
        assert ceiling / 2 <= delay <= ceiling
    assert max(delays) <= 60.0
    assert delays[-1] >= 30.0  # capped, not grown without bound


def test_a_stable_connection_resets_the_backoff() -> None:
    clock = Clock()
    policy = _policy(clock)
    for _ in range(5):
        policy.delay_after(GoingAway(CloseCode.GOING_AWAY))
    policy.connected()
    clock.t += 1
    assert policy.delay_after(Overflow(CloseCode.OVERFLOW)) == 0.5 * 2**5 / 2  # not stable
    policy.connected()
    clock.t += 61
    assert policy.delay_after(Overflow(CloseCode.OVERFLOW)) == 0.25  # reset


def test_connected_elsewhere_three_times_in_ten_minutes() -> None:
    clock = Clock()
    policy = _policy(clock)
    allowed = []
    for _ in range(3):
        allowed.append(policy.elsewhere_allowed())
        policy.delay_after(ConnectedElsewhere(CloseCode.CONNECTED_ELSEWHERE))
        clock.t += 100
    assert allowed == [True, True, True] and not policy.elsewhere_allowed()
    fourth = ConnectedElsewhere(CloseCode.CONNECTED_ELSEWHERE)
    with pytest.raises(ConnectedElsewhere) as info:
        policy.delay_after(fourth)
    assert info.value is fourth
    # Once the first falls out of the ten-minute window, one more is allowed.
    clock.t = 1000.0 + 600
    policy.delay_after(ConnectedElsewhere(CloseCode.CONNECTED_ELSEWHERE))
    with pytest.raises(ConnectedElsewhere):
        policy.delay_after(ConnectedElsewhere(CloseCode.CONNECTED_ELSEWHERE))


@pytest.mark.parametrize(
    "error",
    [
        DeviceRemoved(CloseCode.DEVICE_REMOVED),
        AuthFailed(ErrorCode.AUTH_FAILED, "no"),
        PinMismatch(expected=b"a" * 32, seen=b"b" * 32),
        NoCommonVersion(offered=(9,), supported=(1,)),
    ],
)
def test_terminal_errors_stop(error: TransportError) -> None:
    with pytest.raises(type(error)):
        _policy(Clock()).delay_after(error)


@pytest.mark.asyncio
async def test_reconnecting_relay_backs_off_on_connect_failures_then_stops() -> None:
    slept: list[float] = []
    attempts: list[int] = []

    async def sleep(delay: float) -> None:
        slept.append(delay)

    async def connect() -> RelayConnection:
        attempts.append(1)
        if len(attempts) < 4:
            raise ConnectionFailed("refused")
        raise AuthFailed(ErrorCode.AUTH_FAILED, "removed")

    relay = ReconnectingRelay(connect, policy=_policy(Clock()), sleep=sleep)
    with pytest.raises(AuthFailed):
        async for _ in relay.connections():
            pytest.fail("no connection was made")
    assert slept == [0.25, 0.5, 1.0]
    assert len(attempts) == 4
