"""Dead-man's-switch pings to healthchecks.io and Cronitor; failures are logged, never raised."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from urllib.parse import quote, urlsplit

import requests
from prometheus_client import Counter

from pylib.observe.redact import redact, register_secret

logger = logging.getLogger(__name__)

HEALTH_PING_FAILURES = Counter(
    "health_ping_failures_total",
    "Health pings that did not reach the monitoring service or were refused.",
    ["target"],
)

CRONITOR_BASE_URL = "https://cronitor.link/p"

STOP_TIMEOUT = 5.0

# healthchecks.io keeps the first 100 kB of a ping body, Cronitor a short message.
_MAX_MESSAGE = 1000


class HealthPinger:
    """Report ``is_healthy()`` (``(ok, reason)``) to healthchecks.io and/or Cronitor every
    ``interval`` seconds; ``cronitor_key`` is ``<api key>/<monitor key>``. Either may be None."""

    def __init__(
        self,
        hc_ping_url: str | None,
        cronitor_key: str | None,
        *,
        is_healthy: Callable[[], tuple[bool, str]],
        interval: float = 60.0,
        timeout: float = 5.0,
        cronitor_base_url: str = CRONITOR_BASE_URL,
    ) -> None:
        self._hc_url = hc_ping_url.rstrip("/") if hc_ping_url else None
        self._cronitor_url = (
            f"{cronitor_base_url.rstrip('/')}/{quote(cronitor_key.strip('/'), safe='/')}"
            if cronitor_key
            else None
        )
        # The check uuid and the Cronitor API key let anyone ping (or fail) the check.
        if self._hc_url:
            register_secret(urlsplit(self._hc_url).path.strip("/"))
        if cronitor_key:
            register_secret(cronitor_key.strip("/"))
        self._is_healthy = is_healthy
        self._interval = interval
        self._timeout = timeout
        self._session = requests.Session()
        self._ping_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def enabled(self) -> bool:
        return bool(self._hc_url or self._cronitor_url)

    def start(self) -> None:
        """Ping now and then every ``interval`` seconds in the "health" thread."""
        if not self.enabled or self._thread is not None:
            return
        self._stop.clear()
        # Not a Worker: if this thread died, the pings would stop, which the service reports.
        self._thread = threading.Thread(target=self._run, name="health", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = STOP_TIMEOUT) -> bool:
        """Stop pinging; True once the thread has ended, False if a ping in flight still
        runs after ``timeout`` seconds (it then ends by itself and closes the session)."""
        self._stop.set()
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
            if thread.is_alive():
                return False
            self._thread = None
        self._session.close()
        return True

    def ping_once(self) -> None:
        """Ask ``is_healthy`` and send one ping to each configured service."""
        if not self.enabled:
            return
        healthy, reason = self._check()
        reason = redact(reason)[:_MAX_MESSAGE]
        with self._ping_lock:
            if self._hc_url:
                url = self._hc_url if healthy else f"{self._hc_url}/fail"
                self._send("healthchecks", "POST", url, data=reason.encode("utf-8"))
            if self._cronitor_url:
                params = {"state": "complete" if healthy else "fail"}
                if reason:
                    params["message"] = reason
                self._send("cronitor", "GET", self._cronitor_url, params=params)

    def _run(self) -> None:
        try:
            while True:
                self.ping_once()
                if self._stop.wait(self._interval):
                    return
        finally:
            self._session.close()  # also when stop() gave up waiting for this thread

    def _check(self) -> tuple[bool, str]:
        try:
            healthy, reason = self._is_healthy()
        except Exception as exc:
            logger.warning("Health check raised %s: %s", type(exc).__name__, redact(str(exc)))
            return False, f"health check raised {type(exc).__name__}"
        return bool(healthy), str(reason or "")

    def _send(
        self,
        target: str,
        method: str,
        url: str,
        *,
        data: bytes | None = None,
        params: dict[str, str] | None = None,
    ) -> None:
        try:
            response = self._session.request(
                method, url, data=data, params=params, timeout=self._timeout
            )
            # Nothing to read from the body; closing returns the connection to the pool.
            response.close()
        except Exception as exc:  # requests' errors, and anything else: never kill the thread
            HEALTH_PING_FAILURES.labels(target=target).inc()
            logger.warning(
                "Health ping to %s at %s failed: %s",
                target,
                redact(_origin(url)),
                redact(str(exc)),
            )
            return
        if not 200 <= response.status_code < 300:
            HEALTH_PING_FAILURES.labels(target=target).inc()
            logger.warning(
                "Health ping to %s at %s was refused: HTTP %s",
                target,
                redact(_origin(url)),
                response.status_code,
            )


def _origin(url: str) -> str:
    """``scheme://host[:port]`` of ``url``: enough to say where, without the check's key."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname or ''}" + (f":{parts.port}" if parts.port else "")
