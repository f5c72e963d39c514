"""A camera that hangs, in the whole daemon over the real RabbitMQ: the other camera's
triggers flow, the hanging camera's are bounded and coalesced, and its breaker shows."""

from __future__ import annotations

import time
from pathlib import Path

import pika
import pytest

from snapshot_processor import config
from tests.support.broker import BROKER, Peer, running_app, trigger_body, unique_exchange
from tests.support.daemon import camera_env
from tests.support.metrics import sample
from tests.support.wait import wait_until
from tools.camera_simulator import CameraSimulator

pytestmark = pytest.mark.broker

PASSWORD = "s3cret pass"


def queue_depth(name: str) -> int:
    connection = pika.BlockingConnection(BROKER)
    try:
        return int(connection.channel().queue_declare(name, passive=True).method.message_count)
    finally:
        connection.close()


def test_a_hanging_camera_holds_neither_threads_nor_the_prefetch_window(tmp_path: Path) -> None:
    exchange = unique_exchange()
    coalesced = sample("snapshot_triggers_coalesced_total", camera="Hung camera")
    with (
        CameraSimulator(user="admin", password=PASSWORD, mode="hang") as hung,
        CameraSimulator(user="admin", password=PASSWORD) as healthy,
    ):
        settings = config.load(
            env={
                "RABBITMQ_EXCHANGE": exchange,
                "DEVICE_NAME": "garage",
                "SNAPSHOTS_ROOT_DIR": str(tmp_path),
                "HTTP_PORT": "0",
                "SECRETS_DIR": str(tmp_path / "no-secrets"),
                "CAMERA_TIMEOUT": "2",  # with 2 retries, the hung fetch lasts over 6 s
                "CAMERA_RETRIES": "2",
                "CAMERA_WORKERS": "4",
                "CAMERA_BREAKER_FAILURES": "2",
                "CAMERA_BREAKER_SECONDS": "60",
                **camera_env(hung.port, PASSWORD, n=1, location="Hung"),
                **camera_env(healthy.port, PASSWORD, n=2, location="Front Door"),
            }
        )
        peer = Peer(exchange)
        try:
            with running_app(settings) as app:
                for _ in range(30):
                    peer.send_trigger(trigger_body("Hung camera", device_params=None))
                assert wait_until(lambda: hung.requests >= 1, 10)
                started = time.monotonic()
                for n in range(1, 21):  # each as soon as the one before is an event
                    peer.send_trigger(trigger_body("Front Door camera", device_params=None))
                    assert len(peer.wait_for_images(n, timeout=10)) == n
                elapsed = time.monotonic() - started
                # Its first fetch still hangs meanwhile.
                assert app.cameras.registry.breaker("Hung camera").failures == 0
                # Overdue: one fetching and CAMERA_QUEUE (3) waiting hold their deliveries;
                # the other 26 were coalesced and acked, so nothing piles up in the broker.
                assert wait_until(lambda: queue_depth(settings.queue_name) == 0, 10)
                assert (
                    sample("snapshot_triggers_coalesced_total", camera="Hung camera")
                    == coalesced + 26
                )
                healthy_now, detail = app.health()
                assert healthy_now, detail
                # The camera goes away: its fetches fail at once, and the breaker opens.
                hung.stop()
                assert wait_until(lambda: "camera 'Hung camera' failing" in app.health()[1], 10)
                detail = app.health()[1]
                assert "retrying in 60 s" in detail or "retrying in 59 s" in detail, detail
        finally:
            peer.close()
    images = peer.images()
    assert {image["inputs"][0]["device_key"] for image in images} == {"Front Door camera"}
    assert elapsed < 15.0, elapsed
