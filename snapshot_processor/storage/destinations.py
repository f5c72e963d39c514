"""The cloud destinations by name, each a module with ``from_settings``; imported only when
configured, since the cloud clients cost some 30 MB of memory."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import TYPE_CHECKING

from pylib.upload.destination import Destination

if TYPE_CHECKING:
    from snapshot_processor.storage.settings import StorageSettings

# name -> (whether it is configured, the module whose from_settings makes it)
DESTINATIONS: dict[str, tuple[Callable[[StorageSettings], bool], str]] = {
    "drive": (lambda s: s.drive_on, "snapshot_processor.storage.drive.destination"),
    "s3": (lambda s: bool(s.s3_bucket), "snapshot_processor.storage.s3"),
}


def configured(settings: StorageSettings, aws_region: str | None) -> dict[str, Destination]:
    return {
        name: importlib.import_module(module).from_settings(settings, aws_region)
        for name, (on, module) in DESTINATIONS.items()
        if on(settings)
    }
