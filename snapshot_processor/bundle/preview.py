"""The small copy of a bundle's first frame, sent off-site ahead of everything else: at
about 50 KB it is out within a moment even on a slow uplink."""

from __future__ import annotations

import io

from PIL import Image

# A frame this small already goes ahead itself; no copy is made of it.
SMALL_ENOUGH = 64 * 1024
# Long side in pixels and JPEG quality, tried in turn until the copy is small enough: a
# busy scene at night needs less of both than a plain wall by day.
STEPS = ((640, 75), (480, 60), (320, 45))


def preview(jpeg: bytes) -> bytes | None:
    """A small JPEG of ``jpeg``; None if it is small enough as it is or cannot be read
    (the frame itself then goes first)."""
    if len(jpeg) <= SMALL_ENOUGH:
        return None
    try:
        with Image.open(io.BytesIO(jpeg)) as image:
            # The decoder scales by 1/2, 1/4 or 1/8 as it reads, to no less than this: a
            # 1080p frame is decoded at a quarter of its pixels, in a few milliseconds.
            width, height = image.size
            scale = STEPS[0][0] / max(width, height, 1)
            image.draft("RGB", (max(1, int(width * scale)), max(1, int(height * scale))))
            full = image.convert("RGB")
        for side, quality in STEPS:
            small = full.copy()
            small.thumbnail((side, side))
            out = io.BytesIO()
            small.save(out, "JPEG", quality=quality)
            if out.tell() <= SMALL_ENOUGH:
                break
    except (OSError, ValueError, Image.DecompressionBombError):
        return None
    data = out.getvalue()
    return data if len(data) < len(jpeg) else None
