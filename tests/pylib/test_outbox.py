"""The outbox keeps messages in order, bounded, and on disk across close, reopen and SIGKILL."""

from __future__ import annotations

import logging
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from pylib.amqp.outbox import Outbox, OutboxError, OutboxFullError, attached_files
from pylib.chain.attachment import Attachment
from tests.support.paths import CHECKOUT

REPO_ROOT = CHECKOUT


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "nested" / "dir" / "outbox.sqlite"


@pytest.fixture
def outbox(db_path: Path) -> Iterator[Outbox]:
    box = Outbox(db_path, max_entries=10_000)
    yield box
    box.close()


def test_order_is_kept_over_1000_appends(outbox: Outbox) -> None:
    ids = [outbox.append("events", f"rk.{i}", f"body {i}".encode()) for i in range(1000)]

    assert ids == sorted(ids)
    assert len(set(ids)) == 1000
    entries = outbox.peek(limit=2000)
    assert [e.id for e in entries] == ids
    assert [e.body for e in entries] == [f"body {i}".encode() for i in range(1000)]
    assert [e.routing_key for e in entries] == [f"rk.{i}" for i in range(1000)]
    assert outbox.peek(limit=3) == entries[:3]


def test_remove_and_len(outbox: Outbox) -> None:
    assert len(outbox) == 0
    first = outbox.append("x", "a", b"1")
    second = outbox.append("x", "b", b"2")
    third = outbox.append("x", "c", b"3")
    assert len(outbox) == 3

    outbox.remove(second)
    assert len(outbox) == 2
    assert [e.id for e in outbox.peek()] == [first, third]

    outbox.remove(second)  # already gone: no change
    assert len(outbox) == 2

    outbox.remove(first)
    outbox.remove(third)
    assert len(outbox) == 0
    assert outbox.peek() == []
    # Ids are never reused, even after the newest row was deleted.
    assert outbox.append("x", "d", b"4") > third


def test_bounded_then_room_again_after_remove(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "small.sqlite", max_entries=3)
    try:
        ids = [box.append("x", "k", b"m") for _ in range(3)]
        with pytest.raises(OutboxFullError, match=r"3 of 3") as caught:
            box.append("x", "k", b"too many")
        assert isinstance(caught.value, OutboxError)
        assert len(box) == 3

        box.remove(ids[0])
        box.append("x", "k", b"fits again")
        assert len(box) == 3
        assert [e.body for e in box.peek()] == [b"m", b"m", b"fits again"]
    finally:
        box.close()


def test_survives_close_and_reopen(db_path: Path) -> None:
    box = Outbox(db_path)
    ids = [box.append("x", "k", bytes([i]) * 10) for i in range(5)]
    box.remove(ids[1])
    box.close()
    box.close()  # twice is harmless

    reopened = Outbox(db_path)
    try:
        assert len(reopened) == 4
        entries = reopened.peek()
        assert [e.id for e in entries] == [ids[0], *ids[2:]]
        assert [e.body for e in entries] == [bytes([i]) * 10 for i in (0, 2, 3, 4)]
        assert reopened.append("x", "k", b"next") > ids[-1]
    finally:
        reopened.close()


def test_survives_sigkill_of_the_appending_process(db_path: Path) -> None:
    script = textwrap.dedent(
        f"""
        import os, signal
        from pathlib import Path
        from pylib.amqp.outbox import Outbox

        box = Outbox(Path({str(db_path)!r}))
        for i in range(50):
            box.append("events", "rk", b"body-%d-" % i + bytes(range(256)), {{"n": str(i)}})
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPO_ROOT,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == -signal.SIGKILL, result.stderr.decode()

    box = Outbox(db_path)
    try:
        assert len(box) == 50
        entries = box.peek(limit=100)
        assert [e.body for e in entries] == [b"body-%d-" % i + bytes(range(256)) for i in range(50)]
        assert [e.headers for e in entries] == [{"n": str(i)} for i in range(50)]
        assert [e.id for e in entries] == sorted(e.id for e in entries)
    finally:
        box.close()


def test_headers_round_trip(outbox: Outbox) -> None:
    headers = {"message_id": "abc-123", "content_type": "application/msgpack", "ünï": "cödé"}
    outbox.append("events", "camera.front", b"\x00\xff", headers)
    outbox.append("events", "camera.back", b"")

    first, second = outbox.peek()
    assert first.headers == headers
    assert first.exchange == "events"
    assert first.routing_key == "camera.front"
    assert first.body == b"\x00\xff"
    assert first.created > 0
    assert second.headers == {}
    assert second.body == b""


def _damage(path: Path, how: str) -> None:
    """Damage a real outbox file of several pages the way a disk or a crash would."""
    size = path.stat().st_size
    with path.open("r+b") as handle:
        if how == "truncated":
            handle.truncate(size // 2)
        else:  # a bad page in the middle
            handle.seek(4096 * 3)
            handle.write(os.urandom(4096))


@pytest.mark.parametrize("how", ["junk", "random", "truncated", "bad page"])
def test_damaged_file_is_moved_aside_with_its_data_and_a_fresh_outbox_starts(
    tmp_path: Path, how: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="pylib.amqp.outbox")
    path = tmp_path / "damaged.sqlite"
    if how == "junk":
        path.write_bytes(b"not a database at all " * 200)
    elif how == "random":
        path.write_bytes(os.urandom(4096))
    else:
        with Outbox(path) as box:
            for n in range(50):
                box.append("x", "k", os.urandom(3000) + str(n).encode())
        _damage(path, how)
    damaged_bytes = path.read_bytes()
    moved = REGISTRY.get_sample_value("outbox_damaged_total") or 0.0

    with Outbox(path) as box:
        assert len(box) == 0
        box.append("x", "k", b"fresh")  # the fresh one works
        assert [entry.body for entry in box.peek()] == [b"fresh"]
    # Opening again is a plain open: no second move, no crash loop at every start.
    with Outbox(path) as box:
        assert len(box) == 1

    aside = [p for p in tmp_path.iterdir() if p.name.startswith("damaged.sqlite.damaged-")]
    assert [p.read_bytes() for p in aside] == [damaged_bytes]
    assert REGISTRY.get_sample_value("outbox_damaged_total") == moved + 1
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert str(path) in errors[0]
    assert str(aside[0]) in errors[0]
    assert "malformed" in errors[0] or "not a database" in errors[0]


def test_outbox_that_cannot_be_opened_for_another_reason_raises_naming_the_path(
    tmp_path: Path,
) -> None:
    path = tmp_path / "a-directory.sqlite"
    path.mkdir()  # not damaged, just not openable: nothing is moved
    with pytest.raises(OutboxError) as caught:
        Outbox(path)
    assert str(path) in str(caught.value)
    assert not caught.value.damaged
    assert path.is_dir()


def test_outbox_connection_syncs_fully(db_path: Path) -> None:
    """A commit is on disk when append returns only with synchronous=FULL (2) or EXTRA (3)."""
    with Outbox(db_path) as box:
        assert box.synchronous >= 2


def test_parked_message_leaves_the_queue_and_is_kept(outbox: Outbox) -> None:
    parked = REGISTRY.get_sample_value("outbox_parked_total") or 0.0
    first = outbox.append("gone", "k", b"poison", {"message_id": "p"})
    second = outbox.append("events", "k", b"good")
    assert outbox.park(first, "NOT_FOUND - no exchange 'gone'")
    assert not outbox.park(first, "again")  # already parked: nothing happens
    assert [entry.id for entry in outbox.peek()] == [second]
    assert len(outbox) == 1
    [(entry, reason)] = outbox.parked()
    assert (entry.id, entry.exchange, entry.body, entry.headers) == (
        first,
        "gone",
        b"poison",
        {"message_id": "p"},
    )
    assert reason == "NOT_FOUND - no exchange 'gone'"
    assert REGISTRY.get_sample_value("outbox_parked_total") == parked + 1


def test_second_instance_sees_the_depth(db_path: Path) -> None:
    writer = Outbox(db_path)
    try:
        writer.append("x", "k", b"1")
        writer.append("x", "k", b"2")
        reader = Outbox(db_path)
        try:
            assert len(reader) == 2
            assert [e.body for e in reader.peek()] == [b"1", b"2"]
        finally:
            reader.close()
    finally:
        writer.close()


def test_depth_gauge_and_sparse_logging(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="pylib.amqp.outbox")
    box = Outbox(tmp_path / "log.sqlite", max_entries=20)
    try:
        # One message in flight and confirmed is the normal case: nothing logged.
        box.remove(box.append("x", "k", b"m"))
        assert caplog.records == []

        ids = [box.append("x", "k", b"m") for _ in range(20)]
        assert REGISTRY.get_sample_value("outbox_depth") == 20
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        # Above each 10% of 20 (2, 4, ..., 18), and full.
        assert len(warnings) == 9 + 1
        assert "full" in warnings[-1].getMessage()

        caplog.clear()
        for entry_id in ids:
            box.remove(entry_id)
        assert REGISTRY.get_sample_value("outbox_depth") == 0
        assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
            (logging.INFO, f"outbox {box.path} drained")
        ]
    finally:
        box.close()


def test_groups_stored_and_confirmed_under_load_log_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="pylib.amqp.outbox")
    box = Outbox(tmp_path / "load.sqlite")  # the default limit
    try:
        for _ in range(50):  # a group of 32 comes together, is confirmed, and goes
            box.forget(box.append_many([("x", "k", b"m", None)] * 32))
            box.commit_removals()
        assert caplog.records == []
        # A real backlog still shows.
        box.append_many([("x", "k", b"m", None)] * 101)
        assert [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING] == [
            f"outbox {box.path} holds 101 message(s) (limit 10000)"
        ]
    finally:
        box.close()


def rows_on_disk(path: Path) -> list[str]:
    with sqlite3.connect(path) as db:
        return [str(row[0]) for row in db.execute("SELECT routing_key FROM outbox ORDER BY id")]


def test_forgotten_rows_leave_at_once_and_the_disk_with_the_next_commit(
    outbox: Outbox, db_path: Path
) -> None:
    ids = outbox.append_many([("events", f"rk.{i}", b"x", None) for i in range(3)])
    outbox.forget(ids[:2])

    assert len(outbox) == 1
    assert outbox.room == outbox.max_entries - 1
    assert [e.routing_key for e in outbox.peek(10)] == ["rk.2"]
    assert outbox.removals_pending == 2
    assert rows_on_disk(db_path) == ["rk.0", "rk.1", "rk.2"]  # no commit of their own
    # The next write takes them off the disk in its own transaction.
    outbox.append_many([("events", "rk.3", b"x", None)])
    assert rows_on_disk(db_path) == ["rk.2", "rk.3"]
    assert outbox.removals_pending == 0
    outbox.forget([ids[2]])
    outbox.forget([ids[2]])  # twice is once
    assert len(outbox) == 1
    outbox.commit_removals()
    assert rows_on_disk(db_path) == ["rk.3"]


def test_rows_forgotten_but_not_committed_come_back_after_a_crash(tmp_path: Path) -> None:
    path = tmp_path / "crash.sqlite3"
    script = textwrap.dedent(
        f"""
        import os, signal
        from pylib.amqp.outbox import Outbox
        box = Outbox({str(path)!r})
        ids = box.append_many([("events", "sent", b"x", None), ("events", "next", b"x", None)])
        box.forget(ids[:1])
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, check=False)
    assert result.returncode == -signal.SIGKILL
    # Published but not yet off the disk: published once more, never lost.
    with Outbox(path) as box:
        assert [e.routing_key for e in box.peek(10)] == ["sent", "next"]


def test_close_takes_forgotten_rows_off_the_disk(db_path: Path) -> None:
    with Outbox(db_path) as box:
        ids = box.append_many([("events", "a", b"x", None), ("events", "b", b"x", None)])
        box.forget(ids[:1])
    assert rows_on_disk(db_path) == ["b"]
    with Outbox(db_path) as box:
        assert len(box) == 1


# --- messages whose image stays in its file ------------------------------------------
def _with_image(tmp_path: Path, image: bytes, name: str = "snap.jpg") -> tuple[bytes, Attachment]:
    """A body with ``image`` in its middle, and the attachment naming the file holding it."""
    path = tmp_path / name
    path.write_bytes(image)
    body = b"head:" + image + b":tail"
    return body, Attachment(str(path), 5, len(image))


def _stored_body(db_path: Path, entry_id: int) -> bytes:
    with sqlite3.connect(db_path) as db:
        return bytes(db.execute("SELECT body FROM outbox WHERE id = ?", (entry_id,)).fetchone()[0])


def test_an_attached_file_stays_out_of_the_row_and_comes_back_whole(
    tmp_path: Path, db_path: Path
) -> None:
    image = os.urandom(20_000)
    body, attachment = _with_image(tmp_path, image)
    with Outbox(db_path) as box:
        [entry_id] = box.append_many([("events", "rk", body, {"a": "1"}, attachment)])
        plain = box.append("events", "rk", b"no file")

    assert _stored_body(db_path, entry_id) == b"head::tail"  # the image is not copied
    with Outbox(db_path) as box:
        entry, other = box.peek()
    assert (entry.id, entry.body, entry.headers, entry.problem) == (
        entry_id,
        body,
        {"a": "1"},
        None,
    )
    assert entry.attachment == attachment
    assert (other.id, other.body, other.attachment) == (plain, b"no file", None)
    assert attached_files(db_path) == {attachment.path}


def test_a_row_whose_file_went_or_changed_says_so_and_is_not_made_up(
    tmp_path: Path, outbox: Outbox
) -> None:
    gone_body, gone = _with_image(tmp_path, os.urandom(1000), "gone.jpg")
    changed_body, changed = _with_image(tmp_path, os.urandom(1000), "changed.jpg")
    short_body, short = _with_image(tmp_path, os.urandom(1000), "short.jpg")
    outbox.append_many(
        [
            ("e", "k", gone_body, None, gone),
            ("e", "k", changed_body, None, changed),
            ("e", "k", short_body, None, short),
        ]
    )
    os.unlink(gone.path)
    Path(changed.path).write_bytes(os.urandom(1000))  # same size, other bytes
    Path(short.path).write_bytes(b"x" * 10)

    problems = [entry.problem or "" for entry in outbox.peek()]

    assert "gone.jpg cannot be read" in problems[0]
    assert "changed.jpg changed since the message was stored" in problems[1]
    assert "short.jpg holds 10 bytes, not the 1000 stored" in problems[2]


def test_an_attachment_past_the_end_of_its_body_is_refused_and_nothing_stored(
    tmp_path: Path, outbox: Outbox
) -> None:
    _, attachment = _with_image(tmp_path, os.urandom(100))
    with pytest.raises(ValueError, match="past the end"):
        outbox.append_many([("e", "k", b"ok", None), ("e", "k", b"short", None, attachment)])
    assert len(outbox) == 0
    assert outbox.peek() == []


def test_parking_and_replaying_keep_the_attachment(tmp_path: Path, db_path: Path) -> None:
    body, attachment = _with_image(tmp_path, os.urandom(5000))
    with Outbox(db_path) as box:
        [entry_id] = box.append_many([("gone", "rk", body, None, attachment)])
        assert box.park(entry_id, "404 NOT_FOUND")
        [(parked, reason)] = box.parked()
        assert (parked.body, parked.attachment, reason) == (body, attachment, "404 NOT_FOUND")
        # Retention must keep the file of a parked message too: it may be replayed.
        assert attached_files(db_path) == {attachment.path}
        assert box.replay_parked() == 1
        [entry] = box.peek()
    assert (entry.body, entry.attachment) == (body, attachment)


def test_an_outbox_from_before_attachments_gets_the_columns_and_keeps_its_rows(
    db_path: Path, tmp_path: Path
) -> None:
    db_path.parent.mkdir(parents=True)
    with sqlite3.connect(db_path) as db:
        db.execute(
            "CREATE TABLE outbox (id INTEGER PRIMARY KEY AUTOINCREMENT, exchange TEXT NOT NULL,"
            " routing_key TEXT NOT NULL, body BLOB NOT NULL, headers TEXT NOT NULL,"
            " created REAL NOT NULL)"
        )
        db.execute(
            "CREATE TABLE parked (id INTEGER PRIMARY KEY, exchange TEXT NOT NULL,"
            " routing_key TEXT NOT NULL, body BLOB NOT NULL, headers TEXT NOT NULL,"
            " created REAL NOT NULL, parked REAL NOT NULL, reason TEXT NOT NULL)"
        )
        db.execute(
            "INSERT INTO outbox (exchange, routing_key, body, headers, created)"
            " VALUES ('e', 'old', x'0102', '{}', 1.0)"
        )
    assert attached_files(db_path) == set()  # readable before the upgrade too

    body, attachment = _with_image(tmp_path, os.urandom(300))
    with Outbox(db_path) as box:
        box.append_many([("e", "new", body, None, attachment)])
        old, new = box.peek()
    assert (old.routing_key, old.body, old.attachment) == ("old", b"\x01\x02", None)
    assert (new.routing_key, new.body, new.attachment) == ("new", body, attachment)


def test_no_outbox_file_needs_no_files(tmp_path: Path) -> None:
    assert attached_files(tmp_path / "missing.sqlite3") == set()


def test_an_unreadable_outbox_file_is_an_error_not_an_empty_list(tmp_path: Path) -> None:
    path = tmp_path / "not-a-db.sqlite3"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(OutboxError):
        attached_files(path)


def test_an_attachment_whose_file_is_not_there_as_promised_is_stored_whole(
    tmp_path: Path, outbox: Outbox
) -> None:
    """Retention may take the file of an event that waited long for a full disk: the row
    then keeps the image itself."""
    body, attachment = _with_image(tmp_path, os.urandom(500))
    os.unlink(attachment.path)

    [entry_id] = outbox.append_many([("e", "k", body, None, attachment)])

    assert _stored_body(outbox.path, entry_id) == body
    [entry] = outbox.peek()
    assert (entry.body, entry.attachment, entry.problem) == (body, None, None)


def test_a_fifo_in_place_of_the_file_is_a_problem_not_a_hang(
    tmp_path: Path, outbox: Outbox
) -> None:
    body, attachment = _with_image(tmp_path, os.urandom(500))
    outbox.append_many([("e", "k", body, None, attachment)])
    os.unlink(attachment.path)
    os.mkfifo(attachment.path)

    [entry] = outbox.peek()

    assert "snap.jpg is not a regular file" in (entry.problem or "")
