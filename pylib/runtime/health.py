"""Health in one shape: ``problems`` make the daemon unhealthy (a restart may mend them: a
dead thread); ``warnings`` are shown but do not (a restart would not help: a camera down)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Health:
    """One part's health, or the daemon's once combined."""

    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems

    @classmethod
    def combine(cls, parts: Iterable[Health]) -> Health:
        """The parts together: lines in order, details merged one level deep."""
        whole = cls()
        for part in parts:
            whole.problems.extend(part.problems)
            whole.warnings.extend(part.warnings)
            for key, value in part.detail.items():
                mine = whole.detail.get(key)
                if isinstance(mine, dict) and isinstance(value, dict):
                    mine.update(value)
                else:
                    whole.detail[key] = dict(value) if isinstance(value, dict) else value
        return whole
