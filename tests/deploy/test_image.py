"""The built image, run by its engine on this machine's network against the test broker and
the camera simulator: health, a trigger's event, the stop, a data folder it cannot write.

``make image-test`` builds the image and runs these with the engine and the image named in
the environment (tools/image_test.py); without them they skip.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pika
import pytest

from tests.support.broker import BROKER, Peer, delete_queue, trigger_body, unique_exchange
from tests.support.daemon import PASSWORD
from tests.support.net import free_port
from tests.support.paths import CHECKOUT
from tests.support.wait import wait_until
from tools.image_test import ENGINE_ENV, IMAGE_ENV, STREAM_IMAGE_ENV

pytestmark = [pytest.mark.image, pytest.mark.broker]

IMAGE = os.environ.get(IMAGE_ENV, "")
# The same built with EXTRAS=stream (PyAV); empty when not built.
STREAM_IMAGE = os.environ.get(STREAM_IMAGE_ENV, "")
ENGINE = os.environ.get(ENGINE_ENV, "")
if not IMAGE or not ENGINE:
    pytest.skip("make image-test builds the image and runs these", allow_module_level=True)

IMAGE_UID = 1000
EXIT_DATA_ROOT_NOT_WRITABLE = 77
CHOWN_HINT = f"sudo chown -R {IMAGE_UID}:{IMAGE_UID} ./data"
# The daemon stops within its shutdown bound; the engine's own work adds a little.
STOP_SECONDS = 10.0


def engine(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([ENGINE, *args], capture_output=True, text=True, timeout=timeout)


def _world_folder(owner: int) -> Path:
    """A folder for a bind mount, owned by ``owner`` (pytest's tmp_path is root's alone)."""
    folder = Path(tempfile.mkdtemp(prefix="image-test-"))
    folder.chmod(0o755)
    os.chown(folder, owner, owner)
    return folder


@dataclass
class Container:
    """One detached container of the image, on the host's network."""

    name: str

    @classmethod
    def start(cls, *options: str) -> Container:
        name = f"image-test-{uuid.uuid4().hex[:8]}"
        # The health check every second, for the engines that run it on a timer (Docker);
        # podman here has no systemd for its timer: the tests run it.
        started = engine(
            "run", "-d", "--name", name, "--network", "host", "--health-interval", "1s",
            *options, IMAGE,
        )  # fmt: skip
        assert started.returncode == 0, started.stderr
        return cls(name)

    def logs(self) -> str:
        done = engine("logs", self.name)
        return done.stdout + done.stderr

    def healthy(self) -> bool:
        """One health check's verdict, the image's HEALTHCHECK as the engine runs it."""
        if ENGINE == "podman":
            return engine("healthcheck", "run", self.name).returncode == 0
        status = engine("inspect", "--format", "{{.State.Health.Status}}", self.name)
        return status.stdout.strip() == "healthy"

    def running(self) -> bool:
        state = engine("inspect", "--format", "{{.State.Running}}", self.name)
        return state.stdout.strip() == "true"

    def exit_code(self) -> int:
        return int(engine("inspect", "--format", "{{.State.ExitCode}}", self.name).stdout)

    def stop(self) -> float:
        """Stop it as `docker stop` does (SIGTERM, SIGKILL after 30 s); the seconds it took."""
        started = time.monotonic()
        done = engine("stop", "-t", "30", self.name)
        assert done.returncode == 0, done.stderr
        return time.monotonic() - started

    def remove(self) -> None:
        engine("rm", "-f", "-v", self.name)


@pytest.fixture(scope="module")
def camera_port() -> Iterator[int]:
    """The camera simulator's port. A process of its own: the daemon in the container probes
    it at any time, and connections served in this process would count as a test's leaks."""
    simulator = subprocess.Popen(
        [sys.executable, "-m", "tools.camera_simulator", "--port", "0", "--password", PASSWORD],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        cwd=CHECKOUT,
    )
    try:
        assert simulator.stdout is not None
        listening = re.search(r"http://127\.0\.0\.1:(\d+)", simulator.stdout.readline())
        assert listening is not None, "the camera simulator did not start"
        yield int(listening.group(1))
    finally:
        simulator.terminate()
        simulator.communicate(timeout=10)


@dataclass
class Daemon:
    """The module's daemon container and what the tests send it or ask it."""

    container: Container
    exchange: str
    port: int
    queue: str


@pytest.fixture(scope="module")
def daemon(camera_port: int) -> Iterator[Daemon]:
    """The daemon in the image, its HTTP port and camera in the mounted config file only."""
    exchange, port, device = unique_exchange(), free_port(), "imagetest"
    config_dir, data = _world_folder(0), _world_folder(IMAGE_UID)
    settings = {
        "HTTP_PORT": str(port),
        "OUTPUT_1_LOCATION": "Front Door",
        "OUTPUT_1_TYPE": "camera",
        "OUTPUT_1_VENDOR": "foscam",
        "OUTPUT_1_ADDRESS": f"127.0.0.1:{camera_port}",
        "OUTPUT_1_USER": "admin",
        "OUTPUT_1_PASSWORD": PASSWORD,
    }
    (config_dir / "snapshot-processor.toml").write_text(
        "".join(f"{key} = {json.dumps(value)}\n" for key, value in settings.items())
    )
    container = Container.start(
        "-v", f"{config_dir}:/app/config:ro", "-v", f"{data}:/data/ftp",
        "-e", f"RABBITMQ_EXCHANGE={exchange}", "-e", f"DEVICE_NAME={device}",
    )  # fmt: skip
    try:
        yield Daemon(container, exchange, port, f"{exchange}.snapshot.{device}.triggers")
    finally:
        container.remove()
        delete_queue(f"{exchange}.snapshot.{device}.triggers")
        shutil.rmtree(config_dir)
        shutil.rmtree(data)


def _consuming(queue: str) -> bool:
    """Whether the daemon's trigger queue exists (it is declared as the daemon consumes)."""
    connection = pika.BlockingConnection(BROKER)
    try:
        connection.channel().queue_declare(queue, passive=True)
        return True
    except pika.exceptions.ChannelClosedByBroker:
        return False
    finally:
        if connection.is_open:
            connection.close()


def test_health_check_is_healthy_on_the_port_of_the_config_file(daemon: Daemon) -> None:
    container = daemon.container
    assert wait_until(container.healthy, 60, step=1), container.logs()
    # The image's HEALTHCHECK asked the port the file gives, not the default 8080.
    done = engine("exec", container.name, "snapshot-processor", "healthcheck")
    assert done.stdout == f"healthy: http://127.0.0.1:{daemon.port}/healthz\n"
    # Under host networking a loopback HTTP_BIND is reachable: no container warning.
    assert "in a container" not in container.logs()


def test_a_trigger_yields_an_image_event(daemon: Daemon) -> None:
    assert wait_until(lambda: _consuming(daemon.queue), 60, step=0.5), daemon.container.logs()
    peer = Peer(daemon.exchange)
    try:
        peer.send_trigger(trigger_body("Front Door camera", device_params=None))
        images = peer.wait_for_images(1, timeout=30)
    finally:
        peer.close()
    assert len(images) == 1, daemon.container.logs()
    (entry,) = images[0]["inputs"]
    assert entry["device_key"] == "Front Door camera"
    assert entry["image"][:2] == b"\xff\xd8"  # a JPEG, from the simulator
    assert entry["storage_path"].startswith("/data/ftp/")


def test_stop_ends_the_daemon_within_seconds_with_exit_code_0(daemon: Daemon) -> None:
    # Last of the tests on this container: it ends it.
    container = daemon.container
    assert wait_until(container.healthy, 60, step=1), container.logs()
    seconds = container.stop()
    assert seconds < STOP_SECONDS, container.logs()
    assert container.exit_code() == 0, container.logs()
    assert "stopped (exit code 0)" in container.logs()


@pytest.fixture
def root_owned() -> Iterator[Path]:
    """A data folder as Docker makes a missing one: root's, 0755."""
    folder = _world_folder(0)
    try:
        yield folder
    finally:
        shutil.rmtree(folder)


def test_a_command_on_a_root_owned_data_folder_exits_77_with_the_hint(root_owned: Path) -> None:
    done = engine(
        "run", "--rm", "--network", "none", "-v", f"{root_owned}:/data/ftp",
        "-e", "SNAPSHOTS_HOST_DIR=./data", IMAGE, "check-config",
    )  # fmt: skip
    assert done.returncode == EXIT_DATA_ROOT_NOT_WRITABLE, done.stdout + done.stderr
    assert f"cannot be written by uid {IMAGE_UID}" in done.stderr
    assert CHOWN_HINT in done.stderr


def test_run_waits_for_a_root_owned_data_folder_then_starts(root_owned: Path) -> None:
    exchange, port, device = unique_exchange(), free_port(), "imagewait"
    container = Container.start(
        "-v", f"{root_owned}:/data/ftp", "-e", "SNAPSHOTS_HOST_DIR=./data",
        "-e", "ENTRYPOINT_RECHECK_SECONDS=1", "-e", f"HTTP_PORT={port}",
        "-e", f"RABBITMQ_EXCHANGE={exchange}", "-e", f"DEVICE_NAME={device}",
    )  # fmt: skip
    try:
        assert wait_until(lambda: CHOWN_HINT in container.logs(), 30, step=0.5)
        time.sleep(3)  # a few rounds of looking again: no exit, no restart, one hint
        assert container.running(), container.logs()
        assert container.logs().count(CHOWN_HINT) == 1
        assert not container.healthy()  # no HTTP while it waits

        os.chown(root_owned, IMAGE_UID, IMAGE_UID)  # the hint, followed
        assert wait_until(lambda: "writable now; starting" in container.logs(), 15, step=0.5)
        assert wait_until(container.healthy, 60, step=1), container.logs()
        assert container.stop() < STOP_SECONDS
        assert container.exit_code() == 0, container.logs()
    finally:
        container.remove()
        delete_queue(f"{exchange}.snapshot.{device}.triggers")


def test_stop_while_waiting_for_the_data_folder_exits_77_at_once(root_owned: Path) -> None:
    container = Container.start("-v", f"{root_owned}:/data/ftp")
    try:
        assert wait_until(lambda: "cannot be written" in container.logs(), 30, step=0.5)
        time.sleep(1)
        assert container.running(), container.logs()  # waiting, not exited
        # The wait is interruptible: no waiting out the 5 s between checks, nor a SIGKILL.
        assert container.stop() < 3.0
        assert container.exit_code() == EXIT_DATA_ROOT_NOT_WRITABLE, container.logs()
    finally:
        container.remove()


def test_the_user_has_a_writable_home() -> None:
    done = engine(
        "run", "--rm", "--network", "none", "--entrypoint", "sh", IMAGE,
        "-c", 'touch "$HOME/.probe" && echo "$HOME"',
    )  # fmt: skip
    assert (done.returncode, done.stdout) == (0, "/home/snapshot\n"), done.stderr


def test_behind_its_own_network_check_config_warns_about_a_loopback_http_bind() -> None:
    # The NAT case (a network of its own, no host NIC in sight): the warning is right there.
    done = engine("run", "--rm", "--network", "none", IMAGE, "check-config")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "warning: HTTP_BIND is 127.0.0.1 in a container" in done.stdout


RTSP_CAMERA = ["-e", "OUTPUT_1_LOCATION=Porch", "-e", "OUTPUT_1_TYPE=camera",
               "-e", "OUTPUT_1_VENDOR=rtsp", "-e", "OUTPUT_1_URL=rtsp://cam.home/live"]  # fmt: skip


def test_without_the_stream_extra_a_streaming_camera_is_refused_with_the_remedy() -> None:
    done = engine("run", "--rm", "--network", "none", *RTSP_CAMERA, IMAGE, "check-config")
    assert done.returncode == 2, done.stdout + done.stderr
    assert "EXTRAS=stream" in done.stderr


@pytest.mark.skipif(not STREAM_IMAGE, reason="no EXTRAS=stream image was built")
def test_with_the_stream_extra_a_streaming_camera_is_accepted() -> None:
    done = engine("run", "--rm", "--network", "none", *RTSP_CAMERA, STREAM_IMAGE, "check-config")
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.skipif(not STREAM_IMAGE, reason="no EXTRAS=stream image was built")
def test_pyav_decodes_h264_and_h265_after_its_symbols_were_stripped() -> None:
    script = """
import io, av
for codec in ("libx264", "libx265"):
    data = io.BytesIO()
    with av.open(data, "w", format="matroska") as out:
        stream = out.add_stream(codec, rate=5)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for _ in range(3):
            out.mux(stream.encode(av.VideoFrame(64, 48, "yuv420p")))
        out.mux(stream.encode())
    data.seek(0)
    with av.open(data) as source:
        print(codec, sum(1 for _ in source.decode(video=0)))
"""
    done = engine(
        "run", "--rm", "--network", "none", "--entrypoint", "python", STREAM_IMAGE, "-c", script
    )  # fmt: skip
    assert done.stdout == "libx264 3\nlibx265 3\n", done.stderr[-2000:]
