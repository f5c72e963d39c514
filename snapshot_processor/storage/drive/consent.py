"""``snapshot-processor drive-auth``: a user's consent to Drive, headless, by loopback redirect.

Google blocked the out-of-band flow in 2022, so the user pastes back the loopback address
the browser fails to load, and its ``code`` is exchanged with PKCE (oauth2client's flow:
pydrive2's sends the legacy ``approval_prompt``). The default scope ``drive.file`` needs no
review and its refresh token does not expire in 7 days, but it hides what was made by hand
(``--scope full`` does not).
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from googleapiclient.http import build_http
from oauth2client import GOOGLE_AUTH_URI, GOOGLE_TOKEN_URI
from oauth2client.client import FlowExchangeError, OAuth2WebServerFlow

from pylib.observe.logs import printable
from pylib.observe.redact import redact, register_secrets

SCOPES = {
    "file": "https://www.googleapis.com/auth/drive.file",
    "full": "https://www.googleapis.com/auth/drive",
}


class DriveAuthError(Exception):
    """The consent could not be completed; the message says why, without secrets."""


@dataclass(frozen=True)
class InstalledClient:
    """An OAuth client of type "Desktop app" (Google's ``installed`` client JSON)."""

    client_id: str
    client_secret: str = field(repr=False)
    auth_uri: str
    token_uri: str


def read_client(
    path: Path, auth_uri: str | None = None, token_uri: str | None = None
) -> InstalledClient:
    """The client in Google's client JSON (``{"installed": {...}}``); the URIs may be overridden."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DriveAuthError(f"client file {path} does not exist") from None
    except OSError as exc:
        raise DriveAuthError(f"cannot read client file {path}: {exc.strerror}") from None
    except ValueError:
        raise DriveAuthError(f"client file {path} is not JSON") from None
    section = data.get("installed") if isinstance(data, dict) else None
    if not isinstance(section, dict):
        raise DriveAuthError(
            f"client file {path} is not a Desktop app client: create an OAuth client ID of "
            'type "Desktop app" and download its JSON (it starts with {"installed": ...})'
        )
    missing = [key for key in ("client_id", "client_secret") if not section.get(key)]
    if missing:
        raise DriveAuthError(f"client file {path} lacks {', '.join(missing)}")
    register_secrets([section["client_secret"]])
    return InstalledClient(
        client_id=str(section["client_id"]),
        client_secret=str(section["client_secret"]),
        auth_uri=auth_uri or str(section.get("auth_uri") or GOOGLE_AUTH_URI),
        token_uri=token_uri or str(section.get("token_uri") or GOOGLE_TOKEN_URI),
    )


def code_from_redirect(pasted: str, state: str) -> str:
    """The authorisation code in the pasted redirect address (or a bare code)."""
    pasted = pasted.strip()
    if not pasted:
        raise DriveAuthError("nothing was pasted")
    if "://" not in pasted and "?" not in pasted and "=" not in pasted:
        return pasted  # the bare code, copied out of the address
    query = {key: values[0] for key, values in parse_qs(urlsplit(pasted).query).items()}
    if "error" in query:
        raise DriveAuthError(f"consent was not given ({printable(query['error'])[:80]})")
    if query.get("state") != state:
        raise DriveAuthError(
            "the pasted address is not the answer to this consent URL (state differs);"
            " run drive-auth again and paste the address from that run"
        )
    code = query.get("code")
    if not code:
        raise DriveAuthError("the pasted address holds no code=...")
    return code


def authorize(
    client: InstalledClient,
    scope: str,
    port: int,
    ask: Callable[[str], str],
    say: Callable[[str], None],
) -> str:
    """Run the consent; returns the refresh token."""
    flow = OAuth2WebServerFlow(
        client.client_id,
        client_secret=client.client_secret,
        scope=scope,
        redirect_uri=f"http://127.0.0.1:{port}/",
        auth_uri=client.auth_uri,
        token_uri=client.token_uri,
        pkce=True,
        # A refresh token every time, even for a client consented to before.
        access_type="offline",
        prompt="consent",
    )
    state = secrets.token_urlsafe(16)
    say(
        "1. Open this address in any browser and allow access to Google Drive:\n\n"
        f"{flow.step1_get_authorize_url(state=state)}\n\n"
        f"2. The browser then fails to load http://127.0.0.1:{port}/... (nothing listens "
        "there). Copy that whole address from the address bar and paste it here."
    )
    try:
        pasted = ask("address: ")
    except EOFError:
        raise DriveAuthError("no address was pasted") from None
    code = code_from_redirect(pasted, state)
    register_secrets([code])
    http = build_http()
    try:
        credentials = flow.step2_exchange(code=code, http=http)
    except FlowExchangeError as exc:
        raise DriveAuthError(
            f"the token endpoint refused the code: {printable(redact(str(exc)))[:200]}"
        ) from None
    except OSError as exc:
        raise DriveAuthError(f"cannot reach the token endpoint: {type(exc).__name__}") from None
    finally:
        http.close()
    refresh_token = credentials.refresh_token
    if not refresh_token:
        raise DriveAuthError(
            "Google gave no refresh token; remove the app's access at "
            "https://myaccount.google.com/permissions and run drive-auth again"
        )
    register_secrets([refresh_token, credentials.access_token])
    return str(refresh_token)


def write_authorized_user(path: Path, client: InstalledClient, refresh_token: str) -> None:
    """Write Google's ``authorized_user`` JSON, readable by its owner only (0600)."""
    body = {
        "type": "authorized_user",
        "client_id": client.client_id,
        "client_secret": client.client_secret,
        "refresh_token": refresh_token,
        "token_uri": client.token_uri,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.part")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            json.dump(body, handle, indent=2)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temporary, 0o600)
        temporary.replace(path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def run(
    client_file: Path,
    output: Path,
    *,
    scope: str = "file",
    port: int | None = None,
    auth_uri: str | None = None,
    token_uri: str | None = None,
    ask: Callable[[str], str] = input,
    say: Callable[[str], None] = print,
) -> None:
    """The whole ``drive-auth``: consent, exchange, write ``output``."""
    client = read_client(client_file, auth_uri, token_uri)
    # A random high port: unlikely that some local web server receives the code.
    chosen = port if port is not None else 49152 + secrets.randbelow(65535 - 49152)
    refresh_token = authorize(client, SCOPES[scope], chosen, ask, say)
    write_authorized_user(output, client, refresh_token)
    say(f"wrote Drive credentials to {output} (mode 0600); point GOOGLE_DRIVE_CREDENTIALS at it")
