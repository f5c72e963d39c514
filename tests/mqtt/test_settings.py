"""The MQTT settings: the broker's URL and password, checked at start, never shown."""

from __future__ import annotations

from pathlib import Path

import pytest

from pylib.config.settings import ConfigError
from snapshot_processor import config
from snapshot_processor.mqtt.topics import MqttCamera, Topics, cameras, slug

SECRET = "s3cr:t@pw"


def load(tmp_path: Path, **env: str) -> config.Settings:
    return config.load(env={"SECRETS_DIR": str(tmp_path / "none"), **env})


def test_off_without_a_url(tmp_path: Path) -> None:
    assert not load(tmp_path).mqtt.on


def test_the_url_gives_host_port_tls_and_user(tmp_path: Path) -> None:
    plain = load(tmp_path, MQTT_URL="mqtt://daemon@broker.lan", MQTT_PASSWORD=SECRET).mqtt
    assert (plain.host, plain.port, plain.tls, plain.user) == ("broker.lan", 1883, False, "daemon")
    assert plain.password_value == SECRET
    assert plain.broker == "broker.lan:1883"
    tls = load(tmp_path, MQTT_URL="mqtts://10.0.0.2:18883").mqtt
    assert (tls.port, tls.tls, tls.user, tls.password_value) == (18883, True, None, None)


def test_a_password_in_the_url_is_percent_decoded(tmp_path: Path) -> None:
    section = load(tmp_path, MQTT_URL="mqtt://daemon:s3cr%3At%40pw@broker").mqtt
    assert section.password_value == SECRET


@pytest.mark.parametrize(
    ("env", "says"),
    [
        ({"MQTT_URL": "http://broker"}, "must start with mqtt:// or mqtts://"),
        ({"MQTT_URL": "mqtt://"}, "names no host"),
        ({"MQTT_URL": "mqtt://broker:99999"}, "port"),
        ({"MQTT_URL": "mqtt://broker/topic"}, "takes no path"),
        (
            {
                "MQTT_URL": f"mqtt://u:{SECRET.replace(':', '%3A').replace('@', '%40')}@b",
                "MQTT_PASSWORD": SECRET,
            },
            "set twice",
        ),
        ({"MQTT_URL": "mqtt://b", "MQTT_CA_FILE": "/etc/hostname"}, "for mqtts://"),
        ({"MQTT_URL": "mqtts://b", "MQTT_CA_FILE": "/no/such/ca.pem"}, "is not a file"),
        ({"MQTT_TOPIC_PREFIX": "home/#"}, "MQTT_TOPIC_PREFIX"),
        ({"MQTT_TOPIC_PREFIX": "home.cams"}, "MQTT_TOPIC_PREFIX"),
        ({"MQTT_PERSON_HOLD": "0"}, "MQTT_PERSON_HOLD"),
    ],
)
def test_mistakes_are_caught_at_start_without_showing_the_password(
    tmp_path: Path, env: dict[str, str], says: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, **env)
    text = str(caught.value)
    assert says in text
    assert SECRET not in text
    assert "s3cr" not in text


def test_slugs_are_home_assistant_ids() -> None:
    assert slug("Front Door camera") == "front_door_camera"
    assert slug("Gäste-WC / Kamera #2") == "g_ste_wc_kamera_2"
    assert slug("***") == "x"


def test_each_camera_once_fetched_wins_and_clashing_slugs_are_told_apart() -> None:
    found = cameras(
        [("Front Door camera", "Front Door"), ("front-door camera", "front-door")],
        [("Front Door camera", "Front Door"), ("Shed camera", "Shed")],
    )
    by_key = {camera.key: camera for camera in found}
    assert len(found) == 3
    assert by_key["Front Door camera"].fetched
    assert not by_key["Shed camera"].fetched
    assert by_key["Shed camera"].slug == "shed_camera"
    clashing = {by_key["Front Door camera"].slug, by_key["front-door camera"].slug}
    assert len(clashing) == 2
    assert all(name.startswith("front_door_camera_") for name in clashing)


def test_topics() -> None:
    topics = Topics("snapshot-processor", "garage", "homeassistant")
    camera = MqttCamera("Yard camera", "Yard", "yard_camera", fetched=True)
    assert topics.availability == "snapshot-processor/garage/availability"
    assert topics.camera(camera, "image") == "snapshot-processor/garage/yard_camera/image"
    assert topics.config("image", "yard_camera_image") == (
        "homeassistant/image/garage/yard_camera_image/config"
    )
