"""The relay's direct decoder of ``Send`` and ``Ack`` (server/fast_decode.py) answers
exactly what the generic decoder answers, or leaves the input to it."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from e2ee.errors import DecodeError
from e2ee.relay_frames import (
    CLIENT_MSG_ID_SIZE,
    MAX_RELAY_FRAME,
    Ack,
    Send,
    UnknownFrameType,
    decode_client_frame,
)
from server.fast_decode import fast_client_frame
from tests.hypothesis_profiles import DECODER_SETTINGS

_USERS = st.from_regex(r"[a-z0-9][a-z0-9._-]{0,62}", fullmatch=True)
# Device ids and sequence numbers at every head length and its boundaries.
_DEVICES = st.one_of(
    st.sampled_from([0, 23, 24, 255, 256, 65535, 65536, 2**32 - 1]),
    st.integers(min_value=0, max_value=2**32 - 1),
)
_SEQS = st.one_of(
    st.sampled_from([1, 23, 24, 255, 256, 65535, 65536, 2**32 - 1, 2**32, 2**63 - 1]),
    st.integers(min_value=1, max_value=2**63 - 1),
)
_CIPHERTEXTS = st.binary(max_size=300) | st.sampled_from(
    [b"", b"\0" * 23, b"\0" * 24, b"\1" * 255, b"\2" * 256, b"\3" * 65535, b"\4" * 65536]
)
"""Every byte-string head length (the 4-byte one from 65,536)."""


@st.composite
def sends(draw: st.DrawFn, max_devices: int = 30) -> Send:
    users = draw(st.lists(_USERS, min_size=1, max_size=2, unique=True))
    addressed = []
    for user in users:
        devices = draw(st.lists(_DEVICES, max_size=max_devices, unique=True))
        addressed.append((user, tuple((d, draw(_CIPHERTEXTS)) for d in devices)))
    msg_id = draw(st.binary(min_size=CLIENT_MSG_ID_SIZE, max_size=CLIENT_MSG_ID_SIZE))
    return Send(msg_id, tuple(addressed))


acks = st.builds(Ack, st.lists(_SEQS, min_size=1, max_size=1_000).map(tuple))


def _generic(data: bytes) -> object:
    try:
        return decode_client_frame(data)
    except (UnknownFrameType, DecodeError) as exc:
        return exc


@DECODER_SETTINGS
@given(frame=sends() | acks)
def test_valid_frames_decode_as_the_generic_decoder_does(frame: Send | Ack) -> None:
    data = frame.to_bytes()
    fast = fast_client_frame(data)
    if len(data) > MAX_RELAY_FRAME:  # several 64 KiB ciphertexts: refused by both
        assert fast is None
        assert isinstance(_generic(data), DecodeError)
        return
    assert decode_client_frame(data) == frame
    many_devices = isinstance(frame, Send) and any(len(d) > 23 for _, d in frame.addressed)
    if many_devices:
        assert fast is None or fast == frame  # the generic decoder's (a longer head)
    else:
        assert fast == frame


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """A valid ``Send`` or ``Ack`` encoding, changed once: a byte replaced, one
    inserted or deleted, truncated or extended."""
    data = bytearray(
        draw(sends(max_devices=3) | acks.filter(lambda a: len(a.seqs) < 40)).to_bytes()
    )
    at = draw(st.integers(min_value=0, max_value=len(data) - 1))
    kind = draw(st.sampled_from(["replace", "insert", "delete", "truncate", "extend"]))
    byte = draw(st.integers(min_value=0, max_value=255))
    if kind == "replace":
        data[at] = byte
    elif kind == "insert":
        data.insert(at, byte)
    elif kind == "delete":
        del data[at]
    elif kind == "truncate":
        del data[at:]
    else:
        data += draw(st.binary(min_size=1, max_size=4))
    return bytes(data)


@DECODER_SETTINGS
@given(data=mutated())
def test_nothing_is_accepted_that_the_generic_decoder_refuses(data: bytes) -> None:
    fast = fast_client_frame(data)
    if fast is not None:
        assert _generic(data) == fast


_SEND = bytes.fromhex("a3000201 50") + b"i" * CLIENT_MSG_ID_SIZE
"""A ``Send`` frame up to its client message id; key 2 follows."""


@pytest.mark.parametrize(
    "data",
    [
        # device id 5 in a two-byte head
        _SEND + bytes.fromhex("0281 82 63 626f62 81 82 1805 41 78"),
        # ciphertext length 1 in a two-byte head
        _SEND + bytes.fromhex("0281 82 63 626f62 81 82 05 5801 78"),
        # user id of 3 characters in a two-byte head
        _SEND + bytes.fromhex("0281 82 7803 626f62 81 82 05 41 78"),
        # sequence 7 in a nine-byte head
        bytes.fromhex("a2000301 81 1b0000000000000007"),
        # an upper-case user id, a device id above 32 bits, sequence 0
        _SEND + bytes.fromhex("0281 82 63 426f62 81 82 05 41 78"),
        _SEND + bytes.fromhex("0281 82 63 626f62 81 82 1b0000000100000000 41 78"),
        bytes.fromhex("a2000301 81 00"),
        # a user or a device addressed twice; no user; no sequence
        _SEND + bytes.fromhex("0282 82 63 626f62 80 82 63 626f62 80"),
        _SEND + bytes.fromhex("0281 82 63 626f62 82 82 05 41 78 82 05 41 79"),
        _SEND + bytes.fromhex("0280"),
        bytes.fromhex("a2000301 80"),
    ],
)
def test_non_canonical_or_invalid_frames_are_left_to_the_generic_decoder(data: bytes) -> None:
    assert fast_client_frame(data) is None
    assert isinstance(_generic(data), DecodeError)


def test_the_typical_frames_take_the_fast_path() -> None:
    send = Send(b"m" * 16, (("bob", ((7, b"c" * 150),)), ("alice", ((2, b"d" * 150),))))
    assert fast_client_frame(send.to_bytes()) == send
    assert fast_client_frame(Ack((1, 2, 3)).to_bytes()) == Ack((1, 2, 3))
    assert fast_client_frame(b"") is None
