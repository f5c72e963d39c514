"""A full disk under the data root, on a real small tmpfs the test fills: no trigger is
settled without its event, no event is published twice, the trouble is in health and
logged sparingly, and all recovers on its own once there is room."""

from __future__ import annotations

import errno
import logging
import os
import subprocess
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from pylib.amqp.outbox import Outbox
from pylib.amqp.publisher import AmqpPublisher
from pylib.chain.settle import DONE_KIND, Settlement, ack_token, publish_envelope
from pylib.chain.sockets import Sender, bind_pull, inproc
from pylib.retry import RetryPolicy
from snapshot_processor.camera.stage import SnapshotStage
from snapshot_processor.contract.messages import BUNDLE_CAMERA_KIND
from snapshot_processor.storage.files import BUNDLES_DIR
from tests.camera.test_stage import KEY, PASSWORD, registry, trigger
from tests.pylib.test_amqp_publisher import declare, image, names, proxied, receive
from tests.support.broker import Peer, running_app, trigger_body, unique_exchange
from tests.support.daemon import camera_env, make_settings
from tests.support.drive_credentials import write_user_credentials
from tests.support.fakes.drive import FakeDrive
from tests.support.metrics import sample
from tests.support.tcp_proxy import TcpProxy
from tests.support.wait import wait_until
from tests.support.wire import Wire
from tests.support.wire import wire as wire_for
from tools.camera_simulator import CameraSimulator


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MB tmpfs of its own, unmounted at the end."""
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount_point)],
        capture_output=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=True)


def fill(disk: Path) -> Path:
    """Take every free byte of ``disk`` with one file; delete it to free the space."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        for chunk in (b"\0" * (1 << 20), b"\0" * (1 << 12), b"\0"):
            try:
                while os.write(fd, chunk):
                    pass
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
    finally:
        os.close(fd)
    assert os.statvfs(disk).f_bavail == 0
    return filler


@pytest.fixture
def peer() -> Iterator[Peer]:
    subscriber = Peer(unique_exchange())
    try:
        yield subscriber
    finally:
        subscriber.close()


@pytest.mark.broker
def test_outbox_on_a_full_disk_never_republishes_and_recovers(
    disk: Path, peer: Peer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="pylib.amqp.publisher")
    acks = inproc(f"disk-acks-{uuid.uuid4().hex[:8]}")
    ack_pull = bind_pull(acks)
    errors = sample("amqp_publish_failures_total", reason="outbox_error")
    outbox_path = disk / "outbox.sqlite3"
    with TcpProxy("127.0.0.1", 5672) as proxy:
        proxy.cut()  # the broker away at first, so the events wait in the outbox
        publisher = AmqpPublisher(
            "pub-disk",
            threading.Event(),
            params=proxied(proxy),
            setup=declare(peer.exchange),
            outbox_path=outbox_path,
            inbox=inproc(f"pub-disk-{uuid.uuid4().hex[:8]}"),
            retry=RetryPolicy(first=0.1, maximum=0.3),
            store_retry=RetryPolicy(first=0.1, maximum=0.3),
        )
        publisher.start()
        sender = Sender(publisher.inbox)
        try:
            for n in range(5):
                owed = Settlement({"reply_to": acks, "n": n})
                sender.send(publish_envelope(image(peer.exchange, f"e{n}".encode()), owed))
            assert len(receive(ack_pull, 5)) == 5  # stored while there was room
            filler = fill(disk)
            proxy.restore()
            # Confirmed, but their rows cannot be removed: sent once, never again.
            assert len(peer.wait_for_images(5)) == 5
            assert wait_until(
                lambda: sample("amqp_publish_failures_total", reason="outbox_error") >= errors + 5
            )
            peer.pump(1.0)
            assert names(peer.images()) == [f"e{n}" for n in range(5)]
            [trouble] = publisher.troubles()
            assert "outbox cannot be written" in trouble
            # A new event cannot be stored: held, and its work not acked.
            sender.send(
                publish_envelope(image(peer.exchange, b"late"), Settlement({"reply_to": acks}))
            )
            assert receive(ack_pull, 1, timeout=1.0) == []
            logged = [
                r
                for r in caplog.records
                if r.name == "pylib.amqp.publisher" and r.levelno == logging.ERROR
            ]

            filler.unlink()  # room again: everything goes on by itself
            assert [ack["requeue"] for ack in receive(ack_pull, 1)] == [False]
            assert len(peer.wait_for_images(6)) == 6
            assert wait_until(lambda: publisher.troubles() == [])
            peer.pump(0.5)
        finally:
            sender.close()
            ack_pull.close(linger=0)
            assert publisher.stop_and_join(10)
    assert names(peer.images()) == [*(f"e{n}" for n in range(5)), "late"]
    assert len(logged) == 1  # many failures, one line (the next only after a minute)
    assert "failure(s) so far" in logged[0].getMessage()
    with Outbox(outbox_path) as outbox:
        assert len(outbox) == 0


@pytest.fixture
def camera() -> Iterator[CameraSimulator]:
    with CameraSimulator(user="admin", password=PASSWORD) as simulator:
        yield simulator


@pytest.fixture
def wire() -> Iterator[Wire]:
    with wire_for("snapshot-disk", aside={BUNDLE_CAMERA_KIND}) as ends:
        yield ends


def test_snapshot_that_cannot_be_written_gives_its_trigger_back(
    disk: Path, camera: CameraSimulator, wire: Wire
) -> None:
    failures = sample("snapshot_failures_total", camera=KEY, reason="write_failed")
    stage = SnapshotStage(
        "snapshot-disk",
        threading.Event(),
        cameras=registry(camera),
        root=disk,
        inbox=wire.inbox,
        outbox=wire.outbox,
    )
    stage.start()
    try:
        assert stage.ready.wait(5)
        filler = fill(disk)
        with wire.sender() as sender:
            sender.send(trigger(1))
            [given_back] = wire.receive(1)
            trouble = stage.troubles()
            filler.unlink()
            sender.send(trigger(2))
            [kept] = wire.receive(1)
    finally:
        assert stage.stop_and_join(10)
    # A requeue mark, not a done mark that would ack a trigger with no event.
    assert given_back.kind == DONE_KIND
    assert given_back.body["requeue"] is True
    assert given_back.body["ack"] == ack_token("inproc://acks", tag=1)
    assert len(trouble) == 1
    assert "cannot write snapshots" in trouble[0]
    assert sample("snapshot_failures_total", camera=KEY, reason="write_failed") == failures + 1
    assert kept.body["ack"]["tag"] == 2
    assert Path(kept.body["storage_path"]).stat().st_size > 0
    assert not list(disk.rglob("*.part"))  # no half file left to take the space
    assert stage.troubles() == []


@pytest.fixture
def snapshots_disk(disk: Path) -> Iterator[Path]:
    """A roomy tmpfs of its own for the snapshots under ``disk`` (a bundle's, as triggered
    ones are), so that they can be written while the rest of the data root (the upload
    queue) is full."""
    mount_point = disk / BUNDLES_DIR
    mount_point.mkdir()
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mount_point)], check=True
    )
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=True)


@pytest.mark.broker
def test_a_snapshot_whose_upload_row_cannot_be_written_is_removed_and_its_trigger_comes_again(
    disk: Path, snapshots_disk: Path, camera: CameraSimulator, fake: FakeDrive, tmp_path: Path
) -> None:
    credentials = tmp_path / "drive.json"
    write_user_credentials(fake, credentials)
    exchange = unique_exchange()
    settings = make_settings(
        tmp_path,
        exchange,
        **camera_env(camera.port, PASSWORD),
        SNAPSHOTS_ROOT_DIR=str(disk),
        RETENTION_MIN_FREE_BYTES="0",
        GOOGLE_DRIVE_FOLDER="Snapshots",
        GOOGLE_DRIVE_CREDENTIALS=str(credentials),
        GOOGLE_DRIVE_API_URL=fake.api_url,
    )
    refused = sample("upload_queue_write_failures_total")
    received = sample("amqp_messages_received_total", queue=settings.queue_name)

    def kept() -> list[Path]:
        return sorted(snapshots_disk.rglob("*.jpg"))

    peer = Peer(exchange)
    try:
        with running_app(settings):
            assert wait_until(lambda: len(fake.files(folders=True)) == 1)  # the uploader is idle
            filler = fill(disk)
            peer.send_trigger(trigger_body(KEY, device_params=None))
            assert wait_until(lambda: sample("upload_queue_write_failures_total") > refused)
            # Written, then refused its upload row: removed before its trigger goes back.
            assert wait_until(lambda: kept() == [])
            assert peer.images() == []
            filler.unlink()
            [event] = peer.wait_for_images(1)
            path = Path(event["inputs"][0]["storage_path"])
            assert wait_until(lambda: path.name in {f.title for f in fake.files(folders=False)})
    finally:
        peer.close()
    # It came again through the chain, not the broker: no delivery counted against a
    # quorum queue's limit.
    assert sample("amqp_messages_received_total", queue=settings.queue_name) == received + 1
    assert kept() == [path]
