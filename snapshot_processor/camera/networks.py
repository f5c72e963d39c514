"""Which addresses a trigger may send the daemon's camera GET to (``CAMERA_NETWORKS``).

Whoever may publish picks a trigger's host: every address it resolves to must be inside,
and the connection goes to the address checked (no second lookup for DNS rebinding).
Link-local addresses pass only through a listed link-local network, never ``0.0.0.0/0``."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable, Sequence
from typing import Any

from pylib.observe.logs import printable

__all__ = [
    "DEFAULT_CAMERA_NETWORKS",
    "AddressRefusedError",
    "CameraNetworks",
    "IPNetwork",
    "parse_networks",
]

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# Private and loopback ranges; not CGNAT's 100.64.0.0/10 (the carrier's side of its NAT,
# and Alibaba Cloud's metadata service): a camera over Tailscale is listed explicitly.
DEFAULT_CAMERA_NETWORKS = "10.0.0.0/8,172.16.0.0/12,192.168.0.0/16,127.0.0.0/8,::1/128,fc00::/7"


class AddressRefusedError(ValueError):
    """A camera host outside the networks (``refused``: its addresses); no credentials in it."""

    def __init__(self, message: str, *, refused: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.refused = refused


def parse_networks(value: object) -> tuple[IPNetwork, ...]:
    """``CAMERA_NETWORKS`` (comma-separated or a list) as networks; host bits set are refused."""
    if isinstance(value, str):
        parts: Iterable[object] = value.split(",")
    elif isinstance(value, list | tuple):
        parts = value
    else:
        raise ValueError("expected comma-separated CIDR networks, e.g. 192.168.0.0/16")
    networks = []
    for part in parts:
        if isinstance(part, ipaddress.IPv4Network | ipaddress.IPv6Network):
            networks.append(part)
            continue
        text = str(part).strip()
        if not text:
            continue
        try:
            networks.append(ipaddress.ip_network(text))
        except ValueError as exc:
            raise ValueError(f"{text!r} is not a CIDR network ({exc})") from None
    return tuple(networks)


def _link_local_network(network: IPNetwork) -> bool:
    return network.network_address.is_link_local and network.broadcast_address.is_link_local


class CameraNetworks:
    """The networks a trigger's camera address must lie in."""

    def __init__(self, networks: Iterable[IPNetwork]) -> None:
        self.networks = tuple(networks)

    @classmethod
    def default(cls) -> CameraNetworks:
        return cls(parse_networks(DEFAULT_CAMERA_NETWORKS))

    def __str__(self) -> str:
        return ",".join(str(network) for network in self.networks) or "(none)"

    def allows(self, address: str | IPAddress) -> bool:
        """Whether ``address`` (an IP address, not a name) is inside; no network used."""
        ip = ipaddress.ip_address(address) if isinstance(address, str) else address
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped  # ::ffff:169.254.169.254 reaches the IPv4 address
        link_local = ip.is_link_local
        return any(
            ip.version == network.version
            and ip in network
            and (not link_local or _link_local_network(network))
            for network in self.networks
        )

    def check(self, host: str, addresses: Sequence[str]) -> tuple[str, ...]:
        """The addresses ``host`` resolved to, each once and in order, if every one is
        inside; raises :class:`AddressRefusedError` otherwise."""
        found = tuple(dict.fromkeys(addresses))
        refused = tuple(address for address in found if not self.allows(address))
        if refused or not found:
            shown = printable(host)  # from a trigger: it must not split a log line
            if refused != (host,):
                shown += f" ({', '.join(refused)})"
            raise AddressRefusedError(
                f"camera address {shown} is outside CAMERA_NETWORKS ({self})", refused=refused
            )
        return found

    def resolve(self, host: str, port: int) -> tuple[str, ...]:
        """Look ``host`` up and :meth:`check` its addresses; a name that does not resolve
        raises :class:`OSError` (``socket.gaierror``) or :class:`UnicodeError` (bad IDNA)."""
        found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        return self.check(host, [_address(info[4]) for info in found])


def _address(sockaddr: tuple[Any, ...]) -> str:
    """A ``getaddrinfo`` answer's address, an IPv6 link's scope kept (``fe80::1%2``) to connect."""
    address = str(sockaddr[0])
    if len(sockaddr) == 4 and sockaddr[3] and "%" not in address:
        address = f"{address}%{sockaddr[3]}"
    return address
