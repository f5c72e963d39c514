"""``snapshot-processor discover`` against a fake ONVIF camera, asked by unicast."""

from __future__ import annotations

import argparse
import socket
import tomllib

import pytest

from snapshot_processor.cli import discover
from snapshot_processor.cli.common import EXIT_FAILED, CommandError
from tests.support.onvif_device import OnvifDevice

PASSWORD = "onvif-Pa55word"
# As some cameras give it: the account's credentials in the URI.
SNAPSHOT = f"http://admin:{PASSWORD}@127.0.0.1:8080/snapshot.cgi?user=admin&pwd={PASSWORD}"
STREAM = "rtsp://127.0.0.1:8554/stream1"


def _args(address: str, timeout: float = 2.0) -> argparse.Namespace:
    return argparse.Namespace(timeout=timeout, user="admin", address=address)


def test_the_uris_and_the_lines_to_paste_never_the_password(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(discover.PASSWORD_ENV, PASSWORD)
    with OnvifDevice("admin", PASSWORD, snapshot_uri=SNAPSHOT, stream_uri=STREAM) as device:
        assert discover.run(_args(f"127.0.0.1:{device.discovery_port}")) == 0
        port = device.port
    out, err = capsys.readouterr()
    assert PASSWORD not in out + err
    assert "# snapshot URI: http://admin:***@127.0.0.1:8080/snapshot.cgi?user=admin&pwd=***" in out
    assert f"# stream URI: {STREAM}" in out
    # The whole output pastes into the TOML file.
    assert tomllib.loads(out) == {
        "OUTPUT_1_LOCATION": "Fake Camera",
        "OUTPUT_1_TYPE": "camera",
        "OUTPUT_1_VENDOR": "onvif",
        "OUTPUT_1_ADDRESS": f"127.0.0.1:{port}",
        "OUTPUT_1_USER": "admin",
    }
    assert "# OUTPUT_1_PASSWORD: put it in SECRETS_DIR/OUTPUT_1_PASSWORD" in out


def test_a_refused_password_is_one_line_and_the_lines_still_come(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(discover.PASSWORD_ENV, "not-the-Pa55word")
    with OnvifDevice("admin", PASSWORD) as device:
        assert discover.run(_args(f"127.0.0.1:{device.discovery_port}")) == 0
    out, err = capsys.readouterr()
    assert "not-the-Pa55word" not in out + err
    problems = [line for line in out.splitlines() if line.startswith("# no media URIs: ")]
    assert len(problems) == 1
    assert "user name or password refused" in problems[0]
    assert 'OUTPUT_1_VENDOR = "onvif"' in out


def test_without_a_password_no_camera_is_asked_for_uris(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv(discover.PASSWORD_ENV, raising=False)
    with OnvifDevice("admin", PASSWORD, name="Porch") as device:
        assert discover.run(_args(f"127.0.0.1:{device.discovery_port}")) == 0
        assert set(device.calls) == {"Probe"}
    out = capsys.readouterr().out
    assert f"Set {discover.PASSWORD_ENV}" in out
    assert "URI:" not in out
    assert 'OUTPUT_1_LOCATION = "Porch"' in out


def test_no_camera_is_exit_1_saying_what_to_check() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as deaf:
        deaf.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{deaf.getsockname()[1]}"
        with pytest.raises(CommandError) as caught:
            discover.run(_args(address, timeout=0.3))
    assert caught.value.code == EXIT_FAILED
    message = str(caught.value)
    assert message.startswith(f"no ONVIF camera answered within 0.3 s ({address})")
    assert "multicast" in message
    assert "ONVIF is enabled" in message
