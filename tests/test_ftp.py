"""The FTP server: password only, no way out of the upload dir, FTPS, bans, partial uploads."""

from __future__ import annotations

import ftplib
import io
import socket
import struct
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from snapshot_processor.ftp import FtpOptions, FtpServerThread
from tests.support.ftp import connect, jpeg, self_signed, upload

PASSWORD = "ftp p@ss:1"


def options(tmp_path: Path, **changes: object) -> FtpOptions:
    base = FtpOptions(
        root=tmp_path,
        upload_dir=tmp_path / "upload",
        user="camera",
        password=PASSWORD,
        listen_address="127.0.0.1",
        port=0,
        login_delay=0.05,
        ban_after=3,
        ban_seconds=60,
    )
    return replace(base, **changes)  # type: ignore[arg-type]


@pytest.fixture
def server(tmp_path: Path) -> Iterator[FtpServerThread]:
    thread = FtpServerThread("ftp", threading.Event(), options(tmp_path))
    thread.start()
    assert thread.ready.wait(5)
    yield thread
    assert thread.stop_and_join(5)


def port_of(server: FtpServerThread) -> int:
    assert server.bound is not None
    return server.bound[1]


def test_upload_into_the_upload_dir(server: FtpServerThread, tmp_path: Path) -> None:
    client = connect(port_of(server), "camera", PASSWORD)
    try:
        client.cwd("/upload")
        client.mkd("frontdoor")
        upload(client, "frontdoor/a b é.jpg", jpeg("x"))
    finally:
        client.quit()
    assert (tmp_path / "upload" / "frontdoor" / "a b é.jpg").read_bytes() == jpeg("x")


def test_wrong_password_and_anonymous_refused(server: FtpServerThread) -> None:
    with pytest.raises(ftplib.error_perm, match="530"):
        connect(port_of(server), "camera", "wrong")
    with pytest.raises(ftplib.error_perm, match="530"):
        connect(port_of(server), "anonymous", "guest@example.com")


def test_cannot_leave_the_upload_dir(server: FtpServerThread, tmp_path: Path) -> None:
    (tmp_path / "outbox.sqlite3").write_bytes(b"private")
    client = connect(port_of(server), "camera", PASSWORD)
    try:
        with pytest.raises(ftplib.error_perm, match="550"):
            upload(client, "/evil.jpg", b"x")  # the home itself is not writable
        with pytest.raises(ftplib.error_perm, match="550"):
            upload(client, "/upload/../../../tmp/evil.jpg", b"x")
        with pytest.raises(ftplib.error_perm, match="550"):
            client.retrbinary("RETR /outbox.sqlite3", io.BytesIO().write)
        with pytest.raises(ftplib.error_perm, match="550"):
            client.nlst("/")
        client.cwd("/../..")
        assert client.pwd() == "/"  # '..' stops at the home
    finally:
        client.quit()
    assert not (tmp_path / "evil.jpg").exists()
    assert not Path("/tmp/evil.jpg").exists()


def test_repeated_failures_ban_the_address(server: FtpServerThread) -> None:
    for _ in range(3):
        with pytest.raises(ftplib.error_perm, match="530"):
            connect(port_of(server), "camera", "wrong")
    with pytest.raises(ftplib.error_temp, match="421"):
        connect(port_of(server), "camera", PASSWORD)


def test_partial_upload_is_removed(server: FtpServerThread, tmp_path: Path) -> None:
    client = connect(port_of(server), "camera", PASSWORD)
    try:
        client.voidcmd("TYPE I")
        data = client.transfercmd("STOR /upload/half.jpg")
        data.sendall(jpeg("half")[:500])
        # The camera loses its connection mid-file: the control connection resets while
        # the data connection is still open (in stream mode a closed data connection
        # alone would just mean "end of file").
        assert client.sock is not None
        client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        client.close()
        time.sleep(0.5)
    finally:
        client.close()
        data.close()
    deadline = time.monotonic() + 5
    while (tmp_path / "upload" / "half.jpg").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not (tmp_path / "upload" / "half.jpg").exists()


def test_ftps_with_a_self_signed_certificate(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    thread = FtpServerThread(
        "ftps", threading.Event(), options(tmp_path, tls_cert=cert, tls_key=key)
    )
    thread.start()
    try:
        assert thread.ready.wait(5)
        port = port_of(thread)
        with pytest.raises(ftplib.error_perm, match="550"):
            connect(port, "camera", PASSWORD)  # TLS is required: plain login refused
        client = connect(port, "camera", PASSWORD, tls=True)
        try:
            upload(client, "/upload/secure.jpg", jpeg("tls"))
        finally:
            client.quit()
    finally:
        assert thread.stop_and_join(5)
    assert (tmp_path / "upload" / "secure.jpg").read_bytes() == jpeg("tls")


def test_connections_per_address_are_limited(tmp_path: Path) -> None:
    thread = FtpServerThread(
        "ftp-limit", threading.Event(), options(tmp_path, max_connections_per_ip=2)
    )
    thread.start()
    clients: list[ftplib.FTP] = []
    try:
        assert thread.ready.wait(5)
        for _ in range(2):
            clients.append(connect(port_of(thread), "camera", PASSWORD))
        with pytest.raises(ftplib.error_temp, match="421"):
            connect(port_of(thread), "camera", PASSWORD)
    finally:
        for client in clients:
            client.close()
        assert thread.stop_and_join(5)
