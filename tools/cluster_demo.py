"""Beyond one machine, shown: a three-node RabbitMQ cluster on loopback, two daemons on one
quorum trigger queue, two detection workers, a stream of triggers, and two nodes stopped
mid-stream (the one leading the trigger queue, then the one a daemon is connected to),
each started again. A companion service (here, this script) counts the events.

``python -m tools.cluster_demo`` (``make cluster-demo``) prints what happened and ends 0
when every trigger yielded its event and nothing stayed in a queue. The tests run the same
scenario (tests/test_cluster.py)."""

from __future__ import annotations

import argparse
import contextlib
import itertools
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack
import pika

from tools.camera_simulator import CameraSimulator
from tools.rabbit_cluster import RabbitCluster

CHECKOUT = Path(__file__).resolve().parent.parent
EXCHANGE = "cluster_demo"
TOPIC = "snapshot"
QUEUE = f"{EXCHANGE}.{TOPIC}.triggers"  # shared by both daemons
DEAD = f"{QUEUE}.dead"
WORK = f"{EXCHANGE}.{TOPIC}.detection"
COMPANION = f"{EXCHANGE}.companion"
CAMERAS = 4
CAMERA_USER, CAMERA_PASSWORD = "admin", "demo-pass"
DAEMONS = {"garage-a": "abc", "garage-b": "bca"}  # each daemon's node order
WORKERS = {"worker-1": "cab", "worker-2": "abc"}
# How long a stopped node stays down before it is started again.
DOWN_SECONDS = 5.0
# Triggers before the first node is stopped, and the pause between the two stops.
DISRUPT_AFTER = 12
SETTLE_SECONDS = 3.0


@dataclass
class Outcome:
    """What the companion saw, and what was left behind."""

    sent: int = 0
    resent: int = 0  # triggers published again after an unconfirmed publish
    received: int = 0
    missing: list[str] = field(default_factory=list)
    duplicates: int = 0
    by_daemon: dict[str, int] = field(default_factory=dict)
    analysed: int = 0
    max_gap: float = 0.0  # seconds between consecutive events, while triggers flowed
    gaps_at: list[str] = field(default_factory=list)
    interruptions: list[str] = field(default_factory=list)
    left: dict[str, int] = field(default_factory=dict)
    exit_codes: dict[str, int | None] = field(default_factory=dict)

    @property
    def lost_nothing(self) -> bool:
        return (
            not self.missing
            and not any(self.left.values())
            and all(code == 0 for code in self.exit_codes.values())
        )

    def lines(self) -> list[str]:
        split = ", ".join(f"{name} {count}" for name, count in sorted(self.by_daemon.items()))
        return [
            f"triggers sent: {self.sent} (published again after a lost confirm: {self.resent})",
            f"events received: {self.received}; distinct triggers: {self.received - self.duplicates}",
            f"missing: {len(self.missing)}{' ' + ', '.join(self.missing[:10]) if self.missing else ''}",
            f"duplicates: {self.duplicates}",
            f"events by daemon: {split}",
            f"frames analysed by a worker: {self.analysed} of {self.received}",
            f"longest gap between events: {self.max_gap:.1f} s",
            *[f"  {line}" for line in self.interruptions],
            "left in queues: "
            + ", ".join(f"{name} {count}" for name, count in sorted(self.left.items())),
            "exit codes: "
            + ", ".join(f"{name} {code}" for name, code in sorted(self.exit_codes.items())),
            "nothing lost" if self.lost_nothing else "SOMETHING WAS LOST",
        ]


def node_params(cluster: RabbitCluster, order: str, name: str) -> list[pika.ConnectionParameters]:
    nodes = []
    for letter in order:
        params = pika.URLParameters(cluster.url(letter))
        params.client_properties = {"connection_name": name}
        params.connection_attempts = 1
        params.socket_timeout = 2.0
        params.heartbeat = 10
        nodes.append(params)
    return nodes


class Companion(threading.Thread):
    """A service that subscribes to the image events through a quorum queue of its own,
    moving to another node when its node leaves."""

    def __init__(self, cluster: RabbitCluster) -> None:
        super().__init__(name="companion", daemon=True)
        self.nodes = node_params(cluster, "cba", "companion")
        self.stop_event = threading.Event()
        self.ready = threading.Event()
        self.lock = threading.Lock()
        self.seen: list[tuple[float, str, str, bool]] = []  # time, label, daemon, analysed
        self._cancelled = False

    def run(self) -> None:
        while not self.stop_event.is_set():
            try:
                connection = pika.BlockingConnection(self.nodes)
                channel = connection.channel()
                channel.exchange_declare(EXCHANGE, exchange_type="topic")
                channel.queue_declare(COMPANION, durable=True, arguments={"x-queue-type": "quorum"})
                channel.queue_bind(COMPANION, EXCHANGE, f"event.notify.{TOPIC}.*.image")
                channel.basic_qos(prefetch_count=100)
                channel.add_on_cancel_callback(self._on_cancel)
                channel.basic_consume(COMPANION, self._on_event)
                self.ready.set()
                while not self.stop_event.is_set():
                    if self._cancelled:
                        time.sleep(0.5)
                        self._cancelled = False
                        channel.basic_consume(COMPANION, self._on_event)
                    connection.process_data_events(time_limit=0.2)
                connection.close()
            except pika.exceptions.AMQPError:
                time.sleep(0.5)

    def _on_cancel(self, frame: Any) -> None:
        self._cancelled = True

    def _on_event(self, channel: Any, method: Any, properties: Any, body: bytes) -> None:
        event = msgpack.unpackb(body, raw=False)
        entry = event["inputs"][0]
        daemon = str(method.routing_key).split(".")[3]
        with self.lock:
            self.seen.append(
                (time.monotonic(), str(entry["device_label"]), daemon, bool(entry.get("analysed")))
            )
        channel.basic_ack(method.delivery_tag)


class Sender:
    """Publishes triggers with confirms; one whose confirm is lost is published again."""

    def __init__(self, cluster: RabbitCluster) -> None:
        self.nodes = node_params(cluster, "bac", "trigger sender")
        self.connection: pika.BlockingConnection | None = None
        self.channel: Any = None
        self.resent = 0

    def send(self, label: str, camera: int) -> None:
        body = msgpack.packb(
            {
                "timestamp": int(time.time()),
                "active_input": {"device_key": f"pir {label}", "device_type": "pir"},
                "output_triggered": {
                    "device_key": f"Cam{camera} camera",
                    "device_type": "camera",
                    "device_label": label,
                    "trigger_topic": TOPIC,
                },
            },
            use_bin_type=True,
        )
        for _attempt in range(60):
            try:
                if self.channel is None:
                    self.connection = pika.BlockingConnection(self.nodes)
                    self.channel = self.connection.channel()
                    self.channel.confirm_delivery()
                self.channel.basic_publish(
                    f"{EXCHANGE}_control",
                    f"event.trigger.{TOPIC}",
                    body,
                    pika.BasicProperties(delivery_mode=2),
                    mandatory=True,
                )
                return
            except pika.exceptions.AMQPError:
                with contextlib.suppress(Exception):
                    if self.connection is not None:
                        self.connection.close()
                self.connection, self.channel = None, None
                self.resent += 1
                time.sleep(0.25)
        raise RuntimeError(f"trigger {label} could not be published for 15 s")

    def close(self) -> None:
        with contextlib.suppress(Exception):
            if self.connection is not None:
                self.connection.close()


def _env(
    cluster: RabbitCluster, order: str, root: Path, name: str, camera_port: int
) -> dict[str, str]:
    env = {
        "PATH": os.environ["PATH"],
        "PYTHONPATH": str(CHECKOUT),
        "RABBITMQ_URL": cluster.url_list(list(order)),
        "RABBITMQ_EXCHANGE": EXCHANGE,
        "RABBITMQ_QUEUE": QUEUE,
        "RABBITMQ_QUEUE_TYPE": "quorum",
        "DEVICE_NAME": name,
        "SNAPSHOTS_ROOT_DIR": str(root / name),
        "SECRETS_DIR": str(root / "no-secrets"),
        "HTTP_PORT": "0",
        "HEARTBEAT_INTERVAL": "5",
        "CAMERA_TIMEOUT": "3",
        "OBJECT_DETECTION_ENABLED": "true",
        "OBJECT_DETECTION_BACKEND": "local",
        "DETECTION_REMOTE": "true",
        "DETECTION_REMOTE_TIMEOUT": "5",
        "DETECTION_DEDUPE_SECONDS": "0",
        "LOG_LEVEL": "INFO",
    }
    for n in range(1, CAMERAS + 1):
        env |= {
            f"OUTPUT_{n}_LOCATION": f"Cam{n}",
            f"OUTPUT_{n}_TYPE": "camera",
            f"OUTPUT_{n}_VENDOR": "foscam",
            f"OUTPUT_{n}_ADDRESS": f"127.0.0.1:{camera_port}",
            f"OUTPUT_{n}_USER": CAMERA_USER,
            f"OUTPUT_{n}_PASSWORD": CAMERA_PASSWORD,
        }
    return env


@contextlib.contextmanager
def processes(
    cluster: RabbitCluster, root: Path, camera_port: int, outcome: Outcome
) -> Iterator[dict[str, subprocess.Popen[bytes]]]:
    """Both daemons and both workers, stopped by SIGTERM at the end (exit codes kept)."""
    running: dict[str, subprocess.Popen[bytes]] = {}
    try:
        for names, command in ((WORKERS, "detect-worker"), (DAEMONS, "run")):
            for name, order in names.items():
                (root / name).mkdir(parents=True, exist_ok=True)
                with (root / f"{name}.log").open("wb") as log:
                    running[name] = subprocess.Popen(
                        [sys.executable, "-m", "snapshot_processor", command],
                        env=_env(cluster, order, root, name, camera_port),
                        stdout=log,
                        stderr=subprocess.STDOUT,
                    )
        yield running
    finally:
        for process in running.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for name, process in running.items():
            try:
                outcome.exit_codes[name] = process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                outcome.exit_codes[name] = process.wait()


def wait_until(check: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} within {timeout:.0f} s")
        time.sleep(0.2)


def interrupt(
    cluster: RabbitCluster, node: str, why: str, outcome: Outcome, start: float, say: Any
) -> None:
    began = time.monotonic() - start
    say(f"stopping {node} ({why}) at {began:.1f} s")
    cluster.stop_app(node)
    time.sleep(DOWN_SECONDS)
    cluster.start_app(node)
    outcome.interruptions.append(
        f"{node} ({why}) stopped at {began:.1f} s, started again at "
        f"{time.monotonic() - start:.1f} s"
    )


def disrupt(cluster: RabbitCluster, outcome: Outcome, start: float, say: Any) -> None:
    """One node down at a time, so the quorum queues keep their majority: the leader of
    the trigger queue, then the node garage-a's listener is on (it moved there after the
    first stop, or was there before)."""
    leader = cluster.quorum_leader(QUEUE) or cluster.node_names[0]
    interrupt(cluster, leader, "leading the trigger queue", outcome, start, say)
    time.sleep(SETTLE_SECONDS)
    node = cluster.node_of_connection("snapshot-processor garage-a listener")
    interrupt(
        cluster, node or cluster.node_names[1], "garage-a's listener is on it", outcome, start, say
    )


def scenario(
    cluster: RabbitCluster, root: Path, *, triggers: int = 120, rate: float = 4.0, say: Any = print
) -> Outcome:
    """The whole run on a started cluster; the processes' logs are left in ``root``."""
    outcome = Outcome()
    companion = Companion(cluster)
    companion.start()
    sender = Sender(cluster)
    try:
        companion.ready.wait(30)
        with (
            contextlib.ExitStack() as stack,
            CameraSimulator(user=CAMERA_USER, password=CAMERA_PASSWORD) as camera,
            processes(cluster, root, camera.port, outcome) as running,
        ):
            say(f"cluster {', '.join(cluster.node_names)}; daemons and workers starting")
            wait_until(
                lambda: (
                    cluster.queue_depths().get(WORK) is not None
                    and _consumers(cluster, WORK) >= len(WORKERS)
                    and _consumers(cluster, QUEUE) >= len(DAEMONS)
                ),
                60,
                "daemons and workers did not consume",
            )
            say(f"sending triggers at {rate:g}/s, at least {triggers}, until both nodes are back")
            start = time.monotonic()
            disruptor = threading.Thread(
                target=disrupt, args=(cluster, outcome, start, say), daemon=True
            )
            number = 0
            # Never left running, even on a failure (and never joined before it started).
            stack.callback(_join_if_started, disruptor)
            while number < triggers or disruptor.is_alive():
                if number == DISRUPT_AFTER:
                    disruptor.start()
                sender.send(f"t{number:04d}", number % CAMERAS + 1)
                number += 1
                outcome.sent = number
                time.sleep(max(0.0, start + number / rate - time.monotonic()))
            sent_until = time.monotonic()
            labels = {f"t{sent:04d}" for sent in range(outcome.sent)}
            with contextlib.suppress(TimeoutError):
                wait_until(lambda: labels <= {s[1] for s in companion.seen}, 90, "events")
            with contextlib.suppress(TimeoutError):
                wait_until(lambda: not any(_left(cluster).values()), 30, "queues drained")
            time.sleep(1.0)  # late duplicates, if any, arrive too
            outcome.left = _left(cluster)
            for name, process in running.items():
                if process.poll() is not None:
                    outcome.exit_codes[name] = process.returncode
        with companion.lock:
            seen = list(companion.seen)
        counts = Counter(label for _, label, _, _ in seen)
        outcome.received = len(seen)
        outcome.duplicates = sum(count - 1 for count in counts.values())
        outcome.missing = sorted(labels - set(counts))
        outcome.by_daemon = dict(Counter(daemon for _, _, daemon, _ in seen))
        outcome.analysed = sum(1 for *_, analysed in seen if analysed)
        times = [start, *sorted(t for t, *_ in seen if t <= sent_until + 5)]
        gaps = [(b - a, a - start) for a, b in itertools.pairwise(times)]
        if gaps:
            outcome.max_gap, at = max(gaps)
            outcome.gaps_at.append(f"{at:.1f} s")
        outcome.resent = sender.resent
        return outcome
    finally:
        sender.close()
        companion.stop_event.set()
        companion.join(10)


def _join_if_started(thread: threading.Thread) -> None:
    if thread.is_alive():
        thread.join(120)


def _consumers(cluster: RabbitCluster, queue: str) -> int:
    for line in cluster.ctl(
        "list_queues", "-q", "--no-table-headers", "name", "consumers"
    ).splitlines():
        name, _, count = line.rpartition("\t")
        if name.strip() == queue:
            return int(count)
    return 0


def _left(cluster: RabbitCluster) -> dict[str, int]:
    depths = cluster.queue_depths()
    return {queue: depths.get(queue, 0) for queue in (QUEUE, DEAD, WORK, COMPANION)}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--triggers", type=int, default=120, help="at least this many")
    parser.add_argument("--rate", type=float, default=4.0, help="triggers a second")
    parser.add_argument("--keep", type=Path, help="keep the processes' logs in this folder")
    args = parser.parse_args(argv)
    with contextlib.ExitStack() as stack:
        root = args.keep or Path(stack.enter_context(tempfile.TemporaryDirectory()))
        print("starting a three-node RabbitMQ cluster on loopback", flush=True)
        cluster = stack.enter_context(RabbitCluster())
        print(f"cluster up in {cluster.start_seconds:.0f} s", flush=True)
        outcome = scenario(
            cluster,
            root,
            triggers=args.triggers,
            rate=args.rate,
            say=lambda s: print(s, flush=True),
        )
        for line in outcome.lines():
            print(line, flush=True)
        return 0 if outcome.lost_nothing else 1


if __name__ == "__main__":
    sys.exit(main())
