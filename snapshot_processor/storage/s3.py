"""S3-compatible storage (AWS S3, MinIO) as an upload destination, through boto3 and its
standard configuration. A retry writes the same key; refused or missing credentials (a
person may fix them) are retried after :data:`DENIED_PAUSE` rather than parked."""

from __future__ import annotations

import base64
import hashlib
import mimetypes
import os
import stat
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

# boto3 and botocore ship no type information and pyproject.toml is not ours to extend.
import boto3  # type: ignore[import-untyped]
import botocore.exceptions  # type: ignore[import-untyped]
from boto3.exceptions import S3UploadFailedError  # type: ignore[import-untyped]
from boto3.s3.transfer import TransferConfig  # type: ignore[import-untyped]
from botocore import UNSIGNED
from botocore.config import Config  # type: ignore[import-untyped]

from pylib.observe.redact import register_secrets
from pylib.upload.destination import UploadItem, UploadRefusedError, UploadRetryError
from snapshot_processor.storage.files import slug

if TYPE_CHECKING:
    from snapshot_processor.storage.settings import StorageSettings

# Where a group's files go, under the prefix.
GROUPS = "bundles"
# Credentials refused or missing: try again this long after (seconds), not at once.
DENIED_PAUSE = 600.0
# Snapshots are small: one PUT each, on the uploader's thread (no transfer threads).
TRANSFER = TransferConfig(
    multipart_threshold=64 * 1024 * 1024, multipart_chunksize=16 * 1024 * 1024, use_threads=False
)

_THROTTLED = frozenset(
    {
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "RequestLimitExceeded",
        "TooManyRequestsException",
        "RequestThrottled",
        "RequestTimeout",
        "RequestTimeTooSkewed",
        "InternalError",
        "ServiceUnavailable",
    }
)
_DENIED = frozenset(
    {
        "AccessDenied",
        "AllAccessDisabled",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "ExpiredToken",
        "InvalidToken",
        "TokenRefreshRequired",
        "AccountProblem",
    }
)
_NO_CREDENTIALS = (
    botocore.exceptions.NoCredentialsError,
    botocore.exceptions.PartialCredentialsError,
    botocore.exceptions.CredentialRetrievalError,
)


class S3Destination:
    """Copies files into ``bucket`` under ``prefix``; ``max_attempts`` counts botocore's own
    quick retries of one upload, before the uploader's slower back-off takes over."""

    name = "s3"
    links_ahead = True  # a group's prefix is known from its name

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        region: str | None = None,
        connect_timeout: float = 5.0,
        read_timeout: float = 60.0,
        max_attempts: int = 3,
        transfer: TransferConfig = TRANSFER,
    ) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self._transfer = transfer
        # A session of our own: boto3's default session is not safe to share across threads.
        session = boto3.session.Session()
        config = Config(
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            retries={"mode": "standard", "total_max_attempts": max(1, max_attempts)},
        )
        self._client: Any = session.client("s3", region_name=region, config=config)
        # Addresses objects exactly as the client does, without signing: the links.
        self._addresser: Any = session.client(
            "s3", region_name=region, config=Config(signature_version=UNSIGNED)
        )
        credentials = session.get_credentials()
        if credentials is not None:
            # Never in a log line or an error, wherever botocore's text ends up.
            frozen = credentials.get_frozen_credentials()
            register_secrets([frozen.access_key, frozen.secret_key, frozen.token])

    def key(self, item: UploadItem) -> str:
        """``<prefix>/<camera>/YYYY/MM/DD/<name>``, dated by ``item.taken`` in UTC; a
        group's files ``<prefix>/bundles/<group>/<name>``."""
        if item.group:
            return "/".join(part for part in (self.group_prefix(item.group), item.name) if part)
        day = datetime.fromtimestamp(item.taken, UTC)
        parts = [self.prefix, slug(item.folder), f"{day:%Y/%m/%d}", item.name]
        return "/".join(part for part in parts if part)

    def group_prefix(self, group: str) -> str:
        """The key prefix a group's files share (no trailing slash)."""
        return "/".join(part for part in (self.prefix, GROUPS, group.strip("/")) if part)

    def link(self, item: UploadItem) -> str:
        """The object's URL as the client addresses it (path or virtual-host style); for a
        group's file, the listing of the group's prefix (S3 has no folders to open). No
        network; it opens for whoever may read (or list) the bucket."""
        if item.group:
            prefix = f"{self.group_prefix(item.group)}/"
            url = self._addresser.generate_presigned_url(
                "list_objects_v2", Params={"Bucket": self.bucket, "Prefix": prefix}
            )
        else:
            url = self._addresser.generate_presigned_url(
                "get_object", Params={"Bucket": self.bucket, "Key": self.key(item)}
            )
        return str(url)

    def upload(self, item: UploadItem) -> None:
        """Put the file at its key (again, on a retry: the same key, one object). One below
        the multipart threshold is sent with its MD5, which S3 checks on receipt, and the
        ETag it answers is checked against it too."""
        try:
            info = os.stat(item.path)
        except FileNotFoundError:
            raise UploadRefusedError(f"{item.path} is gone") from None
        except OSError as exc:
            raise UploadRetryError(f"cannot read {item.path}: {exc.strerror or exc}") from None
        if not stat.S_ISREG(info.st_mode):
            raise UploadRefusedError(f"{item.path} is not a regular file")
        content_type = mimetypes.guess_type(item.name)[0] or "application/octet-stream"
        failure: UploadRetryError | UploadRefusedError | None = None
        try:
            if info.st_size < self._transfer.multipart_threshold:
                self._put_checked(item, content_type)
            else:
                self._client.upload_file(
                    str(item.path),
                    self.bucket,
                    self.key(item),
                    ExtraArgs={"ContentType": content_type},
                    Config=self._transfer,
                )
        except FileNotFoundError:
            failure = UploadRefusedError(f"{item.path} is gone")
        except (UploadRetryError, UploadRefusedError) as exc:
            failure = exc
        except Exception as exc:
            failure = sort_error(exc, self.bucket)
        if failure is not None:
            # Raised outside the except block: boto's exception does not ride along.
            raise failure

    def _put_checked(self, item: UploadItem, content_type: str) -> None:
        data = item.path.read_bytes()
        digest = hashlib.md5(data, usedforsecurity=False)
        answer = self._client.put_object(
            Bucket=self.bucket,
            Key=self.key(item),
            Body=data,
            ContentType=content_type,
            ContentMD5=base64.b64encode(digest.digest()).decode("ascii"),
        )
        etag = str(answer.get("ETag") or "").strip('"')
        # With KMS encryption the ETag is no MD5; S3 has checked ContentMD5 itself.
        kms = str(answer.get("ServerSideEncryption") or "").startswith("aws:kms")
        if etag != digest.hexdigest() and not kms:
            raise UploadRetryError(
                f"S3's copy of {item.name} differs from the local file (ETag {etag[:40]!r})"
            )

    def housekeeping(self, now: float) -> None:
        """Nothing to do between uploads."""

    def check(self) -> str:
        """Reach the bucket (HeadBucket): what was found, else the reason, raised."""
        try:
            self._client.head_bucket(Bucket=self.bucket)
        except Exception as exc:  # boto3 raises several kinds; sorted as an upload's would be
            raise sort_error(exc, self.bucket) from None
        return f"bucket {self.bucket} is there and may be written"

    def close(self) -> None:
        self._client.close()
        self._addresser.close()


def sort_error(exc: Exception, bucket: str) -> UploadRetryError | UploadRefusedError:
    """The uploader's view of an exception out of boto3: other 4xx and bad parameters never pass."""
    if isinstance(exc, S3UploadFailedError) and isinstance(
        exc.__context__, botocore.exceptions.ClientError
    ):
        exc = exc.__context__
    if isinstance(exc, botocore.exceptions.ClientError):
        error = exc.response.get("Error") or {}
        code = str(error.get("Code") or "Unknown")
        status = int((exc.response.get("ResponseMetadata") or {}).get("HTTPStatusCode") or 0)
        reason = f"{code} ({status or 'no status'}): {error.get('Message') or 'no message'}"
        if code in _THROTTLED or status == 429 or status >= 500:
            return UploadRetryError(reason)
        if code in _DENIED or status in (401, 403):
            return UploadRetryError(f"{reason}; bucket {bucket}", after=DENIED_PAUSE)
        return UploadRefusedError(f"{reason}; bucket {bucket}")
    if isinstance(exc, _NO_CREDENTIALS):
        return UploadRetryError(
            f"no usable AWS credentials ({type(exc).__name__})", after=DENIED_PAUSE
        )
    if isinstance(exc, botocore.exceptions.ParamValidationError):
        return UploadRefusedError(f"refused before sending: {exc}")
    # Timeouts, dropped connections, an unreadable file mid-way: may pass.
    return UploadRetryError(f"{type(exc).__name__}: {exc}")


def from_settings(settings: StorageSettings, aws_region: str | None) -> S3Destination:
    """The S3 bucket as configured (S3_BUCKET set), in AWS_DEFAULT_REGION."""
    assert settings.s3_bucket
    return S3Destination(
        settings.s3_bucket,
        settings.s3_prefix,
        region=aws_region,
        max_attempts=settings.S3_RETRY.attempts or 1,
    )
