"""drive-auth: a headless consent by loopback redirect, against the fake consent page and token endpoint."""

from __future__ import annotations

import http.client
import json
import logging
import os
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from pylib.upload.destination import UploadItem
from snapshot_processor.storage.drive import consent as drive_auth
from snapshot_processor.storage.drive.destination import DriveDestination
from tests.support.drive_credentials import CLIENT_ID, CLIENT_SECRET
from tests.support.fakes.drive import FakeDrive
from tests.support.paths import CHECKOUT

TOP = CHECKOUT


@pytest.fixture
def fake() -> Iterator[FakeDrive]:
    with FakeDrive() as server:
        server.add_client(CLIENT_ID, CLIENT_SECRET)
        yield server


def client_file(fake: FakeDrive, path: Path) -> Path:
    """Google's "Desktop app" client JSON, its endpoints on the fake."""
    body = {
        "installed": {
            "client_id": CLIENT_ID,
            "client_secret": CLIENT_SECRET,
            "project_id": "home-project",
            "auth_uri": fake.auth_uri,
            "token_uri": fake.token_uri,
            "redirect_uris": ["http://localhost"],
        }
    }
    path.write_text(json.dumps(body))
    return path


def consent(url: str) -> str:
    """What a browser does: open the consent URL; returns the redirect it is sent to."""
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.netloc, timeout=10)
    try:
        connection.request("GET", f"{parts.path}?{parts.query}")
        response = connection.getresponse()
        response.read()
        assert response.status == 302
        return str(response.getheader("Location"))
    finally:
        connection.close()


def test_drive_auth_end_to_end_writes_a_0600_file_that_works(
    fake: FakeDrive, tmp_path: Path
) -> None:
    output = tmp_path / "secrets" / "drive.json"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "snapshot_processor",
            "drive-auth",
            "--client-secrets",
            str(client_file(fake, tmp_path / "client.json")),
            "--output",
            str(output),
        ],
        cwd=TOP,
        env={**os.environ, "PYTHONPATH": str(TOP)},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    assert process.stdin is not None
    shown = []
    for line in process.stdout:
        shown.append(line)
        if line.startswith(fake.auth_uri):
            break
    url = shown[-1].strip()
    query = parse_qs(urlsplit(url).query)
    assert query["redirect_uri"][0].startswith("http://127.0.0.1:")
    assert query["access_type"] == ["offline"]
    assert query["prompt"] == ["consent"]
    assert query["code_challenge_method"] == ["S256"]
    # The user pastes the address the browser could not load.
    out, err = process.communicate(consent(url) + "\n", timeout=60)

    assert process.returncode == 0, err
    assert stat.S_IMODE(output.stat().st_mode) == 0o600
    written = json.loads(output.read_text())
    assert written["type"] == "authorized_user"
    assert written["client_id"] == CLIENT_ID
    assert written["token_uri"] == fake.token_uri
    assert fake.consent_scopes == ["https://www.googleapis.com/auth/drive.file"]
    for secret in (written["refresh_token"], CLIENT_SECRET):
        assert secret not in "".join(shown) + out + err
    assert "wrote Drive credentials" in out

    # The file is what the daemon needs.
    image = tmp_path / "x.jpg"
    image.write_bytes(b"\xff\xd8jpeg\xff\xd9")
    drive = DriveDestination("Snapshots", output, fake.api_url, timeout=10)
    try:
        drive.upload(UploadItem(image, "x.jpg", "porch camera", time.time()))
    finally:
        drive.close()
    assert [f.title for f in fake.files(folders=False)] == ["x.jpg"]


def run_in_process(
    fake: FakeDrive, tmp_path: Path, answer: str | None = None, scope: str = "file"
) -> Path:
    output = tmp_path / "drive.json"
    said: list[str] = []

    def ask(prompt: str) -> str:
        url = next(line for line in said[-1].splitlines() if line.startswith("http"))
        return answer if answer is not None else consent(url)

    drive_auth.run(
        client_file(fake, tmp_path / "client.json"),
        output,
        scope=scope,
        port=51234,
        ask=ask,
        say=said.append,
    )
    return output


def test_full_scope_on_request(fake: FakeDrive, tmp_path: Path) -> None:
    run_in_process(fake, tmp_path, scope="full")
    assert fake.consent_scopes == ["https://www.googleapis.com/auth/drive"]


def test_refused_consent_is_a_clear_error(fake: FakeDrive, tmp_path: Path) -> None:
    with pytest.raises(drive_auth.DriveAuthError, match=r"consent was not given \(access_denied\)"):
        run_in_process(fake, tmp_path, "http://127.0.0.1:51234/?error=access_denied&state=x")
    assert not (tmp_path / "drive.json").exists()


def test_an_address_from_another_run_is_refused(fake: FakeDrive, tmp_path: Path) -> None:
    with pytest.raises(drive_auth.DriveAuthError, match="state differs"):
        run_in_process(fake, tmp_path, "http://127.0.0.1:51234/?state=other&code=4/abc")


def test_a_bad_code_is_refused_without_secrets(
    fake: FakeDrive, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    with pytest.raises(drive_auth.DriveAuthError) as caught:
        run_in_process(fake, tmp_path, "4/not-a-code-we-issued")
    assert "token endpoint refused the code: invalid_grant" in str(caught.value)
    assert CLIENT_SECRET not in str(caught.value)
    assert CLIENT_SECRET not in caplog.text


def test_the_tokens_never_reach_the_log(
    fake: FakeDrive, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    output = run_in_process(fake, tmp_path)
    refresh_token = json.loads(output.read_text())["refresh_token"]
    assert refresh_token
    for secret in (refresh_token, CLIENT_SECRET):
        assert secret not in caplog.text


def test_a_web_client_file_is_explained(tmp_path: Path) -> None:
    path = tmp_path / "web.json"
    path.write_text(json.dumps({"web": {"client_id": "x", "client_secret": "y"}}))
    with pytest.raises(drive_auth.DriveAuthError, match='type "Desktop app"'):
        drive_auth.read_client(path)


def test_the_command_offers_every_scope_drive_auth_knows() -> None:
    # The command lists them without importing the Google libraries; they must agree.
    from snapshot_processor.cli.drive import SCOPE_CHOICES
    from snapshot_processor.storage.drive import consent as drive_auth

    assert sorted(SCOPE_CHOICES) == sorted(drive_auth.SCOPES)
