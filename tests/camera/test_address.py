"""Tests for parsing the ``user:password@host:port[,rtsp_port]`` camera address."""

from __future__ import annotations

import pytest

from snapshot_processor.camera.address import CameraAddress, parse_device_params


def test_plain_address() -> None:
    address = parse_device_params("admin:secret@192.168.1.20:88")
    assert address == CameraAddress("admin", "secret", "192.168.1.20", 88, None)


def test_rtsp_port_present() -> None:
    address = parse_device_params("admin:secret@cam.local:88,554")
    assert (address.host, address.port, address.rtsp_port) == ("cam.local", 88, 554)


def test_rtsp_port_absent() -> None:
    assert parse_device_params("admin:secret@cam.local:80").rtsp_port is None


@pytest.mark.parametrize(
    ("text", "user", "password"),
    [
        ("admin:p@ss@10.0.0.5:88", "admin", "p@ss"),
        ("admin:a:b:c@10.0.0.5:88", "admin", "a:b:c"),
        ("admin:@:@@10.0.0.5:88,554", "admin", "@:@"),
        ("admin:with space & 100%@10.0.0.5:88", "admin", "with space & 100%"),
        ("admin:@10.0.0.5:88", "admin", ""),
    ],
)
def test_password_may_contain_at_and_colon(text: str, user: str, password: str) -> None:
    address = parse_device_params(text)
    assert (address.user, address.password, address.host, address.port) == (
        user,
        password,
        "10.0.0.5",
        88,
    )


def test_surrounding_white_space_is_ignored() -> None:
    assert parse_device_params("  admin:secret@cam:88\n").port == 88


def test_ipv6_host() -> None:
    address = parse_device_params("admin:secret@[fe80::1]:88,554")
    assert (address.host, address.port, address.rtsp_port) == ("fe80::1", 88, 554)
    assert str(address) == "admin:***@[fe80::1]:88,554"


SECRET = "S3cr3t@:pa55"


@pytest.mark.parametrize(
    ("text", "words"),
    [
        (f"admin:{SECRET}@cam.local", "port is missing"),
        (f"admin:{SECRET}@cam.local:", "port is missing"),
        (f"admin:{SECRET}@cam.local:eighty", "port is not a number"),
        (f"admin:{SECRET}@cam.local:\uff18\uff18", "port is not a number"),  # full-width digits
        (f"admin:{SECRET}@cam.local:70000", "out of range"),
        (f"admin:{SECRET}@cam.local:0", "out of range"),
        (f"admin:{SECRET}@cam.local:88,", "RTSP port is missing"),
        (f"admin:{SECRET}@cam.local:88,rtsp", "RTSP port is not a number"),
        (f":{SECRET}@cam.local:88", "user name is empty"),
        (f"admin:{SECRET}@:88", "host is empty"),
        (f"admin{SECRET.replace(':', '').replace('@', '')}cam.local:88", "no '@'"),
        (f"admin@{SECRET.replace(':', '').replace('@', '')}:88", "no ':'"),
        ("", "empty"),
        (f"admin:{SECRET}@[fe80::1:88", "IPv6"),
    ],
)
def test_bad_input_names_the_problem_but_not_the_password(text: str, words: str) -> None:
    with pytest.raises(ValueError, match="camera address") as caught:
        parse_device_params(text)
    message = str(caught.value)
    assert words in message
    for fragment in (SECRET, "S3cr3t", "pa55", "eighty", "rtsp"):
        assert fragment not in message
    # No chained exception (int()'s message would quote the input).
    assert caught.value.__cause__ is None
    assert caught.value.__suppress_context__ or caught.value.__context__ is None


def test_repr_and_str_hide_the_password() -> None:
    address = parse_device_params(f"admin:{SECRET}@cam.local:88,554")
    assert address.password == SECRET
    for text in (repr(address), str(address), f"{address}", f"{address!r}"):
        assert SECRET not in text
        assert "***" in text
    assert str(address) == "admin:***@cam.local:88,554"
    assert "host='cam.local'" in repr(address)


def test_address_is_frozen() -> None:
    address = parse_device_params("admin:secret@cam.local:88")
    with pytest.raises(AttributeError):
        address.port = 99  # type: ignore[misc]
