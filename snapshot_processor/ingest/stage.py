"""Images pushed by cameras into the upload dir: watched, checked, kept, sent down the chain.

Each file is taken once complete (closed and settled, or its size stable), mapped to a
camera by its folder and sent on; anything wrong goes to quarantine, logged and counted."""

from __future__ import annotations

import errno
import logging
import os
import stat
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

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

from pylib.chain.envelope import Envelope, new_id
from pylib.chain.settle import AckInbox, Settlement, ack_token
from pylib.chain.sockets import bind_pull, inproc
from pylib.chain.stage import Stage, Timer
from pylib.observe.logs import printable
from pylib.retry import RetryPolicy
from pylib.runtime.worker import RestartBudget
from snapshot_processor.camera.jpeg import jpeg_problem
from snapshot_processor.config import Device
from snapshot_processor.contract.messages import SnapshotMessage
from snapshot_processor.ingest.settings import IngestSettings
from snapshot_processor.storage.files import (
    QUARANTINE_DIR,
    SNAPSHOTS,
    keep_linked,
    slug,
    snapshot_path,
)

log = logging.getLogger(__name__)

UPLOADS_REJECTED = Counter("uploads_rejected_total", "Uploads put in quarantine", ["reason"])
UPLOADS_IGNORED = Counter("uploads_ignored_total", "Files in the upload dir left alone", ["reason"])
UPLOADS_REMOVED = Counter(
    "uploads_removed_total", "Files removed to bound the upload dir and quarantine", ["reason"]
)

# An upload is renamed to this prefix until its event is in the outbox (taken again at start).
INFLIGHT_PREFIX = ".inflight-"
# Open only the entry itself: a symlink fails (ELOOP) and a FIFO does not block.
_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


@dataclass(frozen=True)
class DiskBounds:
    """Bounds on files nobody takes: strays (outside camera folders, or hidden) go after
    ``stray_max_age`` s or, oldest first, beyond ``stray_max_bytes``; likewise the quarantine."""

    stray_max_age: float = 86_400.0
    stray_max_bytes: int = 100 * 1024 * 1024
    quarantine_max_bytes: int = 100 * 1024 * 1024
    sweep_every: float = 60.0


def camera_folder(location: str) -> str:
    """An input camera's upload folder name: its location, lower case, spaces removed."""
    return "".join(location.lower().split())


class UploadRejectedError(Exception):
    """An upload that cannot become an event; ``reason`` labels the counter."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


def read_upload(path: Path, max_bytes: int) -> tuple[bytes, os.stat_result]:
    """The bytes of the file at ``path`` and its ``fstat``, read through the entry itself:
    never a link (even one swapped in after an ``lstat``), only a regular file of 1 to
    ``max_bytes`` bytes; anything else raises :class:`UploadRejectedError`."""
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UploadRejectedError("symlink", "a link") from None
        raise
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise UploadRejectedError("not_a_regular_file", "not a regular file")
        if info.st_size == 0:
            raise UploadRejectedError("empty", "zero bytes")
        if info.st_size > max_bytes:
            raise UploadRejectedError("too_large", f"{info.st_size} bytes, more than {max_bytes}")
        chunks = []
        left = max_bytes + 1  # a file still growing is caught, not read without end
        while left > 0 and (chunk := os.read(fd, min(left, 1 << 20))):
            chunks.append(chunk)
            left -= len(chunk)
    finally:
        os.close(fd)
    image = b"".join(chunks)
    if len(image) > max_bytes:
        raise UploadRejectedError("too_large", f"more than {max_bytes} bytes")
    return image, info


@dataclass
class _Pending:
    size: int
    changed: float
    closed: bool


@dataclass(order=True)
class _Kept:
    """A file the sweep may remove: oldest first."""

    mtime: float
    size: int
    path: Path = field(compare=False)


class _Events(FileSystemEventHandler):
    """Runs on the observer's thread: only hands paths to the stage's thread."""

    def __init__(self, note: Callable[[str, bool], None]) -> None:
        self.note = note

    def on_any_event(self, event: FileSystemEvent) -> None:
        # A symlink, even to a folder, is reported as a file (no IN_ISDIR): it is noted.
        if event.is_directory:
            return
        if isinstance(event, FileMovedEvent):
            self.note(os.fsdecode(event.dest_path), True)
        elif isinstance(event, FileClosedEvent):
            self.note(os.fsdecode(event.src_path), True)
        elif isinstance(event, FileCreatedEvent | FileModifiedEvent):
            self.note(os.fsdecode(event.src_path), False)


class IngestStage(Stage):
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
        bounds: DiskBounds | None = None,
        requeue: RetryPolicy = IngestSettings.REQUEUE,
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
        # Acks come back on the publisher's thread; each is handled on this stage's.
        self.acks = AckInbox(
            self.ack_inbox, lambda body: self.call_soon_threadsafe(partial(self._on_ack, body))
        )
        self.max_bytes = max_bytes
        self.settle = settle
        self.stable = stable
        self.create_dirs = list(create_dirs)
        self.bounds = bounds or DiskBounds()
        self._real_upload_dir = upload_dir
        self._sweep_timer: Timer | None = None
        self.observer_factory = observer_factory
        self._pending: dict[Path, _Pending] = {}
        self._observer: BaseObserver | None = None
        self._inflight: dict[Path, Path] = {}  # in-flight upload -> its event's snapshot copy
        self._checks: dict[Path, Timer] = {}
        self._requeue = requeue.backoff()

    def on_thread_open(self) -> None:
        super().on_thread_open()
        # Sockets live as long as the thread: a restart must not rebind the ack inbox.
        self.acks.open()
        self.watch(bind_pull(self.ack_inbox), self.acks.take)

    def on_thread_close(self) -> None:
        self.acks.close()
        super().on_thread_close()

    def _observed(self, path: str, closed: bool) -> None:
        self.call_soon_threadsafe(partial(self._note, Path(path), closed))

    def on_message(self, envelope: Envelope) -> None:
        raise ValueError(f"the ingest stage takes no {envelope.kind!r} messages")

    def on_thread_start(self) -> None:
        super().on_thread_start()
        self._checks.clear()  # a crashed attempt's timers are void; the scan below notes all
        self._sweep_timer = None
        self.upload_dir.mkdir(parents=True, exist_ok=True)
        # Every file taken must lie below this real path, reached through no link.
        self._real_upload_dir = Path(os.path.realpath(self.upload_dir))
        for folder in [*self.create_dirs, *self.cameras]:
            (self.upload_dir / folder).mkdir(parents=True, exist_ok=True)
        observer = self.observer_factory()
        observer.schedule(_Events(self._observed), str(self.upload_dir), recursive=True)
        observer.start()
        self._observer = observer
        # Files that came while we were not running (links noted and removed, never followed).
        for top, folders, files in os.walk(self.upload_dir, followlinks=False):
            for name in [*files, *(f for f in folders if os.path.islink(os.path.join(top, f)))]:
                self._note(Path(top, name), closed=False)
        self._sweep()

    def on_thread_stop(self) -> None:
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(5)
            self._observer = None
        super().on_thread_stop()

    def _note(self, path: Path, closed: bool) -> None:
        try:
            info = os.lstat(path)
        except OSError:
            self._pending.pop(path, None)  # gone already (moved away by us, or removed)
            return
        if not stat.S_ISREG(info.st_mode):
            self._pending.pop(path, None)
            self._take(path)  # a link or a special file: nothing to wait for
            return
        size = info.st_size
        now = time.monotonic()
        previous = self._pending.get(path)
        pending = self._pending[path] = _Pending(
            size, now, closed or bool(previous and previous.closed and previous.size == size)
        )
        self._check_later(path, self.settle if pending.closed else self.stable)

    def _check_later(self, path: Path, delay: float) -> None:
        # One check per file: a busy upload reports thousands of writes.
        if (earlier := self._checks.pop(path, None)) is not None:
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
            size = os.lstat(path).st_size
        except OSError:
            del self._pending[path]  # a partial upload the FTP server removed
            return
        if size != pending.size:
            self._pending[path] = _Pending(size, time.monotonic(), False)
            self._check_later(path, self.stable)
            return
        del self._pending[path]
        self._take(path)

    def _on_ack(self, body: dict[str, Any]) -> None:
        """The publisher has an upload's event in its outbox: the upload can go."""
        try:
            inflight = Path(body["path"])
        except (KeyError, TypeError) as exc:
            log.error("ingest: dropped a malformed ack: %s", exc)
            return
        self._inflight.pop(inflight, None)
        if body.get("requeue"):
            # The outbox was full: try again later; the snapshot copy stays for retention.
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
        shown = printable(str(relative))
        real = os.path.realpath(self.upload_dir / relative.parent)
        if real != os.path.normpath(self._real_upload_dir / relative.parent):  # through a link
            UPLOADS_REJECTED.labels("link").inc()
            log.warning("upload: %s lies behind a link out of the upload dir; not read", shown)
            return
        try:
            info = os.lstat(path)
        except OSError:
            return  # gone meanwhile
        if not stat.S_ISREG(info.st_mode):
            self._remove_special(path, shown, info.st_mode)
            return
        hidden = [part for part in relative.parts if part.startswith(".")]
        if hidden and not (len(hidden) == 1 and relative.name.startswith(INFLIGHT_PREFIX)):
            UPLOADS_IGNORED.labels("hidden").inc()  # how many uploaders write before renaming
            log.info("upload: leaving hidden file %s alone", shown)
            return
        device = self.cameras.get(relative.parts[0]) if len(relative.parts) > 1 else None
        if device is None:
            UPLOADS_IGNORED.labels("no_camera").inc()
            log.warning(
                "upload: %s is in no input camera's folder; left alone (removed after %.0f s)",
                shown,
                self.bounds.stray_max_age,
            )
            self._sweep_in(0)  # strays are bounded in size too
            return
        try:
            self._accept(path, device)
        except UploadRejectedError as exc:
            if exc.reason in ("symlink", "not_a_regular_file"):
                self._remove_special(path, shown, None)
            else:
                self._quarantine(path, shown, exc.reason, str(exc))
        except OSError as exc:
            UPLOADS_REJECTED.labels("io_error").inc()
            log.error("upload: cannot take %s: %s", shown, exc.strerror or exc)

    def _remove_special(self, path: Path, shown: str, mode: int | None) -> None:
        """A link or special file is never opened: its entry is removed, a link's target kept."""
        reason = "symlink" if mode is None or stat.S_ISLNK(mode) else "not_a_regular_file"
        UPLOADS_REJECTED.labels(reason).inc()
        try:
            if mode is not None and stat.S_ISDIR(mode):
                return  # a real folder (only reached by a race): nothing to do
            os.unlink(path)
        except OSError as exc:
            log.error(
                "upload: %s is a %s, not read; cannot remove it: %s", shown, reason, exc.strerror
            )
            return
        log.warning("upload: %s is a %s, not read; removed", shown, reason.replace("_", " "))

    def _accept(self, path: Path, device: Device) -> None:
        image, info = read_upload(path, self.max_bytes)
        if (problem := jpeg_problem(image)) is not None:
            raise UploadRejectedError("not_a_jpeg", problem)
        # When it came (its mtime), never in the future (a client may set the mtime ahead).
        taken = min(info.st_mtime, time.time())
        event_id = new_id()
        target = snapshot_path(self.root, device.key, taken, event_id)
        # Renamed aside (a re-upload is a new event), kept until the event is in the outbox.
        inflight = path
        if not path.name.startswith(INFLIGHT_PREFIX):
            inflight = path.with_name(f"{INFLIGHT_PREFIX}{event_id[:12]}-{path.name}")
            os.replace(path, inflight)
        moved = os.lstat(inflight)
        if (moved.st_dev, moved.st_ino) != (info.st_dev, info.st_ino):
            os.replace(inflight, path)  # swapped since it was read: not ours to link
            raise UploadRejectedError("symlink", "replaced while being taken")
        keep_linked(target, inflight, image)  # durable: the outbox names this file
        self._inflight[inflight] = target
        SNAPSHOTS.labels(device.key, "upload").inc()
        log.info("upload: %s from %s -> event %s", printable(path.name), device.key, event_id)
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

    def _quarantine(self, path: Path, shown: str, reason: str, detail: str) -> None:
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
                shown,
                detail,
                exc.strerror,
            )
            return
        log.warning("upload: %s rejected (%s: %s); moved to %s", shown, reason, detail, target)
        self._prune_quarantine()

    def _sweep_in(self, delay: float) -> None:
        if self._sweep_timer is not None:
            self._sweep_timer.cancel()
        self._sweep_timer = self.call_later(delay, self._sweep)

    def _sweep(self) -> None:
        """Remove strays beyond their bounds, prune the quarantine; again each ``sweep_every`` s."""
        self._sweep_in(self.bounds.sweep_every)
        bounds = self.bounds
        now = time.time()
        kept = []
        for stray in sorted(self._strays()):
            if now - stray.mtime > bounds.stray_max_age:
                self._remove(stray, "stray_age", f"older than {bounds.stray_max_age:.0f} s")
            else:
                kept.append(stray)
        self._remove_oldest(kept, bounds.stray_max_bytes, "stray_size", "strays")
        self._prune_quarantine()

    def _strays(self) -> Iterable[_Kept]:
        """Regular files in the upload dir that no camera folder takes."""
        for top, _folders, files in os.walk(self.upload_dir, followlinks=False):
            relative_top = Path(top).relative_to(self.upload_dir)
            in_camera = bool(relative_top.parts) and relative_top.parts[0] in self.cameras
            for name in files:
                hidden = name.startswith(".") and not name.startswith(INFLIGHT_PREFIX)
                hidden = hidden or any(part.startswith(".") for part in relative_top.parts)
                if in_camera and not hidden:
                    continue  # taken by the stage
                path = Path(top, name)
                if path in self._inflight:
                    continue
                try:
                    info = os.lstat(path)
                except OSError:
                    continue
                if stat.S_ISREG(info.st_mode):
                    yield _Kept(info.st_mtime, info.st_size, path)

    def _prune_quarantine(self) -> None:
        files = []
        try:
            entries = list(os.scandir(self.root / QUARANTINE_DIR))
        except OSError:
            return  # none yet
        for entry in entries:
            try:
                info = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            files.append(_Kept(info.st_mtime, info.st_size, Path(entry.path)))
        self._remove_oldest(
            sorted(files), self.bounds.quarantine_max_bytes, "quarantine_size", "quarantine"
        )

    def _remove_oldest(self, files: list[_Kept], max_bytes: int, reason: str, what: str) -> None:
        total = sum(kept.size for kept in files)
        for kept in files:  # oldest first
            if total <= max_bytes:
                return
            self._remove(kept, reason, f"{what} over {max_bytes} bytes")
            total -= kept.size

    def _remove(self, kept: _Kept, reason: str, why: str) -> None:
        try:
            os.unlink(kept.path)
        except OSError as exc:
            log.error("upload: cannot remove %s: %s", printable(str(kept.path)), exc.strerror)
            return
        UPLOADS_REMOVED.labels(reason).inc()
        log.warning("upload: removed %s (%d bytes): %s", printable(str(kept.path)), kept.size, why)
