"""Which addresses a trigger may send the daemon's camera GET to (``CAMERA_NETWORKS``).

Whoever may publish to the control exchange chooses the host in ``device_params``;
unbounded, the daemon would GET any address for them: another service's port on this
machine, or a cloud metadata service. A host name is resolved here, every address it
resolves to must be inside, and the connection then goes to the address checked (see
:attr:`~snapshot_processor.camera.spec.CameraSpec.connect_to`): a second lookup, which
DNS rebinding could answer otherwise, never happens.

Link-local addresses (``169.254.0.0/16``, the metadata address ``169.254.169.254``
among them, and ``fe80::/10``) pass only through a listed network that lies inside a
link-local range: a broad entry such as ``0.0.0.0/0`` does not open them.
"""

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

# The private and loopback ranges. CGNAT's 100.64.0.0/10 is left out: those addresses
# are the carrier's side of its NAT, not the home's, and Alibaba Cloud's metadata
# service answers at 100.100.100.200; a camera reached over Tailscale (which uses the
# range) is listed explicitly.
DEFAULT_CAMERA_NETWORKS = "10.0.0.0/8,172.16.0.0/12,192.168.0.0/16,127.0.0.0/8,::1/128,fc00::/7"


class AddressRefusedError(ValueError):
    """A camera host that is, or resolves to, an address outside the networks.

    ``refused`` holds the addresses outside. The message names the host and addresses,
    never the credentials that came with them.
    """

    def __init__(self, message: str, *, refused: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.refused = refused


def parse_networks(value: object) -> tuple[IPNetwork, ...]:
    """``CAMERA_NETWORKS`` as networks: a comma-separated string or a list of CIDR
    networks. Host bits set (``10.0.0.1/8``) are refused: likely a typo."""
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


def _plain(address: IPAddress) -> IPAddress:
    """An IPv4-mapped IPv6 address (``::ffff:169.254.169.254``) as the IPv4 it reaches."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _link_local_network(network: IPNetwork) -> bool:
    return network.network_address.is_link_local and network.broadcast_address.is_link_local


class CameraNetworks:
    """The networks a trigger's camera address must lie in."""

    def __init__(self, networks: Iterable[IPNetwork]) -> None:
        self.networks = tuple(networks)

    @classmethod
    def default(cls) -> CameraNetworks:
        """The private and loopback ranges (:data:`DEFAULT_CAMERA_NETWORKS`)."""
        return cls(parse_networks(DEFAULT_CAMERA_NETWORKS))

    def __str__(self) -> str:
        return ",".join(str(network) for network in self.networks) or "(none)"

    def allows(self, address: str | IPAddress) -> bool:
        """Whether ``address`` (an IP address, not a name) is inside; no network used."""
        ip = _plain(ipaddress.ip_address(address) if isinstance(address, str) else address)
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
            # The host comes from a trigger: escaped, so it cannot split a log line.
            shown = printable(host)
            if refused != (host,):
                shown += f" ({', '.join(refused)})"
            raise AddressRefusedError(
                f"camera address {shown} is outside CAMERA_NETWORKS ({self})", refused=refused
            )
        return found

    def resolve(self, host: str, port: int) -> tuple[str, ...]:
        """Look ``host`` up (a literal takes no lookup) and :meth:`check` its addresses.
        Raises :class:`OSError` (``socket.gaierror``) or :class:`UnicodeError` (a name
        IDNA cannot encode) for a name that does not resolve."""
        found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        return self.check(host, [_address(info[4]) for info in found])


def _address(sockaddr: tuple[Any, ...]) -> str:
    """The address of a ``getaddrinfo`` answer, an IPv6 link's scope kept (``fe80::1%2``):
    without it a link-local address cannot be connected to."""
    address = str(sockaddr[0])
    if len(sockaddr) == 4 and sockaddr[3] and "%" not in address:
        address = f"{address}%{sockaddr[3]}"
    return address
