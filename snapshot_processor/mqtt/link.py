"""The connection to the MQTT broker: one thread runs paho's network loop, connects again after
a loss (our retry policy, with the reason kept for health), and hands what arrives to the
output's thread through callbacks."""

from __future__ import annotations

import logging
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from prometheus_client import Counter, Gauge

from pylib.observe.redact import redact
from pylib.retry import RetryPolicy
from pylib.runtime.health import Health
from pylib.runtime.worker import Worker
from snapshot_processor.camera.prober import iso_time

log = logging.getLogger(__name__)

MQTT_CONNECTED = Gauge("mqtt_connected", "1 while the MQTT broker has accepted our connection")
MQTT_IGNORED = Counter(
    "mqtt_messages_ignored_total", "What the MQTT broker sent that we could not use", ["reason"]
)
MQTT_CONNECTION_FAILURES = Counter(
    "mqtt_connection_failures_total",
    "MQTT connections that could not be made, were refused or were lost",
)

KEEPALIVE = 30
CONNECT_TIMEOUT = 5.0
# How long one turn of paho's loop may wait for the socket: how soon a stop is seen.
LOOP_SECONDS = 0.25
# At a stop, how long the DISCONNECT may take to leave.
DISCONNECT_SECONDS = 1.0


@dataclass(frozen=True)
class Broker:
    """Where and how to connect; the password never leaves this object."""

    host: str
    port: int
    tls: bool
    user: str | None
    password: str | None
    ca_file: str | None
    client_id: str
    will_topic: str
    will_payload: bytes

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def __repr__(self) -> str:
        return f"Broker({self.address}, tls={self.tls})"


@dataclass(frozen=True)
class Received:
    """A message from the broker, for the output's thread."""

    topic: str
    payload: bytes
    retain: bool


def describe(exc: BaseException) -> str:
    """A failed connection in a few words, without anything secret."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"its TLS certificate is not trusted ({exc.verify_message}); see MQTT_CA_FILE"
    if isinstance(exc, ssl.SSLError):
        return f"TLS failed ({exc.reason or exc})"
    if isinstance(exc, TimeoutError):
        return f"no answer within {CONNECT_TIMEOUT:g} s"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return str(exc) or type(exc).__name__


class MqttConnectionError(Exception):
    """No connection to the MQTT broker, said in a few words (never the password)."""


class MqttRefusedError(MqttConnectionError):
    """The broker answered, and refused us (a wrong password, no permission)."""


def client_for(broker: Broker, *, client_id: str | None = None) -> paho.Client:
    """paho's client for ``broker``, not connected yet."""
    client = paho.Client(
        CallbackAPIVersion.VERSION2,
        client_id=client_id or broker.client_id,
        protocol=paho.MQTTv311,
        clean_session=True,
    )
    if broker.user is not None:
        client.username_pw_set(broker.user, broker.password)
    if broker.tls:
        client.tls_set(ca_certs=broker.ca_file)
    client.connect_timeout = CONNECT_TIMEOUT
    return client


def try_connection(broker: Broker) -> str:
    """Log in once and leave (``check-config --online``). Another client id, and no last
    will: the running daemon keeps its connection and Home Assistant sees nothing."""
    client = client_for(broker, client_id=f"{broker.client_id}-check")
    answers: list[Any] = []
    client.on_connect = lambda client, userdata, flags, reason, props: answers.append(reason)
    try:
        try:
            client.connect(broker.host, broker.port, KEEPALIVE)
        except (OSError, ValueError) as exc:
            raise MqttConnectionError(f"cannot connect: {describe(exc)}") from None
        deadline = time.monotonic() + CONNECT_TIMEOUT
        while not answers and time.monotonic() < deadline:
            if client.loop(0.1) != MQTTErrorCode.MQTT_ERR_SUCCESS and not answers:
                raise MqttConnectionError("the connection closed before the broker answered")
        if not answers:
            raise MqttConnectionError(f"no answer within {CONNECT_TIMEOUT:g} s")
        if answers[0].is_failure:
            raise MqttRefusedError(f"refused us: {str(answers[0]).lower()}")
        client.disconnect()
        client.loop(0.1)
        return "logged in" + (" over TLS" if broker.tls else "")
    finally:
        sock = client.socket()
        if sock is not None:
            sock.close()


class MqttLink(Worker):
    """paho's client on a thread of its own. :meth:`publish`, :meth:`subscribe` and
    :meth:`unsubscribe` are safe from any thread: they queue, and this thread writes.
    The callbacks run on this thread and must only hand over (``call_soon_threadsafe``)."""

    def __init__(
        self,
        name: str,
        stop_event: threading.Event,
        broker: Broker,
        *,
        retry: RetryPolicy,
        connect_timeout: float = CONNECT_TIMEOUT,
        on_fatal: Callable[[str, BaseException], None] | None = None,
    ) -> None:
        super().__init__(name, stop_event, on_fatal=on_fatal)
        self.broker = broker
        self.retry = retry
        self.connect_timeout = connect_timeout
        # Set by whoever uses the link, before it starts; they run on this thread.
        self.on_connected: Callable[[], None] = _nothing
        self.on_message: Callable[[Received], None] = _nothing
        self.on_published: Callable[[int], None] = _nothing
        self.connected = threading.Event()
        # Connections made so far: each one's callback can tell itself from the last.
        self.connections = 0
        self._client: paho.Client | None = None
        self._lock = threading.Lock()  # the trouble fields below
        self._trouble: str | None = "not connected yet"
        self._since = time.time()
        self._reported: str | None = None

    # --- any thread ----------------------------------------------------------------
    def publish(self, topic: str, payload: bytes, *, retain: bool) -> paho.MQTTMessageInfo | None:
        """Queue a message (QoS 1); None while there is no client (stopped)."""
        client = self._client
        if client is None:
            return None
        return client.publish(topic, payload, qos=1, retain=retain)

    def subscribe(self, *filters: str) -> None:
        client = self._client
        if client is not None and self.connected.is_set():
            client.subscribe([(topic, 1) for topic in filters])

    def unsubscribe(self, *filters: str) -> None:
        client = self._client
        if client is not None and self.connected.is_set():
            client.unsubscribe(list(filters))

    def troubles(self) -> list[str]:
        with self._lock:
            trouble, since = self._trouble, self._since
        if trouble is None:
            return []
        return [f"MQTT broker {self.broker.address}: {trouble} (since {iso_time(since)})"]

    def health(self) -> Health:
        """Best effort beside the chain: a broker away is a warning, never a problem."""
        health = super().health()
        with self._lock:
            trouble, since = self._trouble, self._since
        health.detail["mqtt"] = {
            "broker": self.broker.address,
            "connected": self.connected.is_set(),
            "since": iso_time(since),
            "trouble": trouble,
        }
        return health

    # --- the thread ----------------------------------------------------------------
    def on_thread_open(self) -> None:
        client = client_for(self.broker)
        client.connect_timeout = self.connect_timeout
        client.will_set(self.broker.will_topic, self.broker.will_payload, qos=1, retain=True)
        client.on_connect = self._connected
        client.on_disconnect = self._disconnected
        client.on_message = self._received
        client.on_publish = self._published
        # With this set, a publish from another thread only queues and wakes this thread's
        # loop; without it, paho writes to the socket from the caller's thread as well.
        client.on_socket_register_write = _nothing
        # Our callbacks catch what they raise; paho's own exceptions must not end the loop.
        client.suppress_exceptions = True
        client.on_subscribe = self._subscribed
        self._client = client

    def on_thread_stop(self) -> None:
        self._set_connected(False)  # after a crash too: health must not say connected

    def on_thread_close(self) -> None:
        self._client = None
        self._set_connected(False)

    def work(self) -> None:
        client = self._client
        assert client is not None
        attempt = 0
        opened = False
        while self.should_keep_running():
            if self.stop_event.is_set() and not self.connected.is_set():
                break  # the daemon is stopping: no new connection, nothing to say goodbye on
            if not opened:
                try:
                    if client.host:
                        client.reconnect()
                    else:
                        client.connect(self.broker.host, self.broker.port, KEEPALIVE)
                    opened = True
                except (OSError, ValueError) as exc:
                    self._failed(f"cannot connect: {describe(exc)}")
                    attempt += 1
                    self.wait_for_stop(self.retry.delay(attempt))
                    continue
            rc = client.loop(LOOP_SECONDS)
            if self.connected.is_set():
                attempt = 0
            if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                opened = False
                if self._reason_unknown():
                    self._failed(f"connection lost ({paho.error_string(rc)})")
                attempt += 1
                self.wait_for_stop(self.retry.delay(attempt))
        self._say_goodbye(client, opened)

    def _say_goodbye(self, client: paho.Client, opened: bool) -> None:
        """A DISCONNECT, so the broker drops our will: the output said ``offline`` itself."""
        if not opened:
            return
        client.disconnect()
        deadline = time.monotonic() + DISCONNECT_SECONDS
        while time.monotonic() < deadline:
            if client.loop(0.05) != MQTTErrorCode.MQTT_ERR_SUCCESS:
                break

    # --- paho's callbacks, on this thread ---------------------------------------------
    def _connected(
        self, client: paho.Client, userdata: Any, flags: Any, reason: Any, props: Any
    ) -> None:
        if reason.is_failure:
            self._failed(f"refused us: {str(reason).lower()}")
            return
        # QoS 1 messages of the last connection: paho would send them again now, stale;
        # the output sends the newest of everything itself.
        client.drop_out_messages()
        self._set_connected(True)
        log.info("MQTT: connected to %s", self.broker.address)
        self._hand_over(self.on_connected)

    def _disconnected(
        self, client: paho.Client, userdata: Any, flags: Any, reason: Any, props: Any
    ) -> None:
        was = self.connected.is_set()
        self._set_connected(False)
        if was and self.should_keep_running():
            self._failed(f"connection lost ({str(reason).lower()})")

    def _received(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        try:
            topic = message.topic
        except UnicodeDecodeError:
            MQTT_IGNORED.labels("bad topic").inc()
            log.warning("MQTT: a message on a topic that is not UTF-8 ignored")
            return
        self._hand_over(self.on_message, Received(topic, bytes(message.payload), message.retain))

    def _published(
        self, client: paho.Client, userdata: Any, mid: int, reason: Any, props: Any
    ) -> None:
        self._hand_over(self.on_published, mid)

    def _subscribed(
        self, client: paho.Client, userdata: Any, mid: int, reasons: Any, props: Any
    ) -> None:
        if any(reason.is_failure for reason in reasons):
            MQTT_IGNORED.labels("subscription refused").inc()
            log.warning(
                "MQTT broker %s refused a subscription: Home Assistant's buttons and restarts "
                "go unheard (may its user subscribe to %s?)",
                self.broker.address,
                self.broker.will_topic.rsplit("/", 1)[0] + "/#",
            )

    def _hand_over(self, callback: Callable[..., None], *args: Any) -> None:
        try:
            callback(*args)
        except Exception:  # a bug of ours must not end the connection
            log.exception("MQTT: a callback failed")

    # --- state -----------------------------------------------------------------------
    def _set_connected(self, up: bool) -> None:
        MQTT_CONNECTED.set(1 if up else 0)
        if up:
            self.connections += 1
            self.connected.set()
            with self._lock:
                self._trouble, self._since, self._reported = None, time.time(), None
        else:
            self.connected.clear()

    def _reason_unknown(self) -> bool:
        with self._lock:
            return self._trouble is None

    def _failed(self, trouble: str) -> None:
        trouble = redact(trouble)
        MQTT_CONNECTION_FAILURES.inc()
        with self._lock:
            if self._trouble is None:
                self._since = time.time()
            self._trouble = trouble
            again = self._reported == trouble
            self._reported = trouble
        if not again:  # once per reason, not once per retry
            log.warning("MQTT broker %s: %s; trying again", self.broker.address, trouble)


def _nothing(*args: Any) -> None:
    return None
