"""Who may ask what: the token and its sessions, the names the server answers to, and a
throttle on guessing. Only our own names are answered, so a DNS-rebinding page (which
sends its own) reads nothing: loopback names and those listed for a reverse proxy, or with
a token and no list, any name. ``local`` routes answer this machine's own tools (from and
naming loopback) without the token. Each wrong credential costs its address a delay, and
past a limit in a minute it is answered 429."""

from __future__ import annotations

import hmac
import ipaddress
import logging
import secrets
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

from prometheus_client import Counter

from pylib.http.routing import Request
from pylib.observe.logs import printable

log = logging.getLogger(__name__)

CREDENTIALS_REFUSED = Counter(
    "http_credentials_refused_total",
    "Wrong tokens and logins, and attempts refused while an address was over its limit",
    ["outcome"],
)

SESSION_COOKIE = "sp_session"
SESSION_SECONDS = 7 * 24 * 3600
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
OWN_ADDRESSES = frozenset({"127.0.0.1", "::1"})


class TokenAuth:
    """The token and the sessions the login form hands out (no token: every route is open)."""

    def __init__(self, token: str | None) -> None:
        self.token = token
        self._sessions: dict[str, float] = {}
        self._lock = threading.Lock()

    @property
    def required(self) -> bool:
        return bool(self.token)

    def token_matches(self, offered: str) -> bool:
        """Compare in constant time, so timing tells nothing about the token."""
        return bool(self.token) and hmac.compare_digest(offered.encode(), str(self.token).encode())

    def login(self) -> str:
        """A new session id (the caller checked the token)."""
        session = secrets.token_urlsafe(32)
        now = time.monotonic()
        with self._lock:
            # Expired sessions go as new ones come, so the table stays small.
            for stale in [s for s, until in self._sessions.items() if until < now]:
                del self._sessions[stale]
            self._sessions[session] = now + SESSION_SECONDS
        return session

    def logout(self, session: str) -> None:
        with self._lock:
            self._sessions.pop(session, None)

    def how(self, request: Request) -> str | None:
        """``"open"`` (no token), ``"bearer"`` or ``"cookie"`` (carries the token), else None."""
        if not self.required:
            return "open"
        header = request.headers.get("authorization", "")
        if header[:7].lower() == "bearer " and self.token_matches(header[7:].strip()):
            return "bearer"
        session = request.cookies.get(SESSION_COOKIE)
        if session:
            with self._lock:
                until = self._sessions.get(session)
            if until is not None and until >= time.monotonic():
                return "cookie"
        return None


def offers_credential(request: Request) -> bool:
    """Whether the request shows a token or a session at all (a first visit shows none)."""
    return "authorization" in request.headers or SESSION_COOKIE in request.cookies


def host_name(request: Request) -> str | None:
    """The name in ``Host``, lower case, without its port or brackets; None if absent."""
    host = request.headers.get("host")
    if not host:
        return None
    if host.startswith("["):
        return host[1:].split("]", 1)[0].lower()
    return host.rsplit(":", 1)[0].lower() if host.count(":") == 1 else host.lower()


def same_origin(request: Request) -> bool:
    """Whether a browser says the request came from a page of ours (or says nothing)."""
    origin = request.headers.get("origin")
    if origin is None or origin == "null":
        return origin is None
    return urlsplit(origin).netloc == request.headers.get("host", "")


def own_address(client: str) -> bool:
    """Whether a peer address is this machine's own (the health check's, a local tool's)."""
    return client in OWN_ADDRESSES


def client_key(client: str) -> str:
    """What limits count by: the address, or its /64 for IPv6, where one host has many."""
    try:
        address = ipaddress.ip_address(client)
    except ValueError:
        return client
    if address.version == 6 and not address.is_loopback:
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    return str(address)


class HostRule:
    """The names the server answers to (see the module's docstring)."""

    def __init__(self, allowed: Iterable[str], *, token_required: bool) -> None:
        self.allowed = frozenset(name.lower().strip("[]") for name in allowed)
        self.any_name = token_required and not self.allowed

    def allows(self, request: Request) -> bool:
        if self.any_name:
            return True
        name = host_name(request)
        return name is not None and (name in LOOPBACK_NAMES or name in self.allowed)

    def local(self, request: Request) -> bool:
        """From this machine's own address, naming it by a loopback name."""
        return own_address(request.client) and host_name(request) in LOOPBACK_NAMES


@dataclass
class _Guesses:
    since: float  # start of this address's minute
    failures: int = 0
    refused: int = 0  # answered 429
    logged: int = 0  # failures already in a log line


class GuessThrottle:
    """Wrong credentials per client address; thread-safe. ``limit`` failures within ``window``
    seconds put an address over its limit until the window ends (attempts in flight still
    count: a few more 401s, one per handler thread)."""

    def __init__(
        self,
        *,
        limit: int = 10,
        window: float = 60.0,
        delay: float = 1.0,
        max_addresses: int = 4096,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limit = limit
        self.window = window
        self.delay = delay
        self.max_addresses = max_addresses
        self._clock = clock
        self._table: dict[str, _Guesses] = {}
        self._lock = threading.Lock()

    def retry_after(self, client: str) -> float | None:
        """Seconds until ``client`` may try again, or None if it may try now."""
        with self._lock:
            entry = self._current(client_key(client))
            if entry is None or entry.failures < self.limit:
                return None
            entry.refused += 1
            wait = max(0.0, entry.since + self.window - self._clock())
        CREDENTIALS_REFUSED.labels("over_limit").inc()
        return wait

    def failed(self, client: str) -> None:
        """Count a wrong credential from ``client`` (its answer waits :attr:`delay`)."""
        key = client_key(client)
        CREDENTIALS_REFUSED.labels("wrong").inc()
        with self._lock:
            entry = self._current(key)
            if entry is None:
                if len(self._table) >= self.max_addresses:
                    self._report()
                    if len(self._table) >= self.max_addresses:  # still full: the oldest goes
                        self._table.pop(next(iter(self._table)))
                entry = self._table[key] = _Guesses(self._clock())
            entry.failures += 1
            first = entry.failures == 1
            if first:
                entry.logged = 1
        if first:
            log.warning(
                "HTTP: a wrong token from %s (more within a minute are counted in one line)",
                printable(key),
            )

    def report(self) -> None:
        """Log each address whose minute ended with failures not yet logged, and forget it."""
        with self._lock:
            self._report()

    def _report(self) -> None:
        now = self._clock()
        for key, entry in list(self._table.items()):
            if now < entry.since + self.window:
                continue
            del self._table[key]
            if entry.failures > entry.logged or entry.refused:
                log.warning(
                    "HTTP: %d wrong token(s) from %s within a minute; %d more attempt(s) "
                    "refused with 429 once it was over the limit of %d",
                    entry.failures,
                    printable(key),
                    entry.refused,
                    self.limit,
                )

    def _current(self, key: str) -> _Guesses | None:
        entry = self._table.get(key)
        if entry is not None and self._clock() >= entry.since + self.window:
            self._report()
            entry = self._table.get(key)
        return entry
