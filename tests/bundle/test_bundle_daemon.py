"""Evidence bundles in the whole daemon, over the real broker, with loopback cameras, the
Drive fake and moto's S3: one sensor event is one bundle, one folder per destination, one
bundle event and a sealed manifest whose checksums match what was stored off-site."""

from __future__ import annotations

import hashlib
import json
import signal
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest

from snapshot_processor.app import App
from snapshot_processor.bundle.store import SEALED, UPLOADING
from tests.support.broker import Peer, delete_queue, running_app, trigger_body, unique_exchange
from tests.support.daemon import PASSWORD, camera_env, make_settings, spawn_daemon
from tests.support.drive_credentials import (
    CLIENT_ID,
    CLIENT_SECRET,
    drive_env,
)
from tests.support.fakes.drive import FakeDrive
from tests.support.s3 import listing_url, moto_s3, objects
from tests.support.tcp_proxy import TcpProxy
from tests.support.wait import wait_for_text, wait_until
from tools.camera_simulator import CameraSimulator

pytestmark = pytest.mark.broker

BUCKET = "home-snapshots"
FOLDER = "Home snapshots"
LOCATIONS = ("Front Door", "Yard", "Garage", "Drive Way")
# What the Java event processor maps, with the types it needs.
TODAY = {
    "device_key": str,
    "device_label": str,
    "type": str,
    "image": bytes,
    "image_timestamp": str,
    "storage_path": str,
}


@pytest.fixture
def cameras() -> Iterator[list[CameraSimulator]]:
    with ExitStack() as stack:
        yield [
            stack.enter_context(CameraSimulator(user="admin", password=PASSWORD)) for _ in LOCATIONS
        ]


@pytest.fixture
def s3(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    with moto_s3(tmp_path, monkeypatch, BUCKET) as url:
        yield url


@pytest.fixture
def drive() -> Iterator[FakeDrive]:
    with FakeDrive() as server:
        server.add_client(CLIENT_ID, CLIENT_SECRET)
        yield server


def cameras_env(cameras: list[CameraSimulator]) -> dict[str, str]:
    env: dict[str, str] = {}
    for n, (camera, location) in enumerate(zip(cameras, LOCATIONS, strict=False), start=1):
        env |= camera_env(camera.port, n=n, location=location)
    return env


def fire(peer: Peer, sensor: str, locations: tuple[str, ...] | list[str]) -> None:
    """The triggers one sensor event sends: one per camera mapped to it."""
    for location in locations:
        body = trigger_body(f"{location} camera", device_params=None, label=location)
        body["active_input"] = {"device_key": sensor, "device_type": "pir"}
        peer.send_trigger(body)


def state(app: App, bundle_id: str) -> str | None:
    found = app.bundles.store.bundle(bundle_id)
    return None if found is None else found.state


def test_four_cameras_three_frames_make_one_sealed_bundle_in_one_folder_per_destination(
    tmp_path: Path, cameras: list[CameraSimulator], s3: str, drive: FakeDrive
) -> None:
    exchange = unique_exchange()
    settings = make_settings(
        tmp_path,
        exchange,
        SNAPSHOTS_PER_TRIGGER="3",
        SNAPSHOT_INTERVAL="0.3",
        S3_BUCKET=BUCKET,
        **drive_env(drive, tmp_path, FOLDER),
        **cameras_env(cameras),
    )
    peer = Peer(exchange)
    try:
        with running_app(settings) as app:
            fire(peer, "hall pir", LOCATIONS)
            assert peer.pump_until(lambda: peer.bundles() and len(peer.images()) >= 12)
            [bundle] = peer.bundles()
            bundle_id = bundle["bundle_id"]
            assert wait_until(lambda: state(app, bundle_id) == SEALED, 30)
            peer.pump(0.3)
            images = peer.images()
    finally:
        peer.close()

    # Today's consumers read every image event as before; the bundle adds two fields.
    entries = [event["inputs"][0] for event in images]
    assert len(entries) == 12
    for entry in entries:
        for name, kind in TODAY.items():
            assert isinstance(entry[name], kind), name
        assert entry["bundle_id"] == bundle_id
    assert sorted(Counter((e["device_key"], e["frame"]) for e in entries).values()) == [1] * 12
    assert {e["frame"] for e in entries} == {1, 2, 3}

    # The bundle event: every frame, no failure, the first frame best (no detection here).
    assert bundle["inputs"] == []
    assert bundle["complete_by"] == "all cameras"
    assert bundle["failed"] == []
    assert len(bundle["cameras"]) == 4
    frames = {f["event_id"]: f for f in bundle["frames"] if f["kind"] == "frame"}
    assert set(frames) == {e["event_id"] for e in entries}
    for entry in entries:
        listed = frames[entry["event_id"]]
        assert listed["device_key"] == entry["device_key"]
        assert listed["sha256"] == hashlib.sha256(entry["image"]).hexdigest()
        assert listed["size"] == len(entry["image"])
        assert listed["storage_path"] == entry["storage_path"]
    assert bundle["best"]["event_id"] in frames

    # One folder here, one S3 prefix, one Drive folder in the day folder: each with all.
    folder = Path(bundle["storage_path"])
    assert {Path(e["storage_path"]).parent for e in entries} == {folder}
    assert folder.parent.relative_to(tmp_path / "bundles").as_posix().count("/") == 2
    group = folder.relative_to(tmp_path / "bundles").as_posix()
    stored = objects(BUCKET, f"bundles/{group}/")
    names = {Path(e["storage_path"]).name for e in entries}
    assert names | {"manifest.json"} <= {key.rpartition("/")[2] for key in stored}
    link = listing_url(s3, BUCKET, f"bundles/{group}/")
    assert {e["storage_url"] for e in entries} == {link}  # S3 knows its folder at once
    assert bundle["storage_url"] == link
    [drive_folder] = [f for f in drive.files(folders=True) if f.title == folder.name]
    assert f"{drive.path_of(drive_folder.id)}/{drive_folder.title}" == f"{FOLDER}/{group}"
    in_drive = {f.title: f.content for f in drive.files(drive_folder.id, folders=False)}
    assert set(in_drive) == {key.rpartition("/")[2] for key in stored}

    # The receipt: uploaded last, its checksums those of the objects in both places.
    manifest = json.loads(stored[f"bundles/{group}/manifest.json"])
    assert manifest == json.loads((folder / "manifest.json").read_text())
    assert in_drive["manifest.json"] == stored[f"bundles/{group}/manifest.json"]
    receipt = {item["name"]: item for item in manifest["receipt"]["files"]}
    assert names <= set(receipt)
    for name, item in receipt.items():
        content = stored[f"bundles/{group}/{name}"]
        assert item["sha256"] == hashlib.sha256(content).hexdigest()
        assert item["md5"] == hashlib.md5(content).hexdigest()
        assert set(item["verified"]) == {"drive", "s3"}
        assert in_drive[name] == content
    assert manifest["receipt"]["destinations"] == ["drive", "s3"]


def test_a_failing_camera_is_named_in_its_bundle_and_two_sensors_make_two_bundles(
    tmp_path: Path, cameras: list[CameraSimulator], s3: str
) -> None:
    exchange = unique_exchange()
    cameras[1].mode = "error"  # the Yard camera answers with Foscam's error document
    settings = make_settings(
        tmp_path,
        exchange,
        SNAPSHOTS_PER_TRIGGER="2",
        SNAPSHOT_INTERVAL="0.2",
        S3_BUCKET=BUCKET,
        **cameras_env(cameras),
    )
    peer = Peer(exchange)
    try:
        with running_app(settings) as app:
            # Two sensors at once, their triggers interleaved on the wire.
            for in_hall, at_gate in (("Front Door", "Garage"), ("Yard", "Drive Way")):
                fire(peer, "hall pir", [in_hall])
                fire(peer, "gate contact", [at_gate])
            assert peer.pump_until(lambda: len(peer.bundles()) == 2 and len(peer.images()) >= 6)
            bundles = {b["sensor"]: b for b in peer.bundles()}
            assert wait_until(
                lambda: all(state(app, b["bundle_id"]) == SEALED for b in bundles.values()), 30
            )
            peer.pump(0.3)
            images = [event["inputs"][0] for event in peer.images()]
    finally:
        peer.close()
    assert set(bundles) == {"hall pir", "gate contact"}
    hall, gate = bundles["hall pir"], bundles["gate contact"]
    assert hall["bundle_id"] != gate["bundle_id"]
    by_bundle = {
        bundle_id: {(e["device_key"], e["frame"]) for e in images if e["bundle_id"] == bundle_id}
        for bundle_id in (hall["bundle_id"], gate["bundle_id"])
    }
    assert by_bundle[hall["bundle_id"]] == {("Front Door camera", 1), ("Front Door camera", 2)}
    assert by_bundle[gate["bundle_id"]] == {
        ("Garage camera", 1),
        ("Garage camera", 2),
        ("Drive Way camera", 1),
        ("Drive Way camera", 2),
    }
    assert {f["device_key"] for f in hall["frames"]} == {"Front Door camera"}
    assert {f["device_key"] for f in gate["frames"]} == {"Garage camera", "Drive Way camera"}
    # The failing camera: listed with why, its frames missing, the bundle complete anyway.
    [failed] = hall["failed"]
    assert failed["device_key"] == "Yard camera"
    assert "snapshot 2 of 2" in failed["reason"]
    assert hall["complete_by"] == "all cameras"
    assert gate["failed"] == []
    yard = next(c for c in hall["cameras"] if c["device_key"] == "Yard camera")
    assert (yard["frames_asked"], yard["frames_taken"]) == (2, 0)


def test_s3_down_past_the_deadline_announces_on_time_and_seals_once_it_is_back(
    tmp_path: Path,
    cameras: list[CameraSimulator],
    s3: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    exchange = unique_exchange()
    cameras[1].mode = "hang"  # answers nothing: only the deadline ends its part
    settings = make_settings(
        tmp_path,
        exchange,
        SNAPSHOTS_PER_TRIGGER="2",
        SNAPSHOT_INTERVAL="0.2",
        BUNDLE_DEADLINE="3",
        CAMERA_TIMEOUT="8",
        S3_BUCKET=BUCKET,
        **cameras_env(cameras[:2]),
    )
    port = int(s3.rpartition(":")[2])
    peer = Peer(exchange)
    with TcpProxy(target_port=port) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL_S3", f"http://127.0.0.1:{proxy.port}")
        proxy.cut()
        try:
            with running_app(settings) as app:
                fire(peer, "hall pir", LOCATIONS[:2])
                assert peer.pump_until(lambda: peer.bundles(), 15)
                [bundle] = peer.bundles()
                bundle_id = bundle["bundle_id"]
                assert bundle["complete_by"] == "deadline"
                [failed] = bundle["failed"]
                assert failed["device_key"] == "Yard camera"
                assert "deadline" in failed["reason"]
                frames = [f for f in bundle["frames"] if f["kind"] == "frame"]
                assert len(frames) == 2
                assert all(f["storage_url"] is None for f in frames)  # nothing off-site yet
                assert state(app, bundle_id) == UPLOADING
                kept = app.bundles.store.bundle(bundle_id)
                assert kept is not None
                assert not any(f.copies for f in kept.files)
                proxy.restore()
                assert wait_until(lambda: state(app, bundle_id) == SEALED, 60)
        finally:
            peer.close()
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", s3)
    group = Path(bundle["storage_path"]).relative_to(tmp_path / "bundles").as_posix()
    stored = objects(BUCKET, f"bundles/{group}/")
    manifest = json.loads(stored[f"bundles/{group}/manifest.json"])
    assert {f["event_id"] for f in manifest["frames"]} == {f["event_id"] for f in frames}
    assert all(f["storage_url"] for f in manifest["frames"])
    assert manifest["failed"] == bundle["failed"]


def sent(bundle: dict[str, Any]) -> set[str]:
    return {f["event_id"] for f in bundle["frames"] if f["kind"] == "frame"}


def test_sigkill_mid_bundle_closes_it_at_the_restart_and_uploads_nothing_twice(
    tmp_path: Path, cameras: list[CameraSimulator], drive: FakeDrive
) -> None:
    exchange = unique_exchange()
    env = {
        "RABBITMQ_EXCHANGE": exchange,
        "DEVICE_NAME": "garage",
        "SNAPSHOTS_ROOT_DIR": str(tmp_path / "data"),
        "SECRETS_DIR": str(tmp_path / "no-secrets"),
        "HTTP_PORT": "0",
        "CAMERA_RETRIES": "0",
        "SNAPSHOTS_PER_TRIGGER": "3",
        "SNAPSHOT_INTERVAL": "1.5",
        **drive_env(drive, tmp_path, FOLDER),
        **cameras_env(cameras[:2]),
    }
    peer = Peer(exchange)
    first = second = None
    try:
        first = spawn_daemon(env, tmp_path / "first.log")
        assert wait_for_text(tmp_path / "first.log", "consuming")
        fire(peer, "hall pir", LOCATIONS[:2])
        # Each camera's first frame is out; the bursts go on for three seconds more.
        assert peer.pump_until(lambda: len(peer.images()) >= 2, 15)
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        before = [event["inputs"][0] for event in peer.images()]
        assert len(before) < 6
        assert not peer.bundles()
        second = spawn_daemon(env, tmp_path / "second.log")
        # The bundle cut short is closed with what it holds; the triggers, never acked,
        # come again and make a bundle of their own, whole.
        assert peer.pump_until(lambda: len(peer.bundles()) == 2, 30), (
            tmp_path / "second.log"
        ).read_text()
        bundles = {b["complete_by"]: b for b in peer.bundles()}
        assert set(bundles) == {"restart", "all cameras"}
        cut, whole = bundles["restart"], bundles["all cameras"]
        old = {e["bundle_id"] for e in before}
        assert old == {cut["bundle_id"]}
        assert {e["event_id"] for e in before} <= sent(cut)
        assert {f["device_key"] for f in cut["failed"]} <= {"Front Door camera", "Yard camera"}
        assert all("stopped" in f["reason"] for f in cut["failed"])
        assert len(sent(whole)) == 6
        # Every file of both bundles reaches Drive once, and both are sealed.
        assert peer.pump_until(lambda: len(peer.images()) >= len(before) + 6, 15)
        names = [f.title for f in drive.files(folders=False)]

        def all_uploaded() -> bool:
            titles = [f.title for f in drive.files(folders=False)]
            return titles.count("manifest.json") == 2

        assert wait_until(all_uploaded, 30), (tmp_path / "second.log").read_text()
        names = [f.title for f in drive.files(folders=False)]
        assert len(names) - names.count("manifest.json") == len(set(names) - {"manifest.json"})
        for entry in [event["inputs"][0] for event in peer.images()]:
            assert Path(entry["storage_path"]).name in names
        second.send_signal(signal.SIGTERM)
        assert second.wait(15) == 0
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
        peer.close()
        delete_queue(f"{exchange}.snapshot.garage.triggers")
