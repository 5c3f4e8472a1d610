"""The canary scanner (issues 3 and 5; CONVENTIONS 13): finds canary plaintexts in bytes as
they are, as hex (lower and upper case, and
spaced as in hexdumps) and as base64 (standard and URL-safe, at each
of the three alignments a canary can have inside a base64-encoded string).

A canary embedded at byte offset ``p`` of some data that is then base64-encoded
appears in the encoding only from its first full 3-byte group on: with ``p % 3 ==
0`` that is ``b64(c)``, with ``p % 3 == 1`` ``b64(c[2:])``, with ``p % 3 == 2``
``b64(c[1:])`` (each cut to whole groups). Those are the three base64 needles.

Scanning is ``bytes.find`` over a few anchors: every needle of one form is indexed by
its first :data:`ANCHOR` bytes, so canaries that share a prefix (as
:func:`make_canaries` makes them) share an anchor and a scan costs one ``find`` pass
per form, not one per canary.

:func:`prove_detects` is the self-test a scan must pass first: a planted canary, in
every form and alignment, inside random bytes, is found.

:class:`RedisCapture` records Redis traffic for a scan: a ``MONITOR`` connection
(every command the server executes) and a ``PSUBSCRIBE`` on a key prefix (every
message published under it), both raw.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import secrets
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Final
from urllib.parse import urlsplit

__all__ = [
    "ANCHOR",
    "CANARY_PREFIX",
    "CanaryScanner",
    "Hit",
    "RedisCapture",
    "ScannerBlind",
    "encodings",
    "make_canaries",
    "prove_detects",
]

CANARY_PREFIX: Final = b"E2EE-CANARY-"
"""Shared by every canary :func:`make_canaries` makes (fast scans; see above)."""
ANCHOR: Final = 8
"""Bytes of a needle used to find candidates."""


def make_canaries(count: int, tag: str = "") -> list[bytes]:
    """``count`` distinct printable canaries (``E2EE-CANARY-<tag><index>-<random>``,
    48 random hex digits: never found by chance)."""
    return [CANARY_PREFIX + f"{tag}{i:05d}-{secrets.token_hex(24)}".encode() for i in range(count)]


def encodings(canary: bytes) -> dict[str, bytes]:
    """Every form the scanner looks for, by name."""
    forms = {
        "raw": canary,
        "hex": canary.hex().encode(),
        "HEX": canary.hex().upper().encode(),
        "hex-spaced": canary.hex(" ").encode(),  # as hexdumps in debug logs show bytes
    }
    for skip in range(3):
        chunk = canary[skip:]
        chunk = chunk[: len(chunk) // 3 * 3]
        forms[f"base64@{skip}"] = base64.b64encode(chunk)
        forms[f"base64url@{skip}"] = base64.urlsafe_b64encode(chunk)
    return forms


@dataclass(frozen=True, slots=True)
class Hit:
    """One canary found in one source."""

    canary: bytes
    form: str
    source: str
    offset: int


@dataclass
class CanaryScanner:
    """Scans bytes for a set of canaries in every form of :func:`encodings`."""

    canaries: Sequence[bytes]
    _index: dict[bytes, dict[bytes, tuple[bytes, str]]] = field(init=False, repr=False)
    scanned: dict[str, int] = field(default_factory=dict)
    """Bytes scanned per source (for the report)."""

    def __post_init__(self) -> None:
        if len(set(self.canaries)) != len(self.canaries):
            raise ValueError("canaries must be distinct")
        index: dict[bytes, dict[bytes, tuple[bytes, str]]] = defaultdict(dict)
        for canary in self.canaries:
            for form, needle in encodings(canary).items():
                if len(needle) < 2 * ANCHOR:
                    raise ValueError("canary too short to scan for")
                index[needle[:ANCHOR]].setdefault(needle, (canary, form))
        self._index = dict(index)

    @property
    def anchors(self) -> int:
        """Distinct anchors (``find`` passes per scan)."""
        return len(self._index)

    def scan(self, data: bytes, source: str) -> list[Hit]:
        """Every occurrence of every canary in ``data`` (any form)."""
        self.scanned[source] = self.scanned.get(source, 0) + len(data)
        hits: list[Hit] = []
        for anchor, needles in self._index.items():
            lengths = sorted({len(n) for n in needles})
            pos = data.find(anchor)
            while pos >= 0:
                for length in lengths:
                    found = needles.get(data[pos : pos + length])
                    if found is not None:
                        hits.append(Hit(found[0], found[1], source, pos))
                pos = data.find(anchor, pos + 1)
        return hits

    def scan_all(self, sources: Iterable[tuple[str, bytes]]) -> list[Hit]:
        """:meth:`scan` over several named sources."""
        return [hit for name, data in sources for hit in self.scan(data, name)]


class ScannerBlind(AssertionError):
    """The scanner failed its self-test: a scan with it would prove nothing."""


def prove_detects(scanner: CanaryScanner, canary: bytes) -> None:
    """The scanner finds ``canary`` (one of its canaries) planted in random bytes in
    every form, at every alignment inside a base64-encoded string, and finds nothing
    in the same bytes without it.

    Raises:
        ScannerBlind: a form was missed (the scan would pass vacuously) or a false hit
            (an ``AssertionError``, so a test reports it as a failed check).
    """
    noise = secrets.token_bytes(4096)
    if scanner.scan(noise, "noise"):
        raise ScannerBlind("false hit in random bytes")
    forms = encodings(canary)
    for form, needle in forms.items():
        data = noise[:1000] + needle + noise[1000:]
        found = scanner.scan(data, "plant")
        # Forms that coincide (no '+' or '/' in the base64) are reported under one name.
        if not any(h.canary == canary and forms[h.form] == needle for h in found):
            raise ScannerBlind(f"the planted canary was not found as {form}")
    for offset in range(3):
        plain = noise[:offset] + canary + noise[:64]
        for encode in (base64.b64encode, base64.urlsafe_b64encode):
            found = scanner.scan(encode(plain), "plant")
            if not any(h.canary == canary for h in found):
                raise ScannerBlind(f"the planted canary was not found at base64 offset {offset}")
    del scanner.scanned["noise"], scanner.scanned["plant"]


# --- Redis traffic ------------------------------------------------------------------------


def _resp(*parts: bytes) -> bytes:
    out = b"*%d\r\n" % len(parts)
    for part in parts:
        out += b"$%d\r\n%s\r\n" % (len(part), part)
    return out


@dataclass
class RedisCapture:
    """Raw Redis traffic: ``MONITOR`` (every command) and ``PSUBSCRIBE prefix*``."""

    url: str
    prefix: str
    monitor: bytearray = field(default_factory=bytearray)
    published: bytearray = field(default_factory=bytearray)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _writers: list[asyncio.StreamWriter] = field(default_factory=list)

    async def start(self) -> None:
        """Open both connections and wait until Redis confirmed each (bounded)."""
        parts = urlsplit(self.url)
        host, port = parts.hostname or "127.0.0.1", parts.port or 6379
        for command, sink, ready in (
            (_resp(b"MONITOR"), self.monitor, b"+OK\r\n"),
            (_resp(b"PSUBSCRIBE", self.prefix.encode() + b"*"), self.published, b"psubscribe"),
        ):
            reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 10)
            self._writers.append(writer)
            writer.write(command)
            await writer.drain()
            self._tasks.append(asyncio.create_task(self._read(reader, sink)))
            async with asyncio.timeout(10):
                while ready not in sink:
                    await asyncio.sleep(0.01)

    @staticmethod
    async def _read(reader: asyncio.StreamReader, sink: bytearray) -> None:
        while chunk := await reader.read(65536):
            sink += chunk

    async def wait_for(self, needle: bytes, timeout: float = 10.0) -> None:
        """Wait until ``needle`` was captured by both connections (bounded).

        Raises:
            TimeoutError: not within ``timeout``.
        """
        async with asyncio.timeout(timeout):
            while needle not in self.monitor or needle not in self.published:
                await asyncio.sleep(0.01)

    async def stop(self) -> None:
        """Close both connections."""
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
        for writer in self._writers:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
        self._tasks, self._writers = [], []
