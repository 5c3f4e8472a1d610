"""The canary scanner's self-test refuses a scanner that would pass vacuously."""

from __future__ import annotations

import pytest

from client_sdk.testing.canary import CanaryScanner, Hit, ScannerBlind, make_canaries, prove_detects


class _Blind(CanaryScanner):
    """Misses every base64 form (as a scanner with a broken index would)."""

    def scan(self, data: bytes, source: str) -> list[Hit]:
        return [h for h in super().scan(data, source) if not h.form.startswith("base64")]


class _Noisy(CanaryScanner):
    """Reports a hit in anything."""

    def scan(self, data: bytes, source: str) -> list[Hit]:
        return [Hit(self.canaries[0], "raw", source, 0)]


def test_a_working_scanner_passes_and_forgets_its_probes() -> None:
    canaries = make_canaries(3)
    scanner = CanaryScanner(canaries)
    prove_detects(scanner, canaries[1])
    assert scanner.scanned == {}


@pytest.mark.parametrize(("kind", "message"), [(_Blind, "not found"), (_Noisy, "false hit")])
def test_a_blind_or_noisy_scanner_is_refused(kind: type[CanaryScanner], message: str) -> None:
    canaries = make_canaries(2)
    with pytest.raises(ScannerBlind, match=message):
        prove_detects(kind(canaries), canaries[0])
