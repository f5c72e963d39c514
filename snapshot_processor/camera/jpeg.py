"""Check that bytes from a camera are one whole JPEG."""

from __future__ import annotations

import io

from PIL import Image

__all__ = [
    "JPEG_EOI",
    "JPEG_SOI",
    "InvalidJPEGError",
    "check_jpeg",
    "describe_body",
    "jpeg_problem",
]

JPEG_SOI = b"\xff\xd8"
JPEG_EOI = b"\xff\xd9"

# Some cameras pad the frame after the end marker; tolerate that much.
_PADDING = b"\x00\r\n "


class InvalidJPEGError(ValueError):
    """The bytes are not one whole, decodable JPEG; the message says why (no content)."""


def describe_body(body: bytes, content_type: str = "") -> str:
    """A short description of a body for error messages, without quoting it.

    The body is never echoed: some cameras' error pages repeat the request URL, and
    with it the credentials.
    """
    kind = content_type.split(";", 1)[0].strip() or "no content type"
    stripped = body.lstrip()[:16].lower()
    if stripped.startswith((b"<!doctype html", b"<html")):
        looks = "an HTML page"
    elif stripped.startswith(b"<"):
        looks = "XML/HTML"
    elif stripped.startswith((b"{", b"[")):
        looks = "JSON"
    elif not body:
        looks = "nothing"
    else:
        looks = "unrecognised bytes"
    return f"{looks} ({kind}, {len(body)} bytes)"


def jpeg_problem(body: bytes, content_type: str = "") -> str | None:
    """Why ``body`` is not one complete, decodable JPEG; ``None`` if it is.

    Checks the start and end markers (a cut-off frame has no end marker), then has
    Pillow parse the headers up to the scan: the frame must say it is a JPEG of some
    size. The compressed scan itself is not decoded: that cost about 1.2 ms per 166 KB
    frame, a third of the whole durable hand-off, and a frame whose scan is damaged
    between intact markers still opens as a (partly grey) picture.
    """
    if not body.startswith(JPEG_SOI):
        return f"not a JPEG: got {describe_body(body, content_type)}"
    if not body.rstrip(_PADDING).endswith(JPEG_EOI):
        return f"truncated JPEG: no end-of-image marker ({len(body)} bytes)"
    problem: str | None = None
    try:
        with Image.open(io.BytesIO(body)) as image:
            if image.format != "JPEG":
                return f"not a JPEG: Pillow reads it as {image.format}"
            if not (image.width and image.height):
                return f"JPEG without a size ({len(body)} bytes)"
    except Exception as exc:  # Pillow raises OSError, SyntaxError, ValueError, bomb errors
        # Pillow's messages describe the decoding problem, never the data itself.
        problem = (
            f"JPEG does not decode ({type(exc).__name__}: {str(exc)[:120]}; {len(body)} bytes)"
        )
    return problem


def check_jpeg(body: bytes, content_type: str = "") -> None:
    """Raise :class:`InvalidJPEGError` unless ``body`` is a complete JPEG whose headers parse."""
    problem = jpeg_problem(body, content_type)
    if problem is not None:
        raise InvalidJPEGError(problem)
