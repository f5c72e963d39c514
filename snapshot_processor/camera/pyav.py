"""Whether PyAV, which decodes camera streams, is installed: it is the ``stream`` extra,
as its wheels carry FFmpeg (89 MB) and most cameras give stills without it."""

from __future__ import annotations

import importlib

REMEDY = (
    "install the 'stream' extra (pip install 'snapshot-processor[stream]'; make install has "
    "it), or build the image with EXTRAS=stream"
)


def missing() -> str | None:
    """Why streams cannot be decoded here, or None when PyAV loads."""
    try:
        importlib.import_module("av")
    except ImportError as exc:
        return f"PyAV cannot be loaded ({exc}): {REMEDY}"
    return None
