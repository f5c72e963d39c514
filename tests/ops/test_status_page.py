"""The status page in a real headless Chromium (Debian's), against the running daemon."""

from __future__ import annotations

import os
import shutil
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.ops.test_routes import TOKEN
from tests.support.broker import Peer, running_app, trigger_body, unique_exchange
from tests.support.daemon import PASSWORD, camera_env, make_settings
from tests.support.net import free_port
from tests.support.paths import CHECKOUT
from tools.camera_simulator import CameraSimulator

CHROMIUM = "/usr/bin/chromium"
SCREENSHOT = CHECKOUT / "docs" / "status-page.png"

playwright = pytest.importorskip("playwright.sync_api")

pytestmark = [
    pytest.mark.broker,
    pytest.mark.browser,
    pytest.mark.skipif(not shutil.which(CHROMIUM), reason="Debian's chromium is not installed"),
]


def cameras_env(port: int) -> dict[str, str]:
    return {
        **camera_env(port, PASSWORD, n=1, location="Front Door"),
        **camera_env(port, PASSWORD, n=2, location="Back Yard"),
    }


def test_log_in_see_every_camera_take_a_snapshot_and_see_its_event(tmp_path: Path) -> None:
    exchange = unique_exchange()
    port = free_port()
    with CameraSimulator(user="admin", password=PASSWORD) as camera:
        settings = make_settings(
            tmp_path, exchange, **cameras_env(camera.port), HTTP_PORT=str(port), HTTP_TOKEN=TOKEN
        )
        peer = Peer(exchange)
        try:
            with running_app(settings), playwright.sync_playwright() as driver:
                for key in ("Front Door camera", "Back Yard camera"):
                    peer.send_trigger(trigger_body(key, device_params=None, label=key[:-7]))
                peer.wait_for_images(2)
                browser = driver.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
                try:
                    page = browser.new_page(viewport={"width": 1100, "height": 900})
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
                        loaded: Any = image.evaluate(
                            "img => img.complete ? img.naturalWidth : "
                            "new Promise(done => img.onload = () => done(img.naturalWidth))"
                        )
                        assert loaded == 640, key
                        badge = page.locator(f'article[data-camera="{key}"] .badge.up')
                        assert badge.inner_text() == "up", key
                    assert page.locator("h2.health").inner_text() == "Daemon healthy"

                    # A snapshot from the page: its event shows up without a reload.
                    page.click('article[data-camera="Back Yard camera"] button[data-snap]')
                    page.wait_for_function(
                        "() => document.getElementById('note').dataset.event !== undefined"
                    )
                    event_id = page.locator("#note").get_attribute("data-event")
                    assert event_id
                    page.wait_for_selector(f'tr[data-event="{event_id}"]', timeout=15_000)
                    row = page.locator(f'tr[data-event="{event_id}"]').inner_text()
                    assert "Back Yard" in row
                    [published] = [
                        image for image in peer.wait_for_images(3) if image["event_id"] == event_id
                    ]
                    assert published["inputs"][0]["device_key"] == "Back Yard camera"
                    assert outside == []  # nothing loaded from anywhere else

                    # A phone's width: the grid folds to one column, nothing runs off.
                    page.set_viewport_size({"width": 390, "height": 844})
                    width = page.evaluate("document.documentElement.scrollWidth")
                    assert width <= 390
                    page.set_viewport_size({"width": 1100, "height": 900})
                    if os.environ.get("UPDATE_SCREENSHOT"):
                        SCREENSHOT.parent.mkdir(exist_ok=True)
                        page.screenshot(path=str(SCREENSHOT), full_page=True)
                    else:
                        page.screenshot(path=str(tmp_path / "status-page.png"), full_page=True)

                    # Logged out, the page asks for the token again.
                    page.click("header button[type=submit]")
                    page.wait_for_selector("input[name=token]")
                finally:
                    browser.close()
        finally:
            peer.close()


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
