"""Google credential files for tests against the fake Drive: a user's and a service account's."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.support.fakes.drive import FakeDrive

CLIENT_ID = "1234-client.apps.googleusercontent.com"
CLIENT_SECRET = "GOCSPX-not-for-your-eyes-42"
SERVICE_ACCOUNT = "uploader@home-project.iam.gserviceaccount.com"


def write_user_credentials(fake: FakeDrive, path: Path) -> str:
    """An ``authorized_user`` file as drive-auth writes it; returns its refresh token.

    The fake must know the client (``fake.add_client(CLIENT_ID, CLIENT_SECRET)``).
    """
    refresh_token = fake.issue_refresh_token(CLIENT_ID)
    body = {
        "type": "authorized_user",
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
        "refresh_token": refresh_token,
        "token_uri": fake.token_uri,
    }
    path.write_text(json.dumps(body))
    return refresh_token


def drive_env(fake: FakeDrive, tmp_path: Path, folder: str) -> dict[str, str]:
    """The daemon's settings for Drive: the fake's API, a user's credentials for it."""
    credentials = tmp_path / "drive.json"
    write_user_credentials(fake, credentials)
    return {
        "GOOGLE_DRIVE_FOLDER": folder,
        "GOOGLE_DRIVE_CREDENTIALS": str(credentials),
        "GOOGLE_DRIVE_API_URL": fake.api_url,
    }


def write_service_account(fake: FakeDrive, path: Path) -> str:
    """A service-account key whose public half the fake knows; returns its email."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    fake.add_service_account(SERVICE_ACCOUNT, public)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    body = {
        "type": "service_account",
        "project_id": "home-project",
        "private_key_id": "0123456789abcdef",
        "private_key": pem,
        "client_email": SERVICE_ACCOUNT,
        "client_id": "1122334455",
        "auth_uri": fake.auth_uri,
        "token_uri": fake.token_uri,
    }
    path.write_text(json.dumps(body))
    return SERVICE_ACCOUNT


@pytest.fixture
def fake() -> Iterator[FakeDrive]:
    """The fake Drive, with our OAuth client registered (tests import this fixture)."""
    with FakeDrive() as server:
        server.add_client(CLIENT_ID, CLIENT_SECRET)
        yield server


@pytest.fixture
def credentials(fake: FakeDrive, tmp_path: Path) -> Path:
    """A user's ``authorized_user`` credentials file for the fake."""
    path = tmp_path / "drive.json"
    write_user_credentials(fake, path)
    return path
