"""The status page's HTML, rendered without a browser: states, errors, escaping."""

from __future__ import annotations

from snapshot_processor.ops.routes import HealthReport
from snapshot_processor.ops.status_page import main_part


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
    assert "last seen: never" in html
    assert "<script>alert(1)</script>" not in html
    assert "&lt;script&gt;" in html
    assert "camera &#x27;Gate camera&#x27; down: wrong credentials" in html
