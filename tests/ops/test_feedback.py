"""A person's verdict from the status page: ``POST /api/events/<id>/feedback`` over real HTTP
(the token, 200 / 400 / 404), the image landing in the labelled set, the page's buttons,
and one click in a real headless Chromium."""

from __future__ import annotations

import json
import shutil
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from pylib.http import HttpServer, TokenAuth
from snapshot_processor.detection.labelled import Feedback, LabelledSet
from snapshot_processor.ops.recent import RecentEvents
from snapshot_processor.ops.routes import Camera, HealthReport, Ops, build_router
from tests.ops.test_routes import TOKEN, call, json_of, picture, recorded
from tests.support.metrics import sample

CHROMIUM = "/usr/bin/chromium"


@dataclass
class Page:
    port: int
    root: Path
    labelled: LabelledSet
    files: dict[str, Path]


def serve(ops: Ops) -> HttpServer:
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
    return server


def make_ops(recent: RecentEvents, feedback: Feedback | None) -> Ops:
    return Ops(
        cameras=[Camera("Front Door camera", "Front Door", "foscam")],
        health=lambda: HealthReport(True, [], [], {}),
        recent=recent,
        camera_health=dict,
        take_snapshot=lambda key: "asked-1",
        feedback=feedback.source("page") if feedback is not None else None,
    )


@pytest.fixture
def page(tmp_path: Path) -> Iterator[Page]:
    """The routes over two recent events: one with its image (and a copy with boxes drawn),
    one whose image retention already removed."""
    root = tmp_path / "data"
    files = {
        "front": picture(root / "snapshots" / "a.jpg", "front"),
        "boxes": picture(root / "snapshots" / "a.annotated.jpg", "boxes"),
        "gone": picture(root / "snapshots" / "g.jpg", "gone"),
    }
    recent = RecentEvents(root / "recent-events.sqlite3")
    recent.add(
        recorded(
            "a1",
            "Front Door camera",
            files["front"],
            person=True,
            detections=[{"label": "Person", "confidence": 91.0, "person": True}],
            annotated_path=str(files["boxes"]),
            decided_by="onnx",
        )
    )
    recent.add(recorded("g1", "Front Door camera", files["gone"]))
    files["gone"].unlink()
    labelled = LabelledSet(root, 10)
    server = serve(make_ops(recent, Feedback(labelled, recent)))
    try:
        yield Page(server.bound_port, root, labelled, files)
    finally:
        assert server.stop_and_join(5)
        labelled.close()
        recent.close()


def post(port: int, event_id: str, body: object, token: str | None = TOKEN) -> tuple[int, str]:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    status, _, answer = call(
        port,
        "POST",
        f"/api/events/{event_id}/feedback",
        token=token,
        headers={"Content-Type": "application/json"},
        body=raw,
    )
    return status, answer.decode()


def test_a_verdict_over_http_lands_in_the_labelled_set(page: Page) -> None:
    assert post(page.port, "a1", {"verdict": "person"}, token=None)[0] == 401
    assert post(page.port, "a1", {"verdict": "person"}, token="x" * 20)[0] == 401
    assert page.labelled.entries() == []

    before = sample("detection_feedback_total", source="page", verdict="person")
    answer = json_of(
        call(
            page.port,
            "POST",
            "/api/events/a1/feedback",
            token=TOKEN,
            body=json.dumps({"verdict": "person"}).encode(),
        )
    )
    assert answer == {
        "event_id": "a1",
        "verdict": "person",
        "note": "stored: event a1 (Front Door camera) labelled a person",
    }
    assert sample("detection_feedback_total", source="page", verdict="person") == before + 1
    [kept] = page.labelled.entries()
    assert (kept.event_id, kept.verdict, kept.source, kept.decided_by) == (
        "a1",
        "person",
        "page",
        "onnx",
    )
    assert kept.detections == [{"label": "Person", "confidence": 91.0, "person": True}]
    # The camera's image, not the annotated copy, under <data root>/labelled/.
    assert kept.path.read_bytes() == page.files["front"].read_bytes()
    assert kept.path.is_relative_to(page.root / "labelled")

    status, text = post(page.port, "a1", {"verdict": "not_person"})
    assert (status, json.loads(text)["note"]) == (
        200,
        "replaced: event a1 (Front Door camera) labelled not a person",
    )
    assert [e.verdict for e in page.labelled.entries()] == ["not_person"]


@pytest.mark.parametrize(
    ("event_id", "body", "status", "words", "reason"),
    [
        (
            "a1",
            {"verdict": "maybe"},
            400,
            "must be 'person' or 'not_person', not 'maybe'",
            "unknown_verdict",
        ),
        ("a1", b"person", 400, 'the body must be JSON {"verdict": "person"}', "unknown_verdict"),
        (
            "a1",
            {"verdict": 1},
            400,
            'the body must be JSON {"verdict": "person"}',
            "unknown_verdict",
        ),
        (
            "nope",
            {"verdict": "person"},
            404,
            "no event 'nope' among the recent ones",
            "unknown_event",
        ),
        (
            "g1",
            {"verdict": "person"},
            404,
            "the image of event 'g1' is no longer on disk",
            "image_gone",
        ),
    ],
)
def test_a_bad_verdict_is_400_and_an_unknown_event_or_image_404(
    page: Page, event_id: str, body: object, status: int, words: str, reason: str
) -> None:
    before = sample("detection_feedback_refused_total", source="page", reason=reason)
    answer = post(page.port, event_id, body)
    assert answer[0] == status
    assert words in answer[1]
    assert sample("detection_feedback_refused_total", source="page", reason=reason) == before + 1
    assert page.labelled.entries() == []


def test_a_disk_that_fails_is_503_and_counted(page: Page) -> None:
    images = page.root / "labelled" / "images"
    shutil.rmtree(images)
    images.write_text("a file where the folder belongs")
    before = sample("detection_feedback_refused_total", source="page", reason="store_failed")
    status, text = post(page.port, "a1", {"verdict": "person"})
    assert status == 503
    assert text.startswith("the verdict was not kept: the labelled set ")
    assert sample("detection_feedback_refused_total", source="page", reason="store_failed") == (
        before + 1
    )


def test_the_page_offers_the_buttons_on_events_with_an_image(page: Page) -> None:
    _, _, html = call(page.port, "GET", "/", token=TOKEN)
    text = html.decode()
    assert '<button type="button" data-event="a1" data-verdict="person">person</button>' in text
    assert 'data-event="a1" data-verdict="not_person">not a person</button>' in text
    assert 'data-event="g1" data-verdict' not in text  # its image is gone
    _, _, part = call(page.port, "GET", "/?part=main", token=TOKEN)
    assert b'data-event="a1" data-verdict="person"' in part


def test_without_a_labelled_set_no_buttons_and_no_verdicts(tmp_path: Path) -> None:
    root = tmp_path / "data"
    recent = RecentEvents(root / "recent-events.sqlite3")
    recent.add(recorded("a1", "Front Door camera", picture(root / "a.jpg", "front")))
    server = serve(make_ops(recent, None))
    try:
        _, _, html = call(server.bound_port, "GET", "/", token=TOKEN)
        assert b'<figure class="event" data-event="a1"' in html
        assert b"data-verdict=" not in html
        status, text = post(server.bound_port, "a1", {"verdict": "person"})
        assert (status, text) == (404, "no labelled set here: object detection is off\n")
    finally:
        assert server.stop_and_join(5)
        recent.close()
    assert not (root / "labelled").exists()


@pytest.mark.browser
@pytest.mark.skipif(not shutil.which(CHROMIUM), reason="Debian's chromium is not installed")
def test_a_click_on_person_in_the_browser_keeps_the_verdict(page: Page) -> None:
    playwright = pytest.importorskip("playwright.sync_api")
    with playwright.sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            tab = browser.new_page()
            tab.goto(f"http://127.0.0.1:{page.port}/")
            tab.fill("input[name=token]", TOKEN)
            tab.click("button[type=submit]")
            card = tab.locator('figure.event[data-event="a1"]')
            card.wait_for()
            assert tab.locator('figure.event[data-event="g1"] button').count() == 0
            card.locator('button[data-verdict="not_person"]').click()
            tab.wait_for_selector("#note[data-outcome=labelled]", timeout=15_000)
            assert tab.locator("#note").inner_text() == (
                "Verdict stored: event a1 (Front Door camera) labelled not a person."
            )
            pressed = card.locator('button[aria-pressed="true"]')
            assert pressed.inner_text() == "not a person"
            # A refresh redraws the gallery: the verdict given stays shown.
            tab.evaluate("document.getElementById('gallery').dataset.old = 'yes'")
            tab.wait_for_function(
                "() => !document.getElementById('gallery').dataset.old", timeout=15_000
            )
            assert pressed.inner_text() == "not a person"
        finally:
            browser.close()
    [kept] = page.labelled.entries()
    assert (kept.event_id, kept.verdict, kept.source) == ("a1", "not_person", "page")
    assert kept.path.read_bytes() == page.files["front"].read_bytes()
