"""The snapshot stage: for each trigger, fetch the camera's JPEGs, keep them, pass them on.

Fetches for different cameras run at once on the stage's pool; each snapshot goes on
the moment it is on disk. Every part of a trigger ends as a snapshot or a done mark,
whatever fails, so its delivery is always settled. A snapshot that cannot be written
(a full disk) is not settled as done: a requeue mark gives its trigger back to the
broker, to come again after a pause, and the trouble shows in health.

Stopping takes at most ``stop_timeout``: camera back-off pauses and the pause between a
trigger's snapshots end at once, fetches in progress get until the deadline, and no new
fetch starts. A trigger whose snapshots were not all taken is left without its last
part, so it is never acked: the broker delivers it again (an image already sent for it
is then sent again; nothing is lost).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

from prometheus_client import Counter

from pylib.chain.settle import done_envelope
from pylib.chain.stage import Stage
from pylib.envelope import Envelope, new_id
from pylib.worker import RestartBudget
from snapshot_processor.camera import CameraError
from snapshot_processor.cameras import CameraConfigError, CameraRegistry
from snapshot_processor.messages import SnapshotMessage, TriggerMessage
from snapshot_processor.storage import WriteTrouble, snapshot_path, write_atomically

log = logging.getLogger(__name__)

SNAPSHOTS = Counter("snapshots_total", "Snapshots fetched and kept", ["camera", "source"])
SNAPSHOT_FAILURES = Counter(
    "snapshot_failures_total", "Snapshots that failed", ["camera", "reason"]
)
SNAPSHOTS_LEFT = Counter(
    "snapshots_left_at_stop_total",
    "Snapshots not taken because the stage stopped (their trigger comes again)",
    ["camera"],
)


class _StoppingError(Exception):
    """The stage stops: the trigger's remaining snapshots are not taken."""


class _WriteError(Exception):
    """The snapshot could not be written: its trigger must come again, not be settled."""

    def __init__(self, cause: OSError) -> None:
        super().__init__(str(cause))
        self.cause = cause


class SnapshotStage(Stage):
    """Takes triggers, sends on snapshot messages (or done marks for parts that failed)."""

    stop_weight = 3.0

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
        workers: int = 32,
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
        self.disk = WriteTrouble(f"snapshots under {root}")

    def troubles(self) -> list[str]:
        trouble = self.disk.current()
        return [*super().troubles(), *([trouble] if trouble else [])]

    def on_message(self, envelope: Envelope) -> None:
        trigger = TriggerMessage.read(envelope)
        self.submit(self._fetch_all, trigger)

    def finish(self, deadline: float) -> None:
        # Back-off pauses end now; an attempt on the wire finishes (or times out) first.
        self.cameras.close(wait=False)
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
        key, parts = trigger.camera_key, self.per_trigger
        for index in range(parts):
            # At stop the pause ends at once and no further snapshot starts.
            if self.wait_for_stop(self.interval) if index else not self.should_keep_running():
                self._leave(key, parts - index)
                return
            try:
                self.emit(self._fetch_one(trigger, parts).envelope())
            except _StoppingError:
                self._leave(key, parts - index)
                return
            except _WriteError as exc:
                # Not a done mark: that would ack a trigger whose event exists nowhere.
                SNAPSHOT_FAILURES.labels(key, "write_failed").inc()
                self.disk.failed(exc.cause)
                self.emit(done_envelope(trigger.settlement.split(parts), requeue=True))
                return
            except Exception as exc:  # never lose the ack bookkeeping to a bug
                reason = getattr(exc, "reason", type(exc).__name__)
                SNAPSHOT_FAILURES.labels(key, reason).inc()
                if isinstance(exc, CameraError | CameraConfigError | OSError):
                    log.error("snapshot %d/%d of %s failed: %s", index + 1, parts, key, exc)
                else:
                    log.exception("snapshot %d/%d of %s failed unexpectedly", index + 1, parts, key)
                self.emit(done_envelope(trigger.settlement.split(parts)))

    def _leave(self, key: str, count: int) -> None:
        SNAPSHOTS_LEFT.labels(key).inc(count)
        log.info("%s: stopping; %d snapshot(s) of %s not taken", self.name, count, key)

    def _fetch_one(self, trigger: TriggerMessage, parts: int) -> SnapshotMessage:
        key = trigger.camera_key
        try:
            image = self.cameras.snapshot(key, trigger.device_params)
        except (CameraError, CameraConfigError):
            # At stop a failure may be the stop itself (a back-off cut short): take it again.
            if not self.should_keep_running():
                raise _StoppingError from None
            raise
        taken = time.time()
        event_id = new_id()
        path = snapshot_path(self.root, key, taken, event_id)
        try:
            write_atomically(path, image)
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
        )
