"""``snap CAMERA [-o FILE]``: one snapshot through the daemon's camera clients, timed."""

from __future__ import annotations

import argparse
import io
import re
import time
from datetime import UTC, datetime
from pathlib import Path

from PIL import Image

from pylib.observe.logs import printable
from snapshot_processor.camera.errors import CameraError
from snapshot_processor.camera.registry import CameraAddressRefusedError, CameraConfigError
from snapshot_processor.cli.common import (
    EXIT_CAMERA,
    EXIT_CONFIG,
    EXIT_FAILED,
    CommandError,
    camera_registry,
    command_logging,
    find_camera,
    load_settings,
)

HELP = "take one snapshot from a camera output and write it to a file"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "camera", help="the camera output's key, e.g. 'Front Door camera' (any case)"
    )
    parser.add_argument(
        "-o",
        "--output",
        type=Path,
        default=None,
        help="where to write the JPEG (default: snap-<camera>-<UTC time>.jpg in the current folder)",
    )
    add_device_params(parser)


def add_device_params(parser: argparse.ArgumentParser) -> None:
    """``--device-params``, for a camera whose address comes with its triggers."""
    parser.add_argument(
        "--device-params",
        default=None,
        metavar="USER:PASSWORD@HOST:PORT",
        help="the address a trigger would carry, for a camera output without OUTPUT_n_ADDRESS "
        "(shows in the process list: prefer configuring the camera)",
    )


def default_file(key: str, now: datetime | None = None) -> Path:
    """``snap-<camera>-<UTC time>.jpg`` in the current folder."""
    slug = re.sub(r"[^a-z0-9]+", "-", key.lower()).strip("-") or "camera"
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%SZ")
    return Path(f"snap-{slug}-{stamp}.jpg")


def describe_image(image: bytes) -> str:
    """``JPEG 640x480`` as Pillow reads it, or why it cannot."""
    try:
        with Image.open(io.BytesIO(image)) as picture:
            return f"{picture.format} {picture.width}x{picture.height}"
    except Exception as exc:  # Pillow raises several kinds for a bad image
        return f"not readable by Pillow ({type(exc).__name__})"


def run(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    device = find_camera(settings, args.camera)
    # Bounded as the daemon's fetches are: --device-params stands for a trigger's.
    registry = camera_registry(settings)
    try:
        try:
            spec = registry.spec(device.key, args.device_params)
        except CameraConfigError as exc:
            raise CommandError(f"{exc}; or pass --device-params", EXIT_CONFIG) from None
        started = time.monotonic()
        try:
            with command_logging():
                image = registry.snapshot(device.key, args.device_params)
        except CameraAddressRefusedError as exc:
            raise CommandError(str(exc), EXIT_CONFIG) from None
        except CameraError as exc:
            elapsed = time.monotonic() - started
            raise CommandError(f"{exc} after {elapsed:.2f} s", EXIT_CAMERA) from None
        elapsed = time.monotonic() - started
    finally:
        registry.close()
    target: Path = args.output or default_file(device.key)
    try:
        target.write_bytes(image)
    except OSError as exc:
        raise CommandError(f"cannot write {target}: {exc.strerror or exc}", EXIT_FAILED) from None
    print(
        f"'{printable(device.key)}' ({spec.vendor} at {printable(spec.host)}:{spec.port}) "
        f"answered {len(image)} bytes, {describe_image(image)}, in {elapsed:.2f} s"
    )
    print(f"written to {printable(target.absolute())}")
    return 0
