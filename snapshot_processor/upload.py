"""Images pushed by cameras into the upload dir: watched, checked, kept, sent down the chain.

A watchdog observer reports files; this stage's thread takes each one once it is
complete (closed after writing and left alone for a moment, or, where the observer
cannot tell, its size stable), maps its folder to an input camera, checks it is a
whole JPEG of sane size, moves it to the snapshots folder under a unique name and
sends it on with ``source = upload``. Anything wrong goes to quarantine with a log
line and a counter; the stage goes on.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from prometheus_client import Counter
from watchdog.events import (
    FileClosedEvent,
    FileCreatedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver

from pylib.chain.settle import Settlement, ack_token
from pylib.chain.sockets import bind_pull, inproc
from pylib.chain.stage import Stage, Timer
from pylib.envelope import Envelope, EnvelopeError, new_id
from pylib.retry import RetryPolicy
from pylib.worker import RestartBudget
from snapshot_processor.camera import InvalidJPEGError, check_jpeg
from snapshot_processor.config import Device
from snapshot_processor.messages import SnapshotMessage
from snapshot_processor.snapshot import SNAPSHOTS
from snapshot_processor.storage import slug, snapshot_path

log = logging.getLogger(__name__)

UPLOADS_REJECTED = Counter("uploads_rejected_total", "Uploads put in quarantine", ["reason"])
UPLOADS_IGNORED = Counter("uploads_ignored_total", "Files in the upload dir left alone", ["reason"])

QUARANTINE_DIR = "quarantine"
# An upload being published is renamed to this prefix in its folder until the publisher
# has it in the outbox; then it is removed. Left over at start, it is taken again.
INFLIGHT_PREFIX = ".inflight-"
# A full outbox hands an upload back; it is taken again after this (growing) pause.
REQUEUE = RetryPolicy(first=2.0, maximum=30.0)


def camera_folder(location: str) -> str:
    """An input camera's upload folder name: its location, lower case, spaces removed."""
    return "".join(location.lower().split())


class UploadRejectedError(Exception):
    """An upload that cannot become an event; ``reason`` labels the counter."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


@dataclass
class _Pending:
    size: int
    changed: float
    closed: bool


class _Events(FileSystemEventHandler):
    """Runs on the observer's thread: only hands paths to the stage's thread."""

    def __init__(self, note: Callable[[str, bool], None]) -> None:
        self.note = note

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.is_directory:
            return
        if isinstance(event, FileMovedEvent):
            self.note(os.fsdecode(event.dest_path), True)
        elif isinstance(event, FileClosedEvent):
            self.note(os.fsdecode(event.src_path), True)
        elif isinstance(event, FileCreatedEvent | FileModifiedEvent):
            self.note(os.fsdecode(event.src_path), False)


class UploadStage(Stage):
    """Watches ``upload_dir`` and sends each complete, valid image to ``outbox``."""

    def __init__(
        self,
        name: str,
        stop_event: threading.Event,
        *,
        root: Path,
        upload_dir: Path,
        cameras: Iterable[Device],
        outbox: str | None = None,
        inbox: str | None = None,
        ack_inbox: str | None = None,
        max_bytes: int = 20 * 1024 * 1024,
        settle: float = 0.1,
        stable: float = 2.0,
        create_dirs: Iterable[str] = (),
        observer_factory: Callable[[], BaseObserver] = Observer,
        budget: RestartBudget | None = None,
        on_fatal: Callable[[str, BaseException], None] | None = None,
    ) -> None:
        super().__init__(
            name, stop_event, inbox=inbox, outbox=outbox, budget=budget, on_fatal=on_fatal
        )
        self.root = root
        self.upload_dir = upload_dir
        self.cameras = {camera_folder(device.LOCATION): device for device in cameras}
        self.ack_inbox = ack_inbox or inproc(f"{name}-acks")
        self.max_bytes = max_bytes
        self.settle = settle
        self.stable = stable
        self.create_dirs = list(create_dirs)
        self.observer_factory = observer_factory
        self._pending: dict[Path, _Pending] = {}
        self._observer: BaseObserver | None = None
        # In-flight upload -> the snapshot copy its event points to.
        self._inflight: dict[Path, Path] = {}
        self._checks: dict[Path, Timer] = {}
        self._requeue = REQUEUE.backoff()

    def on_thread_open(self) -> None:
        super().on_thread_open()
        # Sockets live as long as the thread: a restart must not rebind the ack inbox.
        self.watch(bind_pull(self.ack_inbox), self._on_ack)

    def _observed(self, path: str, closed: bool) -> None:
        """From the observer's thread: note the file on the stage's thread."""
        self.call_soon_threadsafe(partial(self._note, Path(path), closed))

    def on_message(self, envelope: Envelope) -> None:
        raise ValueError(f"the upload stage takes no {envelope.kind!r} messages")

    def on_thread_start(self) -> None:
        super().on_thread_start()
        self._checks.clear()  # a crashed attempt's timers are void; the scan below notes all
        self.upload_dir.mkdir(parents=True, exist_ok=True)
        for folder in [*self.create_dirs, *self.cameras]:
            (self.upload_dir / folder).mkdir(parents=True, exist_ok=True)
        observer = self.observer_factory()
        observer.schedule(_Events(self._observed), str(self.upload_dir), recursive=True)
        observer.start()
        self._observer = observer
        # Files that arrived while we were not running: taken once their size is stable.
        for path in self.upload_dir.rglob("*"):
            if path.is_file():
                self._note(path, closed=False)

    def on_thread_stop(self) -> None:
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(5)
            self._observer = None
        super().on_thread_stop()

    # Complete files not yet taken at stop stay in the upload dir and are found at next start.

    def _note(self, path: Path, closed: bool) -> None:
        try:
            size = path.stat().st_size
        except OSError:
            self._pending.pop(path, None)  # gone already (moved away by us, or removed)
            return
        now = time.monotonic()
        previous = self._pending.get(path)
        pending = self._pending[path] = _Pending(
            size, now, closed or bool(previous and previous.closed and previous.size == size)
        )
        # Look again once it may be complete: settled after closing, else stable in size.
        self._check_later(path, self.settle if pending.closed else self.stable)

    def _check_later(self, path: Path, delay: float) -> None:
        # One check per file: a busy upload reports thousands of writes.
        earlier = self._checks.pop(path, None)
        if earlier is not None:
            earlier.cancel()
        self._checks[path] = self.call_later(delay, partial(self._check, path))

    def _check(self, path: Path) -> None:
        """Take the file if it is complete: closed and settled, or unchanged for ``stable``."""
        self._checks.pop(path, None)
        pending = self._pending.get(path)
        if pending is None:
            return
        age = time.monotonic() - pending.changed
        if not (pending.closed and age >= self.settle) and age < self.stable:
            self._check_later(path, (self.settle if pending.closed else self.stable) - age)
            return
        try:
            size = path.stat().st_size
        except OSError:
            del self._pending[path]  # a partial upload the FTP server removed
            return
        if size != pending.size:
            self._pending[path] = _Pending(size, time.monotonic(), False)
            self._check_later(path, self.stable)
            return
        del self._pending[path]
        self._take(path)

    def _on_ack(self, data: bytes) -> None:
        """The publisher has an upload's event in its outbox: the upload can go."""
        try:
            body = Envelope.unpack(data).body
            inflight = Path(body["path"])
        except (EnvelopeError, KeyError, TypeError) as exc:
            log.error("upload: dropped a malformed ack: %s", exc)
            return
        snapshot = self._inflight.pop(inflight, None)
        if body.get("requeue"):
            # The outbox was full: nothing was stored, so try again in a while.
            if snapshot is not None:
                snapshot.unlink(missing_ok=True)
            self.call_later(self._requeue.next(), partial(self._take, inflight))
            return
        self._requeue.reset()
        inflight.unlink(missing_ok=True)

    def _take(self, path: Path) -> None:
        try:
            relative = path.relative_to(self.upload_dir)
        except ValueError:
            return
        if path in self._inflight:
            return  # its event is on its way already
        hidden = [part for part in relative.parts if part.startswith(".")]
        if hidden and not (len(hidden) == 1 and relative.name.startswith(INFLIGHT_PREFIX)):
            # Hidden names are how many uploaders write before renaming into place.
            UPLOADS_IGNORED.labels("hidden").inc()
            log.info("upload: leaving hidden file %s alone", relative)
            return
        device = self.cameras.get(relative.parts[0]) if len(relative.parts) > 1 else None
        if device is None:
            UPLOADS_IGNORED.labels("no_camera").inc()
            log.warning("upload: %s is in no input camera's folder; left alone", relative)
            return
        try:
            self._accept(path, device)
        except UploadRejectedError as exc:
            self._quarantine(path, relative, exc.reason, str(exc))
        except OSError as exc:
            UPLOADS_REJECTED.labels("io_error").inc()
            log.error("upload: cannot take %s: %s", relative, exc.strerror or exc)

    def _accept(self, path: Path, device: Device) -> None:
        size = path.stat().st_size
        if size == 0:
            raise UploadRejectedError("empty", "zero bytes")
        if size > self.max_bytes:
            raise UploadRejectedError("too_large", f"{size} bytes, more than {self.max_bytes}")
        image = path.read_bytes()
        try:
            check_jpeg(image)
        except InvalidJPEGError as exc:
            raise UploadRejectedError("not_a_jpeg", str(exc)) from None
        taken = path.stat().st_mtime
        event_id = new_id()
        target = snapshot_path(self.root, device.key, time.time(), event_id)
        target.parent.mkdir(parents=True, exist_ok=True)
        # Renamed aside, so a re-upload under the same name is a new file and a new event;
        # kept until the publisher has the event in its outbox.
        inflight = path
        if not path.name.startswith(INFLIGHT_PREFIX):
            inflight = path.with_name(f"{INFLIGHT_PREFIX}{event_id[:12]}-{path.name}")
            os.replace(path, inflight)
        try:
            os.link(inflight, target)
        except OSError:
            target.write_bytes(image)  # another file system: a copy
        self._inflight[inflight] = target
        SNAPSHOTS.labels(device.key, "upload").inc()
        log.info("upload: %s from %s -> event %s", path.name, device.key, event_id)
        self.send(
            SnapshotMessage(
                event_id=event_id,
                camera_key=device.key,
                device_label=device.LOCATION,
                image=image,
                taken=taken,
                storage_path=str(target),
                source="upload",
                settlement=Settlement(ack_token(self.ack_inbox, path=str(inflight))),
            ).envelope()
        )

    def _quarantine(self, path: Path, relative: Path, reason: str, detail: str) -> None:
        UPLOADS_REJECTED.labels(reason).inc()
        target = (
            self.root
            / QUARANTINE_DIR
            / f"{time.strftime('%Y%m%dT%H%M%S')}_{new_id()[:8]}_{slug(path.name)}"
        )
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(path, target)
        except OSError as exc:
            log.error(
                "upload: %s rejected (%s) but could not be quarantined: %s",
                relative,
                detail,
                exc.strerror,
            )
            return
        log.warning("upload: %s rejected (%s: %s); moved to %s", relative, reason, detail, target)
