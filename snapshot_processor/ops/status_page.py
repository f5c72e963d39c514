"""The status page: plain server-rendered HTML, a little JavaScript, nothing from outside.

The script refreshes ``/?part=main``, rendered here too. Every value from outside is escaped."""

from __future__ import annotations

import base64
import hashlib
import html
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

if TYPE_CHECKING:
    from snapshot_processor.ops.routes import HealthReport

REFRESH_SECONDS = 5
PERSON_BADGE = '<span class="badge person">person</span> '

_STYLE = """
*{box-sizing:border-box}body{font-family:system-ui,sans-serif;margin:0;background:#f4f5f7;color:#1d2330}
header{display:flex;gap:1rem;align-items:center;justify-content:space-between;padding:.6rem 1rem;background:#1d2330;color:#fff}
header h1{font-size:1.1rem;margin:0}header form{margin:0}
main{padding:1rem;max-width:1400px;margin:auto}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(280px,1fr));gap:1rem}
.cam{background:#fff;border-radius:8px;overflow:hidden;box-shadow:0 1px 3px #0002}
.cam img{display:block;width:100%;aspect-ratio:16/9;object-fit:cover;background:#ccd}
.cam .none{display:flex;align-items:center;justify-content:center;aspect-ratio:16/9;background:#ccd;color:#556}
.cam .body{padding:.5rem .7rem}.cam h2{font-size:1rem;margin:0 0 .3rem}
.badge{display:inline-block;padding:.05rem .45rem;border-radius:1rem;font-size:.8rem;color:#fff}
.up{background:#2a7d3b}.down{background:#b3261e}.unknown{background:#777}.person{background:#d9480f}
.muted{color:#667;font-size:.85rem}button{font:inherit;padding:.3rem .8rem;border-radius:6px;border:1px solid #889;background:#fff;cursor:pointer}
table{border-collapse:collapse;width:100%;background:#fff;border-radius:8px;overflow:hidden}
td,th{padding:.35rem .6rem;text-align:left;border-bottom:1px solid #e3e5ea;font-size:.9rem}
section{margin-top:1.4rem}.health.bad{color:#b3261e}.health.good{color:#2a7d3b}
.login{max-width:360px;margin:15vh auto;background:#fff;padding:1.5rem;border-radius:8px;box-shadow:0 1px 3px #0002}
.login input{width:100%;padding:.5rem;margin:.6rem 0;font:inherit}.error{color:#b3261e}
@media (max-width:600px){td:nth-child(4),th:nth-child(4){display:none}}
"""

_SCRIPT = """
const REFRESH = REFRESH_SECONDS * 1000;
async function refresh() {
  try {
    const answer = await fetch('/?part=main', {credentials: 'same-origin'});
    if (answer.status === 401) { location.reload(); return; }
    if (answer.ok) document.getElementById('main').innerHTML = await answer.text();
  } catch (e) { /* the daemon may be restarting: try again at the next turn */ }
}
document.addEventListener('click', async (event) => {
  const button = event.target.closest('button[data-snap]');
  if (!button) return;
  button.disabled = true;
  const note = document.getElementById('note');
  try {
    const answer = await fetch('/api/cameras/' + encodeURIComponent(button.dataset.snap) + '/snapshot',
                               {method: 'POST', credentials: 'same-origin'});
    const reply = answer.ok ? await answer.json() : null;
    note.textContent = reply ? 'Snapshot asked for: event ' + reply.event_id
                             : 'Snapshot refused (HTTP ' + answer.status + ')';
    if (reply) note.dataset.event = reply.event_id;
  } finally { button.disabled = false; }
  setTimeout(refresh, 500);
});
setInterval(refresh, REFRESH);
""".replace("REFRESH_SECONDS", str(REFRESH_SECONDS))


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


def _when(taken: float | None, now: float) -> str:
    if taken is None:
        return "never"
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(taken))
    seconds = max(0.0, now - taken)
    ago = (
        f"{seconds:.0f} s"
        if seconds < 90
        else f"{seconds / 60:.0f} min"
        if seconds < 5400
        else f"{seconds / 3600:.0f} h"
    )
    return f'<time datetime="{_e(taken)}">{_e(stamp)}</time> ({ago} ago)'


def _camera_card(camera: dict[str, Any], now: float) -> str:
    key = camera["key"]
    up = camera["up"]
    state = "up" if up else "unknown" if up is None else "down"
    event = camera["last_event"]
    if event:
        image = (
            f'<img alt="latest snapshot of {_e(camera["label"])}" data-event="{_e(event["event_id"])}" '
            f'src="/api/cameras/{_e(quote(key, safe=""))}/latest.jpg?annotated=1&amp;e={_e(event["event_id"])}">'
        )
        labels = ", ".join(str(d.get("label")) for d in event["detections"]) or "nothing detected"
        if event.get("detection_note"):
            labels = f"detection: {event['detection_note']}"
        person = PERSON_BADGE if event["person"] else ""
        found = f"{person}<span class='muted'>{_e(labels)}</span>"
    else:
        image = '<div class="none">no snapshot yet</div>'
        found = ""
    health = camera.get("health") or {}
    problem = health.get("last_error") if up is False else None
    seen = camera.get("last_seen")
    return (
        f'<article class="cam" data-camera="{_e(key)}">{image}<div class="body">'
        f'<h2>{_e(camera["label"])} <span class="badge {state}">{state}</span></h2>'
        f'<div class="muted">latest: {_when(camera["last_snapshot"], now)}</div>'
        f"<div>{found}</div>"
        + (f'<div class="error">{_e(problem)}</div>' if problem else "")
        + (f'<div class="muted">last seen: {_when(seen, now)}</div>' if up is False else "")
        + f'<button type="button" data-snap="{_e(key)}">Take a snapshot</button>'
        "</div></article>"
    )


def main_part(
    cameras: list[dict[str, Any]], events: list[dict[str, Any]], health: HealthReport
) -> str:
    """The part of the page that refreshes: health, cameras, uploads, recent events."""
    now = time.time()
    verdict = "healthy" if health.ok else "unhealthy"
    lines = "".join(f"<li>{_e(line)}</li>" for line in [*health.problems, *health.warnings])
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
    rows = "".join(
        f"<tr data-event='{_e(e['event_id'])}'><td>{_when(e['taken'], now)}</td>"
        f"<td>{_e(e['device_label'])}</td>"
        f"<td>{PERSON_BADGE if e['person'] else ''}"
        f"{_e(', '.join(str(d.get('label')) for d in e['detections']) or '-')}</td>"
        f"<td>{_e(e['source'])}, {_e(e['image_bytes'])} bytes</td></tr>"
        for e in events
    )
    return (
        f'<section><h2 class="health {"good" if health.ok else "bad"}">Daemon {verdict}</h2>'
        f"<ul>{lines}</ul>{upload_line}<p id='note' class='muted'></p></section>"
        f'<section><div class="grid">{"".join(_camera_card(c, now) for c in cameras)}</div></section>'
        "<section><h2>Recent events</h2><table><thead><tr><th>When</th><th>Camera</th>"
        f"<th>Found</th><th>Source</th></tr></thead><tbody>{rows}</tbody></table></section>"
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
    cameras: list[dict[str, Any]], events: list[dict[str, Any]], health: HealthReport
) -> str:
    """The whole status page."""
    header = (
        "<header><h1>snapshot-processor</h1>"
        '<form method="post" action="/logout"><button type="submit">Log out</button></form></header>'
    )
    return _page(
        "snapshot-processor",
        f'{header}<main id="main">{main_part(cameras, events, health)}</main>',
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
