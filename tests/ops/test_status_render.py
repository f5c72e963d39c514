"""The status page's HTML, rendered without a browser: states, errors, escaping."""

from __future__ import annotations

import base64
import hashlib
import re
import time
from html import escape
from pathlib import Path
from typing import Any

import pytest

from snapshot_processor.ops import status_page as status_page_module
from snapshot_processor.ops.routes import HealthReport
from snapshot_processor.ops.status_page import (
    CONTENT_SECURITY_POLICY,
    PERSON_BADGE,
    Bundles,
    local_time,
    localised,
    main_part,
    status_page,
    verdict,
)


def test_a_camera_down_shows_why_and_outside_text_is_escaped() -> None:
    cameras = [
        {
            "key": "Gate camera",
            "label": "<script>alert(1)</script>",
            "vendor": "foscam",
            "up": False,
            "health": {"last_error": "HTTP 401 Unauthorized: user name or password refused"},
            "last_seen": None,
            "last_snapshot": None,
            "last_event": None,
        }
    ]
    health = HealthReport(True, [], ["camera 'Gate camera' down: wrong credentials"], {})
    html = main_part(cameras, [], health)
    assert '<span class="badge down">down</span>' in html
    assert "user name or password refused" in html
    assert "last answered: never" in html
    assert "<script>alert(1)</script>" not in html
    assert "&lt;script&gt;" in html
    assert "camera &#x27;Gate camera&#x27; down: wrong credentials" in html


def camera(key: str = "Garage camera", **fields: Any) -> dict[str, Any]:
    """A camera as routes.camera_list gives it: up, no snapshot yet."""
    return {
        "key": key,
        "label": key.removesuffix(" camera"),
        "vendor": "foscam",
        "source": "fetch",
        "up": True,
        "health": None,
        "last_seen": None,
        "last_snapshot": None,
        "last_event": None,
        **fields,
    }


def event(event_id: str = "e1", **fields: Any) -> dict[str, Any]:
    """An event as routes.event_list gives it."""
    return {
        "event_id": event_id,
        "camera_key": "Garage camera",
        "device_label": "Garage",
        "taken": 1_700_000_000.0,
        "source": "fetch",
        "image_bytes": 1000,
        "person": False,
        "detections": [],
        "detection_note": None,
        "storage_path": "/data/x.jpg",
        "annotated_path": None,
        "storage_url": None,
        "upload_parked": None,
        **fields,
    }


def headline(html: str) -> str:
    found = re.search(r'<h2 class="health (\w+)">([^<]*)</h2><ul>(.*?)</ul>', html)
    assert found, html
    return f"{found[1]}: {found[2]}: {found[3]}"


def test_the_three_states_name_what_is_wrong() -> None:
    well = HealthReport(True, [], [], {})
    assert headline(main_part([camera()], [], well)) == "good: All well: "

    down = camera(up=False, health={"reason": "timeout", "last_error": "timed out after 2 s"})
    assert (
        headline(main_part([camera("Front camera"), down], [], well))
        == "degraded: Degraded: <li>Garage camera down: timeout</li>"
    )
    # A warning alone degrades it too; a camera a warning names is not named twice.
    named = HealthReport(True, [], ["camera 'Garage camera' failing: 401; retrying in 30 s"], {})
    assert headline(main_part([down], [], named)) == (
        "degraded: Degraded: <li>camera &#x27;Garage camera&#x27; failing: 401; retrying in 30 s</li>"
    )
    broken = HealthReport(False, ["cannot reach the broker"], ["disk nearly full"], {})
    assert headline(main_part([down], [], broken)) == (
        "bad: Down: <li>cannot reach the broker</li><li>disk nearly full</li>"
        "<li>Garage camera down: timeout</li>"
    )
    assert verdict([], broken)[0] == "Down"


def test_a_long_error_is_whole_on_demand_and_escaped() -> None:
    error = "HTTP 500 from the camera: " + "<b>stack</b> line\n" * 40 + "THE END"
    down = camera(up=False, health={"reason": "bad answer", "last_error": error})
    html = main_part([down], [], HealthReport(True, [], [], {}))
    [details] = re.findall(r'<details class="error".*?</details>', html, re.S)
    assert 'data-id="error Garage camera"' in details  # kept open across refreshes
    assert "<summary>down: bad answer (the whole error)</summary>" in details
    assert f"<pre>{escape(error)}</pre>" in details
    assert "THE END" in details
    assert "<b>" not in html


def test_a_camera_that_pushes_by_ftp_shows_its_latest_image_and_no_button() -> None:
    pushed = camera(
        "Garden camera",
        vendor="ftp",
        source="ftp",
        up=None,
        last_snapshot=time.time() - 30,
        last_event=event("ftp1", camera_key="Garden camera", source="upload"),
    )
    html = main_part([pushed], [], HealthReport(True, [], [], {}))
    assert '<span class="badge push">FTP</span>' in html
    assert "pushes by FTP, last image <time" in html
    assert 'src="/api/cameras/Garden%20camera/latest.jpg?annotated=1&amp;e=ftp1"' in html
    assert "data-snap" not in html  # nothing to ask: it sends its images itself
    assert headline(html).startswith("good: All well")


def test_times_are_local_with_their_zone_everywhere(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TZ", "Asia/Tokyo")
    time.tzset()
    try:
        when = 1_700_000_000.0  # 2023-11-14 22:13:20 UTC
        assert local_time(when) == "2023-11-15 07:13:20 JST"
        assert localised("camera 'x' down since 2023-11-14T22:13:20Z: timeout") == (
            "camera 'x' down since 2023-11-15 07:13:20 JST: timeout"
        )
        warned = HealthReport(True, [], ["camera 'x' down since 2023-11-14T22:13:20Z: timeout"], {})
        down = camera(up=False, health={"reason": "timeout"}, last_seen=when, last_snapshot=when)
        page = status_page([down], [event(taken=when)], warned)
        assert "since 2023-11-15 07:13:20 JST: timeout" in page
        stamps = re.findall(r"<time datetime=\"([^\"]+)\">([^<]+)</time>", page)
        assert len(stamps) == 3  # the card's latest and last answered, the event's
        assert set(stamps) == {("2023-11-15T07:13:20+0900", "2023-11-15 07:13:20 JST")}
        assert "T22:13:20Z" not in page
    finally:
        monkeypatch.undo()
        time.tzset()


def test_the_gallery_links_each_event_to_its_image_and_off_site_copy() -> None:
    events = [
        event(
            "p1",
            person=True,
            detections=[{"label": "Person"}, {"label": "<Car>"}],
            storage_url="https://drive.example/folder?id=1&x=<2>",
        ),
        event("p2", upload_parked="drive: 403 <forbidden>", storage_url="https://drive.example/2"),
        event("p3", storage_url="javascript:alert(1)", detection_note="skipped: budget"),
    ]
    html = main_part([camera()], events, HealthReport(True, [], [], {}))
    first, second, third = re.findall(r'<figure class="event".*?</figure>', html, re.S)
    assert '<a href="/api/events/p1/image?annotated=1">' in first
    assert 'src="/api/events/p1/image?annotated=1&amp;size=thumb"' in first
    assert PERSON_BADGE in first
    assert "Person, &lt;Car&gt;" in first
    assert 'href="https://drive.example/folder?id=1&amp;x=&lt;2&gt;"' in first
    assert "upload parked: drive: 403 &lt;forbidden&gt;" in second
    assert "drive.example/2" not in second  # it would link to nothing
    assert "javascript:" not in third  # a link is only ever http(s)
    assert "detection: skipped: budget" in third
    assert PERSON_BADGE not in second + third


def test_the_filters_are_a_plain_form_that_keeps_its_choice() -> None:
    cameras = [camera("Garage camera"), camera('Shed "B" camera')]
    health = HealthReport(True, [], [], {})
    page = status_page(cameras, [], health, camera='Shed "B" camera', person=True)
    [form] = re.findall(r'<form class="filters" method="get" action="/">.*?</form>', page, re.S)
    assert '<option value="Shed &quot;B&quot; camera" selected>Shed &quot;B&quot;</option>' in form
    assert '<option value="Garage camera">Garage</option>' in form
    assert '<input type="checkbox" name="person" value="1" checked>' in form
    assert "No event matches these filters." in page
    assert "No event yet." in main_part(cameras, [], health)
    # The note of the snapshot button is outside the parts the script replaces.
    assert page.index('id="note"') < page.index('<div id="live">')
    assert 'id="note"' not in main_part(cameras, [], health)


def test_the_page_runs_only_its_own_style_and_script_by_digest() -> None:
    page = status_page([camera()], [event()], HealthReport(True, [], [], {}))
    static = Path(status_page_module.__file__).parent / "static"
    for kind, name in (("style", "status.css"), ("script", "status.js")):
        text = (static / name).read_text(encoding="utf-8")
        assert f"<{kind}>{text}</{kind}>" in page
        digest = base64.b64encode(hashlib.sha256(text.encode()).digest()).decode()
        assert f"{kind}-src 'sha256-{digest}'" in CONTENT_SECURITY_POLICY
    assert page.count("<script") == 1
    assert page.count("<style") == 1
    assert not re.search(r"<[^>]*\s(style|on\w+)=", page)  # no inline style or handler
    assert not re.search(r"(src|href)=\"(https?:)?//", page)  # nothing from outside


def test_log_out_shows_only_where_there_is_a_token_to_log_out_of() -> None:
    health = HealthReport(True, [], [], {})
    logout = '<form method="post" action="/logout">'
    assert logout in status_page([camera()], [], health)
    assert logout not in status_page([camera()], [], health, logged_in=False)


def test_the_headline_names_a_camera_once_and_survives_a_time_that_is_none() -> None:
    down = camera(up=False, health={"reason": "timeout", "last_error": "timed out"})
    held = "camera 'Garage camera' failing: timed out; retrying in 30 s"
    odd = "upload refused: bad date 2024-02-30T00:00:00Z in the answer"
    state, said = verdict([down], HealthReport(True, [], [held, odd], {}))
    assert state == "Degraded"
    assert said == [held, odd]  # the camera named once, the odd time left as it is


def bundle(bundle_id: str = "b1", **fields: Any) -> dict[str, Any]:
    """A bundle as /api/bundles gives it: sealed, one camera, copied off-site."""
    return {
        "bundle_id": bundle_id,
        "sensor": "hall pir",
        "opened": "2023-11-14T22:13:20.000Z",
        "state": "sealed",
        "why_not_sealed": None,
        "complete_by": "all cameras",
        "cameras": [
            {"key": "yard", "label": "Yard", "frames_asked": 2, "frames_taken": 2, "failure": None}
        ],
        "frames": 2,
        "failed": 0,
        "offsite_seconds": 0.42,
        "sealed": "2023-11-14T22:13:25.000Z",
        "storage_path": "/data/bundles/2023/11/14/b1",
        "best_event_id": "e1",
        **fields,
    }


def test_bundles_show_state_why_not_sealed_and_time_to_off_site(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TZ", "Asia/Tokyo")
    time.tzset()
    try:
        shown = [
            bundle(
                "b2",
                sensor="<b>gate</b>",
                state="uploading",
                why_not_sealed="1 upload(s) to s3 still to verify; parked: s3: 403 <denied>",
                cameras=[
                    {
                        "key": "door",
                        "label": "Door",
                        "frames_asked": 2,
                        "frames_taken": 1,
                        "failure": "snapshot 2 of 2: camera answered 503",
                    }
                ],
                frames=1,
                failed=1,
                offsite_seconds=None,
            ),
            bundle("b1"),
            bundle("b0", offsite_seconds=None),
        ]
        health = HealthReport(True, [], [], {})
        page = status_page([camera()], [], health, bundles=Bundles(shown))
    finally:
        monkeypatch.undo()
        time.tzset()
    uploading, sealed, here = re.findall(r"<tr data-bundle=.*?</tr>", page, re.S)
    assert uploading.startswith('<tr data-bundle="b2" data-state="uploading">')
    assert '<span class="badge uploading">uploading</span>' in uploading
    assert "parked: s3: 403 &lt;denied&gt;" in uploading
    assert "&lt;b&gt;gate&lt;/b&gt;" in uploading
    assert '<div class="parked">Door 1/2: snapshot 2 of 2: camera answered 503</div>' in uploading
    assert "1 (1 camera(s) failed)" in uploading
    assert '<td data-label="Off-site">not yet</td>' in uploading
    assert "2023-11-15 07:13:20 JST" in sealed  # the server's local time, as everywhere
    assert '<td data-label="Off-site">after 0.42 s</td>' in sealed
    assert '<td data-label="Off-site">kept here only</td>' in here
    assert "<h2>Bundles</h2>" in page
    assert not re.search(r"<[^>]*\s(style|on\w+)=", page)


def test_the_bundles_part_refreshes_and_says_when_it_cannot_be_read() -> None:
    health = HealthReport(True, [], [], {})
    assert 'id="bundles"' not in main_part([camera()], [], health)  # a daemon without bundles
    assert '<div id="bundles"><p class="muted">No bundle yet.</p></div>' in main_part(
        [camera()], [], health, bundles=Bundles([])
    )
    broken = main_part(
        [camera()], [], health, bundles=Bundles([], "the bundles cannot be read now: <closed>")
    )
    assert '<p class="error">the bundles cannot be read now: &lt;closed&gt;</p>' in broken
