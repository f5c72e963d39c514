"""The camera HTTP transport (requests, bounded) and its auth, on the wire against a
scripted HTTP/1.1 server on 127.0.0.1: digest answers checked by an independent
computation that reproduces RFC 7616's examples, keep-alive the camera drops, chunked and
cut-short bodies, credentials in the URL, deadlines, size limit, pinning over TLS."""

from __future__ import annotations

import base64
import datetime
import hashlib
import io
import ipaddress
import re
import socket
import ssl
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from urllib.parse import quote

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from PIL import Image

from snapshot_processor.camera.base import CameraClient
from snapshot_processor.camera.clients import make_client
from snapshot_processor.camera.errors import (
    CameraAuthError,
    CameraBadImageError,
    CameraConnectionError,
    CameraHTTPError,
    CameraTimeoutError,
)
from snapshot_processor.camera.spec import CameraSpec
from snapshot_processor.camera.transport import MAX_ANSWER_BYTES
from tests.support.ftp import self_signed

# RFC 7616, section 3.9.1.
RFC_USER, RFC_PASSWORD = "Mufasa", "Circle of Life"
RFC_REALM = "http-auth@example.org"
RFC_NONCE = "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v"
RFC_OPAQUE = "FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS"
RFC_CHALLENGE = (
    f'realm="{RFC_REALM}", qop="auth, auth-int", nonce="{RFC_NONCE}", opaque="{RFC_OPAQUE}"'
)
RFC_CNONCE = "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ"
RFC_MD5 = "8ca523f5e9506fed4657c9700eebdbec"
RFC_SHA256 = "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"
PASSWORD = "pa:ss wörd@x"


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

    def __init__(
        self, script: Script, tls: ssl.SSLContext | None = None, host: str = "127.0.0.1"
    ) -> None:
        self.script = script
        self.tls = tls
        self.connections = 0
        self.requests: list[tuple[str, dict[str, str]]] = []
        self.parts_sent = 0
        self._listener = socket.create_server((host, 0))
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
    user: str = "admin",
    password: str = PASSWORD,
    host: str = "127.0.0.1",
    connect_to: tuple[str, ...] = (),
) -> CameraClient:
    return make_client(
        CameraSpec(
            scheme=scheme,
            verify_tls=verify_tls,
            key="yard camera",
            vendor="generic",
            host=host,
            port=port,
            user=user,
            password=password,
            auth=auth,
            url=url or f"{scheme}://{{host}}:{{port}}{path}",
            timeout=timeout,
            retries=1,
            backoff=0.01,
            connect_to=connect_to,
        )
    )


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


def test_too_large_is_refused_before_reading() -> None:
    big = f"HTTP/1.1 200 OK\r\nContent-Length: {MAX_ANSWER_BYTES + 1}\r\n\r\n".encode()
    # No body follows: a client that began reading it would time out instead.
    with ScriptedServer(lambda path, headers: (big, False)) as server:
        with generic(server.port, "/x") as client, pytest.raises(CameraBadImageError) as caught:
            client.snapshot()
        assert f"answer larger than {MAX_ANSWER_BYTES} bytes" in str(caught.value)
        assert not caught.value.retryable
        assert len(server.requests) == 1
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


def test_transport_errors_quote_no_url() -> None:
    secret = "s3cr%20t"
    with (
        generic(1, "", url=f"http://127.0.0.1:1/a?pwd={secret}\n") as client,
        pytest.raises(CameraConnectionError) as caught,
    ):
        client.snapshot()
    assert "connection refused" in str(caught.value)
    assert secret not in str(caught.value)
    assert caught.value.__context__ is None
    assert caught.value.__cause__ is None
    with pytest.raises(ValueError, match="must be http") as refused:
        generic(1, "", url=f"ftp://cam/a?pwd={secret}")
    assert secret not in str(refused.value)


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
    # A run of spaces that ends in no match: linear work, whatever its length; one answer.
    spaces = 'Digest realm="a", nonce="n"' + " " * 4000 + "="
    with DigestCamera([spaces]) as camera, camera.client() as client:
        with pytest.raises(CameraAuthError):
            client.snapshot()
        # Answered once (with what it read of the nonce); an auth error is not retried.
        assert len(camera.answers) == 1
        assert len(camera.server.requests) == 2
    # Too long: not read, so not answered; nor MD5-sess without a qop (needs a cnonce).
    for refused in [
        "Digest nonce=" + "x" * 5000,
        'Digest realm="r", nonce="n", algorithm=MD5-sess',
    ]:
        with DigestCamera([refused]) as camera, camera.client() as client:
            with pytest.raises(CameraAuthError):
                client.snapshot()
            assert camera.answers == []
    with DigestCamera(['Digest realm="r", nonce="n", qop="auth"']) as camera:
        with camera.client() as client:
            assert client.snapshot() == JPEG
        assert "algorithm" not in camera.answers[0]  # not named by the camera: not named back


def test_a_camera_that_takes_no_request_times_out() -> None:
    # It accepts the connection (the kernel does, from the backlog) and never reads: once
    # the socket buffers are full, the send waits out its bound and the GET times out.
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        path = "/" + "x" * (16 * 1024 * 1024)
        started = time.monotonic()
        with (
            generic(port, path, timeout=0.5) as client,
            pytest.raises(CameraTimeoutError) as caught,
        ):
            client.snapshot()
        assert "timed out after 0.5 s" in str(caught.value)
        assert time.monotonic() - started < 5


# -- digest ------------------------------------------------------------------------------
def _hash(algorithm: str) -> Callable[[str], str]:
    function = {"MD5": hashlib.md5, "SHA-256": hashlib.sha256}[
        algorithm.upper().removesuffix("-SESS")
    ]
    return lambda text: function(text.encode()).hexdigest()


def digest_response(
    params: dict[str, str], *, user: str, password: str, realm: str, nonce: str
) -> str:
    """The answer RFC 7616 asks of a GET with ``params`` (RFC 2069's without a qop)."""
    algorithm = params.get("algorithm") or "MD5"
    digest = _hash(algorithm)
    secret = digest(f"{user}:{realm}:{password}")
    if algorithm.upper().endswith("-SESS"):
        secret = digest(f"{secret}:{nonce}:{params['cnonce']}")
    target = digest(f"GET:{params['uri']}")
    if "qop" not in params:
        return digest(f"{secret}:{nonce}:{target}")
    return digest(f"{secret}:{nonce}:{params['nc']}:{params['cnonce']}:{params['qop']}:{target}")


@pytest.mark.parametrize(("algorithm", "expected"), [("MD5", RFC_MD5), ("SHA-256", RFC_SHA256)])
def test_the_checker_reproduces_rfc_7616(algorithm: str, expected: str) -> None:
    params = {
        "algorithm": algorithm,
        "uri": "/dir/index.html",
        "nc": "00000001",
        "cnonce": RFC_CNONCE,
        "qop": "auth",
    }
    answer = digest_response(
        params, user=RFC_USER, password=RFC_PASSWORD, realm=RFC_REALM, nonce=RFC_NONCE
    )
    assert answer == expected


_PARAM = re.compile(r'(\w+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]*))')


def auth_params(value: str) -> dict[str, str]:
    """The parameters of a digest challenge or answer, names in lower case."""
    found: dict[str, str] = {}
    for match in _PARAM.finditer(value.partition(" ")[2]):
        quoted, bare = match.group(2), match.group(3)
        # The first of a name: a later one belongs to another challenge (", Basic realm=").
        found.setdefault(
            match.group(1).lower(), re.sub(r"\\(.)", r"\1", quoted) if quoted else bare
        )
    return found


class DigestCamera:
    """A scripted camera that asks for digest auth with ``challenges`` (one
    ``WWW-Authenticate`` header each, in order) and serves the JPEG to a right answer to
    one of them; ``answers`` holds the parameters of each ``Authorization`` it got."""

    def __init__(
        self, challenges: list[str], *, user: str = "admin", password: str = PASSWORD
    ) -> None:
        self.challenges = challenges
        self.user, self.password = user, password
        self.answers: list[dict[str, str]] = []
        self.offered: dict[str, tuple[str, str]] = {}  # nonce: (realm, algorithm)
        for challenge in challenges:
            params = auth_params(challenge) if challenge.lower().startswith("digest ") else {}
            if "nonce" in params:
                algorithm = (params.get("algorithm") or "MD5").upper()
                self.offered[params["nonce"]] = (params.get("realm", ""), algorithm)
        self.server = ScriptedServer(self._script)

    def __enter__(self) -> DigestCamera:
        self.server.__enter__()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.server.__exit__(kind, exc, tb)

    def client(self, path: str = "/snap.jpg") -> CameraClient:
        port = self.server.port
        return generic(port, path, auth="digest", user=self.user, password=self.password)

    def _script(self, path: str, headers: dict[str, str]) -> tuple[bytes, bool]:
        value = headers.get("authorization", "")
        if value.startswith("Digest "):
            params = auth_params(value)
            self.answers.append(params)
            realm, algorithm = self.offered.get(params.get("nonce", ""), ("", ""))
            expected = (
                digest_response(
                    params,
                    user=self.user,
                    password=self.password,
                    realm=realm,
                    nonce=params["nonce"],
                )
                if algorithm
                else ""
            )
            if (params.get("algorithm") or "MD5").upper() == algorithm and (
                params.get("response") == expected
            ):
                return ok(), False
        offers = "".join(f"WWW-Authenticate: {challenge}\r\n" for challenge in self.challenges)
        return f"HTTP/1.1 401 Unauthorized\r\n{offers}Content-Length: 0\r\n\r\n".encode(), False


@pytest.mark.parametrize("algorithm", ["MD5", "SHA-256"])
def test_digest_answer_matches_rfc_7616(algorithm: str) -> None:
    challenge = f"Digest {RFC_CHALLENGE}, algorithm={algorithm}"
    with DigestCamera([challenge], user=RFC_USER, password=RFC_PASSWORD) as camera:
        with camera.client("/dir/index.html") as client:
            assert client.snapshot() == JPEG
            assert client.snapshot() == JPEG
        first, second = camera.answers
        assert first["algorithm"] == algorithm
        assert first["uri"] == "/dir/index.html"
        assert first["nc"] == "00000001"
        assert first["qop"] == "auth"
        assert first["opaque"] == RFC_OPAQUE
        # The nonce is reused, its count rising: no second challenge.
        assert (second["nonce"], second["nc"]) == (RFC_NONCE, "00000002")
        assert len(camera.server.requests) == 3


@pytest.mark.parametrize("order", [1, -1], ids=["md5 first", "sha-256 first"])
def test_digest_prefers_sha256_and_refuses_what_it_cannot_answer(order: int) -> None:
    md5 = 'Digest realm="cam", qop="auth", nonce="n-md5", algorithm=MD5'
    sha = 'Digest realm="cam", qop="auth", nonce="n-sha", algorithm=SHA-256'
    with DigestCamera([md5, sha][::order]) as camera:
        with camera.client() as client:
            assert client.snapshot() == JPEG
        assert [(a["algorithm"], a["nonce"]) for a in camera.answers] == [("SHA-256", "n-sha")]
    for refused in [
        'Digest realm="cam", nonce="n", qop="auth-int"',
        'Digest realm="cam", nonce="n", algorithm=SHA-512-256',
        'Basic realm="cam"',
    ]:
        with DigestCamera([refused]) as camera, camera.client() as client:
            with pytest.raises(CameraAuthError):
                client.snapshot()
            assert camera.answers == []  # nothing sent that the camera did not ask for
            assert len(camera.server.requests) == 1


def test_several_challenges_in_one_value_quoted_commas_and_qop_order() -> None:
    challenges = [
        'Digest realm="a, \\"b\\"", nonce=abc, qop="auth-int, auth", Basic realm="x"',
        "Negotiate",
    ]
    with DigestCamera(challenges) as camera:
        with camera.client() as client:
            assert client.snapshot() == JPEG  # answered with realm 'a, "b"'
        assert camera.answers[0]["nonce"] == "abc"
        assert camera.answers[0]["qop"] == "auth"


def test_digest_session_and_legacy_forms() -> None:
    with DigestCamera(['Digest realm="r", nonce="n", qop=auth, algorithm=MD5-sess']) as camera:
        with camera.client("/x") as client:
            assert client.snapshot() == JPEG
        assert camera.answers[0]["algorithm"] == "MD5-sess"
    with DigestCamera(['Digest realm="r", nonce="n"']) as camera:  # RFC 2069: no qop
        with camera.client("/x") as client:
            assert client.snapshot() == JPEG
        assert "nc" not in camera.answers[0]
        assert "qop" not in camera.answers[0]


def test_a_challenge_too_large_to_read_is_refused() -> None:
    head = (
        'HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Digest realm="r", nonce="n", qop=auth\r\n'
        f"Content-Length: {MAX_ANSWER_BYTES + 1}\r\n\r\n"
    )
    with ScriptedServer(lambda path, headers: (head.encode(), False)) as server:
        with (
            generic(server.port, "/s", auth="digest") as client,
            pytest.raises(CameraBadImageError, match="answer larger than"),
        ):
            client.snapshot()
        assert len(server.requests) == 1  # not answered, not retried


def test_a_challenge_trickling_its_body_meets_the_deadline() -> None:
    head = (
        'HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Digest realm="r", nonce="n", qop=auth\r\n'
        "Content-Length: 100\r\n\r\n"
    )
    parts = [head.encode(), *[b"x"] * 100]  # a byte every 0.1 s
    with ScriptedServer(lambda path, headers: (parts, False)) as server:
        with (
            generic(server.port, "/s", auth="digest", timeout=0.3) as client,
            pytest.raises(CameraTimeoutError),
        ):
            client.snapshot()
        assert server.parts_sent < 20  # both attempts gave up long before


# -- no redirects, nothing from the environment, pinning ---------------------------------
def test_a_redirect_is_not_followed() -> None:
    moved = b"HTTP/1.1 302 Found\r\nLocation: /elsewhere.jpg\r\nContent-Length: 0\r\n\r\n"
    with ScriptedServer(lambda path, headers: (moved, False)) as server:
        with generic(server.port, "/s") as client, pytest.raises(CameraHTTPError) as caught:
            client.snapshot()
        assert caught.value.status == 302
        assert [path for path, _ in server.requests] == ["/s"]


def test_proxies_and_netrc_from_the_environment_are_ignored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    netrc = tmp_path / "netrc"
    netrc.write_text("machine 127.0.0.1 login someone password other\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    for name in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.setenv(name, "http://127.0.0.1:1")  # nothing listens there
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    with ScriptedServer(lambda path, headers: (ok(), False)) as server:
        with generic(server.port, "/snap.jpg") as client:
            assert client.snapshot() == JPEG
        assert "authorization" not in server.requests[0][1]


def _certificate_for(name: str, folder: Path) -> tuple[Path, Path]:
    """A self-signed certificate for the host ``name`` (its only subject name), and key."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "camera.crt", folder / "camera.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def test_a_pinned_host_keeps_its_name_in_tls_and_the_host_header(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cert, key = _certificate_for("localhost", tmp_path)
    # The trust store the client reads, as ssl.create_default_context() does: this alone.
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    names: list[str | None] = []
    context.sni_callback = lambda sock, name, ctx: names.append(name)
    # "localhost" means 127.0.0.1 (and ::1); the camera answers on 127.0.0.2 only.
    assert ipaddress.ip_address("127.0.0.2") not in {
        ipaddress.ip_address(info[4][0]) for info in socket.getaddrinfo("localhost", 443)
    }
    with ScriptedServer(
        lambda path, headers: (ok(), False), tls=context, host="127.0.0.2"
    ) as server:
        with generic(
            server.port, "/snap.jpg", scheme="https", host="localhost", connect_to=("127.0.0.2",)
        ) as client:
            assert client.snapshot() == JPEG  # the certificate checked against "localhost"
        assert names == ["localhost"]
        assert server.requests[0][1]["host"] == f"localhost:{server.port}"
