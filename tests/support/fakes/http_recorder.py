"""An HTTP server that records every request and answers a configurable status."""

from __future__ import annotations

import threading

from tests.support.fakes import LoopbackServer, Reply, Request
from tests.support.wait import wait_until


class HTTPRecorder(LoopbackServer):
    """Records each request (method, path, query, headers, body); answers ``status``.

    ``status`` may be changed while the server runs.
    """

    def __init__(self, status: int = 200) -> None:
        super().__init__("http-recorder")
        self.status = status
        self._requests: list[Request] = []
        self._lock = threading.Lock()

    def handle(self, request: Request) -> Reply:
        with self._lock:
            self._requests.append(request)
        return Reply(self.status, b"OK" if 200 <= self.status < 300 else b"error")

    @property
    def requests(self) -> list[Request]:
        """A copy of the requests seen so far, oldest first."""
        with self._lock:
            return list(self._requests)

    def wait_for(self, count: int, timeout: float = 5.0) -> list[Request]:
        """Wait until at least ``count`` requests arrived; return them all.

        Raises:
            AssertionError: fewer arrived within ``timeout`` seconds.
        """
        if not wait_until(lambda: len(self.requests) >= count, timeout):
            seen = self.requests
            raise AssertionError(
                f"expected {count} request(s), got {len(seen)}: "
                f"{[(r.method, r.path) for r in seen]}"
            )
        return self.requests
