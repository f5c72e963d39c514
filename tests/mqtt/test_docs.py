"""docs/home-assistant.md names every MQTT metric and setting the code has."""

from __future__ import annotations

from prometheus_client import REGISTRY

import snapshot_processor.mqtt.link
import snapshot_processor.mqtt.output  # noqa: F401 - their metrics are registered on import
from snapshot_processor.mqtt.settings import MqttSettings
from tests.support.paths import CHECKOUT

PAGE = CHECKOUT / "docs" / "home-assistant.md"


def test_every_mqtt_metric_is_on_the_page() -> None:
    names = {
        metric.name + ("_total" if metric.type == "counter" else "")
        for metric in REGISTRY.collect()
        if metric.name.startswith("mqtt_")
    }
    assert len(names) >= 7
    text = PAGE.read_text()
    assert not [name for name in sorted(names) if f"`{name}" not in text]


def test_every_mqtt_setting_is_on_the_page() -> None:
    text = PAGE.read_text()
    aliases = [field.alias for field in MqttSettings.model_fields.values() if field.alias]
    assert len(aliases) == 6
    assert not [alias for alias in aliases if f"`{alias}`" not in text]
