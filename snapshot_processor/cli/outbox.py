"""``outbox``: depth, oldest entry and parked rows; ``outbox replay`` / ``discard`` parked rows.

Looking is safe while the daemon runs; replay and discard refuse, as its publisher keeps the
outbox's row count in memory.
"""

from __future__ import annotations

import argparse
import sqlite3
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path

from pylib.amqp.outbox import Outbox, OutboxError
from pylib.observe.logs import printable
from pylib.runtime import dataroot
from snapshot_processor.camera.prober import iso_time
from snapshot_processor.cli.common import (
    EXIT_BUSY,
    EXIT_CONFIG,
    EXIT_START,
    CommandError,
    command_logging,
    load_settings,
)

HELP = "show the outbox (depth, oldest entry, parked rows); replay or discard parked rows"

# Readers wait this long for the daemon's writer at most (its transactions are short).
BUSY_TIMEOUT_SECONDS = 5.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``outbox [show | replay [--id N]... | discard [--id N]... --yes]``."""
    actions = parser.add_subparsers(dest="action", metavar="{show,replay,discard}")
    actions.add_parser("show", help="depth, the oldest entry and the parked rows (the default)")
    replay = actions.add_parser(
        "replay", help="put parked rows back in the outbox (the daemon must be stopped)"
    )
    discard = actions.add_parser(
        "discard", help="remove parked rows for good (the daemon must be stopped)"
    )
    for sub in (replay, discard):
        sub.add_argument(
            "--id", type=int, action="append", dest="ids", help="only this parked row (repeatable)"
        )
    discard.add_argument("--yes", action="store_true", help="really remove them")


@dataclass(frozen=True)
class ParkedRow:
    id: int
    routing_key: str
    exchange: str
    size: int
    created: float
    parked: float
    reason: str


@dataclass(frozen=True)
class OutboxView:
    depth: int
    oldest_created: float | None
    oldest_key: str | None
    parked: list[ParkedRow]


def read_outbox(path: Path) -> OutboxView:
    """Read the outbox with short statements, changing nothing (the daemon may run)."""
    with _reader(path) as conn:
        (depth,) = conn.execute("SELECT COUNT(*) FROM outbox").fetchone()
        oldest = conn.execute(
            "SELECT created, routing_key FROM outbox ORDER BY id LIMIT 1"
        ).fetchone()
        columns = {str(row[1]) for row in conn.execute("PRAGMA table_info(parked)")}
        # The size of the message as sent: the row, and the image its file holds.
        size = "length(body) + coalesce(file_size, 0)" if "file_size" in columns else "length(body)"
        try:
            rows = conn.execute(
                f"SELECT id, routing_key, exchange, {size}, created, parked, reason"
                " FROM parked ORDER BY id"
            ).fetchall()
        except sqlite3.OperationalError:
            rows = []  # an outbox from before the parked table existed
    return OutboxView(
        depth=int(depth),
        oldest_created=float(oldest[0]) if oldest else None,
        oldest_key=str(oldest[1]) if oldest else None,
        parked=[
            ParkedRow(
                int(r[0]), str(r[1]), str(r[2]), int(r[3]), float(r[4]), float(r[5]), str(r[6])
            )
            for r in rows
        ],
    )


@contextmanager
def _reader(path: Path) -> Iterator[sqlite3.Connection]:
    try:
        conn = sqlite3.connect(
            f"{path.absolute().as_uri()}?mode=rw",
            uri=True,
            timeout=BUSY_TIMEOUT_SECONDS,
            isolation_level=None,
        )
    except sqlite3.Error as exc:
        raise CommandError(f"cannot open outbox {path}: {exc}", EXIT_START) from None
    with closing(conn):
        try:
            yield conn
        except sqlite3.Error as exc:
            raise CommandError(f"cannot read outbox {path}: {exc}", EXIT_START) from None


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def show(path: Path) -> list[str]:
    """The lines ``outbox`` prints."""
    if not path.exists():
        return [f"outbox {printable(path)}: none yet (no daemon has run on this data root)"]
    view = read_outbox(path)
    lines = [f"outbox {printable(path)}: {view.depth} message(s) waiting"]
    if view.oldest_created is not None:
        lines.append(
            f"oldest: {_age(time.time() - view.oldest_created)} old, "
            f"routing key {printable(view.oldest_key)}"
        )
    lines.append(f"parked (set aside, not published): {len(view.parked)}")
    for row in view.parked:
        lines.append(
            f"  id {row.id}: {printable(row.routing_key)} on {printable(row.exchange)}, "
            f"{row.size} bytes, made {iso_time(row.created)}, parked {iso_time(row.parked)}: "
            f"{printable(row.reason)}"
        )
    return lines


def run(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    path = settings.outbox_path
    action = args.action or "show"
    if action == "show":
        for line in show(path):
            print(line)
        return 0
    if action == "discard" and not args.yes:
        for line in show(path):
            print(line)
        raise CommandError(
            "nothing discarded: add --yes to remove parked rows for good", EXIT_CONFIG
        )
    if not path.exists():
        print(f"outbox {printable(path)}: none yet, nothing parked")
        return 0
    lock = dataroot.DataRootLock(settings.snapshots_root_dir)
    try:
        lock.acquire()
    except dataroot.DataRootBusyError as exc:
        raise CommandError(f"{exc}: stop it first, then {action}", EXIT_BUSY) from None
    except dataroot.DataRootError as exc:
        raise CommandError(str(exc), EXIT_START) from None
    try:
        with command_logging(), Outbox(path, settings.broker.outbox_max_events) as outbox:
            if action == "replay":
                waiting = len(outbox.parked())
                done = outbox.replay_parked(args.ids)
                left = len(outbox.parked())
                print(f"{done} parked message(s) put back for publishing; {left} still parked")
                if left and args.ids is None and done < waiting:
                    print(
                        f"the outbox is full ({settings.broker.outbox_max_events}); replay the rest later"
                    )
            else:
                done = outbox.discard_parked(args.ids)
                print(f"{done} parked message(s) discarded")
    except OutboxError as exc:
        raise CommandError(str(exc), EXIT_START) from None
    finally:
        lock.release()
    return 0
