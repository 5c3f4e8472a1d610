"""Unit tests of client_sdk.testing.workload: SimConfig, Action, Schedule, make_schedule,
message_body and canary (pure and in memory)."""

from __future__ import annotations

import itertools
import json
import math
import random
import re
from collections import Counter, defaultdict
from dataclasses import replace
from typing import Any

import pytest

from client_sdk.testing.canary import CANARY_PREFIX, CanaryScanner
from client_sdk.testing.worker import SID_PATTERN
from client_sdk.testing.workload import (
    MAX_BODY,
    MIN_BODY,
    Action,
    ConfigError,
    Schedule,
    SimConfig,
    _conversations,
    canary,
    make_schedule,
    message_body,
    user_ids,
)

FAULT_KINDS = ("relay_kill", "client_kill", "disconnect")
LABEL = re.compile(r"^(u\d{3})/(\d+)$")


def small_config(**overrides: Any) -> SimConfig:
    """A small run with every kind of fault."""
    values: dict[str, Any] = {
        "seed": 1234,
        "users": 12,
        "devices_per_user": 3,
        "messages": 600,
        "conversations": 3,
        "workers": 4,
        "relay_kills": 4,
        "client_kills": 3,
        "disconnects": 9,
    }
    values.update(overrides)
    return SimConfig(**values)


def roundtrip(value: dict[str, Any]) -> Any:
    """``value`` as it comes back from a JSON file."""
    return json.loads(json.dumps(value))


def fault_positions(schedule: Schedule) -> dict[str, list[int]]:
    """For each fault kind, how many sends come before each of its faults."""
    positions: dict[str, list[int]] = defaultdict(list)
    sends = 0
    for action in schedule.actions:
        if action.kind == "send":
            sends += 1
        else:
            positions[action.kind].append(sends)
    return positions


def pair_partners(schedule: Schedule) -> dict[str, set[str]]:
    """Each user's conversation partners, as the sends show them."""
    partners: dict[str, set[str]] = defaultdict(set)
    for action in schedule.sends():
        sender = action.sender.split("/")[0]
        partners[sender].add(action.to)
        partners[action.to].add(sender)
    return partners


# --- make_schedule ---------------------------------------------------------------------


def test_same_seed_gives_the_same_schedule() -> None:
    first = make_schedule(small_config())
    second = make_schedule(small_config())
    assert first == second
    assert first.canary_keys == second.canary_keys
    assert first.to_json() == second.to_json()


def test_another_seed_gives_another_schedule() -> None:
    first = make_schedule(small_config(seed=1))
    second = make_schedule(small_config(seed=2))
    assert first.actions != second.actions
    assert first.canary_keys != second.canary_keys


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"relay_kills": 0, "client_kills": 0, "disconnects": 0},
        {"messages": 1, "relay_kills": 0, "client_kills": 0, "disconnects": 3},
        {"messages": 10, "relay_kills": 25, "client_kills": 17, "disconnects": 40},
        {"messages": 2000, "relay_kills": 5, "client_kills": 3, "disconnects": 10},
    ],
)
def test_counts_of_sends_and_faults_match_the_config(overrides: dict[str, Any]) -> None:
    config = small_config(**overrides)
    schedule = make_schedule(config)
    kinds = Counter(action.kind for action in schedule.actions)
    assert kinds["send"] == config.messages
    assert kinds["relay_kill"] == config.relay_kills
    assert kinds["client_kill"] == config.client_kills
    assert kinds["disconnect"] == config.disconnects
    assert [a.sid for a in schedule.sends()] == list(range(config.messages))
    assert set(schedule.canary_keys) == set(range(config.messages))


def test_a_run_without_messages_has_no_actions() -> None:
    schedule = make_schedule(small_config(messages=0))
    assert schedule.actions == ()
    assert schedule.canary_keys == {}


@pytest.mark.parametrize("seed", range(40))
def test_kills_come_between_the_first_and_the_last_send(seed: int) -> None:
    config = small_config(seed=seed, messages=60, relay_kills=6, client_kills=5, disconnects=0)
    schedule = make_schedule(config)
    assert schedule.actions[0].kind == "send"
    assert schedule.actions[-1].kind == "send"
    for kind in ("relay_kill", "client_kill"):
        assert all(1 <= p < config.messages for p in fault_positions(schedule)[kind])


def test_disconnects_never_come_before_the_first_send() -> None:
    for seed in range(50):
        config = small_config(seed=seed, messages=40, relay_kills=0, client_kills=0, disconnects=8)
        schedule = make_schedule(config)
        assert schedule.actions[0].kind == "send", f"seed {seed}"


@pytest.mark.parametrize("kind", ["relay_kills", "client_kills"])
def test_a_kill_in_a_one_message_run_comes_after_the_send(kind: str) -> None:
    overrides = {"relay_kills": 0, "client_kills": 0, "disconnects": 0, kind: 1}
    schedule = make_schedule(small_config(messages=1, **overrides))
    assert schedule.actions[0].kind == "send"


def test_kills_are_spread_over_the_run() -> None:
    config = small_config(messages=1000, relay_kills=4, client_kills=4, disconnects=0)
    schedule = make_schedule(config)
    positions = fault_positions(schedule)
    for kind in ("relay_kill", "client_kill"):
        spots = positions[kind]
        assert spots == sorted(spots)
        # evenly spread with some jitter: over the whole run, never bunched
        assert spots[0] < 400
        assert spots[-1] > 600
        assert min(b - a for a, b in itertools.pairwise(spots)) >= 100


def test_disconnects_are_spread_over_the_run() -> None:
    config = small_config(messages=1000, relay_kills=0, client_kills=0, disconnects=30)
    spots = fault_positions(make_schedule(config))["disconnect"]
    assert min(spots) < 250
    assert max(spots) > 750
    assert all(p < config.messages for p in spots)


@pytest.mark.parametrize(("users", "conversations", "seed"), [(12, 3, 5), (20, 2, 9), (6, 5, 1)])
def test_every_user_has_its_conversations_and_sends_stay_in_them(
    users: int, conversations: int, seed: int
) -> None:
    config = small_config(
        seed=seed, users=users, conversations=conversations, messages=3000, workers=3
    )
    schedule = make_schedule(config)
    partners = pair_partners(schedule)
    assert set(partners) == set(user_ids(users))
    for user, theirs in partners.items():
        assert user not in theirs
        assert len(theirs) >= conversations
    # Only a few pairs talk: the greedy construction adds at most `conversations` pairs
    # per user, far fewer than all pairs (which 3000 random sends would all show).
    pairs = {frozenset((a.sender.split("/")[0], a.to)) for a in schedule.sends()}
    assert len(pairs) <= users * conversations
    if users * conversations < users * (users - 1) // 2:
        assert len(pairs) < users * (users - 1) // 2


@pytest.mark.parametrize("seed", range(30))
def test_conversations_give_every_user_enough_partners(seed: int) -> None:
    rng = random.Random(seed)
    count = rng.randint(2, 30)
    per_user = rng.randint(1, count - 1)
    users = user_ids(count)
    pairs = _conversations(users, per_user, random.Random(seed))
    assert pairs == sorted(set(pairs))
    partners: dict[str, set[str]] = defaultdict(set)
    for a, b in pairs:
        assert a < b
        assert a in users
        assert b in users
        partners[a].add(b)
        partners[b].add(a)
    assert all(len(partners[u]) >= per_user for u in users)


def test_sends_and_targets_name_devices_and_workers_in_range() -> None:
    config = small_config(users=7, devices_per_user=2, workers=3, disconnects=40)
    schedule = make_schedule(config)
    users = set(user_ids(config.users))
    seen_devices: set[int] = set()
    for action in schedule.actions:
        if action.kind == "send":
            match = LABEL.match(action.sender)
            assert match is not None
            assert match.group(1) in users
            assert int(match.group(2)) < config.devices_per_user
            seen_devices.add(int(match.group(2)))
            assert action.to in users
            assert action.to != match.group(1)
            assert action.target == ""
        elif action.kind == "disconnect":
            match = LABEL.match(action.target)
            assert match is not None
            assert match.group(1) in users
            assert int(match.group(2)) < config.devices_per_user
        elif action.kind == "client_kill":
            assert 0 <= int(action.target) < config.workers
        else:
            assert action == Action("relay_kill")
    assert seen_devices == set(range(config.devices_per_user))


@pytest.mark.parametrize(("min_size", "max_size"), [(MIN_BODY, 110), (500, 500), (1000, MAX_BODY)])
def test_sizes_stay_within_bounds(min_size: int, max_size: int) -> None:
    config = small_config(min_size=min_size, max_size=max_size, messages=800)
    sizes = [a.size for a in make_schedule(config).sends()]
    assert all(min_size <= s <= max_size for s in sizes)
    if max_size - min_size <= 10:
        assert min(sizes) == min_size
        assert max(sizes) == max_size


def test_workers_partition_the_users() -> None:
    config = small_config(users=11, workers=4)
    workers = make_schedule(config).workers
    assert len(workers) == config.workers
    assert all(workers)
    hosted = [u for group in workers for u in group]
    assert sorted(hosted) == user_ids(config.users)


def test_canary_keys_are_distinct_48_hex_digits() -> None:
    keys = make_schedule(small_config()).canary_keys
    assert all(re.fullmatch(r"[0-9a-f]{48}", k) for k in keys.values())
    assert len(set(keys.values())) == len(keys)


def test_user_ids() -> None:
    assert user_ids(3) == ["u000", "u001", "u002"]
    assert user_ids(0) == []


# --- JSON --------------------------------------------------------------------------------


def test_schedule_json_round_trip() -> None:
    schedule = make_schedule(small_config())
    again = Schedule.from_json(roundtrip(schedule.to_json()))
    assert again == schedule
    assert again.canary_keys == schedule.canary_keys


def test_first_send_json_round_trip() -> None:
    action = Action("send", sid=0, sender="u000/0", to="u001", size=300)
    assert Action.from_json(roundtrip(action.to_json())) == action


def test_schedule_json_round_trip_of_sends_after_the_first() -> None:
    schedule = make_schedule(small_config())
    later = Schedule(
        tuple(a for a in schedule.actions if a.sid != 0),
        schedule.workers,
        {k: v for k, v in schedule.canary_keys.items() if k != 0},
    )
    assert {a.kind for a in later.actions} == {"send", *FAULT_KINDS}
    again = Schedule.from_json(roundtrip(later.to_json()))
    assert again == later
    assert again.canary_keys == later.canary_keys
    assert again.to_json() == later.to_json()


@pytest.mark.parametrize(
    "action",
    [
        Action("send", sid=7, sender="u003/1", to="u017", size=4096),
        Action("relay_kill"),
        Action("client_kill", target="0"),
        Action("client_kill", target="3"),
        Action("disconnect", target="u002/0"),
    ],
)
def test_action_json_round_trip(action: Action) -> None:
    encoded = roundtrip(action.to_json())
    assert encoded["kind"] == action.kind
    assert Action.from_json(encoded) == action


@pytest.mark.parametrize(
    "config",
    [
        SimConfig(seed=0),
        SimConfig(
            seed=2**40,
            users=3,
            devices_per_user=4,
            messages=0,
            conversations=2,
            rate=0.0,
            min_size=MAX_BODY,
            max_size=MAX_BODY,
            database="postgresql://postgres@127.0.0.1:5432/test",
            redis_url="redis://127.0.0.1:6379/0",
            relay_kills=0,
            client_kills=1,
            disconnects=2,
            duplicate_probability=0.25,
            delay_ms=12.5,
            workers=3,
            timeout_s=30.5,
            drain_s=1.0,
            client_state_limit_bytes=1,
        ),
    ],
)
def test_config_json_round_trip(config: SimConfig) -> None:
    assert SimConfig.from_json(roundtrip(config.to_json())) == config


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (None, "not a JSON object"),
        ([1, 2], "not a JSON object"),
        ("seed=1", "not a JSON object"),
        ({"seed": 1, "colour": "red"}, "unknown settings: colour"),
        ({"seed": 1, "zeta": 1, "alpha": 2}, "unknown settings: alpha, zeta"),
        ({}, "bad settings"),
        ({"users": 5}, "bad settings"),
        ({"seed": 1, "users": "5"}, "users must be an integer"),
        ({"seed": 1, "rate": "fast"}, "rate must be a finite number"),
        ({"seed": 1, "workers": None}, "workers must be an integer"),
        ({"seed": 1, "min_size": [100]}, "min_size must be an integer"),
        ({"seed": 1, "users": 1}, "at least 2 users"),
    ],
)
def test_config_from_json_refuses_malformed_input(value: object, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        SimConfig.from_json(value)


@pytest.mark.parametrize(
    "value",
    [
        {"seed": "7"},
        {"seed": 1, "messages": 2.5},
        {"seed": 1, "devices_per_user": 1.5},
        {"seed": 1, "database": 5},
    ],
)
def test_config_from_json_refuses_values_of_the_wrong_kind(value: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        SimConfig.from_json(value)


def good_schedule_json() -> dict[str, Any]:
    return {
        "actions": [
            {"kind": "send", "sid": 1, "sender": "u000/0", "to": "u001", "size": 200},
            {"kind": "relay_kill"},
        ],
        "workers": [["u000"], ["u001"]],
        "canaries": {"1": "ab" * 24},
    }


def test_good_schedule_json_loads() -> None:
    schedule = Schedule.from_json(good_schedule_json())
    assert schedule.actions == (
        Action("send", sid=1, sender="u000/0", to="u001", size=200),
        Action("relay_kill"),
    )
    assert schedule.workers == (("u000",), ("u001",))
    assert schedule.canary_keys == {1: "ab" * 24}


@pytest.mark.parametrize(
    "change",
    [
        lambda v: None,
        lambda v: [v],
        lambda v: {k: x for k, x in v.items() if k != "actions"},
        lambda v: {k: x for k, x in v.items() if k != "workers"},
        lambda v: {k: x for k, x in v.items() if k != "canaries"},
        lambda v: {**v, "actions": None},
        lambda v: {**v, "actions": [1]},
        lambda v: {**v, "actions": [{"kind": "explode"}]},
        lambda v: {**v, "actions": [{"sid": 1}]},
        lambda v: {**v, "actions": [{"kind": "send", "colour": "red"}]},
        lambda v: {**v, "workers": [1]},
        lambda v: {**v, "workers": None},
        lambda v: {**v, "canaries": []},
        lambda v: {**v, "canaries": {"one": "ab"}},
    ],
)
def test_schedule_from_json_refuses_malformed_input(change: Any) -> None:
    with pytest.raises(ConfigError):
        Schedule.from_json(change(good_schedule_json()))


def test_schedule_from_json_refuses_an_action_field_of_the_wrong_kind() -> None:
    value = good_schedule_json()
    value["actions"][0]["sid"] = "1"
    with pytest.raises(ConfigError):
        Schedule.from_json(value)


def test_schedule_from_json_refuses_an_unknown_field() -> None:
    with pytest.raises(ConfigError):
        Schedule.from_json({**good_schedule_json(), "colour": "red"})


@pytest.mark.parametrize("value", [None, "send", {}, {"kind": None}, {"kind": "explode"}])
def test_action_from_json_refuses_what_is_not_an_action(value: object) -> None:
    with pytest.raises(ConfigError, match="not a schedule action"):
        Action.from_json(value)


# --- SimConfig ranges -----------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides",
    [
        {"users": 1},
        {"users": 0},
        {"devices_per_user": 0},
        {"messages": -1},
        {"conversations": 0},
        {"conversations": 12},
        {"rate": -0.1},
        {"duplicate_probability": -0.01},
        {"duplicate_probability": 1.01},
        {"duplicate_probability": math.nan},
        {"delay_ms": -1.0},
        {"min_size": MIN_BODY - 1},
        {"max_size": MAX_BODY + 1},
        {"min_size": 500, "max_size": 499},
        {"relay_kills": -1},
        {"client_kills": -1},
        {"disconnects": -1},
        {"workers": 0},
        {"workers": 13},
        {"timeout_s": 0.0},
        {"drain_s": -1.0},
    ],
)
def test_config_refuses_out_of_range_settings(overrides: dict[str, Any]) -> None:
    base = small_config()
    with pytest.raises(ConfigError):
        replace(base, **overrides)
    assert issubclass(ConfigError, ValueError)


@pytest.mark.parametrize(
    "overrides",
    [
        {"users": 2, "conversations": 1, "workers": 2},
        {"conversations": 11, "workers": 12},
        {"devices_per_user": 1},
        {"messages": 0},
        {"rate": 0.0},
        {"duplicate_probability": 0.0},
        {"duplicate_probability": 1.0},
        {"min_size": MIN_BODY, "max_size": MIN_BODY},
        {"min_size": MAX_BODY, "max_size": MAX_BODY},
        {"relay_kills": 0, "client_kills": 0, "disconnects": 0},
        {"workers": 1},
    ],
)
def test_config_accepts_settings_at_the_bounds(overrides: dict[str, Any]) -> None:
    config = replace(small_config(), **overrides)
    for key, value in overrides.items():
        assert getattr(config, key) == value


@pytest.mark.parametrize(
    "overrides",
    [
        {"client_state_limit_bytes": 0},
        {"client_state_limit_bytes": -1},
        {"rate": math.nan},
        {"timeout_s": math.nan},
        {"drain_s": math.nan},
    ],
)
def test_config_refuses_other_out_of_range_settings(overrides: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        replace(small_config(), **overrides)


# --- message bodies -----------------------------------------------------------------------


@pytest.mark.parametrize("sid", [0, 7, 12_345, 99_999, 123_456, 10**9])
@pytest.mark.parametrize("size", [MIN_BODY, MIN_BODY + 1, 1_024, 4_097, MAX_BODY])
def test_message_body_has_the_size_its_canary_and_its_id(sid: int, size: int) -> None:
    key = random.Random(sid).randbytes(24).hex()
    body = message_body(sid, key, size)
    assert body.isascii()
    assert len(body.encode("utf-8")) == size
    assert body.encode().startswith(canary(sid, key))
    assert f"|sim={sid}|" in body
    match = SID_PATTERN.search(body)
    assert match is not None
    assert int(match.group(1)) == sid
    assert message_body(sid, key, size) == body


def test_message_bodies_of_a_schedule_read_back() -> None:
    schedule = make_schedule(small_config(max_size=3_000))
    canaries = [canary(a.sid, schedule.canary_keys[a.sid]) for a in schedule.sends()]
    assert len(set(canaries)) == len(canaries)
    scanner = CanaryScanner(canaries)
    for action in schedule.sends():
        body = message_body(action.sid, schedule.canary_keys[action.sid], action.size)
        assert len(body.encode("ascii")) == action.size
        match = SID_PATTERN.search(body)
        assert match is not None
        assert int(match.group(1)) == action.sid
        if action.sid % 100 == 0:
            hits = scanner.scan(body.encode(), "body")
            assert {(h.canary, h.form) for h in hits} == {(canaries[action.sid], "raw")}


def test_canary_names_the_message() -> None:
    key = "0f" * 24
    value = canary(42, key)
    assert value == CANARY_PREFIX + b"sim00042-" + key.encode()
    assert canary(43, key) != value
    assert canary(42, "1e" * 24) != value
    assert canary(42, key) in message_body(42, key, MIN_BODY).encode()
    assert canary(42, key) not in message_body(43, key, MIN_BODY).encode()
