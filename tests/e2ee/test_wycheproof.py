"""Project Wycheproof vectors run through :mod:`e2ee.primitives` (and, for
ChaCha20-Poly1305, which the core does not use, through PyNaCl directly).

The vectors live outside the project, in ``../shared/vectors/wycheproof/`` (see its
SOURCE.md for the upstream commit); ``E2EE_WYCHEPROOF_DIR`` overrides the location.
When the folder is absent the tests skip with the reason (CI turns that into a
failure with ``E2EE_REQUIRE_SERVICES=1``).

Each test runs every vector of its file, collects the failures (with their tcId)
and asserts at the end that there are none and that exactly the expected number of
vectors ran.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import nacl.bindings
import nacl.exceptions
import pytest

from e2ee import primitives
from e2ee.errors import (
    BadSignature,
    DecryptionError,
    E2EEError,
    InvalidArgument,
    InvalidKey,
    LowOrderPoint,
)

WYCHEPROOF_ENV = "E2EE_WYCHEPROOF_DIR"
DEFAULT_DIR = Path(__file__).resolve().parents[2].parent / "shared" / "vectors" / "wycheproof"

Vector = dict[str, Any]
Group = dict[str, Any]


def vector_dir() -> Path:
    """The Wycheproof folder: ``$E2EE_WYCHEPROOF_DIR`` if set, else the shared one."""
    override = os.environ.get(WYCHEPROOF_ENV, "").strip()
    return Path(override) if override else DEFAULT_DIR


def load(name: str, expected_count: int) -> dict[str, Any]:
    """Load one vector file, or skip the test when the folder or file is absent."""
    directory = vector_dir()
    path = directory / name
    if not path.is_file():
        pytest.skip(
            f"Wycheproof vectors not found: {path} is missing (check out the shared "
            f"vectors at {DEFAULT_DIR} or set {WYCHEPROOF_ENV})"
        )
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    # The file's own header must agree with the count this test was written for.
    assert data["numberOfTests"] == expected_count, (name, data["numberOfTests"])
    return data


def vectors(data: dict[str, Any]) -> Iterator[tuple[Group, Vector]]:
    for group in data["testGroups"]:
        for test in group["tests"]:
            yield group, test


def h(hex_string: str) -> bytes:
    return bytes.fromhex(hex_string)


def outcome(function: Callable[..., object], *args: Any, **kwargs: Any) -> object:
    """What ``function(*args, **kwargs)`` returns, or the exception it raises."""
    try:
        return function(*args, **kwargs)
    except Exception as exc:  # recorded and judged by the caller
        return exc


def describe(result: object) -> str:
    if isinstance(result, BaseException):
        return f"{type(result).__module__}.{type(result).__name__}: {result}"
    if isinstance(result, bytes):
        return (
            result.hex() if len(result) <= 64 else f"{result[:64].hex()}... ({len(result)} bytes)"
        )
    return repr(result)


# --- X25519 -----------------------------------------------------------------------------

X25519_COUNT = 518
X25519_LOW_ORDER_COUNT = 31
X25519_LOW_ORDER_FLAGS = frozenset({"LowOrderPublic", "ZeroSharedSecret"})
ZERO32 = bytes(32)


def _is_low_order(test: Vector) -> bool:
    return bool(X25519_LOW_ORDER_FLAGS.intersection(test["flags"])) or h(test["shared"]) == ZERO32


def test_wycheproof_x25519() -> None:
    data = load("x25519_test.json", X25519_COUNT)
    failures: list[str] = []
    executed = 0
    for _, test in vectors(data):
        executed += 1
        tc, result = test["tcId"], test["result"]
        shared = h(test["shared"])
        got = outcome(primitives.x25519, h(test["private"]), h(test["public"]))
        if result == "valid":
            if got != shared:
                failures.append(f"tcId {tc} (valid): got {describe(got)}")
        elif result == "invalid":
            if not isinstance(got, (InvalidArgument, LowOrderPoint, InvalidKey)):
                failures.append(f"tcId {tc} (invalid): not refused, got {describe(got)}")
        elif isinstance(got, LowOrderPoint):
            # Acceptable: libsodium refuses a small-order peer key (all-zero output);
            # that is only right when the expected secret is zero / the case is low order.
            if not _is_low_order(test):
                failures.append(f"tcId {tc} (acceptable): LowOrderPoint on a non-low-order case")
        elif got != shared:
            # Acceptable cases that are computed (twist points, non-canonical u that
            # libsodium reduces mod p, ...) must give exactly Wycheproof's secret.
            failures.append(f"tcId {tc} (acceptable): got {describe(got)}")
    assert failures == []
    assert executed == X25519_COUNT


def test_wycheproof_x25519_low_order_public_keys() -> None:
    """Every vector flagged as a low-order public key (or an all-zero shared secret)
    is refused by ``x25519`` with LowOrderPoint, and its key by the decode-time check."""
    data = load("x25519_test.json", X25519_COUNT)
    failures: list[str] = []
    low_order = 0
    for _, test in vectors(data):
        if not _is_low_order(test):
            continue
        low_order += 1
        tc, public = test["tcId"], h(test["public"])
        got = outcome(primitives.x25519, h(test["private"]), public)
        if not isinstance(got, LowOrderPoint):
            failures.append(f"tcId {tc}: x25519 gave {describe(got)}")
        refused = outcome(primitives.x25519_validate_public, public)
        if not isinstance(refused, InvalidKey):
            failures.append(f"tcId {tc}: x25519_validate_public gave {describe(refused)}")
    assert failures == []
    assert low_order > 0
    assert low_order == X25519_LOW_ORDER_COUNT


# --- Ed25519 ----------------------------------------------------------------------------

ED25519_COUNT = 151


def test_wycheproof_ed25519() -> None:
    data = load("ed25519_test.json", ED25519_COUNT)
    failures: list[str] = []
    executed = 0
    for group in data["testGroups"]:
        public = h(group["publicKey"]["pk"])
        key_check = outcome(primitives.ed25519_validate_public, public)
        key_refused = isinstance(key_check, InvalidKey)
        if not key_refused and key_check != public:
            failures.append(f"key {public.hex()}: validation gave {describe(key_check)}")
        for test in group["tests"]:
            executed += 1
            tc, result = test["tcId"], test["result"]
            if key_refused:
                # A refused group key is only right if every vector under it is invalid.
                if result != "invalid":
                    failures.append(f"tcId {tc} ({result}): key refused by validation")
                continue
            got = outcome(primitives.ed25519_verify, public, h(test["msg"]), h(test["sig"]))
            if result == "valid":
                if got is not None:
                    failures.append(f"tcId {tc} (valid): {describe(got)}")
            elif not isinstance(got, (BadSignature, InvalidKey)):
                failures.append(f"tcId {tc} ({result}): not refused, got {describe(got)}")
    assert failures == []
    assert executed == ED25519_COUNT


# --- XChaCha20-Poly1305 (e2ee) and ChaCha20-Poly1305 (PyNaCl) -------------------------

XCHACHA20_POLY1305_COUNT = 315
CHACHA20_POLY1305_COUNT = 325


def test_wycheproof_xchacha20_poly1305() -> None:
    data = load("xchacha20_poly1305_test.json", XCHACHA20_POLY1305_COUNT)
    failures: list[str] = []
    executed = 0
    for _, test in vectors(data):
        executed += 1
        tc, result = test["tcId"], test["result"]
        key, nonce, aad = h(test["key"]), h(test["iv"]), h(test["aad"])
        msg, sealed = h(test["msg"]), h(test["ct"]) + h(test["tag"])
        sizes_ok = len(key) == primitives.AEAD_KEY_SIZE and len(nonce) == primitives.AEAD_NONCE_SIZE
        encrypted = outcome(primitives.aead_encrypt, key, nonce, msg, aad)
        decrypted = outcome(primitives.aead_decrypt, key, nonce, sealed, aad)
        if result == "valid":
            if encrypted != sealed:
                failures.append(f"tcId {tc} (valid): encrypt gave {describe(encrypted)}")
            if decrypted != msg:
                failures.append(f"tcId {tc} (valid): decrypt gave {describe(decrypted)}")
            continue
        if sizes_ok:
            # Wrong tag (or ciphertext): the only failure a well-sized input can have.
            if not isinstance(decrypted, DecryptionError):
                failures.append(f"tcId {tc} (invalid): decrypt gave {describe(decrypted)}")
        else:
            # Wrong key or nonce size: both directions refuse the arguments.
            for what, got in (("encrypt", encrypted), ("decrypt", decrypted)):
                if not isinstance(got, InvalidArgument):
                    failures.append(f"tcId {tc} (invalid): {what} gave {describe(got)}")
    assert failures == []
    assert executed == XCHACHA20_POLY1305_COUNT


def test_wycheproof_chacha20_poly1305() -> None:
    """ChaCha20-Poly1305 (IETF, 96-bit nonce) straight through PyNaCl, not through e2ee."""
    data = load("chacha20_poly1305_test.json", CHACHA20_POLY1305_COUNT)
    encrypt = nacl.bindings.crypto_aead_chacha20poly1305_ietf_encrypt
    decrypt = nacl.bindings.crypto_aead_chacha20poly1305_ietf_decrypt
    refused = (nacl.exceptions.CryptoError, ValueError, TypeError)
    failures: list[str] = []
    executed = 0
    for _, test in vectors(data):
        executed += 1
        tc, result = test["tcId"], test["result"]
        key, nonce, aad = h(test["key"]), h(test["iv"]), h(test["aad"])
        msg, sealed = h(test["msg"]), h(test["ct"]) + h(test["tag"])
        decrypted = outcome(decrypt, sealed, aad, nonce, key)
        if result == "valid":
            encrypted = outcome(encrypt, msg, aad, nonce, key)
            if encrypted != sealed:
                failures.append(f"tcId {tc} (valid): encrypt gave {describe(encrypted)}")
            if decrypted != msg:
                failures.append(f"tcId {tc} (valid): decrypt gave {describe(decrypted)}")
        elif not isinstance(decrypted, refused):
            failures.append(f"tcId {tc} (invalid): decrypt gave {describe(decrypted)}")
    assert failures == []
    assert executed == CHACHA20_POLY1305_COUNT


# --- HKDF-SHA-256 and HMAC-SHA-256 -----------------------------------------------------

HKDF_SHA256_COUNT = 86
HMAC_SHA256_COUNT = 174


def test_wycheproof_hkdf_sha256() -> None:
    data = load("hkdf_sha256_test.json", HKDF_SHA256_COUNT)
    failures: list[str] = []
    executed = 0
    for _, test in vectors(data):
        executed += 1
        tc, result = test["tcId"], test["result"]
        got = outcome(
            primitives.hkdf_sha256,
            h(test["ikm"]),
            salt=h(test["salt"]),
            info=h(test["info"]),
            length=test["size"],
        )
        if result == "valid":
            if got != h(test["okm"]):
                failures.append(f"tcId {tc} (valid): got {describe(got)}")
        elif not isinstance(got, InvalidArgument):
            # The invalid vectors ask for more than 255 * HashLen bytes.
            failures.append(f"tcId {tc} ({result}, size {test['size']}): got {describe(got)}")
    assert failures == []
    assert executed == HKDF_SHA256_COUNT


def test_wycheproof_hmac_sha256() -> None:
    data = load("hmac_sha256_test.json", HMAC_SHA256_COUNT)
    failures: list[str] = []
    executed = 0
    for group, test in vectors(data):
        executed += 1
        tc, result = test["tcId"], test["result"]
        # Tags may be truncated (tagSize 128): compare the full tag's prefix.
        tag_bytes = group["tagSize"] // 8
        computed = primitives.hmac_sha256(h(test["key"]), h(test["msg"]))[:tag_bytes]
        matches = primitives.constant_time_equal(computed, h(test["tag"]))
        if matches != (result == "valid"):
            failures.append(f"tcId {tc} ({result}): computed {computed.hex()}")
    assert failures == []
    assert executed == HMAC_SHA256_COUNT


# --- ML-KEM-768 -------------------------------------------------------------------------

MLKEM768_DECAPS_COUNT = 193
MLKEM768_ENCAPS_COUNT = 265


def test_wycheproof_mlkem768_decapsulation() -> None:
    data = load("mlkem_768_test.json", MLKEM768_DECAPS_COUNT)
    failures: list[str] = []
    executed = 0
    for _, test in vectors(data):
        executed += 1
        tc, result = test["tcId"], test["result"]
        seed, ciphertext = h(test["seed"]), h(test["c"])
        ek = h(test.get("ek", ""))
        if ek:  # every valid vector has one; so do the invalid-ciphertext ones
            public = outcome(primitives.mlkem768_public_from_seed, seed)
            if public != ek:
                failures.append(f"tcId {tc}: public key from seed gave {describe(public)}")
        got = outcome(primitives.mlkem768_decapsulate, seed, ciphertext)
        if result == "valid":
            if got != h(test["K"]):
                failures.append(f"tcId {tc} (valid): got {describe(got)}")
            continue
        # The invalid vectors have a seed of the wrong length ("Private key too short /
        # long") or a ciphertext of the wrong length ("Ciphertext too short / long").
        if len(seed) != primitives.MLKEM768_SEED_SIZE:
            expected: type[E2EEError] = InvalidArgument
        elif len(ciphertext) != primitives.MLKEM768_CIPHERTEXT_SIZE:
            expected = InvalidKey
        else:
            failures.append(f"tcId {tc} (invalid): well-sized inputs, nothing to refuse")
            continue
        if not isinstance(got, expected):
            failures.append(f"tcId {tc} (invalid): expected {expected.__name__}, {describe(got)}")
    assert failures == []
    assert executed == MLKEM768_DECAPS_COUNT


def test_wycheproof_mlkem768_encapsulation() -> None:
    """Encapsulation-key checks of mlkem_768_encaps_test.json.

    Invalid keys (wrong length, coefficients not reduced mod q) must be refused by
    ``mlkem768_validate_public`` and ``mlkem768_encapsulate`` with InvalidKey; valid
    keys load and ``mlkem768_encapsulate`` to them gives a 1088-byte ciphertext and a
    32-byte secret.

    deterministic encapsulation (m -> c, K) is not covered: cryptography exposes no
    deterministic encapsulate
    """
    data = load("mlkem_768_encaps_test.json", MLKEM768_ENCAPS_COUNT)
    failures: list[str] = []
    executed = 0
    for _, test in vectors(data):
        executed += 1
        tc, result = test["tcId"], test["result"]
        ek = h(test["ek"])
        checked = outcome(primitives.mlkem768_validate_public, ek)
        encapsulated = outcome(primitives.mlkem768_encapsulate, ek)
        if result == "valid":
            if checked != ek:
                failures.append(f"tcId {tc} (valid): validation gave {describe(checked)}")
            if not (
                isinstance(encapsulated, tuple)
                and len(encapsulated[0]) == primitives.MLKEM768_SHARED_SECRET_SIZE
                and len(encapsulated[1]) == primitives.MLKEM768_CIPHERTEXT_SIZE
            ):
                failures.append(f"tcId {tc} (valid): encapsulate gave {describe(encapsulated)}")
        else:
            for what, got in (("validate", checked), ("encapsulate", encapsulated)):
                if not isinstance(got, InvalidKey):
                    failures.append(f"tcId {tc} (invalid): {what} gave {describe(got)}")
    assert failures == []
    assert executed == MLKEM768_ENCAPS_COUNT
