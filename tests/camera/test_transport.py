"""The camera HTTP transport and its auth: digest answers checked against RFC 7616's
examples, and the wire against a scripted HTTP/1.1 server on 127.0.0.1 (keep-alive the
camera drops, chunked and cut-short bodies, credentials in the URL)."""

from __future__ import annotations

import base64
import hashlib
import io
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from urllib.parse import quote

import pytest
from PIL import Image

from snapshot_processor.camera import (
    CameraClient,
    CameraConnectionError,
    CameraSpec,
    CameraTimeoutError,
    make_client,
)
from snapshot_processor.camera.auth import Auth, DigestAuth, parse_challenges
from snapshot_processor.camera.transport import Connection, TransportError
from tests.support.ftp import self_signed

# RFC 7616, section 3.9.1.
RFC_USER, RFC_PASSWORD = "Mufasa", "Circle of Life"
RFC_CHALLENGE = (
    'realm="http-auth@example.org", qop="auth, auth-int", '
    'nonce="7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v", '
    'opaque="FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS"'
)
RFC_CNONCE = "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ"
RFC_MD5 = "8ca523f5e9506fed4657c9700eebdbec"
RFC_SHA256 = "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"
PASSWORD = "pa:ss wörd@x"


def _params(header: str) -> dict[str, str]:
    scheme, params = parse_challenges([header])[0]
    assert scheme == "digest"
    return params


# -- digest ----------------------------------------------------------------------------


def test_parse_challenges_several_per_value_and_quoted_commas() -> None:
    found = parse_challenges(
        [
            'Digest realm="a, \\"b\\"", nonce=abc, qop="auth,auth-int", Basic realm="x"',
            "Negotiate",
            'Digest algorithm=SHA-256, nonce="n2"',
        ]
    )
    assert found == [
        ("digest", {"realm": 'a, "b"', "nonce": "abc", "qop": "auth,auth-int"}),
        ("basic", {"realm": "x"}),
        ("negotiate", {}),
        ("digest", {"algorithm": "SHA-256", "nonce": "n2"}),
    ]


@pytest.mark.parametrize(("algorithm", "expected"), [("MD5", RFC_MD5), ("SHA-256", RFC_SHA256)])
def test_digest_answer_matches_rfc_7616(algorithm: str, expected: str) -> None:
    auth = DigestAuth(RFC_USER, RFC_PASSWORD, cnonce=lambda: RFC_CNONCE)
    assert auth.header("GET", "/dir/index.html") is None  # nothing to answer yet
    assert auth.challenged([f"Digest {RFC_CHALLENGE}, algorithm={algorithm}"])
    params = _params(auth.header("GET", "/dir/index.html") or "")
    assert params["response"] == expected
    assert params["nc"] == "00000001"
    assert params["qop"] == "auth"
    assert params["opaque"].startswith("FQhe/")
    # The nonce is reused, its count rising.
    assert _params(auth.header("GET", "/dir/index.html") or "")["nc"] == "00000002"


def test_digest_prefers_sha256_and_refuses_what_it_cannot_answer() -> None:
    auth = DigestAuth(RFC_USER, RFC_PASSWORD)
    md5 = f"Digest {RFC_CHALLENGE}, algorithm=MD5"
    sha = f"Digest {RFC_CHALLENGE}, algorithm=SHA-256"
    assert auth.challenged([md5, sha])
    assert _params(auth.header("GET", "/") or "")["algorithm"] == "SHA-256"
    fresh = DigestAuth(RFC_USER, RFC_PASSWORD)
    assert not fresh.challenged(['Digest nonce="n", qop="auth-int"'])
    assert not fresh.challenged(['Digest nonce="n", algorithm=SHA-512-256'])
    assert not fresh.challenged(['Basic realm="cam"'])
    assert fresh.header("GET", "/") is None


def test_digest_session_and_legacy_forms() -> None:
    auth = DigestAuth("u", "p", cnonce=lambda: "c")
    assert auth.challenged(['Digest realm="r", nonce="n", qop=auth, algorithm=MD5-sess'])
    params = _params(auth.header("GET", "/x") or "")

    def md5(text: str) -> str:
        return hashlib.md5(text.encode()).hexdigest()

    secret = md5(f"{md5('u:r:p')}:n:c")
    assert params["response"] == md5(f"{secret}:n:00000001:c:auth:{md5('GET:/x')}")
    legacy = DigestAuth("u", "p")
    assert legacy.challenged(['Digest realm="r", nonce="n"'])  # RFC 2069: no qop
    params = _params(legacy.header("GET", "/x") or "")
    assert params["response"] == md5(f"{md5('u:r:p')}:n:{md5('GET:/x')}")
    assert "nc" not in params
    assert "qop" not in params


# -- the wire --------------------------------------------------------------------------


def _jpeg() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (64, 48), (90, 120, 30)).save(out, "JPEG")
    return out.getvalue()


JPEG = _jpeg()
# An answer is bytes, or a list of parts sent 0.1 s apart (a camera trickling it).
Script = Callable[[str, dict[str, str]], tuple[bytes | list[bytes], bool]]


class ScriptedServer:
    """HTTP/1.1 on 127.0.0.1: each request's answer (raw bytes) and whether to close the
    connection after it come from ``script(path, headers)``."""

    def __init__(self, script: Script, tls: ssl.SSLContext | None = None) -> None:
        self.script = script
        self.tls = tls
        self.connections = 0
        self.requests: list[tuple[str, dict[str, str]]] = []
        self.parts_sent = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.05)
        self.port = self._listener.getsockname()[1]
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._accepting = threading.Thread(target=self._accept, name="scripted-http")

    def __enter__(self) -> ScriptedServer:
        self._accepting.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        self._accepting.join()
        for thread in self._threads:
            thread.join()
        self._listener.close()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            self.connections += 1
            thread = threading.Thread(target=self._serve, args=(conn,), name="scripted-conn")
            self._threads.append(thread)
            thread.start()

    def _serve(self, conn: socket.socket) -> None:
        if self.tls is not None:
            conn.settimeout(5)
            try:
                conn = self.tls.wrap_socket(conn, server_side=True)
            except (ssl.SSLError, OSError):
                conn.close()  # the client refused our certificate
                return
        conn.settimeout(0.05)
        with conn:
            data = b""
            while not self._stop.is_set():
                try:
                    more = conn.recv(65536)
                except TimeoutError:
                    continue
                except OSError:
                    return
                if not more:
                    return
                data += more
                while b"\r\n\r\n" in data:
                    head, data = data.split(b"\r\n\r\n", 1)
                    lines = head.decode("latin-1").split("\r\n")
                    path = lines[0].split(" ")[1]
                    headers = {
                        k.lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:])
                    }
                    self.requests.append((path, headers))
                    answer, close = self.script(path, headers)
                    if isinstance(answer, bytes):
                        conn.sendall(answer)
                    else:
                        for part in answer:
                            if self._stop.wait(0.1):
                                return
                            try:
                                conn.sendall(part)
                            except OSError:
                                return  # the client gave up
                            self.parts_sent += 1
                    if close:
                        return


def ok(body: bytes = JPEG, extra: str = "") -> bytes:
    return (
        f"HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\nContent-Length: {len(body)}\r\n{extra}\r\n"
    ).encode() + body


def generic(
    port: int,
    path: str,
    *,
    auth: str = "none",
    url: str = "",
    timeout: float = 2.0,
    scheme: str = "http",
    verify_tls: bool = True,
) -> CameraClient:
    return make_client(
        CameraSpec(
            scheme=scheme,
            verify_tls=verify_tls,
            key="yard camera",
            vendor="generic",
            host="127.0.0.1",
            port=port,
            user="admin",
            password=PASSWORD,
            auth=auth,
            url=url or f"{scheme}://{{host}}:{{port}}{path}",
            timeout=timeout,
            retries=1,
            backoff=0.01,
        )
    )


@pytest.fixture
def transport() -> Iterator[Connection]:
    connection = Connection(timeout=2.0, verify_tls=True, user_agent="test", limit=1000)
    yield connection
    connection.close()


@pytest.mark.parametrize(
    "extra",
    [
        # Every answer keeps the connection in HTTP/1.1 terms, then the camera closes it.
        pytest.param("", id="dropped while kept alive"),
        pytest.param("Connection: close\r\n", id="says it closes"),
    ],
)
def test_a_camera_closing_after_each_answer_gets_a_new_connection_without_an_error(
    extra: str,
) -> None:
    with ScriptedServer(lambda path, headers: (ok(extra=extra), True)) as server:
        with generic(server.port, "/snap.jpg") as client:
            for _ in range(3):
                assert client.snapshot() == JPEG
        assert server.connections == 3
        assert len(server.requests) == 3  # no failed attempt, no retry


def test_one_connection_kept_between_snapshots() -> None:
    with ScriptedServer(lambda path, headers: (ok(), False)) as server:
        with generic(server.port, "/snap.jpg") as client:
            for _ in range(3):
                assert client.snapshot() == JPEG
        assert server.connections == 1
        assert server.requests[0][1]["user-agent"] == "snapshot-processor"


def test_chunked_body() -> None:
    def chunked(path: str, headers: dict[str, str]) -> tuple[bytes, bool]:
        head = b"HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\nTransfer-Encoding: chunked\r\n\r\n"
        parts = [JPEG[:100], JPEG[100:1000], JPEG[1000:]]
        body = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts) + b"0\r\n\r\n"
        return head + body, False

    with ScriptedServer(chunked) as server, generic(server.port, "/snap.jpg") as client:
        assert client.snapshot() == JPEG
        assert client.snapshot() == JPEG
        assert server.connections == 1


def test_body_cut_short_is_a_connection_error() -> None:
    def short(path: str, headers: dict[str, str]) -> tuple[bytes, bool]:
        whole = ok()
        return whole[: len(whole) - 50], True

    with ScriptedServer(short) as server, generic(server.port, "/snap.jpg") as client:
        with pytest.raises(CameraConnectionError) as caught:
            client.snapshot()
        assert "connection closed by the camera" in str(caught.value)
        assert len(server.requests) == 2  # retried once, as the policy says


def test_credentials_in_the_url_are_basic_auth() -> None:
    expected = "Basic " + base64.b64encode(f"admin:{PASSWORD}".encode()).decode()

    def basic(path: str, headers: dict[str, str]) -> tuple[bytes, bool]:
        if headers.get("authorization") != expected:
            return b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n", False
        return ok(), False

    with ScriptedServer(basic) as server:
        url = "http://{user}:{password}@{host}:{port}/snap.jpg"
        with generic(server.port, "", url=url) as client:
            assert client.snapshot() == JPEG
        with generic(server.port, "/snap.jpg", auth="basic") as client:
            assert client.snapshot() == JPEG
        assert [request[0] for request in server.requests] == ["/snap.jpg", "/snap.jpg"]


def test_too_large_is_refused_before_reading(transport: Connection) -> None:
    big = b"HTTP/1.1 200 OK\r\nContent-Length: 1001\r\n\r\n"
    with ScriptedServer(lambda path, headers: (big, False)) as server:
        with pytest.raises(TransportError) as caught:
            transport.get(f"http://127.0.0.1:{server.port}/x", DigestAuth("a", "b"))
        assert caught.value.too_large
        assert str(caught.value) == "answer larger than 1000 bytes"
        assert caught.value.__context__ is None


def test_a_trickling_camera_meets_the_deadline() -> None:
    def trickle(path: str, headers: dict[str, str]) -> tuple[bytes, bool]:
        return f"HTTP/1.1 200 OK\r\nContent-Length: {len(JPEG)}\r\n\r\n".encode(), False

    # The headers come at once, the body never: each read waits out what is left.
    with (
        ScriptedServer(trickle) as server,
        generic(server.port, "/s", timeout=0.3) as client,
        pytest.raises(CameraTimeoutError),
    ):
        client.snapshot()


def test_transport_errors_quote_no_url(transport: Connection) -> None:
    secret = "s3cr%20t"
    with pytest.raises(TransportError) as caught:
        transport.get(f"http://127.0.0.1:1/a?pwd={secret}\n", DigestAuth("a", "b"))
    assert secret not in str(caught.value)
    assert caught.value.__context__ is None
    assert caught.value.__cause__ is None
    with pytest.raises(TransportError) as caught:
        transport.get(f"ftp://cam/a?pwd={secret}", DigestAuth("a", "b"))
    assert str(caught.value) == "the camera's URL is not an http(s) URL with a host"


def test_https_checks_the_certificate_unless_told_not_to(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    with ScriptedServer(lambda path, headers: (ok(), False), tls=context) as server:
        with (
            generic(server.port, "/snap.jpg?pwd={password}", scheme="https") as client,
            pytest.raises(CameraConnectionError) as caught,
        ):
            client.snapshot()  # self-signed: not trusted
        assert "TLS certificate not trusted" in str(caught.value)
        assert server.connections == 1  # not retried: another attempt cannot help
        assert PASSWORD not in str(caught.value)
        assert quote(PASSWORD, safe="") not in str(caught.value)
        assert caught.value.__context__ is None
        with generic(server.port, "/snap.jpg", scheme="https", verify_tls=False) as client:
            assert client.snapshot() == JPEG
            assert client.snapshot() == JPEG
        assert len(server.requests) == 2


def test_a_camera_trickling_its_headers_meets_the_deadline() -> None:
    head = b"HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\n" + b"X-Pad: y\r\n" * 40
    parts = [head[n : n + 8] for n in range(0, len(head), 8)]  # 8 bytes every 0.1 s

    with ScriptedServer(lambda path, headers: (parts, False)) as server:
        with generic(server.port, "/s", timeout=0.3) as client, pytest.raises(CameraTimeoutError):
            client.snapshot()
        # Both attempts gave up long before the camera had sent its headers.
        assert server.parts_sent < len(parts)


def test_url_credentials_never_go_as_basic_before_a_digest_challenge() -> None:
    def digest_only(path: str, headers: dict[str, str]) -> tuple[bytes, bool]:
        if not headers.get("authorization", "").startswith("Digest "):
            challenge = 'Digest realm="cam", nonce="n1", qop="auth"'
            return (
                f"HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: {challenge}\r\n"
                "Content-Length: 0\r\n\r\n"
            ).encode(), False
        return ok(), False

    url = "http://{user}:{password}@{host}:{port}/snap.jpg"
    with ScriptedServer(digest_only) as server:
        with generic(server.port, "", url=url, auth="digest") as client:
            assert client.snapshot() == JPEG
        sent = [headers.get("authorization", "") for _, headers in server.requests]
        assert sent[0] == ""  # the first request: no credentials at all
        assert sent[1].startswith("Digest ")
        assert not any(value.startswith("Basic") for value in sent)


def test_characters_a_request_line_cannot_hold_are_escaped() -> None:
    with ScriptedServer(lambda path, headers: (ok(), False)) as server:
        url = "http://{host}:{port}/snap shot/bild\u00e4.jpg?name=a b&x=%41"
        with generic(server.port, "", url=url) as client:
            assert client.snapshot() == JPEG
        assert server.requests[0][0] == "/snap%20shot/bild%C3%A4.jpg?name=a%20b&x=%41"


def test_hostile_challenges_are_bounded() -> None:
    # A run of spaces that ends in no match: linear work, whatever its length.
    spaces = 'Digest realm="a", nonce="n"' + " " * 4000 + "="
    assert parse_challenges([spaces]) == [("digest", {"realm": "a", "nonce": "n"})]
    assert parse_challenges(["Digest nonce=" + "x" * 5000]) == []  # too long: not read
    auth = DigestAuth("u", "p")
    assert not auth.challenged(['Digest realm="r", nonce="n", algorithm=MD5-sess'])  # no qop
    assert auth.challenged(['Digest realm="r", nonce="n", qop="auth"'])
    params = _params(auth.header("GET", "/") or "")
    assert "algorithm" not in params  # not named by the camera: not named back


def test_a_camera_that_takes_no_request_times_out() -> None:
    # It accepts the connection (the kernel does, from the backlog) and never reads: once
    # the socket buffers are full, the send waits out its bound and the GET times out.
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        connection = Connection(timeout=0.5, verify_tls=True, user_agent="test", limit=1000)
        path = "/" + "x" * (16 * 1024 * 1024)
        started = time.monotonic()
        try:
            with pytest.raises(TransportError) as caught:
                connection.get(f"http://127.0.0.1:{port}{path}", Auth())
        finally:
            connection.close()
        assert caught.value.timed_out, caught.value
        assert str(caught.value) == "timed out"
        assert time.monotonic() - started < 5
