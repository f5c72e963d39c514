"""Sorting a failed Drive call into kinds: retry, back off, or give up (ARCHITECTURE.md's
rules). The texts name statuses and Google's reasons, never a token or a body."""

from __future__ import annotations

import http.client
import json
import socket
from dataclasses import dataclass

import httplib2
from googleapiclient.errors import HttpError
from oauth2client.client import AccessTokenRefreshError
from pydrive2.auth import RefreshError
from pydrive2.files import ApiRequestError

from pylib.observe.logs import printable
from pylib.observe.redact import redact

RATE_LIMIT_REASONS = frozenset({"userRateLimitExceeded", "rateLimitExceeded"})
REVOKED_HINT = "Drive access was revoked; run snapshot-processor drive-auth"


class DriveCredentialsError(Exception):
    """The credentials file is missing, unreadable or not a Google credentials JSON."""


class DriveFolderMissingError(Exception):
    """The Drive folder is not there and is not to be created here."""


@dataclass(frozen=True)
class DriveFailure:
    """One failed Drive call, sorted; ``kind`` is the metric label: ``rate_limit``,
    ``server``, ``unauthorized``, ``revoked``, ``token``, ``credentials``,
    ``folder_missing``, ``network``, ``not_found``, ``refused`` or ``unexpected``."""

    kind: str
    retry: bool
    text: str
    status: int | None = None
    reason: str = ""
    retry_after: float | None = None

    @property
    def rate_limited(self) -> bool:
        """True for a rate limit: back off before the next call."""
        return self.kind == "rate_limit"


def classify(exc: BaseException) -> DriveFailure:
    """Sort an exception raised by a pydrive2 / googleapiclient / oauth2client call."""
    http_error = _http_error(exc)
    if http_error is not None:
        return _from_status(http_error)
    if isinstance(exc, AccessTokenRefreshError | RefreshError):
        return _from_refresh(exc)
    if isinstance(exc, DriveCredentialsError):
        return DriveFailure("credentials", True, str(exc))
    if isinstance(exc, DriveFolderMissingError):
        return DriveFailure("folder_missing", True, str(exc))
    if isinstance(
        exc, OSError | socket.timeout | httplib2.HttpLib2Error | http.client.HTTPException
    ):
        text = f"cannot reach Drive: {type(exc).__name__}: {_safe(exc)}"
        return DriveFailure("network", True, text)
    return DriveFailure("unexpected", True, f"{type(exc).__name__}: {_safe(exc)}")


def _http_error(exc: BaseException) -> HttpError | None:
    """The HttpError behind ``exc``: pydrive2 wraps it in ApiRequestError, and fails
    with a ValueError while doing so when the body is not JSON (a proxy's 502 page)."""
    seen: BaseException | None = exc
    for _ in range(3):
        if seen is None:
            return None
        if isinstance(seen, HttpError):
            return seen
        if isinstance(seen, ApiRequestError) and seen.args and isinstance(seen.args[0], HttpError):
            return seen.args[0]
        seen = seen.__cause__ or seen.__context__
    return None


def _google_reason(error: HttpError) -> tuple[str, str]:
    """``(reason, message)`` from a Google error body, empty when there is none."""
    try:
        body = json.loads(error.content.decode("utf-8"))
        details = body["error"]
        first = (details.get("errors") or [{}])[0]
        return str(first.get("reason") or ""), str(details.get("message") or "")
    except (ValueError, KeyError, TypeError, AttributeError, IndexError):
        return "", ""


def _retry_after(error: HttpError) -> float | None:
    try:
        value = float(error.resp.get("retry-after", ""))
    except (TypeError, ValueError, AttributeError):
        return None
    return value if value >= 0 else None


def _from_status(error: HttpError) -> DriveFailure:
    status = int(getattr(error.resp, "status", 0) or 0)
    reason, message = _google_reason(error)
    described = f"Drive answered {status}" + (f" {reason}" if reason else "")
    if message:
        described += f": {_safe(message)[:200]}"
    if status == 429 or (status == 403 and reason in RATE_LIMIT_REASONS):
        return DriveFailure("rate_limit", True, described, status, reason, _retry_after(error))
    if status >= 500 or status == 408:
        return DriveFailure("server", True, described, status, reason)
    if status == 401:
        return DriveFailure(
            "unauthorized", True, described + " (after a token refresh)", status, reason
        )
    if status == 404:
        return DriveFailure("not_found", False, described, status, reason)
    return DriveFailure("refused", False, described, status, reason)


def _from_refresh(exc: BaseException) -> DriveFailure:
    text = str(exc)
    # The token endpoint's answer to a revoked or expired consent, or a deleted client.
    if "invalid_grant" in text or "invalid_client" in text or "unauthorized_client" in text:
        return DriveFailure("revoked", True, REVOKED_HINT)
    status = getattr(exc, "status", None)
    return DriveFailure(
        "token", True, f"cannot refresh the Drive access token: {_safe(text)[:200]}", status
    )


def _safe(exc: object) -> str:
    return printable(redact(str(exc)))
