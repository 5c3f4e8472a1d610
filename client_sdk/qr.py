"""QR codes for what a user carries from one screen to another (issue 6): a share link,
a safety number's QR payload, a link-device offer. Rendered as PNG (by segno) or as
text for a terminal.

Every payload is encoded in byte mode, one segment, no ECI header: ``bytes`` as they
are (``ContactSafetyNumber.qr_payload`` and ``LinkOffer.qr_payload`` are CBOR), ``str``
as UTF-8. A reader hands the bytes back exactly; a text reader shows the text (for
non-ASCII text readers recognise UTF-8 by its form: segno leaves ECI off by default
because many readers do not support it, and so does this module).

Error correction is level M (about 15 % of the codewords recoverable), the usual level
for codes shown on a screen: glare, moiré and a camera at an angle damage a few modules,
a screen is never torn or stained (level H's 30 % would only make the code denser and
harder to focus on). segno raises the level further when the data fit in the same
version anyway (its ``boost_error``), which costs nothing in size.

A link offer's payload holds the code's secret and a share link holds its key: a
:class:`QRCode` keeps only the module matrix, and its ``repr`` shows the version alone.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit

import segno

from ._client.identity import ContactSafetyNumber
from ._client.linking import LinkOffer
from ._files import atomic_write
from .errors import UsageError

__all__ = [
    "DEFAULT_SCALE",
    "ERROR_LEVEL",
    "MAX_BORDER",
    "MAX_QR_PAYLOAD",
    "MAX_SCALE",
    "QUIET_ZONE",
    "QRCode",
    "QRPayloadTooLarge",
    "link_offer_qr",
    "qr_png",
    "qr_terminal",
    "safety_number_qr",
    "share_link_qr",
    "write_qr_png",
]

ERROR_LEVEL: Final = "M"
"""Error correction level (see the module docstring for why M)."""
MAX_QR_PAYLOAD: Final = 2331
"""Bytes a QR code holds at most in byte mode at level M (version 40, ISO/IEC 18004
table 7); checked before encoding so an oversized payload costs no work."""
QUIET_ZONE: Final = 4
"""Light modules around the symbol that ISO/IEC 18004 requires for a QR code; the PNG
border may not be smaller, the terminal rendering always has exactly this."""
DEFAULT_SCALE: Final = 8
"""Pixels per module of a PNG: a link offer (version 4) is 328 pixels square, a share
link (version 6) 392."""
MAX_SCALE: Final = 32
"""Pixels per module at most: a version 40 code is then about 6,000 pixels square, more
than any screen or print needs; bounds the image a caller can ask for."""
MAX_BORDER: Final = 16
"""Quiet zone modules at most in a PNG (four times the required width)."""

# Half-block characters of the compact rendering, by (top module drawn, bottom module drawn).
_HALF_BLOCKS: Final = {
    (False, False): " ",
    (True, False): "\u2580",  # ▀ upper half block
    (False, True): "\u2584",  # ▄ lower half block
    (True, True): "\u2588",  # █ full block
}
_FULL_BLOCK: Final = "\u2588"


class QRPayloadTooLarge(UsageError):
    """The payload does not fit in a QR code (at most :data:`MAX_QR_PAYLOAD` bytes in
    byte mode at level M). Carries only sizes, never the payload.

    Attributes:
        size: the payload's size in bytes (UTF-8 for text).
        limit: the most a QR code holds.
    """

    def __init__(self, size: int, limit: int = MAX_QR_PAYLOAD) -> None:
        super().__init__(f"a {size}-byte payload does not fit in a QR code (at most {limit})")
        self.size = size
        self.limit = limit


class QRCode:
    """One encoded QR code, ready to render as PNG or terminal text.

    Encoding happens once, on construction: a payload that cannot be a QR code fails
    there. Only the module matrix is kept (it holds the payload, as any rendering does);
    the ``repr`` shows the version alone.
    """

    __slots__ = ("_qr",)

    def __init__(self, payload: str | bytes) -> None:
        """Encode ``payload`` (``bytes`` as they are, ``str`` as UTF-8), byte mode,
        level M or higher, the smallest version that fits.

        Raises:
            UsageError: ``payload`` is neither ``str`` nor ``bytes``, is empty, or is
                text that cannot be UTF-8 (a lone surrogate).
            QRPayloadTooLarge: it does not fit in a QR code.
        """
        data = _payload_bytes(payload)
        if len(data) > MAX_QR_PAYLOAD:
            raise QRPayloadTooLarge(len(data))
        try:
            self._qr = segno.make_qr(data, error=ERROR_LEVEL, mode="byte", eci=False)
        except segno.DataOverflowError:
            raise QRPayloadTooLarge(len(data)) from None

    @property
    def version(self) -> int:
        """The QR version (1 to 40)."""
        return (self.size - 17) // 4

    @property
    def size(self) -> int:
        """Modules per side, without the quiet zone (``4 * version + 17``)."""
        return len(self._qr.matrix)

    def png(self, *, scale: int = DEFAULT_SCALE, border: int = QUIET_ZONE) -> bytes:
        """The code as a PNG: black modules on white, ``scale`` pixels per module, a
        quiet zone of ``border`` modules, ``(size + 2 * border) * scale`` pixels square.

        Raises:
            UsageError: ``scale`` not an int in 1..:data:`MAX_SCALE`, or ``border`` not
                an int in :data:`QUIET_ZONE`..:data:`MAX_BORDER`.
        """
        _check_int("scale", scale, 1, MAX_SCALE)
        _check_int("border", border, QUIET_ZONE, MAX_BORDER)
        out = io.BytesIO()
        self._qr.save(out, kind="png", scale=scale, border=border, dark="#000", light="#fff")
        return out.getvalue()

    def terminal(self, *, compact: bool = True, light_background: bool = False) -> str:
        """The code as lines of text for a terminal with a monospace font, including
        the quiet zone of :data:`QUIET_ZONE` modules; lines joined by ``"\\n"``, no
        final newline, no escape sequences (so it can be logged to a file or pasted).

        Polarity: a reader wants dark modules on a light ground, and a terminal can
        only draw in its foreground colour over its background colour. By default the
        text assumes the usual terminal theme, light text on a dark background: the
        *light* modules (quiet zone included) are drawn with block characters and the
        dark modules are left blank, so the code appears dark on light as it must
        (some phone readers do not read inverted codes at all). On a terminal with
        dark text on a light background pass ``light_background=True``: the dark
        modules are drawn instead. Colour escape sequences would fix the polarity on
        any theme but show as garbage wherever the text is not a terminal.

        ``compact`` (the default) uses half-block characters, two module rows per text
        row and one column per module, so a module is about square in a usual terminal
        font and a share link (version 6) takes 49 columns. Without it each module is
        two columns of one row: twice as large, more robust on a terminal with line
        spacing. In compact mode a symbol's odd number of rows is completed with one
        more quiet-zone row.

        Raises:
            UsageError: ``compact`` or ``light_background`` is not a ``bool``.
        """
        if not isinstance(compact, bool) or not isinstance(light_background, bool):
            raise UsageError("compact and light_background are bool")
        # drawn[r][c]: whether the module at (r, c) gets ink (foreground colour).
        drawn = [
            [bool(dark) == light_background for dark in row]
            for row in self._qr.matrix_iter(scale=1, border=QUIET_ZONE)
        ]
        if not compact:
            return "\n".join(
                "".join(_FULL_BLOCK * 2 if ink else "  " for ink in row) for row in drawn
            )
        if len(drawn) % 2:
            drawn.append([not light_background] * len(drawn[0]))  # one more light row
        return "\n".join(
            "".join(_HALF_BLOCKS[top, bottom] for top, bottom in zip(upper, lower, strict=True))
            for upper, lower in zip(drawn[::2], drawn[1::2], strict=True)
        )

    def write_png(
        self, path: str | os.PathLike[str], *, scale: int = DEFAULT_SCALE, border: int = QUIET_ZONE
    ) -> None:
        """Write :meth:`png` to ``path`` atomically: a temporary file in the same
        directory, flushed to disk, then renamed over ``path``; on any failure the
        temporary file is removed and ``path`` is untouched. The file is readable by
        its owner only (mode 0600: a link offer's or share link's code is a secret).

        Raises:
            UsageError: a bad ``scale`` or ``border`` (as :meth:`png`).
            OSError: the directory cannot be written.
        """
        atomic_write(Path(path), self.png(scale=scale, border=border))

    def __repr__(self) -> str:
        return f"QRCode(version={self.version})"


def qr_png(payload: str | bytes, *, scale: int = DEFAULT_SCALE, border: int = QUIET_ZONE) -> bytes:
    """``payload`` as a QR code in a PNG (:meth:`QRCode.png`).

    Raises:
        UsageError: a bad payload, ``scale`` or ``border``.
        QRPayloadTooLarge: the payload does not fit in a QR code.
    """
    return QRCode(payload).png(scale=scale, border=border)


def qr_terminal(
    payload: str | bytes, *, compact: bool = True, light_background: bool = False
) -> str:
    """``payload`` as a QR code in terminal text (:meth:`QRCode.terminal`: by default
    light modules drawn, for light text on a dark background).

    Raises:
        UsageError: a bad payload or flag.
        QRPayloadTooLarge: the payload does not fit in a QR code.
    """
    return QRCode(payload).terminal(compact=compact, light_background=light_background)


def write_qr_png(
    payload: str | bytes,
    path: str | os.PathLike[str],
    *,
    scale: int = DEFAULT_SCALE,
    border: int = QUIET_ZONE,
) -> None:
    """Write ``payload`` as a QR code PNG to ``path`` atomically
    (:meth:`QRCode.write_png`).

    Raises:
        UsageError: a bad payload, ``scale`` or ``border``.
        QRPayloadTooLarge: the payload does not fit in a QR code.
        OSError: the directory cannot be written.
    """
    QRCode(payload).write_png(path, scale=scale, border=border)


def share_link_qr(url: str) -> QRCode:
    """The QR code of a share link (``https://relay/s/<id>#<key>``), as text.

    Raises:
        UsageError: ``url`` is not an ``http``/``https`` URL with a host.
        QRPayloadTooLarge: it does not fit in a QR code.
    """
    if not isinstance(url, str):
        raise UsageError("a share link is a str")
    try:
        parts = urlsplit(url)
    except ValueError:
        raise UsageError("a share link is an http or https URL") from None
    if parts.scheme not in ("https", "http") or not parts.netloc:
        raise UsageError("a share link is an http or https URL")
    return QRCode(url)


def safety_number_qr(number: ContactSafetyNumber) -> QRCode:
    """The QR code of a safety number (``Client.safety_number``): its
    :attr:`~ContactSafetyNumber.qr_payload`, for the contact to scan and pass to their
    own ``verify``.

    Raises:
        UsageError: ``number`` is not a :class:`ContactSafetyNumber`.
    """
    if not isinstance(number, ContactSafetyNumber):
        raise UsageError("safety_number_qr takes a ContactSafetyNumber")
    return QRCode(number.qr_payload)


def link_offer_qr(offer: LinkOffer) -> QRCode:
    """The QR code of a link-device offer (``Client.link_device``): its
    :attr:`~LinkOffer.qr_payload`, for the new device to scan and pass to
    ``Client.open(link_code=...)``. It holds the code's secret: show it only to the
    user.

    Raises:
        UsageError: ``offer`` is not a :class:`LinkOffer`.
    """
    if not isinstance(offer, LinkOffer):
        raise UsageError("link_offer_qr takes a LinkOffer")
    return QRCode(offer.qr_payload)


def _payload_bytes(payload: str | bytes) -> bytes:
    if isinstance(payload, bytes):
        data = payload
    elif isinstance(payload, str):
        try:
            data = payload.encode("utf-8")
        except UnicodeEncodeError:
            raise UsageError("a text payload must be encodable as UTF-8") from None
    else:
        raise UsageError("a QR payload is str or bytes")
    if not data:
        raise UsageError("a QR payload is not empty")
    return data


def _check_int(name: str, value: int, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise UsageError(f"{name} is an int from {low} to {high}")
