"""The FTP server: password only, no way out of the upload dir, FTPS, bans, partial uploads."""

from __future__ import annotations

import ftplib
import io
import logging
import socket
import struct
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from pylib.config.settings import ConfigError
from snapshot_processor import config
from snapshot_processor.ingest.ftp import FtpOptions, FtpServerThread
from tests.support.ftp import connect, jpeg, self_signed, upload
from tests.support.metrics import sample
from tests.support.wait import wait_until

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
    half = tmp_path / "upload" / "half.jpg"
    assert wait_until(lambda: not half.exists(), 5, step=0.05), f"{half} was left behind"


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


# --- a camera's upload cannot be read back ----------------------------------------------


def test_an_uploaded_file_cannot_be_read_back(server: FtpServerThread, tmp_path: Path) -> None:
    client = connect(port_of(server), "camera", PASSWORD)
    try:
        client.mkd("/upload/frontdoor")
        upload(client, "/upload/frontdoor/snap.jpg", jpeg("mine"))
        assert (tmp_path / "upload" / "frontdoor" / "snap.jpg").read_bytes() == jpeg("mine")
        for name in ["/upload/frontdoor/snap.jpg", "snap.jpg"]:
            if name == "snap.jpg":
                client.cwd("/upload/frontdoor")
            received = io.BytesIO()
            with pytest.raises(ftplib.error_perm, match="550"):
                client.retrbinary(f"RETR {name}", received.write)
            assert received.getvalue() == b""
    finally:
        client.quit()


# --- connection slots -------------------------------------------------------------------


def raw_connect(port: int, source: str = "127.0.0.1") -> socket.socket:
    """A bare control connection from ``source`` (any 127.x address is this host)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0))
    return sock


def reply(sock: socket.socket) -> str:
    """The next reply line, or '' once the server closed the connection."""
    data = b""
    while not data.endswith(b"\r\n"):
        try:
            chunk = sock.recv(1)
        except ConnectionResetError:
            return ""
        if not chunk:
            return data.decode()
        data += chunk
    return data.decode()


def closed_by_server(sock: socket.socket) -> bool:
    """True if everything left to read ends in the server closing the connection."""
    sock.settimeout(5)
    try:
        while sock.recv(4096):
            pass
    except ConnectionResetError:
        pass
    return True


def test_idle_connections_do_not_lock_out_the_camera(tmp_path: Path) -> None:
    thread = FtpServerThread(
        "ftp-slots",
        threading.Event(),
        options(
            tmp_path,
            max_connections=20,
            max_connections_per_ip=4,
            reserved_for_sessions=4,
            login_timeout=60,  # the slots alone must hold, not the deadline
        ),
    )
    thread.start()
    idle: list[socket.socket] = []
    try:
        assert thread.ready.wait(5)
        port = port_of(thread)
        evicted_before = sample("ftp_connections_evicted_total")
        # 200 connections from 100 addresses, none of which ever logs in.
        for n in range(200):
            sock = raw_connect(port, f"127.0.0.{2 + n // 2}")
            idle.append(sock)
            assert reply(sock).startswith("220")
        camera = connect(port, "camera", PASSWORD)
        try:
            upload(camera, "/upload/through.jpg", jpeg("through"))
            # A logged-in camera keeps its session while another flood comes in.
            for n in range(200):
                sock = raw_connect(port, f"127.0.1.{2 + n // 2}")
                idle.append(sock)
                assert reply(sock).startswith("220")
            upload(camera, "/upload/still.jpg", jpeg("still"))
        finally:
            camera.quit()
        # Room is made by closing the oldest idle connections, with a 421 first.
        first = idle[0]
        assert reply(first).startswith("421")
        assert sample("ftp_connections_evicted_total") >= evicted_before + 400 - 16
    finally:
        for sock in idle:
            sock.close()
        assert thread.stop_and_join(5)
    assert (tmp_path / "upload" / "through.jpg").read_bytes() == jpeg("through")
    assert (tmp_path / "upload" / "still.jpg").read_bytes() == jpeg("still")


def test_a_connection_that_does_not_log_in_is_closed(tmp_path: Path) -> None:
    thread = FtpServerThread(
        "ftp-deadline", threading.Event(), options(tmp_path, login_timeout=0.5)
    )
    thread.start()
    sock: socket.socket | None = None
    try:
        assert thread.ready.wait(5)
        before = sample("ftp_login_timeouts_total")
        sock = raw_connect(port_of(thread))
        assert reply(sock).startswith("220")
        camera = connect(port_of(thread), "camera", PASSWORD)
        try:
            started = time.monotonic()
            assert reply(sock).startswith("421")  # sent unasked, at the deadline
            assert closed_by_server(sock)
            assert 0.3 < time.monotonic() - started < 3
            time.sleep(0.5)
            camera.voidcmd("NOOP")  # a logged-in session has no such deadline
        finally:
            camera.quit()
        assert sample("ftp_login_timeouts_total") == before + 1
    finally:
        if sock is not None:
            sock.close()
        assert thread.stop_and_join(5)


def test_failed_logins_over_the_global_limit_admit_only_known_addresses(
    tmp_path: Path,
) -> None:
    thread = FtpServerThread(
        "ftp-global",
        threading.Event(),
        options(tmp_path, ban_after=100, max_failed_logins_per_minute=5, login_delay=0.01),
    )
    thread.start()
    try:
        assert thread.ready.wait(5)
        port = port_of(thread)
        connect(port, "camera", PASSWORD).quit()  # the camera's address is known now
        assert thread.troubles() == []
        # A spread-out guesser: one failure per address, never enough for a ban.
        for n in range(5):
            client = ftplib.FTP(timeout=10, source_address=(f"127.0.2.{n + 2}", 0))
            client.connect("127.0.0.1", port)
            try:
                with pytest.raises(ftplib.error_perm, match="530"):
                    client.login("camera", f"guess {n}")
            finally:
                client.close()
        before = sample("ftp_connections_refused_total", reason="lockdown")
        stranger = ftplib.FTP(timeout=10, source_address=("127.0.2.50", 0))
        try:
            with pytest.raises(ftplib.error_temp, match="421"):
                stranger.connect("127.0.0.1", port)
        finally:
            stranger.close()
        assert sample("ftp_connections_refused_total", reason="lockdown") == before + 1
        assert len(thread.troubles()) == 1
        assert "failed logins" in thread.troubles()[0]
        camera = connect(port, "camera", PASSWORD)  # the known camera still gets in
        try:
            upload(camera, "/upload/known.jpg", jpeg("known"))
        finally:
            camera.quit()
    finally:
        assert thread.stop_and_join(5)


def test_per_address_limit_must_be_below_the_global_limit() -> None:
    with pytest.raises(ConfigError, match="FTP_MAX_CONNECTIONS_PER_IP must be below"):
        config.load(env={"FTP_MAX_CONNECTIONS": "8", "FTP_MAX_CONNECTIONS_PER_IP": "8"})
    with pytest.raises(ConfigError, match="FTP_RESERVED_SESSIONS must be below"):
        config.load(env={"FTP_MAX_CONNECTIONS": "8", "FTP_RESERVED_SESSIONS": "8"})


def test_the_limits_are_stated_at_start(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="snapshot_processor.ingest.ftp")
    thread = FtpServerThread("ftp-stated", threading.Event(), options(tmp_path))
    thread.start()
    try:
        assert thread.ready.wait(5)
    finally:
        assert thread.stop_and_join(5)
    assert (
        "ftp: at most 64 connections, 16 per address, 8 kept for logged-in sessions; "
        "log in within 10 s" in caplog.text
    )


# --- hostile names ----------------------------------------------------------------------


def login_raw(port: int) -> socket.socket:
    sock = raw_connect(port)
    assert reply(sock).startswith("220")
    sock.sendall(b"USER camera\r\n")
    assert reply(sock).startswith("331")
    sock.sendall(f"PASS {PASSWORD}\r\n".encode())
    assert reply(sock).startswith("230")
    return sock


def test_a_nul_in_a_name_is_refused_cleanly(
    server: FtpServerThread, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    before = sample("ftp_names_refused_total")
    sock = login_raw(port_of(server))
    try:
        for command in [b"MKD /upload/a\x00b", b"CWD /upload/\x00", b"RNFR /upload/x\x00.jpg"]:
            sock.sendall(command + b"\r\n")
            assert reply(sock).startswith("501"), command
        sock.sendall(b"NOOP\r\n")  # the session goes on
        assert reply(sock).startswith("200")
    finally:
        sock.close()
    assert sample("ftp_names_refused_total") == before + 3
    assert "Traceback" not in caplog.text
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]


def test_names_are_escaped_in_log_lines(
    server: FtpServerThread, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    sock = login_raw(port_of(server))
    try:
        # A bare LF is no line end in FTP: it reaches the server inside the name.
        for name in ["/upload/two\nlines", "/upload/gpj.\u202eevil", "/upload/bell\x07"]:
            sock.sendall(f"MKD {name}\r\n".encode())
            assert reply(sock).startswith("257"), name
        sock.sendall("USER evil\nuser\u202e\r\n".encode())
        assert reply(sock).startswith("331")
        sock.sendall(b"PASS wrong\r\n")
        assert reply(sock).startswith("530")
    finally:
        sock.close()
    assert (tmp_path / "upload" / "two\nlines").is_dir()
    messages = [record.getMessage() for record in caplog.records]
    assert any("two\\nlines" in message for message in messages)
    assert any("gpj.\\u202eevil" in message for message in messages)
    assert any("evil\\nuser\\u202e" in message for message in messages)
    for message in messages:
        assert not {"\n", "\u202e", "\x07"} & set(message), message


# --- where a camera uploads -------------------------------------------------------------


def test_each_camera_is_told_where_to_upload(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="snapshot_processor.ingest.ftp")
    thread = FtpServerThread(
        "ftp-where",
        threading.Event(),
        options(
            tmp_path, camera_folders=(("Yard camera", "yard"), ("Front Door camera", "frontdoor"))
        ),
    )
    thread.start()
    try:
        assert thread.ready.wait(5)
        port = port_of(thread)
        lines = [r.getMessage() for r in caplog.records if "uploads to" in r.getMessage()]
        assert lines == [
            f"ftp: camera 'Yard camera' uploads to ftp://127.0.0.1:{port}/upload/yard",
            f"ftp: camera 'Front Door camera' uploads to ftp://127.0.0.1:{port}/upload/frontdoor",
        ]
        # The path said is the one that works.
        path = lines[0].rsplit(str(port), 1)[1]
        client = connect(port, "camera", PASSWORD)
        try:
            client.mkd(path)
            client.cwd(path)
            upload(client, "snap.jpg", jpeg("yard"))
        finally:
            client.quit()
    finally:
        assert thread.stop_and_join(5)
    assert (tmp_path / "upload" / "yard" / "snap.jpg").read_bytes() == jpeg("yard")


def test_an_upload_outside_the_upload_folder_is_told_where_to_go(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="snapshot_processor.ingest.ftp")
    thread = FtpServerThread(
        "ftp-misplaced",
        threading.Event(),
        options(tmp_path, camera_folders=(("Yard camera", "yard"),)),
    )
    thread.start()
    before = sample("ftp_uploads_misplaced_total")
    try:
        assert thread.ready.wait(5)
        client = connect(port_of(thread), "camera", PASSWORD)
        try:
            with pytest.raises(ftplib.error_perm) as refused:
                upload(client, "/snap.jpg", jpeg("root"))
            assert str(refused.value) == (
                "550 Uploads go into /upload/<camera folder>/, e.g. /upload/yard/"
            )
        finally:
            client.quit()
    finally:
        assert thread.stop_and_join(5)
    assert not (tmp_path / "snap.jpg").exists()
    assert sample("ftp_uploads_misplaced_total") == before + 1
    lines = [r.getMessage() for r in caplog.records if "refused STOR" in r.getMessage()]
    assert len(lines) == 1, lines
    assert "uploads go into /upload/yard/" in lines[0]
