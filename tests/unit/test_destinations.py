"""The webhook destination check: every form of an internal address refused, with no DNS needed for literals."""

from __future__ import annotations

import asyncio
import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from service.errors import RefusedDestination, UnresolvableHost
from service.security.destinations import (
    Destination,
    DestinationPolicy,
    check_destination,
    literal_address,
    refusal,
)
from tests.resolver import StubResolver

PUBLIC = "93.184.216.34"
LOOPBACK_ONLY = DestinationPolicy(allow_networks=(ipaddress.ip_network("127.0.0.0/8"),))


async def _check(host: str, *, scheme: str = "https", policy: DestinationPolicy | None = None) -> Destination:
    return await check_destination(scheme, host, 443, policy=policy or DestinationPolicy(), resolve=StubResolver())


# The forms of issue 15 and their relatives: each is refused, and the message names the range.
REFUSED_LITERALS = [
    ("169.254.169.254", "link-local", "169.254.169.254"),
    ("10.0.0.1", "private", "10.0.0.1"),
    ("172.16.5.4", "private", "172.16.5.4"),
    ("192.168.1.1", "private", "192.168.1.1"),
    ("::ffff:a9fe:a9fe", "link-local", "169.254.169.254"),
    ("::ffff:169.254.169.254", "link-local", "169.254.169.254"),
    ("2852039166", "link-local", "169.254.169.254"),
    ("0xa9fea9fe", "link-local", "169.254.169.254"),
    ("0251.0376.0251.0376", "link-local", "169.254.169.254"),
    ("169.254.43518", "link-local", "169.254.169.254"),
    ("0x7f000001", "loopback", "127.0.0.1"),
    ("127.1", "loopback", "127.0.0.1"),
    ("0177.0.0.1", "loopback", "127.0.0.1"),
    ("127.0.0.1.", "loopback", "127.0.0.1"),
    ("localhost", "loopback", "127.0.0.1"),
    ("api.localhost", "loopback", "127.0.0.1"),
    ("::1", "loopback", "::1"),
    ("::127.0.0.1", "loopback", "127.0.0.1"),
    ("64:ff9b::7f00:1", "loopback", "127.0.0.1"),
    ("2002:7f00:1::1", "loopback", "127.0.0.1"),
    ("2002:a9fe:a9fe::", "link-local", "169.254.169.254"),
    ("100.64.0.1", "carrier-grade NAT", "100.64.0.1"),
    ("fd00::1", "unique-local", "fd00::1"),
    ("fc00::1", "unique-local", "fc00::1"),
    ("fe80::1", "link-local", "fe80::1"),
    ("fec0::1", "site-local", "fec0::1"),
    ("224.0.0.1", "multicast", "224.0.0.1"),
    ("ff02::1", "multicast", "ff02::1"),
    ("0.0.0.0", "unspecified", "0.0.0.0"),
    ("0", "unspecified", "0.0.0.0"),
    ("::", "unspecified", "::"),
    ("240.0.0.1", "reserved", "240.0.0.1"),
    ("255.255.255.255", "reserved", "255.255.255.255"),
    ("::8.8.8.8", "reserved", "::808:808"),
    ("64:ff9b:1::a", "local-use NAT64", "64:ff9b:1::a"),
    ("2001::1", "Teredo", "2001::1"),
    ("192.0.2.1", "special-purpose", "192.0.2.1"),
    ("198.18.0.1", "special-purpose", "198.18.0.1"),
    ("2001:db8::1", "special-purpose", "2001:db8::1"),
]


@pytest.mark.parametrize(("host", "kind", "leads_to"), REFUSED_LITERALS)
async def test_every_internal_form_is_refused_without_dns(host: str, kind: str, leads_to: str) -> None:
    """Integer, hex, octal, short, mapped, compatible, NAT64 and 6to4 forms: all judged by where they lead."""
    resolver = StubResolver()
    with pytest.raises(RefusedDestination) as caught:
        await check_destination("https", host, 443, policy=DestinationPolicy(), resolve=resolver)
    error = caught.value
    assert error.context["field"] == "url"
    assert error.context["range"] == kind
    article = "an" if kind[0] in "aeiou" else "a"
    assert f"{article} {kind} address (" in error.message
    assert leads_to in error.message
    assert "UNBLOCK_WEBHOOK_ALLOW_NETWORKS" in error.message
    assert resolver.asked == [], "a literal address must not be looked up"


@pytest.mark.parametrize(
    "host", ["93.184.216.34", "2606:4700:4700::1111", "64:ff9b::808:808", "2002:808:808::1", "::ffff:8.8.8.8"]
)
async def test_global_addresses_pass(host: str) -> None:
    """Public addresses, and IPv6 forms leading to a public IPv4 address, may be contacted."""
    destination = await _check(host)
    assert len(destination.addresses) == 1


@pytest.mark.parametrize(
    ("host", "message"),
    [
        ("1.2.3.4.5", "looks like an IPv4 address but is not a valid one"),
        ("256.1.1.1", "looks like an IPv4 address but is not a valid one"),
        ("hooks.0x10", "looks like an IPv4 address but is not a valid one"),
        ("%31%32%37.0.0.1", "looks like an IPv4 address but is not a valid one"),
        ("hooks%2eexample.com", "neither a DNS name"),
        ("::ffff:zz", "not a valid IPv6 address"),
    ],
)
async def test_hosts_that_are_neither_name_nor_address_are_refused(host: str, message: str) -> None:
    """What a browser would not read as a name is not handed to DNS either (it might read it another way)."""
    with pytest.raises(RefusedDestination, match=message):
        await _check(host)


async def test_a_name_is_refused_when_any_of_its_addresses_is() -> None:
    """One private address among public ones is enough: the connection could be steered to it."""
    resolver = StubResolver({"hooks.example.test": [PUBLIC, "10.9.8.7"]})
    with pytest.raises(RefusedDestination) as caught:
        await check_destination("https", "hooks.example.test", 443, policy=DestinationPolicy(), resolve=resolver)
    assert caught.value.message.startswith("url host hooks.example.test resolves to 10.9.8.7, a private address")
    assert resolver.asked == ["hooks.example.test"]


async def test_a_name_with_only_public_addresses_passes_and_returns_them() -> None:
    """The caller connects to these addresses and no others."""
    resolver = StubResolver({"hooks.example.test": [PUBLIC, "2606:4700::6810:1", PUBLIC]})
    destination = await check_destination(
        "https", "Hooks.Example.Test", 443, policy=DestinationPolicy(), resolve=resolver
    )
    assert destination.host == "hooks.example.test"
    assert [str(a) for a in destination.addresses] == [PUBLIC, "2606:4700::6810:1"]


async def test_a_name_that_does_not_resolve_is_refused_saying_so() -> None:
    """No address now: the subscription is refused rather than left to fail at every delivery."""
    with pytest.raises(UnresolvableHost, match="does not resolve"):
        await _check("nowhere.example.test")


async def test_a_resolver_that_hangs_counts_as_no_answer() -> None:
    """Resolution is bounded by the policy's timeout."""

    async def hangs(host: str, port: int) -> list[str]:
        await asyncio.sleep(10)
        return [PUBLIC]

    with pytest.raises(UnresolvableHost):
        await check_destination(
            "https", "slow.example.test", 443, policy=DestinationPolicy(resolve_timeout=0.05), resolve=hangs
        )


async def test_allowed_networks_let_internal_receivers_in() -> None:
    """An operator's CIDR admits its addresses, also in their IPv4-mapped form, and nothing beside them."""
    policy = DestinationPolicy(allow_networks=(ipaddress.ip_network("10.20.0.0/16"),))
    resolver = StubResolver({"tickets.corp.test": ["10.20.1.2"], "other.corp.test": ["10.21.0.1"]})
    assert await check_destination("https", "tickets.corp.test", 443, policy=policy, resolve=resolver)
    assert await check_destination("https", "::ffff:10.20.1.2", 443, policy=policy, resolve=resolver)
    with pytest.raises(RefusedDestination, match=r"10\.21\.0\.1, a private address"):
        await check_destination("https", "other.corp.test", 443, policy=policy, resolve=resolver)
    with pytest.raises(RefusedDestination, match="loopback"):
        await check_destination("https", "127.0.0.1", 443, policy=policy, resolve=resolver)


async def test_http_needs_an_allowed_network_or_the_setting() -> None:
    """Plain http: refused for the Internet, accepted inside allowed networks or with allow_http; ranges still apply."""
    resolver = StubResolver({"hooks.example.test": [PUBLIC], "lab.test": ["127.0.0.1"]})
    with pytest.raises(RefusedDestination, match="url must use https"):
        await check_destination("http", "hooks.example.test", 80, policy=DestinationPolicy(), resolve=resolver)
    assert resolver.asked == [], "a name over http is refused before DNS when no network is allowed"
    with pytest.raises(RefusedDestination, match="url must use https"):
        await check_destination("http", "hooks.example.test", 80, policy=LOOPBACK_ONLY, resolve=resolver)
    assert await check_destination("http", "lab.test", 80, policy=LOOPBACK_ONLY, resolve=resolver)
    anywhere = DestinationPolicy(allow_http=True)
    assert await check_destination("http", "hooks.example.test", 80, policy=anywhere, resolve=resolver)
    with pytest.raises(RefusedDestination, match="private"):
        await check_destination("http", "10.0.0.1", 80, policy=anywhere, resolve=resolver)
    with pytest.raises(RefusedDestination, match="loopback"):
        await check_destination("http", "localhost", 6379, policy=DestinationPolicy(), resolve=resolver)


async def test_the_powershell_endpoint_is_never_a_receiver() -> None:
    """Even with loopback allowed, the endpoint's own host and port (the sandbox's control API) are refused."""
    policy = DestinationPolicy(
        allow_networks=(ipaddress.ip_network("127.0.0.0/8"),), reserved_endpoints=(("127.0.0.1", 5985),)
    )
    resolver = StubResolver({"sandbox.test": ["127.0.0.1"]})
    for host in ("127.0.0.1", "0x7f000001", "localhost", "sandbox.test"):
        with pytest.raises(RefusedDestination, match="PowerShell endpoint"):
            await check_destination("http", host, 5985, policy=policy, resolve=resolver)
    assert await check_destination("http", "127.0.0.1", 9000, policy=policy, resolve=resolver)


def test_literal_forms_are_read_like_libc_and_browsers() -> None:
    """The parse itself: names are None, numbers are IPv4 addresses however they are written."""
    assert literal_address("hooks.example.test") is None
    assert literal_address("1e100.net") is None
    assert str(literal_address("2852039166")) == "169.254.169.254"
    assert str(literal_address("0x7F.1")) == "127.0.0.1"
    assert str(literal_address("[::1]")) == "::1"


@given(st.ip_addresses(v=4))
def test_every_spelling_of_an_ipv4_address_gets_the_same_verdict(address: ipaddress.IPv4Address) -> None:
    """Dotted, integer, hex, and IPv4-mapped IPv6 spellings of one address are judged alike."""
    verdict = refusal(address)
    for spelling in (str(int(address)), hex(int(address)), f"::ffff:{address}"):
        literal = literal_address(spelling)
        assert literal is not None
        other = refusal(literal)
        assert (other is None) == (verdict is None), spelling
        if verdict is not None and other is not None:
            assert other.kind == verdict.kind
