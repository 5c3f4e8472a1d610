"""Encrypted attachments in the core (docs/protocol.md 11.2; ``e2ee/attachment.py``) and
the secretstream wrappers of ``e2ee/primitives.py`` under them: round trips, the blob
layout, truncation at every chunk boundary, reordered, repeated, appended and modified
chunks, data after the final chunk, the pointer's encoding, and bounded memory."""

from __future__ import annotations

import hashlib
import itertools
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import nacl.bindings as sodium
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from e2ee import cbor, primitives
from e2ee.attachment import (
    ATTACHMENT_CHUNK_SIZE,
    ATTACHMENT_CIPHERTEXT_CHUNK_SIZE,
    ATTACHMENT_HEADER_SIZE,
    MAX_BLOB_ID_SIZE,
    MIN_ATTACHMENT_BLOB_SIZE,
    AttachmentCorrupt,
    AttachmentDecryptor,
    AttachmentEncryptor,
    AttachmentPointer,
    AttachmentReader,
    Rechunker,
    attachment_blob_size,
    attachment_plaintext_size,
)
from e2ee.errors import DecodeError, DecryptionError, InvalidArgument
from e2ee.payload import AttachmentRef
from e2ee.primitives import (
    SECRETSTREAM_TAG_FINAL,
    SECRETSTREAM_TAG_MESSAGE,
    SECRETSTREAM_TAG_PUSH,
    SECRETSTREAM_TAG_REKEY,
    secretstream_init_pull,
    secretstream_init_push,
    secretstream_keygen,
    secretstream_pull,
    secretstream_push,
)
from tests.hypothesis_profiles import DECODER_SETTINGS

from .helpers import seeded_rng

C = ATTACHMENT_CHUNK_SIZE
CT = ATTACHMENT_CIPHERTEXT_CHUNK_SIZE
KEY = bytes(range(32))
BLOB_ID = bytes(range(100, 116))


def _data(size: int, seed: int = 0) -> bytes:
    return seeded_rng(seed)(size)


def _encrypt(data: bytes, key: bytes = KEY) -> tuple[AttachmentEncryptor, bytes]:
    encryptor = AttachmentEncryptor(key)
    return encryptor, b"".join(encryptor.stream([data]))


def _chunks(blob: bytes) -> tuple[bytes, list[bytes]]:
    """Header and ciphertext chunks of a blob (cut independently of the module)."""
    body = blob[ATTACHMENT_HEADER_SIZE:]
    return blob[:ATTACHMENT_HEADER_SIZE], [body[i : i + CT] for i in range(0, len(body), CT)]


def _decrypt(header: bytes, chunks: list[bytes], key: bytes = KEY) -> bytes:
    decryptor = AttachmentDecryptor(key, header)
    out = b"".join(decryptor.pull(chunk) for chunk in chunks)
    decryptor.finish()
    return out


def _read(pointer: AttachmentPointer, blob: bytes, step: int) -> bytes:
    reader = AttachmentReader(pointer)
    out = [piece for i in range(0, len(blob), step) for piece in reader.feed(blob[i : i + step])]
    return b"".join(out) + reader.finish()


# A blob of three full chunks and a short final one, shared by the corruption tests.
DATA = _data(3 * C + 1000)
ENCRYPTOR, BLOB = _encrypt(DATA)
POINTER = ENCRYPTOR.pointer(BLOB_ID)
HEADER, CHUNKS = _chunks(BLOB)


# --- the secretstream wrappers -----------------------------------------------------------


def test_secretstream_constants_are_libsodiums() -> None:
    assert sodium.crypto_secretstream_xchacha20poly1305_KEYBYTES == primitives.SECRETSTREAM_KEY_SIZE
    assert (
        sodium.crypto_secretstream_xchacha20poly1305_HEADERBYTES
        == primitives.SECRETSTREAM_HEADER_SIZE
    )
    assert sodium.crypto_secretstream_xchacha20poly1305_ABYTES == primitives.SECRETSTREAM_ABYTES
    assert sodium.crypto_secretstream_xchacha20poly1305_TAG_MESSAGE == SECRETSTREAM_TAG_MESSAGE
    assert sodium.crypto_secretstream_xchacha20poly1305_TAG_PUSH == SECRETSTREAM_TAG_PUSH
    assert sodium.crypto_secretstream_xchacha20poly1305_TAG_REKEY == SECRETSTREAM_TAG_REKEY
    assert sodium.crypto_secretstream_xchacha20poly1305_TAG_FINAL == SECRETSTREAM_TAG_FINAL


def test_secretstream_round_trip_against_the_binding() -> None:
    key = secretstream_keygen(seeded_rng(1))
    assert key == seeded_rng(1)(32)
    state, header = secretstream_init_push(key)
    assert len(header) == 24 and "secret" in repr(state)
    messages = [
        (b"one", SECRETSTREAM_TAG_MESSAGE, b""),
        (b"", SECRETSTREAM_TAG_PUSH, b"ad"),
        (b"three", SECRETSTREAM_TAG_REKEY, b""),
        (b"four", SECRETSTREAM_TAG_FINAL, b"x"),
    ]
    sealed = [secretstream_push(state, m, tag=t, associated_data=a) for m, t, a in messages]
    assert [len(c) for c in sealed] == [len(m) + 17 for m, _, _ in messages]
    # The raw binding reads what the wrapper wrote...
    raw = sodium.crypto_secretstream_xchacha20poly1305_state()
    sodium.crypto_secretstream_xchacha20poly1305_init_pull(raw, header, key)
    for (m, t, a), c in zip(messages, sealed, strict=True):
        assert sodium.crypto_secretstream_xchacha20poly1305_pull(raw, c, a or None) == (m, t)
    # ...and the wrapper reads it too.
    pull = secretstream_init_pull(key, header)
    assert "secret" in repr(pull)
    for (m, t, a), c in zip(messages, sealed, strict=True):
        assert secretstream_pull(pull, c, associated_data=a) == (m, t)


def test_secretstream_failure_leaves_state_usable() -> None:
    state, header = secretstream_init_push(KEY)
    first, second = secretstream_push(state, b"a"), secretstream_push(state, b"b")
    pull = secretstream_init_pull(KEY, header)
    for bad in (second, first[:-1] + bytes([first[-1] ^ 1])):
        with pytest.raises(DecryptionError):
            secretstream_pull(pull, bad)
    with pytest.raises(DecryptionError):
        secretstream_pull(pull, first, associated_data=b"other")
    assert secretstream_pull(pull, first) == (b"a", SECRETSTREAM_TAG_MESSAGE)
    assert secretstream_pull(pull, second) == (b"b", SECRETSTREAM_TAG_MESSAGE)


def test_secretstream_refusals() -> None:
    with pytest.raises(InvalidArgument):
        secretstream_keygen(lambda n: bytes(n - 1))
    with pytest.raises(InvalidArgument):
        secretstream_init_push(bytes(31))
    with pytest.raises(InvalidArgument):
        secretstream_init_pull(bytes(31), bytes(24))
    with pytest.raises(InvalidArgument):
        secretstream_init_pull(KEY, bytes(23))
    push, header = secretstream_init_push(KEY)
    pull = secretstream_init_pull(KEY, header)
    with pytest.raises(InvalidArgument):
        secretstream_push(pull, b"x")  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument):
        secretstream_pull(push, bytes(17))  # type: ignore[arg-type]
    for tag in (4, -1, 0x80):
        with pytest.raises(InvalidArgument):
            secretstream_push(push, b"x", tag=tag)
    for size in (0, 16):
        with pytest.raises(DecryptionError):
            secretstream_pull(pull, bytes(size))


# --- sizes and layout ---------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, C - 1, C, C + 1, 2 * C, 2 * C + 17, 3 * C + 1000])
def test_round_trip_sizes(size: int) -> None:
    data = _data(size, size)
    encryptor, blob = _encrypt(data)
    assert len(blob) == attachment_blob_size(size) == encryptor.ciphertext_size
    assert attachment_plaintext_size(len(blob)) == size == encryptor.plaintext_size
    header, chunks = _chunks(blob)
    assert header == encryptor.header
    assert all(len(c) == CT for c in chunks[:-1]) and 17 <= len(chunks[-1]) <= CT
    assert len(chunks) == max(1, -(-size // C))
    pointer = encryptor.pointer(BLOB_ID)
    assert pointer.digest == hashlib.sha256(blob).digest() and pointer.size == len(blob)
    assert pointer.plaintext_size == size
    assert _decrypt(header, chunks) == data
    assert _read(pointer, blob, 4096) == data
    if size >= 16:  # shorter plaintexts occur in random bytes by chance (1 byte: ~16 %)
        assert data[:64] not in blob


def test_the_blob_is_a_plain_secretstream() -> None:
    """Independently of the module: libsodium reads the blob chunk by chunk, every tag
    ``TAG_MESSAGE`` but the last, which is ``TAG_FINAL``."""
    state = sodium.crypto_secretstream_xchacha20poly1305_state()
    sodium.crypto_secretstream_xchacha20poly1305_init_pull(state, HEADER, KEY)
    out, tags = [], []
    for chunk in CHUNKS:
        message, tag = sodium.crypto_secretstream_xchacha20poly1305_pull(state, chunk)
        out.append(message)
        tags.append(tag)
    assert b"".join(out) == DATA
    assert tags == [0, 0, 0, 3]


def test_push_api_and_the_empty_final_chunk() -> None:
    """A sender that finds the end only after a full chunk pushes an empty final one:
    valid, and the size still fixes the plaintext length."""
    encryptor = AttachmentEncryptor(KEY)
    data = _data(2 * C, 3)
    parts = [encryptor.header, encryptor.push(data[:C]), encryptor.push(data[C:])]
    with pytest.raises(InvalidArgument):
        encryptor.digest  # noqa: B018 - the property raises before the final chunk
    with pytest.raises(InvalidArgument):
        encryptor.pointer(BLOB_ID)
    parts.append(encryptor.push(b"", final=True))
    assert encryptor.finished
    assert len(parts[-1]) == 17
    blob = b"".join(parts)
    assert len(blob) == attachment_blob_size(2 * C) + 17
    assert attachment_plaintext_size(len(blob)) == 2 * C
    pointer = encryptor.pointer(BLOB_ID)
    assert _read(pointer, blob, 10_000) == data
    assert repr(encryptor) == "AttachmentEncryptor(plaintext_size=131072, finished=True)"
    assert KEY.hex() not in repr(encryptor) and encryptor.key == KEY


def test_encryptor_misuse() -> None:
    encryptor = AttachmentEncryptor(KEY)
    for bad in (b"", bytes(C - 1), bytes(C + 1)):
        with pytest.raises(InvalidArgument):
            encryptor.push(bad)
    with pytest.raises(InvalidArgument):
        encryptor.push(bytes(C + 1), final=True)
    encryptor.push(bytes(C))
    with pytest.raises(InvalidArgument):  # stream() starts a whole attachment
        list(encryptor.stream([b"x"]))
    encryptor.push(bytes(10), final=True)
    with pytest.raises(InvalidArgument):
        encryptor.push(b"", final=True)
    with pytest.raises(InvalidArgument):
        AttachmentEncryptor(bytes(16))
    generated = AttachmentEncryptor.generate(seeded_rng(4))
    assert generated.key == seeded_rng(4)(32)
    assert AttachmentEncryptor(KEY).header != AttachmentEncryptor(KEY).header


@given(cuts=st.lists(st.integers(0, 3 * C + 1000), max_size=12))
@settings(max_examples=25, deadline=None)
def test_stream_pieces_of_any_size(cuts: list[int]) -> None:
    bounds = [0, *sorted(cuts), len(DATA)]
    pieces = [DATA[a:b] for a, b in itertools.pairwise(bounds)]
    encryptor = AttachmentEncryptor(KEY)
    blob = b"".join(encryptor.stream(iter(pieces)))
    assert len(blob) == len(BLOB)
    assert _read(encryptor.pointer(BLOB_ID), blob, 7777) == DATA


@given(cuts=st.lists(st.integers(0, len(BLOB)), max_size=12))
@settings(max_examples=25, deadline=None)
def test_reader_accepts_the_blob_cut_anywhere(cuts: list[int]) -> None:
    bounds = [0, *sorted(cuts), len(BLOB)]
    reader = AttachmentReader(POINTER)
    out = [p for a, b in itertools.pairwise(bounds) for p in reader.feed(BLOB[a:b])]
    assert b"".join(out) + reader.finish() == DATA
    assert reader.plaintext_size == len(DATA)


def test_sizes_refused() -> None:
    for size in (-1, True):
        with pytest.raises(InvalidArgument):
            attachment_blob_size(size)
    impossible = [0, MIN_ATTACHMENT_BLOB_SIZE - 1, 24 + CT + 1, 24 + CT + 16, 24 + 2 * CT + 5]
    for size in impossible:
        with pytest.raises(InvalidArgument):
            attachment_plaintext_size(size)
    with pytest.raises(InvalidArgument):
        attachment_plaintext_size(True)
    assert attachment_plaintext_size(MIN_ATTACHMENT_BLOB_SIZE) == 0
    assert attachment_plaintext_size(24 + CT) == C
    assert attachment_plaintext_size(24 + CT + 17) == C


# --- corruption ---------------------------------------------------------------------------


@pytest.mark.parametrize("kept", range(len(CHUNKS)))
def test_truncation_at_every_chunk_boundary(kept: int) -> None:
    decryptor = AttachmentDecryptor(KEY, HEADER)
    for chunk in CHUNKS[:kept]:
        decryptor.pull(chunk)
    assert not decryptor.finished
    with pytest.raises(AttachmentCorrupt):
        decryptor.finish()
    with pytest.raises(AttachmentCorrupt):  # and it stays refused
        decryptor.pull(CHUNKS[kept])
    truncated = HEADER + b"".join(CHUNKS[:kept])
    reader = AttachmentReader(POINTER)
    reader.feed(truncated)
    with pytest.raises(AttachmentCorrupt):
        reader.finish()


@pytest.mark.parametrize("cut", [0, 1, 23, 24, 25, 24 + CT - 1, 24 + CT + 1, len(BLOB) - 1])
def test_truncation_inside_a_chunk_or_the_header(cut: int) -> None:
    reader = AttachmentReader(POINTER)
    reader.feed(BLOB[:cut])
    with pytest.raises(AttachmentCorrupt):
        reader.finish()


@pytest.mark.parametrize(
    "order",
    [[1, 0, 2, 3], [0, 2, 1, 3], [0, 1, 3, 2], [0, 0, 1, 2, 3], [0, 1, 2, 2, 3], [0, 1, 3], [3]],
)
def test_reordered_repeated_and_dropped_chunks(order: list[int]) -> None:
    with pytest.raises(AttachmentCorrupt):
        _decrypt(HEADER, [CHUNKS[i] for i in order])


@pytest.mark.parametrize(
    "extra", [CHUNKS[0], CHUNKS[-1], b"\x00", bytes(17), bytes(CT)], ids=lambda b: str(len(b))
)
def test_data_after_the_final_chunk(extra: bytes) -> None:
    decryptor = AttachmentDecryptor(KEY, HEADER)
    for chunk in CHUNKS:
        decryptor.pull(chunk)
    assert decryptor.finished
    with pytest.raises(AttachmentCorrupt):
        decryptor.pull(extra)
    with pytest.raises(AttachmentCorrupt):  # broken for good
        decryptor.finish()
    # Through the reader: more bytes than the pointer's size are refused on arrival...
    reader = AttachmentReader(POINTER)
    reader.feed(BLOB)
    with pytest.raises(AttachmentCorrupt):
        reader.feed(extra)
    with pytest.raises(AttachmentCorrupt):
        reader.finish()
    # ...and a sender's pointer that announces them does not help.
    longer = AttachmentPointer(BLOB_ID, KEY, hashlib.sha256(BLOB + extra).digest(), len(BLOB) + CT)
    reader = AttachmentReader(longer)
    reader.feed(BLOB)
    with pytest.raises(AttachmentCorrupt):
        reader.feed(extra)
        reader.finish()


def test_appended_chunk_of_the_same_stream() -> None:
    """A sender (who holds the key) continuing the stream past TAG_FINAL: refused."""
    state, header = secretstream_init_push(KEY)
    chunks = [
        secretstream_push(state, b"end", tag=SECRETSTREAM_TAG_FINAL),
        secretstream_push(state, b"more", tag=SECRETSTREAM_TAG_FINAL),
    ]
    with pytest.raises(AttachmentCorrupt):
        _decrypt(header, chunks)


@pytest.mark.parametrize("index", [0, 1, 2, 3])
def test_modified_chunks(index: int) -> None:
    for position in (0, 100, len(CHUNKS[index]) - 17, len(CHUNKS[index]) - 1):
        chunks = list(CHUNKS)
        tampered = bytearray(chunks[index])
        tampered[position] ^= 1
        chunks[index] = bytes(tampered)
        with pytest.raises(AttachmentCorrupt):
            _decrypt(HEADER, chunks)


def test_modified_header_wrong_key_and_another_blob() -> None:
    with pytest.raises(AttachmentCorrupt):
        _decrypt(bytes([HEADER[0] ^ 1]) + HEADER[1:], CHUNKS)
    with pytest.raises(AttachmentCorrupt):
        _decrypt(HEADER, CHUNKS, key=bytes(32))
    _, other = _encrypt(DATA)  # same key and data, another header
    other_header, other_chunks = _chunks(other)
    with pytest.raises(AttachmentCorrupt):
        _decrypt(HEADER, [CHUNKS[0], other_chunks[1], CHUNKS[2], CHUNKS[3]])
    with pytest.raises(AttachmentCorrupt):
        AttachmentDecryptor(KEY, HEADER[:-1])
    with pytest.raises(InvalidArgument):
        AttachmentDecryptor(bytes(31), HEADER)
    assert _decrypt(other_header, other_chunks) == DATA


@pytest.mark.parametrize("length", [0, 16, CT + 1])
def test_chunks_of_impossible_length(length: int) -> None:
    decryptor = AttachmentDecryptor(KEY, HEADER)
    with pytest.raises(AttachmentCorrupt):
        decryptor.pull(bytes(length))
    with pytest.raises(AttachmentCorrupt):
        decryptor.pull(CHUNKS[0])


@pytest.mark.parametrize(
    ("message", "tag"),
    [
        (b"short", SECRETSTREAM_TAG_MESSAGE),  # a short chunk must be the final one
        (bytes(C), SECRETSTREAM_TAG_PUSH),
        (bytes(C), SECRETSTREAM_TAG_REKEY),
    ],
)
def test_chunks_the_layout_forbids(message: bytes, tag: int) -> None:
    state, header = secretstream_init_push(KEY)
    chunks = [
        secretstream_push(state, message, tag=tag),
        secretstream_push(state, b"", tag=SECRETSTREAM_TAG_FINAL),
    ]
    decryptor = AttachmentDecryptor(KEY, header)
    with pytest.raises(AttachmentCorrupt):
        decryptor.pull(chunks[0])


def test_reader_digest_and_size_checked() -> None:
    wrong_digest = AttachmentPointer(BLOB_ID, KEY, bytes(32), POINTER.size)
    with pytest.raises(AttachmentCorrupt):
        _read(wrong_digest, BLOB, 50_000)
    # A pointer announcing one more (empty) final chunk than a blob of full chunks has:
    # the same plaintext length, another layout.
    encryptor, full = _encrypt(_data(2 * C, 6))
    pointer = encryptor.pointer(BLOB_ID)
    wrong_size = AttachmentPointer(BLOB_ID, KEY, pointer.digest, pointer.size + 17)
    assert wrong_size.plaintext_size == pointer.plaintext_size
    with pytest.raises(AttachmentCorrupt):
        _read(wrong_size, full, 50_000)
    wrong_key = AttachmentPointer(BLOB_ID, bytes(32), POINTER.digest, POINTER.size)
    reader = AttachmentReader(wrong_key)
    with pytest.raises(AttachmentCorrupt):
        reader.feed(BLOB)
    with pytest.raises(AttachmentCorrupt):
        reader.feed(b"")
    reader = AttachmentReader(POINTER)
    with pytest.raises(AttachmentCorrupt):
        reader.finish()  # nothing received
    with pytest.raises(AttachmentCorrupt):
        reader.finish()


def test_reader_after_finish() -> None:
    encryptor, full = _encrypt(_data(2 * C, 7))
    reader = AttachmentReader(encryptor.pointer(BLOB_ID))
    assert reader.feed(full[:10]) == [] and reader.plaintext_size == 0
    assert len(reader.feed(full[10:])) == 2  # the final chunk is full: fed, not flushed
    assert reader.finish() == b""
    assert "received=" in repr(reader) and KEY.hex() not in repr(reader)
    with pytest.raises(InvalidArgument):
        reader.feed(b"")
    with pytest.raises(InvalidArgument):
        reader.finish()


def test_decryptor_progress_and_repr() -> None:
    decryptor = AttachmentDecryptor(KEY, HEADER)
    decryptor.pull(CHUNKS[0])
    assert decryptor.plaintext_size == C and decryptor.ciphertext_size == 24 + CT
    assert repr(decryptor) == f"AttachmentDecryptor(plaintext_size={C}, finished=False)"
    for chunk in CHUNKS[1:]:
        decryptor.pull(chunk)
    assert decryptor.finish() == POINTER.digest


# --- the rechunker ---------------------------------------------------------------------------


@given(data=st.binary(max_size=300), cuts=st.lists(st.integers(0, 300)), size=st.integers(1, 40))
def test_rechunker(data: bytes, cuts: list[int], size: int) -> None:
    chunker = Rechunker(size)
    bounds = [0, *sorted(c for c in cuts if c <= len(data)), len(data)]
    out: list[bytes] = []
    for a, b in itertools.pairwise(bounds):
        out.extend(chunker.feed(data[a:b]))
        assert chunker.pending < size
    assert all(len(c) == size for c in out)
    rest = chunker.flush()
    assert (rest is None) == (len(data) % size == 0)
    assert b"".join(out) + (rest or b"") == data
    assert chunker.flush() is None and chunker.pending == 0


def test_rechunker_size() -> None:
    assert Rechunker().feed(bytes(CT + 1)) == [bytes(CT)]
    for bad in (0, -1, True):
        with pytest.raises(InvalidArgument):
            Rechunker(bad)


# --- the pointer ------------------------------------------------------------------------------


def test_pointer_encoding() -> None:
    encoded = POINTER.to_bytes()
    assert cbor.decode(encoded) == {0: BLOB_ID, 1: KEY, 2: POINTER.digest, 3: len(BLOB)}
    assert AttachmentPointer.from_bytes(encoded) == POINTER
    assert AttachmentPointer.from_value(POINTER.to_value()) == POINTER
    ref = POINTER.to_ref()
    assert ref == AttachmentRef(BLOB_ID, KEY, POINTER.digest, len(BLOB))
    assert AttachmentPointer.from_ref(ref) == POINTER
    text = repr(POINTER)
    assert KEY.hex() not in text and BLOB_ID.hex() in text
    assert POINTER.__eq__(ref) is NotImplemented
    other_key = AttachmentPointer(BLOB_ID, bytes(32), POINTER.digest, POINTER.size)
    assert other_key != POINTER
    assert hash(POINTER) == hash(AttachmentPointer.from_bytes(encoded))


@pytest.mark.parametrize(
    "fields",
    [
        {0: b"", 1: KEY, 2: bytes(32), 3: 41},
        {0: bytes(MAX_BLOB_ID_SIZE + 1), 1: KEY, 2: bytes(32), 3: 41},
        {0: "id", 1: KEY, 2: bytes(32), 3: 41},
        {0: BLOB_ID, 1: bytes(31), 2: bytes(32), 3: 41},
        {0: BLOB_ID, 1: KEY, 2: bytes(33), 3: 41},
        {0: BLOB_ID, 1: KEY, 2: bytes(32), 3: 40},
        {0: BLOB_ID, 1: KEY, 2: bytes(32), 3: 24 + CT + 1},
        {0: BLOB_ID, 1: KEY, 2: bytes(32), 3: -1},
        {0: BLOB_ID, 1: KEY, 2: bytes(32), 3: 2**63},
        {0: BLOB_ID, 1: KEY, 2: bytes(32), 3: True},
        {0: BLOB_ID, 1: KEY, 2: bytes(32)},
        {0: BLOB_ID, 1: KEY, 2: bytes(32), 3: 41, 4: 0},
    ],
)
def test_pointer_refusals(fields: dict[int, cbor.Value]) -> None:
    with pytest.raises(DecodeError):
        AttachmentPointer.from_bytes(cbor.encode(fields))
    if set(fields) == {0, 1, 2, 3}:
        with pytest.raises(InvalidArgument):
            AttachmentPointer(fields[0], fields[1], fields[2], fields[3])  # type: ignore[arg-type]
        if isinstance(fields[0], bytes) and isinstance(fields[3], int):
            ref = AttachmentRef(fields[0], fields[1], fields[2], fields[3])  # type: ignore[arg-type]
            with pytest.raises(DecodeError):
                AttachmentPointer.from_ref(ref)
    with pytest.raises(InvalidArgument):
        AttachmentPointer(BLOB_ID, KEY, bytes(32), 41.0)  # type: ignore[arg-type]


@DECODER_SETTINGS
@given(data=st.binary(max_size=300))
def test_pointer_decoder_fuzz(data: bytes) -> None:
    try:
        pointer = AttachmentPointer.from_bytes(data)
    except DecodeError:
        return
    assert pointer.to_bytes() == data


@DECODER_SETTINGS
@given(data=st.data())
def test_pointer_decoder_mutations(data: st.DataObject) -> None:
    encoded = bytearray(POINTER.to_bytes())
    for _ in range(data.draw(st.integers(1, 3))):
        position = data.draw(st.integers(0, len(encoded) - 1))
        encoded[position] = data.draw(st.integers(0, 255))
    try:
        pointer = AttachmentPointer.from_bytes(bytes(encoded))
    except DecodeError:
        return
    assert pointer.to_bytes() == bytes(encoded)


# --- memory -------------------------------------------------------------------------------


def test_memory_is_bounded_by_a_chunk(tmp_path: Path) -> None:
    """8 MiB through the encryptor (to a file) and back through the reader, in 16 KiB
    pieces: the peak of Python allocations stays within a few chunks on each side."""
    size = 8 * 1024 * 1024
    piece = _data(16 * 1024, 5)
    path = tmp_path / "blob"

    def pieces() -> Iterator[bytes]:
        for _ in range(size // len(piece)):
            yield piece

    tracemalloc.start()
    try:
        encryptor = AttachmentEncryptor(KEY)
        with path.open("wb") as out:
            for part in encryptor.stream(pieces()):
                out.write(part)
        pointer = encryptor.pointer(BLOB_ID)
        _, encrypt_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        reader = AttachmentReader(pointer)
        plaintext = hashlib.sha256()
        with path.open("rb") as blob:
            while part := blob.read(len(piece)):
                for chunk in reader.feed(part):
                    plaintext.update(chunk)
        plaintext.update(reader.finish())
        _, read_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert path.stat().st_size == pointer.size == attachment_blob_size(size)
    assert plaintext.digest() == hashlib.sha256(piece * (size // len(piece))).digest()
    # A few copies of one chunk in flight (the rechunker's, the one held back, the
    # ciphertext), whatever the attachment's size.
    assert encrypt_peak < 8 * CT, encrypt_peak
    assert read_peak < 8 * CT, read_peak
