"""The uploader thread: drains the upload queue into the cloud destinations, one item at a
time (Drive wants its folders created from one thread). A failing destination is held back
as a whole, so it costs one probe per pause instead of every item's attempts."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass

from prometheus_client import Counter, Histogram

from pylib.observe.logs import printable
from pylib.observe.redact import redact
from pylib.observe.trouble import TroubleLog
from pylib.retry import Backoff, RetryPolicy
from pylib.runtime.health import Health
from pylib.runtime.worker import RestartBudget, Worker
from pylib.upload.destination import (
    Destination,
    UploadItem,
    UploadRefusedError,
    UploadRetryError,
)
from pylib.upload.queue import QueuedUpload, UploadQueue, UploadQueueError

log = logging.getLogger(__name__)

UPLOADS = Counter(
    "uploads",
    "Upload attempts by outcome: done, retry (failed, tried again later), parked",
    ["destination", "result"],
)
UPLOAD_SECONDS = Histogram(
    "upload_seconds",
    "Time taken by each successful upload",
    ["destination"],
    buckets=(0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0),
)

UPLOAD_HOOK_FAILURES = Counter(
    "upload_hook_failures_total", "Finished uploads whose listener failed to take note of them"
)

# With 20 attempts, about half a day of trying before an item is parked.
ITEM_RETRY = RetryPolicy(first=10.0, factor=2.0, maximum=3600.0, jitter=0.2)
DESTINATION_RETRY = RetryPolicy(first=2.0, factor=2.0, maximum=300.0, jitter=0.2)
QUEUE_RETRY = RetryPolicy(first=1.0, factor=2.0, maximum=60.0)
BATCH = 20
HOUSEKEEPING_EVERY = 5.0
# A destination failing for this long shows in health (a single 503 does not).
TROUBLE_AFTER = 60.0
# Parked items show in health for this long after they were parked.
PARKED_WINDOW = 86_400.0
_REASON_MAX = 500


@dataclass(frozen=True)
class UploadStatus:
    """Uploads waiting, the oldest one's age, parked, failing destinations (name -> reason)."""

    depth: int
    oldest_seconds: float | None
    parked: int
    failing: dict[str, str]


@dataclass
class _DestinationState:
    backoff: Backoff
    trouble: TroubleLog
    housekeeping: TroubleLog
    held_until: float = 0.0


class Uploader(Worker):
    """Drains ``queue`` into ``destinations`` (by name); :meth:`wake` it after adding to it."""

    def __init__(
        self,
        queue: UploadQueue,
        destinations: Mapping[str, Destination],
        stop_event: threading.Event,
        *,
        name: str = "uploader",
        item_retry: RetryPolicy = ITEM_RETRY,
        destination_retry: RetryPolicy = DESTINATION_RETRY,
        housekeeping_every: float = HOUSEKEEPING_EVERY,
        trouble_after: float = TROUBLE_AFTER,
        clock: Callable[[], float] = time.time,
        on_uploaded: Callable[[str, UploadItem], None] | None = None,
        budget: RestartBudget | None = None,
        on_fatal: Callable[[str, BaseException], None] | None = None,
    ) -> None:
        super().__init__(name, stop_event, budget=budget, on_fatal=on_fatal)
        self.queue = queue
        # Told of each file copied, on this thread, just before the queue forgets it.
        self.on_uploaded = on_uploaded
        self.destinations = dict(destinations)
        self.item_retry = item_retry
        self.housekeeping_every = housekeeping_every
        self.trouble_after = trouble_after
        self._clock = clock
        self._wake = threading.Event()
        self._states = {
            name: _DestinationState(
                backoff=destination_retry.backoff(),
                trouble=TroubleLog(log, f"uploads to {name}"),
                housekeeping=TroubleLog(log, f"housekeeping of {name}"),
            )
            for name in self.destinations
        }
        self._queue_backoff = QUEUE_RETRY.backoff()
        self._queue_trouble = TroubleLog(log, f"upload queue {queue.path}", level=logging.ERROR)
        self._housekeeping_at = 0.0

    def wake(self) -> None:
        """New items are queued: look at once (callable from any thread)."""
        self._wake.set()

    def stop(self) -> None:
        """Finish the upload under way, then end."""
        super().stop()
        self._wake.set()

    def troubles(self) -> list[str]:
        """Destinations failing past ``trouble_after``, an unusable queue, recently parked items."""
        found = super().troubles()
        for state in self._states.values():
            for trouble in (state.trouble, state.housekeeping):
                lasted = trouble.lasted()
                if lasted is not None and lasted >= self.trouble_after:
                    found.append(
                        f"{trouble.what} failing for {_span(lasted)}: "
                        f"{printable(redact(trouble.reason or ''))}"
                    )
        if self._queue_trouble.reason is not None:
            found.append(f"upload queue cannot be used: {self._queue_trouble.reason}")
        try:
            parked = self.queue.parked(since=self._clock() - PARKED_WINDOW)
        except UploadQueueError as exc:
            found.append(f"upload queue cannot be read: {exc}")
        else:
            if parked:
                found.append(
                    f"{parked} upload(s) parked in the last 24 h (refused or out of tries)"
                )
        return found

    def status(self) -> UploadStatus:
        """The queue and each destination at a glance, reasons redacted (anyone may read the
        status page); an unreadable queue shows as a failing ``queue``, never raises."""
        failing = {
            name: redact(state.trouble.reason)
            for name, state in self._states.items()
            if state.trouble.reason is not None
        }
        try:
            depth = self.queue.depth()
            oldest = self.queue.oldest_age(self._clock())
            parked = self.queue.parked()
        except UploadQueueError as exc:
            return UploadStatus(0, None, 0, {**failing, "queue": redact(str(exc))})
        return UploadStatus(depth=depth, oldest_seconds=oldest, parked=parked, failing=failing)

    def health(self) -> Health:
        """The queue at a glance beside the troubles (warnings: a restart would not help)."""
        health = super().health()
        health.detail["uploads"] = asdict(self.status())
        return health

    def on_thread_close(self) -> None:
        for name, destination in self.destinations.items():
            try:
                destination.close()
            except Exception as exc:
                log.warning("closing destination %s failed: %s: %s", name, type(exc).__name__, exc)

    def work(self) -> None:
        self._report_unknown_destinations()
        try:
            waiting = self.queue.all_due_now(self._clock())
        except UploadQueueError:
            waiting = 0  # the loop reports the queue's trouble
        if waiting:
            log.info("%s: %d upload(s) waiting from before; trying them now", self.name, waiting)
        while self.should_keep_running():
            self._wake.clear()
            self._housekeeping()
            try:
                pause = 0.0 if self._upload_round() else self._idle_pause()
            except UploadQueueError as exc:
                self._queue_trouble.failed(str(exc), kind=type(exc).__name__)
                pause = self._queue_backoff.next()
            else:
                self._queue_backoff.reset()
                self._queue_trouble.succeeded()
            if pause > 0:
                self._wake.wait(pause)

    def _report_unknown_destinations(self) -> None:
        try:
            waiting = self.queue.by_destination()
        except UploadQueueError:
            return  # the loop reports the queue's trouble
        for name, count in sorted(waiting.items()):
            if name not in self.destinations:
                log.warning(
                    "%d upload(s) queued for %s, which is not configured now: kept (their"
                    " files too), not uploaded",
                    count,
                    printable(name),
                )

    def _open_destinations(self, now: float) -> list[str]:
        return [name for name, state in self._states.items() if state.held_until <= now]

    def _upload_round(self) -> bool:
        """Upload the items due now, oldest first; True if there were any."""
        now = self._clock()
        open_names = self._open_destinations(now)
        if not open_names:
            return False
        batch = self.queue.due(now, BATCH, open_names)
        for entry in batch:
            if not self.should_keep_running():
                break
            if self._states[entry.destination].held_until > self._clock():
                continue  # failed earlier in this round: its other items wait
            self._upload(entry)
            self._housekeeping()
        return bool(batch)

    def _idle_pause(self) -> float:
        """Seconds to sleep: until the next item or destination is due, or housekeeping."""
        now = self._clock()
        pauses = [max(0.0, self._housekeeping_at - time.monotonic())]
        upcoming = self.queue.next_due(self._open_destinations(now))
        if upcoming is not None:
            pauses.append(upcoming - now)
        pauses.extend(s.held_until - now for s in self._states.values() if s.held_until > now)
        return max(0.0, min(pauses))

    def _upload(self, entry: QueuedUpload) -> None:
        destination = self.destinations[entry.destination]
        started = time.monotonic()
        try:
            destination.upload(entry.item)
        except UploadRefusedError as exc:
            self._refused(entry, exc.reason)
        except UploadRetryError as exc:
            self._failed(entry, exc.reason, exc.after, kind=exc.reason.partition(":")[0])
        except Exception as exc:
            # Unsorted: retried like a passing failure, logged by type (no traceback each time).
            kind = type(exc).__name__
            self._failed(entry, f"{kind}: {exc}", None, kind=kind)
        else:
            self._succeeded(entry, time.monotonic() - started)

    def _succeeded(self, entry: QueuedUpload, seconds: float) -> None:
        # Told before the queue forgets it: a listener keeping its own record of copies
        # never meets a file that is neither queued nor recorded as copied.
        if self.on_uploaded is not None:
            try:
                self.on_uploaded(entry.destination, entry.item)
            except Exception:  # whoever listens catches up later, from the queue and its record
                UPLOAD_HOOK_FAILURES.inc()
                log.exception(
                    "%s: the upload of %s was not taken note of", self.name, entry.item.name
                )
        self.queue.done(entry.id)
        UPLOADS.labels(entry.destination, "done").inc()
        UPLOAD_SECONDS.labels(entry.destination).observe(seconds)
        state = self._states[entry.destination]
        state.backoff.reset()
        state.held_until = 0.0
        state.trouble.succeeded()
        log.debug(
            "uploaded %s to %s in %.2f s", printable(entry.item.name), entry.destination, seconds
        )

    def _failed(self, entry: QueuedUpload, reason: str, after: float | None, kind: str) -> None:
        now = self._clock()
        pause = max(self.item_retry.delay(entry.attempts + 1), after or 0.0)
        parked = self.queue.retry(entry.id, reason[:_REASON_MAX], now + pause)
        state = self._states[entry.destination]
        state.held_until = now + max(state.backoff.next(), after or 0.0)
        state.trouble.failed(reason, kind=kind)
        if parked:
            UPLOADS.labels(entry.destination, "parked").inc()
            log.warning(
                "upload of %s to %s parked after %d failed attempt(s): %s",
                printable(entry.item.name),
                entry.destination,
                entry.attempts + 1,
                printable(reason),
            )
        else:
            UPLOADS.labels(entry.destination, "retry").inc()
            log.debug(
                "upload of %s to %s failed (%s); again in %.0f s",
                printable(entry.item.name),
                entry.destination,
                printable(reason),
                pause,
            )

    def _refused(self, entry: QueuedUpload, reason: str) -> None:
        self.queue.park(entry.id, reason[:_REASON_MAX])
        UPLOADS.labels(entry.destination, "parked").inc()
        log.warning(
            "upload of %s to %s refused, parked: %s",
            printable(entry.item.name),
            entry.destination,
            printable(reason),
        )

    def _housekeeping(self) -> None:
        if time.monotonic() < self._housekeeping_at:
            return
        self._housekeeping_at = time.monotonic() + self.housekeeping_every
        now = self._clock()
        for name, destination in self.destinations.items():
            trouble = self._states[name].housekeeping
            try:
                destination.housekeeping(now)
            except Exception as exc:
                trouble.failed(f"{type(exc).__name__}: {exc}", kind=type(exc).__name__)
            else:
                trouble.succeeded()


def _span(seconds: float) -> str:
    """A duration for a person: ``45 s``, ``5 min``, ``3 h``."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.0f} h"
