"""The status page in a real headless Chromium (Debian's), against the running daemon."""

from __future__ import annotations

import os
import re
import shutil
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from snapshot_processor.ingest.ftp import FtpServerThread
from tests.ops.test_routes import TOKEN
from tests.support.broker import Peer, running_app, trigger_body, unique_exchange
from tests.support.daemon import PASSWORD, camera_env, make_settings
from tests.support.fakes.rekognition import FakeRekognition, label
from tests.support.ftp import connect, jpeg, upload
from tests.support.net import free_port
from tests.support.paths import CHECKOUT
from tests.support.tcp_proxy import TcpProxy
from tools.camera_simulator import CameraSimulator

CHROMIUM = "/usr/bin/chromium"
FTP_PASSWORD = "up load:pw@1"
SCREENSHOT = CHECKOUT / "docs" / "status-page.png"

playwright = pytest.importorskip("playwright.sync_api")

pytestmark = [
    pytest.mark.broker,
    pytest.mark.browser,
    pytest.mark.skipif(not shutil.which(CHROMIUM), reason="Debian's chromium is not installed"),
]


VIEWPORTS = {"desktop": {"width": 1280, "height": 800}, "phone": {"width": 390, "height": 844}}
# Any time on the page: the server's local time, labelled with its zone.
LOCAL_TIME = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d (\S+)$")


def cameras_env(port: int) -> dict[str, str]:
    return {
        **camera_env(port, PASSWORD, n=1, location="Front Door"),
        **camera_env(port, PASSWORD, n=2, location="Back Yard"),
    }


@pytest.fixture
def paris(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The server's time zone for the test: Europe/Paris (CET or CEST, as the date says)."""
    monkeypatch.setenv("TZ", "Europe/Paris")
    time.tzset()
    try:
        yield time.strftime("%Z")
    finally:
        monkeypatch.undo()
        time.tzset()


@pytest.fixture
def rekognition(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeRekognition]:
    with FakeRekognition() as fake:
        # boto3's own configuration: the endpoint and credentials of the outside service.
        monkeypatch.setenv("AWS_ENDPOINT_URL_REKOGNITION", fake.base_url)
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "example-secret-key")
        yield fake


def log_in(page: Any, port: int) -> None:
    page.goto(f"http://127.0.0.1:{port}/")
    page.fill("input[name=token]", TOKEN)
    page.click("button[type=submit]")
    page.wait_for_selector("article.cam")


def width_of(image: Any) -> Any:
    """The natural width of an image once loaded (it is scrolled to first: lazy ones too)."""
    image.scroll_into_view_if_needed()
    return image.evaluate(
        "img => img.complete && img.naturalWidth ? img.naturalWidth : "
        "new Promise(done => img.onload = () => done(img.naturalWidth))"
    )


def after_a_refresh(page: Any) -> None:
    """Wait until the script has replaced the refreshed parts once more."""
    page.evaluate("document.getElementById('gallery').dataset.old = 'yes'")
    page.wait_for_function("() => !document.getElementById('gallery').dataset.old", timeout=15_000)


def fits(page: Any, viewport: dict[str, int]) -> None:
    """Nothing runs off the side: at a phone's width the grid folds to one column."""
    assert page.evaluate("document.documentElement.scrollWidth") <= viewport["width"]


def zones_of(page: Any) -> set[str]:
    stamps = page.locator("time").all_inner_texts()
    assert stamps
    found = [LOCAL_TIME.match(stamp) for stamp in stamps]
    assert all(found), stamps
    return {match[1] for match in found if match}


@pytest.mark.parametrize("viewport", VIEWPORTS.values(), ids=VIEWPORTS.keys())
def test_log_in_see_every_camera_take_a_snapshot_and_see_its_event(
    tmp_path: Path, viewport: dict[str, int], paris: str, rekognition: FakeRekognition
) -> None:
    rekognition.reply_labels([label("Person", 97.0, boxes=[(0.2, 0.2, 0.3, 0.6)])])
    exchange = unique_exchange()
    port = free_port()
    with CameraSimulator(user="admin", password=PASSWORD) as camera:
        settings = make_settings(
            tmp_path,
            exchange,
            **cameras_env(camera.port),
            HTTP_PORT=str(port),
            HTTP_TOKEN=TOKEN,
            OBJECT_DETECTION_ENABLED="true",
            AWS_DEFAULT_REGION="eu-west-1",
            DETECTION_DEDUPE_SECONDS="0",
        )
        peer = Peer(exchange)
        try:
            with running_app(settings), playwright.sync_playwright() as driver:
                for key in ("Front Door camera", "Back Yard camera"):
                    peer.send_trigger(trigger_body(key, device_params=None, label=key[:-7]))
                    peer.wait_for_images(1 if key.startswith("Front") else 2)
                browser = driver.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
                try:
                    page = browser.new_page(viewport=viewport)
                    outside: list[str] = []
                    page.on(
                        "request",
                        lambda request: (
                            outside.append(request.url)
                            if not request.url.startswith(f"http://127.0.0.1:{port}/")
                            else None
                        ),
                    )
                    page.goto(f"http://127.0.0.1:{port}/")
                    # Not logged in: the token form, and nothing of the cameras.
                    assert page.locator("input[name=token]").is_visible()
                    assert page.locator("article.cam").count() == 0
                    page.fill("input[name=token]", "not-the-token-at-all")
                    page.click("button[type=submit]")
                    assert "That token is not right" in page.content()
                    page.fill("input[name=token]", TOKEN)
                    page.click("button[type=submit]")
                    page.wait_for_selector("article.cam")

                    cards = page.locator("article.cam")
                    assert cards.count() == 2
                    for key in ("Front Door camera", "Back Yard camera"):
                        image = page.locator(f'article[data-camera="{key}"] img')
                        image.wait_for()
                        assert width_of(image) == 640, key
                        badge = page.locator(f'article[data-camera="{key}"] .badge.up')
                        assert badge.inner_text() == "up", key
                    assert page.locator("h2.health").inner_text() == "All well"
                    assert page.locator(".state li").count() == 0

                    # The gallery: a thumbnail per event, the person found on the first.
                    gallery = page.locator("figure.event")
                    assert gallery.count() == 2
                    for index in range(2):
                        assert width_of(gallery.nth(index).locator("img")) == 320
                    front = page.locator('figure.event[data-camera="Front Door camera"]')
                    assert front.locator(".badge.person").inner_text() == "person"
                    assert "Person" in front.inner_text()

                    # The Bundles: the sensor event of those triggers, sealed once its
                    # manifest is written (no cloud storage here, so nothing off-site).
                    bundles = page.locator("section.bundles")
                    sealed = bundles.locator('tr[data-state="sealed"]').first
                    sealed.wait_for(timeout=20_000)
                    assert sealed.locator(".badge.sealed").inner_text() == "sealed"
                    assert sealed.locator('td[data-label="Sensor"]').inner_text() == "hall pir"
                    assert sealed.locator('td[data-label="Off-site"]').inner_text() == (
                        "kept here only"
                    )
                    assert re.search(r"Front Door \d+/\d+", bundles.inner_text())
                    assert zones_of(page) == {paris}

                    # Filters, by camera and by person: a plain form, kept by the refresh.
                    page.select_option("select[name=camera]", "Back Yard camera")
                    page.click(".filters button[type=submit]")
                    page.wait_for_url("**/?camera=Back+Yard+camera")
                    after_a_refresh(page)
                    assert gallery.count() == 1
                    assert gallery.get_attribute("data-camera") == "Back Yard camera"
                    page.select_option("select[name=camera]", "")
                    page.check("input[name=person]")
                    page.click(".filters button[type=submit]")
                    page.wait_for_url("**/?camera=&person=1")
                    after_a_refresh(page)
                    assert gallery.count() == 1
                    assert gallery.get_attribute("data-camera") == "Front Door camera"
                    assert page.locator("input[name=person]").is_checked()
                    page.goto(f"http://127.0.0.1:{port}/")

                    # A snapshot from the page: its event shows up without a reload, and
                    # the note stays until the next click, refreshes or not.
                    page.click('article[data-camera="Back Yard camera"] button[data-snap]')
                    page.wait_for_function(
                        "() => document.getElementById('note').dataset.event !== undefined"
                    )
                    note = page.locator("#note")
                    event_id = note.get_attribute("data-event")
                    assert event_id
                    page.wait_for_selector("#note[data-outcome=taken]", timeout=20_000)
                    assert note.inner_text().startswith("Snapshot taken: Back Yard, event")
                    card = page.locator(f'figure.event[data-event="{event_id}"]')
                    card.wait_for(timeout=15_000)
                    assert "Back Yard" in card.inner_text()
                    after_a_refresh(page)
                    assert note.inner_text().startswith("Snapshot taken: Back Yard, event")
                    [published] = [
                        image for image in peer.wait_for_images(3) if image["event_id"] == event_id
                    ]
                    assert published["inputs"][0]["device_key"] == "Back Yard camera"
                    assert zones_of(page) == {paris}
                    fits(page, viewport)
                    if viewport == VIEWPORTS["desktop"]:
                        shot = SCREENSHOT if os.environ.get("UPDATE_SCREENSHOT") else None
                        shot = shot or tmp_path / "status-page.png"
                        shot.parent.mkdir(exist_ok=True)
                        page.screenshot(path=str(shot), full_page=True)

                    # Click-through: the whole image, as the camera took it.
                    card.locator("a").first.click()
                    page.wait_for_url(f"**/api/events/{event_id}/image?annotated=1")
                    assert page.evaluate("document.images[0].naturalWidth") == 640
                    page.go_back()
                    page.wait_for_selector("article.cam")
                    assert outside == []  # nothing loaded from anywhere else

                    # Logged out, the page asks for the token again.
                    page.click("header button[type=submit]")
                    page.wait_for_selector("input[name=token]")
                finally:
                    browser.close()
        finally:
            peer.close()


@pytest.mark.parametrize("viewport", VIEWPORTS.values(), ids=VIEWPORTS.keys())
def test_a_pushing_camera_a_wrong_password_and_the_three_states(
    tmp_path: Path, viewport: dict[str, int], paris: str
) -> None:
    port = free_port()
    with (
        CameraSimulator(user="admin", password=PASSWORD) as camera,
        TcpProxy("127.0.0.1", 5672) as broker,
    ):
        settings = make_settings(
            tmp_path,
            unique_exchange(),
            **camera_env(camera.port, PASSWORD, location="Front Door"),
            INPUT_2_LOCATION="Garden",
            INPUT_2_TYPE="camera",
            FTP_PASS=FTP_PASSWORD,
            FTP_PORT="0",
            FTP_LISTEN_ADDRESS="127.0.0.1",
            HTTP_PORT=str(port),
            HTTP_TOKEN=TOKEN,
            RABBITMQ_URL=f"amqp://guest:guest@127.0.0.1:{broker.port}/%2F",
        )
        with running_app(settings) as app, playwright.sync_playwright() as driver:
            ftp = next(w for w in app.workers if isinstance(w, FtpServerThread))
            assert ftp.ready.wait(5)
            assert ftp.bound is not None
            browser = driver.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            try:
                page = browser.new_page(viewport=viewport)
                log_in(page, port)
                state = page.locator("h2.health")
                assert state.inner_text() == "All well"

                # A camera that pushes by FTP: its card, its image, no button.
                garden = page.locator('article[data-camera="Garden camera"]')
                client = connect(ftp.bound[1], "camera", FTP_PASSWORD)
                try:
                    upload(client, "/upload/garden/snap.jpg", jpeg("garden"))
                finally:
                    client.quit()
                garden.locator("img").wait_for(timeout=20_000)
                assert width_of(garden.locator("img")) == 320
                assert garden.locator(".badge.push").inner_text() == "FTP"
                assert "pushes by FTP, last image 20" in garden.inner_text()
                assert garden.locator("button").count() == 0
                assert state.inner_text() == "All well"

                # The camera's password changed on the camera: the click gets its real answer.
                camera.password = "changed on the camera"
                page.click('article[data-camera="Front Door camera"] button[data-snap]')
                note = page.locator("#note")
                page.wait_for_selector("#note[data-outcome=failed]", timeout=20_000)
                error = app.cameras.prober.status()["Front Door camera"].last_error
                assert error
                assert "wrong user name or password" in error
                assert note.inner_text() == f"Snapshot of Front Door failed: {error}"

                # Degraded, naming the camera; its whole error on demand, open across refreshes.
                page.wait_for_function(
                    "() => document.querySelector('h2.health').textContent === 'Degraded'"
                )
                assert "'Front Door camera' down since" in page.locator(".state").inner_text()
                front = page.locator('article[data-camera="Front Door camera"]')
                assert front.locator(".badge.down").inner_text() == "down"
                details = front.locator("details.error")
                assert not details.locator("pre").is_visible()
                details.locator("summary").click()
                assert details.locator("pre").inner_text() == error
                after_a_refresh(page)
                assert details.locator("pre").is_visible()
                assert note.inner_text() == f"Snapshot of Front Door failed: {error}"
                assert zones_of(page) == {paris}
                fits(page, viewport)
                page.screenshot(path=str(tmp_path / "degraded.png"), full_page=True)

                # The broker away: down, saying why.
                broker.cut()
                page.wait_for_function(
                    "() => document.querySelector('h2.health').textContent === 'Down'",
                    timeout=20_000,
                )
                assert "cannot reach the broker" in page.locator(".state").inner_text()
                assert page.locator(".state li").count() >= 2  # the camera is still named
                broker.restore()
                page.wait_for_function(
                    "() => document.querySelector('h2.health').textContent !== 'Down'",
                    timeout=30_000,
                )
            finally:
                browser.close()


class AttackerSite:
    """Another site's pages, on another loopback port: a frame of ours and one of its own."""

    def __init__(self, target: str) -> None:
        pages = {
            "/": f'<iframe id="ours" src="{target}"></iframe>'
            '<iframe id="theirs" src="/inner"></iframe>',
            "/inner": '<p id="inner">framed</p>',
        }

        class Pages(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = pages.get(self.path, "").encode()
                self.send_response(200 if body else 404)
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Pages)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.1,))

    def __enter__(self) -> AttackerSite:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.thread.join()
        self.server.server_close()


def test_another_site_can_neither_frame_the_page_nor_read_it_by_rebinding(tmp_path: Path) -> None:
    exchange = unique_exchange()
    port = free_port()
    with CameraSimulator(user="admin", password=PASSWORD) as camera:
        # No token: the page is open to this machine, the case a hostile site aims at.
        settings = make_settings(
            tmp_path, exchange, **cameras_env(camera.port), HTTP_PORT=str(port)
        )
        with (
            running_app(settings),
            AttackerSite(f"http://127.0.0.1:{port}/") as attacker,
            playwright.sync_playwright() as driver,
        ):
            browser = driver.chromium.launch(
                executable_path=CHROMIUM,
                # evil.example resolves to this machine, as after a DNS rebinding.
                args=[
                    "--no-sandbox",
                    "--host-resolver-rules=MAP evil.example 127.0.0.1",
                    # Chromium itself now keeps a public page from loopback; Firefox and
                    # Safari do not, so its guard is off here to test ours.
                    "--disable-features=LocalNetworkAccessChecks,"
                    "PrivateNetworkAccessRespectPreflightResults",
                ],
            )
            try:
                page = browser.new_page()
                page.goto(attacker.url)
                # The attacker's own frame loads: frames work here.
                assert page.frame_locator("#theirs").locator("#inner").inner_text() == "framed"
                [ours] = [
                    f
                    for f in page.frames
                    if f.url.startswith(f"http://127.0.0.1:{port}")
                    or f.url.startswith("chrome-error:")
                ]
                ours.wait_for_load_state()
                # Chromium puts its error page where a frame was refused.
                assert ours.url == "chrome-error://chromewebdata/", ours.url
                assert page.frame_locator("#ours").locator("h2.health").count() == 0

                # A page of evil.example:<port> (the attacker's, served before its name
                # was pointed here), whose script then asks our server under that name.
                page.route(
                    f"http://evil.example:{port}/attack",
                    lambda route: route.fulfill(content_type="text/html", body="<p>hi</p>"),
                )
                page.goto(f"http://evil.example:{port}/attack")
                read = page.evaluate(
                    "async () => { const a = await fetch('/?part=main');"
                    " return [a.status, await a.text()]; }"
                )
                assert read[0] == 403, read
                assert "Front Door" not in read[1]
            finally:
                browser.close()
