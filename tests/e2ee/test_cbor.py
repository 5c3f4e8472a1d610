"""The strict canonical CBOR codec (e2ee/cbor.py; docs/protocol.md 1.2).

Round trips of the whole data model (checked against ``cbor2``'s canonical encoder),
one test per strict decoding rule with its own error class, the encoder's refusals,
and the typed field helpers.
"""

from __future__ import annotations

import cbor2
import pytest
from hypothesis import given
from hypothesis import strategies as st

from e2ee import cbor
from e2ee.envelope import Suite
from e2ee.errors import (
    CBORDecodeError,
    CBORDepthExceeded,
    CBORDuplicateKey,
    CBORFloatNotAllowed,
    CBORIndefiniteLength,
    CBORInvalidKey,
    CBORInvalidUTF8,
    CBORNonMinimalInteger,
    CBORTagNotAllowed,
    CBORTooLarge,
    CBORTrailingBytes,
    CBORTruncated,
    CBORUnsortedKeys,
    CBORUnsupportedType,
    DecodeError,
    InvalidArgument,
)
from e2ee.limits import MAX_CBOR_DEPTH, MAX_STRUCTURE_SIZE
from tests.hypothesis_profiles import DECODER_SETTINGS

U64_MAX = 2**64 - 1
INT_MIN = -(2**64)

# Every boundary where the head of an integer or a length changes size.
HEAD_BOUNDARIES = (0, 1, 23, 24, 255, 256, 65535, 65536, 2**32 - 1, 2**32, U64_MAX)

ints = st.integers(min_value=INT_MIN, max_value=U64_MAX) | st.sampled_from(
    HEAD_BOUNDARIES + tuple(-1 - b for b in HEAD_BOUNDARIES)
)
scalars = st.none() | st.booleans() | ints | st.binary(max_size=300) | st.text(max_size=300)
values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=6)
        | st.dictionaries(st.integers(0, cbor.MAX_MAP_KEY), children, max_size=6)
    ),
    max_leaves=40,
)


def same(a: object, b: object) -> bool:
    """Equality that also compares types (``True == 1`` and ``[1] == [True]`` in Python)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, list):
        assert isinstance(b, list)
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        assert isinstance(b, dict)
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return a == b


def nested(levels: int, *, as_map: bool = False, inner: cbor.Value = None) -> cbor.Value:
    """``levels`` containers inside each other (the innermost empty unless ``inner``)."""

    def wrap(item: cbor.Value) -> cbor.Value:
        return {0: item} if as_map else [item]

    empty: cbor.Value = {} if as_map else []
    value = empty if inner is None else wrap(inner)
    for _ in range(levels - 1):
        value = wrap(value)
    return value


# --- round trips --------------------------------------------------------------------------


@DECODER_SETTINGS
@given(values)
def test_round_trip_matches_cbor2_canonical(value: cbor.Value) -> None:
    encoded = cbor.encode(value)
    assert encoded == cbor2.dumps(value, canonical=True)
    assert same(cbor.decode(encoded), value)
    assert same(cbor2.loads(encoded), value)


@pytest.mark.parametrize("value", [*HEAD_BOUNDARIES, *(-1 - b for b in HEAD_BOUNDARIES)])
def test_integer_heads_round_trip(value: int) -> None:
    encoded = cbor.encode(value)
    assert encoded == cbor2.dumps(value, canonical=True)
    assert cbor.decode(encoded) == value


@pytest.mark.parametrize("length", [0, 23, 24, 255, 256, 65535, 65536])
def test_lengths_round_trip(length: int) -> None:
    for value in (b"\x07" * length, "x" * length, [None] * length):
        encoded = cbor.encode(value)
        assert encoded == cbor2.dumps(value, canonical=True)
        assert same(cbor.decode(encoded), value)


@pytest.mark.parametrize("size", [0, 23, 24, 256])
def test_maps_of_every_size_round_trip(size: int) -> None:
    value = {k: k for k in range(size)}
    encoded = cbor.encode(value)
    assert encoded == cbor2.dumps(value, canonical=True)
    assert cbor.decode(encoded) == value


def test_map_keys_sorted_numerically_across_head_sizes() -> None:
    assert cbor.encode({255: 0, 24: 1, 23: 2, 0: 3}) == bytes.fromhex("a40003170218180118ff00")


def test_simple_values() -> None:
    assert cbor.encode(None) == b"\xf6"
    assert cbor.encode(True) == b"\xf5"
    assert cbor.encode(False) == b"\xf4"
    assert cbor.decode(b"\xf6") is None
    assert cbor.decode(b"\xf5") is True
    assert cbor.decode(b"\xf4") is False


def test_decode_accepts_bytearray_and_memoryview() -> None:
    encoded = cbor.encode({0: [1, b"x", "y"]})
    assert cbor.decode(bytearray(encoded)) == {0: [1, b"x", "y"]}
    assert cbor.decode(memoryview(encoded)) == {0: [1, b"x", "y"]}


def test_decode_refuses_non_bytes() -> None:
    with pytest.raises(CBORDecodeError):
        cbor.decode("a0")  # type: ignore[arg-type]


@pytest.mark.parametrize("levels", range(1, MAX_CBOR_DEPTH + 3))
@pytest.mark.parametrize("as_map", [False, True])
@pytest.mark.parametrize("inner", [None, 0])
def test_encoder_and_decoder_agree_on_depth(levels: int, as_map: bool, inner: int | None) -> None:
    """Whatever the encoder accepts, the decoder accepts (and gives back)."""
    value = nested(levels, as_map=as_map, inner=inner)
    if levels > MAX_CBOR_DEPTH:
        with pytest.raises(InvalidArgument):
            cbor.encode(value)
        with pytest.raises(CBORDepthExceeded):
            cbor.decode(cbor2.dumps(value, canonical=True))
    else:
        assert cbor.decode(cbor.encode(value)) == value


# --- one error per strict rule -----------------------------------------------------------


@DECODER_SETTINGS
@given(values, st.binary(min_size=1, max_size=20))
def test_trailing_bytes(value: cbor.Value, tail: bytes) -> None:
    with pytest.raises(CBORTrailingBytes):
        cbor.decode(cbor.encode(value) + tail)


def test_trailing_bytes_examples() -> None:
    for data in (b"\x00\x00", b"\xa0\xff", b"\x80\x80", b"\x41a\x00"):
        with pytest.raises(CBORTrailingBytes):
            cbor.decode(data)


@DECODER_SETTINGS
@given(values, st.data())
def test_every_proper_prefix_is_truncated(value: cbor.Value, data: st.DataObject) -> None:
    encoded = cbor.encode(value)
    cut = data.draw(st.integers(0, len(encoded) - 1))
    with pytest.raises(CBORTruncated):
        cbor.decode(encoded[:cut])


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x18",  # 1-byte argument missing
        b"\x19\x01",  # 2-byte argument cut short
        b"\x1a\x00\x01\x00",
        b"\x1b\x00\x00\x00\x01\x00\x00\x00",
        b"\x42\x00",  # byte string of 2 with 1
        b"\x63ab",  # text string of 3 with 2
        b"\x82\x01",  # array of 2 with 1 byte left
        b"\x82\x82\x01\x02",  # inner array complete, outer missing its second item
        b"\xa1\x00",  # map entry without value
        b"\xa2\x00\x00",  # map of 2 with too few bytes
        b"\x9a\xff\xff\xff\xff",  # array claiming 2^32 - 1 items
    ],
)
def test_truncated(data: bytes) -> None:
    with pytest.raises(CBORTruncated):
        cbor.decode(data)


@pytest.mark.parametrize(
    "data",
    [
        b"\xa2\x01\x01\x01\x02",
        b"\xa3\x00\x00\x01\x00\x01\x00",
        b"\xa1\x00\xa2\x18\x20\x00\x18\x20\x00",  # in a nested map
    ],
)
def test_duplicate_keys(data: bytes) -> None:
    with pytest.raises(CBORDuplicateKey):
        cbor.decode(data)


@pytest.mark.parametrize(
    "data",
    [
        b"\xa2\x02\x01\x01\x02",
        b"\xa2\x18\x18\x00\x17\x00",  # 24 before 23
        b"\xa3\x00\x00\x02\x00\x01\x00",
        b"\x81\xa2\x05\x00\x04\x00",  # in a nested map
    ],
)
def test_unsorted_keys(data: bytes) -> None:
    with pytest.raises(CBORUnsortedKeys):
        cbor.decode(data)


@pytest.mark.parametrize(
    "data",
    [
        # unsigned integers, each longer form holding a value that fits the shorter one
        b"\x18\x00",
        b"\x18\x17",
        b"\x19\x00\x00",
        b"\x19\x00\xff",
        b"\x1a\x00\x00\x00\x00",
        b"\x1a\x00\x00\xff\xff",
        b"\x1b\x00\x00\x00\x00\x00\x00\x00\x00",
        b"\x1b\x00\x00\x00\x00\xff\xff\xff\xff",
        # negative integers
        b"\x38\x00",
        b"\x39\x00\x17",
        b"\x3a\x00\x00\x01\x00",
        b"\x3b\x00\x00\x00\x00\x00\x01\x00\x00",
        # lengths of byte strings, text strings, arrays and maps
        b"\x58\x00",
        b"\x58\x01a",
        b"\x59\x00\x01a",
        b"\x5a\x00\x00\x00\x01a",
        b"\x5b\x00\x00\x00\x00\x00\x00\x00\x01a",
        b"\x78\x01a",
        b"\x79\x00\x01a",
        b"\x98\x00",
        b"\x99\x00\x01\x00",
        b"\xb8\x00",
        b"\xb9\x00\x01\x00\x00",
        # a non-minimal map key
        b"\xa1\x18\x01\x00",
    ],
)
def test_non_minimal_heads(data: bytes) -> None:
    with pytest.raises(CBORNonMinimalInteger):
        cbor.decode(data)


@pytest.mark.parametrize(
    ("data", "value"),
    [
        (b"\x18\x18", 24),
        (b"\x19\x01\x00", 256),
        (b"\x1a\x00\x01\x00\x00", 65536),
        (b"\x1b\x00\x00\x00\x01\x00\x00\x00\x00", 2**32),
        (b"\x1b\xff\xff\xff\xff\xff\xff\xff\xff", U64_MAX),
        (b"\x3b\xff\xff\xff\xff\xff\xff\xff\xff", INT_MIN),
    ],
)
def test_shortest_heads_accepted(data: bytes, value: int) -> None:
    assert cbor.decode(data) == value


@pytest.mark.parametrize(
    "data",
    [
        b"\x5f\x41\x00\xff",  # indefinite byte string
        b"\x5f\xff",
        b"\x7f\x61a\xff",  # indefinite text string
        b"\x9f\xff",  # indefinite array
        b"\x9f\x01\x02\xff",
        b"\xbf\xff",  # indefinite map
        b"\xbf\x00\x00\xff",
        b"\x81\x9f\xff",  # nested
        b"\xff",  # a lone break code
        b"\x82\x01\xff",  # a break code in place of an item
    ],
)
def test_indefinite_lengths(data: bytes) -> None:
    with pytest.raises(CBORIndefiniteLength):
        cbor.decode(data)


@pytest.mark.parametrize(
    "data",
    [
        b"\xf9\x3c\x00",  # half 1.0
        b"\xf9\x00\x00",  # half 0.0
        b"\xfa\x3f\x80\x00\x00",  # single 1.0
        b"\xfb\x3f\xf0\x00\x00\x00\x00\x00\x00",  # double 1.0
        cbor2.dumps(1.5),
        cbor2.dumps(float("nan")),
        cbor2.dumps([1, 2.5]),
        cbor2.dumps({0: 0.1}),
    ],
)
def test_floats(data: bytes) -> None:
    with pytest.raises(CBORFloatNotAllowed):
        cbor.decode(data)


@pytest.mark.parametrize(
    "data",
    [
        b"\xc0\x74" + b"2013-03-21T20:04:00Z",
        b"\xc2\x41\x01",  # bignum
        b"\xd8\x18\x41\x00",  # embedded CBOR
        b"\xd9\xd9\xf7\x00",  # self-describe tag
        b"\x81\xc1\x00",
        cbor2.dumps(2**64),  # beyond 64 bits: a bignum tag
        cbor2.dumps(cbor2.CBORTag(1234, 0)),
    ],
)
def test_tags(data: bytes) -> None:
    with pytest.raises(CBORTagNotAllowed):
        cbor.decode(data)


@pytest.mark.parametrize(
    "data",
    [
        b"\xf7",  # undefined
        b"\xe0",  # simple value 0
        b"\xf0",  # simple value 16
        b"\xf3",  # simple value 19
        b"\xf8\x20",  # simple value 32 (one-byte form)
        b"\xf8\xff",
        b"\xfc",  # reserved additional information 28..30
        b"\xfe",
        b"\x1c",
        b"\x1d",
        b"\x3e",
        b"\x5c",
        b"\x7d",
        b"\x9e",
        b"\xbc",
        b"\x1f",  # integers have no indefinite form: malformed
        b"\x3f",
        b"\x81\xf7",
    ],
)
def test_unsupported_simple_values_and_reserved_heads(data: bytes) -> None:
    with pytest.raises(CBORUnsupportedType):
        cbor.decode(data)


@pytest.mark.parametrize(
    "data",
    [
        b"\xa1\x61a\x01",  # text key
        b"\xa1\x41a\x01",  # byte-string key
        b"\xa1\x20\x00",  # negative key
        b"\xa1\x19\x01\x00\x00",  # 256
        b"\xa1\xf5\x00",  # true is not an integer
        b"\xa1\xf6\x00",  # null
        b"\xa1\x80\x00",  # array
        b"\xa1\xa0\x00",  # map
        b"\xa2\x00\x00\x61a\x00",  # text key after a valid one
    ],
)
def test_invalid_map_keys(data: bytes) -> None:
    with pytest.raises(CBORInvalidKey):
        cbor.decode(data)


@pytest.mark.parametrize(
    "raw",
    [
        b"\xc3\x28",  # invalid continuation
        b"\xc0\xaf",  # overlong '/'
        b"\xed\xa0\x80",  # UTF-16 surrogate
        b"\xf4\x90\x80\x80",  # beyond U+10FFFF
        b"\xff",
        b"\xe2\x82",  # truncated sequence
    ],
)
def test_invalid_utf8(raw: bytes) -> None:
    data = bytes([0x60 | len(raw)]) + raw
    with pytest.raises(CBORInvalidUTF8):
        cbor.decode(data)
    with pytest.raises(CBORInvalidUTF8):
        cbor.decode(b"\x81" + data)


def test_depth() -> None:
    deepest = b"\x81" * (MAX_CBOR_DEPTH - 1) + b"\x80"
    assert cbor.decode(deepest) == nested(MAX_CBOR_DEPTH)
    for too_deep in (b"\x81" * MAX_CBOR_DEPTH + b"\x80", b"\xa1\x00" * MAX_CBOR_DEPTH + b"\xa0"):
        with pytest.raises(CBORDepthExceeded):
            cbor.decode(too_deep)
    # Scalars do not nest: one at the deepest level is fine.
    assert cbor.decode(b"\x81" * MAX_CBOR_DEPTH + b"\x00") == nested(MAX_CBOR_DEPTH, inner=0)


def test_depth_parameter() -> None:
    assert cbor.decode(b"\x00", depth=0) == 0
    with pytest.raises(CBORDepthExceeded):
        cbor.decode(b"\x80", depth=0)
    assert cbor.decode(b"\x81\x80", depth=2) == [[]]
    with pytest.raises(CBORDepthExceeded):
        cbor.decode(b"\x81\x80", depth=1)
    with pytest.raises(CBORDepthExceeded):
        cbor.decode(b"\xa1\x00\xa0", depth=1)


def test_too_large_is_checked_before_parsing() -> None:
    # Garbage at the start (a reserved head, then a float, then a tag) would fail
    # parsing with another error: the size check comes first.
    for head in (b"\xfc", b"\xfb", b"\xc0", b"\x18\x00"):
        with pytest.raises(CBORTooLarge):
            cbor.decode(head + bytes(MAX_STRUCTURE_SIZE))
    with pytest.raises(CBORTooLarge):
        cbor.decode(b"\x00\x00", max_size=1)
    with pytest.raises(CBORTooLarge):
        cbor.decode(b"", max_size=-1)


def test_exactly_max_size_is_accepted() -> None:
    value = bytes(MAX_STRUCTURE_SIZE - 5)  # head 0x5a + 4 length bytes
    encoded = cbor.encode(value)
    assert len(encoded) == MAX_STRUCTURE_SIZE
    assert cbor.decode(encoded) == value
    assert cbor.decode(b"\x41a", max_size=2) == b"a"


def test_each_rule_has_its_own_error_class() -> None:
    classes = [
        CBORTrailingBytes,
        CBORDuplicateKey,
        CBORUnsortedKeys,
        CBORNonMinimalInteger,
        CBORIndefiniteLength,
        CBORFloatNotAllowed,
        CBORTagNotAllowed,
        CBORUnsupportedType,
        CBORInvalidKey,
        CBORInvalidUTF8,
        CBORTruncated,
        CBORDepthExceeded,
        CBORTooLarge,
    ]
    assert len(set(classes)) == len(classes)
    for cls in classes:
        assert issubclass(cls, CBORDecodeError)
        assert issubclass(cls, DecodeError)
        for other in classes:
            assert cls is other or not issubclass(cls, other)


# --- the encoder's refusals --------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        1.5,
        0.0,
        float("nan"),
        [1, 2.0],
        {0: 0.5},
        1j,
        (1, 2),
        bytearray(b"x"),
        memoryview(b"x"),
        {1, 2},
        frozenset(),
        object(),
    ],
    ids=repr,
)
def test_encoder_refuses_types_outside_the_model(value: object) -> None:
    with pytest.raises(InvalidArgument):
        cbor.encode(value)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "value",
    [
        {"a": 1},
        {b"a": 1},
        {-1: 0},
        {256: 0},
        {True: 0},
        {None: 0},
        {1.0: 0},
        {0: 0, "a": 0},  # keys that cannot even be sorted together
        {0: 0, None: 0},
        {0: {"a": 0}},
    ],
    ids=repr,
)
def test_encoder_refuses_bad_map_keys(value: object) -> None:
    with pytest.raises(InvalidArgument):
        cbor.encode(value)  # type: ignore[arg-type]


@pytest.mark.parametrize("value", [2**64, -(2**64) - 1, 2**100, -(2**100), [2**64], {0: 2**64}])
def test_encoder_refuses_integers_beyond_64_bits(value: cbor.Value) -> None:
    with pytest.raises(InvalidArgument):
        cbor.encode(value)


def test_encoder_refuses_unencodable_text() -> None:
    with pytest.raises(InvalidArgument):
        cbor.encode("\ud800")
    with pytest.raises(InvalidArgument):
        cbor.encode({0: ["ok", "\udfff"]})


def test_encoder_refuses_too_deep() -> None:
    with pytest.raises(InvalidArgument):
        cbor.encode(nested(MAX_CBOR_DEPTH + 1))
    with pytest.raises(InvalidArgument):
        cbor.encode(nested(MAX_CBOR_DEPTH + 5, as_map=True, inner=1))
    assert cbor.encode(nested(MAX_CBOR_DEPTH, inner=1)) == b"\x81" * MAX_CBOR_DEPTH + b"\x01"


def test_encoder_accepts_int_subclasses_as_integer_values() -> None:
    assert cbor.encode(Suite.PQXDH) == b"\x02"
    assert cbor.encode([Suite.X3DH, Suite.PQXDH]) == b"\x82\x01\x02"


# --- field helpers -----------------------------------------------------------------------


def test_expect_map() -> None:
    m = {0: 1, 1: 2, 5: 3}
    assert cbor.expect_map(m, "x", frozenset({0, 1}), frozenset({5})) is m
    assert cbor.expect_map({0: 1, 1: 2}, "x", frozenset({0, 1}), frozenset({5})) == {0: 1, 1: 2}
    with pytest.raises(DecodeError, match="expected a map"):
        cbor.expect_map([0, 1], "x", frozenset({0}))
    with pytest.raises(DecodeError, match=r"missing field\(s\) \[1\]"):
        cbor.expect_map({0: 1}, "x", frozenset({0, 1}))
    with pytest.raises(DecodeError, match=r"unknown field\(s\) \[5\]"):
        cbor.expect_map(m, "x", frozenset({0, 1}))
    with pytest.raises(DecodeError, match=r"unknown field\(s\) \[7\]"):
        cbor.expect_map({0: 1, 7: 0}, "x", frozenset({0}), frozenset({5}))


def test_expect_list() -> None:
    assert cbor.expect_list([1, 2], "x", 2) == [1, 2]
    assert cbor.expect_list([], "x", 0) == []
    with pytest.raises(DecodeError, match="expected a list"):
        cbor.expect_list({0: 1}, "x", 5)
    with pytest.raises(DecodeError, match="more than 1 items"):
        cbor.expect_list([1, 2], "x", 1)


def test_field_int() -> None:
    m: dict[int, cbor.Value] = {0: 5, 1: True, 2: False, 3: b"5", 4: -1, 5: U64_MAX, 6: None}
    assert cbor.field_int(m, 0, "x") == 5
    assert cbor.field_int(m, 0, "x", 5, 5) == 5
    assert cbor.field_int(m, 5, "x") == U64_MAX
    assert cbor.field_int(m, 4, "x", -1, 0) == -1
    for key in (1, 2, 3, 6):  # booleans are not integers here
        with pytest.raises(DecodeError, match="expected an integer"):
            cbor.field_int(m, key, "x")
    with pytest.raises(DecodeError, match="outside"):
        cbor.field_int(m, 4, "x")  # default range starts at 0
    with pytest.raises(DecodeError, match="outside"):
        cbor.field_int(m, 0, "x", 6)
    with pytest.raises(DecodeError, match="outside"):
        cbor.field_int(m, 0, "x", 0, 4)


def test_field_bytes() -> None:
    m: dict[int, cbor.Value] = {
        0: b"abc",
        1: "abc",
        2: None,
        3: bytes(1 << 20),
        4: bytes((1 << 20) + 1),
    }
    assert cbor.field_bytes(m, 0, "x") == b"abc"
    assert cbor.field_bytes(m, 0, "x", size=3) == b"abc"
    assert cbor.field_bytes(m, 0, "x", max_size=3) == b"abc"
    assert cbor.field_bytes(m, 3, "x") == bytes(1 << 20)
    for key in (1, 2):
        with pytest.raises(DecodeError, match="expected bytes"):
            cbor.field_bytes(m, key, "x")
    for size in (2, 4):
        with pytest.raises(DecodeError, match="expected"):
            cbor.field_bytes(m, 0, "x", size=size)
    with pytest.raises(DecodeError, match="longer than 2 bytes"):
        cbor.field_bytes(m, 0, "x", max_size=2)
    with pytest.raises(DecodeError, match="longer than"):
        cbor.field_bytes(m, 4, "x")


def test_field_optional_bytes() -> None:
    m: dict[int, cbor.Value] = {0: None, 1: b"ab", 2: "ab", 3: 0}
    assert cbor.field_optional_bytes(m, 0, "x") is None
    assert cbor.field_optional_bytes(m, 9, "x") is None  # absent
    assert cbor.field_optional_bytes(m, 1, "x") == b"ab"
    assert cbor.field_optional_bytes(m, 1, "x", size=2) == b"ab"
    with pytest.raises(DecodeError):
        cbor.field_optional_bytes(m, 1, "x", size=3)
    for key in (2, 3):
        with pytest.raises(DecodeError, match="expected bytes"):
            cbor.field_optional_bytes(m, key, "x")


def test_field_str() -> None:
    m: dict[int, cbor.Value] = {0: "abc", 1: b"abc", 2: "x" * 1024, 3: "x" * 1025}
    assert cbor.field_str(m, 0, "x") == "abc"
    assert cbor.field_str(m, 0, "x", max_len=3) == "abc"
    assert cbor.field_str(m, 2, "x") == "x" * 1024
    with pytest.raises(DecodeError, match="expected text"):
        cbor.field_str(m, 1, "x")
    with pytest.raises(DecodeError, match="longer than 2 characters"):
        cbor.field_str(m, 0, "x", max_len=2)
    with pytest.raises(DecodeError, match="longer than 1024"):
        cbor.field_str(m, 3, "x")


def test_field_bool() -> None:
    m: dict[int, cbor.Value] = {0: True, 1: False, 2: 1, 3: 0, 4: None}
    assert cbor.field_bool(m, 0, "x") is True
    assert cbor.field_bool(m, 1, "x") is False
    for key in (2, 3, 4):
        with pytest.raises(DecodeError, match="expected a boolean"):
            cbor.field_bool(m, key, "x")


def test_field_list() -> None:
    m: dict[int, cbor.Value] = {0: [1, 2, 3], 1: {0: 1}, 2: b"abc"}
    assert cbor.field_list(m, 0, "x", 3) == [1, 2, 3]
    with pytest.raises(DecodeError, match="more than 2 items"):
        cbor.field_list(m, 0, "x", 2)
    for key in (1, 2):
        with pytest.raises(DecodeError, match="expected a list"):
            cbor.field_list(m, key, "x", 10)


def test_field_map() -> None:
    m: dict[int, cbor.Value] = {0: {1: 2}, 1: [1, 2], 2: None}
    assert cbor.field_map(m, 0, "x") == {1: 2}
    for key in (1, 2):
        with pytest.raises(DecodeError, match="expected a map"):
            cbor.field_map(m, key, "x")


def test_field_optional_map() -> None:
    m: dict[int, cbor.Value] = {0: {1: 2}, 1: None, 2: [1]}
    assert cbor.field_optional_map(m, 0, "x") == {1: 2}
    assert cbor.field_optional_map(m, 1, "x") is None
    assert cbor.field_optional_map(m, 9, "x") is None  # absent
    with pytest.raises(DecodeError, match="expected a map"):
        cbor.field_optional_map(m, 2, "x")
