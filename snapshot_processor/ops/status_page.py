"""The status page: plain server-rendered HTML; its style and script sit in ``static/`` and
nothing loads from outside. The script refreshes the parts ``/?part=main`` renders (each
with an id). Every value from outside is escaped; times are the server's own (TZ), labelled."""

from __future__ import annotations

import base64
import calendar
import hashlib
import html
import re
import time
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

if TYPE_CHECKING:
    from snapshot_processor.ops.routes import HealthReport

REFRESH_SECONDS = 5
PERSON_BADGE = '<span class="badge person">person</span> '
_STATIC = Path(__file__).parent / "static"
_STYLE = (_STATIC / "status.css").read_text(encoding="utf-8")
_SCRIPT = (_STATIC / "status.js").read_text(encoding="utf-8")
_ISO_UTC = re.compile(r"\b(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)Z")
Shown = Mapping[str, Any]  # a camera, an event or a bundle, as the API gives it


@dataclass(frozen=True)
class Bundles:
    """The newest bundles as ``/api/bundles`` gives them, or why they cannot be read now."""

    shown: Sequence[Shown]
    error: str | None = None


def _digest(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


# The page's own style and script by their digests: nothing else runs, nothing loads from
# elsewhere, and no other site may frame it.
CONTENT_SECURITY_POLICY = (
    f"default-src 'none'; style-src {_digest(_STYLE)}; script-src {_digest(_SCRIPT)}; "
    "img-src 'self'; connect-src 'self'; form-action 'self'; base-uri 'none'; "
    "frame-ancestors 'none'"
)


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def local_time(when: float) -> str:
    """Unix seconds as the server's local time with its zone: ``2026-12-07 15:04:05 CET``."""
    return time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(when))


def localised(text: str) -> str:
    """``text`` with each ISO-8601 UTC time in it (``2026-12-07T14:04:05Z``) as local time."""

    def local(found: re.Match[str]) -> str:
        try:
            return local_time(calendar.timegm(time.strptime(found[1], "%Y-%m-%dT%H:%M:%S")))
        except ValueError:  # shaped like a time, but none (an outside error's text)
            return found[0]

    return _ISO_UTC.sub(local, text)


def _when(taken: float | None, now: float) -> str:
    if taken is None:
        return "never"
    seconds = max(0.0, now - taken)
    ago = (
        f"{seconds:.0f} s"
        if seconds < 90
        else f"{seconds / 60:.0f} min"
        if seconds < 5400
        else f"{seconds / 3600:.0f} h"
    )
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(taken))
    return f'<time datetime="{stamp}">{_e(local_time(taken))}</time> ({ago} ago)'


def verdict(cameras: Sequence[Shown], health: HealthReport) -> tuple[str, list[str]]:
    """The headline, ``All well``, ``Degraded`` or ``Down``, and each thing it is about:
    problems and warnings, and every camera down that no warning names already."""
    said = [localised(line) for line in [*health.problems, *health.warnings]]
    for camera in cameras:
        if camera["up"] is False and not any(f"'{camera['key']}'" in line for line in said):
            status = camera.get("health") or {}
            said.append(f"{camera['key']} down: {status.get('reason') or 'no answer'}")
    if not health.ok:
        return "Down", said
    return ("Degraded" if said else "All well"), said


def _camera_card(camera: Shown, now: float) -> str:
    key, label, up, event = camera["key"], camera["label"], camera["up"], camera["last_event"]
    pushed = camera.get("source") == "ftp"
    state = "push" if pushed else "unknown" if up is None else "up" if up else "down"
    error = (camera.get("health") or {}).get("last_error") if up is False else None
    image = (
        f'<img alt="latest snapshot of {_e(label)}" data-event="{_e(event["event_id"])}" '
        f'src="/api/cameras/{_e(quote(key, safe=""))}/latest.jpg?annotated=1&amp;e={_e(event["event_id"])}">'
        if event
        else '<div class="none">no snapshot yet</div>'
    )
    parts = [
        f'<article class="cam" data-camera="{_e(key)}">{image}<div class="body"><h2>{_e(label)} '
        f'<span class="badge {state}">{"FTP" if pushed else state}</span></h2><div class="muted">'
        f"{'pushes by FTP, last image' if pushed else 'latest:'} {_when(camera['last_snapshot'], now)}</div>"
    ]
    if event:
        badge = PERSON_BADGE if event["person"] else ""
        parts.append(f"<div>{badge}<span class='muted'>{_e(_found(event))}</span></div>")
    if error:  # the whole text on demand, never cut
        reason = (camera.get("health") or {}).get("reason") or "error"
        parts.append(
            f'<details class="error" data-id="error {_e(key)}"><summary>down: {_e(reason)} '
            f"(the whole error)</summary><pre>{_e(error)}</pre></details>"
        )
    if up is False:
        parts.append(f'<div class="muted">last answered: {_when(camera["last_seen"], now)}</div>')
    if not pushed:
        parts.append(
            f'<button type="button" data-snap="{_e(key)}" data-label="{_e(label)}">Take a snapshot</button>'
        )
    return "".join(parts) + "</div></article>"


def _found(event: Shown) -> str:
    if event.get("detection_note"):
        return f"detection: {event['detection_note']}"
    return ", ".join(str(d.get("label")) for d in event["detections"]) or "nothing detected"


def _verdict_buttons(event: Shown) -> str:
    """A person's verdict on the event, for the labelled set detection is measured on."""
    said = f'data-event="{_e(event["event_id"])}"'
    return (
        f'<span class="verdict" role="group" aria-label="Is there a person?">'
        f'<button type="button" {said} data-verdict="person">person</button> '
        f'<button type="button" {said} data-verdict="not_person">not a person</button></span>'
    )


def _event_card(event: Shown, now: float, labelable: bool = False) -> str:
    full = f"/api/events/{quote(event['event_id'], safe='')}/image?annotated=1"
    url, parked = event.get("storage_url"), event.get("upload_parked")
    if parked is not None:
        offsite = f'<span class="parked">upload parked: {_e(parked)}</span>'
    elif isinstance(url, str) and url.startswith(("https://", "http://")):
        offsite = f'<a href="{_e(url)}" rel="noopener noreferrer" target="_blank">off-site copy</a>'
    else:
        offsite = ""
    return (
        f'<figure class="event" data-event="{_e(event["event_id"])}" data-camera="{_e(event["camera_key"])}">'
        f'<a href="{_e(full)}"><img loading="lazy" alt="{_e(event["device_label"])}: {_e(_found(event))}" '
        f'src="{_e(full)}&amp;size=thumb"></a><figcaption>{PERSON_BADGE if event["person"] else ""}'
        f"<strong>{_e(event['device_label'])}</strong> {_when(event['taken'], now)}<br>"
        f'<span class="muted">{_e(_found(event))}; {_e(event["source"])}</span> {offsite}'
        f"{_verdict_buttons(event) if labelable else ''}</figcaption></figure>"
    )


def _seconds(stamp: object) -> float | None:
    """Unix seconds of an ISO-8601 time as the API gives it (``…Z``); None if it is none."""
    try:
        return datetime.fromisoformat(str(stamp)).timestamp() if stamp else None
    except ValueError:
        return None


def _duration(seconds: float) -> str:
    if seconds < 10:
        return f"{seconds:.2f} s"
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


def _offsite(bundle: Shown) -> str:
    took = bundle.get("offsite_seconds")
    if took is not None:
        return f"after {_duration(float(took))}"
    # Sealed with nothing off-site: there is no cloud storage to send it to.
    return "kept here only" if bundle.get("state") == "sealed" else "not yet"


def _bundle_camera(camera: Shown) -> str:
    taken = f"{_e(camera['label'])} {_e(camera['frames_taken'])}/{_e(camera['frames_asked'])}"
    failure = camera.get("failure")
    if failure:
        return f'<div class="parked">{taken}: {_e(failure)}</div>'
    return f"<div>{taken}</div>"


def _bundle_row(bundle: Shown, now: float) -> str:
    cameras = "".join(_bundle_camera(camera) for camera in bundle["cameras"])
    state, why = bundle["state"], bundle.get("why_not_sealed")
    failed = f" ({_e(bundle['failed'])} camera(s) failed)" if bundle.get("failed") else ""
    return (
        f'<tr data-bundle="{_e(bundle["bundle_id"])}" data-state="{_e(state)}">'
        f'<td data-label="When">{_when(_seconds(bundle["opened"]), now)}</td>'
        f'<td data-label="Sensor">{_e(bundle.get("sensor") or "none named")}</td>'
        f'<td data-label="Cameras">{cameras}</td>'
        f'<td data-label="Frames">{_e(bundle["frames"])}{failed}</td>'
        f'<td data-label="State"><span class="badge {_e(state)}">{_e(state)}</span>'
        + (f' <span class="muted why">{_e(why)}</span>' if why else "")
        + f'</td><td data-label="Off-site">{_e(_offsite(bundle))}</td></tr>'
    )


def _bundles(bundles: Bundles, now: float) -> str:
    if bundles.error is not None:
        inside = f'<p class="error">{_e(bundles.error)}</p>'
    elif not bundles.shown:
        inside = '<p class="muted">No bundle yet.</p>'
    else:
        rows = "".join(_bundle_row(bundle, now) for bundle in bundles.shown)
        inside = (
            "<table><thead><tr><th>When</th><th>Sensor</th><th>Cameras (frames taken/asked)</th>"
            "<th>Frames</th><th>State</th><th>To off-site</th></tr></thead>"
            f"<tbody>{rows}</tbody></table>"
        )
    return f'<div id="bundles">{inside}</div>'


def _spend_line(health: HealthReport) -> str:
    """A detection chain's spending today, against its budget (nothing without a chain)."""
    detection = health.detail.get("detection")
    budget = detection.get("budget") if isinstance(detection, dict) else None
    if not isinstance(budget, dict):
        return ""
    limit = budget.get("limit")
    bound = f" of a budget of {_e(f'{limit:g}')}" if isinstance(limit, int | float) else ""
    spent = f"{float(budget.get('spent', 0.0)):.4g}"
    return (
        f'<p class="spend">Cloud detection today: {_e(budget.get("cloud_calls", 0))} call(s), '
        f"{_e(spent)} spent{bound}.</p>"
    )


def _live(cameras: Sequence[Shown], health: HealthReport, now: float) -> str:
    headline, said = verdict(cameras, health)
    look = {"All well": "good", "Degraded": "degraded", "Down": "bad"}[headline]
    uploads = health.detail.get("uploads")
    upload_line = (
        f"<p>Upload queue: {_e(uploads.get('depth', 0))} waiting, "
        f"{_e(uploads.get('parked', 0))} set aside"
        + (
            f", oldest {_e(round(uploads['oldest_seconds']))} s"
            if uploads.get("oldest_seconds")
            else ""
        )
        + "</p>"
        if uploads
        else "<p class='muted'>No cloud storage configured.</p>"
    )
    items = "".join(f"<li>{_e(line)}</li>" for line in said)
    return (
        f'<div id="live"><section class="state {look}"><h2 class="health {look}">{headline}</h2>'
        f"<ul>{items}</ul>{upload_line}{_spend_line(health)}</section>"
        f'<section><div class="grid">{"".join(_camera_card(c, now) for c in cameras)}</div></section></div>'
    )


def _gallery(
    events: Sequence[Shown], now: float, filtered: bool, feedback: Collection[str] | None = None
) -> str:
    empty = "No event matches these filters." if filtered else "No event yet."
    labelable = feedback or ()
    cards = "".join(_event_card(e, now, e["event_id"] in labelable) for e in events)
    cards = cards or f'<p class="muted">{empty}</p>'
    return f'<div id="gallery" class="gallery">{cards}</div>'


def main_part(
    cameras: Sequence[Shown],
    events: Sequence[Shown],
    health: HealthReport,
    *,
    filtered: bool = False,
    bundles: Bundles | None = None,
    feedback: Collection[str] | None = None,
) -> str:
    """The parts of the page that refresh: the state and cameras, the recent events and the
    bundles (when the daemon keeps them); ``feedback``: the events that get the verdict
    buttons (None: none do)."""
    now = time.time()
    return (
        _live(cameras, health, now)
        + _gallery(events, now, filtered, feedback)
        + (_bundles(bundles, now) if bundles is not None else "")
    )


def _filters(cameras: Sequence[Shown], camera: str, person: bool) -> str:
    options = "".join(
        f'<option value="{_e(c["key"])}"{" selected" if c["key"] == camera else ""}>{_e(c["label"])}</option>'
        for c in cameras
    )
    return (
        '<form class="filters" method="get" action="/"><label>Camera <select name="camera">'
        f'<option value="">every camera</option>{options}</select></label><label>'
        f'<input type="checkbox" name="person" value="1"{" checked" if person else ""}> '
        'with a person</label><button type="submit">Filter</button></form>'
    )


def _page(title: str, body: str, script: str = "") -> str:
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>{_e(title)}</title><style>{_STYLE}</style></head><body>{body}"
        + (f"<script>{script}</script>" if script else "")
        + "</body></html>"
    )


def status_page(
    cameras: Sequence[Shown],
    events: Sequence[Shown],
    health: HealthReport,
    *,
    camera: str = "",
    person: bool = False,
    logged_in: bool = True,
    bundles: Bundles | None = None,
    feedback: Collection[str] | None = None,
) -> str:
    """The whole status page; ``camera`` and ``person`` filter the recent events shown;
    ``logged_in``: there is a token, so a session to end (else no Log out button);
    ``bundles``: the newest sensor events' bundles (None: no such section); ``feedback``:
    the events that get the person / not a person buttons (None: none do)."""
    now = time.time()
    logout = '<form method="post" action="/logout"><button type="submit">Log out</button></form>'
    header = f"<header><h1>snapshot-processor</h1>{logout if logged_in else ''}</header>"
    return _page(
        "snapshot-processor",
        f'{header}<main data-refresh="{REFRESH_SECONDS}">'
        '<p id="note" class="note" role="status" aria-live="polite"></p>'
        f'{_live(cameras, health, now)}<section class="events"><h2>Recent events</h2>'
        f"{_filters(cameras, camera, person)}"
        f"{_gallery(events, now, bool(camera or person), feedback)}"
        "</section>"
        + (
            f'<section class="bundles"><h2>Bundles</h2>{_bundles(bundles, now)}</section>'
            if bundles is not None
            else ""
        )
        + "</main>",
        _SCRIPT,
    )


def login_page(error: str | None = None) -> str:
    """The token form."""
    note = f'<p class="error">{_e(error)}</p>' if error else ""
    return _page(
        "snapshot-processor: log in",
        '<form class="login" method="post" action="/login"><h1>snapshot-processor</h1>'
        f'{note}<label for="token">Access token (HTTP_TOKEN)</label>'
        '<input id="token" name="token" type="password" autocomplete="current-password" required>'
        '<button type="submit">Log in</button></form>',
    )
