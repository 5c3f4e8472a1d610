"""Strict canonical CBOR (RFC 8949 deterministic encoding), DESIGN 4.1.

Every structure except the two hot-path message envelopes is canonical CBOR. The
data model is deliberately small: ``int`` (64-bit), ``bytes``, ``str``, ``list``,
``dict`` with small non-negative integer keys, ``bool`` and ``None``. No floats,
no tags, no indefinite lengths, no duplicate or unsorted keys, no non-minimal
heads, no trailing bytes. The decoder checks the size first, then parses, and
finally re-encodes the value with ``cbor2``'s canonical encoder and requires the
same bytes, so a value has exactly one accepted encoding.

Speed: both directions first try ``cbor2``'s native codec, guarded so that it can
only ever give the strict codec's answer. :func:`decode` parses with
:func:`cbor2.loads`, walks the result (data model, 64-bit integer range, map keys
in ascending order, depth, and a size budget that bounds the walk by the input's
length), and re-encodes it with :func:`cbor2.dumps`; only a value of the data model
whose encoding is exactly the input is returned, and since that encoding is unique,
it is the value the strict decoder gives. Anything else (an error, a type outside
the model, other bytes) goes to the strict decoder, which accepts or raises the
precise typed error. :func:`encode` walks the value with the encoder's own rules
(and ascending keys), then calls :func:`cbor2.dumps`; any other value goes to the
strict encoder, which encodes it or raises.

Field helpers (:func:`expect_map`, :func:`field_int`, ...) turn a decoded map into
typed values with :class:`~e2ee.errors.DecodeError` on any mismatch.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final, TypeAlias

import cbor2

from .errors import (
    CBORDecodeError,
    CBORDepthExceeded,
    CBORDuplicateKey,
    CBORFloatNotAllowed,
    CBORIndefiniteLength,
    CBORInvalidKey,
    CBORInvalidUTF8,
    CBORNonCanonical,
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
from .limits import MAX_CBOR_DEPTH, MAX_STRUCTURE_SIZE

__all__ = [
    "MAX_MAP_KEY",
    "Value",
    "decode",
    "encode",
    "expect_list",
    "expect_map",
    "field_bool",
    "field_bytes",
    "field_int",
    "field_list",
    "field_map",
    "field_optional_bytes",
    "field_optional_map",
    "field_str",
]

Value: TypeAlias = "int | bytes | str | bool | list[Value] | dict[int, Value] | None"

MAX_MAP_KEY: Final = 255
"""Largest map key: protocol maps use small integer keys only."""
_U64_MAX: Final = 2**64 - 1
_INT_MIN: Final = -(2**64)
_FAST_MAX_DEPTH: Final = 64
"""Deepest ``depth`` argument the native fast path of :func:`decode` serves (the walk
recurses once per level); a caller asking for deeper nesting gets the strict decoder.
Far below ``cbor2``'s own nesting limit and Python's recursion limit."""


class _Outside(Exception):
    """Internal: the fast path cannot vouch for this value; use the strict codec."""


# --- native fast path --------------------------------------------------------------------


def _check_decoded(container: list[object] | dict[object, object], levels: int, budget: int) -> int:
    """Check a list or map :func:`cbor2.loads` returned against the strict data model.

    ``levels`` is how many more containers may nest, this one included, and
    ``budget`` how many input bytes are not yet accounted for, this container's head
    already paid. Every item takes at least one byte of a canonical encoding and a
    string at least one per character, so a value needing more than the input holds
    cannot be its canonical decoding: each container pays for its items before the
    walk visits them, and stops the walk once the budget runs out. That bounds the
    walk by the input length, even when shared references (tags 28/29) or string
    references make a value far larger than its encoding, or cyclic. Map keys must
    come in strictly ascending order (``loads`` keeps the input's order), so that
    ``cbor2``'s plain encoder reproduces a canonical input.

    Returns:
        The budget left (negative when the strings overdrew it).

    Raises:
        _Outside: a type outside the model (float, tag, simple value, datetime, ...),
            an integer beyond 64 bits (cbor2 reads bignum tags as ints), a bool,
            out-of-range or out-of-order map key, nesting beyond ``levels``, or an
            exhausted budget.
    """
    elements: Iterable[object]
    if type(container) is list:
        elements = container
        budget -= len(container)
    else:  # a dict: the callers pass nothing else
        mapping: dict[object, object] = container  # type: ignore[assignment]
        budget -= 2 * len(mapping)
        previous = -1
        for key in mapping:
            if type(key) is not int or not previous < key <= MAX_MAP_KEY:
                raise _Outside
            previous = key
        elements = mapping.values()
    if levels <= 0 or budget < 0:
        raise _Outside
    for element in elements:
        kind = type(element)
        if kind is bytes or kind is str:
            budget -= len(element)  # type: ignore[arg-type]
        elif kind is int:
            if not _INT_MIN <= element <= _U64_MAX:  # type: ignore[operator]
                raise _Outside
        elif kind is list or kind is dict:
            budget = _check_decoded(element, levels - 1, budget)  # type: ignore[arg-type]
        elif kind is not bool and element is not None:
            raise _Outside
    return budget


def _check_encodable(container: object, levels: int) -> None:
    """Check a list or map with the strict encoder's rules (types, 64-bit integers, map
    keys in 0..MAX_MAP_KEY and, here, in ascending order, nesting: ``levels`` is how
    many more containers may nest, this one included). Text is checked by
    :func:`cbor2.dumps` itself (lone surrogates raise).

    Raises:
        _Outside: the strict encoder would refuse the value (it then raises the
            error), or its keys are out of order (it then sorts them).
    """
    kind = type(container)
    elements: Iterable[object]
    if kind is list:
        elements = container  # type: ignore[assignment]
    elif kind is dict:
        mapping: dict[object, object] = container  # type: ignore[assignment]
        previous = -1
        for key in mapping:
            # Ascending keys only (the usual literal order): cbor2's plain encoder,
            # which keeps the dict's order, then writes the canonical encoding.
            if type(key) is not int or not previous < key <= MAX_MAP_KEY:
                raise _Outside
            previous = key
        elements = mapping.values()
    else:
        raise _Outside
    if levels <= 0:
        raise _Outside
    for element in elements:
        kind = type(element)
        if kind is bytes or kind is str or kind is bool or element is None:
            continue
        if kind is int or (isinstance(element, int) and type(element).__int__ is int.__int__):
            # An int subclass (IntEnum) that keeps int's conversion: cbor2 reads the
            # same number as the strict encoder's int(value). bool went above.
            if not _INT_MIN <= element <= _U64_MAX:  # type: ignore[operator]
                raise _Outside
        else:
            _check_encodable(element, levels - 1)


# --- encoder ---------------------------------------------------------------------------


def _head(major: int, arg: int, out: bytearray) -> None:
    mt = major << 5
    if arg < 24:
        out.append(mt | arg)
    elif arg < 0x100:
        out += bytes((mt | 24, arg))
    elif arg < 0x10000:
        out.append(mt | 25)
        out += arg.to_bytes(2, "big")
    elif arg < 0x100000000:
        out.append(mt | 26)
        out += arg.to_bytes(4, "big")
    else:
        out.append(mt | 27)
        out += arg.to_bytes(8, "big")


def _encode_into(value: Value, out: bytearray, depth: int) -> None:
    # Dispatch on the exact type first (the common cases, fastest), then fall back to
    # int subclasses such as IntEnum members; bool is never taken for an int.
    kind = type(value)
    if kind is bytes:
        size = len(value)  # type: ignore[arg-type]
        if size < 24:
            out.append(0x40 | size)
        else:
            _head(2, size, out)
        out += value  # type: ignore[arg-type]
    elif kind is int or (kind is not bool and isinstance(value, int)):
        number = int(value)  # type: ignore[arg-type]
        if 0 <= number < 24:
            out.append(number)
        elif number >= 0:
            if number > _U64_MAX:
                raise InvalidArgument("CBOR integer out of 64-bit range")
            _head(0, number, out)
        else:
            if number < _INT_MIN:
                raise InvalidArgument("CBOR integer out of 64-bit range")
            _head(1, -1 - number, out)
    elif kind is str:
        try:
            raw = value.encode("utf-8")  # type: ignore[union-attr]
        except UnicodeEncodeError:  # lone surrogates
            raise InvalidArgument("CBOR text must be encodable as UTF-8") from None
        _head(3, len(raw), out)
        out += raw
    elif value is None:
        out.append(0xF6)
    elif value is True:
        out.append(0xF5)
    elif value is False:
        out.append(0xF4)
    elif kind is dict:
        # The decoder refuses a container at depth MAX_CBOR_DEPTH (even an empty one).
        if depth >= MAX_CBOR_DEPTH:
            raise InvalidArgument("CBOR value nested too deeply")
        mapping: dict[int, Value] = value  # type: ignore[assignment]
        _head(5, len(mapping), out)
        # Keys are checked before sorting: mixed key types do not even sort.
        for key in mapping:
            if type(key) is not int or not 0 <= key <= MAX_MAP_KEY:
                raise InvalidArgument(f"CBOR map key must be an int in 0..{MAX_MAP_KEY}")
        for key in sorted(mapping):
            if key < 24:
                out.append(key)
            else:
                out += bytes((24, key))
            _encode_into(mapping[key], out, depth + 1)
    elif kind is list:
        if depth >= MAX_CBOR_DEPTH:
            raise InvalidArgument("CBOR value nested too deeply")
        items: list[Value] = value  # type: ignore[assignment]
        _head(4, len(items), out)
        for item in items:
            _encode_into(item, out, depth + 1)
    else:
        raise InvalidArgument(f"type {kind.__name__} has no CBOR encoding here")


def _encode_strict(value: Value) -> bytes:
    """The pure-Python encoder: the reference, and the source of every encode error."""
    out = bytearray()
    _encode_into(value, out, 0)
    return bytes(out)


def encode(value: Value) -> bytes:
    """Encode ``value`` in canonical CBOR (RFC 8949 4.2.1; docs/protocol.md 1.2).

    Raises:
        InvalidArgument: the value holds a type outside the data model (a float, a
            non-integer map key, ...), an integer beyond 64 bits, text that is not
            encodable as UTF-8, or nests too deeply.
    """
    try:
        _check_encodable([value], MAX_CBOR_DEPTH + 1)  # in a list: scalars too
        return cbor2.dumps(value)
    except (_Outside, ValueError, cbor2.CBOREncodeError):
        # Refused by the walk, or text with lone surrogates (UnicodeEncodeError): the
        # strict encoder raises the documented error.
        return _encode_strict(value)


# --- decoder ---------------------------------------------------------------------------


class _Decoder:
    __slots__ = ("data", "end", "max_depth", "pos")

    def __init__(self, data: bytes, max_depth: int) -> None:
        self.data = data
        self.end = len(data)
        self.pos = 0
        self.max_depth = max_depth

    def _take(self, n: int) -> bytes:
        pos = self.pos
        if n > self.end - pos:
            raise CBORTruncated("CBOR input ends inside an item")
        self.pos = pos + n
        return self.data[pos : pos + n]

    def _argument(self, info: int) -> int:
        if info < 24:
            return info
        if info == 24:
            arg = self._take(1)[0]
            if arg < 24:
                raise CBORNonMinimalInteger("CBOR head not in its shortest form")
            return arg
        if info in (25, 26, 27):
            size = 1 << (info - 24)
            arg = int.from_bytes(self._take(size), "big")
            if arg < (1 << (4 * size)):  # would fit in half the bytes
                raise CBORNonMinimalInteger("CBOR head not in its shortest form")
            return arg
        if info == 31:
            raise CBORIndefiniteLength("indefinite-length CBOR item")
        raise CBORUnsupportedType(f"reserved CBOR additional information {info}")

    def item(self, depth: int) -> Value:
        if self.pos >= self.end:
            raise CBORTruncated("CBOR input ends before an item")
        initial = self.data[self.pos]
        self.pos += 1
        major, info = initial >> 5, initial & 0x1F
        if major == 7:
            return self._simple(info)
        if major == 6:
            raise CBORTagNotAllowed("CBOR tags are not allowed")
        if info == 31 and major in (0, 1):
            raise CBORUnsupportedType("malformed CBOR integer head")
        arg = self._argument(info)
        if major == 0:
            return arg
        if major == 1:
            return -1 - arg
        if major == 2:
            return self._take(arg)
        if major == 3:
            raw = self._take(arg)
            try:
                return raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise CBORInvalidUTF8("CBOR text string is not valid UTF-8") from exc
        if depth >= self.max_depth:
            raise CBORDepthExceeded("CBOR nesting too deep")
        if arg > self.end - self.pos:  # every item takes at least one byte
            raise CBORTruncated("CBOR container longer than the input")
        if major == 4:
            return [self.item(depth + 1) for _ in range(arg)]
        return self._map(arg, depth)

    def _map(self, count: int, depth: int) -> dict[int, Value]:
        result: dict[int, Value] = {}
        previous = -1
        for _ in range(count):
            key = self.item(depth + 1)
            if type(key) is not int or not 0 <= key <= MAX_MAP_KEY:
                raise CBORInvalidKey(f"CBOR map key must be an int in 0..{MAX_MAP_KEY}")
            if key == previous:
                raise CBORDuplicateKey(f"duplicate CBOR map key {key}")
            if key < previous:
                raise CBORUnsortedKeys("CBOR map keys not in canonical order")
            previous = key
            result[key] = self.item(depth + 1)
        return result

    @staticmethod
    def _simple(info: int) -> Value:
        if info == 20:
            return False
        if info == 21:
            return True
        if info == 22:
            return None
        if info in (25, 26, 27):
            raise CBORFloatNotAllowed("CBOR floats are not allowed")
        if info == 31:
            raise CBORIndefiniteLength("unexpected CBOR break code")
        raise CBORUnsupportedType(f"CBOR simple value {info} is not allowed")


def _decode_strict(data: bytes, depth: int) -> Value:
    """The pure-Python strict decoder: the reference, and the source of every decode
    error (``data`` already within its size limit).

    Raises:
        CBORDecodeError: as :func:`decode`.
    """
    decoder = _Decoder(data, depth)
    value = decoder.item(0)
    if decoder.pos != decoder.end:
        raise CBORTrailingBytes(f"{decoder.end - decoder.pos} bytes after the CBOR item")
    # Belt and braces: an independent canonical encoder must give the same bytes.
    if cbor2.dumps(value, canonical=True) != data:  # pragma: no cover - the parser's
        # checks above already guarantee this; kept as a second, independent guard.
        raise CBORNonCanonical("CBOR input is not in canonical form")
    return value


def decode(
    data: bytes, *, max_size: int = MAX_STRUCTURE_SIZE, depth: int = MAX_CBOR_DEPTH
) -> Value:
    """Decode one canonical CBOR item that spans all of ``data`` (docs/protocol.md 1.2).

    Raises:
        CBORDecodeError: one subclass per rule broken (:class:`~e2ee.errors.CBORTooLarge`,
            ``CBORTruncated``, ``CBORTrailingBytes``, ``CBORDuplicateKey``,
            ``CBORUnsortedKeys``, ``CBORNonMinimalInteger``, ``CBORIndefiniteLength``,
            ``CBORFloatNotAllowed``, ``CBORTagNotAllowed``, ``CBORUnsupportedType``,
            ``CBORInvalidKey``, ``CBORInvalidUTF8``, ``CBORDepthExceeded``,
            ``CBORNonCanonical``).
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise CBORDecodeError("CBOR input must be bytes")
    if len(data) > max_size:
        raise CBORTooLarge(f"CBOR input of {len(data)} bytes exceeds {max_size}")
    data = bytes(data)
    if depth <= _FAST_MAX_DEPTH:
        try:
            value = cbor2.loads(data)
            # In a one-item list: the walk checks containers, and a scalar too.
            if _check_decoded([value], depth + 1, len(data)) < 0:
                raise _Outside
            # The walk bounded the value by the input, so this re-encoding is cheap;
            # with ascending keys the plain encoder writes the canonical encoding (and
            # is faster than canonical=True). Equal bytes: ``data`` is the unique
            # canonical encoding of a value of the model, which the strict decoder
            # accepts and decodes to this very value.
            if cbor2.dumps(value) == data:
                return value  # type: ignore[no-any-return]
        except Exception:  # noqa: S110 - any failure: the strict decoder decides
            pass
    return _decode_strict(data, depth)


# --- typed field access ----------------------------------------------------------------


def expect_map(
    value: Value, what: str, required: frozenset[int], optional: frozenset[int] = frozenset()
) -> dict[int, Value]:
    """Check ``value`` is a map holding every key of ``required`` and nothing outside
    ``required | optional``.

    Raises:
        DecodeError: not a map, a key missing, or an unknown key.
    """
    if not isinstance(value, dict):
        raise DecodeError(f"{what}: expected a map")
    keys = value.keys()
    if not required <= keys:
        raise DecodeError(f"{what}: missing field(s) {sorted(required - keys)}")
    extra = keys - required - optional
    if extra:
        raise DecodeError(f"{what}: unknown field(s) {sorted(extra)}")
    return value


def expect_list(value: Value, what: str, max_items: int) -> list[Value]:
    """Check ``value`` is a list of at most ``max_items`` items.

    Raises:
        DecodeError: not a list, or too long.
    """
    if not isinstance(value, list):
        raise DecodeError(f"{what}: expected a list")
    if len(value) > max_items:
        raise DecodeError(f"{what}: more than {max_items} items")
    return value


def field_int(m: dict[int, Value], key: int, what: str, lo: int = 0, hi: int = _U64_MAX) -> int:
    """An integer field in ``lo..hi``.

    Raises:
        DecodeError: not an integer (booleans are not integers here) or out of range.
    """
    value = m[key]
    if type(value) is not int:
        raise DecodeError(f"{what}: expected an integer")
    if not lo <= value <= hi:
        raise DecodeError(f"{what}: {value} outside {lo}..{hi}")
    return value


def field_bytes(
    m: dict[int, Value], key: int, what: str, *, size: int | None = None, max_size: int = 1 << 20
) -> bytes:
    """A byte-string field, of exactly ``size`` bytes when given, else at most ``max_size``.

    Raises:
        DecodeError: not bytes, or the wrong length.
    """
    value = m[key]
    if not isinstance(value, bytes):
        raise DecodeError(f"{what}: expected bytes")
    if size is not None and len(value) != size:
        raise DecodeError(f"{what}: expected {size} bytes, got {len(value)}")
    if len(value) > max_size:
        raise DecodeError(f"{what}: longer than {max_size} bytes")
    return value


def field_optional_bytes(
    m: dict[int, Value], key: int, what: str, *, size: int | None = None
) -> bytes | None:
    """A byte-string field that may be null or absent.

    Raises:
        DecodeError: neither null nor bytes of the right length.
    """
    if m.get(key) is None:
        return None
    return field_bytes(m, key, what, size=size)


def field_str(m: dict[int, Value], key: int, what: str, max_len: int = 1024) -> str:
    """A text field of at most ``max_len`` characters.

    Raises:
        DecodeError: not text, or too long.
    """
    value = m[key]
    if not isinstance(value, str):
        raise DecodeError(f"{what}: expected text")
    if len(value) > max_len:
        raise DecodeError(f"{what}: longer than {max_len} characters")
    return value


def field_bool(m: dict[int, Value], key: int, what: str) -> bool:
    """A boolean field.

    Raises:
        DecodeError: not a boolean.
    """
    value = m[key]
    if not isinstance(value, bool):
        raise DecodeError(f"{what}: expected a boolean")
    return value


def field_list(m: dict[int, Value], key: int, what: str, max_items: int) -> list[Value]:
    """A list field of at most ``max_items`` items.

    Raises:
        DecodeError: not a list, or too long.
    """
    return expect_list(m[key], what, max_items)


def field_map(m: dict[int, Value], key: int, what: str) -> dict[int, Value]:
    """A nested map field (its keys are checked by the caller with :func:`expect_map`).

    Raises:
        DecodeError: not a map.
    """
    value = m[key]
    if not isinstance(value, dict):
        raise DecodeError(f"{what}: expected a map")
    return value


def field_optional_map(m: dict[int, Value], key: int, what: str) -> dict[int, Value] | None:
    """A nested map field that may be null or absent.

    Raises:
        DecodeError: neither null nor a map.
    """
    if m.get(key) is None:
        return None
    return field_map(m, key, what)
