"""The daemon's HTTP routes: health, metrics, the JSON API and the status page, reading only
from :class:`Ops` (which the app assembles), so they know nothing of threads or sockets."""

from __future__ import annotations

import io
import json
import logging
import os
import sqlite3
import stat
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import unquote

from PIL import Image
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from pylib.http import SESSION_COOKIE, Request, Response, Router, TokenAuth
from pylib.observe.logs import printable
from pylib.observe.redact import redact
from snapshot_processor.bundle.store import BundleStoreError
from snapshot_processor.camera.requests import SnapshotRefusedError
from snapshot_processor.ops import status_page
from snapshot_processor.ops.recent import EventRecord, RecentEvents

log = logging.getLogger(__name__)

EVENTS_LIMIT_MAX = 200
PAGE_EVENTS = 24
BUNDLES_LIMIT_MAX = 200
PAGE_BUNDLES = 10
THUMB_PIXELS = 320
# An event's image never changes: a browser keeps it (for itself alone) as long as it likes.
IMAGE_CACHE = "private, max-age=31536000, immutable"
# Each step towards an image opened as itself: a link is refused, a FIFO does not block.
_OPEN_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_OPEN_FILE = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


class CameraHealth(Protocol):
    """What the prober knows of one camera."""

    @property
    def up(self) -> bool | None: ...

    @property
    def last_seen(self) -> float | None: ...

    def as_dict(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class HealthReport:
    """The daemon's health: ``ok`` decides the status code; ``problems`` make it unhealthy,
    ``warnings`` are shown but do not (a restart would not help)."""

    ok: bool
    problems: list[str]
    warnings: list[str]
    detail: dict[str, Any]

    def as_json(self) -> dict[str, Any]:
        """As ``/healthz`` answers it."""
        return {
            "status": "ok" if self.ok else "unhealthy",
            "problems": self.problems,
            "warnings": self.warnings,
            **self.detail,
        }


@dataclass(frozen=True)
class Camera:
    """A configured camera, as the page lists it: ``fetch`` (an output the daemon asks on
    triggers) or ``ftp`` (an input that pushes its images)."""

    key: str
    label: str
    vendor: str
    source: str = "fetch"


@dataclass
class Ops:
    """What the HTTP routes read and do, assembled by the app."""

    cameras: Sequence[Camera]
    health: Callable[[], HealthReport]
    recent: RecentEvents
    camera_health: Callable[[], Mapping[str, CameraHealth]]
    take_snapshot: Callable[[str], str]
    # Why the upload of each of the given local paths is parked, for those parked (without
    # cloud storage: None); it must not raise.
    parked_uploads: Callable[[Collection[str]], Mapping[str, str]] | None = None
    # Images are served only from files under it (default: the recent events' folder).
    snapshots_root: Path | None = None
    # How long one snapshot's attempts take at most: the page waits so long for the camera.
    snapshot_seconds: float = 20.0
    # The newest bundles as the API gives them (None: the page has no Bundles section);
    # it raises BundleStoreError when the bundle file cannot be read.
    bundles: Callable[[int], list[dict[str, Any]]] | None = None
    # A person's verdict on a recent event, ``(event_id, verdict)`` with verdict ``person``
    # or ``not_person``, stored in the labelled set: it returns a short note and raises
    # LookupError for an event not among the recent ones or whose image is gone, ValueError
    # for an unknown verdict, OSError or sqlite3.Error when the disk failed (None: the page
    # has no verdict buttons).
    feedback: Callable[[str, str], str] | None = None


def build_router(ops: Ops, auth: TokenAuth) -> Router:
    """Every route, with which of them need the token."""
    fetched = {camera.key: camera for camera in ops.cameras if camera.source == "fetch"}
    root = ops.snapshots_root or ops.recent.path.parent
    router = Router()

    said: str | None = None  # the last error of the bundle file, logged once

    def bundle_list(limit: int) -> tuple[list[dict[str, Any]], str | None]:
        """The newest bundles, or none and why they cannot be read now: a damaged or
        closed bundle file is an answer for the API and the page, never an exception."""
        nonlocal said
        if ops.bundles is None:
            return [], "this daemon keeps no bundles"
        try:
            found = ops.bundles(limit)
        except BundleStoreError as exc:
            error = redact(str(exc))
            if error != said:  # the page asks every few seconds: one line per new error
                log.warning("bundles cannot be listed: %s", error)
            said = error
            return [], f"the bundles cannot be read now: {error}"
        said = None
        return found, None

    def camera_of(request: Request) -> Camera | None:
        return fetched.get(unquote(request.params["key"]))

    def image_of(record: EventRecord, request: Request) -> bytes | None:
        """The event's image (annotated if asked and drawn), only from a file under root."""
        annotated = request.arg("annotated") in ("1", "true", "yes")
        for candidate in (record.annotated_path if annotated else None, record.storage_path):
            image = read_under(root, candidate) if candidate else None
            if image is not None:
                return image
        return None

    def healthz(request: Request) -> Response:
        report = ops.health()
        return Response.json(report.as_json(), 200 if report.ok else 503)

    def cameras(request: Request) -> Response:
        return Response.json({"cameras": camera_list(ops)})

    def latest_jpg(request: Request) -> Response:
        # Any camera with an event, fetched or pushed: the key is only looked up.
        record = ops.recent.latest_of(unquote(request.params["key"]))
        if record is None:
            return Response.text("no snapshot of this camera yet\n", 404)
        image = image_of(record, request)
        if image is None:
            return Response.text("the latest snapshot is no longer on disk\n", 404)
        return Response(200, image, "image/jpeg", {"X-Event-Id": record.event_id})

    def event_image(request: Request) -> Response:
        record = ops.recent.find(request.params["id"])
        image = None if record is None else image_of(record, request)
        if image is not None and request.arg("size") == "thumb":
            image = thumbnail(image)
        if image is None:
            return Response.text("no such event image (among the recent events, on disk)\n", 404)
        return Response(200, image, "image/jpeg", {"Cache-Control": IMAGE_CACHE})

    def snapshot(request: Request) -> Response:
        camera = camera_of(request)
        if camera is None:
            return Response.text("no such camera\n", 404)
        try:
            event_id = ops.take_snapshot(camera.key)
        except SnapshotRefusedError as exc:
            return Response.text(f"{exc}\n", exc.status)
        log.info("snapshot of %s asked for over HTTP: event %s", printable(camera.key), event_id)
        answer = {"event_id": event_id, "camera": camera.key}
        return Response.json({**answer, "answer_within": ops.snapshot_seconds}, 202)

    def feedback(request: Request) -> Response:
        if ops.feedback is None:
            return Response.text("no labelled set here: object detection is off\n", 404)
        event_id = request.params["id"]
        verdict, malformed = verdict_of(request.body)
        try:
            note = ops.feedback(event_id, verdict)
        except LookupError as exc:
            return Response.text(f"{exc}\n", 404)
        except ValueError as exc:
            return Response.text(f"{malformed or exc}\n", 400)
        except (OSError, sqlite3.Error) as exc:
            return Response.text(f"the verdict was not kept: {redact(str(exc))}\n", 503)
        return Response.json({"event_id": event_id, "verdict": verdict, "note": note})

    def events(request: Request) -> Response:
        try:
            limit = int(request.arg("limit") or 50)
        except ValueError:
            return Response.text("limit must be a whole number\n", 400)
        limit = max(1, min(limit, EVENTS_LIMIT_MAX))
        return Response.json({"events": event_list(ops, limit, request)})

    def bundles(request: Request) -> Response:
        try:
            limit = int(request.arg("limit") or 50)
        except ValueError:
            return Response.text("limit must be a whole number\n", 400)
        found, error = bundle_list(max(1, min(limit, BUNDLES_LIMIT_MAX)))
        if error is not None:
            return Response.json({"error": error}, 503)
        return Response.json({"bundles": found})

    def page(request: Request) -> Response:
        part = request.arg("part") == "main"
        if auth.how(request) is None:
            if part:  # the script's refresh: it reloads and shows the login form
                return Response.text("a valid token is needed\n", 401)
            return html(status_page.login_page())
        camera, person = request.arg("camera") or "", request.arg("person") == "1"
        shown = camera_list(ops), event_list(ops, PAGE_EVENTS, request), ops.health()
        # Behind the same login as the events: a bundle names the cameras and its files.
        listed = status_page.Bundles(*bundle_list(PAGE_BUNDLES)) if ops.bundles else None
        # The events a verdict may be given on: those whose image is still on disk.
        labelable = (
            {e["event_id"] for e in shown[1] if os.path.isfile(e["storage_path"])}
            if ops.feedback is not None
            else None
        )
        if part:
            return html(
                status_page.main_part(
                    *shown, filtered=bool(camera or person), bundles=listed, feedback=labelable
                )
            )
        page = status_page.status_page(
            *shown,
            camera=camera,
            person=person,
            logged_in=auth.required,
            bundles=listed,
            feedback=labelable,
        )
        return html(page)

    def login(request: Request) -> Response:
        if not auth.token_matches(request.form().get("token", "")):
            # The server delays, counts and logs it for the client's address.
            answer = html(status_page.login_page(error="That token is not right."), 401)
            answer.credential_refused = True
            return answer
        session = auth.login()
        answer = Response.redirect("/")
        answer.headers["Set-Cookie"] = (
            f"{SESSION_COOKIE}={session}; HttpOnly; SameSite=Strict; Path=/; Max-Age=604800"
        )
        return answer

    def logout(request: Request) -> Response:
        session = request.cookies.get(SESSION_COOKIE)
        if session:
            auth.logout(session)
        answer = Response.redirect("/")
        answer.headers["Set-Cookie"] = (
            f"{SESSION_COOKIE}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0"
        )
        return answer

    router.add("GET", r"/healthz", healthz, access="local")
    # Browsers ask for it on every page; none, rather than a 404 in their console.
    router.add("GET", r"/favicon\.ico", lambda request: Response(204), access="public")
    router.add("GET", r"/metrics", metrics, access="local")
    router.add("GET", r"/", page, access="public")
    router.add("POST", r"/login", login, access="public", checks_credential=True)
    router.add("POST", r"/logout", logout, access="public")
    router.add("GET", r"/api/cameras", cameras, access="token")
    cam = r"/api/cameras/(?P<key>[^/]+)"
    router.add("GET", cam + r"/latest\.jpg", latest_jpg, access="token", name="latest.jpg")
    router.add("POST", cam + r"/snapshot", snapshot, access="token", name="snapshot")
    router.add("GET", r"/api/events", events, access="token")
    router.add("GET", r"/api/bundles", bundles, access="token")
    event = r"/api/events/(?P<id>[0-9A-Za-z_-]{1,64})"
    router.add("GET", event + r"/image", event_image, access="token")
    router.add("POST", event + r"/feedback", feedback, access="token", name="feedback")
    return router


def verdict_of(body: bytes) -> tuple[str, str | None]:
    """The verdict a feedback request's body ``{"verdict": "..."}`` names, and what is
    wrong with the body if it is not such JSON (then the verdict is empty, so refused)."""
    shape = 'the body must be JSON {"verdict": "person"} or {"verdict": "not_person"}'
    try:
        sent = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return "", shape
    if not isinstance(sent, dict) or not isinstance(sent.get("verdict"), str):
        return "", shape
    return str(sent["verdict"]), None


def metrics(request: Request) -> Response:
    """Prometheus text: every counter of the process."""
    return Response(200, generate_latest(), CONTENT_TYPE_LATEST)


def metrics_router() -> Router:
    """Only ``/metrics``, for the extra listener on METRICS_PORT."""
    router = Router()
    router.add("GET", r"/metrics", metrics, access="local")
    return router


def html(body: str, status: int = 200) -> Response:
    """A page of ours, with the policy that lets its own style and script run and nothing else."""
    return Response(
        status,
        body.encode(),
        "text/html; charset=utf-8",
        {"Content-Security-Policy": status_page.CONTENT_SECURITY_POLICY},
    )


def thumbnail(image: bytes) -> bytes | None:
    """A JPEG at most :data:`THUMB_PIXELS` wide and high; None if ``image`` is no image."""
    try:
        with Image.open(io.BytesIO(image)) as picture:
            picture.draft("RGB", (THUMB_PIXELS, THUMB_PIXELS))  # JPEG: decoded smaller
            small = picture.convert("RGB")
        small.thumbnail((THUMB_PIXELS, THUMB_PIXELS))
        out = io.BytesIO()
        small.save(out, "JPEG", quality=80)
    except (OSError, ValueError, Image.DecompressionBombError):
        return None
    return out.getvalue()


def read_under(root: Path, candidate: str) -> bytes | None:
    """The bytes of the regular file ``candidate`` names under ``root``, reached from root
    without following a link (root itself may be one); None for any other path or file."""
    path = Path(os.path.abspath(candidate))  # ".." is taken away by name, never walked
    # The record names it as written: under root as configured, or as resolved.
    bases = (Path(os.path.abspath(root)), Path(root).resolve())
    found = next((path.relative_to(base) for base in bases if path.is_relative_to(base)), None)
    if found is None or not found.parts:
        return None
    *folders, name = found.parts
    try:
        fd = os.open(Path(root).resolve(), _OPEN_DIR)
        try:
            for folder in folders:
                inner = os.open(folder, _OPEN_DIR, dir_fd=fd)
                os.close(fd)
                fd = inner
            image = os.open(name, _OPEN_FILE, dir_fd=fd)
        finally:
            os.close(fd)
        with open(image, "rb") as file:
            if not stat.S_ISREG(os.fstat(file.fileno()).st_mode):
                return None
            return file.read()
    except OSError:
        return None


def event_list(ops: Ops, limit: int, request: Request) -> list[dict[str, Any]]:
    """The newest events (of ``?camera=``, with a person if ``?person=1``) for the API and
    page; ``upload_parked`` says why an event's off-site copy was never made (else None)."""
    records = ops.recent.latest(
        limit, camera=request.arg("camera") or None, person=request.arg("person") == "1"
    )
    found = [record.as_json() for record in records]
    paths = [os.path.abspath(r.storage_path) for r in records]
    parked = ops.parked_uploads(paths) if ops.parked_uploads and paths else {}
    for event, path in zip(found, paths, strict=True):
        event["upload_parked"] = parked.get(path)
    return found


def camera_list(ops: Ops) -> list[dict[str, Any]]:
    """Each camera with its health, latest snapshot and last error, for the API and page;
    a camera that pushed events is listed even before the app names it."""
    health = ops.camera_health()
    found = []
    now = time.time()
    named = {camera.key for camera in ops.cameras}
    pushed = [
        Camera(record.camera_key, record.device_label, "ftp", "ftp")
        for key in ops.recent.cameras()
        if key not in named and (record := ops.recent.latest_of(key)) and record.source == "upload"
    ]
    for camera in [*ops.cameras, *pushed]:
        record = ops.recent.latest_of(camera.key)
        probe = health.get(camera.key)
        found.append(
            {
                "key": camera.key,
                "label": camera.label,
                "vendor": camera.vendor,
                "source": camera.source,
                "up": probe.up if probe is not None else None,
                "health": probe.as_dict() if probe is not None else None,
                "last_seen": probe.last_seen if probe is not None else None,
                "last_snapshot": record.taken if record else None,
                "last_snapshot_age_seconds": round(now - record.taken, 1) if record else None,
                "last_event": record.as_json() if record else None,
            }
        )
    return found
