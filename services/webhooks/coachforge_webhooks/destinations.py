"""Where webhooks may be sent: not into the platform's own networks unless an operator allows it.

A tenant chooses its endpoint's URL, and the sender POSTs to it from inside the cluster, so an
unchecked URL would let a tenant reach what only the platform should: the cloud's metadata service
(169.254.169.254), the database, other services' internal ports. An endpoint whose host is, or
resolves to, a loopback, private (RFC 1918, IPv6 unique-local), link-local, carrier-grade NAT,
multicast, reserved or unspecified address is refused, at creation (a 400 on ``url``) and again before
every attempt (the name may resolve elsewhere by then; such an attempt fails without a request).
``COACHFORGE_WEBHOOKS_ALLOWED_NETWORKS`` lists networks allowed all the same (CIDRs, e.g.
``10.20.0.0/16`` for an on-premises receiver, or ``127.0.0.0/8`` on a development machine).

A name that does not resolve at creation is accepted (its DNS record may come later); the sender checks it
when it sends. Redirects are not followed (the sender's HTTP client never follows them).
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Sequence
from urllib.parse import urlsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[str, int], list[str]]

_CGNAT = ipaddress.ip_network("100.64.0.0/10")


class BlockedDestination(ValueError):
    """The URL's host is, or resolves to, an address webhooks are not sent to."""


def parse_networks(values: Sequence[str]) -> list[IPNetwork]:
    """CIDRs (or single addresses) as networks; a ValueError naming the first bad one."""
    out: list[IPNetwork] = []
    for value in values:
        try:
            out.append(ipaddress.ip_network(value.strip(), strict=False))
        except ValueError as err:
            raise ValueError(f"{value!r} is not a network (CIDR such as 10.0.0.0/8): {err}") from None
    return out


def kind_of(address: IPAddress) -> str | None:
    """Why webhooks are not sent to ``address`` (``"loopback"``, ``"private"``, ...), None when they may be."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return kind_of(address.ipv4_mapped)
    if address.is_loopback:
        return "loopback"
    if address.is_link_local:
        return "link-local"
    if address.is_multicast:
        return "multicast"
    if address.is_unspecified:
        return "unspecified"
    if isinstance(address, ipaddress.IPv4Address) and address in _CGNAT:
        return "shared (carrier-grade NAT)"
    if address.is_private:
        return "private"
    if address.is_reserved:
        return "reserved"
    return None


def system_resolver(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to (``getaddrinfo``)."""
    return sorted({str(info[4][0]) for info in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)})


def check_destination(url: str, allowed: Sequence[IPNetwork], *, resolve: Resolver = system_resolver,
                      unresolved_ok: bool = False) -> None:
    """Raise :class:`BlockedDestination` when ``url``'s host is, or resolves to, a blocked address
    outside ``allowed``. A host that does not resolve raises too, unless ``unresolved_ok``."""
    parts = urlsplit(url)
    host = (parts.hostname or "").strip("[]")
    port = parts.port or (443 if parts.scheme.lower() == "https" else 80)
    try:
        addresses: list[IPAddress] = [ipaddress.ip_address(host)]
    except ValueError:
        try:
            addresses = [ipaddress.ip_address(a.split("%", 1)[0]) for a in resolve(host, port)]
        except (OSError, UnicodeError) as err:
            if unresolved_ok:
                return
            raise BlockedDestination(f"host {host!r} does not resolve ({err})") from None
    for address in addresses:
        kind = kind_of(address)
        if kind is not None and not any(address in network for network in allowed):
            shown = host if str(address) == host else f"{host} ({address})"
            raise BlockedDestination(
                f"{shown} is a {kind} address; webhooks are not sent into private networks unless "
                "COACHFORGE_WEBHOOKS_ALLOWED_NETWORKS includes it")
