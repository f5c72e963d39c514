"""The onvif vendor end to end: the registry asks the loopback ONVIF device for its URIs once,
then takes stills from the snapshot URI it names, or from its stream when it names none."""

from __future__ import annotations

import io
import threading
from collections.abc import Iterator

import pytest
from PIL import Image

from snapshot_processor.camera.errors import CameraAuthError, CameraVendorError
from snapshot_processor.camera.prober import CameraProber
from snapshot_processor.camera.registry import CameraRegistry
from snapshot_processor.config import Device
from tests.support import rtsp
from tests.support.onvif_device import OnvifDevice
from tests.support.rtsp import RtspServer
from tests.support.tcp_proxy import TcpProxy
from tests.support.wait import wait_until
from tools.camera_simulator import CameraSimulator

PASSWORD = "onvif pass:1"
KEY = "Gate camera"


def registry_for(device: OnvifDevice, **extra: str) -> CameraRegistry:
    settings = {
        "LOCATION": "Gate",
        "TYPE": "camera",
        "VENDOR": "onvif",
        "ADDRESS": f"127.0.0.1:{device.port}",
        "USER": "admin",
        "PASSWORD": PASSWORD,
        **extra,
    }
    return CameraRegistry([Device.model_validate(settings)], timeout=3.0, retries=0)


def size(jpeg: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(jpeg)) as image:
        image.load()
        return image.size


@pytest.fixture
def camera() -> Iterator[CameraSimulator]:
    with CameraSimulator(user="admin", password=PASSWORD) as simulator:
        yield simulator


def test_the_snapshot_uri_is_asked_once_and_used_for_every_snapshot(
    camera: CameraSimulator,
) -> None:
    snapshot_uri = f"http://127.0.0.1:{camera.port}/snapshot.jpg"
    with OnvifDevice("admin", PASSWORD, snapshot_uri=snapshot_uri) as device:
        registry = registry_for(device)
        try:
            first = registry.snapshot(KEY, None)
            second = registry.snapshot(KEY, None)
        finally:
            registry.close()
        assert size(first)[0] > 0
        assert size(second)[0] > 0
        assert device.calls["GetProfiles"] == 1
        assert device.calls["GetSnapshotUri"] == 1


def test_a_moved_snapshot_uri_is_asked_again(camera: CameraSimulator) -> None:
    with OnvifDevice(
        "admin", PASSWORD, snapshot_uri=f"http://127.0.0.1:{camera.port}/gone.jpg"
    ) as device:
        registry = registry_for(device)
        try:
            with pytest.raises(Exception, match="HTTP 404"):
                registry.snapshot(KEY, None)
            device.snapshot_uri = f"http://127.0.0.1:{camera.port}/snapshot.jpg"
            assert size(registry.snapshot(KEY, None))[0] > 0
        finally:
            registry.close()
        assert device.calls["GetSnapshotUri"] == 2


def test_wrong_credentials_are_the_cameras_and_never_shown() -> None:
    with OnvifDevice("admin", "another password") as device:
        registry = registry_for(device)
        try:
            with pytest.raises(CameraAuthError) as caught:
                registry.snapshot(KEY, None)
        finally:
            registry.close()
    assert PASSWORD not in str(caught.value)


@pytest.mark.rtsp
@pytest.mark.skipif(not rtsp.available(), reason="GStreamer's RTSP server is not installed")
@pytest.mark.parametrize("mode", ["on_demand", "warm"])
def test_a_camera_without_a_snapshot_uri_gives_stills_from_its_stream(mode: str) -> None:
    with (
        RtspServer("admin", PASSWORD, key_interval=15) as server,
        OnvifDevice("admin", PASSWORD, snapshot_uri=None, stream_uri=server.url("", "")) as device,
    ):
        extra = {"RTSP_MODE": mode} if mode == "warm" else {}
        registry = registry_for(device, **extra)
        try:
            registry.warm_up()
            assert size(registry.snapshot(KEY, None)) == (640, 360)
        finally:
            registry.close()
        assert device.calls["GetStreamUri"] == 1


@pytest.mark.rtsp
@pytest.mark.skipif(not rtsp.available(), reason="GStreamer's RTSP server is not installed")
def test_a_camera_closed_while_its_uris_are_asked_leaves_no_stream_open() -> None:
    with (
        RtspServer("admin", PASSWORD, key_interval=15) as server,
        OnvifDevice("admin", PASSWORD, snapshot_uri=None, stream_uri=server.url("", "")) as device,
        TcpProxy("127.0.0.1", device.port) as proxy,
    ):
        settings = {
            "LOCATION": "Gate",
            "TYPE": "camera",
            "VENDOR": "onvif",
            "ADDRESS": f"127.0.0.1:{proxy.port}",
            "USER": "admin",
            "PASSWORD": PASSWORD,
            "RTSP_MODE": "warm",
        }
        registry = CameraRegistry([Device.model_validate(settings)], timeout=3.0, retries=0)
        proxy.stall()  # the media service's answers wait
        asking = threading.Thread(target=registry.warm_up)
        asking.start()
        assert wait_until(lambda: device.calls["GetCapabilities"] >= 1, 5)
        registry.close(wait=False)
        proxy.restore()  # the answers come, to a client closed meanwhile
        asking.join(10)
        assert device.calls["GetStreamUri"] == 1
        assert wait_until(
            lambda: not [t for t in threading.enumerate() if t.name.startswith("rtsp ")], 5
        )


def trigger_registry() -> CameraRegistry:
    """An onvif camera whose address and credentials come with each trigger."""
    device = Device.model_validate({"LOCATION": "Gate", "TYPE": "camera", "VENDOR": "onvif"})
    return CameraRegistry([device], timeout=3.0, retries=0)


def test_a_trigger_named_cameras_uris_are_bounded_by_camera_networks() -> None:
    # 192.0.2.0/24 (TEST-NET-1) lies outside CAMERA_NETWORKS: nothing may be sent there.
    with OnvifDevice("admin", PASSWORD, snapshot_uri="http://192.0.2.7/snapshot.jpg") as device:
        registry = trigger_registry()
        try:
            with pytest.raises(CameraVendorError) as caught:
                registry.snapshot(KEY, f"admin:{PASSWORD}@127.0.0.1:{device.port}")
        finally:
            registry.close()
    assert "outside CAMERA_NETWORKS" in str(caught.value)
    assert PASSWORD not in str(caught.value)


def test_a_trigger_named_cameras_uris_inside_camera_networks_are_used(
    camera: CameraSimulator,
) -> None:
    snapshot_uri = f"http://localhost:{camera.port}/snapshot.jpg"  # looked up once, checked
    with OnvifDevice("admin", PASSWORD, snapshot_uri=snapshot_uri) as device:
        registry = trigger_registry()
        try:
            image = registry.snapshot(KEY, f"admin:{PASSWORD}@127.0.0.1:{device.port}")
        finally:
            registry.close()
    assert size(image)[0] > 0


def test_a_warm_camera_whose_lookup_fails_is_probed_and_shown_down() -> None:
    # No stream to tell its state: the prober asks it as any camera, by a lookup of its own.
    with OnvifDevice("admin", "another password") as device:
        settings = {
            "LOCATION": "Gate",
            "TYPE": "camera",
            "VENDOR": "onvif",
            "ADDRESS": f"127.0.0.1:{device.port}",
            "USER": "admin",
            "PASSWORD": PASSWORD,
            "RTSP_MODE": "warm",
        }
        registry = CameraRegistry([Device.model_validate(settings)], timeout=3.0, retries=0)
        prober = CameraProber("camera-prober", threading.Event(), cameras=registry, interval=300)
        registry.observer = prober
        try:
            registry.warm_up()  # its lookup is refused: no stream opens
            assert not registry.streaming(KEY)
            prober.start()
            assert wait_until(lambda: prober.status()[KEY].state == "down", 10)
            reason = prober.status()[KEY].reason
            assert reason is not None
            assert reason.value == "wrong credentials"
        finally:
            assert prober.stop_and_join(5)
            registry.close()
    assert not [t for t in threading.enumerate() if t.name.startswith("rtsp ")]
