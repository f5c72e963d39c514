"""``check-config --online`` logs in to the MQTT broker once, and names the setting to fix."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from snapshot_processor import cli
from tests.support.broker import unique_exchange
from tests.support.mosquitto import Mosquitto, Subscriber, mosquitto  # noqa: F401

pytestmark = [pytest.mark.broker, pytest.mark.mqtt]


def online(tmp_path: Path, capsys: pytest.CaptureFixture[str], **values: str) -> str:
    """The MQTT line of ``check-config --online`` with these settings."""
    settings = {
        "SNAPSHOTS_ROOT_DIR": str(tmp_path / "data"),
        "SECRETS_DIR": str(tmp_path / "no-secrets"),
        "DEVICE_NAME": "garage",
        "HTTP_PORT": "0",
        "RABBITMQ_EXCHANGE": unique_exchange(),
        **values,
    }
    path = tmp_path / "settings.toml"
    path.write_text("".join(f"{key} = {json.dumps(value)}\n" for key, value in settings.items()))
    cli.main(["--config", str(path), "check-config", "--online"])
    out = capsys.readouterr()
    [line] = [line for line in out.out.splitlines() if "MQTT broker" in line]
    assert values.get("MQTT_PASSWORD", "?") not in out.out + out.err
    return line


def test_the_broker_takes_us_over_tls_and_the_daemons_will_is_not_touched(
    tmp_path: Path,
    mosquitto: Mosquitto,  # noqa: F811
    capsys: pytest.CaptureFixture[str],
) -> None:
    with Subscriber(mosquitto, ["snapshot-processor/#"]) as seen:
        line = online(
            tmp_path,
            capsys,
            MQTT_URL=mosquitto.url(tls=True),
            MQTT_PASSWORD=mosquitto.password,
            MQTT_CA_FILE=str(mosquitto.ca_file),
        )
        seen.publish("x/done", b"")  # all the check did has reached the broker
    assert f"MQTT broker 127.0.0.1:{mosquitto.tls_port}: ok, logged in over TLS" in line
    assert not seen.messages("snapshot-processor/#")  # no last will: it left cleanly


@pytest.mark.parametrize(
    ("case", "says", "fix"),
    [
        ("password", "FAILED: refused us: not authorized", "MQTT_URL's user and MQTT_PASSWORD"),
        ("ca", "TLS certificate is not trusted", "MQTT_URL (and MQTT_CA_FILE for mqtts://)"),
        ("port", "FAILED: cannot connect: connection refused", "MQTT_URL (and MQTT_CA_FILE"),
    ],
)
def test_what_fails_is_said_with_the_setting_to_look_at(
    tmp_path: Path,
    mosquitto: Mosquitto,  # noqa: F811
    capsys: pytest.CaptureFixture[str],
    case: str,
    says: str,
    fix: str,
) -> None:
    values = {
        "password": {"MQTT_URL": mosquitto.url(), "MQTT_PASSWORD": "Not-The-Password-7"},
        "ca": {"MQTT_URL": mosquitto.url(tls=True), "MQTT_PASSWORD": mosquitto.password},
        "port": {
            "MQTT_URL": f"mqtt://daemon@127.0.0.1:{mosquitto.port + 0}",
            "MQTT_PASSWORD": mosquitto.password,
        },
    }[case]
    if case == "port":
        mosquitto.stop()
    line = online(tmp_path, capsys, **values)
    assert says in line
    assert f"; check {fix}" in line
