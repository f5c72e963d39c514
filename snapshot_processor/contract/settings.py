"""The broker's settings section: where triggers come from and events go, and their bounds."""

from __future__ import annotations

from typing import ClassVar, Literal

import pika
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from pylib.amqp.params import split_urls
from pylib.config.settings import secret
from pylib.retry import RetryPolicy


class BrokerSettings(BaseModel):
    """``RABBITMQ_*``, the heartbeat, the outbox's bound and a trigger's."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    server_address: str = Field("127.0.0.1", alias="RABBITMQ_SERVER_ADDRESS", min_length=1)
    # One URL, or a cluster's nodes comma-separated: the first that answers is used.
    url: SecretStr | None = Field(None, alias="RABBITMQ_URL", json_schema_extra=secret())
    exchange: str = Field("home_automation", alias="RABBITMQ_EXCHANGE", min_length=1)
    device_topic: str = Field("snapshot", alias="RABBITMQ_DEVICE_TOPIC", min_length=1)
    queue: str | None = Field(None, alias="RABBITMQ_QUEUE", min_length=1)
    # None: follows from the cameras (see ``Settings.prefetch``).
    prefetch: int | None = Field(None, alias="RABBITMQ_PREFETCH", ge=1, le=1000)
    # quorum: replicated on a cluster, so the trigger queue outlives a node.
    queue_type: Literal["classic", "quorum"] = Field("classic", alias="RABBITMQ_QUEUE_TYPE")
    # A quorum trigger queue's limit: a trigger delivered this often without being settled
    # (a daemon crashing on it, or handing it back each time) goes to the dead-letter queue.
    trigger_max_deliveries: int = Field(10, alias="TRIGGER_MAX_DELIVERIES", ge=1, le=1000)
    heartbeat_interval: float = Field(5.0, alias="HEARTBEAT_INTERVAL", gt=0)
    outbox_max_events: int = Field(10_000, alias="OUTBOX_MAX_EVENTS", ge=1)
    trigger_max_bytes: int = Field(1_048_576, alias="TRIGGER_MAX_BYTES", ge=256)

    # The broker's retry policies, declared once here (docs/retries.md lists them).
    # Both connections, after a loss: jittered, so two daemons do not come back in step.
    RECONNECT: ClassVar[RetryPolicy] = RetryPolicy(first=0.5, maximum=30.0, jitter=0.2)
    # A trigger the chain handed back (a full outbox, a stop) is requeued after this.
    REQUEUE: ClassVar[RetryPolicy] = RetryPolicy(first=2.0, maximum=30.0)
    # An event the broker nacked is published again after this.
    NACK_RETRY: ClassVar[RetryPolicy] = RetryPolicy(first=0.5, maximum=30.0)
    # The outbox that cannot be written (a full disk) is tried again after this.
    OUTBOX_RETRY: ClassVar[RetryPolicy] = RetryPolicy(first=0.2, maximum=10.0)

    @field_validator("url")
    @classmethod
    def _amqp_urls(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None:
            return None
        urls = split_urls(value.get_secret_value())
        if not urls:
            raise ValueError("is empty: give amqp:// or amqps:// URLs, comma-separated")
        for number, url in enumerate(urls, 1):
            # Which one, by place: the URL itself may hold a password.
            where = f"URL {number} of {len(urls)}" if len(urls) > 1 else "the URL"
            if not url.startswith(("amqp://", "amqps://")):
                raise ValueError(f"{where} must start with amqp:// or amqps://")
            try:
                pika.URLParameters(url)
            except Exception:  # pika's own text may quote the password
                raise ValueError(
                    f"{where} cannot be read; percent-encode / @ : , # ? and % in the user "
                    "name and password (%2F for /, %2C for a comma)"
                ) from None
        return value


def cluster_warnings(broker: BrokerSettings) -> list[str]:
    """Valid settings that will not hold up as a cluster is meant to."""
    nodes = len(split_urls(broker.url.get_secret_value())) if broker.url else 1
    if nodes > 1 and broker.queue_type == "classic":
        return [
            f"RABBITMQ_URL lists {nodes} nodes but the trigger queue is a classic one: it lives "
            "on one node and its triggers wait there while that node is down, and a trigger "
            "that fails on every delivery comes back forever; set RABBITMQ_QUEUE_TYPE=quorum "
            "(an existing classic queue must be deleted first)"
        ]
    return []
