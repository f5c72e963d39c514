"""Reading the process's Prometheus counters in tests, through the public registry."""

from __future__ import annotations

from prometheus_client import REGISTRY


def sample(name: str, **labels: str) -> float:
    """The current value of a counter sample (``<name>_total``), 0 if never incremented."""
    value = REGISTRY.get_sample_value(name, labels)
    return 0.0 if value is None else value


def sample_gauge(name: str, **labels: str) -> float | None:
    """The current value of a gauge sample, None if it has none for these labels."""
    return REGISTRY.get_sample_value(name, labels)
