"""The storage settings section: Google Drive, S3, the upload queue and local retention."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, model_validator

from pylib.retry import RetryPolicy


def credentials_kind_problem(data: Any) -> str | None:
    """What makes a Drive credentials file's JSON the wrong kind of file, or None."""
    if not isinstance(data, dict):
        return "is not a JSON object"
    if "installed" in data or "web" in data:
        return (
            "is an OAuth client-secrets file, not credentials: make credentials from it with "
            "snapshot-processor drive-auth --client-secrets FILE --output CREDENTIALS_FILE"
        )
    kind = data.get("type")
    if kind not in ("authorized_user", "service_account"):
        return (
            f"has type {str(kind)[:40]!r}; expected authorized_user (from drive-auth) "
            "or service_account"
        )
    return None


class StorageSettings(BaseModel):
    """``GOOGLE_DRIVE_*``, ``DRIVE_ARCHIVE_*``, ``S3_*``, ``UPLOAD_*`` and ``RETENTION_*``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # Google Drive: on when GOOGLE_DRIVE_FOLDER (the top folder's title) is set.
    google_drive_folder: str | None = Field(None, alias="GOOGLE_DRIVE_FOLDER", min_length=1)
    google_drive_credentials: Path | None = Field(None, alias="GOOGLE_DRIVE_CREDENTIALS")
    google_drive_api_url: str = Field(
        "https://www.googleapis.com/", alias="GOOGLE_DRIVE_API_URL", pattern=r"^https?://\S+$"
    )
    drive_archive_after_hours: float = Field(24.0, alias="DRIVE_ARCHIVE_AFTER_HOURS", gt=0)
    # S3-compatible storage: on when S3_BUCKET is set.
    s3_bucket: str | None = Field(
        None, alias="S3_BUCKET", pattern=r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$"
    )
    s3_prefix: str = Field("", alias="S3_PREFIX")
    upload_max_attempts: int = Field(20, alias="UPLOAD_MAX_ATTEMPTS", ge=1, le=1000)
    retention_days: float = Field(30.0, alias="RETENTION_DAYS", ge=0)
    retention_max_bytes: int = Field(0, alias="RETENTION_MAX_BYTES", ge=0)
    retention_min_free_bytes: int = Field(1024**3, alias="RETENTION_MIN_FREE_BYTES", ge=0)
    retention_interval: float = Field(600.0, alias="RETENTION_INTERVAL", gt=0)

    # The upload's retry policies, declared once here (docs/retries.md lists them).
    # One file that failed: about half a day over UPLOAD_MAX_ATTEMPTS, then parked.
    UPLOAD_ITEM_RETRY: ClassVar[RetryPolicy] = RetryPolicy(first=10.0, maximum=3600.0, jitter=0.2)
    # A destination failing as a whole (the network, credentials): all its files wait.
    UPLOAD_DESTINATION_RETRY: ClassVar[RetryPolicy] = RetryPolicy(
        first=2.0, maximum=300.0, jitter=0.2
    )
    # Drive answering "rate limit" without a Retry-After: doubled per refusal in a row.
    DRIVE_RATE_LIMIT: ClassVar[RetryPolicy] = RetryPolicy(first=2.0, maximum=300.0, jitter=0.5)
    # botocore's own quick retries of one S3 upload (its "standard" mode), attempts in all.
    S3_RETRY: ClassVar[RetryPolicy] = RetryPolicy(attempts=3)

    @model_validator(mode="after")
    def _consistent(self) -> StorageSettings:
        problems = []
        credentials = self.google_drive_credentials
        if self.google_drive_folder and credentials is None:
            problems.append(
                "GOOGLE_DRIVE_FOLDER is set, so GOOGLE_DRIVE_CREDENTIALS is needed "
                "(the JSON file snapshot-processor drive-auth writes, or a service-account key)"
            )
        if credentials is not None and not credentials.is_file():
            problems.append(
                f"GOOGLE_DRIVE_CREDENTIALS: no such file {credentials}"
                " (snapshot-processor drive-auth writes it)"
            )
        elif credentials is not None:
            try:
                data = json.loads(credentials.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                data = None  # unreadable: said with why when the Drive destination opens it
            wrong = None if data is None else credentials_kind_problem(data)
            if wrong:
                problems.append(f"GOOGLE_DRIVE_CREDENTIALS: {credentials} {wrong}")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @property
    def drive_on(self) -> bool:
        return bool(self.google_drive_folder)
