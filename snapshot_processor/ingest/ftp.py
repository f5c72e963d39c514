"""The FTP server cameras push images to: one user, write access to the upload dir only."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client import Counter, Gauge
from pyftpdlib.authorizers import DummyAuthorizer
from pyftpdlib.handlers import FTPHandler, TLS_FTPHandler
from pyftpdlib.log import logger as pyftpdlib_log
from pyftpdlib.servers import FTPServer

from pylib.observe.logs import printable
from pylib.runtime.worker import RestartBudget, Worker
from snapshot_processor.ingest.ftp_slots import ConnectionSlots

log = logging.getLogger(__name__)

FTP_LOGINS = Counter("ftp_logins_total", "Successful FTP logins")
FTP_LOGIN_FAILURES = Counter("ftp_login_failures_total", "Failed FTP logins")
FTP_BANNED = Counter("ftp_banned_connections_total", "Connections refused from banned addresses")
FTP_INCOMPLETE = Counter("ftp_incomplete_uploads_total", "Partial uploads removed")
# reason: per_address, full, banned, lockdown
FTP_REFUSED = Counter("ftp_connections_refused_total", "FTP connections refused", ["reason"])
FTP_EVICTED = Counter(
    "ftp_connections_evicted_total", "Connections not logged in closed to make room for a new one"
)
FTP_LOGIN_TIMEOUTS = Counter(
    "ftp_login_timeouts_total", "Connections closed for not logging in within FTP_LOGIN_TIMEOUT"
)
FTP_BAD_NAMES = Counter("ftp_names_refused_total", "FTP commands refused for a NUL in a name")
FTP_MISPLACED = Counter(
    "ftp_uploads_misplaced_total", "FTP uploads refused for going outside the upload folder"
)
FTP_CONNECTIONS = Gauge("ftp_connections", "FTP control connections", ["state"])
FTP_LOCKDOWN = Gauge(
    "ftp_login_lockdown", "1 while failed logins are over FTP_MAX_FAILED_LOGINS_PER_MINUTE"
)

# Cameras need not read, list the home, delete or chmod.
ROOT_PERMISSIONS = "e"
UPLOAD_PERMISSIONS = "elmwf"
FAILURE_WINDOW = 60.0
NOTICE_EVERY = 60.0


@dataclass
class LoginGuard:
    """Bans an address for ``ban_seconds`` after ``max_failures`` failed logins in that time;
    while all addresses together failed ``max_failures_per_minute`` times in the last
    minute, only addresses that logged in before may connect."""

    max_failures: int = 5
    ban_seconds: float = 600.0
    max_failures_per_minute: int = 30
    clock: Callable[[], float] = time.monotonic
    _failures: dict[str, list[float]] = field(default_factory=dict)
    _all_failures: deque[float] = field(default_factory=deque)
    _known: set[str] = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _recent(self, address: str, now: float) -> list[float]:
        recent = [t for t in self._failures.get(address, []) if now - t < self.ban_seconds]
        if recent:
            self._failures[address] = recent
        else:
            self._failures.pop(address, None)
        return recent

    def _global(self, now: float) -> int:
        while self._all_failures and now - self._all_failures[0] >= FAILURE_WINDOW:
            self._all_failures.popleft()
        return len(self._all_failures)

    def failed(self, address: str) -> bool:
        """Record a failure; True if the address is now banned."""
        with self._lock:
            now = self.clock()
            recent = self._recent(address, now)
            recent.append(now)
            self._failures[address] = recent
            self._all_failures.append(now)
            self._global(now)
            return len(recent) >= self.max_failures

    def succeeded(self, address: str) -> None:
        """A good login clears the address's record and makes it known."""
        with self._lock:
            self._failures.pop(address, None)
            self._known.add(address)

    def banned(self, address: str) -> bool:
        with self._lock:
            return len(self._recent(address, self.clock())) >= self.max_failures

    def failures_last_minute(self) -> int:
        with self._lock:
            return self._global(self.clock())

    def locked_down(self) -> bool:
        return self.failures_last_minute() >= self.max_failures_per_minute

    def admits(self, address: str) -> bool:
        """False for an address that never logged in while the global limit is exceeded."""
        if not self.locked_down():
            return True
        with self._lock:
            return address in self._known


class _Notice:
    """A warning said at most once per :data:`NOTICE_EVERY` s, with how often it happened since."""

    def __init__(self) -> None:
        self._last = float("-inf")
        self._count = 0

    def __call__(self, message: str, *args: object) -> None:
        self._count += 1
        now = time.monotonic()
        if now - self._last >= NOTICE_EVERY:
            log.warning("%s (%d time(s) since the last such line)", message % args, self._count)
            self._last = now
            self._count = 0


@dataclass(frozen=True)
class FtpOptions:
    root: Path
    upload_dir: Path
    user: str
    password: str = field(repr=False)
    listen_address: str = "0.0.0.0"
    port: int = 2121
    passive_ports: tuple[int, int] | None = None
    masquerade_address: str | None = None
    max_connections: int = 64
    max_connections_per_ip: int = 16
    reserved_for_sessions: int = 8
    login_timeout: float = 10.0
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_required: bool = True
    ban_after: int = 5
    ban_seconds: float = 600.0
    max_failed_logins_per_minute: int = 30
    login_delay: float = 2.0
    camera_folders: tuple[tuple[str, str], ...] = ()  # (camera key, its upload folder), logged


def _handler_class(
    options: FtpOptions, guard: LoginGuard, slots: ConnectionSlots[FTPHandler]
) -> type[FTPHandler]:
    """A handler class of our own per server: pyftpdlib configures handlers by class attributes."""
    base: type[FTPHandler] = TLS_FTPHandler if options.tls_cert else FTPHandler
    notices: defaultdict[str, _Notice] = defaultdict(_Notice)  # one per kind of warning

    def count_connections() -> None:
        FTP_CONNECTIONS.labels("not_logged_in").set(slots.waiting)
        FTP_CONNECTIONS.labels("logged_in").set(slots.sessions)

    class CameraHandler(base):  # type: ignore[misc]
        _login_deadline: Any = None

        def on_connect(self) -> None:
            if guard.banned(self.remote_ip):
                FTP_BANNED.inc()
                FTP_REFUSED.labels("banned").inc()
                log.warning("ftp: refused %s: too many failed logins", self.remote_ip)
                self.respond("421 Too many failed logins; try again later.")
                self.close()
                return
            if not guard.admits(self.remote_ip):
                FTP_REFUSED.labels("lockdown").inc()
                notices["lockdown"](
                    "ftp: refused %s: failed logins over %d a minute, only addresses that "
                    "logged in before may connect",
                    self.remote_ip,
                    guard.max_failures_per_minute,
                )
                self.respond("421 Too many failed logins; try again later.")
                self.close()
                return
            admission = slots.admit(self)
            if not admission.admitted:
                FTP_REFUSED.labels("full").inc()
                notices["full"](
                    "ftp: refused %s: all %d connections are logged-in sessions",
                    self.remote_ip,
                    slots.total,
                )
                self.respond("421 Too many connections; try again later.")
                self.close()
                return
            if (evicted := admission.evict) is not None:
                FTP_EVICTED.inc()
                notices["evicted"](
                    "ftp: closed a connection from %s that had not logged in, to make room "
                    "(%d slots for connections not logged in)",
                    evicted.remote_ip,
                    slots.total - slots.reserved,
                )
                evicted.cancel_login_deadline()
                evicted.respond("421 Closed to make room: log in sooner.")
                evicted.close_when_done()
            self._login_deadline = self.ioloop.call_later(
                options.login_timeout, self._login_too_late, _errback=self.handle_error
            )
            count_connections()

        def _login_too_late(self) -> None:
            self._login_deadline = None
            if self.authenticated or self._closed:
                return
            FTP_LOGIN_TIMEOUTS.inc()
            notices["late"](
                "ftp: closed a connection from %s: no login within %.0f s",
                self.remote_ip,
                options.login_timeout,
            )
            self.respond("421 Login timed out.")
            self.close_when_done()
            slots.release(self)
            count_connections()

        def handle_max_cons_per_ip(self) -> None:
            FTP_REFUSED.labels("per_address").inc()
            notices["per_address"](
                "ftp: refused %s: %d connections from it already",
                self.remote_ip,
                options.max_connections_per_ip,
            )
            super().handle_max_cons_per_ip()

        def cancel_login_deadline(self) -> None:
            if self._login_deadline is not None and not self._login_deadline.cancelled:
                self._login_deadline.cancel()
            self._login_deadline = None

        def close(self) -> None:
            self.cancel_login_deadline()
            slots.release(self)
            count_connections()
            super().close()

        def ftp_PASS(self, line: str) -> None:  # noqa: N802 (pyftpdlib names commands so)
            if not guard.admits(self.remote_ip):  # opened before the lockdown: no more guesses
                FTP_REFUSED.labels("lockdown").inc()
                self.respond("421 Too many failed logins; try again later.")
                self.close_when_done()
                return
            super().ftp_PASS(line)

        def on_login(self, username: str) -> None:
            FTP_LOGINS.inc()
            guard.succeeded(self.remote_ip)
            slots.logged_in(self)
            self.cancel_login_deadline()
            count_connections()

        def on_login_failed(self, username: str, password: str) -> None:
            FTP_LOGIN_FAILURES.inc()
            was_locked = guard.locked_down()
            if guard.failed(self.remote_ip):
                log.warning(
                    "ftp: banning %s for %.0f s after failed logins",
                    self.remote_ip,
                    guard.ban_seconds,
                )
            else:
                log.warning(
                    "ftp: failed login for user '%s' from %s", printable(username), self.remote_ip
                )
            if guard.locked_down() and not was_locked:
                log.warning(
                    "ftp: %d failed logins in the last minute: only addresses that logged in "
                    "before may connect until the rate falls",
                    guard.failures_last_minute(),
                )

        def pre_process_command(self, line: str, cmd: str, arg: str) -> None:
            if "\x00" in line:  # no name holds one; os calls would raise deep in pyftpdlib
                FTP_BAD_NAMES.inc()
                log.warning(
                    "ftp: refused %s from %s: a NUL in its argument",
                    printable(cmd[:16]),
                    self.remote_ip,
                )
                self.respond("501 A name may not hold a NUL character.")
                return
            if self.authenticated and cmd in ("STOR", "APPE", "STOU"):
                target = self.fs.ftp2fs(self.fs.cwd if cmd == "STOU" else arg or self.fs.cwd)
                if self.fs.validpath(target) and not self.authorizer.has_perm(
                    self.username, "w", target
                ):
                    self._misplaced(cmd, target)
                    return
            super().pre_process_command(line, cmd, arg)

        def _misplaced(self, cmd: str, target: str) -> None:
            # pyftpdlib would answer a bare "550 Not enough privileges."; say where to upload.
            FTP_MISPLACED.inc()
            folder = "/" + options.upload_dir.relative_to(options.root).as_posix()
            examples = [f"{folder}/{name}/" for _, name in options.camera_folders[:1]]
            hint = examples[0] if examples else f"{folder}/<camera folder>/"
            notices["misplaced"](
                "ftp: refused %s of %s from %s: uploads go into %s (set the camera's FTP path)",
                cmd,
                printable(self.fs.fs2ftp(target)),
                self.remote_ip,
                hint,
            )
            self.respond(f"550 Uploads go into {folder}/<camera folder>/, e.g. {hint}")

        # pyftpdlib's own lines (the prefix too) carry client names: escaped, one line each.
        def _line(self, msg: str) -> str:
            return printable(f"{self.log_prefix % self.__dict__} {msg}")

        def log(self, msg: str, logfun: Callable[[str], None] = pyftpdlib_log.info) -> None:
            logfun(self._line(msg))

        def logline(self, msg: str, logfun: Callable[[str], None] = pyftpdlib_log.debug) -> None:
            if self._log_debug:
                logfun(self._line(msg))

        def logerror(self, msg: str) -> None:
            pyftpdlib_log.error(self._line(msg))

        def on_incomplete_file_received(self, file: str) -> None:
            FTP_INCOMPLETE.inc()  # removed before the watcher takes half a file
            log.warning("ftp: removing partial upload %s", printable(file))
            try:
                os.remove(file)
            except OSError as exc:
                log.error("ftp: cannot remove partial upload %s: %s", printable(file), exc.strerror)

    authorizer = DummyAuthorizer()
    authorizer.add_user(options.user, options.password, str(options.root), perm=ROOT_PERMISSIONS)
    authorizer.override_perm(
        options.user, str(options.upload_dir), UPLOAD_PERMISSIONS, recursive=True
    )
    CameraHandler.authorizer = authorizer
    CameraHandler.banner = "snapshot-processor ready."
    CameraHandler.auth_failed_timeout = options.login_delay
    CameraHandler.max_login_attempts = 3
    CameraHandler.permit_foreign_addresses = False
    if options.passive_ports:
        CameraHandler.passive_ports = range(options.passive_ports[0], options.passive_ports[1] + 1)
    if options.masquerade_address:
        CameraHandler.masquerade_address = options.masquerade_address
    if options.tls_cert:
        CameraHandler.certfile = str(options.tls_cert)
        CameraHandler.keyfile = str(options.tls_key)
        CameraHandler.tls_control_required = options.tls_required
        CameraHandler.tls_data_required = options.tls_required
    return CameraHandler


class FtpServerThread(Worker):
    """Runs the pyftpdlib server loop on its own thread until stopped."""

    def __init__(
        self,
        name: str,
        stop_event: threading.Event,
        options: FtpOptions,
        *,
        budget: RestartBudget | None = None,
        on_fatal: Callable[[str, BaseException], None] | None = None,
    ) -> None:
        super().__init__(name, stop_event, budget=budget, on_fatal=on_fatal)
        self.options = options
        self.guard = LoginGuard(
            options.ban_after, options.ban_seconds, options.max_failed_logins_per_minute
        )
        self.server: FTPServer | None = None
        self.bound: tuple[str, int] | None = None

    def on_thread_start(self) -> None:
        options = self.options
        options.upload_dir.mkdir(parents=True, exist_ok=True)
        slots: ConnectionSlots[FTPHandler] = ConnectionSlots(
            options.max_connections, options.reserved_for_sessions
        )
        handler = _handler_class(options, self.guard, slots)
        server = FTPServer((options.listen_address, options.port), handler)
        # Our slots decide; pyftpdlib's limit counts every socket, so it only guards the fds.
        server.max_cons = 4 * options.max_connections + 8
        server.max_cons_per_ip = options.max_connections_per_ip
        self.server = server
        address: Any = server.socket.getsockname()
        self.bound = (address[0], address[1])
        log.info(
            "ftp: serving %s on %s:%d%s",
            options.upload_dir,
            self.bound[0],
            self.bound[1],
            " with TLS" if options.tls_cert else "",
        )
        log.info(
            "ftp: at most %d connections, %d per address, %d kept for logged-in sessions; "
            "log in within %.0f s; an address is banned for %.0f s after %d failed logins; "
            "over %d failed logins a minute in all, only addresses that logged in before "
            "may connect",
            options.max_connections,
            options.max_connections_per_ip,
            options.reserved_for_sessions,
            options.login_timeout,
            options.ban_seconds,
            options.ban_after,
            options.max_failed_logins_per_minute,
        )
        for key, folder in options.camera_folders:
            log.info("ftp: camera '%s' uploads to %s", printable(key), self.camera_url(folder))

    def camera_url(self, folder: str) -> str:
        """The FTP URL a camera uploads into: its folder, as the FTP user sees it."""
        options = self.options
        host = options.masquerade_address or options.listen_address
        if host in ("0.0.0.0", "::", ""):
            host = socket.gethostname()
        port = self.bound[1] if self.bound else options.port
        upload = options.upload_dir.relative_to(options.root).as_posix()
        return f"ftp://{host}:{port}/{upload}/{folder}"

    def troubles(self) -> list[str]:
        locked = self.guard.locked_down()
        FTP_LOCKDOWN.set(1 if locked else 0)
        if not locked:
            return []
        return [
            f"ftp: {self.guard.failures_last_minute()} failed logins in the last minute; "
            "only addresses that logged in before may connect"
        ]

    def work(self) -> None:
        assert self.server is not None
        while self.should_keep_running():
            self.server.ioloop.loop(timeout=0.2, blocking=False)  # so a stop is seen quickly

    def on_thread_stop(self) -> None:
        if self.server is not None:
            self.server.close_all()
            self.server = None
