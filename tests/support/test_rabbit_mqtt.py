"""The throwaway RabbitMQ MQTT node, and what its MQTT 3.1.1 does for a Home Assistant output.

RabbitMQ 3.10's ``rabbitmq_mqtt`` against Mosquitto, as these tests (and the same steps
run by hand against the Mosquitto on 1883) found:

- a wrong password: CONNACK 4 ("Bad user name or password"), then the broker closes;
- a retained QoS 1 message reaches a later subscriber of the exact topic with the retain
  flag and QoS 1 (the lower of the publish and subscribe QoS), right after the SUBACK;
- an empty retained payload removes the message;
- a last will (retained) is published when the client's connection ends without
  DISCONNECT, and not after a DISCONNECT;
- unlike Mosquitto, a subscription with a wildcard (``+`` or ``#``) gets no retained
  message: RabbitMQ looks retained messages up by the exact filter only;
- unlike Mosquitto, a QoS 2 subscription is granted QoS 1.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from tests.support.rabbit_mqtt import RabbitMqttNode, rabbit_mqtt  # noqa: F401

pytestmark = pytest.mark.broker

# After a SUBACK, how long a retained message that should not come is given to come anyway.
# RabbitMQ sends a retained message right after the SUBACK, from the same process.
QUIET = 0.5


class _Peer:
    """One MQTT 3.1.1 client driven from the test's thread (no network thread of paho's)."""

    def __init__(
        self,
        node: RabbitMqttNode,
        *,
        password: str | None = None,
        anonymous: bool = False,
        will: tuple[str, bytes] | None = None,
    ) -> None:
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"test-{uuid.uuid4().hex[:8]}",
            protocol=MQTTProtocolVersion.MQTTv311,
        )
        if not anonymous:
            self.client.username_pw_set(node.user, node.password if password is None else password)
        if will is not None:
            self.client.will_set(will[0], will[1], qos=1, retain=True)
        self.connack: ReasonCode | None = None
        self.disconnected = False
        # ("suback", [granted QoS]) and ("message", MQTTMessage) in the order they came.
        self.events: list[tuple[str, object]] = []
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message
        self.client.connect(node.host, node.mqtt_port, keepalive=30)
        self.pump(lambda: self.connack is not None or self.disconnected)

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: object,
        flags: mqtt.ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        self.connack = reason_code

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: object,
        flags: mqtt.DisconnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        self.disconnected = True

    def _on_subscribe(
        self,
        client: mqtt.Client,
        userdata: object,
        mid: int,
        reason_codes: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        self.events.append(("suback", [code.value for code in reason_codes]))

    def _on_message(self, client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        self.events.append(("message", message))

    @property
    def messages(self) -> list[mqtt.MQTTMessage]:
        return [event for kind, event in self.events if isinstance(event, mqtt.MQTTMessage)]

    def pump(self, condition: Callable[[], object], timeout: float = 10.0) -> bool:
        """Run paho's loop until ``condition()`` holds (True) or the time is up (False)."""
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline or self.client.socket() is None:
                return bool(condition())
            self.client.loop(timeout=0.02)
        return True

    def publish(self, topic: str, payload: bytes, *, retain: bool = True) -> None:
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        assert self.pump(info.is_published), f"no PUBACK for {topic}"

    def subscribe(self, topic: str, qos: int = 1) -> list[int]:
        """Subscribe and wait for the SUBACK; returns the granted QoS."""
        before = len(self.events)
        self.client.subscribe(topic, qos=qos)
        assert self.pump(lambda: any(k == "suback" for k, _ in self.events[before:]))
        granted = next(e for k, e in self.events[before:] if k == "suback")
        assert isinstance(granted, list)
        return granted

    def close(self) -> None:
        """DISCONNECT (a clean end: no last will) and wait until the socket is closed."""
        if self.client.socket() is not None:
            self.client.disconnect()
            self.pump(lambda: self.client.socket() is None, timeout=5.0)

    def drop(self) -> None:
        """End the connection without DISCONNECT, as a crash or a pulled cable would."""
        sock = self.client.socket()
        assert sock is not None
        sock.close()


def _topic() -> str:
    return f"test/{uuid.uuid4().hex[:10]}"


def test_the_node_takes_its_user_and_refuses_a_wrong_password(rabbit_mqtt: RabbitMqttNode) -> None:  # noqa: F811
    assert rabbit_mqtt.url() == f"mqtt://{rabbit_mqtt.user}@127.0.0.1:{rabbit_mqtt.mqtt_port}"

    good = _Peer(rabbit_mqtt)
    try:
        assert good.connack is not None
        assert not good.connack.is_failure
    finally:
        good.close()

    wrong = _Peer(rabbit_mqtt, password=rabbit_mqtt.password + "x")
    try:
        assert wrong.connack is not None
        assert wrong.connack.is_failure
        assert wrong.connack == "Bad user name or password"  # CONNACK return code 4
        # The broker closes the connection after a refusal.
        assert wrong.pump(lambda: wrong.client.socket() is None)
    finally:
        wrong.close()

    anonymous = _Peer(rabbit_mqtt, anonymous=True)
    try:
        assert anonymous.connack is not None
        assert anonymous.connack.is_failure
    finally:
        anonymous.close()


def test_a_retained_qos1_message_reaches_a_later_subscriber_after_the_suback(
    rabbit_mqtt: RabbitMqttNode,  # noqa: F811
) -> None:
    topic = _topic()
    publisher = _Peer(rabbit_mqtt)
    try:
        publisher.publish(topic, b"online")
    finally:
        publisher.close()

    subscriber = _Peer(rabbit_mqtt)
    try:
        assert subscriber.subscribe(topic) == [1]
        assert subscriber.pump(lambda: subscriber.messages)
        kinds = [kind for kind, _ in subscriber.events]
        assert kinds == ["suback", "message"]
        (message,) = subscriber.messages
        assert (message.topic, message.payload, message.retain, message.qos) == (
            topic,
            b"online",
            True,
            1,
        )
    finally:
        subscriber.close()
        _clear(rabbit_mqtt, topic)


def test_an_empty_retained_payload_removes_the_retained_message(
    rabbit_mqtt: RabbitMqttNode,  # noqa: F811
) -> None:
    topic = _topic()
    publisher = _Peer(rabbit_mqtt)
    try:
        publisher.publish(topic, b"22.5")
        first = _Peer(rabbit_mqtt)
        try:
            first.subscribe(topic)
            assert first.pump(lambda: first.messages), "the message was not retained at all"
        finally:
            first.close()

        publisher.publish(topic, b"")
    finally:
        publisher.close()

    later = _Peer(rabbit_mqtt)
    try:
        later.subscribe(topic)
        assert not later.pump(lambda: later.messages, timeout=QUIET)
    finally:
        later.close()


def test_a_retained_last_will_is_published_when_the_connection_is_lost(
    rabbit_mqtt: RabbitMqttNode,  # noqa: F811
) -> None:
    topic = _topic()
    watcher = _Peer(rabbit_mqtt)
    dying = _Peer(rabbit_mqtt, will=(topic, b"offline"))
    try:
        watcher.subscribe(topic)
        assert dying.connack is not None
        assert not dying.connack.is_failure
        dying.drop()

        # A subscriber at the time gets it as a live message (no retain flag, as MQTT says).
        assert watcher.pump(lambda: watcher.messages), "no last will after the socket closed"
        (live,) = watcher.messages
        assert (live.payload, live.retain) == (b"offline", False)
    finally:
        watcher.close()

    later = _Peer(rabbit_mqtt)
    try:
        later.subscribe(topic)
        assert later.pump(lambda: later.messages)
        (kept,) = later.messages
        assert (kept.payload, kept.retain) == (b"offline", True)
    finally:
        later.close()
        _clear(rabbit_mqtt, topic)


def test_no_last_will_after_a_clean_disconnect(rabbit_mqtt: RabbitMqttNode) -> None:  # noqa: F811
    topic = _topic()
    leaving = _Peer(rabbit_mqtt, will=(topic, b"offline"))
    leaving.close()

    later = _Peer(rabbit_mqtt)
    try:
        later.subscribe(topic)
        assert not later.pump(lambda: later.messages, timeout=QUIET)
    finally:
        later.close()


def test_rabbitmq_sends_no_retained_message_to_a_wildcard_subscription(
    rabbit_mqtt: RabbitMqttNode,  # noqa: F811
) -> None:
    # Mosquitto does send it. Home Assistant subscribes to discovery with wildcards
    # (homeassistant/+/+/config), so on RabbitMQ a retained discovery message does not
    # reach a Home Assistant that starts later: the output must publish it again when
    # Home Assistant announces itself (its birth message, homeassistant/status "online").
    base = _topic()
    publisher = _Peer(rabbit_mqtt)
    try:
        publisher.publish(f"{base}/sensor/config", b"{}")
    finally:
        publisher.close()

    subscriber = _Peer(rabbit_mqtt)
    try:
        for wildcard in (f"{base}/#", f"{base}/+/config"):
            subscriber.subscribe(wildcard)
        assert not subscriber.pump(lambda: subscriber.messages, timeout=QUIET)
        subscriber.subscribe(f"{base}/sensor/config")
        assert subscriber.pump(lambda: subscriber.messages)
    finally:
        subscriber.close()
        _clear(rabbit_mqtt, f"{base}/sensor/config")


def test_rabbitmq_grants_qos1_to_a_qos2_subscription(rabbit_mqtt: RabbitMqttNode) -> None:  # noqa: F811
    subscriber = _Peer(rabbit_mqtt)
    try:
        assert subscriber.subscribe(_topic(), qos=2) == [1]  # Mosquitto grants 2
    finally:
        subscriber.close()


def _clear(node: RabbitMqttNode, topic: str) -> None:
    """Remove a retained message a test left (the node is shared by the session)."""
    peer = _Peer(node)
    try:
        peer.publish(topic, b"")
    finally:
        peer.close()
