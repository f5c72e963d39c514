"""An annotated copy of a snapshot: each located detection boxed and labelled."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont, UnidentifiedImageError

from snapshot_processor.detection.base import Detection, DetectionError

PERSON_COLOUR = (255, 48, 48)
THING_COLOUR = (255, 210, 0)
TEXT_COLOUR = (0, 0, 0)
ANNOTATED_SUFFIX = ".annotated.jpg"


def annotated_path(original: Path) -> Path:
    """Where the annotated copy goes: beside the original, ``x.jpg`` -> ``x.annotated.jpg``."""
    return original.with_name(original.stem + ANNOTATED_SUFFIX)


def annotate(image: bytes, detections: Sequence[Detection], *, quality: int = 85) -> bytes:
    """JPEG bytes of ``image`` with a box and ``label NN%`` for each detection that has a box."""
    failure: DetectionError | None = None
    try:
        with Image.open(io.BytesIO(image)) as opened:
            picture = opened.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError):
        failure = DetectionError("invalid_image", "Pillow could not read the image")
    if failure is not None:
        raise failure
    width, height = picture.size
    draw = ImageDraw.Draw(picture)
    line = max(2, round(min(width, height) / 200))
    font = ImageFont.load_default(size=max(12, round(height / 40)))
    # People last, so their boxes sit on top.
    for detection in sorted(detections, key=lambda d: d.person):
        box = detection.box
        if box is None:
            continue
        colour = PERSON_COLOUR if detection.person else THING_COLOUR
        x1, y1 = box.left * width, box.top * height
        x2, y2 = (box.left + box.width) * width, (box.top + box.height) * height
        draw.rectangle((x1, y1, x2, y2), outline=colour, width=line)
        text = f"{detection.label} {detection.confidence:.0f}%"
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        text_w, text_h = right - left, bottom - top + 2 * line
        # The caption sits above the box, or inside it at the top edge of the picture.
        ty = y1 - text_h if y1 - text_h >= 0 else y1
        draw.rectangle((x1, ty, x1 + text_w + 2 * line, ty + text_h), fill=colour)
        draw.text((x1 + line, ty + line - top), text, fill=TEXT_COLOUR, font=font)
    out = io.BytesIO()
    picture.save(out, "JPEG", quality=quality)
    return out.getvalue()
