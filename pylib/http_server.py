"""The daemon's one HTTP server: routes, a token that guards them, and a bounded thread count.

A :class:`HttpServer` is a :class:`~pylib.worker.Worker`: it binds in
:meth:`~HttpServer.on_thread_open` (so a port in use is a failed start, said in one line)
and serves on its thread; each connection gets a short-lived thread, at most
``max_connections`` at once (more are answered 503 and closed), each with a socket
timeout so a client that stops sending cannot hold one for long.

Routes are ``(method, pattern)`` pairs with a handler taking a :class:`Request` and giving
a :class:`Response`. A route marked ``protected`` needs the token: ``Authorization:
Bearer <token>``, or the session cookie a login form sets (:class:`TokenAuth`). A
protected call that changes state with a cookie must also come from our own pages
(``Origin`` matching ``Host``), since a cookie rides along on other sites' requests too.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import logging
import re
import secrets
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from http.cookies import SimpleCookie
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from prometheus_client import Counter

from pylib.worker import Worker

log = logging.getLogger(__name__)

HTTP_REQUESTS = Counter("http_requests_total", "HTTP requests answered", ["route", "status"])
HTTP_CONNECTION_ERRORS = Counter(
    "http_connection_errors_total", "Connections that ended in an error", ["kind"]
)

SESSION_COOKIE = "sp_session"
SESSION_SECONDS = 7 * 24 * 3600
MAX_BODY_BYTES = 64 * 1024
# Seconds a connection may wait for the client's next bytes.
CLIENT_TIMEOUT = 15.0


@dataclass(frozen=True)
class Request:
    """One request, parsed. Header names are lower case; ``params`` are the route's groups."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes
    cookies: dict[str, str]
    params: dict[str, str] = field(default_factory=dict)

    def arg(self, name: str, default: str | None = None) -> str | None:
        """The first value of query parameter ``name``."""
        values = self.query.get(name)
        return values[0] if values else default

    def form(self) -> dict[str, str]:
        """An ``application/x-www-form-urlencoded`` body, first value of each field."""
        fields = parse_qs(self.body.decode("utf-8", "replace"), keep_blank_values=True)
        return {name: values[0] for name, values in fields.items()}


@dataclass
class Response:
    """What a handler answers."""

    status: int = 200
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def json(cls, value: Any, status: int = 200) -> Response:
        """A JSON answer."""
        body = json.dumps(value, separators=(",", ":"), default=str).encode()
        return cls(status, body, "application/json")

    @classmethod
    def text(cls, text: str, status: int = 200) -> Response:
        """A plain-text answer."""
        return cls(status, text.encode())

    @classmethod
    def redirect(cls, location: str) -> Response:
        """303 See Other: after a form post, the browser GETs ``location``."""
        return cls(303, b"", headers={"Location": location})


Handler = Callable[[Request], Response]


@dataclass(frozen=True)
class Route:
    """One route: a method, a full-match path pattern, and whether it needs the token."""

    method: str
    pattern: re.Pattern[str]
    handler: Handler
    protected: bool
    name: str


class TokenAuth:
    """The token and the sessions the login form hands out for it.

    Without a token every route is open: the configuration allows that only on a
    loopback address.
    """

    def __init__(self, token: str | None) -> None:
        self.token = token
        self._sessions: dict[str, float] = {}
        self._lock = threading.Lock()

    @property
    def required(self) -> bool:
        """Whether a token is configured at all."""
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
        """Forget a session."""
        with self._lock:
            self._sessions.pop(session, None)

    def how(self, request: Request) -> str | None:
        """``"bearer"`` or ``"cookie"`` if the request carries the token, else None."""
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


def same_origin(request: Request) -> bool:
    """Whether a browser says the request came from a page of ours (or says nothing)."""
    origin = request.headers.get("origin")
    if origin is None or origin == "null":
        return origin is None
    return urlsplit(origin).netloc == request.headers.get("host", "")


LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})


def loopback_host(request: Request) -> bool:
    """Whether the request names this machine by a loopback name (``Host``)."""
    host = request.headers.get("host", "")
    name = host.rsplit(":", 1)[0] if not host.startswith("[") else host[1:].split("]", 1)[0]
    return name.lower() in LOOPBACK_NAMES


class Router:
    """Routes in the order they were added; the first full match answers."""

    def __init__(self) -> None:
        self.routes: list[Route] = []

    def add(
        self, method: str, path: str, handler: Handler, *, protected: bool, name: str | None = None
    ) -> None:
        """Add a route; ``path`` is a regular expression matched against the whole path."""
        self.routes.append(
            Route(method, re.compile(path), handler, protected, name or path.strip("^$"))
        )

    def match(self, method: str, path: str) -> tuple[Route | None, dict[str, str], bool]:
        """The route for ``method`` and ``path``, its groups, and whether the path is known."""
        known = False
        for route in self.routes:
            found = route.pattern.fullmatch(path)
            if found is None:
                continue
            known = True
            if route.method == method or (method == "HEAD" and route.method == "GET"):
                return route, found.groupdict(), True
        return None, {}, known


class _Server(ThreadingHTTPServer):
    daemon_threads = False  # joined at close: no thread outlives the server
    block_on_close = True

    def __init__(self, address: tuple[str, int], app: HttpServer) -> None:
        self.app = app
        self.slots = threading.BoundedSemaphore(app.max_connections)
        # Connections being served, so a stop can end them (a browser keeps one open).
        self.open_connections: set[socket.socket] = set()
        self.open_lock = threading.Lock()
        host = address[0]
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        super().__init__(address, _make_handler(app))

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self.slots.acquire(blocking=False):
            with contextlib.suppress(OSError):
                request.sendall(
                    b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n"
                    b"Connection: close\r\n\r\n"
                )
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        with self.open_lock:
            self.open_connections.add(request)
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self.open_lock:
                self.open_connections.discard(request)
            self.slots.release()

    def end_connections(self) -> None:
        """Cut every connection being served: a stop does not wait for idle keep-alives."""
        with self.open_lock:
            for connection in self.open_connections:
                with contextlib.suppress(OSError):
                    connection.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that hung up or sent garbage: one line, not a traceback on stderr.
        kind, exc = sys.exc_info()[:2]
        log.debug("%s: connection from %s ended: %s", self.app.name, client_address[0], kind)
        HTTP_CONNECTION_ERRORS.labels(kind.__name__ if kind else "unknown").inc()
        del exc


def _make_handler(app: HttpServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "snapshot-processor"
        sys_version = ""
        protocol_version = "HTTP/1.1"
        timeout = CLIENT_TIMEOUT

        def log_message(self, format: str, *args: Any) -> None:
            pass  # every answer is counted; access lines would only repeat the metrics

        def _serve(self) -> None:
            try:
                length = int(self.headers.get("Content-Length") or 0)
            except ValueError:
                length = -1
            if length < 0:
                self.close_connection = True
                self._answer(Response.text("bad Content-Length\n", 400), "-")
                return
            if length > MAX_BODY_BYTES:
                self.close_connection = True
                self._answer(Response.text("request body too large\n", 413), "-")
                return
            body = self.rfile.read(length) if length else b""
            parts = urlsplit(self.path)
            cookies: dict[str, str] = {}
            if "cookie" in {name.lower() for name in self.headers}:
                jar: SimpleCookie = SimpleCookie()
                try:
                    jar.load(self.headers.get("Cookie", ""))
                except Exception:  # a malformed cookie header is no cookie
                    jar = SimpleCookie()
                cookies = {name: morsel.value for name, morsel in jar.items()}
            request = Request(
                method=self.command,
                path=parts.path,
                query=parse_qs(parts.query),
                headers={name.lower(): value for name, value in self.headers.items()},
                body=body,
                cookies=cookies,
            )
            response, route = app.dispatch(request)
            self._answer(response, route)

        def _answer(self, response: Response, route: str) -> None:
            HTTP_REQUESTS.labels(route, str(response.status)).inc()
            self.send_response(response.status)
            self.send_header("Content-Type", response.content_type)
            self.send_header("Content-Length", str(len(response.body)))
            self.send_header("Cache-Control", "no-store")
            self.send_header("X-Content-Type-Options", "nosniff")
            self.send_header("Referrer-Policy", "same-origin")
            for name, value in response.headers.items():
                self.send_header(name, value)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(response.body)

        # The names http.server looks up for each method.
        do_GET = do_POST = do_HEAD = do_PUT = do_DELETE = _serve  # noqa: N815

    return Handler


class HttpServer(Worker):
    """Serves a :class:`Router` on ``address``:``port`` until stopped."""

    def __init__(
        self,
        name: str,
        stop_event: threading.Event,
        *,
        address: str,
        port: int,
        router: Router,
        auth: TokenAuth,
        max_connections: int = 32,
        on_close: Callable[[], None] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(name, stop_event, **kwargs)
        self._on_close = on_close
        self.address = address
        self.port = port
        self.router = router
        self.auth = auth
        self.max_connections = max_connections
        self._server: _Server | None = None

    @property
    def bound_port(self) -> int:
        """The port listened on (the chosen one when ``port`` was 0)."""
        assert self._server is not None
        return int(self._server.server_address[1])

    def on_thread_open(self) -> None:
        try:
            self._server = _Server((self.address, self.port), self)
        except OSError as exc:
            raise OSError(
                f"HTTP port {self.address}:{self.port} cannot be used: {exc.strerror or exc}"
            ) from None

    def work(self) -> None:
        assert self._server is not None
        # serve_forever wakes every poll_interval only to see a shutdown request.
        self._server.serve_forever(poll_interval=0.5)

    def stop(self) -> None:
        super().stop()
        server = self._server
        if server is not None and self.is_alive():
            threading.Thread(target=server.shutdown, name=f"{self.name}-stop").start()

    def on_thread_close(self) -> None:
        if self._server is not None:
            self._server.end_connections()
            self._server.server_close()  # joins the request threads
            self._server = None
        if self._on_close is not None:
            self._on_close()

    def dispatch(self, request: Request) -> tuple[Response, str]:
        """The answer to one request, and the route name it is counted under."""
        route, params, known = self.router.match(request.method, request.path)
        if route is None:
            status = HTTPStatus.METHOD_NOT_ALLOWED if known else HTTPStatus.NOT_FOUND
            return Response.text(f"{status.phrase}\n", status), "-"
        request = Request(**{**request.__dict__, "params": params})
        # Open routes (no token configured) are for this machine only: a page elsewhere
        # may neither call them from a browser here (Origin) nor reach them by renaming
        # us (Host, DNS rebinding).
        if (
            route.protected
            and not self.auth.required
            and not (loopback_host(request) and (route.method == "GET" or same_origin(request)))
        ):
            return Response.text("refused: not from this machine's own pages\n", 403), route.name
        if route.protected:
            how = self.auth.how(request)
            if how is None:
                answer = Response.text("a valid token is needed\n", 401)
                answer.headers["WWW-Authenticate"] = 'Bearer realm="snapshot-processor"'
                return answer, route.name
            if how == "cookie" and route.method != "GET" and not same_origin(request):
                return Response.text("cross-site request refused\n", 403), route.name
        try:
            return route.handler(request), route.name
        except Exception:
            log.exception("%s: %s %s failed", self.name, request.method, route.name)
            return Response.text("internal error\n", 500), route.name
