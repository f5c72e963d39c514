"""A worker whose first run dies on demand: for tests of what survives a thread's restart."""

from __future__ import annotations

import threading
from typing import Any

from pylib.runtime.worker import Worker


class CrashesOnce(Worker):
    """Mix in before a worker class: its first work() waits for ``crash``, then dies;
    the restarted one is the real thing."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.crash = threading.Event()
        self.runs = 0

    def work(self) -> None:
        self.runs += 1
        if self.runs == 1:
            self.crash.wait(10)
            raise RuntimeError("injected crash")
        super().work()
