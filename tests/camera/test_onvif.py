"""ONVIF media URIs and WS-Discovery against a fake ONVIF camera on 127.0.0.1."""

from __future__ import annotations

import socket
import time

import pytest

from snapshot_processor.camera.discovery import discover
from snapshot_processor.camera.errors import (
    CameraAuthError,
    CameraConnectionError,
    CameraTimeoutError,
    CameraVendorError,
)
from snapshot_processor.camera.onvif import MediaUris, media_uris
from tests.support.net import free_port
from tests.support.onvif_device import OnvifDevice, multicast_available

PASSWORD = "onvif-Pa55word"
SNAPSHOT = "http://127.0.0.1:8080/cgi-bin/snapshot.cgi?channel=1&subtype=0"
STREAM = "rtsp://127.0.0.1:8554/cam/realmonitor?channel=1&subtype=0"


def _ask(device: OnvifDevice, password: str = PASSWORD, timeout: float = 5.0) -> MediaUris:
    return media_uris("127.0.0.1", device.port, "admin", password, timeout=timeout, camera="cam")


def test_the_first_video_profile_s_uris_with_one_call_each() -> None:
    with OnvifDevice("admin", PASSWORD, snapshot_uri=SNAPSHOT, stream_uri=STREAM) as device:
        uris = _ask(device)
        calls = dict(device.calls)
    # The fake lists an audio-only profile first.
    assert uris == MediaUris(snapshot=SNAPSHOT, stream=STREAM, profile="main")
    assert calls == {"GetCapabilities": 1, "GetProfiles": 1, "GetSnapshotUri": 1, "GetStreamUri": 1}


def test_the_first_profile_when_none_has_video() -> None:
    profiles = (("first", False), ("second", False))
    with OnvifDevice("admin", PASSWORD, profiles=profiles) as device:
        assert _ask(device).profile == "first"


def test_a_camera_without_snapshot_uri_gives_its_stream() -> None:
    with OnvifDevice("admin", PASSWORD, snapshot_uri=None, stream_uri=STREAM) as device:
        uris = _ask(device)
    assert (uris.snapshot, uris.stream) == (None, STREAM)


@pytest.mark.parametrize("status", [400, 401])
def test_a_wrong_password_is_an_auth_error_that_never_shows_it(status: int) -> None:
    wrong = "wrong-Secret-42"
    with OnvifDevice("admin", PASSWORD, auth_status=status) as device:
        with pytest.raises(CameraAuthError) as caught:
            _ask(device, wrong)
        where = f"cam: ONVIF GetCapabilities at {device.device_url}: "
    error = caught.value
    assert str(error).startswith(where)
    assert "user name or password refused" in str(error)
    assert wrong not in str(error)
    assert PASSWORD not in str(error)
    assert error.camera == "cam"
    assert not error.retryable
    assert error.__cause__ is None  # the library's exception, its text unknown, is not kept
    assert error.__context__ is None


def test_a_camera_without_profiles_is_a_vendor_error() -> None:
    with (
        OnvifDevice("admin", PASSWORD, profiles=()) as device,
        pytest.raises(CameraVendorError, match="has no media profile"),
    ):
        _ask(device)


def test_a_refused_connection() -> None:
    with pytest.raises(CameraConnectionError, match="connection refused") as caught:
        media_uris("127.0.0.1", free_port(), "admin", PASSWORD, timeout=5, camera="cam")
    assert caught.value.retryable


def test_a_camera_that_never_answers_times_out_in_time() -> None:
    with pytest.raises(CameraConnectionError):  # the library's import is not what is timed
        media_uris("127.0.0.1", free_port(), "admin", PASSWORD, timeout=5)
    # A listening socket nobody accepts on: the kernel completes the handshake, then silence.
    with socket.create_server(("127.0.0.1", 0)) as silent:
        started = time.monotonic()
        with pytest.raises(CameraTimeoutError, match=r"no answer within 1\.0 s"):
            media_uris("127.0.0.1", silent.getsockname()[1], "admin", PASSWORD, timeout=1.0)
        assert time.monotonic() - started < 2.0


def test_the_repr_masks_credentials_in_uris() -> None:
    uris = MediaUris("http://admin:cam-pass@192.0.2.20/snap?pwd=cam-pass", None, "main")
    assert "cam-pass" not in repr(uris)


def test_unicast_discovery_finds_the_camera_at_once() -> None:
    with OnvifDevice(name="Front Door", hardware="FC-1") as device:
        started = time.monotonic()
        found = discover(5.0, address=f"127.0.0.1:{device.discovery_port}")
        assert time.monotonic() - started < 1.0  # the one host asked has answered
        url = device.device_url
    assert len(found) == 1
    camera = found[0]
    assert camera.address == "127.0.0.1"
    assert camera.xaddrs == (url,)
    assert (camera.name, camera.hardware) == ("Front Door", "FC-1")
    assert "onvif://www.onvif.org/type/video_encoder" in camera.scopes


def test_no_answer_is_an_empty_list_after_the_timeout() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as deaf:
        deaf.bind(("127.0.0.1", 0))
        started = time.monotonic()
        assert discover(0.3, address=f"127.0.0.1:{deaf.getsockname()[1]}") == []
    assert 0.3 <= time.monotonic() - started < 1.0


@pytest.mark.parametrize("address", ["127.0.0.1:99999", "127.0.0.1:port", ":3702"])
def test_a_malformed_address_is_a_value_error(address: str) -> None:
    with pytest.raises(ValueError, match=r"HOST|port"):
        discover(0.1, address=address)


@pytest.mark.skipif(not multicast_available(), reason="no interface for multicast here")
def test_multicast_discovery_finds_the_camera() -> None:
    with OnvifDevice(name="Back Yard", multicast=True) as device:
        found = discover(1.0)
        url = device.device_url
    # Real cameras on this host's network may answer too.
    assert [camera.name for camera in found if camera.xaddrs == (url,)] == ["Back Yard"]
