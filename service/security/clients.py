"""Who is on the other end of a request: the client's address and whether it came over HTTPS.

Behind a load balancer every request comes from the balancer's address, so per-client limits
would put all clients in one bucket. Proxy headers are believed only from peers the operator
listed in ``UNBLOCK_TRUSTED_PROXIES``: otherwise anyone could claim to be 127.0.0.1 or to have
used HTTPS. From a trusted peer, the client is the right-most ``X-Forwarded-For`` address that is
not itself a trusted proxy (the left-most entries are whatever the client chose to send).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from service.config import parse_networks

__all__ = ["Origin", "origin", "parse_networks"]

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def _address(text: str) -> Address | None:
    try:
        address = ipaddress.ip_address(text.strip().strip("[]").split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _trusted(address: Address | None, trusted: Sequence[Network]) -> bool:
    return address is not None and any(address in network for network in trusted)


@dataclass(frozen=True, slots=True)
class Origin:
    address: str
    https: bool

    @property
    def is_loopback(self) -> bool:
        parsed = _address(self.address)
        return parsed is not None and parsed.is_loopback


def origin(peer: str | None, scheme: str, headers: Mapping[str, str], trusted: Sequence[Network]) -> Origin:
    """The client's address and scheme, believing proxy headers only from trusted peers."""
    peer_address = _address(peer or "")
    if not _trusted(peer_address, trusted):
        return Origin(address=str(peer_address) if peer_address else (peer or "unknown"), https=scheme == "https")
    client: Address | None = peer_address
    for hop in reversed([h for h in headers.get("x-forwarded-for", "").split(",") if h.strip()]):
        candidate = _address(hop)
        if candidate is None:
            break  # garbage: stop at the last hop we could read
        client = candidate
        if not _trusted(candidate, trusted):
            break
    forwarded_proto = headers.get("x-forwarded-proto", "").split(",")[0].strip().lower()
    https = forwarded_proto == "https" if forwarded_proto else scheme == "https"
    return Origin(address=str(client) if client else "unknown", https=https)
