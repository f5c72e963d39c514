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

_PADDING = b"\x00\r\n "  # some cameras pad the frame after the end marker


class InvalidJPEGError(ValueError):
    """The bytes are not one whole, decodable JPEG; the message says why (no content)."""


def describe_body(body: bytes, content_type: str = "") -> str:
    """A short description of a body for error messages, never quoting it (it may hold the URL)."""
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
    """Why ``body`` is not one complete, decodable JPEG; ``None`` if it is. Checks the
    markers and headers; the scan is not decoded (too costly, and a damaged one still opens)."""
    if not body.startswith(JPEG_SOI):
        return f"not a JPEG: got {describe_body(body, content_type)}"
    if not body.rstrip(_PADDING).endswith(JPEG_EOI):
        return f"truncated JPEG: no end-of-image marker ({len(body)} bytes)"
    try:
        with Image.open(io.BytesIO(body)) as image:
            if image.format != "JPEG":
                return f"not a JPEG: Pillow reads it as {image.format}"
            if not (image.width and image.height):
                return f"JPEG without a size ({len(body)} bytes)"
    except Exception as exc:  # Pillow raises OSError, SyntaxError, ValueError, bomb errors
        return (  # Pillow's messages never quote the data
            f"JPEG does not decode ({type(exc).__name__}: {str(exc)[:120]}; {len(body)} bytes)"
        )
    return None


def check_jpeg(body: bytes, content_type: str = "") -> None:
    """Raise :class:`InvalidJPEGError` unless ``body`` is a complete JPEG whose headers parse."""
    if (problem := jpeg_problem(body, content_type)) is not None:
        raise InvalidJPEGError(problem)
