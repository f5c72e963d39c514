"""RTSP stills against GStreamer's RTSP server on loopback: on demand and warm, H.264 and
H.265, the vendors' stream paths, and every way a stream fails."""

from __future__ import annotations

import io
import logging
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from urllib.parse import quote

import av
import pytest
from PIL import Image

from snapshot_processor.camera.clients import make_client
from snapshot_processor.camera.errors import (
    CameraAuthError,
    CameraConnectionError,
    CameraError,
    CameraTimeoutError,
    CameraVendorError,
)
from snapshot_processor.camera.prober import Reason, classify
from snapshot_processor.camera.registry import CameraRegistry
from snapshot_processor.camera.rtsp import RTSP_PATHS, RtspClient, stream_url
from snapshot_processor.camera.spec import CameraSpec
from snapshot_processor.camera.stream import _Group
from snapshot_processor.config import Device
from tests.support import rtsp
from tests.support.rtsp import RtspServer
from tests.support.tcp_proxy import TcpProxy
from tests.support.wait import wait_until

pytestmark = [
    pytest.mark.rtsp,
    pytest.mark.skipif(not rtsp.available(), reason="GStreamer's RTSP server is not installed"),
]

PASSWORD = "p@ss:w/rd"  # every character that must be escaped in a URL


@pytest.fixture(scope="module")
def server() -> Iterator[RtspServer]:
    """H.264, a key frame every second, at the known vendors' paths too."""
    paths = ("/cam", *(path.partition("?")[0] for path in RTSP_PATHS.values()))
    with RtspServer("admin", PASSWORD, key_interval=15, paths=paths) as s:
        yield s


def rtsp_spec(port: int, *, path: str = "/cam", **changes: object) -> CameraSpec:
    spec = CameraSpec(
        key="Porch camera",
        vendor="rtsp",
        host="",
        port=80,
        user="admin",
        password=PASSWORD,
        url=f"rtsp://127.0.0.1:{port}{path}",
        timeout=3.0,
        retries=0,
        rtsp_mode="on_demand",
    )
    return replace(spec, **changes)  # type: ignore[arg-type]


def size(jpeg: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(jpeg)) as image:
        image.load()  # the whole image decodes, not only its header
        return image.size


class Changes:
    """What a warm stream tells of its state, in order."""

    def __init__(self) -> None:
        self.seen: list[CameraError | None] = []

    def __call__(self, error: CameraError | None) -> None:
        self.seen.append(error)

    @property
    def up(self) -> bool:
        """Streaming now (it says so again at each key frame)."""
        return bool(self.seen) and self.seen[-1] is None

    @property
    def errors(self) -> list[CameraError]:
        return [error for error in self.seen if error is not None]


def test_on_demand_takes_a_whole_jpeg_from_the_stream(server: RtspServer) -> None:
    with make_client(rtsp_spec(server.port)) as client:
        assert isinstance(client, RtspClient)
        assert size(client.snapshot()) == (640, 360)


def test_udp_transport_when_asked(server: RtspServer) -> None:
    with make_client(rtsp_spec(server.port, rtsp_transport="udp")) as client:
        assert size(client.snapshot()) == (640, 360)


def test_an_h265_stream_gives_stills_too() -> None:
    with (
        RtspServer("admin", PASSWORD, codec="h265", key_interval=15) as h265,
        make_client(rtsp_spec(h265.port)) as client,
    ):
        assert size(client.snapshot()) == (640, 360)


@pytest.mark.parametrize("vendor", sorted(RTSP_PATHS))
def test_a_vendor_camera_in_rtsp_mode_reads_its_vendors_stream_path(
    server: RtspServer, vendor: str
) -> None:
    spec = CameraSpec(
        key="Yard camera",
        vendor=vendor,
        host="127.0.0.1",
        port=1,  # the HTTP port is not asked
        user="admin",
        password=PASSWORD,
        timeout=3.0,
        retries=0,
        rtsp_mode="on_demand",
        rtsp_port=server.port,
    )
    with make_client(spec) as client:
        assert size(client.snapshot()) == (640, 360)


def packet(pts: int | None, key: bool) -> av.Packet:
    made = av.Packet(b"\x00\x00\x01" + bytes(8))
    made.pts, made.is_keyframe = pts, key
    return made


def test_a_key_frame_sent_in_several_packets_is_decoded_whole() -> None:
    # Cameras that cut a frame into slices send a key frame as several packets of one time:
    # it is whole once a packet of another time comes, and a group starts at a key frame.
    group = _Group()
    assert group.add(packet(0, False)) is None  # joined between key frames
    assert group.packets == []
    first, second = packet(90, True), packet(90, True)
    assert group.add(first) is None
    assert group.add(second) is None  # the same key frame goes on
    following = packet(96, False)
    assert group.add(following) == [first, second]
    assert group.packets == [first, second, following]
    assert group.add(packet(102, False)) is None
    assert len(group.packets) == 4
    restart = packet(180, True)
    assert group.add(restart) is None
    assert group.packets == [restart]


def test_a_wrong_password_is_refused_and_never_shown(
    server: RtspServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    with (
        make_client(rtsp_spec(server.port, password="wrong-secret")) as client,
        pytest.raises(CameraAuthError) as caught,
    ):
        client.snapshot()
    assert "user name or password refused" in str(caught.value)
    assert classify(caught.value) is Reason.CREDENTIALS
    for text in (str(caught.value), repr(client), caplog.text):
        assert "wrong-secret" not in text
        assert "127.0.0.1" in str(caught.value)


@pytest.mark.parametrize("given", [PASSWORD, "wrong-secret"])
def test_the_stream_urls_own_password_is_used_and_never_shown(
    server: RtspServer, given: str, caplog: pytest.LogCaptureFixture
) -> None:
    stream = f"rtsp://admin:{quote(given, safe='')}@127.0.0.1:{server.port}/cam"
    device = Device.model_validate(
        {"LOCATION": "Porch", "TYPE": "camera", "VENDOR": "rtsp", "URL": stream}
    )
    registry = CameraRegistry([device], timeout=3.0, retries=0)
    try:
        if given == PASSWORD:
            assert size(registry.snapshot("Porch camera", None)) == (640, 360)
        else:
            with pytest.raises(CameraAuthError) as caught:
                registry.snapshot("Porch camera", None)
            assert "wrong-secret" not in str(caught.value)
            assert "wrong-secret" not in caplog.text
    finally:
        registry.close()


def test_a_path_with_no_stream_says_so(server: RtspServer) -> None:
    with (
        make_client(rtsp_spec(server.port, path="/nothing-here")) as client,
        pytest.raises(CameraError) as caught,
    ):
        client.snapshot()
    assert "no stream at this path" in str(caught.value)


def test_a_refused_port_is_a_connection_error() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with make_client(rtsp_spec(port)) as client, pytest.raises(CameraConnectionError) as caught:
        client.snapshot()
    assert classify(caught.value) is Reason.UNREACHABLE


def test_a_camera_that_never_answers_times_out_within_its_timeout() -> None:
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        started = time.monotonic()
        with (
            make_client(rtsp_spec(silent.getsockname()[1], timeout=1.0)) as client,
            pytest.raises(CameraTimeoutError),
        ):
            client.snapshot()
        assert time.monotonic() - started < 3.0


def test_a_codec_it_cannot_decode_is_named() -> None:
    with (
        RtspServer("admin", PASSWORD, codec="x-gst") as odd,
        make_client(rtsp_spec(odd.port)) as client,
        pytest.raises(CameraVendorError) as caught,
    ):
        client.snapshot()
    assert "no video it can decode" in str(caught.value)
    assert classify(caught.value) is Reason.BAD_ANSWER


def test_on_demand_gives_up_when_no_key_frame_comes_within_the_timeout() -> None:
    # Key frames 20 s apart from an encoder that runs whether anyone reads or not, as a
    # camera's does: a reader that joins a second in waits 19 s for the next one.
    with RtspServer("admin", PASSWORD, key_interval=300, key_on_join=False) as slow:
        time.sleep(1.0)
        with (
            make_client(rtsp_spec(slow.port, timeout=1.5)) as late,
            pytest.raises(CameraTimeoutError) as caught,
        ):
            late.snapshot()
    assert "no key frame within 1.5 s" in str(caught.value)


def test_warm_decodes_the_newest_frame_without_waiting_for_a_key_frame() -> None:
    with RtspServer("admin", PASSWORD, key_interval=150) as slow:  # key frames 10 s apart
        changes = Changes()
        with RtspClient(rtsp_spec(slow.port, rtsp_mode="warm"), changes) as client:
            assert wait_until(lambda: changes.up, 10)
            time.sleep(2.0)  # the next key frame is 8 s away
            asked = time.time()
            still = client.still()
            answered = time.time()
            assert size(still.jpeg) == (640, 360)
            assert answered - asked < 4.0  # a wait for the key frame would take 8 s
            assert asked - still.taken < 2 / 15 + 0.1  # two frames at 15 fps, and slack
            assert size(client.snapshot()) == (640, 360)


def test_warm_keeps_the_seconds_before_a_trigger(server: RtspServer) -> None:
    changes = Changes()
    spec = rtsp_spec(server.port, rtsp_mode="warm", pre_trigger=2.5)
    with make_client(spec, changes) as client:
        assert isinstance(client, RtspClient)
        assert wait_until(lambda: len(client.before(time.time())) >= 2, 10)
        time.sleep(3.0)
        moment = time.time()
        before = client.before(moment)
        assert 2 <= len(before) <= 4  # a key frame a second, 2.5 s kept
        assert all(moment - 2.5 <= still.taken < moment for still in before)
        assert [s.taken for s in before] == sorted(s.taken for s in before)
        assert all(size(still.jpeg) == (640, 360) for still in before)


def test_an_on_demand_camera_keeps_no_stills_before(server: RtspServer) -> None:
    with make_client(rtsp_spec(server.port)) as client:
        assert isinstance(client, RtspClient)
        client.snapshot()
        assert client.before(time.time()) == []


def test_a_warm_stream_that_drops_reconnects_and_says_so(
    server: RtspServer, caplog: pytest.LogCaptureFixture
) -> None:
    changes = Changes()
    with TcpProxy("127.0.0.1", server.port) as proxy:
        spec = rtsp_spec(proxy.port, rtsp_mode="warm", backoff=0.2)
        with RtspClient(spec, changes) as client:
            assert wait_until(lambda: changes.up, 10)
            proxy.cut()  # mid-stream, so most likely mid-frame
            assert wait_until(lambda: len(changes.errors) == 1, 10)
            assert isinstance(changes.errors[0], CameraConnectionError)
            with pytest.raises(CameraError):  # no stream: a trigger hears why
                client.still(0.5)
            proxy.restore()
            assert wait_until(lambda: changes.up, 15)
            assert size(client.snapshot()) == (640, 360)
    assert "connecting again in" in caplog.text
    assert PASSWORD not in caplog.text


def test_a_warm_stream_that_stalls_times_out_and_reconnects(server: RtspServer) -> None:
    changes = Changes()
    with TcpProxy("127.0.0.1", server.port) as proxy:
        spec = rtsp_spec(proxy.port, rtsp_mode="warm", timeout=1.5, backoff=0.2)
        with RtspClient(spec, changes) as client:
            assert wait_until(lambda: changes.up, 10)
            proxy.stall()
            time.sleep(1.1)  # the newest frame gets older than a second
            with pytest.raises(CameraTimeoutError):  # so none is given
                client.still(0.3)
            assert wait_until(lambda: len(changes.errors) == 1, 10)
            assert isinstance(changes.errors[0], CameraTimeoutError)
            proxy.restore()
            assert wait_until(lambda: changes.up, 15)
            assert size(client.snapshot()) == (640, 360)


def test_closing_a_warm_client_ends_its_thread_even_while_the_stream_stalls(
    server: RtspServer,
) -> None:
    changes = Changes()
    with TcpProxy("127.0.0.1", server.port) as proxy:
        client = make_client(rtsp_spec(proxy.port, rtsp_mode="warm", timeout=1.0), changes)
        assert wait_until(lambda: changes.up, 10)
        proxy.stall()
        started = time.monotonic()
        client.close()
        assert time.monotonic() - started < 1.0 + 1.5
        assert not [t for t in threading.enumerate() if t.name.startswith("rtsp ")]


def test_a_trigger_address_for_an_rtsp_camera_neither_reopens_its_stream_nor_refuses_it(
    server: RtspServer,
) -> None:
    device = Device.model_validate(
        {
            "LOCATION": "Porch",
            "TYPE": "camera",
            "VENDOR": "rtsp",
            "URL": server.url("", ""),
            "USER": "admin",
            "PASSWORD": PASSWORD,
            "RTSP_MODE": "warm",
        }
    )
    registry = CameraRegistry([device], timeout=3.0, retries=0)
    try:
        registry.warm_up()
        opened = registry.client("Porch camera", None)
        # 8.8.8.8 lies outside CAMERA_NETWORKS: it would be refused if it counted.
        assert registry.client("Porch camera", f"admin:{PASSWORD}@8.8.8.8:80,554") is opened
        assert size(registry.snapshot("Porch camera", "admin:x@10.0.0.9:80")) == (640, 360)
        assert registry.client("Porch camera", None) is opened
    finally:
        registry.close()


def test_a_refused_warm_stream_is_asked_again_rarely_and_said_once(
    server: RtspServer, caplog: pytest.LogCaptureFixture
) -> None:
    changes = Changes()
    with RtspClient(rtsp_spec(server.port, rtsp_mode="warm", password="wrong"), changes) as c:
        assert wait_until(lambda: len(changes.seen) == 1, 10)
        time.sleep(2.5)  # the snapshot policy would have asked three times more by now
        assert len(changes.seen) == 1
        assert isinstance(changes.seen[0], CameraAuthError)
        with pytest.raises(CameraAuthError):  # a trigger hears why at once
            c.still(0.5)
    refused = [r for r in caplog.records if "password refused" in r.getMessage()]
    assert [r.levelname for r in refused] == ["WARNING"]
    assert "connecting again in 60 s" in refused[0].getMessage()


def test_closing_many_stalled_warm_streams_is_bounded_and_ends_a_waiting_snapshot(
    server: RtspServer,
) -> None:
    with TcpProxy("127.0.0.1", server.port) as proxy:
        devices = [
            Device.model_validate(
                {
                    "LOCATION": f"Stalled {n}",
                    "TYPE": "camera",
                    "VENDOR": "rtsp",
                    "URL": f"rtsp://127.0.0.1:{proxy.port}/cam",
                    "USER": "admin",
                    "PASSWORD": PASSWORD,
                    "RTSP_MODE": "warm",
                }
            )
            for n in range(6)
        ]
        registry = CameraRegistry(devices, timeout=3.0, retries=0)
        try:
            registry.warm_up()
            assert wait_until(lambda: proxy.connections == 6, 10)
            time.sleep(1.0)
            proxy.stall()
            waiting: list[BaseException] = []
            caller = threading.Thread(
                target=lambda: waiting.extend(_raised(registry, "Stalled 0 camera"))
            )
            caller.start()
            time.sleep(0.3)
            started = time.monotonic()
            registry.close(wait=False)
            caller.join(2.0)
            assert time.monotonic() - started < 1.5
            assert [type(e) for e in waiting] == [CameraConnectionError]
            assert "closing" in str(waiting[0])
        finally:
            registry.close(wait=False)
        # The stalled reads end within the camera timeout; the leak check waits for them.
        assert wait_until(
            lambda: not [t for t in threading.enumerate() if t.name.startswith("rtsp ")], 5
        )


def _raised(registry: CameraRegistry, key: str) -> list[BaseException]:
    try:
        registry.snapshot(key, None)
    except Exception as exc:
        return [exc]
    return []


def test_a_stream_url_goes_to_the_address_its_host_was_checked_at() -> None:
    spec = rtsp_spec(554, url="rtsp://cam.lan:8554/live?x=1", connect_to=("192.168.1.9",))
    url, shown = stream_url(spec)
    assert url == f"rtsp://admin:{quote(PASSWORD, safe='')}@192.168.1.9:8554/live?x=1"
    assert PASSWORD not in shown
    assert "192.168.1.9:8554/live" in shown
    vendor = CameraSpec(
        key="Yard camera",
        vendor="dahua",
        host="cam.lan",
        port=80,
        user="admin",
        password="pw",
        rtsp_mode="on_demand",
        connect_to=("fd00::9",),
    )
    assert stream_url(vendor)[0].startswith("rtsp://admin:pw@[fd00::9]:554/cam/realmonitor")
