"""The daemon's HTTP server over real HTTP: health, metrics, the API and the token."""

from __future__ import annotations

import dataclasses
import http.client
import io
import json
import re
import socket
import threading
import time
from collections.abc import Collection, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from PIL import Image

from pylib.config.settings import ConfigError
from pylib.http import HttpServer, Request, Response, Router, TokenAuth
from pylib.runtime.daemon import Daemon
from snapshot_processor import config
from snapshot_processor.ops.feature import recent_events
from snapshot_processor.ops.recent import EventRecord, RecentEvents
from snapshot_processor.ops.routes import IMAGE_CACHE, Camera, HealthReport, Ops, build_router
from tests.support.broker import Peer, running_app, trigger_body, unique_exchange
from tests.support.daemon import PASSWORD, camera_env, foscam_env, make_settings
from tests.support.ftp import jpeg
from tests.support.net import free_port
from tests.support.tcp_proxy import TcpProxy
from tests.support.wait import wait_until
from tools.camera_simulator import CameraSimulator

TOKEN = "a-token-of-at-least-16-chars"


def call(
    port: int,
    method: str,
    path: str,
    *,
    token: str | None = None,
    headers: dict[str, str] | None = None,
    body: bytes = b"",
) -> tuple[int, dict[str, str], bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        sent = dict(headers or {})
        if token is not None:
            sent["Authorization"] = f"Bearer {token}"
        connection.request(method, path, body=body, headers=sent)
        answer = connection.getresponse()
        return answer.status, {k.lower(): v for k, v in answer.getheaders()}, answer.read()
    finally:
        connection.close()


# --- the server on its own --------------------------------------------------------------
@pytest.fixture
def server() -> Iterator[HttpServer]:
    router = Router()
    router.add("GET", r"/open", lambda r: Response.text("open\n"), access="public")
    router.add("GET", r"/secret", lambda r: Response.text("secret\n"), access="token")
    router.add("POST", r"/change", lambda r: Response.text("changed\n"), access="token")

    def boom(request: Request) -> Response:
        raise RuntimeError("a bug with a secret inside: " + TOKEN)

    router.add("GET", r"/boom", boom, access="public")
    auth = TokenAuth(TOKEN)
    worker = HttpServer(
        "http", threading.Event(), address="127.0.0.1", port=0, router=router, auth=auth
    )
    worker.start()
    try:
        yield worker
    finally:
        assert worker.stop_and_join(5)


def test_the_token_guards_protected_routes(server: HttpServer) -> None:
    port = server.bound_port
    assert call(port, "GET", "/open")[0] == 200
    status, headers, _ = call(port, "GET", "/secret")
    assert status == 401
    assert headers["www-authenticate"].startswith("Bearer")
    assert call(port, "GET", "/secret", token="wrong-token-of-some-length")[0] == 401
    assert call(port, "GET", "/secret", token=TOKEN)[0] == 200
    assert call(port, "POST", "/change")[0] == 401
    assert call(port, "POST", "/change", token=TOKEN)[0] == 200
    # A session cookie only from the login (set by the app's routes); a forged one is nothing.
    forged = {"Cookie": "sp_session=made-up"}
    assert call(port, "GET", "/secret", headers=forged)[0] == 401


def test_sessions_and_cross_site_posts(server: HttpServer) -> None:
    port = server.bound_port
    session = server.auth.login()
    cookie = {"Cookie": f"sp_session={session}"}
    assert call(port, "GET", "/secret", headers=cookie)[0] == 200
    host = f"127.0.0.1:{port}"
    mine = {**cookie, "Origin": f"http://{host}", "Host": host}
    assert call(port, "POST", "/change", headers=mine)[0] == 200
    # Another site's page posting with the browser's cookie is refused.
    theirs = {**cookie, "Origin": "http://evil.example"}
    assert call(port, "POST", "/change", headers=theirs)[0] == 403
    server.auth.logout(session)
    assert call(port, "GET", "/secret", headers=cookie)[0] == 401


def test_unknown_paths_methods_big_bodies_and_bugs(
    server: HttpServer, caplog: pytest.LogCaptureFixture
) -> None:
    port = server.bound_port
    assert call(port, "GET", "/nothing")[0] == 404
    assert call(port, "DELETE", "/open")[0] == 405
    assert call(port, "POST", "/change", token=TOKEN, body=b"x" * 200_000)[0] == 413
    status, _, body = call(port, "GET", "/boom")
    assert status == 500
    assert TOKEN not in body.decode()
    assert "internal error" in body.decode()


def test_a_taken_port_is_a_clear_start_failure() -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        worker = HttpServer(
            "http",
            threading.Event(),
            address="127.0.0.1",
            port=port,
            router=Router(),
            auth=TokenAuth(None),
        )
        with pytest.raises(Exception, match=f"HTTP port 127.0.0.1:{port} cannot be used"):
            worker.start()
        worker.stop_and_join(5)


def test_a_bind_beyond_loopback_needs_a_token(tmp_path: Path) -> None:
    base = {"SECRETS_DIR": str(tmp_path)}
    with pytest.raises(ConfigError, match="HTTP_TOKEN"):
        config.load(env={**base, "HTTP_BIND": "0.0.0.0"})
    with pytest.raises(ConfigError, match="at least 16"):
        config.load(env={**base, "HTTP_TOKEN": "short"})
    assert (
        config.load(env={**base, "HTTP_BIND": "0.0.0.0", "HTTP_TOKEN": TOKEN}).ops.http_port == 8080
    )
    assert config.load(env={**base, "HTTP_BIND": "::1"}).ops.http_bind == "::1"
    assert config.load(env={**base, "HTTP_PORT": "0", "HTTP_BIND": "0.0.0.0"}).ops.http_port == 0


# --- the daemon's routes, against the real broker -----------------------------------------
def json_of(answer: tuple[int, dict[str, str], bytes]) -> Any:
    status, headers, body = answer
    assert headers["content-type"] == "application/json", (status, body)
    return json.loads(body)


def metric(port: int, name: str) -> float:
    _, _, body = call(port, "GET", "/metrics")
    total = 0.0
    for line in body.decode().splitlines():
        if line.startswith(name) and not line.startswith("#"):
            total += float(line.rsplit(" ", 1)[1])
    return total


@pytest.mark.broker
def test_daemon_routes_with_a_token(tmp_path: Path) -> None:
    exchange = unique_exchange()
    port = free_port()
    key = quote("Front Door camera", safe="")
    with CameraSimulator(user="admin", password=PASSWORD) as camera:
        settings = make_settings(
            tmp_path,
            exchange,
            **camera_env(camera.port),
            HTTP_PORT=str(port),
            HTTP_TOKEN=TOKEN,
        )
        peer = Peer(exchange)
        try:
            with running_app(settings):
                health = json_of(call(port, "GET", "/healthz"))
                assert health["status"] == "ok", health
                assert health["broker"] == {"publisher": True, "listener": True}
                assert health["outbox"]["writable"] is True
                assert all(health["threads"].values())
                # Every read of images or events, and every change, needs the token.
                for method, path in [
                    ("GET", "/api/cameras"),
                    ("GET", "/api/events"),
                    ("GET", "/api/bundles"),
                    ("GET", f"/api/cameras/{key}/latest.jpg"),
                    ("POST", f"/api/cameras/{key}/snapshot"),
                ]:
                    assert call(port, method, path)[0] == 401, path
                    assert call(port, method, path, token="x" * 20)[0] == 401, path
                assert call(port, "GET", f"/api/cameras/{key}/latest.jpg", token=TOKEN)[0] == 404
                triggers = metric(port, "triggers_total")
                snapshots = metric(port, "snapshots_total")

                peer.send_trigger(trigger_body("Front Door camera", device_params=None))
                [first] = peer.wait_for_images(1)
                assert wait_until(lambda: metric(port, "snapshots_total") == snapshots + 1)
                assert metric(port, "triggers_total") == triggers + 1

                status, headers, image = call(
                    port, "GET", f"/api/cameras/{key}/latest.jpg", token=TOKEN
                )
                assert status == 200
                assert headers["content-type"] == "image/jpeg"
                # Neither the image nor the page may be framed or sniffed by another site.
                _, page_headers, _ = call(port, "GET", "/", token=TOKEN)
                for answer in (headers, page_headers):
                    assert answer["x-frame-options"] == "DENY"
                    assert "frame-ancestors 'none'" in answer["content-security-policy"]
                    assert answer["x-content-type-options"] == "nosniff"
                    assert answer["referrer-policy"] == "no-referrer"
                assert image == first["inputs"][0]["image"]
                cameras = json_of(call(port, "GET", "/api/cameras", token=TOKEN))["cameras"]
                assert [c["key"] for c in cameras] == ["Front Door camera"]
                assert cameras[0]["last_event"]["event_id"] == first["event_id"]
                assert cameras[0]["last_snapshot"] is not None

                # A snapshot asked for over HTTP goes through the whole chain.
                answer = json_of(call(port, "POST", f"/api/cameras/{key}/snapshot", token=TOKEN))
                event_id = answer["event_id"]
                images = peer.wait_for_images(2)
                assert images[1]["event_id"] == event_id
                assert images[1]["inputs"][0]["device_key"] == "Front Door camera"
                events = json_of(call(port, "GET", "/api/events?limit=5", token=TOKEN))["events"]
                assert events[0]["event_id"] == event_id
                assert "image" not in events[0]
                assert len(events) == 2
                assert call(port, "GET", "/api/events?limit=x", token=TOKEN)[0] == 400
                assert call(port, "POST", "/api/cameras/nope/snapshot", token=TOKEN)[0] == 404
        finally:
            peer.close()
    # The recent events survive a restart.
    recent = recent_events(settings, Daemon("test", shutdown_timeout=5))
    try:
        assert recent.latest(5)[0].event_id == event_id
    finally:
        recent.close()


def concrete_path(pattern: str, key: str) -> str:
    """A path that ``pattern`` (a route's) matches, naming camera ``key`` (or an event)."""
    path = pattern.replace("(?P<key>[^/]+)", quote(key, safe="")).replace("\\.", ".")
    path = path.replace("(?P<id>[0-9A-Za-z_-]{1,64})", "0123abcd")
    assert re.fullmatch(pattern, path), f"a route shape this test does not know: {pattern}"
    return path


@pytest.mark.broker
@pytest.mark.parametrize("token", [None, TOKEN], ids=["no-token", "token"])
def test_a_foreign_host_gets_nothing_from_any_of_the_daemons_routes(
    tmp_path: Path, token: str | None
) -> None:
    exchange = unique_exchange()
    port = free_port()
    with CameraSimulator(user="admin", password=PASSWORD) as camera:
        settings = make_settings(
            tmp_path,
            exchange,
            **camera_env(camera.port),
            HTTP_PORT=str(port),
            **({"HTTP_TOKEN": token} if token else {}),
        )
        with running_app(settings) as app:
            [server] = [w for w in app.workers if isinstance(w, HttpServer)]
            routes = [
                (r.method, concrete_path(r.pattern.pattern, "Front Door camera"), r.access)
                for r in server.router.routes
            ]
            assert len(routes) >= 9
            foreign = {"Host": f"evil.example:{port}"}
            for method, path, access in routes:
                status, _, body = call(port, method, path, headers=foreign)
                if token is None:
                    # The page, health and metrics included: a rebinding page reads nothing.
                    assert status == 403, (method, path, status)
                elif path == "/favicon.ico":
                    assert (status, body) == (204, b"")  # none, and nothing else
                elif access == "public":
                    # The login form (or a redirect to it), and nothing of the cameras.
                    assert status in (200, 303, 401), (method, path, status)
                    assert b'name="token"' in body or status == 303
                    assert b"Front Door" not in body
                else:
                    assert status == 401, (method, path, status)
            if token is not None:
                # The token works under any name: a rebinding page has no token to show.
                assert call(port, "GET", "/api/cameras", token=token, headers=foreign)[0] == 200


@pytest.mark.broker
def test_healthz_turns_503_while_the_broker_is_away(tmp_path: Path) -> None:
    exchange = unique_exchange()
    port = free_port()
    with TcpProxy("127.0.0.1", 5672) as proxy:
        settings = make_settings(
            tmp_path,
            exchange,
            HTTP_PORT=str(port),
            RABBITMQ_URL=f"amqp://guest:guest@127.0.0.1:{proxy.port}/%2F",
        )
        with running_app(settings):
            assert call(port, "GET", "/healthz")[0] == 200
            proxy.cut()

            def unhealthy() -> bool:
                return call(port, "GET", "/healthz")[0] == 503

            assert wait_until(unhealthy, 15)
            report = json_of(call(port, "GET", "/healthz"))
            assert report["status"] == "unhealthy"
            assert any("cannot reach the broker" in line for line in report["problems"])
            proxy.restore()
            assert wait_until(lambda: call(port, "GET", "/healthz")[0] == 200, 30)


def test_a_bad_content_length_is_refused_before_anything_is_read(server: HttpServer) -> None:
    port = server.bound_port
    for length in ("-1", "lots"):
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(
                f"POST /change HTTP/1.1\r\nHost: x\r\nContent-Length: {length}\r\n\r\n".encode()
            )
            answer = sock.recv(4096).decode()
        assert answer.startswith("HTTP/1.1 400"), answer


def test_without_a_token_only_this_machines_own_pages_get_in() -> None:
    router = Router()
    router.add("GET", r"/secret", lambda r: Response.text("secret\n"), access="token")
    router.add("POST", r"/change", lambda r: Response.text("changed\n"), access="token")
    worker = HttpServer(
        "http", threading.Event(), address="127.0.0.1", port=0, router=router, auth=TokenAuth(None)
    )
    worker.start()
    try:
        port = worker.bound_port
        here = f"127.0.0.1:{port}"
        assert call(port, "GET", "/secret")[0] == 200
        assert call(port, "GET", "/secret", headers={"Host": f"localhost:{port}"})[0] == 200
        # A name that resolves here only by a rebinding trick is not this machine's.
        assert call(port, "GET", "/secret", headers={"Host": f"evil.example:{port}"})[0] == 403
        assert call(port, "POST", "/change", headers={"Origin": f"http://{here}"})[0] == 200
        # Another site's page posting from a browser on this machine is refused.
        assert call(port, "POST", "/change", headers={"Origin": "http://evil.example"})[0] == 403
    finally:
        assert worker.stop_and_join(5)


def test_an_idle_keep_alive_connection_does_not_hold_up_the_stop() -> None:
    router = Router()
    router.add("GET", r"/open", lambda r: Response.text("open\n"), access="public")
    worker = HttpServer(
        "http", threading.Event(), address="127.0.0.1", port=0, router=router, auth=TokenAuth(None)
    )
    worker.start()
    connection = http.client.HTTPConnection("127.0.0.1", worker.bound_port, timeout=10)
    try:
        connection.request("GET", "/open")
        assert connection.getresponse().read() == b"open\n"
        # The connection stays open, as a browser's does; the stop must not wait for it.
        assert worker.stop_and_join(5)
    finally:
        connection.close()


@pytest.mark.broker
def test_a_snapshot_over_http_of_a_camera_whose_address_comes_with_triggers(
    tmp_path: Path,
) -> None:
    exchange = unique_exchange()
    port = free_port()
    key = quote("Front Door camera", safe="")
    with CameraSimulator(user="admin", password=PASSWORD) as camera:
        # No OUTPUT_1_ADDRESS: the event processor's triggers say where the camera is.
        settings = make_settings(tmp_path, exchange, **foscam_env(), HTTP_PORT=str(port))
        peer = Peer(exchange)
        try:
            with running_app(settings):
                status, _, body = call(port, "POST", f"/api/cameras/{key}/snapshot")
                assert status == 409
                assert b"address is not known yet" in body
                peer.send_trigger(
                    trigger_body(
                        "Front Door camera",
                        device_params=f"admin:{PASSWORD}@127.0.0.1:{camera.port}",
                    )
                )
                peer.wait_for_images(1)
                answer = json_of(call(port, "POST", f"/api/cameras/{key}/snapshot"))
                [_, second] = peer.wait_for_images(2)
                assert second["event_id"] == answer["event_id"]
        finally:
            peer.close()


# --- the API and page over a router of their own, with recent events made by hand --------
def recorded(event_id: str, camera: str, path: Path, **fields: Any) -> EventRecord:
    event = EventRecord(
        event_id=event_id,
        camera_key=camera,
        device_label=camera.removesuffix(" camera"),
        taken=time.time(),
        source="fetch",
        image_bytes=path.stat().st_size,
        person=False,
        detections=[],
        detection_note=None,
        storage_path=str(path),
        annotated_path=None,
        storage_url=None,
    )
    return dataclasses.replace(event, **fields)


def picture(path: Path, text: str, size: tuple[int, int] = (1280, 720)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(jpeg(text, size))
    return path


@pytest.fixture
def api(tmp_path: Path) -> Iterator[tuple[int, dict[str, Path]]]:
    """The routes over recent events of a fetched camera and one that pushes by FTP; one
    record names a file outside the data root, as a damaged or forged one might."""
    root = tmp_path / "data"
    files = {
        "front": picture(root / "Front Door camera" / "a.jpg", "front"),
        "boxes": picture(root / "Front Door camera" / "a.annotated.jpg", "boxes"),
        "garden": picture(root / "Garden camera" / "b.jpg", "garden", (640, 480)),
        "outside": picture(tmp_path / "elsewhere" / "c.jpg", "not for the page"),
    }
    recent = RecentEvents(root / "recent-events.sqlite3")
    recent.add(
        recorded(
            "a1",
            "Front Door camera",
            files["front"],
            person=True,
            detections=[{"label": "Person", "person": True}],
            annotated_path=str(files["boxes"]),
            storage_url="https://drive.example/a1",
        )
    )
    recent.add(recorded("b1", "Garden camera", files["garden"], source="upload"))
    recent.add(recorded("x1", "Front Door camera", files["outside"]))

    def parked(paths: Collection[str]) -> dict[str, str]:
        return {path: "drive: 403 forbidden" for path in paths if path == str(files["front"])}

    ops = Ops(
        cameras=[
            Camera("Front Door camera", "Front Door", "foscam"),
            Camera("Porch camera", "Porch", "ftp", source="ftp"),
        ],
        health=lambda: HealthReport(True, [], [], {}),
        recent=recent,
        camera_health=dict,
        take_snapshot=lambda key: "asked-1",
        parked_uploads=parked,
        snapshot_seconds=7.5,
    )
    auth = TokenAuth(TOKEN)
    server = HttpServer(
        "http",
        threading.Event(),
        address="127.0.0.1",
        port=0,
        router=build_router(ops, auth),
        auth=auth,
    )
    server.start()
    try:
        yield server.bound_port, files
    finally:
        assert server.stop_and_join(5)
        recent.close()


def test_an_events_image_thumbnail_and_annotated_copy_by_its_id(
    api: tuple[int, dict[str, Path]],
) -> None:
    port, files = api
    image = "/api/events/a1/image"
    assert call(port, "GET", image)[0] == 401
    status, headers, body = call(port, "GET", image, token=TOKEN)
    assert (status, headers["content-type"]) == (200, "image/jpeg")
    assert body == files["front"].read_bytes()
    assert IMAGE_CACHE in headers["cache-control"]
    assert call(port, "GET", image + "?annotated=1", token=TOKEN)[2] == files["boxes"].read_bytes()
    status, _, thumb = call(port, "GET", image + "?annotated=1&size=thumb", token=TOKEN)
    with Image.open(io.BytesIO(thumb)) as small:
        assert (status, small.format, small.size) == (200, "JPEG", (320, 180))
    # Only a file the record names, under the data root; never a path from the request.
    assert call(port, "GET", "/api/events/x1/image", token=TOKEN)[0] == 404
    assert call(port, "GET", "/api/events/nothing/image", token=TOKEN)[0] == 404
    assert call(port, "GET", "/api/events/..%2F..%2Fetc/image", token=TOKEN)[0] == 404
    # The latest of that camera is the record naming a file elsewhere: refused too.
    assert call(port, "GET", "/api/cameras/Front%20Door%20camera/latest.jpg", token=TOKEN)[0] == 404


def test_event_images_are_kept_by_the_browser(api: tuple[int, dict[str, Path]]) -> None:
    port, _ = api
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request(
            "GET", "/api/events/a1/image", headers={"Authorization": f"Bearer {TOKEN}"}
        )
        answer = connection.getresponse()
        assert answer.msg.get_all("Cache-Control") == [IMAGE_CACHE]
    finally:
        connection.close()


def test_a_camera_that_pushes_is_listed_with_its_latest_image(
    api: tuple[int, dict[str, Path]],
) -> None:
    port, files = api
    cameras = json_of(call(port, "GET", "/api/cameras", token=TOKEN))["cameras"]
    # Porch is configured and has sent nothing yet; Garden is known from its images.
    assert [(c["key"], c["source"]) for c in cameras] == [
        ("Front Door camera", "fetch"),
        ("Porch camera", "ftp"),
        ("Garden camera", "ftp"),
    ]
    assert cameras[1]["last_event"] is None
    assert cameras[2]["last_event"]["event_id"] == "b1"
    _, _, page = call(port, "GET", "/", token=TOKEN)
    assert b"pushes by FTP, last image never" in page
    status, headers, body = call(
        port, "GET", "/api/cameras/Garden%20camera/latest.jpg", token=TOKEN
    )
    assert (status, headers["x-event-id"], body) == (200, "b1", files["garden"].read_bytes())
    # Nothing to ask of a camera that pushes; one that is fetched says how long it may take.
    for pushing in ("Garden%20camera", "Porch%20camera"):
        assert call(port, "POST", f"/api/cameras/{pushing}/snapshot", token=TOKEN)[0] == 404
    status, _, body = call(port, "POST", "/api/cameras/Front%20Door%20camera/snapshot", token=TOKEN)
    assert (status, json.loads(body)) == (
        202,
        {"event_id": "asked-1", "camera": "Front Door camera", "answer_within": 7.5},
    )


def test_events_filtered_by_camera_and_person_and_a_parked_upload_said(
    api: tuple[int, dict[str, Path]],
) -> None:
    port, _ = api

    def ids(query: str) -> list[str]:
        found = json_of(call(port, "GET", "/api/events" + query, token=TOKEN))["events"]
        return [event["event_id"] for event in found]

    assert ids("") == ["x1", "b1", "a1"]
    assert ids("?camera=Garden%20camera") == ["b1"]
    assert ids("?person=1") == ["a1"]
    assert ids("?camera=Garden%20camera&person=1") == []
    events = json_of(call(port, "GET", "/api/events", token=TOKEN))["events"]
    assert {e["event_id"]: e["upload_parked"] for e in events} == {
        "x1": None,
        "b1": None,
        "a1": "drive: 403 forbidden",
    }
    assert events[2]["storage_url"] == "https://drive.example/a1"  # kept: the API only adds

    # The page and its refreshed part filter the same way, from the query alone.
    _, _, page = call(port, "GET", "/?person=1", token=TOKEN)
    assert b'<figure class="event" data-event="a1"' in page
    assert b'<figure class="event" data-event="b1"' not in page
    assert b"upload parked: drive: 403 forbidden" in page
    assert b"drive.example/a1" not in page
    _, _, part = call(port, "GET", "/?part=main&camera=Garden%20camera", token=TOKEN)
    assert b'<figure class="event" data-event="b1"' in part
    assert b'<figure class="event" data-event="a1"' not in part
    assert b"<html" not in part


@pytest.mark.broker
def test_a_snapshot_of_a_camera_held_off_by_its_breaker_is_refused_with_its_words(
    tmp_path: Path,
) -> None:
    exchange = unique_exchange()
    port = free_port()
    key = quote("Front Door camera", safe="")
    with CameraSimulator(user="admin", password=PASSWORD) as camera:
        settings = make_settings(
            tmp_path,
            exchange,
            **camera_env(camera.port, "wr0ng"),
            HTTP_PORT=str(port),
            CAMERA_BREAKER_FAILURES="1",
        )
        with running_app(settings) as app:
            # The first request is tried (202) and fails; the breaker then holds the camera off.
            assert call(port, "POST", f"/api/cameras/{key}/snapshot")[0] == 202
            breaker = app.cameras.registry.breaker("Front Door camera")
            assert wait_until(lambda: breaker.retry_in() > 0, 15)
            status, _, body = call(port, "POST", f"/api/cameras/{key}/snapshot")
            # Health names it once: the snapshot stage (when it is asked again), not the
            # prober's "down since" beside it.
            report = app.report()
            lines = [line for line in report.warnings if "'Front Door camera'" in line]
            assert len(lines) == 1, report.warnings
            assert "failing: user name or password refused; retrying in " in lines[0]
    assert status == 503
    said = body.decode()
    assert said.startswith("the camera is down (")
    assert "user name or password refused" in said
    assert "it is asked again in " in said
    assert "wr0ng" not in said
