"""Cameras push images by FTP; each becomes an image event on the real RabbitMQ."""

from __future__ import annotations

import logging
import os
import statistics
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import pytest

from snapshot_processor.app import App
from snapshot_processor.config import Settings
from snapshot_processor.ingest.ftp import FtpServerThread
from snapshot_processor.ingest.stage import IngestStage
from tests.support.broker import Peer, delete_queue, running_app, unique_exchange
from tests.support.daemon import make_settings
from tests.support.ftp import connect, jpeg, upload
from tests.support.metrics import sample
from tests.support.tcp_proxy import TcpProxy
from tests.support.wait import wait_until

pytestmark = pytest.mark.broker

FTP_PASSWORD = "up load:pw@1"
LOCATIONS = ["Front Door", "Back Yard", "Garage", "Drive Way", "Side Gate"]


@pytest.fixture
def ftp_app(tmp_path: Path) -> Iterator[tuple[App, Peer, int]]:
    env = {"FTP_PASS": FTP_PASSWORD, "FTP_PORT": "0", "FTP_LISTEN_ADDRESS": "127.0.0.1"}
    env |= {"UPLOAD_MAX_BYTES": "200000"}
    env |= {"FTP_CREATE_DIRS": "misc"}
    for n, location in enumerate(LOCATIONS, start=1):
        env |= {f"INPUT_{n}_LOCATION": location, f"INPUT_{n}_TYPE": "camera"}
    exchange = unique_exchange()
    settings = make_settings(tmp_path, exchange, **env)
    peer = Peer(exchange)
    try:
        with running_app(settings) as app:
            ftp = next(w for w in app.workers if isinstance(w, FtpServerThread))
            upload_stage = next(w for w in app.workers if isinstance(w, IngestStage))
            assert ftp.ready.wait(5)
            assert upload_stage.ready.wait(5)
            assert ftp.bound is not None
            yield app, peer, ftp.bound[1]
    finally:
        peer.close()


def folder(location: str) -> str:
    return location.lower().replace(" ", "")


def test_five_cameras_upload_twenty_each_at_once(ftp_app: tuple[App, Peer, int]) -> None:
    _, peer, port = ftp_app
    images = {(loc, n): jpeg(f"{loc} {n}") for loc in LOCATIONS for n in range(20)}
    finished: dict[bytes, float] = {}

    def camera(location: str) -> None:
        client = connect(port, "camera", FTP_PASSWORD)
        try:
            client.cwd(f"/upload/{folder(location)}")
            for n in range(20):
                upload(client, f"snap_{n:02d}.jpg", images[(location, n)])
                finished[images[(location, n)]] = time.monotonic()
        finally:
            client.quit()

    with ThreadPoolExecutor(len(LOCATIONS)) as pool:
        list(pool.map(camera, LOCATIONS))
    arrived: dict[bytes, float] = {}

    def all_arrived() -> bool:
        for event in peer.images():
            arrived.setdefault(event["inputs"][0]["image"], time.monotonic())
        return len(arrived) >= 100

    peer.pump_until(all_arrived, 60, each=0.02)
    events = peer.images()
    assert len(events) == 100
    by_image = {event["inputs"][0]["image"]: event["inputs"][0] for event in events}
    for (location, _), data in images.items():
        entry = by_image[data]  # bytes intact
        assert entry["device_key"] == f"{location} camera"
        assert entry["source"] == "upload"
        assert Path(entry["storage_path"]).read_bytes() == data
    # Upload end to event received, as a figure for the README (the upload-to-event latency).
    delays = sorted(arrived[data] - finished[data] for data in images.values())
    print(
        f"\nupload end -> event: median {statistics.median(delays) * 1000:.0f} ms, "
        f"worst {delays[-1] * 1000:.0f} ms over {len(delays)}"
    )


def _counter(reason: str) -> float:
    return sample("uploads_rejected_total", reason=reason)


def _ignored(reason: str) -> float:
    return sample("uploads_ignored_total", reason=reason)


def test_bad_uploads_are_quarantined_and_good_ones_follow(
    ftp_app: tuple[App, Peer, int], tmp_path: Path
) -> None:
    app, peer, port = ftp_app
    good = jpeg("good one")
    truncated = jpeg("cut")[:-400]
    cases: list[tuple[str, bytes, str | None]] = [
        ("frontdoor/notes.jpg", b"this is not an image at all", "not_a_jpeg"),
        ("frontdoor/html.jpg", b"<html><body>error</body></html>", "not_a_jpeg"),
        ("frontdoor/cut.jpg", truncated, "not_a_jpeg"),
        ("frontdoor/empty.jpg", b"", "empty"),
        ("frontdoor/huge.jpg", jpeg("big", size=(2400, 1800))[:10] + b"\0" * 250_000, "too_large"),
    ]
    client = connect(port, "camera", FTP_PASSWORD)
    try:
        client.cwd("/upload")
        published = 0
        for n, (name, data, reason) in enumerate(cases):
            before = _counter(reason) if reason else 0
            upload(client, name, data)
            upload(client, f"frontdoor/good_{n}.jpg", good)
            published += 1
            assert len(peer.wait_for_images(published)) == published, name
            assert _counter(reason) == before + 1 if reason else True, name
        # Odd names and deep folders are ordinary uploads.
        for name in ["frontdoor/with space.jpg", "frontdoor/ünïcödé 📷.jpg"]:
            upload(client, name, jpeg(name))
            published += 1
            assert len(peer.wait_for_images(published)) == published, name
        client.mkd("frontdoor/2024")
        client.mkd("frontdoor/2024/05")
        upload(client, "frontdoor/2024/05/deep.jpg", jpeg("deep"))
        published += 1
        assert len(peer.wait_for_images(published)) == published
        # Hidden files are left for the uploader to rename; outside a camera folder, left alone.
        hidden_before, stray_before = _ignored("hidden"), _ignored("no_camera")
        upload(client, "frontdoor/.partial.jpg", jpeg("hidden"))
        upload(client, "misc/stray.jpg", jpeg("stray"))
        wait_until(lambda: _ignored("hidden") != hidden_before, 10, step=0.05)
        client.rename("frontdoor/.partial.jpg", "frontdoor/renamed.jpg")
        published += 1
        assert len(peer.wait_for_images(published)) == published
    finally:
        client.quit()
    assert _ignored("hidden") == hidden_before + 1
    assert _ignored("no_camera") == stray_before + 1
    assert (app.settings.ingest_dir / "misc" / "stray.jpg").exists()
    quarantined = list((tmp_path / "quarantine").iterdir())
    assert len(quarantined) == 5
    sources = {event["inputs"][0]["source"] for event in peer.images()}
    assert sources == {"upload"}
    upload_stage = next(w for w in app.workers if w.name == "ingest")
    assert upload_stage.is_alive()


def test_same_name_uploaded_again_is_a_new_event(ftp_app: tuple[App, Peer, int]) -> None:
    app, peer, port = ftp_app
    client = connect(port, "camera", FTP_PASSWORD)
    try:
        for n in range(3):
            upload(client, "/upload/garage/latest.jpg", jpeg(f"take {n}"))
            assert len(peer.wait_for_images(n + 1)) == n + 1
    finally:
        client.quit()
    entries = [event["inputs"][0] for event in peer.images()]
    assert [entry["image"] for entry in entries] == [jpeg(f"take {n}") for n in range(3)]
    assert len({entry["storage_path"] for entry in entries}) == 3
    assert len({entry["event_id"] for entry in entries}) == 3
    # Once each event is in the outbox, its upload is removed: nothing is left behind.
    folder_path = app.settings.ingest_dir / "garage"
    assert wait_until(lambda: not any(folder_path.iterdir()), 5, step=0.05), (
        f"left behind: {sorted(p.name for p in folder_path.iterdir())}"
    )


def test_uploads_left_from_before_are_taken_at_start(tmp_path: Path) -> None:
    # One upload that was mid-publication when the daemon died, one that arrived while it was down.
    folder_path = tmp_path / "upload" / "frontdoor"
    folder_path.mkdir(parents=True)
    (folder_path / ".inflight-0123456789ab-snap.jpg").write_bytes(jpeg("in flight"))
    (folder_path / "while down.jpg").write_bytes(jpeg("while down"))
    exchange = unique_exchange()
    settings = make_settings(
        tmp_path,
        exchange,
        INPUT_1_LOCATION="Front Door",
        INPUT_1_TYPE="camera",
        UPLOAD_STABLE_SECONDS="0.2",
    )
    peer = Peer(exchange)
    try:
        with running_app(settings):
            events = peer.wait_for_images(2)
    finally:
        peer.close()
    assert sorted(event["inputs"][0]["image"] for event in events) == sorted(
        [jpeg("in flight"), jpeg("while down")]
    )


def test_upload_waits_while_the_outbox_is_full(tmp_path: Path) -> None:
    with TcpProxy("127.0.0.1", 5672) as proxy:
        proxy.cut()  # the broker is away from the start
        exchange = unique_exchange()
        settings = make_settings(
            tmp_path,
            exchange,
            RABBITMQ_URL=f"amqp://guest:guest@127.0.0.1:{proxy.port}/%2F",
            OUTBOX_MAX_EVENTS="1",
            INPUT_1_LOCATION="Garage",
            INPUT_1_TYPE="camera",
        )
        folder_path = settings.ingest_dir / "garage"
        folder_path.mkdir(parents=True)
        peer = Peer(exchange)
        app = App(settings)
        daemon = app.build()
        daemon.start()
        try:
            stage = next(w for w in app.workers if isinstance(w, IngestStage))
            assert stage.ready.wait(5)
            full_before = sample("amqp_publish_failures_total", reason="outbox_full")
            (folder_path / "one.jpg").write_bytes(jpeg("one"))
            (folder_path / "two.jpg").write_bytes(jpeg("two"))
            assert wait_until(
                lambda: sample("amqp_publish_failures_total", reason="outbox_full") != full_before,
                10,
                step=0.05,
            ), "the outbox never filled"
            proxy.restore()
            events = peer.wait_for_images(2, timeout=30)
        finally:
            assert daemon.stop()
            peer.close()
            delete_queue(settings.queue_name)
    assert sorted(event["inputs"][0]["image"] for event in events) == sorted(
        [jpeg("one"), jpeg("two")]
    )
    assert list(folder_path.iterdir()) == []
    # The copy made for the upload that was handed back stays (it may be queued for the
    # cloud already); the retaken upload made a copy of its own.
    copies = list((settings.snapshots_root_dir / "snapshots").rglob("*.jpg"))
    assert len(copies) > len(events)  # one per hand-back, however many there were
    kept = {event["inputs"][0]["storage_path"] for event in events}
    assert kept < {str(path) for path in copies}


def _upload_app(tmp_path: Path, **env: str) -> tuple[Settings, Peer]:
    exchange = unique_exchange()
    settings = make_settings(
        tmp_path,
        exchange,
        INPUT_1_LOCATION="Front Door",
        INPUT_1_TYPE="camera",
        UPLOAD_STABLE_SECONDS="0.2",
        **env,
    )
    return settings, Peer(exchange)


def test_an_uploads_event_time_and_its_folder_come_from_one_instant(tmp_path: Path) -> None:
    # Uploads that came while the daemon was down: one a day ago, one whose mtime a client
    # set a day ahead. Each event's time, file name and day folder must tell one time.
    folder_path = tmp_path / "upload" / "frontdoor"
    folder_path.mkdir(parents=True)
    now = int(time.time())  # whole seconds: the name's time is then exact
    yesterday, tomorrow = float(now - 86_400), float(now + 86_400)
    for name, when in (("yesterday.jpg", yesterday), ("tomorrow.jpg", tomorrow)):
        (folder_path / name).write_bytes(jpeg(name))
        os.utime(folder_path / name, (when, when))
    settings, peer = _upload_app(tmp_path)
    try:
        with running_app(settings):
            events = peer.wait_for_images(2)
            started = time.time()
    finally:
        peer.close()
    assert len(events) == 2
    by_image = {event["inputs"][0]["image"]: event["inputs"][0] for event in events}

    def day(seconds: float) -> str:
        return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d")

    old = by_image[jpeg("yesterday.jpg")]
    assert old["image_timestamp"] == str(int(yesterday))
    assert Path(old["storage_path"]).parent.name == day(yesterday)
    stamp = datetime.fromtimestamp(yesterday, UTC).strftime("%Y%m%dT%H%M%S")
    assert f"_{stamp}." in Path(old["storage_path"]).name
    ahead = by_image[jpeg("tomorrow.jpg")]
    assert int(ahead["image_timestamp"]) <= started
    assert Path(ahead["storage_path"]).parent.name == day(int(ahead["image_timestamp"]))


def test_links_and_special_files_are_never_read(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.jpg").write_bytes(jpeg("outside the upload dir"))
    folder_path = tmp_path / "upload" / "frontdoor"
    folder_path.mkdir(parents=True)
    (folder_path / "early.jpg").symlink_to(outside / "secret.jpg")  # there before the start
    settings, peer = _upload_app(tmp_path)
    symlinks, specials = _counter("symlink"), _counter("not_a_regular_file")
    try:
        with running_app(settings) as app:
            stage = next(w for w in app.workers if isinstance(w, IngestStage))
            assert stage.ready.wait(5)
            (folder_path / "passwd.jpg").symlink_to("/etc/passwd")
            (folder_path / "linked").symlink_to(outside, target_is_directory=True)
            os.mkfifo(folder_path / "pipe.jpg")
            (folder_path / "good.jpg").write_bytes(jpeg("good"))
            assert len(peer.wait_for_images(1)) == 1
            planted = ["early.jpg", "passwd.jpg", "linked", "pipe.jpg"]
            assert wait_until(
                lambda: not any(os.path.lexists(folder_path / name) for name in planted)
            )
            peer.pump(1.0)
            assert stage.is_alive()
    finally:
        peer.close()
    assert [event["inputs"][0]["image"] for event in peer.images()] == [jpeg("good")]
    assert _counter("symlink") == symlinks + 3
    assert _counter("not_a_regular_file") == specials + 1
    # The links' targets are left as they were, and nothing of them was copied anywhere.
    assert (outside / "secret.jpg").read_bytes() == jpeg("outside the upload dir")
    assert not (tmp_path / "quarantine").exists()
    stored = [p.read_bytes() for p in (tmp_path / "snapshots").rglob("*.jpg")]
    assert stored == [jpeg("good")]


def test_hostile_names_are_escaped_in_log_lines(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="snapshot_processor.ingest.stage")
    settings, peer = _upload_app(tmp_path, FTP_CREATE_DIRS="misc")
    try:
        with running_app(settings) as app:
            stage = next(w for w in app.workers if isinstance(w, IngestStage))
            assert stage.ready.wait(5)
            upload_dir = settings.ingest_dir
            (upload_dir / "frontdoor" / "two\nlines\u202egpj.jpg").write_bytes(jpeg("odd"))
            (upload_dir / "frontdoor" / "junk\u202e\n.jpg").write_bytes(b"not an image")
            (upload_dir / "misc" / "stray\n\u202e.jpg").write_bytes(jpeg("stray"))
            assert len(peer.wait_for_images(1)) == 1
            assert wait_until(lambda: "quarantine" in caplog.text and "stray" in caplog.text)
    finally:
        peer.close()
    messages = [
        r.getMessage() for r in caplog.records if r.name == "snapshot_processor.ingest.stage"
    ]
    assert any("two\\nlines\\u202egpj.jpg from Front Door camera" in m for m in messages)
    assert any("junk\\u202e\\n.jpg rejected" in m for m in messages)
    assert any("stray\\n\\u202e.jpg is in no input camera's folder" in m for m in messages)
    for message in messages:
        assert not {"\n", "\u202e"} & set(message), message


def test_strays_and_quarantine_are_bounded(tmp_path: Path) -> None:
    misc = tmp_path / "upload" / "misc"
    misc.mkdir(parents=True)
    (misc / "old.bin").write_bytes(b"o" * 1000)
    two_hours_ago = time.time() - 7200
    os.utime(misc / "old.bin", (two_hours_ago, two_hours_ago))
    settings, peer = _upload_app(
        tmp_path,
        FTP_CREATE_DIRS="misc",
        UPLOAD_STRAY_MAX_AGE="3600",
        UPLOAD_STRAY_MAX_BYTES="100000",
        UPLOAD_QUARANTINE_MAX_BYTES="100000",
    )
    removed = {
        reason: sample("uploads_removed_total", reason=reason)
        for reason in ("stray_age", "stray_size", "quarantine_size")
    }
    quarantine = tmp_path / "quarantine"
    frontdoor = tmp_path / "upload" / "frontdoor"
    try:
        with running_app(settings) as app:
            stage = next(w for w in app.workers if isinstance(w, IngestStage))
            assert stage.ready.wait(5)
            assert wait_until(lambda: not (misc / "old.bin").exists())  # too old at start
            (misc / "first.bin").write_bytes(b"1" * 60_000)
            assert wait_until(lambda: _ignored("no_camera") > 0)
            time.sleep(0.05)
            (misc / "second.bin").write_bytes(b"2" * 60_000)
            assert wait_until(lambda: not (misc / "first.bin").exists())
            (frontdoor / "q1.jpg").write_bytes(b"q" * 60_000)
            assert wait_until(lambda: quarantine.exists() and len(list(quarantine.iterdir())) == 1)
            time.sleep(0.05)
            (frontdoor / "q2.jpg").write_bytes(b"r" * 60_000)
            assert wait_until(lambda: not (frontdoor / "q2.jpg").exists())
            peer.pump(0.5)
    finally:
        peer.close()
    assert (misc / "second.bin").exists()  # the newest stray stays
    kept = list(quarantine.iterdir())
    assert [p.read_bytes()[:1] for p in kept] == [b"r"]  # the newest quarantined file stays
    assert sample("uploads_removed_total", reason="stray_age") == removed["stray_age"] + 1
    assert sample("uploads_removed_total", reason="stray_size") == removed["stray_size"] + 1
    assert (
        sample("uploads_removed_total", reason="quarantine_size") == removed["quarantine_size"] + 1
    )


def test_start_up_log_says_where_each_camera_uploads(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="snapshot_processor.ingest.ftp")
    settings, peer = _upload_app(
        tmp_path,
        FTP_PASS=FTP_PASSWORD,
        FTP_PORT="0",
        FTP_LISTEN_ADDRESS="127.0.0.1",
        INPUT_2_LOCATION="Back Yard",
        INPUT_2_TYPE="Camera",
        INPUT_3_LOCATION="Gate",
        INPUT_3_TYPE="contact",
    )
    try:
        with running_app(settings) as app:
            ftp = next(w for w in app.workers if isinstance(w, FtpServerThread))
            assert ftp.ready.wait(5)
            assert ftp.bound is not None
            port = ftp.bound[1]
    finally:
        peer.close()
    lines = [r.getMessage() for r in caplog.records if "uploads to" in r.getMessage()]
    assert lines == [
        f"ftp: camera 'Front Door camera' uploads to ftp://127.0.0.1:{port}/upload/frontdoor",
        f"ftp: camera 'Back Yard Camera' uploads to ftp://127.0.0.1:{port}/upload/backyard",
    ]
