"""The redaction filter removes credentials from log lines and exception text."""

from __future__ import annotations

import io
import logging

import pytest

from pylib.observe.logs import setup_logging
from pylib.observe.redact import redact, redact_data, register_secret

PASSWORD = "Sup3r:s@cret pw"


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        (
            "GET http://cam:88/cgi-bin/CGIProxy.fcgi?cmd=snapPicture2&usr=admin&pwd=hunter22 x",
            "hunter22",
        ),
        ("https://admin:hunter22@cam.local/ISAPI/picture", "hunter22"),
        ("amqp://guest:pa@ss22@rabbit:5672/%2F", "pa@ss22"),
        ("rtsp://admin:hunter22@cam:554/Streaming/Channels/101", "hunter22"),
        ("rtsps://admin:p%40ss22@cam/h264Preview_01_main", "p%40ss22"),
        ("admin:p@ss:w0rd@192.168.1.5:88,554", "p@ss:w0rd"),
        ('{"password": "two words", "n": 1}', "two words"),
        ("OP_CONNECT_TOKEN=eyJhbGciOiJFUzI1NiIs", "eyJhbGciOiJFUzI1NiIs"),
        ("Authorization: Bearer abcdefghijklmnop", "abcdefghijklmnop"),
        ("&password=with%20space&next=1", "with%20space"),
    ],
)
def test_patterns_remove_credentials(text: str, secret: str) -> None:
    out = redact(text)
    assert secret not in out
    assert "***" in out


def test_plain_text_is_untouched() -> None:
    text = "camera front door at 10.0.0.5:88 answered 200 in 12:30:01"
    assert redact(text) == text


def test_registered_secret_is_masked_anywhere() -> None:
    register_secret(PASSWORD)
    assert redact(f"weird {PASSWORD}!") == "weird ***!"
    assert redact_data({"a": [f"x{PASSWORD}"], "b": 3}) == {"a": ["x***"], "b": 3}


def _log_stream() -> io.StringIO:
    stream = io.StringIO()
    setup_logging(logging.DEBUG, stream=stream)
    return stream


def test_logged_url_and_exception_are_redacted() -> None:
    stream = _log_stream()
    register_secret(PASSWORD)
    logger = logging.getLogger("test.redact")
    url = "http://192.168.1.9:88/cgi-bin/CGIProxy.fcgi?cmd=snapPicture2&usr=admin&pwd=hunter22"
    logger.info("fetching %s", url)
    try:
        raise ConnectionError(f"failed to connect to {url} as admin:{PASSWORD}@192.168.1.9:88")
    except ConnectionError:
        logger.exception("camera failed")
    out = stream.getvalue()
    assert "fetching http://192.168.1.9:88/cgi-bin/CGIProxy.fcgi" in out
    assert "ConnectionError" in out
    assert "hunter22" not in out
    assert PASSWORD not in out


def test_record_is_redacted_for_every_handler() -> None:
    _log_stream()
    seen: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record)

    # Handlers added after ours see the record our filter already redacted in place.
    keep = Keep()
    root = logging.getLogger()
    root.addHandler(keep)
    try:
        logging.getLogger("test.redact").warning("token=%s", "abcdef123456")
    finally:
        root.removeHandler(keep)
    assert seen
    assert "abcdef123456" not in seen[0].getMessage()


def test_traceback_is_redacted_for_any_handler() -> None:
    # Handlers that are not ours: one on the logger itself (it runs before the root's,
    # so before our handler's filter) and one on the root after ours. Both read
    # record.exc_text or format with a plain logging.Formatter.
    _log_stream()
    register_secret(PASSWORD)
    seen: list[str] = []

    class Plain(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record.exc_text or "")
            seen.append(logging.Formatter().format(record))

    logger = logging.getLogger("test.redact.plain")
    before, after = Plain(), Plain()
    logger.addHandler(before)
    logging.getLogger().addHandler(after)
    try:
        try:
            raise ConnectionError(f"camera admin:{PASSWORD}@192.168.1.9:88 refused token=abc123456")
        except ConnectionError:
            logger.exception("fetch failed")
    finally:
        logger.removeHandler(before)
        logging.getLogger().removeHandler(after)
    assert len(seen) == 4
    assert all("ConnectionError" in text for text in seen)
    for text in seen:
        assert PASSWORD not in text
        assert "abc123456" not in text


def test_syslog_gets_the_redacted_line() -> None:
    import socket

    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        receiver.bind(("127.0.0.1", 0))
        receiver.settimeout(5)
        port = receiver.getsockname()[1]
        handler = setup_logging(logging.INFO, syslog_address=f"127.0.0.1:{port}")
        try:
            logging.getLogger("test.syslog").warning("camera at http://admin:hunter22@cam/x")
            data = receiver.recv(4096).decode()
        finally:
            logging.getLogger().removeHandler(handler)
            handler.close()
    finally:
        receiver.close()
    assert "test.syslog" in data
    assert "[MainThread]" in data
    assert "admin:***@cam" in data
    assert "hunter22" not in data


def test_a_value_masked_already_keeps_what_follows_it() -> None:
    shown = "Porch camera: HTTP 401 (GET http://cam:88/cgi?cmd=snapPicture2&usr=admin&pwd=***)"
    assert redact(shown) == shown


def test_a_value_that_merely_begins_with_the_mask_is_masked_whole() -> None:
    assert redact("GET http://cam/cgi?usr=admin&pwd=***secret&x=1") == (
        "GET http://cam/cgi?usr=admin&pwd=***&x=1"
    )
