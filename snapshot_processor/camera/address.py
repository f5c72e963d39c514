"""Parse the camera address in ``device_params``; the password may contain ``@`` and ``:``,
so the user name ends at the first ``:`` and the host part starts after the last ``@``."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["CameraAddress", "parse_device_params"]


@dataclass(frozen=True)
class CameraAddress:
    """A camera's network address and credentials; its repr and str hide the password."""

    user: str
    password: str = field(repr=False)
    host: str
    port: int
    rtsp_port: int | None = None

    def __repr__(self) -> str:
        return (
            f"CameraAddress(user={self.user!r}, password='***', host={self.host!r}, "
            f"port={self.port!r}, rtsp_port={self.rtsp_port!r})"
        )

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        rtsp = f",{self.rtsp_port}" if self.rtsp_port is not None else ""
        return f"{self.user}:***@{host}:{self.port}{rtsp}"


def _parse_port(text: str, what: str) -> int:
    if not text:
        raise ValueError(f"camera address: {what} is missing")
    if not (text.isascii() and text.isdigit()):  # isdigit() alone takes non-ASCII digits
        raise ValueError(f"camera address: {what} is not a number")
    port = int(text)
    if not 1 <= port <= 65535:
        raise ValueError(f"camera address: {what} {port} is out of range 1-65535")
    return port


def parse_device_params(text: str) -> CameraAddress:
    """Parse ``user:password@host:port[,rtsp_port]``; ``ValueError`` names the wrong part,
    never quoting the input (any part of a malformed address may be the password)."""
    if not isinstance(text, str):
        raise ValueError("camera address: expected a string")
    text = text.strip()
    if not text:
        raise ValueError("camera address: empty")
    credentials, at, location = text.rpartition("@")
    if not at:
        raise ValueError("camera address: no '@' between credentials and host")
    user, colon, password = credentials.partition(":")
    if not colon:
        raise ValueError("camera address: no ':' between user name and password")
    if not user:
        raise ValueError("camera address: user name is empty")

    hostport, comma, rtsp_text = location.partition(",")
    rtsp_port = _parse_port(rtsp_text.strip(), "RTSP port") if comma else None
    hostport = hostport.strip()
    if hostport.startswith("["):
        host, bracket, rest = hostport[1:].partition("]")
        if not bracket or not rest.startswith(":"):
            raise ValueError("camera address: malformed [IPv6]:port")
        port_text = rest[1:]
    else:
        host, colon, port_text = hostport.rpartition(":")
        if not colon:
            raise ValueError("camera address: port is missing (expected host:port)")
    if not host:
        raise ValueError("camera address: host is empty")
    if any(ch.isspace() for ch in host):
        raise ValueError("camera address: host contains white space")
    port = _parse_port(port_text.strip(), "port")
    return CameraAddress(user=user, password=password, host=host, port=port, rtsp_port=rtsp_port)
