"""`make demo` (tools/demo.py) as a user runs it: the whole chain against the real broker,
its summary, and not one process left behind, whether it ends or is interrupted."""

from __future__ import annotations

import os
import re
import secrets
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pika
import pika.exceptions
import pytest

from tests.support.paths import CHECKOUT
from tests.support.wait import wait_for_text
from tools.rtsp_camera import available

pytestmark = pytest.mark.broker

# The demo adds a warm RTSP camera where GStreamer's RTSP server runs.
RTSP = available()


def _demo(workdir: Path, exchange: str, *args: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "tools.demo",
        "--workdir",
        str(workdir),
        "--exchange",
        exchange,
        *args,
    ]


def _environment() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(CHECKOUT)}


def _processes_of(exchange: str) -> list[int]:
    """Every live process whose environment names the demo's exchange: the demo's children."""
    found = []
    needle = f"RABBITMQ_EXCHANGE={exchange}".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if needle in (entry / "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
        except OSError:
            continue  # gone meanwhile, or not ours to read
    return found


def _exchange_exists(name: str) -> bool:
    connection = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1"))
    try:
        channel = connection.channel()
        try:
            channel.exchange_declare(name, passive=True)
        except pika.exceptions.ChannelClosedByBroker:
            return False
        return True
    finally:
        connection.close()


def test_the_demo_shows_the_whole_chain_and_leaves_nothing_behind(tmp_path: Path) -> None:
    exchange = f"snapshot_demo_test_{secrets.token_hex(4)}"
    # As a user runs it: `make demo` (its arguments through DEMO_ARGS).
    arguments = _demo(tmp_path, exchange, "--rounds", "2", "--interval", "0.5")[3:]
    done = subprocess.run(
        ["make", "--no-print-directory", "demo", f"DEMO_ARGS={' '.join(arguments)}"],
        cwd=CHECKOUT,
        env=_environment(),
        capture_output=True,
        text=True,
        timeout=90,
    )
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    assert "status page: http://127.0.0.1:" in out
    assert "token: " in out
    events = 5 if RTSP else 3  # two rounds of each answering camera, and the upload
    assert re.search(
        rf"event {events}/{events} at \+[\d.]+ s: event\.notify\.snapshot\.demo\.image", out
    ), out
    summary = out[out.index("demo: summary") :]
    assert f"events: {events} of {events} expected" in summary, summary
    assert re.search(
        r"camera 'Front Door camera' \(answers\): 2 trigger\(s\), 2 event\(s\), "
        r"latency trigger to event p50 \d+ ms, max \d+ ms; health up",
        summary,
    ), summary
    assert re.search(
        r"camera 'Garage camera' \(hangs\): 2 trigger\(s\), 0 event\(s\), "
        r"failed snapshots: \d+ timeout; health down \(timeout\)",
        summary,
    ), summary
    assert re.search(
        r"camera 'Back Yard camera' \(wrong password\): 2 trigger\(s\), 0 event\(s\), "
        r"failed snapshots: 2 auth; health down \(wrong credentials\)",
        summary,
    ), summary
    if RTSP:
        assert re.search(
            r"camera 'Driveway camera' \(answers from a warm RTSP stream\): 2 trigger\(s\), "
            r"2 event\(s\), latency trigger to event p50 \d+ ms, max \d+ ms, "
            r"\d+ pre-trigger still\(s\); health up",
            summary,
        ), summary
    else:
        assert "demo: the RTSP camera is left out: " in out
    assert re.search(
        r"'Garden camera' \(FTP upload\): 1 file uploaded, 1 event\(s\), latency", summary
    )
    assert f"files: snapshots under {tmp_path / 'data'} ({events} JPEG files" in summary
    snapshots = (tmp_path / "data").rglob("*.jpg")  # bundles' folders and the pushed one
    assert len([path for path in snapshots if "-before-" not in path.name]) == events
    pids = [int(p) for p in re.findall(r"pid (\d+) exit 0", summary)]
    assert len(pids) == 2  # the daemon and the subscriber, both stopped cleanly
    assert _processes_of(exchange) == []
    assert not _exchange_exists(exchange)  # nor anything on the broker


def test_an_interrupted_demo_stops_every_process(tmp_path: Path) -> None:
    exchange = f"snapshot_demo_test_{secrets.token_hex(4)}"
    output = tmp_path / "demo.out"
    with output.open("w") as out:
        demo = subprocess.Popen(
            _demo(tmp_path / "run", exchange, "--rounds", "20"),
            cwd=CHECKOUT,
            env=_environment(),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        try:
            assert wait_for_text(output, "round 1: a trigger", timeout=60), output.read_text()
            assert _processes_of(exchange)  # the daemon and the subscriber run
            demo.send_signal(signal.SIGINT)  # Ctrl-C
            assert demo.wait(60) == 130, output.read_text()
        finally:
            if demo.poll() is None:
                demo.kill()
                demo.wait()
    assert "interrupted: every process the demo started is stopped" in output.read_text()
    assert _processes_of(exchange) == []
    assert not _exchange_exists(exchange)


def test_a_kept_demo_serves_its_page_until_ctrl_c_then_stops_every_process(
    tmp_path: Path,
) -> None:
    exchange = f"snapshot_demo_test_{secrets.token_hex(4)}"
    output = tmp_path / "demo.out"
    with output.open("w") as out:
        demo = subprocess.Popen(
            _demo(tmp_path / "run", exchange, "--rounds", "1", "--keep"),
            cwd=CHECKOUT,
            env=_environment(),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        try:
            assert wait_for_text(output, "Ctrl-C ends the demo", timeout=90), output.read_text()
            [url] = re.findall(r"still running: status page (http://\S+) ", output.read_text())
            time.sleep(1)  # kept, not merely not yet stopped
            assert _processes_of(exchange)
            with urllib.request.urlopen(f"{url}healthz", timeout=10) as answer:
                assert answer.status == 200
            demo.send_signal(signal.SIGINT)  # Ctrl-C: the end asked for
            assert demo.wait(60) == 0, output.read_text()
        finally:
            if demo.poll() is None:
                demo.kill()
                demo.wait()
    text = output.read_text()
    assert "summary so far" in text
    assert "interrupted" not in text
    assert _processes_of(exchange) == []
    assert not _exchange_exists(exchange)
