"""Local retention: snapshots, annotated copies and the quarantine, bounded by age and size.

Never removed: a file still pending (upload queue or outbox), one younger than ``grace``,
or anything not a regular file or behind a symbolic link (links are never followed).
With only pending files left over the bound, an alarm is raised instead.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import stat
import threading
import time
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from prometheus_client import Counter, Gauge

from pylib.observe.logs import printable
from pylib.observe.trouble import TroubleLog
from pylib.runtime.worker import RestartBudget, Worker
from snapshot_processor.storage.files import BUNDLES_DIR, QUARANTINE_DIR, SNAPSHOTS_DIR

log = logging.getLogger(__name__)

RETENTION_REMOVED = Counter(
    "retention_removed_files", "Local files removed by retention", ["reason"]
)
RETENTION_REMOVED_BYTES = Counter(
    "retention_removed_bytes", "Bytes of local files removed by retention", ["reason"]
)
RETENTION_FAILURES = Counter(
    "retention_failures", "Local files or sweeps retention could not complete"
)
RETENTION_KEPT_BYTES = Gauge(
    "retention_kept_bytes", "Bytes of snapshots, annotated copies and quarantine kept"
)
RETENTION_ALARM = Gauge(
    "retention_alarm", "1 while over RETENTION_MAX_BYTES with only files still to upload left"
)
RETENTION_ALARMS = Counter("retention_alarms", "Times the retention alarm was raised")

# Files this young are never removed: the storage stage may not have queued them yet.
GRACE = 600.0
_OPEN_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass(frozen=True)
class RetentionPolicy:
    """``max_age`` seconds, ``max_bytes`` in all and ``min_free`` bytes free on the disk
    (oldest safe files go first below it); None for any means no bound."""

    max_age: float | None
    max_bytes: int | None
    grace: float = GRACE
    min_free: int | None = None

    @classmethod
    def of(cls, days: float, max_bytes: int, min_free: int = 0) -> RetentionPolicy:
        """From ``RETENTION_DAYS``, ``RETENTION_MAX_BYTES``, ``RETENTION_MIN_FREE_BYTES``."""
        return cls(
            days * 86_400.0 if days > 0 else None,
            max_bytes if max_bytes > 0 else None,
            min_free=min_free if min_free > 0 else None,
        )


@dataclass(frozen=True)
class _File:
    relative: tuple[str, ...]  # below the data root
    size: int
    mtime: float
    device: int
    inode: int


@dataclass
class SweepResult:
    removed: int = 0
    removed_bytes: int = 0
    by_reason: dict[str, int] = field(default_factory=dict)
    oldest_removed: float | None = None
    kept: int = 0
    kept_bytes: int = 0
    pending_bytes: int = 0
    failures: list[str] = field(default_factory=list)
    alarm: str | None = None


def sweep(root: Path, policy: RetentionPolicy, pending: Collection[str], now: float) -> SweepResult:
    """One pass over the data root; ``pending`` holds the absolute paths still pending."""
    result = SweepResult()
    files = sorted(_scan(root, result), key=lambda f: f.mtime)
    held = {os.path.abspath(p) for p in pending}
    base = os.path.abspath(root)

    def removable(entry: _File) -> bool:
        young = entry.mtime > now - policy.grace
        return not young and os.path.join(base, *entry.relative) not in held

    kept: list[_File] = []
    for entry in files:
        too_old = policy.max_age is not None and entry.mtime < now - policy.max_age
        if too_old and removable(entry) and _remove(root, entry, "age", result):
            continue
        kept.append(entry)

    total = sum(entry.size for entry in kept)
    if policy.max_bytes is not None and total > policy.max_bytes:
        survivors = []
        for entry in kept:
            if (
                total > policy.max_bytes
                and removable(entry)
                and _remove(root, entry, "size", result)
            ):
                total -= entry.size
                continue
            survivors.append(entry)
        kept = survivors
    min_free = policy.min_free or 0
    free = None
    if policy.min_free is not None:
        with suppress(OSError):
            free = shutil.disk_usage(root).free
    if free is not None and free < min_free:
        survivors = []
        for entry in kept:
            if free < min_free and removable(entry) and _remove(root, entry, "disk", result):
                free += entry.size
                total -= entry.size
                continue
            survivors.append(entry)
        kept = survivors
    pending_bytes = sum(e.size for e in kept if os.path.join(base, *e.relative) in held)
    result.kept, result.kept_bytes, result.pending_bytes = len(kept), total, pending_bytes
    if policy.max_bytes is not None and total > policy.max_bytes and pending_bytes:
        result.alarm = (
            f"local files take {_size(total)}, over RETENTION_MAX_BYTES ({_size(policy.max_bytes)});"
            f" {_size(pending_bytes)} of it not yet uploaded or published, so not removed"
        )
    elif free is not None and free < min_free and pending_bytes:
        result.alarm = (
            f"the disk has {_size(free)} free, under RETENTION_MIN_FREE_BYTES "
            f"({_size(min_free)}); {_size(pending_bytes)} of local files not yet "
            "uploaded or published, so not removed"
        )
    _remove_empty_days(root, now, result)
    _remove_empty_bundles(root, now, result)
    return result


class Retention(Worker):
    """Runs :func:`sweep` once at start and every ``interval`` seconds; if ``pending``
    fails, the sweep is skipped: nothing is removed while it is unknown what is safe."""

    def __init__(
        self,
        root: Path,
        policy: RetentionPolicy,
        stop_event: threading.Event,
        *,
        pending: Callable[[], Collection[str]] | None = None,
        interval: float = 600.0,
        name: str = "retention",
        clock: Callable[[], float] = time.time,
        budget: RestartBudget | None = None,
        on_fatal: Callable[[str, BaseException], None] | None = None,
    ) -> None:
        super().__init__(name, stop_event, budget=budget, on_fatal=on_fatal)
        self.root = root
        self.policy = policy
        self.interval = interval
        self._pending = pending
        self._clock = clock
        self._alarm: str | None = None
        self._trouble = TroubleLog(log, "retention", level=logging.ERROR)

    def work(self) -> None:
        while self.should_keep_running():
            self.run_once()
            if self.wait_for_stop(self.interval):
                return

    def run_once(self) -> SweepResult | None:
        """One sweep now, logged and counted; None if it could not run."""
        try:
            pending = self._pending() if self._pending is not None else ()
            result = sweep(self.root, self.policy, pending, self._clock())
        except Exception as exc:
            RETENTION_FAILURES.inc()
            self._trouble.failed(
                f"sweep skipped, nothing removed: {type(exc).__name__}: {exc}",
                kind=type(exc).__name__,
            )
            return None
        self._trouble.succeeded()
        self._report(result)
        return result

    def troubles(self) -> list[str]:
        """The size alarm, or a sweep that cannot run."""
        found = super().troubles()
        if self._alarm is not None:
            found.append(self._alarm)
        if self._trouble.reason is not None:
            found.append(f"retention: {self._trouble.reason}")
        return found

    def _report(self, result: SweepResult) -> None:
        RETENTION_KEPT_BYTES.set(result.kept_bytes)
        if result.removed:
            reasons = ", ".join(f"{n} by {why}" for why, n in sorted(result.by_reason.items()))
            oldest = datetime.fromtimestamp(result.oldest_removed or 0.0, UTC)
            log.info(
                "retention: removed %d file(s), %s (%s), oldest from %s; kept %d file(s), %s",
                result.removed,
                _size(result.removed_bytes),
                reasons,
                f"{oldest:%Y-%m-%d}",
                result.kept,
                _size(result.kept_bytes),
            )
        if result.failures:
            log.warning(
                "retention: could not remove %d file(s), first: %s",
                len(result.failures),
                result.failures[0],
            )
        if result.alarm is not None and self._alarm is None:
            RETENTION_ALARMS.inc()
            log.error("retention alarm: %s", result.alarm)
        elif result.alarm is None and self._alarm is not None:
            log.info("retention alarm cleared: local files are within RETENTION_MAX_BYTES")
        self._alarm = result.alarm
        RETENTION_ALARM.set(1 if result.alarm else 0)


def _scan(root: Path, result: SweepResult) -> Iterator[_File]:
    """Regular files under the snapshots, bundles and quarantine folders; no link is followed."""

    def failed(exc: OSError) -> None:
        RETENTION_FAILURES.inc()
        result.failures.append(f"cannot list {exc.filename}: {exc.strerror}")

    for top in (SNAPSHOTS_DIR, BUNDLES_DIR, QUARANTINE_DIR):
        try:
            info = os.lstat(root / top)
        except FileNotFoundError:
            continue
        if not stat.S_ISDIR(info.st_mode):
            result.failures.append(f"{root / top} is not a folder (a link?); not looked into")
            continue
        # fwalk without follow_symlinks never enters a linked folder, even one swapped in.
        for folder, _dirs, names, dir_fd in os.fwalk(
            root / top, onerror=failed, follow_symlinks=False
        ):
            relative = Path(folder).relative_to(root).parts
            for name in names:
                try:
                    entry = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
                except OSError:
                    continue  # gone meanwhile
                if stat.S_ISREG(entry.st_mode):
                    yield _File(
                        (*relative, name),
                        entry.st_size,
                        entry.st_mtime,
                        entry.st_dev,
                        entry.st_ino,
                    )


@contextmanager
def _folder(root: Path, parts: tuple[str, ...]) -> Iterator[int]:
    """A descriptor of ``root/parts...``, each step opened without following a link."""
    fd = os.open(root, _OPEN_DIR)
    try:
        for part in parts:
            inner = os.open(part, _OPEN_DIR, dir_fd=fd)
            os.close(fd)
            fd = inner
        yield fd
    finally:
        os.close(fd)


def _remove(root: Path, entry: _File, reason: str, result: SweepResult) -> bool:
    """Unlink one scanned file if it is still that file; True if it is gone."""
    *parents, name = entry.relative
    try:
        with _folder(root, tuple(parents)) as fd:
            now = os.stat(name, dir_fd=fd, follow_symlinks=False)
            if (now.st_dev, now.st_ino) != (entry.device, entry.inode):
                return False  # replaced since the scan: not what was judged
            os.unlink(name, dir_fd=fd)
    except FileNotFoundError:
        return False
    except OSError as exc:
        RETENTION_FAILURES.inc()
        shown = printable(os.path.join(*entry.relative))
        result.failures.append(f"{shown}: {exc.strerror or exc}")
        return False
    RETENTION_REMOVED.labels(reason).inc()
    RETENTION_REMOVED_BYTES.labels(reason).inc(entry.size)
    result.removed += 1
    result.removed_bytes += entry.size
    result.by_reason[reason] = result.by_reason.get(reason, 0) + 1
    if result.oldest_removed is None or entry.mtime < result.oldest_removed:
        result.oldest_removed = entry.mtime
    return True


def _remove_empty_days(root: Path, now: float, result: SweepResult) -> None:
    """Remove empty ``snapshots/<camera>/<YYYY-MM-DD>`` folders of days before yesterday (UTC)."""
    cutoff = f"{datetime.fromtimestamp(now - 86_400, UTC):%Y-%m-%d}"
    try:
        cameras = _folders(root, (SNAPSHOTS_DIR,))
    except OSError:
        return
    for camera in cameras:
        try:
            days = _folders(root, (SNAPSHOTS_DIR, camera))
        except OSError:
            continue
        for day in days:
            if not _is_date(day) or day >= cutoff:
                continue
            try:
                with _folder(root, (SNAPSHOTS_DIR, camera)) as fd:
                    os.rmdir(day, dir_fd=fd)
            except OSError as exc:
                if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOENT):
                    result.failures.append(f"cannot remove folder {day}: {exc.strerror}")


def _remove_empty_bundles(root: Path, now: float, result: SweepResult) -> None:
    """Remove empty ``bundles/YYYY/MM/DD/<bundle>`` folders (and then empty days, months and
    years) of days before yesterday (UTC)."""
    cutoff = f"{datetime.fromtimestamp(now - 86_400, UTC):%Y/%m/%d}"

    def remove(parts: tuple[str, ...], name: str) -> None:
        try:
            with _folder(root, parts) as fd:
                os.rmdir(name, dir_fd=fd)
        except OSError as exc:
            if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOENT):
                result.failures.append(f"cannot remove folder {name}: {exc.strerror}")

    def below(parts: tuple[str, ...]) -> list[str]:
        try:
            return sorted(name for name in _folders(root, parts) if name.isdigit())
        except OSError:
            return []

    top = (BUNDLES_DIR,)
    for year in below(top):
        for month in below((*top, year)):
            for day in below((*top, year, month)):
                if f"{year}/{month}/{day}" >= cutoff:
                    continue
                parts = (*top, year, month, day)
                try:
                    names = _folders(root, parts)
                except OSError:
                    continue
                for name in names:
                    remove(parts, name)
                remove((*top, year, month), day)
            if f"{year}/{month}" < cutoff[:7]:
                remove((*top, year), month)
        if year < cutoff[:4]:
            remove(top, year)


def _folders(root: Path, parts: tuple[str, ...]) -> list[str]:
    """Names of the real folders (not links) in ``root/parts...``."""
    found = []
    with _folder(root, parts) as fd:
        for name in os.listdir(fd):
            try:
                mode = os.stat(name, dir_fd=fd, follow_symlinks=False).st_mode
            except OSError:
                continue  # gone meanwhile
            if stat.S_ISDIR(mode):
                found.append(name)
    return found


def _is_date(name: str) -> bool:
    try:
        datetime.strptime(name, "%Y-%m-%d")
    except ValueError:
        return False
    return True


def _size(n: int) -> str:
    """Bytes for a person: ``35.0 MB``."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"
