"""``make demo``: the whole chain on one machine in well under a minute (needs RabbitMQ).

It starts three simulated Foscam cameras (one answers, one hangs, one is configured with
a wrong password) and, where GStreamer's RTSP server runs, an RTSP camera the daemon keeps
a warm stream of (with four seconds of pre-trigger stills), the daemon as a child process on a fresh data root with an exchange
of its own (so it disturbs nothing else on the broker), and the ``events`` subscriber as
a second child. Then it sends triggers as the event processor does, uploads one image
over FTP, prints each event as it arrives, and ends with a summary: events, what became
of each camera, latency, and where the files are. Every child runs in a process group of
its own and is stopped in a ``finally``, on success, failure or Ctrl-C alike; the
broker's queue and exchanges made for the demo are deleted at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import ftplib
import io
import json
import os
import queue
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO, Any

import msgpack
import pika
from PIL import Image, ImageDraw
from prometheus_client.parser import text_string_to_metric_families

from snapshot_processor import config
from snapshot_processor.cli.common import broker_channel
from snapshot_processor.cli.trigger import TRIGGER_EXPIRATION_MS, trigger_message
from snapshot_processor.contract.event import trigger_routing_key
from snapshot_processor.contract.exchanges import control_exchange
from snapshot_processor.ingest.stage import camera_folder
from snapshot_processor.storage.files import slug
from tools.camera_simulator import CameraSimulator
from tools.rtsp_camera import RtspServer, why_unavailable

CHECKOUT = Path(__file__).resolve().parent.parent
CAMERA_PASSWORD = "demo-camera-password"
UPLOAD_CAMERA = "Garden"
# Short, so the hanging camera's triggers fail within the demo's minute.
CAMERA_TIMEOUT = 2.0
START_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0
PRE_TRIGGER_SECONDS = 4.0
PRE_TRIGGER_MARK = "-before-"  # in the names of a snapshot's pre-trigger stills


@dataclass
class DemoCamera:
    """One simulated camera (HTTP, or an RTSP stream), what it is meant to show, and what
    came of its triggers."""

    location: str
    behaviour: str
    simulator: CameraSimulator | RtspServer
    configured_password: str = CAMERA_PASSWORD
    sent: list[float] = field(default_factory=list)
    arrived: list[float] = field(default_factory=list)

    @property
    def key(self) -> str:
        """The camera output's key, as triggers and events name it."""
        return f"{self.location} camera"

    @property
    def answers(self) -> bool:
        """Whether each of its triggers is meant to end in an event."""
        return self.behaviour.startswith("answers")

    @property
    def where(self) -> str:
        """The simulator's address, without credentials."""
        if isinstance(self.simulator, RtspServer):
            return self.simulator.url(user="")
        return self.simulator.base_url

    def outputs(self, number: int) -> dict[str, str]:
        """Its ``OUTPUT_<number>_*`` settings."""
        settings = {
            "LOCATION": self.location,
            "TYPE": "camera",
            "USER": "admin",
            "PASSWORD": self.configured_password,
        }
        if isinstance(self.simulator, RtspServer):
            settings |= {
                "VENDOR": "rtsp",
                "URL": self.where,
                "RTSP_MODE": "warm",
                "PRE_TRIGGER_SECONDS": f"{PRE_TRIGGER_SECONDS:g}",
            }
        else:
            settings |= {"VENDOR": "foscam", "ADDRESS": f"127.0.0.1:{self.simulator.port}"}
        return {f"OUTPUT_{number}_{name}": value for name, value in settings.items()}


@dataclass
class Child:
    """A child process in a session (and process group) of its own."""

    name: str
    process: subprocess.Popen[bytes]
    exit_code: int | None = None


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (the daemon binds it a moment later)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def percentile(values: list[float], share: float) -> float:
    """The value below which ``share`` of ``values`` lie (nearest rank)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(share * len(ordered)) - 1))]


def sample_jpeg(text: str) -> bytes:
    """A small JPEG, as a camera would push it."""
    image = Image.new("RGB", (640, 360), (40, 90, 60))
    ImageDraw.Draw(image).text((20, 20), text, fill=(255, 255, 255))
    out = io.BytesIO()
    image.save(out, "JPEG", quality=80)
    return out.getvalue()


class Demo:
    """One run: start everything, drive it, report, stop everything."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.workdir = Path(args.workdir or tempfile.mkdtemp(prefix="snapshot-demo-"))
        self.data_root = self.workdir / "data"
        # Picked in run(), once the camera simulators hold their ports: picked before,
        # a simulator could be given the same free port.
        self.http_port = 0
        self.ftp_port = 0
        self.token = secrets.token_urlsafe(24)
        self.ftp_password = secrets.token_urlsafe(12)
        self.cameras = [
            DemoCamera(
                "Front Door",
                "answers",
                CameraSimulator(name="Front Door", password=CAMERA_PASSWORD),
            ),
            DemoCamera(
                "Garage",
                "hangs",
                CameraSimulator(name="Garage", password=CAMERA_PASSWORD, mode="hang"),
            ),
            DemoCamera(
                "Back Yard",
                "wrong password",
                CameraSimulator(name="Back Yard", password=CAMERA_PASSWORD),
                configured_password="not-the-camera-password",
            ),
        ]
        # The stream camera where GStreamer's RTSP server runs (Debian's python3-gi).
        self.rtsp_left_out = why_unavailable()
        if self.rtsp_left_out is None:
            stream = RtspServer("admin", CAMERA_PASSWORD, width=1280, height=720, key_on_join=False)
            self.cameras.append(DemoCamera("Driveway", "answers from a warm RTSP stream", stream))
        self.children: list[Child] = []
        self.lines: queue.Queue[tuple[float, str]] = queue.Queue()
        self.readers: list[threading.Thread] = []
        self.events: list[tuple[float, str]] = []
        self.uploaded_at: float | None = None
        self.started = time.monotonic()
        self.settings: config.Settings | None = None
        self.summary: list[str] = []

    # -- the settings both children share ------------------------------------------

    def environment(self) -> dict[str, str]:
        """The daemon's settings, and the little a Python child needs besides."""
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "PYTHONPATH": str(CHECKOUT),
            "LANG": os.environ.get("LANG", "C.UTF-8"),
            "DEVICE_NAME": "demo",
            "LOG_LEVEL": "INFO",
            "RABBITMQ_SERVER_ADDRESS": self.args.broker,
            "RABBITMQ_EXCHANGE": self.args.exchange,
            "SNAPSHOTS_ROOT_DIR": str(self.data_root),
            # An empty folder: no Docker secret or 1Password item of this machine leaks in.
            "SECRETS_DIR": str(self.workdir / "secrets"),
            "HTTP_PORT": str(self.http_port),
            "HTTP_TOKEN": self.token,
            "FTP_PASS": self.ftp_password,
            "FTP_LISTEN_ADDRESS": "127.0.0.1",
            "FTP_PORT": str(self.ftp_port),
            "CAMERA_TIMEOUT": str(CAMERA_TIMEOUT),
            "CAMERA_RETRIES": "0",
            "OBJECT_DETECTION_ENABLED": "false",
            "INPUT_1_LOCATION": UPLOAD_CAMERA,
            "INPUT_1_TYPE": "camera",
        }
        for number, camera in enumerate(self.cameras, start=1):
            env |= camera.outputs(number)
        return env

    # -- children --------------------------------------------------------------------

    def spawn(self, name: str, command: list[str], output: IO[bytes] | int) -> Child:
        """Start a child in a new session, so a terminal's Ctrl-C reaches the demo alone
        and the demo stops the children in order."""
        process = subprocess.Popen(
            [sys.executable, "-m", "snapshot_processor", *command],
            cwd=self.workdir,  # no config/snapshot-processor.toml of the checkout is read
            env=self.environment(),
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        child = Child(name, process)
        self.children.append(child)
        say(f"started the {name}, pid {process.pid}")
        return child

    def read_lines(self, child: Child) -> None:
        """Hand each line the child prints to the main thread, with its arrival time."""
        stream = child.process.stdout
        assert stream is not None

        def read() -> None:
            for raw in stream:
                self.lines.put((time.monotonic(), raw.decode("utf-8", "replace").rstrip()))

        reader = threading.Thread(target=read, name=f"{child.name}-reader", daemon=True)
        reader.start()
        self.readers.append(reader)

    def stop_children(self) -> None:
        """SIGTERM each child's process group, newest first; SIGKILL what outlives it."""
        for child in reversed(self.children):
            if child.process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(child.process.pid, signal.SIGTERM)
            try:
                child.exit_code = child.process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                say(f"the {child.name} did not stop within {STOP_TIMEOUT:g} s: killed")
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(child.process.pid, signal.SIGKILL)
                child.exit_code = child.process.wait()
            # Anything the child started in its group goes with it.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.process.pid, signal.SIGKILL)
        for reader in self.readers:
            reader.join(5)

    # -- the daemon's HTTP server ----------------------------------------------------

    def get(self, path: str, *, token: bool = True) -> tuple[int, bytes]:
        """Status and body of a GET on the daemon's HTTP server."""
        request = urllib.request.Request(f"http://127.0.0.1:{self.http_port}{path}")
        if token:
            request.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(request, timeout=5) as answer:
                return int(answer.status), bytes(answer.read())
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def wait_healthy(self, daemon: Child) -> None:
        """Until /healthz answers 200; a daemon that ends first shows its log and fails."""
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if daemon.process.poll() is not None:
                raise DemoError(f"the daemon stopped at start (exit {daemon.process.returncode})")
            with contextlib.suppress(OSError):
                if self.get("/healthz", token=False)[0] == 200:
                    return
            time.sleep(0.1)
        raise DemoError(f"the daemon was not healthy within {START_TIMEOUT:g} s")

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        """Every sample on /metrics, by name and labels."""
        _, body = self.get("/metrics", token=False)
        samples = {}
        for family in text_string_to_metric_families(body.decode()):
            for sample in family.samples:
                samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
        return samples

    def failures(self, camera: DemoCamera) -> dict[str, int]:
        """The camera's failed snapshots by reason, from the daemon's counters."""
        found: dict[str, int] = {}
        for (name, labels), value in self.metrics().items():
            names = dict(labels)
            if name == "snapshot_failures_total" and names.get("camera") in (
                camera.key,
                camera.location,
            ):
                found[names.get("reason", "?")] = int(value)
        return found

    def health(self) -> dict[str, dict[str, Any]]:
        """Each camera's health as the prober sees it, by key."""
        status, body = self.get("/api/cameras")
        if status != 200:
            return {}
        return {entry["key"]: entry.get("health") or {} for entry in json.loads(body)["cameras"]}

    # -- the run ---------------------------------------------------------------------

    def run(self) -> int:
        """Everything, in order; the exit code."""
        say(f"snapshot-processor demo in {self.workdir}")
        self.data_root.mkdir(parents=True, exist_ok=True)
        (self.workdir / "secrets").mkdir(exist_ok=True)
        for camera in self.cameras:
            camera.simulator.start()
            say(f"camera '{camera.key}' ({camera.behaviour}) simulated at {camera.where}")
        if self.rtsp_left_out is not None:
            say(f"the RTSP camera is left out: {self.rtsp_left_out}")
        self.http_port = free_port()
        self.ftp_port = free_port()
        self.settings = config.load(env=self.environment(), config_file=Path("/dev/null"))
        with (self.workdir / "daemon.log").open("wb") as daemon_log:
            daemon = self.spawn("daemon", ["run"], daemon_log)
            self.wait_healthy(daemon)
        say(f"status page: http://127.0.0.1:{self.http_port}/  token: {self.token}")
        events = self.spawn("events subscriber", ["events"], subprocess.PIPE)
        self.read_lines(events)
        self.wait_listening(events)
        self.wait_streams()
        self.send(self.expected)
        self.collect(self.expected, self.args.timeout)
        results = self.outcomes()
        if self.args.keep:
            self.keep_running()
        return results

    @property
    def expected(self) -> int:
        """Events meant to come: each answering camera's triggers, and the upload's."""
        rounds: int = self.args.rounds
        return rounds * sum(camera.answers for camera in self.cameras) + 1

    def keep_running(self) -> None:
        """KEEP=1: the daemon and cameras stay up for a visit to the page, until Ctrl-C."""
        say("summary so far")
        for line in self.summary:
            print(f"  {line}")
        say(
            f"still running: status page http://127.0.0.1:{self.http_port}/  token: "
            f"{self.token}; Ctrl-C ends the demo"
        )
        try:
            while not INTERRUPTED.is_set():
                time.sleep(0.5)
        except KeyboardInterrupt:
            pass
        INTERRUPTED.clear()  # the end asked for, not an interruption of the demo

    def wait_listening(self, events: Child) -> None:
        """Until the subscriber has bound its queue, so no event slips past it."""
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            try:
                _, line = self.lines.get(timeout=0.2)
            except queue.Empty:
                if events.process.poll() is not None:
                    raise DemoError("the events subscriber stopped at start") from None
                continue
            if line.startswith("listening on"):
                say(f"events subscriber: {line}")
                return
            say(f"events subscriber: {line}")
        raise DemoError("the events subscriber did not start listening")

    def wait_streams(self) -> None:
        """Until each warm stream is up, so that its first trigger finds it warm, with a
        still or two from before it."""
        streams = [c.key for c in self.cameras if isinstance(c.simulator, RtspServer)]
        deadline = time.monotonic() + START_TIMEOUT
        while streams and time.monotonic() < deadline:
            health = self.health()
            if all(health.get(key, {}).get("state") == "up" for key in streams):
                say(f"the daemon's warm RTSP stream is open: {', '.join(streams)}")
                return
            time.sleep(0.2)
        if streams:
            say("the warm RTSP stream is not open yet: its first trigger waits for it")

    def send(self, expected: int) -> None:
        """Triggers for every camera, round after round, and one upload over FTP."""
        settings = self.settings
        assert settings is not None
        with broker_channel(settings, "demo") as channel:
            channel.confirm_delivery()
            for round_number in range(1, self.args.rounds + 1):
                for camera in self.cameras:
                    device = next(d for d in settings.cameras if d.key == camera.key)
                    body = msgpack.packb(trigger_message(settings, device, None), use_bin_type=True)
                    camera.sent.append(time.monotonic())
                    channel.basic_publish(
                        control_exchange(settings),
                        trigger_routing_key(settings.broker.device_topic),
                        body,
                        pika.BasicProperties(expiration=TRIGGER_EXPIRATION_MS),
                        mandatory=True,
                    )
                say(f"round {round_number}: a trigger for each of {len(self.cameras)} cameras sent")
                if round_number == 1:
                    self.upload()
                self.show_events(expected, until=time.monotonic() + self.args.interval)

    def upload(self) -> None:
        """One JPEG into the upload camera's folder, as a camera pushes it."""
        assert self.settings is not None
        # The FTP home is the data root; each upload camera has its folder in the upload dir.
        folder = f"{self.settings.ingest.folder.as_posix()}/{camera_folder(UPLOAD_CAMERA)}"
        with ftplib.FTP() as ftp:
            ftp.connect("127.0.0.1", self.ftp_port, timeout=10)
            ftp.login("camera", self.ftp_password)
            ftp.cwd(folder)
            ftp.storbinary("STOR demo.jpg", io.BytesIO(sample_jpeg("uploaded by the demo")))
        self.uploaded_at = time.monotonic()
        say(f"uploaded demo.jpg over FTP into {folder}/ (port {self.ftp_port})")

    def show_events(self, expected: int, until: float) -> None:
        """Print each event that arrives before ``until`` with progress."""
        while (left := until - time.monotonic()) > 0:
            try:
                arrived, line = self.lines.get(timeout=left)
            except queue.Empty:
                return
            if " camera '" not in line:
                say(f"events subscriber: {line}")
                continue
            self.events.append((arrived, line))
            for camera in self.cameras:
                if f" camera '{camera.key}' " in line:
                    camera.arrived.append(arrived)
            say(f"event {len(self.events)}/{expected} at +{arrived - self.started:.1f} s: {line}")

    def collect(self, expected: int, timeout: float) -> None:
        """Wait for the events still to come, then for the failures to be counted."""
        deadline = time.monotonic() + timeout
        while len(self.events) < expected and time.monotonic() < deadline:
            self.show_events(expected, until=min(deadline, time.monotonic() + 0.5))
        # The hanging camera's last trigger fails CAMERA_TIMEOUT after it was taken.
        failing = [c for c in self.cameras if not c.answers]
        settle = time.monotonic() + CAMERA_TIMEOUT + 3
        while time.monotonic() < settle and not all(self.failures(c) for c in failing):
            time.sleep(0.2)

    def outcomes(self) -> int:
        """The summary (after the children stopped); 0 if every camera did as meant."""
        health = self.health()
        lines: list[str] = []
        good = True
        for camera in self.cameras:
            failures = self.failures(camera)
            state = health.get(camera.key, {})
            shown = f"health {state.get('state', '?')}" + (
                f" ({state['reason']})" if state.get("reason") else ""
            )
            text = (
                f"camera '{camera.key}' ({camera.behaviour}): {len(camera.sent)} trigger(s), "
                f"{len(camera.arrived)} event(s)"
            )
            if camera.arrived:
                latencies = [
                    1000 * (a - s) for s, a in zip(camera.sent, camera.arrived, strict=False)
                ]
                text += (
                    f", latency trigger to event p50 {statistics.median(latencies):.0f} ms, "
                    f"max {max(latencies):.0f} ms"
                )
            if failures:
                text += ", failed snapshots: " + ", ".join(
                    f"{n} {r}" for r, n in sorted(failures.items())
                )
            if isinstance(camera.simulator, RtspServer):
                # Beside the camera's images, in each sensor event's bundle folder.
                named = f"{slug(camera.key)}_*{PRE_TRIGGER_MARK}*.jpg"
                stills = sum(1 for _ in self.data_root.rglob(named))
                text += f", {stills} pre-trigger still(s)"
            lines.append(f"{text}; {shown}")
            if camera.answers:
                good &= len(camera.arrived) == len(camera.sent)
            else:
                good &= not camera.arrived and bool(failures)
        uploads = [a for a, line in self.events if f"camera '{UPLOAD_CAMERA} camera'" in line]
        upload = f"camera '{UPLOAD_CAMERA} camera' (FTP upload): 1 file uploaded, {len(uploads)} event(s)"
        if uploads and self.uploaded_at is not None:
            upload += (
                f", latency upload end to event {1000 * (uploads[0] - self.uploaded_at):.0f} ms"
            )
        good &= len(uploads) == 1
        lines.append(upload)
        files = [path.name for path in self.data_root.rglob("*.jpg")]
        stills = sum(PRE_TRIGGER_MARK in name for name in files)
        self.summary = [
            f"events: {len(self.events)} of {self.expected} expected, "
            f"in {time.monotonic() - self.started:.1f} s",
            *lines,
            f"files: snapshots under {self.data_root} ({len(files) - stills} JPEG files"
            + (f", and {stills} pre-trigger stills" if stills else "")
            + f"), the daemon's log {self.workdir / 'daemon.log'}",
        ]
        return 0 if good else 1


class DemoError(Exception):
    """The demo cannot go on; the message says why."""


def say(line: str) -> None:
    """One line of the demo's own output."""
    print(f"demo: {line}", flush=True)


# Set once Ctrl-C or SIGTERM came: a library that turned the interrupt into an error of
# its own (pika, in the middle of a publish) still ends the demo as interrupted.
INTERRUPTED = threading.Event()


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    INTERRUPTED.set()
    raise KeyboardInterrupt


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM and Ctrl-C unwind alike, so the ``finally`` blocks stop the children."""
    previous = {
        number: signal.signal(number, _raise_interrupt)
        for number in (signal.SIGTERM, signal.SIGINT)
    }
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def delete_broker_objects(settings: config.Settings) -> None:
    """The demo's trigger queue and exchanges, so nothing of it stays on the broker."""
    with contextlib.suppress(Exception), broker_channel(settings, "demo cleanup") as channel:
        channel.queue_delete(settings.queue_name)
        channel.exchange_delete(control_exchange(settings))
        channel.exchange_delete(settings.broker.exchange)


def broker_reachable(host: str) -> bool:
    """Whether something listens on the AMQP port."""
    try:
        with socket.create_connection((host, 5672), timeout=2):
            return True
    except OSError:
        return False


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m tools.demo [--rounds N] [--interval S] [--exchange NAME] [--workdir DIR]``."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument(
        "--rounds", type=int, default=3, help="triggers per camera (default %(default)s)"
    )
    parser.add_argument(
        "--interval", type=float, default=1.0, help="seconds between rounds (default %(default)s)"
    )
    parser.add_argument(
        "--timeout", type=float, default=15.0, help="seconds to wait for the last events"
    )
    parser.add_argument(
        "--keep",
        action="store_true",
        help="after the summary, keep the daemon and cameras running until Ctrl-C",
    )
    parser.add_argument("--broker", default="127.0.0.1", help="RabbitMQ host (default %(default)s)")
    parser.add_argument(
        "--exchange",
        default=f"snapshot_demo_{secrets.token_hex(4)}",
        help="the demo's own event exchange (default: a new name)",
    )
    parser.add_argument(
        "--workdir",
        default=None,
        help="where the data root and log go (default: a new temp folder)",
    )
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    if not broker_reachable(args.broker):
        print(
            f"demo: RabbitMQ is not reachable on {args.broker}:5672 (the demo needs it)",
            file=sys.stderr,
        )
        return 3
    demo = Demo(args)
    code = 1
    try:
        with sigterm_as_interrupt():
            try:
                code = demo.run()
            finally:
                demo.stop_children()
                for camera in demo.cameras:
                    camera.simulator.stop()
                if demo.settings is not None:
                    delete_broker_objects(demo.settings)
    except KeyboardInterrupt:
        say("interrupted: every process the demo started is stopped")
        return 130
    except DemoError as exc:
        if INTERRUPTED.is_set():
            say("interrupted: every process the demo started is stopped")
            return 130
        say(f"failed: {exc}; the daemon's log: {demo.workdir / 'daemon.log'}")
        _show_log_tail(demo.workdir / "daemon.log")
        return 1
    except Exception:
        if not INTERRUPTED.is_set():
            raise
        say("interrupted: every process the demo started is stopped")
        return 130
    say("summary")
    for line in demo.summary:
        print(f"  {line}")
    children = ", ".join(f"{c.name} pid {c.process.pid} exit {c.exit_code}" for c in demo.children)
    print(f"  processes: {children}; none left running")
    return code


def _show_log_tail(path: Path, lines: int = 15) -> None:
    with contextlib.suppress(OSError):
        for line in path.read_text(errors="replace").splitlines()[-lines:]:
            print(f"  | {line}")


if __name__ == "__main__":
    sys.exit(main())
