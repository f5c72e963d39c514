"""The small copy of a bundle's first frame, sent off-site ahead of everything else: at
about 50 KB it is out within a moment even on a slow uplink."""

from __future__ import annotations

import io

from PIL import Image

# A frame this small already goes ahead itself; no copy is made of it.
SMALL_ENOUGH = 64 * 1024
# Long side of the copy, in pixels, and its JPEG quality: about 50 KB for a busy scene.
SIDE = 800
QUALITY = 70


def preview(jpeg: bytes) -> bytes | None:
    """A small JPEG of ``jpeg``; None if it is small enough as it is or cannot be read
    (the frame itself then goes first)."""
    if len(jpeg) <= SMALL_ENOUGH:
        return None
    try:
        with Image.open(io.BytesIO(jpeg)) as image:
            image.draft("RGB", (SIDE, SIDE))  # the decoder scales down as it reads: fast
            small = image.convert("RGB")
            small.thumbnail((SIDE, SIDE))
            out = io.BytesIO()
            small.save(out, "JPEG", quality=QUALITY, optimize=True)
    except (OSError, ValueError, Image.DecompressionBombError):
        return None
    data = out.getvalue()
    return data if len(data) < len(jpeg) else None
