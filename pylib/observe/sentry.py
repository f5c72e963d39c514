"""Error reporting to Sentry, every event redacted, one per kind of trouble per interval."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any
from urllib.parse import urlsplit

import sentry_sdk
from prometheus_client import Counter
from sentry_sdk.integrations.logging import ignore_logger
from sentry_sdk.types import Event, Hint

from pylib.observe.logs import TEMPLATE_ATTR
from pylib.observe.redact import redact_data, register_secret

logger = logging.getLogger(__name__)

REPEAT_INTERVAL = 600.0
MAX_KINDS = 1024
# Libraries whose log lines are noise to Sentry (pika logs every failed connect at ERROR).
QUIET_LOGGERS = ("pika", "pika.*")

SENTRY_HELD_BACK = Counter(
    "sentry_events_held_back_total", "Sentry events not sent: same kind within the interval"
)


def _kind(event: Event, hint: Hint) -> str:
    """The same trouble: a log line's logger and template, else exception type and place."""
    record = hint.get("log_record")
    if isinstance(record, logging.LogRecord):
        template = getattr(record, TEMPLATE_ATTR, record.msg)
        return f"log {record.name} {record.levelno} {template}"
    exc_info = hint.get("exc_info")
    if exc_info and exc_info[0] is not None:
        exc_type, _, tb = exc_info
        where = ""
        while tb is not None:
            where = f"{tb.tb_frame.f_code.co_filename}:{tb.tb_lineno}"
            tb = tb.tb_next
        return f"exception {exc_type.__module__}.{exc_type.__qualname__} {where}"
    return f"message {event.get('message')}"


class _RepeatLimit:
    """Lets the first event of a kind through, then one per ``interval`` seconds."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._lock = threading.Lock()
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def admit(self, kind: str) -> int | None:
        """None to hold the event back, else how many of its kind were held back before it."""
        now = time.monotonic()
        with self._lock:
            last = self._last.get(kind)
            if last is not None and now - last < self.interval:
                self._held[kind] = self._held.get(kind, 0) + 1
                return None
            if len(self._last) >= MAX_KINDS:
                # Kinds quiet for a whole interval would be let through anyway: forget them.
                quiet = [other for other, seen in self._last.items() if seen < now - self.interval]
                for stale in quiet:
                    del self._last[stale]
                    self._held.pop(stale, None)
            self._last[kind] = now
            return self._held.pop(kind, 0)

    def __len__(self) -> int:
        return len(self._last)


_limit = _RepeatLimit(REPEAT_INTERVAL)


def _before_send(event: Event, hint: Hint) -> Event | None:
    held = _limit.admit(_kind(event, hint))
    if held is None:
        SENTRY_HELD_BACK.inc()
        return None
    if held:
        event.setdefault("extra", {})["held_back_since_last"] = held
    # The SDK has serialized the event to plain dicts, lists and strings by now.
    redacted: Event = redact_data(event)
    return redacted


def _redacted(value: Any, hint: Any) -> Any:
    return redact_data(value)


def init_sentry(
    dsn: str | None,
    *,
    release: str | None = None,
    environment: str | None = None,
    repeat_interval: float = REPEAT_INTERVAL,
) -> bool:
    """Start reporting to Sentry at ``dsn``; return whether Sentry is now on. A falsy ``dsn``
    leaves it off (a stray ``SENTRY_DSN`` cannot switch it on); a second call replaces it."""
    global _limit
    if not dsn:
        return False
    _limit = _RepeatLimit(repeat_interval)
    for name in QUIET_LOGGERS:
        ignore_logger(name)
    # An old-style DSN carries a secret key as the URL password; the public key is not secret.
    register_secret(urlsplit(dsn).password)
    if sentry_sdk.is_initialized():
        close_sentry()
    sentry_sdk.init(
        dsn=dsn,
        release=release,
        environment=environment,
        # send_default_pii stays off by default: passing it is deprecated, and data_collection
        # would switch off the SDK's own EventScrubber.
        before_send=_before_send,
        # Frame locals can hold a trigger with a camera password in it; keep them home.
        include_local_variables=False,
        before_breadcrumb=_redacted,
        before_send_transaction=_redacted,
        # Auto-enabled integrations would patch unrelated libraries on import.
        default_integrations=True,
        auto_enabling_integrations=False,
        # No sentry-trace/baggage headers on requests to cameras and third parties.
        trace_propagation_targets=[],
        # Its monitor thread (for tracing, unused) sleeps 10 s: close() could not join it.
        enable_backpressure_handling=False,
    )
    logger.info("Sentry reporting on (environment %s, release %s)", environment, release)
    return True


def capture_exception(exc: BaseException, **tags: str) -> None:
    """Report ``exc`` with ``tags``; does nothing when Sentry is off."""
    if not sentry_sdk.is_initialized():
        return
    with sentry_sdk.new_scope() as scope:
        for key, value in tags.items():
            scope.set_tag(key, value)
        sentry_sdk.capture_exception(exc)


def flush_sentry(timeout: float = 2.0) -> None:
    """Wait up to ``timeout`` seconds for queued events to be sent."""
    if sentry_sdk.is_initialized():
        sentry_sdk.flush(timeout=timeout)


def close_sentry(timeout: float = 2.0) -> None:
    """Send what is queued (up to ``timeout`` s), stop the SDK's threads and switch Sentry off
    (unlike the SDK's ``close()``, this joins its threads and closes its HTTP pool)."""
    client = sentry_sdk.get_client()
    if not client.is_active():
        return
    deadline = time.monotonic() + timeout
    threads = _sdk_threads(client)
    transport = getattr(client, "transport", None)
    client.close(timeout=timeout)
    for thread in threads:
        thread.join(max(0.1, deadline - time.monotonic()))
        if thread.is_alive():
            logger.warning("Sentry thread %s did not stop within %s s", thread.name, timeout)
    pool = getattr(transport, "_pool", None)
    clear = getattr(pool, "clear", None)
    if callable(clear):
        clear()
    # A NonRecordingClient in its place makes is_initialized() false again.
    sentry_sdk.get_global_scope().set_client(None)


def _sdk_threads(client: Any) -> list[threading.Thread]:
    """The threads the client has started, found through its (private) components."""
    holders: list[tuple[Any, str]] = [
        (getattr(getattr(client, "transport", None), "_worker", None), "_thread"),
        (getattr(client, "session_flusher", None), "_thread"),
        (getattr(client, "monitor", None), "_thread"),
    ]
    for name in ("log_batcher", "metrics_batcher", "span_batcher"):
        holders.append((getattr(client, name, None), "_flusher"))
    threads = [getattr(holder, attribute, None) for holder, attribute in holders]
    return [t for t in threads if isinstance(t, threading.Thread) and t.is_alive()]
