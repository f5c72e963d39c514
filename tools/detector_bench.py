"""Time the local HOG detector on 640x480 JPEGs: ``python -m tools.detector_bench``.

Uses photographs shipped by scikit-image (a dev dependency): the astronaut (a person)
and a cup of coffee (none), each resized to 640x480 and encoded as JPEG, as a camera
would send them. Prints the median and 90th percentile per image in milliseconds.
"""

from __future__ import annotations

import argparse
import io
import statistics
import time

import numpy as np
from PIL import Image

from snapshot_processor.detection.local import HogPeopleDetector


def sample(name: str, size: tuple[int, int] = (640, 480)) -> bytes:
    """A scikit-image photograph as a JPEG of ``size``."""
    from skimage import data

    pixels = np.asarray(getattr(data, name)(), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).convert("RGB").resize(size, Image.Resampling.LANCZOS).save(
        buffer, "JPEG", quality=85
    )
    return buffer.getvalue()


def measure(detector: HogPeopleDetector, image: bytes, runs: int) -> tuple[float, float, int]:
    """Median and p90 in ms over ``runs`` calls (after one warm-up), and detections found."""
    found = len(detector.detect(image))
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        detector.detect(image)
        times.append((time.perf_counter() - start) * 1000)
    times.sort()
    p90 = times[min(len(times) - 1, round(0.9 * (len(times) - 1)))]
    return statistics.median(times), p90, found


def main() -> None:
    """Run the benchmark and print one line per image."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--threads", type=int, default=None, help="cv2.setNumThreads")
    parser.add_argument("--margin", type=float, default=0.25, help="grey frame, per side")
    args = parser.parse_args()
    import cv2

    if args.threads is not None:
        cv2.setNumThreads(args.threads)
    detector = HogPeopleDetector(margin=args.margin)
    print(
        f"HOG people detector, OpenCV {cv2.__version__}, {cv2.getNumThreads()} thread(s), "
        f"margin {args.margin:.2f}"
    )
    for name in ("astronaut", "coffee"):
        median, p90, found = measure(detector, sample(name), args.runs)
        print(
            f"{name:>10} 640x480: median {median:6.1f} ms  p90 {p90:6.1f} ms  "
            f"({args.runs} runs, {found} detection(s))"
        )


if __name__ == "__main__":
    main()
