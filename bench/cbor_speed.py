"""Micro-benchmark of e2ee's strict canonical CBOR codec (e2ee/cbor.py).

``python -m bench.cbor_speed [--rounds N]`` times, on typical relay frames (built
with e2ee/relay_frames.py, a 150-byte ciphertext as the relay benchmark sends) and
on a signed device list of three devices:

- **before**: the pure-Python strict decoder and encoder (``cbor._decode_strict``,
  ``cbor._encode_strict``), which were the whole codec before the native fast path;
- **after**: the public ``cbor.decode`` / ``cbor.encode`` (the guarded ``cbor2``
  fast path, falling back to the strict codec);
- **cbor2**: bare ``cbor2.loads`` / ``cbor2.dumps(canonical=True)`` on the same
  bytes and values, the floor (no strictness at all).

Each figure is the median over rounds of the time per operation in microseconds
(the process's CPU time, garbage collector off during a loop, as ``timeit`` does).
Before timing, every row checks that before and after give the same result.
"""

from __future__ import annotations

import argparse
import gc
import importlib.metadata
import random
import statistics
import time
from collections.abc import Callable
from typing import Final, TypeAlias

import cbor2

from e2ee import cbor
from e2ee.device_list import DeviceEntry, DeviceList, SignedDeviceList
from e2ee.keys import DHKeyPair, SigningKeyPair
from e2ee.limits import MAX_CBOR_DEPTH
from e2ee.relay_frames import Accepted, Ack, Deliver, Send

__all__ = ["main", "samples"]

CIPHERTEXT_SIZE: Final = 150
"""The ciphertext size of the relay benchmark's frames (bench/loadgen.py)."""
TARGET_NS: Final = 20_000_000
"""Each timed loop runs about this long (20 ms)."""
ISSUED_AT_MS: Final = 1_700_000_000_000


def samples() -> dict[str, bytes]:
    """The encoded inputs, by name (seeded, so every run times the same bytes)."""
    rng = random.Random(7).randbytes
    ct = rng(CIPHERTEXT_SIZE)
    master = SigningKeyPair.generate(rng)
    devices = tuple(
        DeviceEntry(
            100 + i,
            SigningKeyPair.generate(rng).public_key,
            DHKeyPair.generate(rng).public_key,
            i == 0,
            ISSUED_AT_MS + i,
        )
        for i in range(3)
    )
    statement = DeviceList("alice", master.public_key, 3, ISSUED_AT_MS, rng(32), devices)
    return {
        "Send (1 device)": Send(rng(16), (("bob", ((0x1234_5678, ct),)),)).to_bytes(),
        "Send (3 devices, 2 users)": Send(
            rng(16), (("bob", ((1, ct), (2, ct))), ("alice", ((3, ct),)))
        ).to_bytes(),
        "Ack (4 seqs)": Ack((101, 102, 103, 104)).to_bytes(),
        "Deliver": Deliver(1234, "alice", 0x1234_5678, ISSUED_AT_MS, ct).to_bytes(),
        "Accepted": Accepted(rng(16), ISSUED_AT_MS).to_bytes(),
        "device list (3 devices)": SignedDeviceList.sign(statement, master).to_bytes(),
    }


def _per_op_us(op: Callable[[], object], rounds: int) -> float:
    """Median over ``rounds`` of the CPU time per call of ``op``, in microseconds."""
    start = time.process_time_ns()
    op()
    once = max(time.process_time_ns() - start, 1)
    loops = max(10, TARGET_NS // once)
    figures = []
    for _ in range(rounds):
        gc.collect()
        gc.disable()
        try:
            start = time.process_time_ns()
            for _ in range(loops):
                op()
            figures.append((time.process_time_ns() - start) / loops / 1000)
        finally:
            gc.enable()
    return statistics.median(figures)


Op: TypeAlias = Callable[[], object]


def _decode_ops(data: bytes) -> tuple[Op, Op, Op]:
    return (
        lambda: cbor._decode_strict(data, MAX_CBOR_DEPTH),
        lambda: cbor.decode(data),
        lambda: cbor2.loads(data),
    )


def _encode_ops(value: cbor.Value) -> tuple[Op, Op, Op]:
    return (
        lambda: cbor._encode_strict(value),
        lambda: cbor.encode(value),
        lambda: cbor2.dumps(value, canonical=True),
    )


def _same(a: object, b: object) -> bool:
    """Equality that also compares types (``True == 1`` in Python)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return a == b


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=7, help="timed rounds per figure")
    args = parser.parse_args(argv)

    print(f"cbor2 {importlib.metadata.version('cbor2')}")
    head = f"{'':28} {'bytes':>6} | {'before':>8} {'after':>8} {'speedup':>8} {'cbor2':>8}"
    for direction in ("decode", "encode"):
        print(f"\n{direction} (us per operation)\n{head}")
        for name, data in samples().items():
            value = cbor._decode_strict(data, MAX_CBOR_DEPTH)
            ops = _decode_ops(data) if direction == "decode" else _encode_ops(value)
            if direction == "decode" and not _same(cbor.decode(data), value):
                raise SystemExit(f"{name}: decode differs from the strict decoder")
            if direction == "encode" and cbor.encode(value) != data:
                raise SystemExit(f"{name}: encode does not give the input bytes back")
            before, after, floor = ops
            b, a, f = (_per_op_us(op, args.rounds) for op in (before, after, floor))
            print(f"{name:28} {len(data):>6} | {b:8.2f} {a:8.2f} {b / a:7.1f}x {f:8.2f}")


if __name__ == "__main__":
    main()
