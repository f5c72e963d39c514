"""The snapshot stage: for each trigger, fetch the camera's JPEGs, keep them, pass them on.

Fetches for different cameras run at once on a thread pool; the stage's own thread owns
the sockets and forwards what the pool produced.

Stopping takes at most ``stop_timeout``: camera back-off pauses and the pause between a
trigger's snapshots end at once, fetches in progress get until the deadline, and no new
fetch starts. A trigger whose snapshots were not all taken is left without its last
part, so it is never acked: the broker delivers it again (an image already sent for it
is then sent again; nothing is lost). A trigger that was fetched and failed produces its
``done`` mark as usual.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_for_futures
from pathlib import Path
from typing import Any

import zmq
from prometheus_client import Counter

from pylib.amqp_publisher import done_envelope
from pylib.envelope import Envelope, new_id
from pylib.relay import POLL_MS, Sender, bind_pull, drain, unpack_or_reject
from pylib.worker import RestartBudget, Worker
from snapshot_processor.camera import CameraError
from snapshot_processor.cameras import CameraConfigError, CameraRegistry
from snapshot_processor.storage import snapshot_path, write_atomically

log = logging.getLogger(__name__)

TRIGGER_KIND = "trigger"
SNAPSHOT_KIND = "snapshot"

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


def snapshot_envelope(
    *,
    event_id: str,
    camera_key: str,
    device_label: str,
    image: bytes,
    taken: float,
    storage_path: Path,
    source: str,
    ack: dict[str, Any] | None,
    parts: int,
) -> Envelope:
    """What the snapshot stage passes on: one image with where it came from."""
    return Envelope(
        SNAPSHOT_KIND,
        {
            "event_id": event_id,
            "camera_key": camera_key,
            "device_label": device_label,
            "image": image,
            "taken": taken,
            "storage_path": str(storage_path),
            "source": source,
            "ack": ack,
            "parts": parts,
        },
        event_id,
    )


class SnapshotStage(Worker):
    """Pulls triggers from ``inbox``, pushes snapshot envelopes (or 'done' marks) to ``outbox``."""

    def __init__(
        self,
        name: str,
        stop_event: threading.Event,
        *,
        cameras: CameraRegistry,
        root: Path,
        inbox: str,
        outbox: str,
        per_trigger: int = 1,
        interval: float = 1.0,
        workers: int = 32,
        stop_timeout: float = 5.0,
        budget: RestartBudget | None = None,
        on_fatal: Callable[[str, BaseException], None] | None = None,
    ) -> None:
        super().__init__(name, stop_event, budget=budget, on_fatal=on_fatal)
        self.cameras = cameras
        self.root = root
        self.inbox = inbox
        self.outbox = outbox
        self.per_trigger = per_trigger
        self.interval = interval
        self.workers = workers
        self.stop_timeout = stop_timeout
        # Set once the PULL socket is bound, so upstream can start sending.
        self.ready = threading.Event()
        self._results: queue.SimpleQueue[Envelope] = queue.SimpleQueue()
        self._pool: ThreadPoolExecutor | None = None
        # Fetches not finished yet, of this and of earlier attempts (a crash leaves them running).
        self._futures: set[Future[None]] = set()
        self._pull: zmq.Socket[bytes] | None = None
        self._sender: Sender | None = None

    def on_thread_open(self) -> None:
        self._pull = bind_pull(self.inbox)
        self._sender = Sender(self.outbox)
        self.ready.set()

    def on_thread_start(self) -> None:
        self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix=f"{self.name}-fetch")

    def on_thread_stop(self) -> None:
        # After a crash, fetches under way go on; the next attempt forwards their results.
        if self._pool is not None:
            self._pool.shutdown(wait=False)
            self._pool = None

    def on_thread_close(self) -> None:
        self.ready.clear()
        self.cameras.close(wait=False)
        self._forward()
        if self._sender is not None:
            self._sender.close()
            self._sender = None
        if self._pull is not None:
            self._pull.close(linger=0)
            self._pull = None

    def work(self) -> None:
        pull = self._pull
        assert pull is not None
        while self.should_keep_running():
            if pull.poll(POLL_MS // 2):
                self._take(pull.recv())
            self._forward()
        self._finish(pull)

    def _finish(self, pull: zmq.Socket[bytes]) -> None:
        """Stop within ``stop_timeout``; what cannot finish leaves its trigger unacked."""
        deadline = time.monotonic() + self.stop_timeout
        # Triggers upstream handed over but not started: their deliveries come again.
        left = sum(1 for _ in drain(pull))
        if left:
            log.info("%s: %d trigger(s) not fetched at stop; they come again", self.name, left)
        # Back-off pauses end now; an attempt on the wire finishes (or times out) first.
        self.cameras.close(wait=False)
        while self._futures:
            self._forward()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            done, _ = wait_for_futures(self._futures, timeout=min(remaining, POLL_MS / 1000))
            self._futures -= done
        assert self._pool is not None
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._forward()
        if self._futures:
            log.warning(
                "%s: %d fetch(es) still under way after %.1f s; their triggers come again",
                self.name,
                sum(not future.done() for future in self._futures),
                self.stop_timeout,
            )

    def _take(self, data: bytes) -> None:
        envelope = unpack_or_reject(data, self.name)
        if envelope is None:
            return
        if envelope.kind != TRIGGER_KIND:
            log.error("%s: unexpected message kind %r", self.name, envelope.kind)
            return
        assert self._pool is not None
        self._futures = {future for future in self._futures if not future.done()}
        self._futures.add(self._pool.submit(self._fetch_all, envelope.body))

    def _forward(self) -> None:
        if self._sender is None:
            return
        while True:
            try:
                envelope = self._results.get_nowait()
            except queue.Empty:
                return
            self._sender.send(envelope)

    # --- on the pool's threads ------------------------------------------------------
    def _fetch_all(self, trigger: dict[str, Any]) -> None:
        key, ack, parts = trigger.get("camera_key"), trigger.get("ack"), self.per_trigger
        if not isinstance(key, str):
            SNAPSHOT_FAILURES.labels("", "no_camera_key").inc()
            log.error("%s: a trigger without a camera key", self.name)
            self._results.put(done_envelope(ack, parts))
            return
        for index in range(parts):
            # At stop the pause ends at once and no further snapshot starts.
            if self.wait_for_stop(self.interval) if index else not self.should_keep_running():
                self._leave(key, parts - index)
                return
            try:
                self._results.put(self._fetch_one(key, trigger, parts))
            except _StoppingError:
                self._leave(key, parts - index)
                return
            except Exception as exc:  # never lose the ack bookkeeping to a bug
                reason = getattr(exc, "reason", type(exc).__name__)
                SNAPSHOT_FAILURES.labels(key, reason).inc()
                if isinstance(exc, CameraError | CameraConfigError | OSError):
                    log.error("snapshot %d/%d of %s failed: %s", index + 1, parts, key, exc)
                else:
                    log.exception("snapshot %d/%d of %s failed unexpectedly", index + 1, parts, key)
                self._results.put(done_envelope(ack, parts))

    def _leave(self, key: str, count: int) -> None:
        SNAPSHOTS_LEFT.labels(key).inc(count)
        log.info("%s: stopping; %d snapshot(s) of %s not taken", self.name, count, key)

    def _fetch_one(self, key: str, trigger: dict[str, Any], parts: int) -> Envelope:
        try:
            image = self.cameras.snapshot(key, trigger.get("device_params"))
        except (CameraError, CameraConfigError):
            # At stop a failure may be the stop itself (a back-off cut short): take it again.
            if not self.should_keep_running():
                raise _StoppingError from None
            raise
        taken = time.time()
        event_id = new_id()
        path = snapshot_path(self.root, key, taken, event_id)
        write_atomically(path, image)
        SNAPSHOTS.labels(key, "fetch").inc()
        return snapshot_envelope(
            event_id=event_id,
            camera_key=key,
            device_label=trigger.get("device_label") or key,
            image=image,
            taken=taken,
            storage_path=path,
            source="fetch",
            ack=trigger.get("ack"),
            parts=parts,
        )
