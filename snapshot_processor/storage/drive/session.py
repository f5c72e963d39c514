"""A pydrive2 client for any Drive API root, with credentials from a Google JSON file.

Each thread gets its own ``http`` (httplib2 is not thread-safe) from ``build_http()``, so a
resumable upload's 308 is not followed. The token is refreshed under a lock before pydrive2
would start its interactive flow; invalid credentials are re-read (a new ``drive-auth``
needs no restart).
"""

from __future__ import annotations

import json
import threading
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httplib2
from googleapiclient.discovery import build_from_document
from googleapiclient.discovery_cache import get_static_doc
from googleapiclient.http import build_http
from oauth2client import GOOGLE_TOKEN_URI
from oauth2client.client import OAuth2Credentials
from oauth2client.service_account import ServiceAccountCredentials
from pydrive2.auth import GoogleAuth
from pydrive2.drive import GoogleDrive
from pydrive2.files import GoogleDriveFile

from pylib.observe.redact import register_secrets
from snapshot_processor.storage.drive.errors import DriveCredentialsError
from snapshot_processor.storage.settings import credentials_kind_problem

DEFAULT_API_URL = "https://www.googleapis.com/"
FOLDER_MIME = "application/vnd.google-apps.folder"
# Users consent to drive.file; a service account needs drive to see what is shared with it.
SERVICE_ACCOUNT_SCOPE = "https://www.googleapis.com/auth/drive"
USER_AGENT = "snapshot-processor"


def read_credentials_file(path: Path) -> dict[str, Any]:
    """The JSON object in a credentials file; :class:`DriveCredentialsError` if unusable."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DriveCredentialsError(f"Drive credentials file {path} does not exist") from None
    except OSError as exc:
        raise DriveCredentialsError(
            f"cannot read Drive credentials file {path}: {exc.strerror}"
        ) from None
    except ValueError:
        raise DriveCredentialsError(f"Drive credentials file {path} is not JSON") from None
    if not isinstance(data, dict):
        raise DriveCredentialsError(f"Drive credentials file {path} is not a JSON object")
    return data


def load_credentials(path: Path) -> OAuth2Credentials:
    """oauth2client credentials from Google's ``authorized_user`` or ``service_account``
    JSON; their secrets are registered for redaction."""
    data = read_credentials_file(path)
    kind = data.get("type")
    if kind == "authorized_user":
        missing = [k for k in ("client_id", "client_secret", "refresh_token") if not data.get(k)]
        if missing:
            raise DriveCredentialsError(f"Drive credentials file {path} lacks {', '.join(missing)}")
        register_secrets([data["client_secret"], data["refresh_token"]])
        return OAuth2Credentials(
            access_token=None,
            client_id=data["client_id"],
            client_secret=data["client_secret"],
            refresh_token=data["refresh_token"],
            token_expiry=None,
            token_uri=data.get("token_uri") or GOOGLE_TOKEN_URI,
            user_agent=USER_AGENT,
        )
    if kind == "service_account":
        missing = [k for k in ("client_email", "private_key") if not data.get(k)]
        if missing:
            raise DriveCredentialsError(f"Drive credentials file {path} lacks {', '.join(missing)}")
        try:
            # Honours the key's own token_uri; signs the JWT grant with its private key.
            credentials = ServiceAccountCredentials.from_json_keyfile_dict(
                data, scopes=[SERVICE_ACCOUNT_SCOPE]
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise DriveCredentialsError(
                f"Drive credentials file {path}: unusable service-account key "
                f"({type(exc).__name__})"
            ) from None
        credentials.user_agent = USER_AGENT
        return credentials
    raise DriveCredentialsError(f"Drive credentials file {path} {credentials_kind_problem(data)}")


def discovery_document(api_url: str) -> dict[str, Any]:
    """Drive v2's bundled discovery document, pointed at ``api_url``."""
    text = get_static_doc("drive", "v2")
    if text is None:
        raise RuntimeError("google-api-python-client lacks its bundled drive v2 document")
    doc: dict[str, Any] = json.loads(text)
    root = api_url if api_url.endswith("/") else api_url + "/"
    doc["rootUrl"] = doc["mtlsRootUrl"] = root
    doc["baseUrl"] = root + doc["servicePath"]
    return doc


class DriveSession:
    """pydrive2's ``GoogleDrive`` on a rewritten service; call :meth:`ready` on a thread
    before each pydrive2 call (no network is touched before that)."""

    def __init__(
        self, credentials_file: Path, api_url: str = DEFAULT_API_URL, timeout: float = 60.0
    ) -> None:
        self.credentials_file = credentials_file
        self._timeout = timeout
        self._lock = threading.Lock()
        self._local = threading.local()
        self._generation = 0
        self._credentials: OAuth2Credentials | None = None
        self._https: weakref.WeakSet[httplib2.Http] = weakref.WeakSet()
        self._token_http = self._new_http()
        self._auth = GoogleAuth(settings_file=None)
        # "service": pydrive2 refreshes an expired token instead of its interactive flow.
        self._auth.auth_method = "service"
        self._auth.http = self._new_http()
        self._auth.service = build_from_document(discovery_document(api_url), http=self._auth.http)
        self._drive = GoogleDrive(self._auth)
        self._closed = False

    def _new_http(self) -> httplib2.Http:
        http = build_http()
        http.timeout = self._timeout
        self._https.add(http)
        return http

    @property
    def is_service_account(self) -> bool:
        """True once service-account credentials are loaded."""
        return isinstance(self._credentials, ServiceAccountCredentials)

    def ready(self) -> GoogleDrive:
        """The drive, with a fresh token and this thread's http installed; raises
        :class:`DriveCredentialsError` for an unusable file and oauth2client's
        ``AccessTokenRefreshError`` when the token endpoint refuses."""
        with self._lock:
            if self._closed:
                raise RuntimeError("the Drive session is closed")
            if self._credentials is None or self._credentials.invalid:
                self._credentials = load_credentials(self.credentials_file)
                self._auth.credentials = self._credentials
                self._generation += 1
            credentials = self._credentials
            if not credentials.access_token or credentials.access_token_expired:
                credentials.refresh(self._token_http)
            generation = self._generation
        local = self._local
        if getattr(local, "generation", None) != generation:
            old = getattr(local, "http", None)
            if old is not None:
                old.close()
            local.http = credentials.authorize(self._new_http())
            local.generation = generation
        # pydrive2 reads the http of the calling thread from here.
        self._auth.thread_local.http = local.http
        return self._drive

    def list_files(self, q: str, page_size: int = 100, **params: Any) -> Iterator[GoogleDriveFile]:
        """Every file matching ``q``, fetched ``page_size`` at a time (nextPageToken)."""
        listing = self._drive.ListFile({"q": q, "maxResults": page_size, **params})
        while True:
            self.ready()
            try:
                page = next(listing)
            except StopIteration:
                return
            yield from page

    def close(self) -> None:
        """Close every connection this session opened (on any thread)."""
        with self._lock:
            self._closed = True
        for http in list(self._https):
            http.close()
