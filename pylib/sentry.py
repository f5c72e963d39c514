"""Error reporting to Sentry, with every event redacted before it leaves the process.

Sentry is optional: without a DSN nothing is initialised and ``capture_exception`` is a
no-op. Events and breadcrumbs pass whole through :func:`pylib.redact.redact_data`, so
exception values, log messages, breadcrumbs, extra data and frame variables lose their
credentials; an event whose redaction fails is dropped by the SDK, not sent raw.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any
from urllib.parse import urlsplit

import sentry_sdk
from sentry_sdk.types import Breadcrumb, BreadcrumbHint, Event, Hint

from pylib.redact import redact_data, register_secret

logger = logging.getLogger(__name__)


def _before_send(event: Event, hint: Hint) -> Event | None:
    # The SDK has serialized the event to plain dicts, lists and strings by now.
    redacted: Event = redact_data(event)
    return redacted


def _before_breadcrumb(crumb: Breadcrumb, hint: BreadcrumbHint) -> Breadcrumb | None:
    redacted: Breadcrumb = redact_data(crumb)
    return redacted


def init_sentry(
    dsn: str | None,
    *,
    release: str | None = None,
    environment: str | None = None,
) -> bool:
    """Start reporting to Sentry at ``dsn``; return whether Sentry is now on.

    A falsy ``dsn`` leaves Sentry off (the SDK is not even asked, so a stray
    ``SENTRY_DSN`` in the environment cannot switch it on). A second call replaces the
    first client after closing it.
    """
    if not dsn:
        return False
    # An old-style DSN carries a secret key as the URL password; the public key is not secret.
    register_secret(urlsplit(dsn).password)
    if sentry_sdk.is_initialized():
        close_sentry()
    sentry_sdk.init(
        dsn=dsn,
        release=release,
        environment=environment,
        # No PII by leaving send_default_pii at its default (off): sentry-sdk 2.7x warns
        # that passing it is deprecated, and its replacement, data_collection, would
        # switch off the SDK's own EventScrubber (it drops "password" etc. keys).
        before_send=_before_send,
        # Frame locals can hold a trigger with a camera password in it; keep them home.
        include_local_variables=False,
        before_breadcrumb=_before_breadcrumb,
        # Redaction covers transactions too, should tracing ever be switched on.
        before_send_transaction=_before_send,
        # Default integrations (logging, excepthook, threading, stdlib, atexit, dedupe)
        # suit a daemon; auto-enabled ones would patch unrelated libraries on import.
        default_integrations=True,
        auto_enabling_integrations=False,
        # No sentry-trace/baggage headers on requests to cameras and third parties.
        trace_propagation_targets=[],
        # Its monitor thread sleeps 10 s between checks, so close() could not join it
        # promptly; it only throttles tracing, which this toolkit does not use.
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
    """Send what is queued (up to ``timeout`` s), stop the SDK's threads and switch Sentry off.

    The SDK's ``close()`` only signals its worker threads and leaves the HTTP pool to
    the garbage collector; this also joins the threads and closes the pool, so a
    shutdown (or a test) leaves nothing running.
    """
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
    threads = []
    for holder, attribute in holders:
        thread = getattr(holder, attribute, None)
        if isinstance(thread, threading.Thread) and thread.is_alive():
            threads.append(thread)
    return threads
