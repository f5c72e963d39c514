"""moto's S3 server on loopback for tests of the whole daemon: the environment boto3 reads
is pointed at it (with fake credentials and none of the machine's own AWS files)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

import boto3  # type: ignore[import-untyped]
import pytest
from moto.server import ThreadedMotoServer


@contextmanager
def moto_s3(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bucket: str) -> Iterator[str]:
    """moto's S3 with ``bucket`` made; yields its URL (``AWS_ENDPOINT_URL_S3`` is set to it)."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLETESTING")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test-secret-key-not-real")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        url = f"http://{host}:{port}"
        monkeypatch.setenv("AWS_ENDPOINT_URL_S3", url)
        with s3_client() as client:
            client.create_bucket(Bucket=bucket)
        yield url
    finally:
        server.stop()


@contextmanager
def s3_client() -> Iterator[Any]:
    """A boto3 client of the S3 the environment names, closed at the end."""
    client: Any = boto3.session.Session().client("s3")
    try:
        yield client
    finally:
        client.close()


def objects(bucket: str, prefix: str = "") -> dict[str, bytes]:
    """Every object under ``prefix``, by key."""
    with s3_client() as client:
        listed = client.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])
        return {
            item["Key"]: client.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
            for item in listed
        }


def listing_url(endpoint: str, bucket: str, prefix: str) -> str:
    """The link of a bundle's S3 folder, as boto3 addresses a custom endpoint: its listing."""
    return f"{endpoint}/{bucket}?list-type=2&prefix={quote(prefix, safe='')}&encoding-type=url"
