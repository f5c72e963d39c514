"""Who may hold an FTP control connection: the policy that keeps a camera able to log in.
Connections not logged in hold at most ``total - reserved`` slots; beyond, a new one evicts
the *oldest* (idle connections gain an attacker nothing); refused only when all are sessions."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Generic, TypeVar

C = TypeVar("C")


@dataclass(frozen=True)
class Admission(Generic[C]):
    """The answer for a new connection: admitted or not, and one to close to make room."""

    admitted: bool
    evict: C | None = None


class ConnectionSlots(Generic[C]):
    """Slots for control connections; used from the FTP server's one thread only."""

    def __init__(self, total: int, reserved: int) -> None:
        if not 0 <= reserved < total:
            raise ValueError("reserved slots must leave at least one for logging in")
        self.total = total
        self.reserved = reserved
        self._waiting: OrderedDict[C, None] = OrderedDict()  # not logged in, oldest first
        self._sessions: set[C] = set()

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    @property
    def sessions(self) -> int:
        return len(self._sessions)

    def admit(self, connection: C) -> Admission[C]:
        """Take a new connection, making room by closing the oldest one not logged in."""
        full = self.waiting >= self.total - self.reserved or (
            self.waiting + self.sessions >= self.total
        )
        evict = None
        if full:
            if not self._waiting:
                return Admission(False)  # every slot is a logged-in session
            evict, _ = self._waiting.popitem(last=False)
        self._waiting[connection] = None
        return Admission(True, evict)

    def logged_in(self, connection: C) -> None:
        """The connection is a session now: it no longer competes with newcomers."""
        if connection in self._waiting:
            del self._waiting[connection]
            self._sessions.add(connection)

    def release(self, connection: C) -> None:
        """The connection closed (any number of calls)."""
        self._waiting.pop(connection, None)
        self._sessions.discard(connection)
