"""Snapshots people ask for (the HTTP API's "take a snapshot now", Home Assistant's button):
triggers sent into the chain."""

from __future__ import annotations

import threading
import time

from pylib.chain.envelope import new_id
from pylib.chain.sockets import Sender
from pylib.observe.redact import redact
from snapshot_processor.camera.registry import CameraRegistry
from snapshot_processor.contract.messages import TriggerMessage


class SnapshotRefusedError(Exception):
    """A snapshot asked for that cannot be taken now: 503 while the daemon is stopping or
    busy, 409 while the camera's address is not known (the HTTP status that says so)."""

    def __init__(self, message: str, status: int = 503) -> None:
        super().__init__(message)
        self.status = status


class SnapshotRequests:
    """Triggers sent into the chain from request threads (or one other thread), with no ack and their event id chosen
    here; the one socket is used under a lock (the memory barrier ZeroMQ asks for)."""

    def __init__(self, inbox: str, labels: dict[str, str], cameras: CameraRegistry) -> None:
        self.inbox = inbox
        self.labels = labels
        self.cameras = cameras
        self._lock = threading.Lock()
        self._sender: Sender | None = None
        self._closed = False

    def take(self, camera_key: str) -> str:
        """Send a trigger for ``camera_key``; its first event id."""
        if self.cameras.known_spec(camera_key) is None:
            raise SnapshotRefusedError(
                "the camera's address is not known yet: it has no OUTPUT_n_ADDRESS and "
                "comes with its triggers, of which none has arrived since the start",
                409,
            )
        breaker = self.cameras.breaker(camera_key)
        wait = breaker.retry_in()
        if wait > 0:
            # Its trigger would be settled untried: say why now, in the camera's own words.
            raise SnapshotRefusedError(
                redact(
                    f"the camera is down ({breaker.last_error or 'failing'}); it is asked "
                    f"again in {wait:.0f} s"
                )
            )
        now = time.time()
        trigger = TriggerMessage(
            camera_key=camera_key,
            device_label=self.labels.get(camera_key, camera_key),
            timestamp=int(now),
            received=now,
            event_id=new_id(),
        )
        with self._lock:
            if self._closed:
                raise SnapshotRefusedError("the daemon is stopping")
            if self._sender is None:
                self._sender = Sender(self.inbox, linger=0)
            if not self._sender.send(trigger.envelope(), block=False):
                raise SnapshotRefusedError("the snapshot stage is busy; try again")
        assert trigger.event_id is not None
        return trigger.event_id

    def close(self) -> None:
        """Close the socket (the HTTP server has stopped: no request comes any more)."""
        with self._lock:
            self._closed = True
            if self._sender is not None:
                self._sender.close()
                self._sender = None
