"""The HTTP server attacked as a hostile client would, over real sockets on loopback.

Other client addresses are other loopback addresses (``127.0.0.2`` and up): Linux answers
the whole of 127.0.0.0/8, and the server treats only 127.0.0.1 and ::1 as this machine's
own tools.
"""

from __future__ import annotations

import contextlib
import http.client
import logging
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from pylib.http import GuessThrottle, HttpServer, Request, Response, Router, TokenAuth
from pylib.http.server import ConnectionLimits
from tests.support.wait import wait_until

TOKEN = "a-token-of-at-least-16-chars"


def ask(
    port: int,
    method: str,
    path: str,
    *,
    source: str = "127.0.0.1",
    host: str | None = None,
    headers: dict[str, str] | None = None,
    body: bytes = b"",
) -> tuple[int, dict[str, str], bytes]:
    connection = http.client.HTTPConnection(
        "127.0.0.1", port, timeout=10, source_address=(source, 0)
    )
    try:
        sent = dict(headers or {})
        if host is not None:
            sent["Host"] = host
        connection.request(method, path, body=body, headers=sent)
        answer = connection.getresponse()
        return answer.status, {k.lower(): v for k, v in answer.getheaders()}, answer.read()
    finally:
        connection.close()


def router() -> Router:
    routes = Router()
    routes.add("GET", r"/healthz", lambda r: Response.json({"status": "ok"}), access="local")
    routes.add("GET", r"/", lambda r: Response.text("page\n"), access="public")

    def login(request: Request) -> Response:
        answer = Response.text("logged in\n")
        if request.form().get("token") != TOKEN:
            answer = Response.text("wrong\n", 401)
            answer.credential_refused = True
        return answer

    routes.add("POST", r"/login", login, access="public", checks_credential=True)
    routes.add("GET", r"/secret", lambda r: Response.text("secret\n"), access="token")
    # A handler that echoes a query value into a header: h11 refuses to send the line break.
    routes.add(
        "GET",
        r"/echo",
        lambda r: Response(200, b"", headers={"X-Echo": r.arg("v") or ""}),
        access="public",
    )
    return routes


@pytest.fixture
def server(request: pytest.FixtureRequest) -> Iterator[HttpServer]:
    token = getattr(request, "param", TOKEN)
    worker = HttpServer(
        "http",
        threading.Event(),
        address="127.0.0.1",
        port=0,
        router=router(),
        auth=TokenAuth(token),
        allowed_hosts=["cams.example.org"] if token is None else [],
    )
    worker.start()
    try:
        yield worker
    finally:
        assert worker.stop_and_join(10)


# --- the Host rule ------------------------------------------------------------------------
@pytest.mark.parametrize("server", [None], indirect=True)
def test_without_a_token_a_foreign_host_gets_nothing_on_any_route(server: HttpServer) -> None:
    port = server.bound_port
    for method, path in [("GET", "/healthz"), ("GET", "/"), ("GET", "/secret"), ("GET", "/no")]:
        for host in (f"evil.example:{port}", "evil.example", "127.0.0.1.evil.example"):
            status, _, body = ask(port, method, path, host=host)
            assert status == 403, (path, host)
            assert b"HTTP_ALLOWED_HOSTS" in body
        assert ask(port, method, path, host=f"localhost:{port}")[0] in (200, 404)
        assert ask(port, method, path, host=f"[::1]:{port}")[0] in (200, 404)
        # The name a reverse proxy forwards, listed in HTTP_ALLOWED_HOSTS.
        assert ask(port, method, path, host="cams.example.org")[0] in (200, 404)


def test_with_a_token_an_unknown_client_sees_only_the_login_form(server: HttpServer) -> None:
    port = server.bound_port
    here = f"127.0.0.1:{port}"
    # This machine's own health check, by a loopback name from a loopback address.
    assert ask(port, "GET", "/healthz", host=here)[0] == 200
    # The same from another address, or under another name, needs the token.
    assert ask(port, "GET", "/healthz", source="127.0.0.2", host=here)[0] == 401
    assert ask(port, "GET", "/healthz", host=f"evil.example:{port}")[0] == 401
    assert ask(port, "GET", "/secret", host=here)[0] == 401
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    assert ask(port, "GET", "/healthz", source="127.0.0.2", headers=bearer)[0] == 200
    assert ask(port, "GET", "/secret", source="127.0.0.2", headers=bearer)[0] == 200
    assert ask(port, "GET", "/", source="127.0.0.2", host="evil.example")[2] == b"page\n"


# --- headers a browser honours ---------------------------------------------------------------
def test_every_answer_forbids_framing_sniffing_and_referrers(server: HttpServer) -> None:
    port = server.bound_port
    for path in ("/", "/healthz", "/secret", "/nothing"):
        _, headers, _ = ask(port, "GET", path)
        assert headers["x-frame-options"] == "DENY", path
        assert "frame-ancestors 'none'" in headers["content-security-policy"], path
        assert "default-src 'none'" in headers["content-security-policy"], path
        assert headers["x-content-type-options"] == "nosniff", path
        assert headers["referrer-policy"] == "no-referrer", path


# --- slow clients -------------------------------------------------------------------------
def trickle(sockets: list[socket.socket], stop: threading.Event) -> None:
    """Each socket sends one more header line every half second, never the end."""
    for sock in sockets:
        with contextlib.suppress(OSError):
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
    n = 0
    while not stop.wait(0.5):
        n += 1
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.sendall(f"X-Slow-{n}: yes\r\n".encode())


@pytest.mark.parametrize("addresses", [40, 0], ids=["from-40-addresses", "from-127.0.0.1"])
def test_five_hundred_trickling_clients_leave_the_health_check_its_200(
    server: HttpServer, addresses: int
) -> None:
    port = server.bound_port
    clients: list[socket.socket] = []
    stop = threading.Event()
    feeder = threading.Thread(target=trickle, args=(clients, stop))
    try:
        # From other addresses, each under the per-client limit and together over the
        # limit of all; or from this machine's own address, as a local attacker would.
        for n in range(500):
            source = f"127.0.0.{2 + n % addresses}" if addresses else "127.0.0.1"
            clients.append(
                socket.create_connection(
                    ("127.0.0.1", port), timeout=10, source_address=(source, 0)
                )
            )
        feeder.start()
        time.sleep(1.0)
        for _ in range(10):
            status, _, body = ask(port, "GET", "/healthz", host=f"127.0.0.1:{port}")
            assert status == 200, body
            # Another client too: a place is made by closing the longest-waiting trickler.
            assert ask(port, "GET", "/", source="127.0.0.99")[0] == 200
            time.sleep(0.1)
        assert server.limits.open <= server.limits.max_connections + server.limits.reserved
    finally:
        stop.set()
        if feeder.is_alive():
            feeder.join()
    # Each trickler was closed: at its deadline with a 408, or earlier to make room.
    answers = []
    for sock in clients:
        try:
            answers.append(sock.recv(64))
        except OSError as exc:
            answers.append(repr(exc).encode())
        sock.close()
    cut = [a for a in answers if a.startswith(b"HTTP/1.1 408")]
    displaced = [
        a for a in answers if a in (b"", b"ConnectionResetError(104, 'Connection reset by peer')")
    ]
    assert 0 < len(cut) <= server.limits.max_connections + server.limits.reserved
    assert len(cut) + len(displaced) == 500, [a for a in answers if a not in cut + displaced][:3]
    assert wait_until(lambda: server.limits.open == 0, 5)


def test_a_full_house_displaces_the_longest_waiting_and_refuses_when_none_waits() -> None:
    limits = ConnectionLimits(max_connections=3, max_per_client=2, reserved=1)
    a, b, c, d, e = (object() for _ in range(5))
    assert limits.admit(a, "192.0.2.1") == (None, None)
    assert limits.admit(b, "192.0.2.1") == (None, None)
    assert limits.admit(c, "192.0.2.1") == ("per_client", None)
    assert limits.admit(c, "192.0.2.2") == (None, None)
    for connection in (b, a, c):  # b has waited longest
        limits.waiting(connection, True)
    assert limits.admit(d, "192.0.2.3") == (None, b)
    assert limits.open == 3
    limits.release(b)  # the displaced one's own release counts nothing twice
    assert limits.open == 3
    # This machine's own address has its reserve before it displaces anyone.
    assert limits.admit(e, "127.0.0.1") == (None, None)
    for connection in (a, c):
        limits.waiting(connection, False)  # being answered: never displaced
    assert limits.admit(object(), "192.0.2.4") == ("all_busy", None)
    assert limits.admit(object(), "::1") == ("all_busy", None)


def test_one_address_holds_only_so_many_connections(server: HttpServer) -> None:
    port = server.bound_port
    held = []
    try:
        for _ in range(server.limits.max_per_client):
            held.append(
                socket.create_connection(("127.0.0.1", port), source_address=("127.0.0.3", 0))
            )
        assert wait_until(lambda: server.limits.open == server.limits.max_per_client)
        assert ask(port, "GET", "/", source="127.0.0.3")[0] == 503
        assert ask(port, "GET", "/", source="127.0.0.4")[0] == 200
    finally:
        for sock in held:
            sock.close()
    assert wait_until(lambda: ask(port, "GET", "/", source="127.0.0.3")[0] == 200)


def test_a_connection_that_sends_nothing_is_closed_at_the_deadline(server: HttpServer) -> None:
    port = server.bound_port
    with socket.create_connection(("127.0.0.1", port), timeout=15) as sock:
        started = time.monotonic()
        assert sock.recv(64) == b""  # closed, nothing said: it asked nothing
        assert time.monotonic() - started < server.head_seconds + 3


def test_a_body_that_never_ends_is_cut(server: HttpServer) -> None:
    port = server.bound_port
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(b"POST /login HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100\r\n\r\nab")
        assert sock.recv(64).startswith(b"HTTP/1.1 408")


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
        b"GET /\x00 HTTP/1.1\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX: " + b"a" * 20_000 + b"\r\n\r\n",
        b"POST /login HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n"
        + b"8000\r\n"
        + b"x" * 0x8000
        + b"\r\n"
        + b"8000\r\n"
        + b"x" * 0x8000
        + b"\r\n"
        + b"10\r\n"
        + b"x" * 16
        + b"\r\n0\r\n\r\n",
    ],
    ids=["two-lengths", "chunked-and-length", "nul-in-target", "huge-header", "huge-chunked"],
)
def test_malformed_framing_is_answered_and_closed(server: HttpServer, request_bytes: bytes) -> None:
    with socket.create_connection(("127.0.0.1", server.bound_port), timeout=10) as sock:
        sock.sendall(request_bytes)
        answer = b""
        while chunk := sock.recv(4096):
            answer += chunk
    assert answer.split(b" ", 2)[1] in (b"400", b"413", b"431"), answer[:80]
    assert server.is_alive()
    assert ask(server.bound_port, "GET", "/")[0] == 200


def test_a_header_that_cannot_be_sent_ends_only_its_connection(
    server: HttpServer, caplog: pytest.LogCaptureFixture
) -> None:
    port = server.bound_port
    assert ask(port, "GET", "/echo?v=fine")[1]["x-echo"] == "fine"
    with pytest.raises((http.client.HTTPException, ConnectionError)):
        ask(port, "GET", "/echo?v=a%0D%0ASet-Cookie:%20sp_session=forged")
    assert "a connection from 127.0.0.1 failed" in caplog.text
    assert ask(port, "GET", "/")[0] == 200


# --- guessing -----------------------------------------------------------------------------
def test_guessing_is_slow_refused_past_a_limit_and_logged_once(
    server: HttpServer, caplog: pytest.LogCaptureFixture
) -> None:
    port = server.bound_port
    limit = server.throttle.limit
    wrong = {"Authorization": "Bearer wrong-token-of-some-length"}
    caplog.set_level(logging.WARNING)
    started = time.monotonic()
    with ThreadPoolExecutor(32) as pool:
        statuses = list(
            pool.map(lambda _: ask(port, "GET", "/secret", headers=wrong)[0], range(300))
        )
    # Attempts already under way when the limit is reached still get their 401.
    assert limit <= statuses.count(401) <= limit + server.handler_threads
    assert statuses.count(429) == 300 - statuses.count(401)
    # Each wrong answer waited its delay (they ran side by side).
    assert time.monotonic() - started >= server.throttle.delay
    # Over the limit, even the right token is not looked at: guessing learns nothing.
    status, headers, _ = ask(port, "GET", "/secret", headers={"Authorization": f"Bearer {TOKEN}"})
    assert status == 429
    assert 0 < int(headers["retry-after"]) <= 61
    # The login form counts the same way, and so is refused now.
    assert ask(port, "POST", "/login", body=b"token=guess")[0] == 429
    # Another address is not held back by this one's guessing.
    assert ask(port, "POST", "/login", source="127.0.0.5", body=b"token=guess")[0] == 401
    assert ask(port, "POST", "/login", source="127.0.0.5", body=f"token={TOKEN}".encode())[0] == 200
    # No credential at all is a first visit, not a guess.
    assert ask(port, "GET", "/secret", source="127.0.0.6")[0] == 401
    assert server.throttle.retry_after("127.0.0.6") is None
    lines = [r.getMessage() for r in caplog.records if "wrong token" in r.getMessage()]
    assert len(lines) == 2, lines  # one for each address, however many guesses
    assert TOKEN not in caplog.text


def test_the_guessing_minute_ends_with_one_line_that_counts(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [1000.0]
    throttle = GuessThrottle(limit=3, window=60.0, clock=lambda: now[0])
    caplog.set_level(logging.WARNING)
    for _ in range(3):
        assert throttle.retry_after("192.0.2.7") is None
        throttle.failed("192.0.2.7")
    assert throttle.retry_after("192.0.2.7") == pytest.approx(60.0)
    now[0] += 30
    assert throttle.retry_after("192.0.2.7") == pytest.approx(30.0)
    # IPv6 addresses count by their /64: one host has many of them.
    for n in range(3):
        throttle.failed(f"2001:db8::{n + 1}")
    assert throttle.retry_after("2001:db8::99") is not None
    assert throttle.retry_after("2001:db8:1::1") is None
    assert len(caplog.records) == 2
    now[0] += 31
    throttle.report()
    assert throttle.retry_after("192.0.2.7") is None
    summary = caplog.records[2].getMessage()
    assert "3 wrong token(s) from 192.0.2.7 within a minute; 2 more" in summary, summary
    assert "refused with 429" in summary
