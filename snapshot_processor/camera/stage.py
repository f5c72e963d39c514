"""The snapshot stage: for each trigger, fetch the camera's JPEGs, keep them, pass them on.

Every part of a trigger ends as a snapshot or a done mark (a requeue mark when it cannot
be written), so its delivery is always settled; one camera's trouble never delays the
others. A trigger whose snapshots were not all taken at stop is never acked: it comes again."""

from __future__ import annotations

import dataclasses
import functools
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path

from prometheus_client import Counter

from pylib.chain.envelope import Envelope, new_id
from pylib.chain.settle import done_envelope
from pylib.chain.sockets import MESSAGES_REJECTED
from pylib.chain.stage import Stage
from pylib.runtime.worker import RestartBudget
from snapshot_processor.bundle.grouping import BundleGrouping
from snapshot_processor.camera.errors import CameraError
from snapshot_processor.camera.queues import TriggerQueues
from snapshot_processor.camera.registry import (
    CameraAddressRefusedError,
    CameraConfigError,
    CameraRegistry,
)
from snapshot_processor.contract.messages import (
    BundleCameraMessage,
    SnapshotMessage,
    TriggerMessage,
)
from snapshot_processor.storage.files import (
    SNAPSHOTS,
    WriteTrouble,
    bundle_path,
    next_preparation,
    prepare_day_folders,
    snapshot_path,
    write_atomically,
)

log = logging.getLogger(__name__)

SNAPSHOT_FAILURES = Counter(
    "snapshot_failures_total", "Snapshots that failed", ["camera", "reason"]
)
SNAPSHOTS_LEFT = Counter(
    "snapshots_left_at_stop_total",
    "Snapshots not taken because the stage stopped (their trigger comes again)",
    ["camera"],
)
TRIGGERS_COALESCED = Counter(
    "snapshot_triggers_coalesced_total",
    "Triggers acked without a snapshot of their own: their camera was busy and a newer "
    "trigger waiting for it covers them",
    ["camera"],
)
TRIGGERS_REFUSED = Counter(
    "snapshot_triggers_refused_total",
    "Triggers settled without asking their camera, whose circuit breaker was open",
    ["camera"],
)


class _StoppingError(Exception):
    """The stage stops: the trigger's remaining snapshots are not taken."""


class _WriteError(Exception):
    """The snapshot could not be written: its trigger must come again, not be settled."""

    def __init__(self, cause: OSError) -> None:
        super().__init__(str(cause))
        self.cause = cause


def _in_few_words(exc: Exception) -> str:
    """A failure for the bundle's manifest, free of addresses and credentials."""
    if isinstance(exc, CameraError):
        return exc.summary
    if isinstance(exc, CameraConfigError):
        return "not configured to be reached (see the log)"
    if isinstance(exc, OSError):
        return exc.strerror or type(exc).__name__
    return f"failed unexpectedly ({type(exc).__name__})"


class SnapshotStage(Stage):
    """Takes triggers, sends on snapshot messages (or done marks for parts that failed)."""

    stop_weight = 3.0
    prestart_pool = True  # a thread per camera, ready for the first burst

    def __init__(
        self,
        name: str,
        stop_event: threading.Event,
        *,
        cameras: CameraRegistry,
        root: Path,
        inbox: str | None = None,
        outbox: str | None = None,
        per_trigger: int = 1,
        interval: float = 1.0,
        waiting: int = 3,
        workers: int = 32,
        bundle_window: float = 5.0,
        stop_timeout: float = 5.0,
        budget: RestartBudget | None = None,
        on_fatal: Callable[[str, BaseException], None] | None = None,
    ) -> None:
        super().__init__(
            name,
            stop_event,
            inbox=inbox,
            outbox=outbox,
            workers=workers,
            stop_timeout=stop_timeout,
            budget=budget,
            on_fatal=on_fatal,
        )
        self.cameras = cameras
        self.root = root
        self.per_trigger = per_trigger
        self.interval = interval
        # A camera's own OUTPUT_n_SNAPSHOTS and OUTPUT_n_SNAPSHOT_INTERVAL, where set.
        self._bursts = {
            key: (
                device.SNAPSHOTS or per_trigger,
                interval if device.SNAPSHOT_INTERVAL is None else device.SNAPSHOT_INTERVAL,
            )
            for key, device in cameras.devices.items()
        }
        self.disk = WriteTrouble(f"snapshots under {root}")
        self.queues = TriggerQueues(waiting)
        self.bundles = BundleGrouping(bundle_window)
        self._fetch_started: dict[str, float] = {}  # monotonic; on the stage's thread

    def on_thread_start(self) -> None:
        super().on_thread_start()
        self._prepare_days()
        self.submit(self.cameras.warm_up)  # on the pool: an ONVIF camera is asked first

    def on_message(self, envelope: Envelope) -> None:
        trigger = TriggerMessage.read(envelope)
        if trigger.bundle_group is None:
            received = trigger.received if trigger.received is not None else time.time()
            bundle = self.bundles.bundle_for(
                trigger.sensor_key,
                trigger.traceparent,
                time.monotonic(),
                received=received,
                camera=trigger.camera_key,
            )
            trigger = dataclasses.replace(
                trigger,
                bundle_id=bundle.bundle_id,
                bundle_group=bundle.group,
                bundle_opened=bundle.opened,
                sensor_key=bundle.sensor,
            )
        self.send(self._camera_message(trigger).envelope())
        trouble = self._in_trouble(trigger.camera_key)
        if trouble:
            self._trim(trigger.camera_key)
        offer = self.queues.offer(trigger, trouble=trouble)
        if offer.coalesced is not None:
            self._coalesce(offer.coalesced)
        if offer.start is not None:
            self._start(offer.start)

    def troubles(self) -> list[str]:
        found = super().troubles()
        if disk := self.disk.current():
            found.append(disk)
        for key, breaker in self.cameras.breakers.items():
            if (when := self.cameras.held_off(key)) is not None:
                found.append(f"camera {key!r} failing: {breaker.last_error}; {when}")
        return found

    # --- each camera's turns, on the stage's thread ----------------------------------
    def _start(self, trigger: TriggerMessage | None) -> None:
        """Fetch ``trigger`` on the pool, or settle it at once if its camera's breaker is open."""
        while trigger is not None:
            key = trigger.camera_key
            if not self.should_keep_running():
                # Not settled: at stop the broker delivers these again.
                self._leave(key, self.burst(key)[0] * (1 + self.queues.waiting_for(key)))
                return
            try:
                if self.cameras.admits(key, trigger.device_params):
                    started = self._fetch_started[key] = time.monotonic()
                    # Overdue, the camera is in trouble: what waits for it is cut down.
                    self.call_later(
                        self._overdue_after(key), functools.partial(self._check_stuck, key, started)
                    )
                    self.submit(
                        self._fetch_all,
                        trigger,
                        then=functools.partial(self._fetch_ended, key),
                    )
                    return
                TRIGGERS_REFUSED.labels(key).inc()
                log.debug("%s: camera %s not asked: its breaker is open", self.name, key)
                why = (
                    self.cameras.breakers[key].last_error if key in self.cameras.breakers else None
                )
                self._settle(trigger, f"not asked: camera failing ({why or 'breaker open'})")
            except Exception as exc:  # a bug must not leave the camera busy for good
                self._fetch_started.pop(key, None)
                MESSAGES_REJECTED.labels(self.name, type(exc).__name__).inc()
                log.exception("%s: could not start a fetch of %s", self.name, key)
                self._settle(trigger, f"not asked: {type(exc).__name__}")
            trigger = self.queues.next(key)

    def _in_trouble(self, key: str) -> bool:
        """The camera's last snapshot failed, or the one under way is overdue."""
        breaker = self.cameras.breakers.get(key)
        if breaker is not None and breaker.failures > 0:
            return True
        started = self._fetch_started.get(key)
        return started is not None and time.monotonic() - started > self._overdue_after(key)

    def burst(self, key: str) -> tuple[int, float]:
        """How many snapshots a trigger takes from camera ``key``, and how far apart."""
        return self._bursts.get(key, (self.per_trigger, self.interval))

    def _overdue_after(self, key: str) -> float:
        """How long a trigger's fetches take at most when the camera answers: one attempt
        per part and the pauses between (a retry means the camera is in trouble anyway)."""
        parts, interval = self.burst(key)
        return self.cameras.timeout * parts + interval * (parts - 1)

    def _check_stuck(self, key: str, started: float) -> None:
        if self._fetch_started.get(key) == started:
            self._trim(key)

    def _trim(self, key: str) -> None:
        for trigger in self.queues.trim(key):
            self._coalesce(trigger)

    def _fetch_ended(self, key: str, finished: Future[None]) -> None:
        self._fetch_started.pop(key, None)
        if self._in_trouble(key):
            self._trim(key)
        error = None if finished.cancelled() else finished.exception()
        if error is not None:  # _fetch_all settles every part itself; this is a bug
            MESSAGES_REJECTED.labels(self.name, type(error).__name__).inc()
            log.error("%s: fetch of %s failed: %s", self.name, key, error, exc_info=error)
        self._start(self.queues.next(key))

    def _prepare_days(self) -> None:
        """The bundles' folder for today now and for the next day before it starts, on the pool."""
        now = time.time()
        self.call_later(next_preparation(now) + 1.0, self._prepare_days)
        self.submit(prepare_day_folders, self.root, now, then=self._prepared)

    def _prepared(self, finished: Future[list[Path]]) -> None:
        if finished.cancelled():
            return
        if (error := finished.exception()) is not None:
            # Only a head start lost: each bundle's first snapshot makes its folders.
            log.warning("%s: could not make the day's bundle folder: %s", self.name, error)
        else:
            log.debug("%s: made %d bundle folders ahead", self.name, len(finished.result()))

    def _coalesce(self, trigger: TriggerMessage) -> None:
        TRIGGERS_COALESCED.labels(trigger.camera_key).inc()
        log.debug("%s: a trigger for %s coalesced into a newer one", self.name, trigger.camera_key)
        # Not a failure of the camera: its frames were not asked for.
        self._settle(trigger, None)

    def _settle(self, trigger: TriggerMessage, why: str | None) -> None:
        """Settle a trigger whose camera is not asked, and end its burst in the bundle: failed
        for ``why``, or (None) covered by a newer trigger, so its frames were never due."""
        parts = self.burst(trigger.camera_key)[0]
        for _ in range(parts):
            self.send(done_envelope(trigger.settlement.split(parts)))
        ending = self._camera_message(trigger, ended=True, failure=why)
        if why is None:
            ending = dataclasses.replace(ending, unasked=parts)
        self.send(ending.envelope())

    def _camera_message(
        self,
        trigger: TriggerMessage,
        *,
        ended: bool = False,
        took: list[str] | None = None,
        failure: str | None = None,
    ) -> BundleCameraMessage:
        assert trigger.bundle_id
        assert trigger.bundle_group
        assert trigger.bundle_opened is not None
        return BundleCameraMessage(
            bundle_id=trigger.bundle_id,
            group=trigger.bundle_group,
            opened=trigger.bundle_opened,
            sensor=trigger.sensor_key,
            camera_key=trigger.camera_key,
            device_label=trigger.device_label or trigger.camera_key,
            expected=self.burst(trigger.camera_key)[0],
            ended=ended,
            took=took or [],
            failure=failure,
        )

    def finish(self, deadline: float) -> None:
        self.cameras.close(wait=False)  # back-off pauses end; attempts on the wire finish
        if not self.run_until(lambda: not self.pending_work, deadline):
            log.warning(
                "%s: %d fetch(es) still under way after %.1f s; their triggers come again",
                self.name,
                self.pending_work,
                self.stop_timeout,
            )

    def on_thread_close(self) -> None:
        self.cameras.close(wait=False)
        super().on_thread_close()

    # --- on the pool's threads ------------------------------------------------------
    def _fetch_all(self, trigger: TriggerMessage) -> None:
        """Take the trigger's snapshots, each ``interval`` after the start of the one before
        (at once if that one took longer); then end the camera's burst in its bundle."""
        key = trigger.camera_key
        parts, interval = self.burst(key)
        took: list[str] = []
        failure: str | None = None
        due = time.monotonic()
        for index in range(parts):
            try:
                wait = due - time.monotonic()
                if (
                    self.wait_for_stop(wait)
                    if index and wait > 0
                    else not self.should_keep_running()
                ):
                    raise _StoppingError
                due = time.monotonic() + interval
                snap = self._fetch_one(trigger, parts, index)
                took.append(snap.event_id)
                self.emit(snap.envelope())
            except _StoppingError:
                self._leave(key, parts - index)
                return  # the bundle is closed at the deadline, or at the next start
            except CameraAddressRefusedError as exc:
                # Asking again cannot help: the trigger's remaining parts settle with it.
                SNAPSHOT_FAILURES.labels(key, exc.reason).inc()
                log.error("trigger for %s settled without a snapshot: %s", key, exc)
                for _ in range(parts - index):
                    self.emit(done_envelope(trigger.settlement.split(parts)))
                failure = "its address from the trigger is outside CAMERA_NETWORKS"
                break
            except _WriteError as exc:
                # Not a done mark: that would ack a trigger whose event exists nowhere.
                SNAPSHOT_FAILURES.labels(key, "write_failed").inc()
                self.disk.failed(exc.cause)
                self.emit(done_envelope(trigger.settlement.split(parts), requeue=True))
                failure = f"not written ({exc.cause.strerror}); the trigger comes again"
                break
            except Exception as exc:  # never lose the ack bookkeeping to a bug
                reason = getattr(exc, "reason", type(exc).__name__)
                SNAPSHOT_FAILURES.labels(key, reason).inc()
                if isinstance(exc, CameraError | CameraConfigError | OSError):
                    log.error("snapshot %d/%d of %s failed: %s", index + 1, parts, key, exc)
                else:
                    log.exception("snapshot %d/%d of %s failed unexpectedly", index + 1, parts, key)
                # In few words: this goes on the wire and off-site, in the bundle's manifest.
                failure = f"snapshot {index + 1} of {parts}: {_in_few_words(exc)}"
                self.emit(done_envelope(trigger.settlement.split(parts)))
        self.emit(self._camera_message(trigger, ended=True, took=took, failure=failure).envelope())

    def _leave(self, key: str, count: int) -> None:
        SNAPSHOTS_LEFT.labels(key).inc(count)
        log.info("%s: stopping; %d snapshot(s) of %s not taken", self.name, count, key)

    def _fetch_one(self, trigger: TriggerMessage, parts: int, index: int) -> SnapshotMessage:
        key = trigger.camera_key
        try:
            still = self.cameras.capture(key, trigger.device_params)
        except (CameraError, CameraConfigError):
            # At stop a failure may be the stop itself (a back-off cut short): take it again.
            if not self.should_keep_running():
                raise _StoppingError from None
            raise
        image, taken = still.jpeg, still.taken
        event_id = trigger.event_id if index == 0 and trigger.event_id else new_id()
        if trigger.bundle_group:
            path = bundle_path(self.root, trigger.bundle_group, key, taken, event_id)
        else:
            path = snapshot_path(self.root, key, taken, event_id)
        before = self.cameras.before(key, trigger.received or taken) if index == 0 else []
        before_paths = [
            path.with_name(f"{path.stem}-before-{n}.jpg") for n in range(1, 1 + len(before))
        ]
        try:
            for still, still_path in zip(before, before_paths, strict=True):
                write_atomically(still_path, still.jpeg)
            write_atomically(path, image)  # last: an image on disk always has its stills
        except OSError as exc:
            raise _WriteError(exc) from exc
        self.disk.succeeded()
        SNAPSHOTS.labels(key, "fetch").inc()
        return SnapshotMessage(
            event_id=event_id,
            camera_key=key,
            device_label=trigger.device_label or key,
            image=image,
            taken=taken,
            storage_path=str(path),
            source="fetch",
            settlement=trigger.settlement.split(parts),
            triggered=trigger.received,
            pre_trigger_paths=[str(still_path) for still_path in before_paths],
            bundle_id=trigger.bundle_id,
            frame=index + 1,
            bundle_group=trigger.bundle_group,
        )
