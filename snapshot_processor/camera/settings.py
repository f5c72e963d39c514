"""The cameras' settings section: how snapshots are fetched, retried, queued and probed."""

from __future__ import annotations

from typing import Annotated, ClassVar

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from pylib.retry import RetryPolicy
from snapshot_processor.camera.networks import DEFAULT_CAMERA_NETWORKS, IPNetwork, parse_networks


class CameraSettings(BaseModel):
    """``CAMERA_*`` and the snapshots a trigger takes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    timeout: float = Field(5.0, alias="CAMERA_TIMEOUT", gt=0, le=120)
    retries: int = Field(2, alias="CAMERA_RETRIES", ge=0, le=10)
    workers: int = Field(32, alias="CAMERA_WORKERS", ge=1, le=256)
    snapshots_per_trigger: int = Field(1, alias="SNAPSHOTS_PER_TRIGGER", ge=1, le=20)
    snapshot_interval: float = Field(1.0, alias="SNAPSHOT_INTERVAL", ge=0, le=60)
    # Triggers of one sensor event (its active_input or traceparent) this close share a bundle.
    bundle_window: float = Field(5.0, alias="BUNDLE_WINDOW", ge=0, le=300)
    # A bundle whose cameras have not all finished this long after its first trigger is
    # announced with what it has; the rest are listed as failed.
    bundle_deadline: float = Field(30.0, alias="BUNDLE_DEADLINE", gt=0, le=3600)
    queue: int = Field(3, alias="CAMERA_QUEUE", ge=1, le=100)
    breaker_failures: int = Field(3, alias="CAMERA_BREAKER_FAILURES", ge=1, le=100)
    breaker_seconds: float = Field(30.0, alias="CAMERA_BREAKER_SECONDS", gt=0, le=3600)
    probe_interval: float = Field(300.0, alias="CAMERA_PROBE_INTERVAL", ge=0, le=86400)  # 0: off
    # Where a trigger's device_params may send the camera GET; OUTPUT_n_ADDRESS is not bounded.
    networks: Annotated[tuple[IPNetwork, ...], BeforeValidator(parse_networks)] = Field(
        default_factory=lambda: parse_networks(DEFAULT_CAMERA_NETWORKS), alias="CAMERA_NETWORKS"
    )

    # One snapshot's attempts (docs/retries.md): short, as a snapshot is worth little later.
    SNAPSHOT_RETRY: ClassVar[RetryPolicy] = RetryPolicy(first=0.2, maximum=2.0, jitter=0.1)
    # A warm RTSP stream opened again after it failed; after a refused password, the maximum.
    STREAM_RETRY: ClassVar[RetryPolicy] = RetryPolicy(first=1.0, maximum=60.0, jitter=0.2)

    @property
    def answer_within(self) -> float:
        """How long one snapshot's attempts may take: every timeout, the pauses between, and
        a margin for a trigger waiting its camera's turn. A failure comes within it."""
        return self.timeout * (self.retries + 1) + self.SNAPSHOT_RETRY.maximum * self.retries + 5
