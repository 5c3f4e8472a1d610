"""QR codes (issue 6 "QR"): a share link, a safety number and a link-device offer
rendered as PNG and as terminal text, each decoded back by an independent reader
(zxing-cpp) to exactly the payload. The terminal text is parsed back into modules by
the documented character mapping and polarity, drawn as an image and decoded, so the
text itself is proven scannable. Every decode refuses inverted codes
(``try_invert=False``): a code of the wrong polarity fails, as it would on a phone
that does not try both."""

from __future__ import annotations

import base64
import contextlib
import io
import os
import secrets
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
import zxingcpp
from PIL import Image

from client_sdk._client.identity import ContactSafetyNumber
from client_sdk.client import Client
from client_sdk.errors import UsageError
from client_sdk.qr import (
    MAX_QR_PAYLOAD,
    QUIET_ZONE,
    QRCode,
    QRPayloadTooLarge,
    link_offer_qr,
    qr_png,
    qr_terminal,
    safety_number_qr,
    share_link_qr,
    write_qr_png,
)
from e2ee.keys import SigningKeyPair
from e2ee.link import LinkCode
from e2ee.safety_numbers import SafetyNumber
from tests.server.relay_client import ORIGIN, RunningRelay, relay_settings, running_relay

UPPER, LOWER, FULL = "\u2580", "\u2584", "\u2588"


def _share_link() -> str:
    """A share link as DESIGN 4.7 shapes it: origin, ``/s/`` + 16-byte id, ``#`` +
    32-byte key, both base64url without padding."""
    link_id = base64.urlsafe_b64encode(secrets.token_bytes(16)).rstrip(b"=").decode()
    key = base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b"=").decode()
    return f"https://relay.example.com/s/{link_id}#{key}"


def _safety_number_payload() -> bytes:
    """The bytes ``ContactSafetyNumber.qr_payload`` carries (CBOR, two fingerprints)."""
    ours, theirs = SigningKeyPair.generate(), SigningKeyPair.generate()
    return SafetyNumber.compute("alice", ours.public_key, "bob", theirs.public_key).qr_payload()


def _payloads() -> list[str | bytes]:
    return [
        "https://relay.example.com/s/AAAAAAAAAAAAAAAAAAAAAA#BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB",
        _share_link(),
        _safety_number_payload(),
        LinkCode.generate().qr_payload,
        bytes(range(256)),  # every byte value, NUL and 0xFF included
        b"\x00",
        "Grüße, 日本 ✓",  # non-ASCII text as UTF-8
    ]


PAYLOADS = _payloads()
IDS = ["fixed-link", "random-link", "safety-number", "link-code", "all-bytes", "nul", "utf8"]


# --- an independent reader -----------------------------------------------------------------


def _read(image: Image.Image) -> list[zxingcpp.Barcode]:
    return zxingcpp.read_barcodes(
        image, formats=zxingcpp.BarcodeFormats(zxingcpp.BarcodeFormat.QRCode), try_invert=False
    )


def _decode(image: Image.Image) -> zxingcpp.Barcode:
    found = _read(image)
    assert len(found) == 1, f"expected one QR code, found {len(found)}"
    return found[0]


def _assert_decodes_to(image: Image.Image, payload: str | bytes) -> None:
    barcode = _decode(image)
    if isinstance(payload, bytes):
        assert barcode.bytes == payload
    else:
        assert barcode.text == payload
        assert barcode.bytes == payload.encode()


def _png_image(png: bytes) -> Image.Image:
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    image = Image.open(io.BytesIO(png))
    image.load()
    return image


def _matrix_image(dark: list[list[bool]], scale: int = 6) -> Image.Image:
    """Draw a module matrix: dark modules black, light ones white."""
    height, width = len(dark), len(dark[0])
    image = Image.new("L", (width, height), 255)
    image.putdata([0 if module else 255 for row in dark for module in row])
    return image.resize((width * scale, height * scale), Image.Resampling.NEAREST)


def _parse_terminal(text: str, *, compact: bool, light_background: bool) -> list[list[bool]]:
    """The module matrix (``True`` = dark) the text shows: characters draw in the
    foreground colour, which is light on a dark terminal and dark on a light one."""
    lines = text.split("\n")
    assert len({len(line) for line in lines}) == 1, "ragged lines"
    drawn: list[list[bool]] = []
    for line in lines:
        if compact:
            halves = {" ": (False, False), UPPER: (True, False), LOWER: (False, True)}
            halves[FULL] = (True, True)
            pairs = [halves[char] for char in line]  # KeyError on any other character
            drawn.append([top for top, _ in pairs])
            drawn.append([bottom for _, bottom in pairs])
        else:
            cells = [line[i : i + 2] for i in range(0, len(line), 2)]
            assert set(cells) <= {FULL * 2, "  "}
            drawn.append([cell == FULL * 2 for cell in cells])
    return [[ink == light_background for ink in row] for row in drawn]


def _assert_quiet_zone(dark: list[list[bool]]) -> None:
    """At least QUIET_ZONE light modules on every side."""
    for row in dark[:QUIET_ZONE] + dark[-QUIET_ZONE:]:
        assert not any(row)
    for row in dark:
        assert not any(row[:QUIET_ZONE]) and not any(row[-QUIET_ZONE:])


# --- PNG ----------------------------------------------------------------------------------


@pytest.mark.parametrize("payload", PAYLOADS, ids=IDS)
def test_png_decodes_to_the_payload(payload: str | bytes) -> None:
    code = QRCode(payload)
    image = _png_image(code.png(scale=4))
    assert image.size == ((code.size + 2 * QUIET_ZONE) * 4,) * 2
    assert code.size == 4 * code.version + 17
    _assert_decodes_to(image, payload)
    _assert_decodes_to(_png_image(qr_png(payload)), payload)


def test_png_is_dark_on_light_with_the_quiet_zone() -> None:
    code = QRCode(_share_link())
    scale, border = 3, 6
    image = _png_image(code.png(scale=scale, border=border)).convert("L")
    side = (code.size + 2 * border) * scale
    assert image.size == (side, side)
    band = border * scale
    pixels = image.load()
    assert pixels is not None
    for a in range(side):
        for b in range(band):
            for x, y in ((a, b), (a, side - 1 - b), (b, a), (side - 1 - b, a)):
                assert pixels[x, y] == 255
    # the top-left finder pattern's outer ring starts just inside the quiet zone
    assert pixels[band, band] == 0
    # the same image inverted is not read (the reader does not try inverted codes)
    assert _read(Image.eval(image, lambda v: 255 - v)) == []


# --- terminal -----------------------------------------------------------------------------


@pytest.mark.parametrize("light_background", [False, True], ids=["dark-terminal", "light-terminal"])
@pytest.mark.parametrize("compact", [True, False], ids=["compact", "wide"])
@pytest.mark.parametrize("payload", PAYLOADS, ids=IDS)
def test_terminal_text_decodes_to_the_payload(
    payload: str | bytes, compact: bool, light_background: bool
) -> None:
    code = QRCode(payload)
    text = code.terminal(compact=compact, light_background=light_background)
    assert text == qr_terminal(payload, compact=compact, light_background=light_background)
    assert not text.endswith("\n") and "\x1b" not in text
    side = code.size + 2 * QUIET_ZONE
    lines = text.split("\n")
    if compact:
        assert len(lines) == (side + 1) // 2 and len(lines[0]) == side
    else:
        assert len(lines) == side and len(lines[0]) == 2 * side
    dark = _parse_terminal(text, compact=compact, light_background=light_background)
    _assert_quiet_zone(dark)
    _assert_decodes_to(_matrix_image(dark), payload)


@pytest.mark.parametrize("compact", [True, False], ids=["compact", "wide"])
def test_terminal_polarity_matters(compact: bool) -> None:
    """Read with the wrong polarity (the default text shown on a light terminal) the
    code is inverted and the reader finds nothing: the decode above can fail."""
    payload = LinkCode.generate().qr_payload
    text = qr_terminal(payload, compact=compact)
    assert "\n" + FULL * QUIET_ZONE in text  # the light quiet zone is drawn
    wrong = _parse_terminal(text, compact=compact, light_background=True)
    assert _read(_matrix_image(wrong)) == []
    right = _parse_terminal(text, compact=compact, light_background=False)
    _assert_decodes_to(_matrix_image(right), payload)


def test_default_terminal_is_compact_for_a_dark_terminal() -> None:
    payload = _share_link()
    assert qr_terminal(payload) == QRCode(payload).terminal(compact=True, light_background=False)
    # a share link fits an 80-column terminal in compact form
    assert max(len(line) for line in qr_terminal(payload).split("\n")) <= 80


# --- the three kinds ----------------------------------------------------------------------


def test_share_link_qr() -> None:
    url = _share_link()
    code = share_link_qr(url)
    _assert_decodes_to(_png_image(code.png()), url)
    dark = _parse_terminal(code.terminal(), compact=True, light_background=False)
    _assert_decodes_to(_matrix_image(dark), url)


def test_safety_number_qr_from_a_built_number() -> None:
    payload = _safety_number_payload()
    number = ContactSafetyNumber("bob", "0" * 60, payload, False)
    code = safety_number_qr(number)
    _assert_decodes_to(_png_image(code.png()), payload)
    dark = _parse_terminal(code.terminal(compact=False), compact=False, light_background=False)
    _assert_decodes_to(_matrix_image(dark), payload)


@pytest_asyncio.fixture
async def relay(tmp_path: Path) -> AsyncIterator[RunningRelay]:
    settings = relay_settings(tmp_path, database_url=f"sqlite:///{tmp_path / 'relay.db'}")
    async with running_relay(settings) as running:
        yield running


@pytest.mark.asyncio
async def test_real_safety_number_and_link_offer_scan_back(
    relay: RunningRelay, tmp_path: Path
) -> None:
    """Real SDK objects: the safety number bob shows, scanned from its PNG and its
    terminal text, verifies on alice's side; alice's link offer scans back to a code
    that parses as the same link code."""
    url = f"ws://127.0.0.1:{relay.port}"
    alice_id, bob_id = f"alice-{secrets.token_hex(4)}", f"bob-{secrets.token_hex(4)}"

    def open_client(name: str) -> contextlib.AbstractAsyncContextManager[Client]:
        return Client.open(
            url, store=tmp_path / f"{name}.db", key=secrets.token_bytes(32), origin=ORIGIN
        )

    async with open_client("alice") as alice, open_client("bob") as bob:
        await alice.register(alice_id)
        await bob.register(bob_id)
        number = await bob.safety_number(alice_id)
        code = safety_number_qr(number)
        scanned = _decode(_png_image(code.png())).bytes
        assert scanned == number.qr_payload
        dark = _parse_terminal(code.terminal(), compact=True, light_background=False)
        assert _decode(_matrix_image(dark)).bytes == number.qr_payload
        assert await alice.verify(bob_id, scanned) is True

        offer = await alice.link_device()
        code = link_offer_qr(offer)
        scanned = _decode(_png_image(code.png())).bytes
        assert scanned == offer.qr_payload
        assert LinkCode.from_qr(scanned) == LinkCode.from_text(offer.code)
        dark = _parse_terminal(code.terminal(), compact=True, light_background=False)
        assert _decode(_matrix_image(dark)).bytes == offer.qr_payload
        assert offer.code not in repr(code)


def test_kind_helpers_check_their_argument() -> None:
    with pytest.raises(UsageError):
        safety_number_qr(b"\xa3\x00\x01")  # type: ignore[arg-type]
    with pytest.raises(UsageError):
        link_offer_qr(LinkCode.generate().qr_payload)  # type: ignore[arg-type]
    for bad in (
        "",
        "relay.example.com/s/x#y",
        "ftp://relay.example.com/s/x",
        "https://",
        "http://[::1",
    ):
        with pytest.raises(UsageError):
            share_link_qr(bad)
    with pytest.raises(UsageError):
        share_link_qr(b"https://relay.example.com/s/x#y")  # type: ignore[arg-type]


# --- limits and bad input -----------------------------------------------------------------


def test_largest_payload_fits_and_one_more_byte_is_refused() -> None:
    largest = secrets.token_bytes(MAX_QR_PAYLOAD)
    code = QRCode(largest)
    assert code.version == 40
    _assert_decodes_to(_png_image(code.png(scale=3)), largest)
    for payload in (
        largest + b"\x00",
        "x" * (MAX_QR_PAYLOAD + 1),
        "é" * ((MAX_QR_PAYLOAD + 1) // 2),  # 2332 bytes as UTF-8
        b"\x00" * 10_000_000,
    ):
        with pytest.raises(QRPayloadTooLarge) as info:
            QRCode(payload)
        size = len(payload.encode() if isinstance(payload, str) else payload)
        assert info.value.size == size and info.value.limit == MAX_QR_PAYLOAD
        assert isinstance(info.value, UsageError)
    with pytest.raises(QRPayloadTooLarge):
        qr_png(largest + b"\x00")
    with pytest.raises(QRPayloadTooLarge):
        qr_terminal(largest + b"\x00")


def test_too_large_error_holds_no_payload() -> None:
    payload = b"SECRET-" * 400
    with pytest.raises(QRPayloadTooLarge) as info:
        QRCode(payload)
    assert b"SECRET" not in str(info.value).encode() and "SECRET" not in repr(info.value)


@pytest.mark.parametrize(
    "payload", [b"", "", bytearray(b"x"), memoryview(b"x"), 42, None, "\udc80"]
)
def test_bad_payload_is_a_usage_error(payload: object) -> None:
    with pytest.raises(UsageError):
        QRCode(payload)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("scale", "border"),
    [(0, 4), (33, 4), (True, 4), (2.0, 4), (8, 3), (8, 17), (8, False), (8, "4")],
)
def test_bad_scale_or_border_is_a_usage_error(scale: object, border: object) -> None:
    with pytest.raises(UsageError):
        qr_png(b"x", scale=scale, border=border)  # type: ignore[arg-type]


def test_bad_terminal_flag_is_a_usage_error() -> None:
    with pytest.raises(UsageError):
        qr_terminal(b"x", compact=1)  # type: ignore[arg-type]
    with pytest.raises(UsageError):
        qr_terminal(b"x", light_background=None)  # type: ignore[arg-type]


def test_repr_shows_no_payload() -> None:
    code = LinkCode.generate()
    rendered = repr(QRCode(code.qr_payload))
    assert rendered.startswith("QRCode(version=") and code.text not in rendered
    url = _share_link()
    assert url.split("#")[1] not in repr(share_link_qr(url))


# --- the atomic write ---------------------------------------------------------------------


def test_write_png_is_atomic_and_private(tmp_path: Path) -> None:
    path = tmp_path / "offer.png"
    path.write_bytes(b"old contents")
    payload = LinkCode.generate().qr_payload
    write_qr_png(payload, path)
    assert os.listdir(tmp_path) == ["offer.png"]  # no temporary file left
    assert path.read_bytes() == qr_png(payload)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    _assert_decodes_to(_png_image(path.read_bytes()), payload)
    # a str path and the method do the same
    other = tmp_path / "link.png"
    url = _share_link()
    share_link_qr(url).write_png(str(other), scale=2)
    _assert_decodes_to(_png_image(other.read_bytes()), url)


def test_failed_write_leaves_the_old_file_and_no_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "offer.png"
    path.write_bytes(b"old contents")
    seen: list[str] = []

    def failing_replace(src: str, dst: object) -> None:
        seen.append(src)
        assert Path(src).parent == tmp_path and Path(src).read_bytes().startswith(b"\x89PNG")
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        write_qr_png(b"payload", path)
    assert len(seen) == 1  # the temporary file was beside the target and complete
    assert path.read_bytes() == b"old contents"
    assert os.listdir(tmp_path) == ["offer.png"]


def test_refused_write_creates_nothing(tmp_path: Path) -> None:
    path = tmp_path / "big.png"
    with pytest.raises(QRPayloadTooLarge):
        write_qr_png(b"\x00" * (MAX_QR_PAYLOAD + 1), path)
    with pytest.raises(UsageError):
        write_qr_png(b"x", path, scale=0)
    assert os.listdir(tmp_path) == []
    with pytest.raises(OSError):
        write_qr_png(b"x", tmp_path / "missing" / "code.png")
