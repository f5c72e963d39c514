"""``uploads``: the cloud upload queue; ``uploads retry`` gives parked uploads their attempts
back. Both are safe while the daemon runs: its uploader reads the file each round."""

from __future__ import annotations

import argparse
import time

from pylib.observe.logs import printable
from pylib.upload.queue import UploadQueue, UploadQueueError
from snapshot_processor.camera.prober import iso_time
from snapshot_processor.cli.common import EXIT_START, CommandError, load_settings

HELP = "show the cloud upload queue (waiting, oldest, parked); retry parked uploads"
SHOWN_PARKED = 50


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``uploads [show | retry [--destination NAME]]``."""
    actions = parser.add_subparsers(dest="action", metavar="{show,retry}")
    actions.add_parser("show", help="waiting uploads, the oldest and the parked ones (default)")
    retry = actions.add_parser(
        "retry", help="give parked uploads their attempts back: they are tried again at once"
    )
    retry.add_argument("--destination", help="only those for this destination (drive, s3)")


def run(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    path = settings.upload_queue_path
    if not path.exists():
        print(f"upload queue {printable(path)}: none yet (no cloud storage has run here)")
        return 0
    try:
        queue = UploadQueue(path, max_attempts=settings.storage.upload_max_attempts)
    except UploadQueueError as exc:
        raise CommandError(str(exc), EXIT_START) from None
    try:
        if args.action == "retry":
            count = queue.requeue_parked(args.destination)
            print(f"{count} parked upload(s) put back; the uploader tries them now")
            return 0
        for line in show(queue):
            print(line)
    except UploadQueueError as exc:
        raise CommandError(str(exc), EXIT_START) from None
    finally:
        queue.close()
    return 0


def show(queue: UploadQueue) -> list[str]:
    """The lines ``uploads`` prints."""
    now = time.time()
    waiting = queue.by_destination()
    parked = queue.parked_uploads(SHOWN_PARKED)
    oldest = queue.oldest_age(now)
    lines = [f"upload queue {printable(queue.path)}: {queue.depth()} upload(s) waiting"]
    for name, count in sorted(waiting.items()):
        lines.append(f"  {printable(name)}: {count} (parked included)")
    if oldest is not None:
        lines.append(f"oldest waiting: {oldest:.0f} s")
    lines.append(f"parked (refused or out of tries): {queue.parked()}")
    for entry, reason in parked:
        lines.append(
            f"  id {entry.id}: {printable(entry.item.name)} for {printable(entry.destination)}, "
            f"queued {iso_time(entry.added)}, {entry.attempts} attempt(s): {printable(reason)}"
        )
    return lines
