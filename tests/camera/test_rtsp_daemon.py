"""RTSP cameras in the whole daemon over the real RabbitMQ: a warm camera's event carries the
stills from before its trigger; a camera whose stream refuses us is down, with the reason,
while the others' triggers flow."""

from __future__ import annotations

import io
import time
from pathlib import Path

import pytest
from PIL import Image

from tests.support import rtsp
from tests.support.broker import Peer, running_app, trigger_body, unique_exchange
from tests.support.daemon import make_settings
from tests.support.rtsp import RtspServer
from tests.support.wait import wait_until

pytestmark = [
    pytest.mark.broker,
    pytest.mark.rtsp,
    pytest.mark.skipif(not rtsp.available(), reason="GStreamer's RTSP server is not installed"),
]

PASSWORD = "stream pass"


def rtsp_env(n: int, location: str, url: str, password: str, **extra: str) -> dict[str, str]:
    return {
        f"OUTPUT_{n}_LOCATION": location,
        f"OUTPUT_{n}_TYPE": "camera",
        f"OUTPUT_{n}_VENDOR": "rtsp",
        f"OUTPUT_{n}_URL": url,
        f"OUTPUT_{n}_USER": "admin",
        f"OUTPUT_{n}_PASSWORD": password,
        **{f"OUTPUT_{n}_{name}": value for name, value in extra.items()},
    }


def test_a_warm_cameras_event_keeps_the_seconds_before_its_trigger(tmp_path: Path) -> None:
    exchange = unique_exchange()
    with RtspServer("admin", PASSWORD, key_interval=15) as server:  # a key frame a second
        settings = make_settings(
            tmp_path,
            exchange,
            **rtsp_env(
                1,
                "Porch",
                server.url("", ""),
                PASSWORD,
                RTSP_MODE="warm",
                PRE_TRIGGER_SECONDS="3",
            ),
            **rtsp_env(2, "Shed", server.url("", ""), "wrong password", RTSP_MODE="warm"),
        )
        peer = Peer(exchange)
        try:
            with running_app(settings) as app:
                prober = app.cameras.prober
                assert wait_until(lambda: prober.status()["Porch camera"].state == "up", 10)
                assert wait_until(lambda: prober.status()["Shed camera"].state == "down", 10)
                shed = prober.status()["Shed camera"]
                assert shed.reason is not None
                assert shed.reason.value == "wrong credentials"
                time.sleep(3.5)  # the ring fills
                peer.send_trigger(trigger_body("Shed camera", device_params=None))
                peer.send_trigger(trigger_body("Porch camera", device_params=None))
                [event] = peer.wait_for_images(1)
                peer.pump(1.0)  # the Shed trigger is settled without an event
                assert len(peer.images()) == 1
        finally:
            peer.close()
    [entry] = event["inputs"]
    assert entry["device_key"] == "Porch camera"
    with Image.open(io.BytesIO(entry["image"])) as image:
        assert image.size == (640, 360)
    before = [Path(path) for path in entry["pre_trigger_paths"]]
    assert 2 <= len(before) <= 4  # a key frame a second, three seconds kept
    stem = Path(entry["storage_path"]).stem
    for number, path in enumerate(before, 1):
        assert path.parent == Path(entry["storage_path"]).parent
        assert path.name == f"{stem}-before-{number}.jpg"
        with Image.open(path) as still:
            still.load()
            assert still.size == (640, 360)
