"""The daily budget of the cloud backend: money spent per UTC day, on disk before each call, so
neither a restart nor a crash lets the day's spending pass its bound."""

from __future__ import annotations

import logging
import math
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from prometheus_client import Counter, Gauge

from pylib.sqlite_file import connect_durable, transaction

log = logging.getLogger(__name__)

DETECTION_SPEND = Gauge(
    "detection_spend_today", "Money the cloud detection backend has cost today (UTC)"
)
DETECTION_BUDGET_REFUSED = Counter(
    "detection_budget_refused_total", "Cloud calls not made because the day's budget was spent"
)

# Money is kept in millionths, so adding prices up never drifts.
_MICRO = 1_000_000


class BudgetError(Exception):
    """The budget file cannot be read or written: the cloud is not asked (a bound we cannot
    keep is treated as spent)."""


@dataclass(frozen=True)
class Ticket:
    """One reserved call: its day and price, for a refund of exactly that."""

    day: str
    micro: int


@dataclass(frozen=True)
class Spending:
    """One UTC day: its date, the cloud calls made and what they cost."""

    day: str
    calls: int
    money: float


class DailyBudget:
    """``limit`` money a UTC day (None: no bound), ``price`` a call; safe from any thread.

    :meth:`reserve` records the call's price before the call is made; :meth:`refund` gives it
    back when the call failed before the service did any work."""

    def __init__(
        self,
        path: Path,
        limit: float | None,
        price: float,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = path
        self.limit = limit
        self.price = price
        self.clock = clock
        self._lock = threading.Lock()
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = connect_durable(path, "detection budget")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS spending (day TEXT PRIMARY KEY,"
                " calls INTEGER NOT NULL, micro INTEGER NOT NULL)"
            )
        except sqlite3.Error as exc:
            raise BudgetError(f"the detection budget file {path}: {exc}") from None
        DETECTION_SPEND.set(self.today().money)

    def _day(self) -> str:
        return datetime.fromtimestamp(self.clock(), UTC).strftime("%Y-%m-%d")

    def today(self) -> Spending:
        day = self._day()
        with self._lock:
            try:
                row = self._db.execute(
                    "SELECT calls, micro FROM spending WHERE day = ?", (day,)
                ).fetchone()
            except sqlite3.Error as exc:
                raise BudgetError(f"the detection budget file {self.path}: {exc}") from None
        calls, micro = row if row else (0, 0)
        DETECTION_SPEND.set(micro / _MICRO)  # a new day reads 0 here, before any call
        return Spending(day, int(calls), micro / _MICRO)

    def reserve(self) -> Ticket | None:
        """Record one call's price if today's spending stays within the limit, and return
        its ticket; None (and nothing recorded) if it would not. Raises :class:`BudgetError`.
        The price is rounded up and the limit down, so rounding never lets it pass."""
        day, price = self._day(), math.ceil(self.price * _MICRO)
        limit = None if self.limit is None else math.floor(self.limit * _MICRO)
        with self._lock:
            try:
                with transaction(self._db) as db:
                    row = db.execute("SELECT micro FROM spending WHERE day = ?", (day,)).fetchone()
                    spent = int(row[0]) if row else 0
                    if limit is not None and spent + price > limit:
                        DETECTION_BUDGET_REFUSED.inc()
                        return None
                    db.execute(
                        "INSERT INTO spending (day, calls, micro) VALUES (?, 1, ?) ON CONFLICT"
                        "(day) DO UPDATE SET calls = calls + 1, micro = micro + excluded.micro",
                        (day, price),
                    )
            except sqlite3.Error as exc:
                raise BudgetError(f"the detection budget file {self.path}: {exc}") from None
        DETECTION_SPEND.set((spent + price) / _MICRO)
        return Ticket(day, price)

    def refund(self, ticket: Ticket) -> None:
        """Give back one reservation, on its own day (the call failed and cost nothing)."""
        day, price = ticket.day, ticket.micro
        with self._lock:
            try:
                with transaction(self._db) as db:
                    db.execute(
                        "UPDATE spending SET calls = MAX(0, calls - 1),"
                        " micro = MAX(0, micro - ?) WHERE day = ?",
                        (price, day),
                    )
            except sqlite3.Error as exc:
                log.warning("detection budget: a refund was not recorded: %s", exc)
                return
        DETECTION_SPEND.set(self.today().money)

    def spent_out(self, today: Spending | None = None) -> bool:
        """Whether the next call would pass the limit of ``today`` (read if not given)."""
        if self.limit is None:
            return False
        today = self.today() if today is None else today
        spent = round(today.money * _MICRO)
        return spent + math.ceil(self.price * _MICRO) > math.floor(self.limit * _MICRO)

    def close(self) -> None:
        with self._lock:
            self._db.close()
