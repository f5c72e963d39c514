"""The test broker and client behave as the MQTT tests rely on, and ``check_discovery``
accepts Home Assistant's documented discovery payloads and rejects broken ones."""

from __future__ import annotations

import json
import socket
from typing import Any

import pytest

from tests.support.ha_discovery import check_discovery
from tests.support.mosquitto import Mosquitto, Subscriber, connack, mosquitto  # noqa: F401

# ------------------------------------------------------------------------- broker


@pytest.mark.mqtt
def test_broker_refuses_a_wrong_password_and_anonymous_clients(
    mosquitto: Mosquitto,  # noqa: F811  (the fixture imported above)
) -> None:
    assert not connack(mosquitto, user=mosquitto.user, password=mosquitto.password).is_failure
    assert not connack(
        mosquitto, user=mosquitto.user, password=mosquitto.password, tls=True
    ).is_failure
    assert connack(mosquitto, user=mosquitto.user, password="wrong").is_failure
    assert connack(mosquitto, user=None, password=None).is_failure
    with pytest.raises(ConnectionError, match="refused"):
        Subscriber(mosquitto, password=mosquitto.password + "x")
    assert mosquitto.url() == f"mqtt://daemon@127.0.0.1:{mosquitto.port}"
    assert mosquitto.url(tls=True) == f"mqtts://daemon@127.0.0.1:{mosquitto.tls_port}"


@pytest.mark.mqtt
def test_tls_subscriber_receives_a_retained_message_published_over_plain_tcp(
    mosquitto: Mosquitto,  # noqa: F811
) -> None:
    with Subscriber(mosquitto, ["snapshot_processor/#"]) as publisher:
        publisher.publish("snapshot_processor/home/status", b'{"ok": true}', retain=True)
        with Subscriber(mosquitto, ["snapshot_processor/#"], tls=True) as seen:
            message = seen.wait_for("snapshot_processor/+/status", lambda m: m.retain)
            assert message.json() == {"ok": True}
            assert seen.last("snapshot_processor/#") == message
        assert set(publisher.retained("snapshot_processor/#")) == {"snapshot_processor/home/status"}
        with pytest.raises(AssertionError, match="snapshot_processor/home/status"):
            publisher.wait_for("snapshot_processor/home/status", lambda m: m.payload == b"x", 0.2)


@pytest.mark.mqtt
def test_restarted_broker_forgets_retained_messages_but_listens_on_the_same_ports(
    mosquitto: Mosquitto,  # noqa: F811
) -> None:
    port, tls_port = mosquitto.port, mosquitto.tls_port
    with Subscriber(mosquitto, ["homeassistant/#"]) as seen:
        seen.publish("homeassistant/sensor/x/config", b"{}", retain=True)
        assert "homeassistant/sensor/x/config" in seen.retained("homeassistant/#")

        before = seen.connections
        mosquitto.stop()
        assert not mosquitto.running
        mosquitto.start()
        assert (mosquitto.port, mosquitto.tls_port) == (port, tls_port)
        seen.wait_connected(before + 1)
        assert seen.retained("homeassistant/#") == {}

        mosquitto.kill()
        mosquitto.start()
        seen.wait_connected(before + 2)
        seen.publish("homeassistant/sensor/y/config", b"{}")
        assert seen.wait_for("homeassistant/sensor/y/config").payload == b"{}"
    with socket.create_connection((mosquitto.host, port), timeout=5):
        pass


# ---------------------------------------------------------------------- discovery

DEVICE = {"identifiers": ["snapshot-processor_home"], "name": "Home"}

MINIMAL: dict[str, dict[str, Any]] = {
    "image": {"image_topic": "snapshot_processor/home/front/image"},
    "binary_sensor": {"state_topic": "snapshot_processor/home/front/person"},
    "sensor": {"state_topic": "snapshot_processor/home/front/event"},
    "button": {"command_topic": "snapshot_processor/home/front/snapshot"},
}


def payload(config: dict[str, Any]) -> bytes:
    return json.dumps(config).encode()


@pytest.mark.parametrize("component", sorted(MINIMAL))
def test_check_discovery_accepts_a_minimal_config_of_each_type(component: str) -> None:
    topic = f"homeassistant/{component}/home/front_{component}/config"
    assert check_discovery(component, topic, payload(MINIMAL[component])) == MINIMAL[component]


def test_check_discovery_accepts_a_full_config_and_expands_abbreviations() -> None:
    config = {
        "~": "snapshot_processor/home",
        "name": None,
        "uniq_id": "snapshot-processor_home_front_state",
        "def_ent_id": "sensor.front_state",
        "stat_t": "~/front/state",
        "dev_cla": "enum",
        "ops": ["up", "down", "unknown"],
        "val_tpl": "{{ value_json.state }}",
        "json_attr_t": "~/front/state",
        "ent_cat": "diagnostic",
        "avty": [{"t": "~/availability", "pl_avail": "online", "pl_not_avail": "offline"}],
        "avty_mode": "latest",
        "dev": {"ids": "snapshot-processor_home", "name": "Home", "mf": "us", "sw": "1.0"},
        "o": {"name": "snapshot-processor", "sw": "1.0", "url": "https://example.com"},
        "ic": "mdi:cctv",
    }
    checked = check_discovery(
        "sensor", "homeassistant/sensor/home/front_state/config", payload(config)
    )
    assert checked["state_topic"] == "snapshot_processor/home/front/state"
    assert checked["availability"][0]["topic"] == "snapshot_processor/home/availability"
    assert checked["device"]["identifiers"] == "snapshot-processor_home"
    assert checked["origin"]["support_url"] == "https://example.com"


def test_check_discovery_accepts_device_based_discovery() -> None:
    config = {
        "dev": DEVICE,
        "o": {"name": "snapshot-processor"},
        "availability_topic": "snapshot_processor/home/availability",
        "cmps": {
            f"front_{component}": {"p": component, "uniq_id": f"front_{component}", **body}
            for component, body in MINIMAL.items()
        },
    }
    check_discovery("device", "homeassistant/device/home/config", payload(config))


@pytest.mark.parametrize(
    ("component", "config", "complaint"),
    [
        ("sensor", {**MINIMAL["sensor"], "state_topc": "typo"}, "state_topc: not a documented"),
        ("button", {**MINIMAL["button"], "state_topic": "x"}, "state_topic: not a documented"),
        ("image", {**MINIMAL["image"], "qos": 1}, "qos: not a documented"),
        ("binary_sensor", {**MINIMAL["binary_sensor"], "device_class": "person"}, "device class"),
        ("sensor", {**MINIMAL["sensor"], "device_class": "motion"}, "device class"),
        ("button", {**MINIMAL["button"], "device_class": "snapshot"}, "device class"),
        ("image", {"content_type": "image/jpeg"}, "exactly one of image_topic and url_topic"),
        ("image", {"image_topic": "a", "url_topic": "b"}, "exactly one of image_topic"),
        ("sensor", {"name": "no state topic"}, "state_topic: required"),
        ("sensor", {**MINIMAL["sensor"], "options": ["a"]}, "options needs device_class"),
        ("binary_sensor", {**MINIMAL["binary_sensor"], "payload_on": 1}, "payload_on"),
        ("binary_sensor", {**MINIMAL["binary_sensor"], "device": DEVICE}, "unique_id"),
        (
            "sensor",
            {**MINIMAL["sensor"], "availability_topic": "a", "availability": [{"topic": "b"}]},
            "must not be used together",
        ),
        ("button", {**MINIMAL["button"], "platform": "button"}, "only allowed in device-based"),
        ("button", {**MINIMAL["button"], "payload_press": None}, "null is not a documented"),
    ],
)
def test_check_discovery_rejects_what_the_docs_do_not_allow(
    component: str, config: dict[str, Any], complaint: str
) -> None:
    topic = f"homeassistant/{component}/home/thing/config"
    with pytest.raises(AssertionError, match=complaint):
        check_discovery(component, topic, payload(config))


@pytest.mark.parametrize(
    ("topic", "complaint"),
    [
        ("homeassistant/sensor/home/front.door/config", "outside"),
        ("homeassistant/sensor/my home/front/config", "outside"),
        ("homeassistant/sensor/home/front/state", "is not"),
        ("homeassistant/sensor/a/b/c/config", "is not"),
        ("homeassistant/sensor/config", "is not"),
        ("hass/sensor/home/front/config", "does not start with"),
        ("homeassistant/binary_sensor/home/front/config", "not 'sensor'"),
    ],
)
def test_check_discovery_rejects_a_bad_topic(topic: str, complaint: str) -> None:
    with pytest.raises(AssertionError, match=complaint):
        check_discovery("sensor", topic, payload(MINIMAL["sensor"]))


def test_check_discovery_rejects_payloads_that_are_no_config() -> None:
    topic = "homeassistant/sensor/home/front/config"
    for body, complaint in [
        (b"", "removes"),
        (b"{", "not UTF-8 JSON"),
        (b"[]", "not a JSON object"),
    ]:
        with pytest.raises(AssertionError, match=complaint):
            check_discovery("sensor", topic, body)
