"""Find ONVIF cameras with WS-Discovery: a Probe for ``dn:NetworkVideoTransmitter``.

The Probe and its answers are the WSDiscovery library's messages; the UDP socket is ours.
The library's ThreadedWSDiscovery is not used: its unicast probe never reads the answers
(they come back to a socket it does not watch), and it binds port 3702, failing with a thread
left spinning when another program holds that port. The multicast probe goes to
239.255.255.250 from every IPv4 interface; IPv6 multicast (FF02::C) is not sent.
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

from wsdiscovery.actions import NS_ACTION_PROBE_MATCH, constructProbe
from wsdiscovery.message import createSOAPMessage, parseSOAPMessage
from wsdiscovery.qname import QName
from wsdiscovery.util import _getNetworkAddrs, filterServices

__all__ = ["MULTICAST_GROUP", "WS_DISCOVERY_PORT", "FoundCamera", "discover"]

MULTICAST_GROUP = "239.255.255.250"
WS_DISCOVERY_PORT = 3702
_TRANSMITTER = QName("http://www.onvif.org/ver10/network/wsdl", "NetworkVideoTransmitter", "dn")
_NAME = "onvif://www.onvif.org/name/"
_HARDWARE = "onvif://www.onvif.org/hardware/"


@dataclass(frozen=True)
class FoundCamera:
    """A camera that answered: ``address`` is the host of its first device service URL
    (``xaddrs``); ``name`` and ``hardware`` come from its ONVIF scopes, URL-decoded."""

    address: str
    xaddrs: tuple[str, ...]
    scopes: tuple[str, ...]
    name: str | None
    hardware: str | None


def discover(timeout: float = 3.0, *, address: str | None = None) -> list[FoundCamera]:
    """The ONVIF cameras that answer a Probe within ``timeout`` seconds, by address. Multicast,
    or with ``address`` (``HOST`` or ``HOST:PORT``, port 3702 by default) unicast to that one
    host, for networks that drop multicast; that ends at its answer. Raises ``ValueError``
    for a malformed address, ``OSError`` when the probe cannot be sent."""
    probe = constructProbe([_TRANSMITTER], [])
    message = createSOAPMessage(probe).encode()
    deadline = time.monotonic() + timeout
    target: tuple[Any, ...]
    if address is None:
        family, target = socket.AF_INET, (MULTICAST_GROUP, WS_DISCOVERY_PORT)
    else:
        host, port = _host_port(address)
        family, _, _, _, target = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0]
    matches: dict[str, Any] = {}  # by endpoint: a camera may answer on several interfaces
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        _send(sock, message, target, multicast=address is None)
        while (left := deadline - time.monotonic()) > 0 and not (address and matches):
            sock.settimeout(left)
            try:
                data, peer = sock.recvfrom(65535)
            except TimeoutError:
                break
            try:
                answer = parseSOAPMessage(data, peer[0])
            except Exception:  # the library's parser raises anything on a malformed answer
                continue
            if (
                answer is not None
                and answer.getAction() == NS_ACTION_PROBE_MATCH
                and answer.getRelatesTo() == probe.getMessageId()
            ):
                matches.update((m.getEPR(), m) for m in answer.getProbeResolveMatches())
    found = [_camera(m) for m in filterServices(list(matches.values()), [_TRANSMITTER], None)]
    # One without a device service URL cannot be asked for anything.
    return sorted((camera for camera in found if camera.xaddrs), key=lambda c: c.address)


def _send(sock: socket.socket, message: bytes, target: Any, *, multicast: bool) -> None:
    """Twice, as SOAP-over-UDP does (a datagram may be lost); multicast from each interface."""
    # The library's own list: the IPv4 addresses that are neither loopback nor link-local.
    interfaces = [a.packed for a in _getNetworkAddrs(socket.AF_INET)] if multicast else []
    sent, failure = False, None
    for interface in interfaces or [None]:
        try:
            if interface is not None:
                sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, interface)
            for _ in range(2):
                sock.sendto(message, target)
            sent = True
        except OSError as exc:  # an interface that is down or takes no multicast
            failure = exc
    if not sent and failure is not None:
        raise failure


def _host_port(address: str) -> tuple[str, int]:
    if address.count(":") > 1 and not address.startswith("["):
        return address, WS_DISCOVERY_PORT  # an IPv6 address without a port
    parts = urlsplit(f"//{address}")
    try:
        port = parts.port or WS_DISCOVERY_PORT
    except ValueError:
        raise ValueError(f"{address!r}: the port is not a number from 1 to 65535") from None
    if not parts.hostname:
        raise ValueError(f"{address!r}: expected HOST or HOST:PORT")
    return parts.hostname, port


def _camera(match: Any) -> FoundCamera:
    xaddrs = tuple(str(xaddr) for xaddr in match.getXAddrs() or ())
    scopes = tuple(str(scope.getValue()) for scope in match.getScopes() or ())
    return FoundCamera(
        address=_host(xaddrs[0]) if xaddrs else "",
        xaddrs=xaddrs,
        scopes=scopes,
        name=_scope(scopes, _NAME),
        hardware=_scope(scopes, _HARDWARE),
    )


def _host(url: str) -> str:
    try:
        return urlsplit(url).hostname or ""
    except ValueError:  # a malformed IPv6 literal
        return ""


def _scope(scopes: tuple[str, ...], prefix: str) -> str | None:
    value = next((s[len(prefix) :] for s in scopes if s.startswith(prefix)), "")
    return unquote(value) or None
