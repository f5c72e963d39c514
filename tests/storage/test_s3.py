"""S3 destination against moto's S3 server (and a loopback S3 that fails on purpose)."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import boto3  # type: ignore[import-untyped]
import pytest
import requests
from moto.server import ThreadedMotoServer

from pylib.upload.destination import UploadItem, UploadRefusedError, UploadRetryError
from snapshot_processor.storage.s3 import DENIED_PAUSE, S3Destination
from tests.support.broker import Peer, running_app, trigger_body, unique_exchange
from tests.support.daemon import PASSWORD, camera_env, make_settings
from tests.support.fakes.s3 import FailingS3, MisstoringS3
from tests.support.net import free_port
from tests.support.wait import wait_until
from tools.camera_simulator import CameraSimulator

BUCKET = "snapshots"
# 23:30 UTC: the day of the key is the UTC day, whatever the local time zone.
TAKEN = datetime(2026, 3, 14, 23, 30, 5, tzinfo=UTC).timestamp()


@pytest.fixture
def aws_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Fake credentials, and no shared AWS files of the machine running the tests."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLETESTING")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test-secret-key-not-real")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)


@pytest.fixture
def endpoint(aws_env: None, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        url = f"http://{host}:{port}"
        monkeypatch.setenv("AWS_ENDPOINT_URL_S3", url)
        yield url
    finally:
        server.stop()


@pytest.fixture
def s3(endpoint: str) -> Iterator[Any]:
    client = boto3.session.Session().client("s3")
    client.create_bucket(Bucket=BUCKET)
    yield client
    client.close()


@pytest.fixture
def snapshot(tmp_path: Path) -> UploadItem:
    path = tmp_path / "front-door_20260314T233005.000000Z_abc.jpg"
    path.write_bytes(b"\xff\xd8 a jpeg of sorts \xff\xd9" * 100)
    return UploadItem(path, path.name, "Front Door camera", TAKEN)


@pytest.fixture
def destination(s3: Any) -> Iterator[S3Destination]:
    made = S3Destination(BUCKET, "/home/cameras/")
    yield made
    made.close()


def keys(s3: Any) -> list[str]:
    listing = s3.list_objects_v2(Bucket=BUCKET)
    return [entry["Key"] for entry in listing.get("Contents", [])]


def test_upload_puts_the_file_at_a_dated_key(
    destination: S3Destination, s3: Any, snapshot: UploadItem
) -> None:
    destination.upload(snapshot)
    key = f"home/cameras/front-door-camera/2026/03/14/{snapshot.name}"
    assert destination.key(snapshot) == key
    assert keys(s3) == [key]
    stored = s3.get_object(Bucket=BUCKET, Key=key)
    assert stored["Body"].read() == snapshot.path.read_bytes()
    assert stored["ContentType"] == "image/jpeg"


def test_a_retry_makes_no_second_object(
    destination: S3Destination, s3: Any, snapshot: UploadItem
) -> None:
    destination.upload(snapshot)
    destination.upload(snapshot)
    assert len(keys(s3)) == 1


def test_without_a_prefix_the_key_starts_at_the_camera(s3: Any, snapshot: UploadItem) -> None:
    plain = S3Destination(BUCKET)
    try:
        assert plain.key(snapshot) == f"front-door-camera/2026/03/14/{snapshot.name}"
    finally:
        plain.close()


def test_the_link_is_the_objects_url_at_the_endpoint(
    destination: S3Destination, s3: Any, endpoint: str, snapshot: UploadItem
) -> None:
    link = destination.link(snapshot)
    # A custom endpoint is addressed path style: <endpoint>/<bucket>/<key>.
    assert link == f"{endpoint}/{BUCKET}/{destination.key(snapshot)}"
    destination.upload(snapshot)
    # Made readable by anyone, the object opens from the link without signing.
    s3.put_object_acl(Bucket=BUCKET, Key=destination.key(snapshot), ACL="public-read")
    answer = requests.get(link, timeout=10)
    assert answer.status_code == 200
    assert answer.content == snapshot.path.read_bytes()


def test_a_groups_files_share_one_prefix_and_its_link(
    destination: S3Destination, s3: Any, endpoint: str, snapshot: UploadItem
) -> None:
    grouped = replace(snapshot, group="2026/03/14/20260314T233005Z_hall-pir_abcdef12")
    destination.upload(grouped)
    prefix = "home/cameras/bundles/2026/03/14/20260314T233005Z_hall-pir_abcdef12"
    assert [key for key in keys(s3) if "/bundles/" in key] == [f"{prefix}/{snapshot.name}"]
    # The folder's link, known before anything of it is uploaded: the prefix's listing.
    assert destination.links_ahead
    link = destination.link(grouped)
    assert link == f"{endpoint}/{BUCKET}?list-type=2&prefix={quote(prefix + '/', safe='')}" + (
        "&encoding-type=url"
    )
    s3.put_bucket_acl(Bucket=BUCKET, ACL="public-read")
    listing = requests.get(link, timeout=10)
    assert listing.status_code == 200
    assert f"<Key>{prefix}/{snapshot.name}</Key>" in listing.text


def test_a_copy_whose_etag_is_not_the_files_md5_is_tried_again(
    aws_env: None, monkeypatch: pytest.MonkeyPatch, snapshot: UploadItem
) -> None:
    with MisstoringS3() as fake:
        monkeypatch.setenv("AWS_ENDPOINT_URL_S3", fake.base_url)
        misstoring = S3Destination(BUCKET, max_attempts=1)
        try:
            with pytest.raises(UploadRetryError, match="differs from the local file"):
                misstoring.upload(snapshot)
        finally:
            misstoring.close()
    [put] = fake.requests
    # The MD5 went with the body, so a store that checks it refuses a damaged upload.
    expected = base64.b64encode(hashlib.md5(snapshot.path.read_bytes()).digest()).decode()
    assert put.headers["content-md5"] == expected


def test_a_missing_bucket_is_refused(s3: Any, snapshot: UploadItem) -> None:
    nowhere = S3Destination("no-such-bucket")
    try:
        with pytest.raises(UploadRefusedError, match="NoSuchBucket"):
            nowhere.upload(snapshot)
    finally:
        nowhere.close()


def test_a_missing_file_is_refused(destination: S3Destination, snapshot: UploadItem) -> None:
    snapshot.path.unlink()
    with pytest.raises(UploadRefusedError, match="is gone"):
        destination.upload(snapshot)


@pytest.mark.parametrize(
    ("status", "code", "after"),
    [(503, "SlowDown", None), (500, "InternalError", None), (403, "AccessDenied", DENIED_PAUSE)],
)
def test_throttling_failures_and_denials_are_retried(
    aws_env: None,
    monkeypatch: pytest.MonkeyPatch,
    snapshot: UploadItem,
    status: int,
    code: str,
    after: float | None,
) -> None:
    with FailingS3(status, code) as fake:
        monkeypatch.setenv("AWS_ENDPOINT_URL_S3", fake.base_url)
        failing = S3Destination(BUCKET, max_attempts=1)
        try:
            with pytest.raises(UploadRetryError, match=code) as caught:
                failing.upload(snapshot)
        finally:
            failing.close()
    assert caught.value.after == after
    assert [r.method for r in fake.requests] == ["PUT"]
    assert "test-secret-key-not-real" not in str(caught.value)


def test_a_bad_request_is_refused(
    aws_env: None, monkeypatch: pytest.MonkeyPatch, snapshot: UploadItem
) -> None:
    with FailingS3(400, "InvalidArgument") as fake:
        monkeypatch.setenv("AWS_ENDPOINT_URL_S3", fake.base_url)
        failing = S3Destination(BUCKET, max_attempts=1)
        try:
            with pytest.raises(UploadRefusedError, match="InvalidArgument"):
                failing.upload(snapshot)
        finally:
            failing.close()


def test_an_endpoint_that_is_down_is_retried(
    aws_env: None, monkeypatch: pytest.MonkeyPatch, snapshot: UploadItem
) -> None:
    with FailingS3(200, "unused") as fake:
        url = fake.base_url
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", url)  # nothing listens there now
    failing = S3Destination(BUCKET, max_attempts=1, connect_timeout=2)
    try:
        with pytest.raises(UploadRetryError, match="EndpointConnectionError"):
            failing.upload(snapshot)
    finally:
        failing.close()


def test_on_aws_the_link_is_virtual_host_style(aws_env: None, snapshot: UploadItem) -> None:
    aws = S3Destination(BUCKET, "cams")
    try:
        assert aws.link(snapshot) == (
            f"https://{BUCKET}.s3.amazonaws.com/cams/front-door-camera/2026/03/14/{snapshot.name}"
        )
    finally:
        aws.close()


@pytest.mark.broker
def test_a_daemon_whose_bucket_is_missing_says_the_upload_is_parked(
    endpoint: str, tmp_path: Path
) -> None:
    # The event went out with its storage_url; the API then says the copy was never made.
    port = free_port()
    with CameraSimulator(user="admin", password=PASSWORD) as camera:
        settings = make_settings(
            tmp_path,
            unique_exchange(),
            **camera_env(camera.port),
            HTTP_PORT=str(port),
            S3_BUCKET="no-such-bucket",
        )
        peer = Peer(settings.broker.exchange)
        try:
            with running_app(settings):
                peer.send_trigger(trigger_body("Front Door camera", device_params=None))
                [image] = peer.wait_for_images(1)
                assert image["inputs"][0]["storage_url"]

                def parked() -> str | None:
                    answer = requests.get(f"http://127.0.0.1:{port}/api/events", timeout=5)
                    [event] = answer.json()["events"]
                    why: str | None = event["upload_parked"]
                    return why

                assert wait_until(lambda: parked() is not None, 30)
                assert (reason := parked())
                assert reason.startswith("s3: ")
                assert "NoSuchBucket" in reason
        finally:
            peer.close()


def test_the_online_check_reaches_the_bucket_or_says_why_not(
    destination: S3Destination,
) -> None:
    assert destination.check() == f"bucket {BUCKET} is there and may be written"
    nowhere = S3Destination("no-such-bucket")
    try:
        with pytest.raises(UploadRefusedError, match="404"):
            nowhere.check()
    finally:
        nowhere.close()
