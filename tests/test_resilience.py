"""Nothing lost: the broker connection cut mid-stream, and a daemon killed with SIGKILL."""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from pylib.amqp.outbox import Outbox
from tests.support.broker import Peer, delete_queue, running_app, trigger_body, unique_exchange
from tests.support.daemon import PASSWORD, camera_env, make_settings, spawn_daemon
from tests.support.tcp_proxy import TcpProxy
from tests.support.wait import wait_for_text, wait_until
from tools.camera_simulator import CameraSimulator

pytestmark = pytest.mark.broker


@pytest.fixture
def camera() -> Iterator[CameraSimulator]:
    with CameraSimulator(user="admin", password=PASSWORD) as simulator:
        yield simulator


@pytest.fixture
def proxy() -> Iterator[TcpProxy]:
    with TcpProxy("127.0.0.1", 5672) as running:
        yield running


def labels(images: list[dict[str, object]]) -> list[str]:
    return [image["inputs"][0]["device_label"] for image in images]  # type: ignore[index]


def test_connection_cut_mid_stream_loses_nothing(
    tmp_path: Path, camera: CameraSimulator, proxy: TcpProxy
) -> None:
    exchange = unique_exchange()
    settings = make_settings(
        tmp_path,
        exchange,
        RABBITMQ_URL=f"amqp://guest:guest@127.0.0.1:{proxy.port}/%2F",
        **camera_env(camera.port),
    )
    peer = Peer(exchange)
    sent = [f"trigger-{n}" for n in range(30)]
    try:
        with running_app(settings) as app:
            for n, label in enumerate(sent):
                if n == 10:
                    proxy.cut()  # both of the daemon's connections drop at once
                if n == 19:
                    healthy, detail = app.health()
                    assert not healthy
                    assert "cannot reach the broker" in detail
                if n == 20:
                    proxy.restore()
                peer.send_trigger(
                    trigger_body("Front Door camera", label=label, device_params=None)
                )
                peer.pump(0.1)
            peer.pump_until(lambda: set(sent) <= set(labels(peer.images())), 60, each=0.2)
            assert app.health()[0], app.health()[1]
    finally:
        peer.close()
    missing = set(sent) - set(labels(peer.images()))
    assert not missing, f"lost events for {sorted(missing)}"
    assert proxy.accepted_total >= 4  # both connections were made again after the cut


def _spawn(
    tmp_path: Path, env: dict[str, str], log_name: str
) -> tuple[subprocess.Popen[bytes], Path]:
    log_path = tmp_path / log_name
    return spawn_daemon(env, log_path), log_path


def _wait_for_text(path: Path, text: str, timeout: float = 30) -> None:
    assert wait_for_text(path, text, timeout), (
        f"{text!r} not in {path}:\n{path.read_text(errors='replace')}"
    )


def image_ids(peer: Peer) -> set[str]:
    """Message ids of the image events the peer received."""
    return {props.message_id for key, props, _ in peer.messages if key.endswith(".image")}


def held_ids(path: Path) -> list[str]:
    """Image event ids waiting in a daemon's outbox, read beside the running daemon (a
    bundle event may wait there too)."""
    with Outbox(path) as outbox:
        return [
            entry.headers["message_id"]
            for entry in outbox.peek(10)
            if entry.routing_key.endswith(".image")
        ]


def test_sigkill_then_restart_publishes_the_outbox(
    tmp_path: Path, camera: CameraSimulator, proxy: TcpProxy
) -> None:
    exchange = unique_exchange()
    data = tmp_path / "data"
    base_env = {
        "RABBITMQ_EXCHANGE": exchange,
        "DEVICE_NAME": "garage",
        "SNAPSHOTS_ROOT_DIR": str(data),
        "HTTP_PORT": "0",
        "SECRETS_DIR": str(tmp_path / "no-secrets"),
        "CAMERA_RETRIES": "0",
        **camera_env(camera.port),
    }
    peer = Peer(exchange)
    first, first_log = _spawn(
        tmp_path,
        {**base_env, "RABBITMQ_URL": f"amqp://guest:guest@127.0.0.1:{proxy.port}/%2F"},
        "first.log",
    )
    second = None
    try:
        _wait_for_text(first_log, "consuming")
        _wait_for_text(first_log, "publisher: connected")
        camera.latency = 1.5  # the fetches outlast the broker connection
        for n in range(5):
            peer.send_trigger(
                trigger_body("Front Door camera", label=f"held-{n}", device_params=None)
            )
        peer.pump(0.5)
        proxy.cut()
        held: list[str] = []

        def all_held() -> bool:
            held[:] = held_ids(data / "outbox.sqlite3")
            return len(held) >= 5

        wait_until(all_held, 20, step=0.1)
        assert len(held) == 5, first_log.read_text()
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        with Outbox(data / "outbox.sqlite3") as outbox:
            waiting = len(outbox.peek(20))  # the bundle's event too, if it was complete
        camera.latency = 0
        second, second_log = _spawn(tmp_path, base_env, "second.log")
        assert peer.pump_until(lambda: set(held) <= image_ids(peer), 30, each=0.2), (
            second_log.read_text()
        )
        assert f"opened with {waiting} message(s) waiting" in second_log.read_text()
        second.send_signal(signal.SIGTERM)
        assert second.wait(15) == 0
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
        peer.close()
        delete_queue(f"{exchange}.snapshot.garage.triggers")


def test_sigkill_during_slow_fetches_loses_no_trigger(
    tmp_path: Path, camera: CameraSimulator
) -> None:
    """Triggers are acked only after their event is durable: a daemon killed while its
    camera fetches are under way gets every one of them again from the broker."""
    exchange = unique_exchange()
    base_env = {
        "RABBITMQ_EXCHANGE": exchange,
        "DEVICE_NAME": "garage",
        "SNAPSHOTS_ROOT_DIR": str(tmp_path / "data"),
        "HTTP_PORT": "0",
        "SECRETS_DIR": str(tmp_path / "no-secrets"),
        "CAMERA_RETRIES": "0",
        "CAMERA_TIMEOUT": "10",
        **camera_env(camera.port),
    }
    peer = Peer(exchange)
    first, first_log = _spawn(tmp_path, base_env, "first.log")
    second = None
    wanted = [f"slow-{n}" for n in range(6)]
    try:
        _wait_for_text(first_log, "consuming")
        _wait_for_text(first_log, "publisher: connected")
        camera.latency = 3.0  # every fetch is still on the wire when the kill comes
        for label in wanted:
            peer.send_trigger(trigger_body("Front Door camera", label=label, device_params=None))
        assert wait_until(lambda: camera.requests >= 1, 10, step=0.05), first_log.read_text()
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        assert peer.images() == [], "an event got out before the kill: the fetch was not slow"
        camera.latency = 0
        second, second_log = _spawn(tmp_path, base_env, "second.log")
        images = peer.wait_for_images(len(wanted), timeout=30)
        assert set(wanted) <= set(labels(images)), second_log.read_text()
        second.send_signal(signal.SIGTERM)
        assert second.wait(15) == 0
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
        peer.close()
        delete_queue(f"{exchange}.snapshot.garage.triggers")


def test_a_broker_away_at_start_costs_one_line_per_connection_and_change(
    tmp_path: Path, proxy: TcpProxy
) -> None:
    proxy.cut()
    env = {
        "RABBITMQ_SERVER_ADDRESS": f"127.0.0.1:{proxy.port}",
        "RABBITMQ_EXCHANGE": unique_exchange(),
        "SNAPSHOTS_ROOT_DIR": str(tmp_path / "data"),
        "HTTP_PORT": "0",
    }
    daemon, log_path = _spawn(tmp_path, env, "daemon.log")
    try:
        # Several attempts each (0.5 s, 1 s, 2 s...), then the broker comes back.
        wait_until(lambda: proxy.accepted_total >= 6, 30)
        proxy.restore()
        _wait_for_text(log_path, "publisher: connected to")
        _wait_for_text(log_path, "listener: consuming")
    finally:
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(30) == 0
    lines = log_path.read_text().splitlines()
    assert not [line for line in lines if " pika." in line or "Traceback" in line], lines
    for role in ("publisher", "listener"):
        down = [line for line in lines if f"{role}: broker" in line and "unavailable" in line]
        back = [line for line in lines if f"[{role}]" in line and "back after" in line]
        # One line when it went down, one more only for a new kind of reason (a cut proxy
        # closes some attempts at once, resets others): never one per attempt.
        assert 1 <= len(down) <= 2, lines
        kinds = [line.split("(", 1)[1].split(":", 1)[0].rsplit(" <- ", 1)[-1] for line in down]
        assert len(set(kinds)) == len(kinds), down
        assert "retrying in" in down[0]
        assert "at most every 30 s" in down[0]
        assert len(back) == 1, lines
