"""The chain declared once: an ordered list of stages, wired, started and stopped from it.

Each entry is a stage or a tier of stages side by side, all sending to the entry after it.
Start is from the sink up (each inbox bound before anything sends to it); stop is sources
first, then from the head down (what a stage hands on is taken by one still running)."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

from pylib.chain.sockets import inproc
from pylib.chain.stage import Relay, Stage
from pylib.runtime.worker import Worker

log = logging.getLogger(__name__)

# Of the shutdown time, what the stages share; the rest is a margin for the other steps.
STOP_SHARE = 0.9


class Chain:
    """Stages in order, and the sources (a broker consumer, a server) that feed its head.
    Give each source its stage's :attr:`~pylib.chain.stage.Stage.inbox`; its ``stop_weight``
    (default 1) counts in the shutdown split too."""

    def __init__(
        self,
        name: str,
        stages: Sequence[Stage | Sequence[Stage]],
        *,
        shutdown_timeout: float,
    ) -> None:
        if not stages:
            raise ValueError("a chain needs at least one stage")
        self.name = name
        tiers: list[list[Stage]] = [
            [entry] if isinstance(entry, Stage) else list(entry) for entry in stages
        ]
        # A foldable relay alone in its tier runs on a neighbour's thread (see Relay).
        self.folded: list[Stage] = []
        self.tiers: list[list[Stage]] = []
        for tier, following in zip(tiers, [*tiers[1:], None], strict=True):
            relay = tier[0]
            if len(tier) == 1 and isinstance(relay, Relay) and relay.foldable:
                if self.tiers:
                    for stage in self.tiers[-1]:
                        stage.outlet.append(relay)
                    self.folded.append(relay)
                    continue
                if following is not None:
                    following[0].intake.append(relay)
                    self.folded.append(relay)
                    continue
            self.tiers.append(tier)
        self.shutdown_timeout = shutdown_timeout
        self.sources: list[Worker] = []
        for tier, following in zip(self.tiers, [*self.tiers[1:], None], strict=True):
            if following is not None and len(following) != 1:
                raise ValueError(f"{following[0].name}: only the first entry may be a tier")
            for stage in tier:
                stage.inbox = self.address(stage.name)
                stage.outbox = self.address(following[0].name) if following is not None else None

    def address(self, stage: str) -> str:
        return inproc(f"{self.name}/{stage}")

    def stage(self, name: str) -> Stage:
        """The stage called ``name`` (a folded relay too: it is not a thread of its own)."""
        for stage in [*self.stages, *self.folded]:
            if stage.name == name:
                return stage
        raise KeyError(name)

    @property
    def stages(self) -> list[Stage]:
        return [stage for tier in self.tiers for stage in tier]

    @property
    def workers(self) -> list[Worker]:
        return [*self.sources, *self.stages]

    def add_source(self, source: Worker) -> None:
        """A thread that feeds the chain (started after, stopped before, every stage)."""
        self.sources.append(source)

    def share_shutdown(self) -> dict[str, float]:
        """Each thread's stop time, split by weight; sets ``stop_timeout`` where it has one."""
        workers = self.workers
        total = sum(getattr(worker, "stop_weight", 1.0) for worker in workers)
        shares: dict[str, float] = {}
        for worker in workers:
            share = self.shutdown_timeout * STOP_SHARE * getattr(worker, "stop_weight", 1.0)
            shares[worker.name] = share / total
            if hasattr(worker, "stop_timeout"):
                worker.stop_timeout = shares[worker.name]
        return shares

    def start(self) -> None:
        """Start from the sink up, sources last; each returns once ready."""
        self.share_shutdown()
        started: list[Worker] = []
        try:
            for worker in [*reversed(self.stages), *self.sources]:
                worker.start()
                started.append(worker)
        except Exception:
            self._stop(started[::-1], time.monotonic() + self.shutdown_timeout)
            raise

    def stop_and_join(self, timeout: float) -> bool:
        """Sources first, then the stages from the head down; True if every thread ended."""
        return self._stop(self.workers, time.monotonic() + timeout)

    def _stop(self, workers: Sequence[Worker], deadline: float) -> bool:
        clean = True
        for worker in workers:
            # Each gets its share and a little over, within what is left of the whole.
            bound = getattr(worker, "stop_timeout", 1.0) + 1.0
            remaining = max(0.1, min(bound, deadline - time.monotonic()))
            if not worker.stop_and_join(remaining):
                clean = False
                log.error("%s did not stop within %.1f s", worker.name, remaining)
        return clean
