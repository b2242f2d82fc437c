"""Which addresses the service may open a connection to on someone else's say-so (webhook receivers).

A subscriber picks the URL; the service then POSTs to it from inside the operator's network.
Without a check, a URL is a way to reach what that network protects: the cloud metadata service
(169.254.169.254), databases and caches on loopback or RFC 1918 addresses, the sandbox's
loopback-only control API. So a host may be contacted only when it IS, or RESOLVES TO, globally
reachable addresses, every one of them: loopback, private (RFC 1918), link-local, carrier-grade
NAT, unique-local, multicast, unspecified, reserved and other special-purpose addresses are
refused, unless the operator allowed their network (``UNBLOCK_WEBHOOK_ALLOW_NETWORKS``).

Hosts are read the way browsers and libc read them, because that is how the connection would be
made: ``2852039166``, ``0xa9fea9fe``, ``0251.0376.0251.0376`` and ``169.254.43518`` are all
169.254.169.254 (``socket.inet_aton`` parses these forms; a host that looks like a number but
does not parse is refused, not sent to DNS). IPv6 forms that carry an IPv4 address (IPv4-mapped
``::ffff:a.b.c.d``, IPv4-compatible ``::a.b.c.d``, NAT64 ``64:ff9b::/96``, 6to4 ``2002::/16``)
are judged by the IPv4 address they lead to. ``localhost`` names are loopback without asking DNS
(RFC 6761).

The check returns the addresses it allowed, and the caller must connect to one of those and to
nothing else: resolving the name again at connect time would let a DNS answer that changed in
between (rebinding) pick the address. Resolution is a parameter (:data:`Resolver`), so tests
use a stub and nothing here touches the network by itself.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from service.errors import RefusedDestination, UnresolvableHost

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

#: ``resolve(host, port)``: the addresses a host name has now, as strings (``getaddrinfo`` order).
Resolver = Callable[[str, int], Awaitable[Sequence[str]]]

ALLOW_SETTING = "UNBLOCK_WEBHOOK_ALLOW_NETWORKS"

_RFC1918 = tuple(ipaddress.IPv4Network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"))
_THIS_NETWORK = ipaddress.IPv4Network("0.0.0.0/8")  # 0.0.0.0 itself reaches this machine on Linux
_CGNAT = ipaddress.IPv4Network("100.64.0.0/10")
_UNIQUE_LOCAL = ipaddress.IPv6Network("fc00::/7")
_IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_LOCAL_NAT64 = ipaddress.IPv6Network("64:ff9b:1::/48")
_TEREDO = ipaddress.IPv6Network("2001::/32")

# A DNS name as a URL may carry it (lower-case ASCII: IDN hosts arrive in punycode); anything
# else (percent-escapes, other punctuation) is neither a name nor an address.
_NAME = re.compile(r"^(?=.{1,253}\.?$)[a-z0-9_](?:[a-z0-9_-]{0,62})(?:\.[a-z0-9_](?:[a-z0-9_-]{0,62}))*\.?$")
# WHATWG URL's "ends in a number": such a host is an IPv4 address or nothing, never a DNS name.
_NUMERIC_LABEL = re.compile(r"^(?:[0-9]+|0x[0-9a-f]*)$")


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why one address may not be contacted: the kind of range and the block it belongs to."""

    address: IPAddress
    kind: str
    block: str
    via: ipaddress.IPv4Address | None = None  # the IPv4 address an IPv6 form leads to

    def range_text(self) -> str:
        article = "an" if self.kind[0] in "aeiou" else "a"
        return f"{article} {self.kind} address ({self.block})"

    def describe(self) -> str:
        if self.via is not None:
            return f"{self.address}, which leads to {self.via}, {self.range_text()}"
        return f"{self.address}, {self.range_text()}"


@dataclass(frozen=True, slots=True)
class DestinationPolicy:
    """What may be contacted: everything global, plus the operator's networks; http only where said."""

    allow_networks: tuple[IPNetwork, ...] = ()
    allow_http: bool = False
    resolve_timeout: float = 5.0
    #: (host, port) pairs never contacted, whatever the networks: the PowerShell endpoint.
    reserved_endpoints: tuple[tuple[str, int], ...] = ()


@dataclass(frozen=True, slots=True)
class Destination:
    """A host the check allowed, and the only addresses a connection to it may use."""

    scheme: str
    host: str
    port: int
    addresses: tuple[IPAddress, ...]


def literal_address(host: str) -> IPAddress | None:
    """The address ``host`` names without DNS (any IPv6 form, IPv4 in every libc form), or None for a name.

    Raises :class:`RefusedDestination` for a host that is numeric but no address (``1.2.3.4.5``).
    """
    text = host.strip("[]").lower()
    if ":" in text:
        try:
            return ipaddress.IPv6Address(text)
        except ValueError:
            raise RefusedDestination(f"url host {host} is not a valid IPv6 address", field="url") from None
    stripped = text[:-1] if text.endswith(".") else text
    if not _NUMERIC_LABEL.match(stripped.rsplit(".", 1)[-1]):
        return None
    invalid = RefusedDestination(f"url host {host} looks like an IPv4 address but is not a valid one", field="url")
    if not re.fullmatch(r"[0-9a-fx.]+", stripped):
        raise invalid  # inet_aton stops at whitespace and would read "1.2.3.4 junk" as 1.2.3.4
    try:
        packed = socket.inet_aton(stripped)
    except OSError:
        raise invalid from None
    return ipaddress.IPv4Address(packed)


def embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 form carries and leads to (mapped, compatible, NAT64, 6to4)."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if (address in _NAT64 or address in _IPV4_COMPATIBLE) and int(address) > 1:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def _ipv4_refusal(address: ipaddress.IPv4Address) -> tuple[str, str] | None:
    checks: tuple[tuple[bool, str, str], ...] = (
        (address in _THIS_NETWORK, "unspecified", "0.0.0.0/8, this host on this network"),
        (address.is_loopback, "loopback", "127.0.0.0/8"),
        (any(address in n for n in _RFC1918), "private", "RFC 1918: 10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16"),
        (address.is_link_local, "link-local", "169.254.0.0/16, where cloud metadata services answer"),
        (address in _CGNAT, "carrier-grade NAT", "100.64.0.0/10"),
        (address.is_multicast, "multicast", "224.0.0.0/4"),
        (address.is_reserved, "reserved", "240.0.0.0/4"),
        (not address.is_global, "special-purpose", "not globally reachable per the IANA registry"),
    )
    return next(((kind, block) for hit, kind, block in checks if hit), None)


def _ipv6_refusal(address: ipaddress.IPv6Address) -> tuple[str, str] | None:
    checks: tuple[tuple[bool, str, str], ...] = (
        (address.is_unspecified, "unspecified", "::"),
        (address.is_loopback, "loopback", "::1"),
        (address.is_link_local, "link-local", "fe80::/10"),
        (address.is_site_local, "site-local", "fec0::/10"),
        (address in _UNIQUE_LOCAL, "unique-local", "fc00::/7"),
        (address.is_multicast, "multicast", "ff00::/8"),
        (address in _LOCAL_NAT64, "local-use NAT64", "64:ff9b:1::/48"),
        (address in _TEREDO, "Teredo", "2001::/32"),
        (address in _IPV4_COMPATIBLE, "reserved", "::/96, deprecated IPv4-compatible"),
        (address.is_reserved, "reserved", "IETF reserved"),
        (not address.is_global, "special-purpose", "not globally reachable per the IANA registry"),
    )
    return next(((kind, block) for hit, kind, block in checks if hit), None)


def _allowed(address: IPAddress, networks: Sequence[IPNetwork]) -> bool:
    candidates: list[IPAddress] = [address]
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        candidates.append(address.ipv4_mapped)
    return any(a.version == n.version and a in n for a in candidates for n in networks)


def refusal(address: IPAddress, allow_networks: Sequence[IPNetwork] = ()) -> Refusal | None:
    """Why ``address`` may not be contacted, or None when it may.

    Inside an allowed network, anything goes: that is the operator's explicit choice. Otherwise
    only globally reachable addresses pass; an IPv6 form that leads to an IPv4 address is judged
    by that address (the range Python's ``is_global`` gives such forms differs between versions).
    """
    if _allowed(address, allow_networks):
        return None
    if isinstance(address, ipaddress.IPv4Address):
        found = _ipv4_refusal(address)
        return Refusal(address, *found) if found else None
    via = embedded_ipv4(address)
    if via is not None:
        found = _ipv4_refusal(via)
        if found is not None:
            return Refusal(address, *found, via=via)
        if address not in _IPV4_COMPATIBLE:
            return None  # translated to a global IPv4 address, and judged as that address
    found = _ipv6_refusal(address)
    return Refusal(address, *found) if found else None


def _is_localhost(host: str) -> bool:
    name = host.rstrip(".")
    return name == "localhost" or name.endswith(".localhost")


async def _resolve(host: str, port: int, *, policy: DestinationPolicy, resolve: Resolver) -> tuple[IPAddress, ...]:
    if _is_localhost(host):
        return (ipaddress.IPv4Address("127.0.0.1"),)
    literal = literal_address(host)
    if literal is not None:
        return (literal,)
    if not _NAME.match(host):
        raise RefusedDestination(
            f"url host {host} is neither a DNS name (letters, digits, hyphens; punycode for international "
            "names) nor an IP address",
            field="url",
        )
    try:
        async with asyncio.timeout(policy.resolve_timeout):
            found = await resolve(host, port)
    except (OSError, TimeoutError):
        found = []
    addresses = tuple(dict.fromkeys(ipaddress.ip_address(a.split("%", 1)[0]) for a in found))
    if not addresses:
        raise UnresolvableHost(
            f"url host {host} does not resolve to any address; a receiver's name must resolve", field="url"
        )
    return addresses


async def _reserved(
    host: str, port: int, addresses: Sequence[IPAddress], policy: DestinationPolicy, resolve: Resolver
) -> bool:
    for reserved_host, reserved_port in policy.reserved_endpoints:
        if reserved_port != port:
            continue
        if reserved_host.lower() == host:
            return True
        try:
            theirs = await _resolve(reserved_host.lower(), reserved_port, policy=policy, resolve=resolve)
        except (RefusedDestination, UnresolvableHost):
            continue
        if set(theirs) & set(addresses):
            return True
    return False


def _is_literal(host: str) -> bool:
    if _is_localhost(host):
        return True
    try:
        return literal_address(host) is not None
    except RefusedDestination:
        return True


def _refused(host: str, found: Refusal) -> RefusedDestination:
    if not _is_literal(host):
        what = f"resolves to {found.describe()}"
    elif str(found.address) != host:
        what = f"is {found.describe()}"
    elif found.via is not None:
        what = f"leads to {found.via}, {found.range_text()}"
    else:
        what = f"is {found.range_text()}"
    return RefusedDestination(
        f"url host {host} {what}; webhooks are not sent to internal or special-purpose networks unless "
        f"{ALLOW_SETTING} includes the address",
        field="url",
        address=str(found.address),
        range=found.kind,
    )


def _https_only() -> RefusedDestination:
    return RefusedDestination(
        f"url must use https: http is accepted only for receivers inside {ALLOW_SETTING}, or anywhere "
        "with UNBLOCK_WEBHOOK_ALLOW_HTTP=true",
        field="url",
    )


async def check_destination(
    scheme: str, host: str, port: int, *, policy: DestinationPolicy, resolve: Resolver
) -> Destination:
    """The addresses of ``host`` that may be contacted over ``scheme``; raises when any may not.

    Every address the host has must pass: a name with one public and one private address could
    otherwise be steered to the private one. ``http`` needs every address inside an allowed
    network, or ``allow_http``: a plain-text request to the Internet carries signed event data
    anyone on the path could read.
    """
    host = host.strip("[]").lower()
    plain = scheme == "http" and not policy.allow_http
    if plain and not policy.allow_networks and not _is_literal(host):
        raise _https_only()  # no address could make a name acceptable: say so without asking DNS
    addresses = await _resolve(host, port, policy=policy, resolve=resolve)
    for address in addresses:
        found = refusal(address, policy.allow_networks)
        if found is not None:
            raise _refused(host, found)
    if plain and not all(_allowed(a, policy.allow_networks) for a in addresses):
        raise _https_only()
    if await _reserved(host, port, addresses, policy, resolve):
        raise RefusedDestination(
            "url points at the PowerShell endpoint (UNBLOCK_PS_SERVER:UNBLOCK_PS_PORT); webhooks are never sent to it",
            field="url",
        )
    return Destination(scheme=scheme, host=host, port=port, addresses=addresses)


async def system_resolver(host: str, port: int) -> list[str]:
    """The operating system's answer (``getaddrinfo``), off the event loop."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]
