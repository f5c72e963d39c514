"""The one way tests wait: poll a condition until it holds or the time is up."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path


def wait_until(condition: Callable[[], object], timeout: float = 10.0, step: float = 0.02) -> bool:
    """True as soon as ``condition()`` is truthy; False if it is not within ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        if condition():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(step)


def wait_for_text(path: Path, text: str, timeout: float = 30.0) -> bool:
    """True once the file at ``path`` holds ``text``."""

    def found() -> bool:
        try:
            return text in path.read_text(errors="replace")
        except FileNotFoundError:
            return False

    return wait_until(found, timeout, step=0.05)
