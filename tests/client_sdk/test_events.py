"""Security events: their stored form (``client_sdk.events``)."""

from __future__ import annotations

import pytest

from client_sdk.errors import StoreCorrupt
from client_sdk.events import (
    ConnectedElsewhereEvent,
    DeviceAdded,
    DeviceListEquivocation,
    DeviceListStale,
    DeviceRemovedEvent,
    EventKind,
    IdentityChanged,
    KeyCheckMismatch,
    MessagesMissing,
    NoOneTimePreKey,
    ReplayDropped,
    RetryRequestDropped,
    SecurityEvent,
    Undecryptable,
    UnknownPayload,
    decode_event,
    encode_event,
)
from e2ee import cbor

EVERY_EVENT: list[SecurityEvent] = [
    IdentityChanged("alice", verified=True),
    DeviceAdded("alice", 7),
    DeviceRemovedEvent("alice", 7),
    NoOneTimePreKey("bob", 3),
    Undecryptable("bob", 3, "BadMac"),
    ReplayDropped("bob", 3),
    DeviceListEquivocation("carol", 4),
    DeviceListStale("carol", 1_700_000_000_000),
    MessagesMissing("bob", 3, 2),
    ConnectedElsewhereEvent(reconnecting=False),
    RetryRequestDropped("bob", 3, "too_old"),
    UnknownPayload("bob", 3, 99),
    KeyCheckMismatch("signed_prekey"),
]


@pytest.mark.parametrize("event", EVERY_EVENT, ids=lambda e: type(e).__name__)
def test_every_event_round_trips(event: SecurityEvent) -> None:
    assert decode_event(encode_event(event)) == event


def test_every_kind_is_covered() -> None:
    assert len({type(e).KIND for e in EVERY_EVENT}) == len(EVERY_EVENT)
    assert {type(e).KIND for e in EVERY_EVENT} == set(EventKind)


@pytest.mark.parametrize(
    "record",
    [
        b"",
        cbor.encode({0: 2, 1: 2, 2: ["alice", 7]}),  # unknown version
        cbor.encode({0: 1, 1: 99, 2: ["alice", 7]}),  # unknown kind
        cbor.encode({0: 1, 1: 2, 2: ["alice"]}),  # missing field
        cbor.encode({0: 1, 1: 2, 2: ["alice", "7"]}),  # wrong type
        cbor.encode({0: 1, 1: 1, 2: ["alice", 1]}),  # int where a bool belongs
        cbor.encode({0: 1, 1: 2, 2: "alice"}),  # not a list
    ],
)
def test_corrupt_records_are_refused(record: bytes) -> None:
    with pytest.raises(StoreCorrupt):
        decode_event(record)
