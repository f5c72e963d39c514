"""An HTTP server that records every request and answers a configurable status."""

from __future__ import annotations

import threading
import time

from tests.support.fakes import LoopbackServer, Reply, Request


class HTTPRecorder(LoopbackServer):
    """Records each request (method, path, query, headers, body); answers ``status``.

    ``status`` may be changed while the server runs.
    """

    def __init__(self, status: int = 200) -> None:
        super().__init__("http-recorder")
        self.status = status
        self._requests: list[Request] = []
        self._changed = threading.Condition()

    def handle(self, request: Request) -> Reply:
        with self._changed:
            self._requests.append(request)
            self._changed.notify_all()
        return Reply(self.status, b"OK" if 200 <= self.status < 300 else b"error")

    @property
    def requests(self) -> list[Request]:
        """A copy of the requests seen so far, oldest first."""
        with self._changed:
            return list(self._requests)

    def wait_for(self, count: int, timeout: float = 5.0) -> list[Request]:
        """Wait until at least ``count`` requests arrived; return them all.

        Raises:
            AssertionError: fewer arrived within ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        with self._changed:
            while len(self._requests) < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(
                        f"expected {count} request(s), got {len(self._requests)}: "
                        f"{[(r.method, r.path) for r in self._requests]}"
                    )
                self._changed.wait(remaining)
            return list(self._requests)
