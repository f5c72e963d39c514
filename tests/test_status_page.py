"""The status page in a real headless Chromium (Debian's), against the running daemon."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.support.broker import Peer, running_app, trigger_body, unique_exchange
from tests.support.daemon import camera_env
from tests.support.net import free_port
from tests.test_http import TOKEN
from tests.test_pipeline import PASSWORD, make_settings
from tools.camera_simulator import CameraSimulator

CHROMIUM = "/usr/bin/chromium"
SCREENSHOT = Path(__file__).resolve().parent.parent / "docs" / "status-page.png"

playwright = pytest.importorskip("playwright.sync_api")

pytestmark = [
    pytest.mark.broker,
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
