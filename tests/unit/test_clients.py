"""Whose request is it: proxy headers believed only from trusted proxies."""

from __future__ import annotations

import pytest

from service.config import parse_networks
from service.security.clients import origin

TRUSTED = parse_networks(["10.0.0.0/8", "127.0.0.1"])


def test_an_untrusted_peer_cannot_claim_another_address_or_https() -> None:
    """X-Forwarded-For: 127.0.0.1 from the internet is just a header: the peer is the client."""
    seen = origin("203.0.113.9", "http", {"x-forwarded-for": "127.0.0.1", "x-forwarded-proto": "https"}, TRUSTED)
    assert (seen.address, seen.https, seen.is_loopback) == ("203.0.113.9", False, False)


def test_behind_a_trusted_proxy_the_client_is_the_rightmost_untrusted_hop() -> None:
    """The left-most entries are whatever the client sent; the right-most untrusted one is who connected."""
    headers = {"x-forwarded-for": "1.2.3.4, 198.51.100.7, 10.1.1.1", "x-forwarded-proto": "https"}
    seen = origin("10.0.0.5", "http", headers, TRUSTED)
    assert (seen.address, seen.https) == ("198.51.100.7", True)


@pytest.mark.parametrize(
    ("peer", "forwarded", "expected"),
    [
        ("10.0.0.5", "", "10.0.0.5"),  # a trusted peer sending nothing is the client itself
        ("10.0.0.5", "not-an-ip, 198.51.100.7", "198.51.100.7"),
        ("10.0.0.5", "198.51.100.7, garbage", "10.0.0.5"),  # stop at the last readable hop
        ("::ffff:10.0.0.5", "2001:db8::1", "2001:db8::1"),  # IPv4-mapped peers are their IPv4 address
        (None, "198.51.100.7", "unknown"),
    ],
)
def test_forwarded_chains(peer: str | None, forwarded: str, expected: str) -> None:
    assert origin(peer, "http", {"x-forwarded-for": forwarded}, TRUSTED).address == expected


def test_bad_cidrs_are_refused() -> None:
    with pytest.raises(ValueError, match="not a network in CIDR form"):
        parse_networks(["10.0.0.0/33"])
