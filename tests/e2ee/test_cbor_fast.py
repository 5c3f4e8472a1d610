"""The native fast paths of e2ee/cbor.py against the pure-Python strict codec.

``cbor.decode`` tries ``cbor2.loads`` plus a walk and a re-encoding before the strict
decoder; ``cbor.encode`` tries a walk plus ``cbor2.dumps`` before the strict encoder.
Differential tests: on arbitrary bytes, canonical encodings, their mutations and
hand-made tricky inputs, the public decoder and ``cbor._decode_strict`` give the same
value (types included) or raise the same exception class; on values of the data
model and outside it, ``cbor.encode`` and ``cbor._encode_strict`` give the same bytes
or both raise ``InvalidArgument``.
"""

from __future__ import annotations

from enum import IntEnum

import cbor2
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from e2ee import cbor
from e2ee.errors import CBORDecodeError, CBORDepthExceeded, InvalidArgument
from e2ee.limits import MAX_CBOR_DEPTH
from tests.e2ee.test_cbor import INT_MIN, U64_MAX, nested, same, values
from tests.hypothesis_profiles import DECODER_SETTINGS


def outcome_of_decode(data: bytes, **kwargs: int) -> tuple[str, object]:
    try:
        return ("ok", cbor.decode(data, **kwargs))
    except CBORDecodeError as exc:
        return ("error", type(exc))


def outcome_of_strict(data: bytes, *, depth: int = MAX_CBOR_DEPTH) -> tuple[str, object]:
    try:
        return ("ok", cbor._decode_strict(data, depth))
    except CBORDecodeError as exc:
        return ("error", type(exc))


def assert_decoders_agree(data: bytes, depth: int = MAX_CBOR_DEPTH) -> tuple[str, object]:
    fast = outcome_of_decode(data, depth=depth)
    strict = outcome_of_strict(data, depth=depth)
    assert fast[0] == strict[0], (data.hex(), fast, strict)
    assert same(fast[1], strict[1]), (data.hex(), fast, strict)
    return fast


def outcome_of(encoder: object, value: object) -> tuple[str, object]:
    try:
        return ("ok", encoder(value))  # type: ignore[operator]
    except InvalidArgument:
        return ("error", InvalidArgument)


def assert_encoders_agree(value: object) -> tuple[str, object]:
    fast = outcome_of(cbor.encode, value)
    assert fast == outcome_of(cbor._encode_strict, value), value
    return fast


# --- decoding -------------------------------------------------------------------------


@DECODER_SETTINGS
@given(st.binary(max_size=64))
@example(b"")
def test_arbitrary_bytes(data: bytes) -> None:
    assert_decoders_agree(data)


@DECODER_SETTINGS
@given(values)
def test_canonical_encodings_take_the_fast_path(value: cbor.Value) -> None:
    encoded = cbor._encode_strict(value)
    # cbor2's plain encoder, which the fast paths compare with, writes the same bytes
    # for every value of the model whose keys ascend (the strict encoder sorts them).
    assert cbor2.dumps(value, canonical=True) == encoded
    assert assert_decoders_agree(encoded)[0] == "ok"
    assert same(cbor.decode(encoded), value)


mutations = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 10_000), st.integers(1, 255)),
    st.tuples(st.just("insert"), st.integers(0, 10_000), st.integers(0, 255)),
    st.tuples(st.just("delete"), st.integers(0, 10_000), st.just(0)),
    st.tuples(st.just("set"), st.integers(0, 10_000), st.integers(0, 255)),
)


@DECODER_SETTINGS
@given(values, st.lists(mutations, min_size=1, max_size=3))
def test_mutated_encodings(value: cbor.Value, edits: list[tuple[str, int, int]]) -> None:
    data = bytearray(cbor._encode_strict(value))
    for op, where, byte in edits:
        at = where % (len(data) + 1)
        if op == "insert":
            data.insert(at, byte)
        elif at < len(data):
            if op == "flip":
                data[at] ^= byte
            elif op == "delete":
                del data[at]
            else:
                data[at] = byte
    assert_decoders_agree(bytes(data))


@DECODER_SETTINGS
@given(values, st.integers(-2, MAX_CBOR_DEPTH + 2))
def test_depth_argument(value: cbor.Value, depth: int) -> None:
    assert_decoders_agree(cbor._encode_strict(value), depth)


def _shared_dag(levels: int, width: int) -> bytes:
    """Each level a list of ``width`` references to the level below (tags 28/29):
    ``width ** levels`` leaves from a few bytes."""
    out = b"\xd8\x1c\x80"  # shareable: []
    for index in range(1, levels + 1):
        # Shareable indexes follow the input's order, the outermost list first: the
        # list one level down has index ``levels - index + 1``.
        ref = b"\xd8\x1d" + cbor._encode_strict(levels - index + 1)
        out = b"\xd8\x1c" + bytes([0x80 | width]) + out + ref * (width - 1)
    return out


TRICKY = [
    # the data model's edges, accepted
    cbor._encode_strict(U64_MAX),
    cbor._encode_strict(INT_MIN),
    cbor._encode_strict([U64_MAX, INT_MIN, True, False, None, b"", "", [], {}]),
    cbor._encode_strict({0: 0, 23: 1, 24: 2, 255: 3}),
    cbor._encode_strict({0: "é€😀", 1: {2: [b"\x00" * 300]}}),
    b"\x81" * (MAX_CBOR_DEPTH - 1) + b"\x80",
    b"\x81" * MAX_CBOR_DEPTH + b"\x00",
    b"\xa1\x00" * (MAX_CBOR_DEPTH - 1) + b"\xa0",
    b"\xa1\x18\xff\x00",  # key 255
    # beyond 64 bits: cbor2 reads bignum tags 2/3 as ints
    cbor2.dumps(2**64),
    cbor2.dumps(-(2**64) - 1),
    cbor2.dumps(2**200),
    b"\xc2\x41\x05",  # a small bignum (5)
    b"\xc2\x48" + U64_MAX.to_bytes(8, "big"),  # 2**64 - 1 as a bignum
    b"\xc3\x48" + U64_MAX.to_bytes(8, "big"),  # -2**64 as a bignum
    # shared references (tags 28/29), cyclic and exponential
    bytes.fromhex("82d81c8100d81d00"),
    bytes.fromhex("d81c81d81d00"),  # a list that contains itself
    bytes.fromhex("d81ca100d81d00"),  # a map that contains itself
    _shared_dag(16, 2),
    _shared_dag(12, 15),
    # string references (tags 256/25)
    bytes.fromhex("d90100836361626363616263d81900"),
    bytes.fromhex("d9010083656162636465d81900d81900"),
    bytes.fromhex("d90100826561626364" + "65d81900"),
    bytes.fromhex("d9010082656162636465d81900"),  # as long as the canonical form
    # other tags
    cbor2.dumps(cbor2.CBORTag(1234, 0)),
    b"\xc0\x74" + b"2013-03-21T20:04:00Z",
    b"\xc1\x00",
    b"\xd8\x18\x41\x00",
    b"\xd9\xd9\xf7\x00",
    bytes.fromhex("d9010281 00"),  # a set
    bytes.fromhex("d825 50") + bytes(16),  # a UUID
    bytes.fromhex("c4 82 21 19 6a b3"),  # a decimal fraction
    bytes.fromhex("d81e 82 01 03"),  # a rational
    # floats, simple values, undefined
    b"\xf9\x3c\x00",
    b"\xf9\x00\x00",
    b"\xfb\x3f\xf0\x00\x00\x00\x00\x00\x00",
    cbor2.dumps([1, 2.5]),
    b"\xf7",
    b"\xf0",
    b"\xf8\x14",  # false in the two-byte form
    b"\xf8\x20",
    b"\x81\xf8\x16",
    # indefinite lengths, duplicate and unsorted keys, non-minimal heads
    b"\x9f\x01\xff",
    b"\x5f\x41\x00\xff",
    b"\x7f\x61a\xff",
    b"\xbf\x00\x00\xff",
    b"\xa2\x00\x01\x00\x02",
    b"\xa2\x01\x01\x00\x02",
    b"\xa2\x18\x18\x00\x17\x00",
    b"\x18\x05",
    b"\x19\x00\x05",
    b"\x1b" + bytes(8),
    b"\x98\x01\x00",
    b"\xa1\x18\x01\x00",
    b"\x58\x01a",
    # keys
    b"\xa1\x19\x01\x00\x00",  # 256
    b"\xa1\xf5\x00",  # true
    b"\xa1\xf4\x00",  # false
    b"\xa1\x20\x00",
    b"\xa1\x81\x00\x00",  # a list (cbor2 makes it a tuple)
    b"\xa1\xa0\x00",  # a map (cbor2 makes it a frozendict)
    # nesting past the limit, trailing bytes, truncation, text
    b"\x81" * MAX_CBOR_DEPTH + b"\x80",
    b"\xa1\x00" * MAX_CBOR_DEPTH + b"\xa0",
    b"\x81" * 1000 + b"\x80",
    b"\x00\x00",
    b"\xa0\xff",
    b"\x82\x01",
    b"\x5b" + b"\xff" * 8,
    b"\x9b" + b"\xff" * 8,
    b"\x63\xed\xa0\x80",
    b"\x62\xc0\xaf",
]


@pytest.mark.parametrize("data", TRICKY, ids=lambda d: d.hex()[:40])
@pytest.mark.parametrize("depth", [MAX_CBOR_DEPTH, 2, 0])
def test_tricky_inputs(data: bytes, depth: int) -> None:
    assert_decoders_agree(data, depth)


def test_tricky_inputs_that_decode() -> None:
    accepted = [data for data in TRICKY if outcome_of_strict(data)[0] == "ok"]
    assert accepted == TRICKY[:9]  # the first nine: every other one is refused
    assert cbor.decode(TRICKY[0]) == U64_MAX
    assert cbor.decode(TRICKY[1]) == INT_MIN


def test_fast_path_is_taken_for_canonical_input(monkeypatch: pytest.MonkeyPatch) -> None:
    """A canonical input never reaches the strict decoder (else no speed gained)."""

    def refuse(data: bytes, depth: int) -> cbor.Value:
        raise AssertionError("strict decoder called")

    monkeypatch.setattr(cbor, "_decode_strict", refuse)
    assert cbor.decode(TRICKY[2]) == [U64_MAX, INT_MIN, True, False, None, b"", "", [], {}]
    assert cbor.decode(b"\x81" * MAX_CBOR_DEPTH + b"\x00") == nested(MAX_CBOR_DEPTH, inner=0)
    assert cbor.decode(memoryview(b"\xa1\x00\xf5")) == {0: True}  # type: ignore[arg-type]


def test_deep_depth_argument_uses_the_strict_decoder(monkeypatch: pytest.MonkeyPatch) -> None:
    deep = b"\x81" * 80 + b"\x80"
    assert cbor.decode(deep, depth=81) == nested(81)
    with pytest.raises(CBORDepthExceeded):
        cbor.decode(deep, depth=80)
    calls = []
    real_loads = cbor2.loads

    def loads(data: bytes) -> object:
        calls.append(data)
        return real_loads(data)

    monkeypatch.setattr(cbor2, "loads", loads)
    cbor.decode(b"\x80", depth=cbor._FAST_MAX_DEPTH)
    cbor.decode(b"\x80", depth=cbor._FAST_MAX_DEPTH + 1)
    assert calls == [b"\x80"]


def test_walk_is_bounded_by_the_input() -> None:
    """A tiny input that cbor2 expands (shared references) is refused without walking
    the expansion: 15 ** 12 leaves would never finish."""
    data = _shared_dag(12, 15)
    assert len(data) < 600
    value = cbor2.loads(data)
    assert value[0] is value[14] and value[0][0] is value[14][0]  # a DAG, not a cycle
    with pytest.raises(cbor._Outside):
        cbor._check_decoded([value], MAX_CBOR_DEPTH + 1, len(data))
    # Strings overdrawing the budget (string references) are refused after the walk.
    data = bytes.fromhex("d9010083656162636465d81900d81900")
    assert cbor._check_decoded([cbor2.loads(data)], MAX_CBOR_DEPTH + 1, len(data)) < 0


# --- encoding -------------------------------------------------------------------------


class Kind(IntEnum):
    A = 2
    B = 300


class Lying(int):
    """An int subclass whose conversion gives another number."""

    def __int__(self) -> int:
        return 7


@DECODER_SETTINGS
@given(values)
def test_encoders_agree_on_the_data_model(value: cbor.Value) -> None:
    assert assert_encoders_agree(value)[0] == "ok"


scrambled_maps = st.dictionaries(
    st.integers(-3, 300) | st.booleans() | st.none() | st.text(max_size=2),
    values | st.floats() | st.tuples(st.integers()),
    max_size=5,
)


@DECODER_SETTINGS
@given(st.recursive(scrambled_maps | values, lambda c: st.lists(c, max_size=3), max_leaves=10))
def test_encoders_agree_outside_the_data_model(value: object) -> None:
    assert_encoders_agree(value)


@pytest.mark.parametrize(
    "value",
    [
        U64_MAX,
        INT_MIN,
        U64_MAX + 1,
        INT_MIN - 1,
        [U64_MAX + 1],
        {0: INT_MIN - 1},
        True,
        [True, False, None],
        {0: True, 1: 1},
        {1: 0, 0: 1},  # keys out of order: the strict encoder sorts them
        {255: 0, 24: 1, 23: 2, 0: 3},
        {256: 0},
        {True: 0},
        {-1: 0},
        {0: 0, "a": 0},
        "é€😀",
        "\ud800",
        [b"", "", [], {}],
        [1, 2.0],
        (1, 2),
        bytearray(b"x"),
        Kind.A,
        [Kind.B, {0: Kind.A}],
        {Kind.A: 0},  # an IntEnum is no map key
        Lying(5),
        [Lying(5)],
        nested(MAX_CBOR_DEPTH),
        nested(MAX_CBOR_DEPTH, as_map=True, inner=1),
        nested(MAX_CBOR_DEPTH + 1),
        nested(MAX_CBOR_DEPTH + 1, as_map=True, inner=1),
        object(),
    ],
    ids=repr,
)
def test_encoder_edges(value: object) -> None:
    assert_encoders_agree(value)


def test_encoder_edge_results() -> None:
    assert cbor.encode({1: 0, 0: 1}) == b"\xa2\x00\x01\x01\x00"
    assert cbor.encode([Kind.B, {0: Kind.A}]) == b"\x82\x19\x01\x2c\xa1\x00\x02"
    assert cbor.encode([Lying(5)]) == b"\x81\x07"  # as int(value) gives, like before
    with pytest.raises(InvalidArgument):
        cbor.encode("\ud800")
    with pytest.raises(InvalidArgument):
        cbor.encode({Kind.A: 0})


def test_encoder_takes_the_fast_path(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(value: cbor.Value) -> bytes:
        raise AssertionError("strict encoder called")

    monkeypatch.setattr(cbor, "_encode_strict", refuse)
    assert cbor.encode({0: Kind.A, 1: [b"x", "y", None, True]}) == bytes.fromhex(
        "a20002018441786179f6f5"
    )
