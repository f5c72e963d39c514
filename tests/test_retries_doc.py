"""docs/retries.md lists every retry policy the settings sections declare, with its values."""

from __future__ import annotations

from pydantic import BaseModel

from pylib.retry import RetryPolicy
from snapshot_processor.camera.settings import CameraSettings
from snapshot_processor.contract.settings import BrokerSettings
from snapshot_processor.ingest.settings import IngestSettings
from snapshot_processor.mqtt.settings import MqttSettings
from snapshot_processor.storage.settings import StorageSettings
from tests.support.paths import CHECKOUT

SECTIONS: list[type[BaseModel]] = [
    BrokerSettings,
    CameraSettings,
    IngestSettings,
    StorageSettings,
    MqttSettings,
]


def row(owner: str, name: str, policy: RetryPolicy) -> str:
    attempts = "no bound" if policy.attempts is None else str(policy.attempts)
    return (
        f"| `{owner}.{name}` | {policy.first:g} s | {policy.factor:g} | {policy.maximum:g} s "
        f"| {policy.jitter:.0%} | {attempts} |"
    )


def test_every_policy_is_in_the_doc_with_its_values() -> None:
    doc = (CHECKOUT / "docs" / "retries.md").read_text()
    rows = [
        row(section.__name__, name, value)
        for section in SECTIONS
        for name, value in vars(section).items()
        if isinstance(value, RetryPolicy)
    ]
    assert len(rows) >= 8
    missing = [line for line in rows if line not in doc]
    assert not missing, "docs/retries.md lacks or differs:\n" + "\n".join(missing)
