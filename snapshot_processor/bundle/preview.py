"""The small copy of a bundle's first frame, sent off-site ahead of everything else: at
about 50 KB it is out within a moment even on a slow uplink."""

from __future__ import annotations

import io

from PIL import Image

# A frame this small already goes ahead itself; no copy is made of it.
SMALL_ENOUGH = 64 * 1024
# Long side in pixels and JPEG quality, tried in turn until the copy is small enough: a
# busy scene at night needs less of both than a plain wall by day.
STEPS = ((800, 70), (640, 60), (480, 50), (320, 40))


def preview(jpeg: bytes) -> bytes | None:
    """A small JPEG of ``jpeg``; None if it is small enough as it is or cannot be read
    (the frame itself then goes first)."""
    if len(jpeg) <= SMALL_ENOUGH:
        return None
    try:
        with Image.open(io.BytesIO(jpeg)) as image:
            image.draft("RGB", (STEPS[0][0], STEPS[0][0]))  # the decoder scales as it reads
            full = image.convert("RGB")
        for side, quality in STEPS:
            small = full.copy()
            small.thumbnail((side, side))
            out = io.BytesIO()
            small.save(out, "JPEG", quality=quality, optimize=True)
            if out.tell() <= SMALL_ENOUGH:
                break
    except (OSError, ValueError, Image.DecompressionBombError):
        return None
    data = out.getvalue()
    return data if len(data) < len(jpeg) else None
