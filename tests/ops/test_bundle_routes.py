"""``/api/bundles`` and the page's Bundles over real HTTP, from a real bundle file; an
event's image kept in its bundle's folder, and no link followed to reach one."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from pylib.http import HttpServer, TokenAuth
from snapshot_processor.bundle.seal import Sealer
from snapshot_processor.bundle.store import BundleStore
from snapshot_processor.ops.feature import bundle_listing
from snapshot_processor.ops.recent import RecentEvents
from snapshot_processor.ops.routes import Camera, HealthReport, Ops, build_router
from tests.bundle.test_listing import OPENED, SENSOR, group, sealed_bundle
from tests.ops.test_routes import TOKEN, call, json_of, picture, recorded
from tests.support.broker import Peer, running_app, trigger_body, unique_exchange
from tests.support.daemon import PASSWORD, camera_env, make_settings
from tests.support.net import free_port
from tests.support.wait import wait_until
from tools.camera_simulator import CameraSimulator


@dataclass
class Served:
    port: int
    root: Path
    store: BundleStore
    recent: RecentEvents


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    """The routes over a bundle file with a sealed bundle (no cloud storage) and a newer
    one still collecting, and the recent events of the sealed one's frames."""
    root = tmp_path / "data"
    store = BundleStore(root / "bundles.sqlite3")
    sealed_bundle(store, root, "b-sealed", OPENED, to="")
    store.record(joined=[("b-new", group("b-new"), OPENED + 60, SENSOR, "gate", "Gate", 2)])
    recent = RecentEvents(root / "recent-events.sqlite3")
    frame = root / "bundles" / group("b-sealed") / "yard-2.jpg"
    picture(frame, "in its bundle")
    recent.add(recorded("b-sealed-yard-2", "Yard camera", frame))
    ops = Ops(
        cameras=[Camera("Yard camera", "Yard", "foscam")],
        health=lambda: HealthReport(True, [], [], {}),
        recent=recent,
        camera_health=dict,
        take_snapshot=lambda key: "asked-1",
        snapshots_root=root,
        bundles=bundle_listing(Sealer(store, root, None), None),
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
        yield Served(server.bound_port, root, store, recent)
    finally:
        assert server.stop_and_join(5)
        recent.close()
        store.close()


def test_bundles_need_the_token_and_come_newest_first(served: Served) -> None:
    port = served.port
    assert call(port, "GET", "/api/bundles")[0] == 401
    assert call(port, "GET", "/api/bundles", token="x" * 20)[0] == 401
    found = json_of(call(port, "GET", "/api/bundles", token=TOKEN))["bundles"]
    assert [(b["bundle_id"], b["state"]) for b in found] == [
        ("b-new", "collecting"),
        ("b-sealed", "sealed"),
    ]
    assert found[0]["why_not_sealed"] == "taking snapshots: gate"
    assert found[1]["storage_path"] == str(served.root / "bundles" / group("b-sealed"))
    assert found[1]["best_event_id"] == "b-sealed-yard-2"
    assert "***@10.0.0.5" in found[1]["cameras"][0]["failure"]
    one = json_of(call(port, "GET", "/api/bundles?limit=1", token=TOKEN))["bundles"]
    assert [b["bundle_id"] for b in one] == ["b-new"]
    assert len(json_of(call(port, "GET", "/api/bundles?limit=0", token=TOKEN))["bundles"]) == 1
    assert len(json_of(call(port, "GET", "/api/bundles?limit=9999", token=TOKEN))["bundles"]) == 2
    assert call(port, "GET", "/api/bundles?limit=x", token=TOKEN)[0] == 400


def test_the_page_lists_bundles_behind_the_same_login_as_events(served: Served) -> None:
    port = served.port
    status, _, page = call(port, "GET", "/")
    assert (status, b'name="token"' in page, b"b-sealed" in page) == (200, True, False)
    _, _, page = call(port, "GET", "/", token=TOKEN)
    assert b"<h2>Bundles</h2>" in page
    assert b'<tr data-bundle="b-sealed" data-state="sealed">' in page
    assert b'<span class="badge collecting">collecting</span>' in page
    assert b"kept here only" in page  # sealed without cloud storage: nothing off-site
    assert b"hunter22" not in page
    _, _, part = call(port, "GET", "/?part=main", token=TOKEN)
    assert b'<div id="bundles">' in part
    assert b'data-bundle="b-new"' in part


def test_an_unreadable_bundle_file_is_a_503_and_a_line_on_the_page(
    served: Served, caplog: pytest.LogCaptureFixture
) -> None:
    port = served.port
    served.store.close()
    with caplog.at_level(logging.WARNING, logger="snapshot_processor.ops.routes"):
        for _ in range(2):
            status, headers, body = call(port, "GET", "/api/bundles", token=TOKEN)
            assert (status, headers["content-type"]) == (503, "application/json")
            error = json_of((status, headers, body))["error"]
            assert error.startswith("the bundles cannot be read now: bundle file ")
            assert error.endswith("is closed")
        status, _, page = call(port, "GET", "/", token=TOKEN)
    assert status == 200
    assert b'<div id="bundles"><p class="error">the bundles cannot be read now' in page
    assert b'data-event="b-sealed-yard-2"' in page  # the rest of the page as ever
    # Said once in the log, not at each of the page's refreshes.
    assert [r.getMessage() for r in caplog.records].count(
        f"bundles cannot be listed: bundle file {served.store.path} is closed"
    ) == 1


def test_an_events_image_in_its_bundles_folder_and_no_link_followed(served: Served) -> None:
    port, root = served.port, served.root
    status, _, body = call(port, "GET", "/api/events/b-sealed-yard-2/image", token=TOKEN)
    assert (status, body) == (
        200,
        (root / "bundles" / group("b-sealed") / "yard-2.jpg").read_bytes(),
    )
    folder = root / "bundles" / group("b-sealed")
    inside = picture(root / "snapshots" / "yard" / "x.jpg", "under the root")
    elsewhere = picture(root.parent / "elsewhere" / "y.jpg", "not for the page")
    # A link to a file under the root, one to a folder, a FIFO, and a way out by "..".
    (folder / "link.jpg").symlink_to(inside)
    (root / "bundles" / "linked").symlink_to(inside.parent, target_is_directory=True)
    os.mkfifo(folder / "fifo.jpg")
    names = {
        "l1": folder / "link.jpg",
        "l2": root / "bundles" / "linked" / "x.jpg",
        "f1": folder / "fifo.jpg",
        "u1": Path(f"{root}/bundles/../../elsewhere/y.jpg"),
    }
    for event_id, path in names.items():
        served.recent.add(recorded(event_id, "Yard camera", inside, storage_path=str(path)))
    started = time.monotonic()
    for event_id in names:
        assert call(port, "GET", f"/api/events/{event_id}/image", token=TOKEN)[0] == 404, event_id
    assert time.monotonic() - started < 5  # the FIFO did not hold a handler
    assert elsewhere.exists()
    # The file itself, named plainly, is served.
    served.recent.add(recorded("p1", "Yard camera", inside))
    assert call(port, "GET", "/api/events/p1/image", token=TOKEN)[2] == inside.read_bytes()


@pytest.mark.broker
def test_a_triggers_bundle_over_the_api_and_its_image_from_its_folder(tmp_path: Path) -> None:
    exchange = unique_exchange()
    port = free_port()
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
                assert call(port, "GET", "/api/bundles")[0] == 401
                assert json_of(call(port, "GET", "/api/bundles", token=TOKEN)) == {"bundles": []}
                peer.send_trigger(trigger_body("Front Door camera", device_params=None))
                [image] = peer.wait_for_images(1)

                def sealed() -> list[dict[str, Any]]:
                    found = json_of(call(port, "GET", "/api/bundles", token=TOKEN))["bundles"]
                    return [b for b in found if b["state"] == "sealed"]

                assert wait_until(sealed, 20)
                [bundle] = sealed()
                assert bundle["sensor"] == "hall pir"
                assert bundle["why_not_sealed"] is None
                assert bundle["best_event_id"] == image["event_id"]
                assert bundle["offsite_seconds"] is None  # no cloud storage here
                [shot] = bundle["cameras"]
                assert shot["key"] == "Front Door camera"
                assert shot["frames_taken"] == shot["frames_asked"] == bundle["frames"]
                folder = Path(str(bundle["storage_path"]))
                assert folder.is_relative_to((tmp_path / "bundles").absolute())
                assert (folder / "manifest.json").exists()

                # The event's image is kept in that folder, and served from it.
                [event] = json_of(call(port, "GET", "/api/events", token=TOKEN))["events"]
                assert Path(event["storage_path"]).absolute().parent == folder
                event_id = quote(image["event_id"], safe="")
                status, _, body = call(port, "GET", f"/api/events/{event_id}/image", token=TOKEN)
                assert (status, body) == (200, image["inputs"][0]["image"])
        finally:
            peer.close()
