"""The FTP server cameras push images to: one user, write access to the upload dir only."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client import Counter
from pyftpdlib.authorizers import DummyAuthorizer
from pyftpdlib.handlers import FTPHandler, TLS_FTPHandler
from pyftpdlib.servers import FTPServer

from pylib.worker import RestartBudget, Worker

log = logging.getLogger(__name__)

FTP_LOGIN_FAILURES = Counter("ftp_login_failures_total", "Failed FTP logins")
FTP_BANNED = Counter("ftp_banned_connections_total", "Connections refused from banned addresses")
FTP_INCOMPLETE = Counter("ftp_incomplete_uploads_total", "Partial uploads removed")

# Cameras change into folders, make them, store and rename files; they need not read,
# list the home, delete or chmod.
ROOT_PERMISSIONS = "e"
UPLOAD_PERMISSIONS = "elmwf"


@dataclass
class LoginGuard:
    """Bans an address for ``ban_seconds`` after ``max_failures`` failed logins in that time."""

    max_failures: int = 5
    ban_seconds: float = 600.0
    clock: Callable[[], float] = time.monotonic
    _failures: dict[str, list[float]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _recent(self, address: str, now: float) -> list[float]:
        recent = [t for t in self._failures.get(address, []) if now - t < self.ban_seconds]
        if recent:
            self._failures[address] = recent
        else:
            self._failures.pop(address, None)
        return recent

    def failed(self, address: str) -> bool:
        """Record a failure; True if the address is now banned."""
        with self._lock:
            now = self.clock()
            recent = self._recent(address, now)
            recent.append(now)
            self._failures[address] = recent
            return len(recent) >= self.max_failures

    def succeeded(self, address: str) -> None:
        """A good login clears the address's record."""
        with self._lock:
            self._failures.pop(address, None)

    def banned(self, address: str) -> bool:
        """True while the address has too many recent failures."""
        with self._lock:
            return len(self._recent(address, self.clock())) >= self.max_failures


@dataclass(frozen=True)
class FtpOptions:
    """Everything the FTP server needs, taken from the settings."""

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
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_required: bool = True
    ban_after: int = 5
    ban_seconds: float = 600.0
    login_delay: float = 2.0


def _handler_class(options: FtpOptions, guard: LoginGuard) -> type[FTPHandler]:
    """A handler class of our own per server: pyftpdlib configures handlers by class attributes."""
    base: type[FTPHandler] = TLS_FTPHandler if options.tls_cert else FTPHandler

    class CameraHandler(base):  # type: ignore[misc]
        def on_connect(self) -> None:
            if guard.banned(self.remote_ip):
                FTP_BANNED.inc()
                log.warning("ftp: refused %s: too many failed logins", self.remote_ip)
                self.respond("421 Too many failed logins; try again later.")
                self.close()

        def on_login(self, username: str) -> None:
            guard.succeeded(self.remote_ip)

        def on_login_failed(self, username: str, password: str) -> None:
            FTP_LOGIN_FAILURES.inc()
            if guard.failed(self.remote_ip):
                log.warning(
                    "ftp: banning %s for %.0f s after failed logins",
                    self.remote_ip,
                    guard.ban_seconds,
                )
            else:
                log.warning("ftp: failed login for user %r from %s", username, self.remote_ip)

        def on_incomplete_file_received(self, file: str) -> None:
            # A dropped connection leaves half a file: remove it before the watcher takes it.
            FTP_INCOMPLETE.inc()
            log.warning("ftp: removing partial upload %s", file)
            try:
                os.remove(file)
            except OSError as exc:
                log.error("ftp: cannot remove partial upload %s: %s", file, exc.strerror)

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
        self.guard = LoginGuard(options.ban_after, options.ban_seconds)
        self.server: FTPServer | None = None
        self.ready = threading.Event()
        self.bound: tuple[str, int] | None = None

    def on_thread_start(self) -> None:
        options = self.options
        options.upload_dir.mkdir(parents=True, exist_ok=True)
        handler = _handler_class(options, self.guard)
        server = FTPServer((options.listen_address, options.port), handler)
        server.max_cons = options.max_connections
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
        self.ready.set()

    def work(self) -> None:
        assert self.server is not None
        while self.should_keep_running():
            # One poll of the server's I/O loop at a time, so a stop request is seen quickly.
            self.server.ioloop.loop(timeout=0.2, blocking=False)

    def on_thread_stop(self) -> None:
        self.ready.clear()
        if self.server is not None:
            self.server.close_all()
            self.server = None
