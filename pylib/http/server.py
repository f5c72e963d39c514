"""The daemon's one HTTP server: an event loop reads requests, a small pool answers them, so
a slow client costs an open socket, not a thread (only whole requests reach the pool)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
import time
from collections import Counter as Tally
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from http import HTTPStatus
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import parse_qs, urlsplit

import h11
from prometheus_client import Counter, Gauge

from pylib.http.access import (
    GuessThrottle,
    HostRule,
    TokenAuth,
    client_key,
    offers_credential,
    own_address,
    same_origin,
)
from pylib.http.routing import Request, Response, Route, Router
from pylib.runtime.worker import Worker

log = logging.getLogger(__name__)

HTTP_REQUESTS = Counter("http_requests_total", "HTTP requests answered", ["route", "status"])
HTTP_CONNECTION_ERRORS = Counter(
    "http_connection_errors_total",
    "Connections that ended early: a malformed request, a deadline, a client gone",
    ["kind"],
)
HTTP_CONNECTIONS_SHED = Counter(
    "http_connections_shed_total",
    "Connections answered 503 at once (per_client, all_busy), or closed while they waited "
    "for their request to make room for a new one (displaced)",
    ["reason"],
)
HTTP_OPEN_CONNECTIONS = Gauge("http_open_connections", "HTTP connections open now")

MAX_BODY_BYTES = 64 * 1024
MAX_HEAD_BYTES = 16 * 1024
READ_BYTES = 64 * 1024
# Sent with every answer; a page sets a CSP of its own that lets its own script run.
SECURITY_HEADERS = (
    ("X-Frame-Options", "DENY"),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
    ("Cache-Control", "no-store"),
)
DEFAULT_CSP = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
REFUSED = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nRetry-After: 5\r\n"
    b"Connection: close\r\n\r\n"
)


class ConnectionLimits:
    """At most ``max_per_client`` connections per client, ``max_connections`` in all (this
    machine's own address ``reserved`` more); event loop thread only. When all are taken, a
    newcomer displaces the one waiting longest for its request; if none waits, it is refused."""

    def __init__(self, *, max_connections: int, max_per_client: int, reserved: int) -> None:
        self.max_connections = max_connections
        self.max_per_client = max_per_client
        self.reserved = reserved
        self._clients: dict[object, str] = {}  # every open connection, by its token
        self._waiting: dict[object, None] = {}  # those waiting for a request, oldest first
        self._per_client: Tally[str] = Tally()

    @property
    def open(self) -> int:
        return len(self._clients)

    def admit(self, connection: object, client: str) -> tuple[str | None, object | None]:
        """Count ``connection`` if it may stay: why it may not (or None), and the waiting
        connection it displaces, which the caller closes (or None)."""
        key = client_key(client)
        own = own_address(client)
        if not own and self._per_client[key] >= self.max_per_client:
            return "per_client", None
        displaced = None
        if self.open >= self.max_connections + (self.reserved if own else 0):
            if not self._waiting:
                return "all_busy", None
            displaced = next(iter(self._waiting))
            self.release(displaced)
        self._clients[connection] = key
        self._per_client[key] += 1
        HTTP_OPEN_CONNECTIONS.set(self.open)
        return None, displaced

    def waiting(self, connection: object, waits: bool) -> None:
        """``connection`` now waits for its next request (True), or is being answered."""
        self._waiting.pop(connection, None)
        if waits and connection in self._clients:
            self._waiting[connection] = None

    def release(self, connection: object) -> None:
        """``connection`` has closed, or was displaced (then its own release does nothing)."""
        key = self._clients.pop(connection, None)
        if key is None:
            return
        self._waiting.pop(connection, None)
        self._per_client[key] -= 1
        if self._per_client[key] <= 0:
            del self._per_client[key]
        HTTP_OPEN_CONNECTIONS.set(self.open)


class _EndOfConnectionError(Exception):
    """The connection is done: the client left, a deadline passed, or it must close."""


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
        allowed_hosts: Iterable[str] = (),
        max_connections: int = 256,
        max_per_client: int = 16,
        reserved: int = 16,
        head_seconds: float = 5.0,
        body_seconds: float = 10.0,
        idle_seconds: float = 15.0,
        send_seconds: float = 30.0,
        handler_threads: int = 4,
        throttle: GuessThrottle | None = None,
        realm: str = "api",
        on_close: Callable[[], None] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(name, stop_event, **kwargs)
        self._on_close = on_close
        self.address = address
        self.port = port
        self.router = router
        self.auth = auth
        self.hosts = HostRule(allowed_hosts, token_required=auth.required)
        self.limits = ConnectionLimits(
            max_connections=max_connections, max_per_client=max_per_client, reserved=reserved
        )
        self.throttle = throttle or GuessThrottle()
        self.realm = realm
        self.head_seconds = head_seconds
        self.body_seconds = body_seconds
        self.idle_seconds = idle_seconds
        self.send_seconds = send_seconds
        self.handler_threads = handler_threads
        self._socket: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._wake = asyncio.Event()
        self._shed: Tally[str] = Tally()
        self._shed_logged_at = 0.0

    @property
    def bound_port(self) -> int:
        """The port listened on (the chosen one when ``port`` was 0)."""
        assert self._socket is not None
        return int(self._socket.getsockname()[1])

    def on_thread_open(self) -> None:
        family = socket.AF_INET6 if ":" in self.address else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.address, self.port))
            sock.listen(128)
        except OSError as exc:
            sock.close()
            raise OSError(
                f"HTTP port {self.address}:{self.port} cannot be used: {exc.strerror or exc}"
            ) from None
        sock.setblocking(False)
        self._socket = sock
        self._loop = asyncio.new_event_loop()
        self._pool = ThreadPoolExecutor(self.handler_threads, thread_name_prefix=self.name)

    def work(self) -> None:
        assert self._loop is not None
        self._loop.run_until_complete(self._serve())

    def stop(self) -> None:
        super().stop()
        loop = self._loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(self._wake.set)

    def on_thread_close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        if self._loop is not None:
            loop, self._loop = self._loop, None
            loop.close()
        if self._socket is not None:
            self._socket.close()
        if self._on_close is not None:
            self._on_close()

    async def _serve(self) -> None:
        assert self._socket is not None
        connections: set[asyncio.Task[None]] = set()

        async def connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.current_task()
            assert task is not None
            connections.add(task)
            task.add_done_callback(connections.discard)
            # Cancelled at a stop: ending quietly keeps asyncio (3.11) from logging an error.
            with contextlib.suppress(asyncio.CancelledError):
                await self._connection(reader, writer)

        # A copy of the socket, so a restart of this thread can serve the same one again.
        server = await asyncio.start_server(connection, sock=self._socket.dup(), limit=READ_BYTES)
        try:
            while self.should_keep_running():
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(10.0):
                        await self._wake.wait()
                self.throttle.report()
                self._report_shed()
        finally:
            server.close()
            for task in list(connections):  # a stop does not wait for idle keep-alives
                task.cancel()
            await asyncio.gather(*connections, return_exceptions=True)
            await server.wait_closed()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        client = _plain_address(peer[0] if peer else "")
        task = asyncio.current_task()
        refused, displaced = self.limits.admit(task, client)
        if displaced is not None:
            HTTP_CONNECTIONS_SHED.labels("displaced").inc()
            self._shed["displaced"] += 1
            assert isinstance(displaced, asyncio.Task)
            displaced.cancel()
        if refused is not None:
            HTTP_CONNECTIONS_SHED.labels(refused).inc()
            self._shed[refused] += 1
            with contextlib.suppress(OSError):
                writer.write(REFUSED)
            writer.close()
            return
        try:
            connection = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD_BYTES)
            first = True
            while True:
                self.limits.waiting(task, True)
                request = await self._read_request(connection, reader, writer, client, first)
                self.limits.waiting(task, False)
                response, route = await asyncio.get_running_loop().run_in_executor(
                    self._pool, self.dispatch, request
                )
                if response.credential_refused:
                    await asyncio.sleep(self.throttle.delay)
                await self._send(connection, writer, request.method, response, route)
                if connection.our_state is not h11.DONE or connection.their_state is not h11.DONE:
                    return
                connection.start_next_cycle()
                first = False
        except _EndOfConnectionError:
            pass
        except (ConnectionError, OSError) as exc:
            HTTP_CONNECTION_ERRORS.labels(type(exc).__name__).inc()
        except Exception:
            # A bug of ours: this connection ends, the server goes on.
            HTTP_CONNECTION_ERRORS.labels("bug").inc()
            log.exception("%s: a connection from %s failed", self.name, client)
        finally:
            self.limits.release(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _read_request(
        self,
        connection: h11.Connection,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        client: str,
        first: bool,
    ) -> Request:
        loop = asyncio.get_running_loop()
        if not first and not connection.trailing_data[0]:
            # A kept-alive connection waits for its next request, then it must come whole.
            try:
                async with asyncio.timeout(self.idle_seconds):
                    data = await reader.read(READ_BYTES)
            except TimeoutError:
                raise _EndOfConnectionError from None
            if not data:
                raise _EndOfConnectionError
            connection.receive_data(data)
        deadline = loop.time() + self.head_seconds
        try:
            head = await self._next_event(connection, reader, deadline)
            if isinstance(head, h11.ConnectionClosed):
                raise _EndOfConnectionError
            assert isinstance(head, h11.Request)
            headers = [
                (name.decode("latin-1"), value.decode("latin-1")) for name, value in head.headers
            ]
            if sum(len(name) + len(value) for name, value in headers) > MAX_HEAD_BYTES:
                # h11 bounds only a head still incomplete; one that came whole in a read too.
                HTTP_CONNECTION_ERRORS.labels("malformed").inc()
                await self._refuse(connection, writer, 431, "request headers too large")
            if {"content-length", "transfer-encoding"} <= {name for name, _ in headers}:
                # Allowed by HTTP/1.1 but the stuff of request smuggling: nobody honest sends it.
                HTTP_CONNECTION_ERRORS.labels("malformed").inc()
                await self._refuse(connection, writer, 400, "malformed request")
            declared = next((v for n, v in headers if n == "content-length"), "0")
            if int(declared) > MAX_BODY_BYTES:
                await self._refuse(connection, writer, 413, "request body too large")
            body = bytearray()
            deadline = loop.time() + self.body_seconds
            while True:
                event = await self._next_event(connection, reader, deadline)
                if isinstance(event, h11.Data):
                    body += event.data
                    if len(body) > MAX_BODY_BYTES:  # a chunked body past the limit
                        await self._refuse(connection, writer, 413, "request body too large")
                elif isinstance(event, h11.EndOfMessage):
                    break
                else:
                    raise _EndOfConnectionError
        except TimeoutError:
            HTTP_CONNECTION_ERRORS.labels("deadline").inc()
            if connection.their_state is not h11.IDLE or connection.trailing_data[0]:
                await self._refuse(connection, writer, 408, "the request took too long to arrive")
            raise _EndOfConnectionError from None
        except h11.RemoteProtocolError as exc:
            HTTP_CONNECTION_ERRORS.labels("malformed").inc()
            await self._refuse(connection, writer, exc.error_status_hint, "malformed request")
        target = urlsplit(head.target.decode("latin-1"))
        return Request(
            method=head.method.decode("ascii", "replace"),
            path=target.path,
            query=parse_qs(target.query),
            headers=dict(headers),
            body=bytes(body),
            cookies=_cookies(headers),
            client=client,
        )

    async def _next_event(
        self, connection: h11.Connection, reader: asyncio.StreamReader, deadline: float
    ) -> Any:
        while True:
            event = connection.next_event()
            if event is not h11.NEED_DATA:
                return event
            async with asyncio.timeout_at(deadline):
                data = await reader.read(READ_BYTES)
            connection.receive_data(data)

    async def _refuse(
        self, connection: h11.Connection, writer: asyncio.StreamWriter, status: int, why: str
    ) -> None:
        """Answer a request we will not read to its end, then close."""
        if connection.our_state in (h11.IDLE, h11.SEND_RESPONSE):
            response = Response.text(f"{why}\n", status)
            response.headers["Connection"] = "close"
            with contextlib.suppress(h11.LocalProtocolError, OSError, TimeoutError):
                await self._send(connection, writer, "GET", response, "-")
        raise _EndOfConnectionError

    async def _send(
        self,
        connection: h11.Connection,
        writer: asyncio.StreamWriter,
        method: str,
        response: Response,
        route: str,
    ) -> None:
        HTTP_REQUESTS.labels(route, str(response.status)).inc()
        headers = [
            ("Content-Type", response.content_type),
            ("Content-Length", str(len(response.body))),
            # A response's own header wins (an immutable image may be cached privately).
            *(h for h in SECURITY_HEADERS if h[0] not in response.headers),
        ]
        if "Content-Security-Policy" not in response.headers:
            headers.append(("Content-Security-Policy", DEFAULT_CSP))
        headers.extend(response.headers.items())
        try:
            reason = HTTPStatus(response.status).phrase
        except ValueError:
            reason = ""
        events: list[h11.Event] = [
            h11.Response(status_code=response.status, headers=headers, reason=reason)
        ]
        if method != "HEAD" and response.body:
            events.append(h11.Data(data=response.body))
        events.append(h11.EndOfMessage())
        writer.write(b"".join(connection.send(event) or b"" for event in events))
        # A client that does not read its answer may hold the connection only so long.
        async with asyncio.timeout(self.send_seconds):
            await writer.drain()

    def _report_shed(self) -> None:
        now = time.monotonic()
        if not self._shed or now - self._shed_logged_at < 60.0:
            return
        log.warning(
            "%s: too many connections: %s (at most %d in all, %d from one address)",
            self.name,
            ", ".join(f"{n} {reason}" for reason, n in sorted(self._shed.items())),
            self.limits.max_connections,
            self.limits.max_per_client,
        )
        self._shed.clear()
        self._shed_logged_at = now

    def dispatch(self, request: Request) -> tuple[Response, str]:
        """The answer to one request, and the route name it is counted under."""
        if not self.hosts.allows(request):
            refused = Response.text(
                "refused: this server answers only to its own names; a reverse proxy's "
                "name goes in HTTP_ALLOWED_HOSTS\n",
                403,
            )
            return refused, "-"
        route, params, known = self.router.match(request.method, request.path)
        if route is None:
            status = HTTPStatus.METHOD_NOT_ALLOWED if known else HTTPStatus.NOT_FOUND
            return Response.text(f"{status.phrase}\n", status), "-"
        request = Request(**{**request.__dict__, "params": params})
        response = self._check_access(route, request)
        if response is None:
            try:
                response = route.handler(request)
            except Exception:
                log.exception("%s: %s %s failed", self.name, request.method, route.name)
                response = Response.text("internal error\n", 500)
        if response.credential_refused:
            self.throttle.failed(request.client)
        return response, route.name

    def _check_access(self, route: Route, request: Request) -> Response | None:
        """None if ``request`` may reach ``route``'s handler, else the answer instead."""
        needs_token = self.auth.required and (
            route.access == "token" or (route.access == "local" and not self.hosts.local(request))
        )
        if needs_token or route.checks_credential:
            wait = self.throttle.retry_after(request.client)
            if wait is not None:
                answer = Response.text("too many wrong tokens from your address; wait\n", 429)
                answer.headers["Retry-After"] = str(int(wait) + 1)
                return answer
        if not needs_token:
            # Without a token a browser's cookie-less call still must come from our pages.
            tokenless = route.access != "public" and not self.auth.required
            if tokenless and route.method != "GET" and not same_origin(request):
                return Response.text("refused: not from this machine's own pages\n", 403)
            return None
        how = self.auth.how(request)
        if how is None:
            answer = Response.text("a valid token is needed\n", 401)
            answer.headers["WWW-Authenticate"] = f'Bearer realm="{self.realm}"'
            answer.credential_refused = offers_credential(request)
            return answer
        if how == "cookie" and route.method != "GET" and not same_origin(request):
            return Response.text("cross-site request refused\n", 403)
        return None


def _plain_address(address: str) -> str:
    """An IPv4 peer of a dual-stack socket as IPv4 (``::ffff:1.2.3.4`` is ``1.2.3.4``)."""
    return address[7:] if address.startswith("::ffff:") and "." in address else address


def _cookies(headers: list[tuple[str, str]]) -> dict[str, str]:
    jar: SimpleCookie = SimpleCookie()
    for name, value in headers:
        if name == "cookie":
            with contextlib.suppress(Exception):  # a malformed cookie header is no cookie
                jar.load(value)
    return {name: morsel.value for name, morsel in jar.items()}
