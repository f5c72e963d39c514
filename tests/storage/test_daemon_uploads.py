"""Cloud storage in the whole daemon: the storage stage, the upload queue and the uploader,
against the loopback Drive fake and moto's S3 server, through the real broker."""

from __future__ import annotations

import hashlib
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3  # type: ignore[import-untyped]
import pytest

from pylib.upload.queue import UploadQueue
from tests.support.broker import Peer, delete_queue, running_app, trigger_body, unique_exchange
from tests.support.daemon import PASSWORD, camera_env, make_settings, spawn_daemon
from tests.support.drive_credentials import (
    CLIENT_ID,
    CLIENT_SECRET,
    drive_env,
)
from tests.support.fakes.drive import FakeDrive
from tests.support.ftp import jpeg
from tests.support.paths import CHECKOUT
from tests.support.s3 import listing_url, moto_s3
from tests.support.wait import wait_for_text, wait_until
from tools.camera_simulator import CameraSimulator

pytestmark = pytest.mark.broker

FOLDER = "Home snapshots"
BUCKET = "home-snapshots"
TOP = CHECKOUT


@pytest.fixture
def camera() -> Iterator[CameraSimulator]:
    with CameraSimulator(user="admin", password=PASSWORD) as simulator:
        yield simulator


@pytest.fixture
def drive() -> Iterator[FakeDrive]:
    with FakeDrive() as server:
        server.add_client(CLIENT_ID, CLIENT_SECRET)
        yield server


def uploaded(drive: FakeDrive) -> dict[str, bytes]:
    return {f.title: f.content for f in drive.files(folders=False)}


def test_each_event_links_its_drive_folder_and_the_image_is_uploaded(
    tmp_path: Path, camera: CameraSimulator, drive: FakeDrive
) -> None:
    exchange = unique_exchange()
    settings = make_settings(
        tmp_path, exchange, **camera_env(camera.port), **drive_env(drive, tmp_path, FOLDER)
    )
    peer = Peer(exchange)
    try:
        with running_app(settings) as app:
            # The uploader finds (here: makes) the folder at start, so the first event links it.
            assert wait_until(lambda: len(drive.files(folders=True)) == 1)
            [folder] = drive.files(folders=True)
            peer.send_trigger(trigger_body("Front Door camera", device_params=None))
            [event] = peer.wait_for_images(1)
            entry = event["inputs"][0]
            assert entry["storage_url"] == folder.resource()["alternateLink"]
            name = Path(entry["storage_path"]).name
            assert wait_until(lambda: name in uploaded(drive))
            assert uploaded(drive)[name] == entry["image"]
            # Into its bundle's folder, in the day's folder below the top one.
            [stored] = [f for f in drive.files(folders=False) if f.title == name]
            bundle_folder = drive.file(stored.parents[0])
            assert bundle_folder.title == Path(entry["storage_path"]).parent.name
            day = Path(entry["storage_path"]).parent.parent.relative_to(tmp_path / "bundles")
            assert drive.path_of(bundle_folder.id) == f"{FOLDER}/{day.as_posix()}"
            assert wait_until(lambda: (app.uploads() or {}).get("depth") == 0)
    finally:
        peer.close()


def test_an_outage_queues_uploads_that_a_restart_delivers(
    tmp_path: Path, camera: CameraSimulator, drive: FakeDrive
) -> None:
    exchange = unique_exchange()
    settings = make_settings(
        tmp_path, exchange, **camera_env(camera.port), **drive_env(drive, tmp_path, FOLDER)
    )
    peer = Peer(exchange)
    try:
        with running_app(settings) as app:
            assert wait_until(lambda: len(drive.files(folders=True)) == 1)
            drive.fail(503, "backendError", times=10_000, when=lambda r: r.method == "POST")
            for _ in range(3):
                peer.send_trigger(trigger_body("Front Door camera", device_params=None))
            events = peer.wait_for_images(3)
            # The events went out at once; their uploads wait, retried, in the queue.
            status = app.uploads()
            assert status is not None
            assert status["depth"] == 3
            assert wait_until(lambda: "drive" in (app.uploads() or {}).get("failing", {}), 15)
        queue = UploadQueue(settings.upload_queue_path, max_attempts=20)
        try:
            assert queue.depth() == 3
        finally:
            queue.close()
        drive.recover()
        with running_app(settings):
            # Tried at once at the start, not after their back-off.
            names = {Path(e["inputs"][0]["storage_path"]).name for e in events}
            assert wait_until(lambda: names <= set(uploaded(drive)), 10)
    finally:
        peer.close()


def test_sigkill_loses_no_queued_upload(
    tmp_path: Path, camera: CameraSimulator, drive: FakeDrive
) -> None:
    exchange = unique_exchange()
    data = tmp_path / "data"
    env = {
        "RABBITMQ_EXCHANGE": exchange,
        "DEVICE_NAME": "garage",
        "SNAPSHOTS_ROOT_DIR": str(data),
        "SECRETS_DIR": str(tmp_path / "no-secrets"),
        "HTTP_PORT": "0",
        **camera_env(camera.port),
        **drive_env(drive, tmp_path, FOLDER),
    }
    peer = Peer(exchange)
    first = second = None
    try:
        first = spawn_daemon(env, tmp_path / "first.log")
        assert wait_for_text(tmp_path / "first.log", "consuming")
        assert wait_until(lambda: len(drive.files(folders=True)) == 1)
        drive.fail(500, "backendError", times=10_000, when=lambda r: r.method == "POST")
        for _ in range(5):
            peer.send_trigger(trigger_body("Front Door camera", device_params=None))
        events = peer.wait_for_images(5)
        names = {Path(e["inputs"][0]["storage_path"]).name for e in events}
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        assert not names & set(uploaded(drive))
        drive.recover()
        second = spawn_daemon(env, tmp_path / "second.log")
        assert wait_until(lambda: names <= set(uploaded(drive)), 30), (
            tmp_path / "second.log"
        ).read_text()
        for event in events:
            entry = event["inputs"][0]
            content = uploaded(drive)[Path(entry["storage_path"]).name]
            assert hashlib.md5(content).digest() == hashlib.md5(entry["image"]).digest()
        second.send_signal(signal.SIGTERM)
        assert second.wait(15) == 0
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
        peer.close()
        delete_queue(f"{exchange}.snapshot.garage.triggers")


@pytest.fixture
def s3_endpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    with moto_s3(tmp_path, monkeypatch, BUCKET) as url:
        yield url


def test_drive_and_s3_both_get_every_file_and_the_link_is_s3s(
    tmp_path: Path, camera: CameraSimulator, drive: FakeDrive, s3_endpoint: str
) -> None:
    exchange = unique_exchange()
    settings = make_settings(
        tmp_path,
        exchange,
        **camera_env(camera.port),
        **drive_env(drive, tmp_path, FOLDER),
        S3_BUCKET=BUCKET,
        S3_PREFIX="house",
    )
    peer = Peer(exchange)
    client: Any = boto3.session.Session().client("s3")
    try:
        with running_app(settings):
            assert wait_until(lambda: len(drive.files(folders=True)) == 1)
            peer.send_trigger(trigger_body("Front Door camera", device_params=None))
            [event] = peer.wait_for_images(1)
            entry = event["inputs"][0]
            # S3 knows the bundle's folder before anything is uploaded; Drive does not.
            group = Path(entry["storage_path"]).parent.relative_to(tmp_path / "bundles")
            assert entry["storage_url"] == listing_url(
                s3_endpoint, BUCKET, f"house/bundles/{group}/"
            )
            name = Path(entry["storage_path"]).name

            def keys() -> list[str]:
                listed = client.list_objects_v2(Bucket=BUCKET).get("Contents", [])
                return [item["Key"] for item in listed]

            assert wait_until(lambda: any(key.endswith(name) for key in keys()))
            [key] = [key for key in keys() if key.endswith(name)]
            assert key == f"house/bundles/{group}/{name}"
            body = client.get_object(Bucket=BUCKET, Key=key)["Body"].read()
            assert body == entry["image"]
            assert wait_until(lambda: name in uploaded(drive))
    finally:
        client.close()
        peer.close()


def test_a_pushed_image_of_no_bundle_is_linked_to_its_object(
    tmp_path: Path, s3_endpoint: str
) -> None:
    exchange = unique_exchange()
    settings = make_settings(
        tmp_path,
        exchange,
        INPUT_1_LOCATION="Back Yard",
        INPUT_1_TYPE="camera",
        UPLOAD_STABLE_SECONDS="0.2",
        S3_BUCKET=BUCKET,
    )
    # An upload the camera left while the daemon was down: taken at start.
    folder = settings.ingest_dir / "backyard"
    folder.mkdir(parents=True)
    (folder / "snap.jpg").write_bytes(jpeg("pushed"))
    peer = Peer(exchange)
    try:
        with running_app(settings):
            [event] = peer.wait_for_images(1)
            entry = event["inputs"][0]
            name = Path(entry["storage_path"]).name
            assert "bundle_id" not in entry
            assert entry["storage_url"].startswith(f"{s3_endpoint}/{BUCKET}/back-yard-camera/")
            assert entry["storage_url"].endswith(name)
    finally:
        peer.close()
