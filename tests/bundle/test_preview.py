"""The small copy of a bundle's first frame: at most 64 KB and 640 px, whatever the scene."""

from __future__ import annotations

import io

from PIL import Image

from snapshot_processor.bundle.preview import SMALL_ENOUGH, preview
from tools.bench import bench_jpeg


def jpeg(image: Image.Image, quality: int = 95) -> bytes:
    out = io.BytesIO()
    image.save(out, "JPEG", quality=quality)
    return out.getvalue()


def test_a_camera_frame_becomes_a_copy_of_about_fifty_kilobytes() -> None:
    frame = bench_jpeg()  # 1080p, about 166 KB, as a camera sends
    small = preview(frame)
    assert small is not None
    assert 10_000 < len(small) <= SMALL_ENOUGH
    with Image.open(io.BytesIO(small)) as image:
        assert max(image.size) <= 640
        assert image.format == "JPEG"


def test_a_busy_scene_is_made_smaller_still_until_it_fits() -> None:
    noise = jpeg(Image.effect_noise((1920, 1080), 90).convert("RGB"))
    small = preview(noise)
    assert small is not None
    assert len(small) <= SMALL_ENOUGH < len(noise)


def test_a_small_frame_or_one_that_cannot_be_read_gets_no_copy() -> None:
    assert preview(jpeg(Image.new("RGB", (320, 240), (10, 20, 30)))) is None
    assert preview(b"\xff\xd8" + b"not a jpeg" * 10_000 + b"\xff\xd9") is None
