"""Camera clients (Foscam, Hikvision, Dahua/Amcrest, Reolink, generic URL).

Typical use::

    spec = CameraSpec.from_address("front door camera", "foscam", parse_device_params(text))
    with make_client(spec) as client:
        jpeg = client.snapshot()

The camera simulator the tests, the demo and the benchmark use lives outside the
runtime package, in :mod:`tools.camera_simulator`.
"""

from __future__ import annotations

from snapshot_processor.camera.address import CameraAddress, parse_device_params
from snapshot_processor.camera.base import CameraClient
from snapshot_processor.camera.clients import (
    VENDORS,
    DahuaClient,
    FoscamClient,
    GenericClient,
    HikvisionClient,
    ReolinkClient,
    make_client,
)
from snapshot_processor.camera.errors import (
    CameraAuthError,
    CameraBadImageError,
    CameraConnectionError,
    CameraError,
    CameraHTTPError,
    CameraTimeoutError,
    CameraUnavailableError,
    CameraVendorError,
)
from snapshot_processor.camera.jpeg import InvalidJPEGError, check_jpeg
from snapshot_processor.camera.spec import CameraSpec

__all__ = [
    "VENDORS",
    "CameraAddress",
    "CameraAuthError",
    "CameraBadImageError",
    "CameraClient",
    "CameraConnectionError",
    "CameraError",
    "CameraHTTPError",
    "CameraSpec",
    "CameraTimeoutError",
    "CameraUnavailableError",
    "CameraVendorError",
    "DahuaClient",
    "FoscamClient",
    "GenericClient",
    "HikvisionClient",
    "InvalidJPEGError",
    "ReolinkClient",
    "check_jpeg",
    "make_client",
    "parse_device_params",
]
