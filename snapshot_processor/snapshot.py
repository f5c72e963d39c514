"""The snapshot stage: for each trigger, fetch the camera's JPEGs, keep them, pass them on.

Fetches for different cameras run at once on a thread pool; the stage's own thread owns
the sockets and forwards what the pool produced.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import zmq
from prometheus_client import Counter

from pylib.amqp_publisher import done_envelope
from pylib.envelope import Envelope, EnvelopeError, new_id
from pylib.relay import POLL_MS, Sender
from pylib.worker import RestartBudget, Worker
from pylib.zmqctx import shared_context
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
        self._results: queue.SimpleQueue[Envelope] = queue.SimpleQueue()
        self._pool: ThreadPoolExecutor | None = None
        self._pull: zmq.Socket[bytes] | None = None
        self._sender: Sender | None = None

    def on_thread_start(self) -> None:
        self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix=f"{self.name}-fetch")
        self._pull = shared_context().socket(zmq.PULL)
        self._pull.bind(self.inbox)
        self._sender = Sender(self.outbox)

    def on_thread_stop(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=False)
            self._pool = None
        self._forward()
        if self._sender is not None:
            self._sender.close()
            self._sender = None
        if self._pull is not None:
            self._pull.close(linger=0)
            self._pull = None
        self.cameras.close()

    def work(self) -> None:
        pull = self._pull
        assert pull is not None
        while self.should_keep_running():
            if pull.poll(POLL_MS // 2):
                self._take(pull.recv())
            self._forward()
        while True:  # what upstream handed over before the stop
            try:
                self._take(pull.recv(zmq.NOBLOCK))
            except zmq.Again:
                break
        assert self._pool is not None
        self._pool.shutdown(wait=True)
        self._forward()

    def _take(self, data: bytes) -> None:
        try:
            envelope = Envelope.unpack(data)
        except EnvelopeError as exc:
            log.error("%s: dropped a malformed message: %s", self.name, exc)
            return
        if envelope.kind != TRIGGER_KIND:
            log.error("%s: unexpected message kind %r", self.name, envelope.kind)
            return
        assert self._pool is not None
        self._pool.submit(self._fetch_all, envelope.body)

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
        key, ack, parts = trigger["camera_key"], trigger.get("ack"), self.per_trigger
        for index in range(parts):
            if index:
                time.sleep(self.interval)
            try:
                self._results.put(self._fetch_one(trigger, parts))
            except (CameraError, CameraConfigError, OSError) as exc:
                reason = getattr(exc, "reason", type(exc).__name__)
                SNAPSHOT_FAILURES.labels(key, reason).inc()
                log.error("snapshot %d/%d of %s failed: %s", index + 1, parts, key, exc)
                self._results.put(done_envelope(ack, parts))
            except Exception as exc:  # never lose the ack bookkeeping to a bug
                SNAPSHOT_FAILURES.labels(key, type(exc).__name__).inc()
                log.exception("snapshot %d/%d of %s failed unexpectedly", index + 1, parts, key)
                self._results.put(done_envelope(ack, parts))

    def _fetch_one(self, trigger: dict[str, Any], parts: int) -> Envelope:
        key = trigger["camera_key"]
        client = self.cameras.client(key, trigger.get("device_params"))
        image = client.snapshot()
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
