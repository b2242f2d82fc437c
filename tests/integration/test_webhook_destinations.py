"""Where webhooks may go (issue 15, item 2): refused at subscription, checked again at every delivery.

Host names resolve through a stub (nothing outside resolves here), so each test says what a name's
addresses are, and may change them between subscription and delivery (rebinding).
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.domain.audit import Actor
from service.notifications.transport import CheckedDestinationTransport, failure_category
from service.persistence import webhooks
from service.persistence.types import new_id
from service.persistence.webhooks import delivery_error
from service.sandbox.server import SandboxServer
from service.security.destinations import DestinationPolicy
from service.security.sealing import Sealer
from tests.helpers import free_port
from tests.receiver import Receiver
from tests.resolver import StubResolver
from tests.stack import Stack, running_stack
from tests.tls import make_tls

PROBLEM = "application/problem+json"
PUBLIC = "93.184.216.34"
LOOPBACK = "127.0.0.0/8"
FAST = {"webhook_retry_initial": 0.2, "webhook_retry_max": 0.5}
CATEGORY_PATTERN = r"^(timeout|connect_failed|tls|refused_address|http_[1-5][0-9]{2})$"

# The forms the security review found accepted: metadata, RFC 1918, IPv4-mapped IPv6, integer and
# hex IPv4, and a cache on localhost.
REVIEW_FORMS = [
    ("https://169.254.169.254/latest/meta-data/", "link-local"),
    ("https://10.0.0.1/", "private"),
    ("https://[::ffff:a9fe:a9fe]/", "link-local"),
    ("https://2852039166/", "link-local"),
    ("https://0x7f000001/", "loopback"),
    ("http://localhost:6379/", "loopback"),
]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver().start()
    yield r
    r.stop()


async def _subscribe(stack: Stack, url: str, events: list[str] | None = None) -> httpx.Response:
    return await stack.client.post("/v1/webhooks", json={"url": url, "events": events or ["*"]})


def _assert_refused(response: httpx.Response, *fragments: str) -> dict[str, Any]:
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == PROBLEM
    body = dict(response.json())
    assert body["field"] == "url"
    for fragment in fragments:
        assert fragment in body["detail"], body
    return body


async def _deliveries(stack: Stack, hook_id: str) -> list[dict[str, Any]]:
    response = await stack.client.get(f"/v1/webhooks/{hook_id}/deliveries")
    assert response.status_code == 200, response.text
    return list(response.json()["items"])


async def _first_attempt(stack: Stack, hook_id: str, timeout: float = 20) -> dict[str, Any]:
    """The subscription's oldest delivery once it has been tried at least once."""
    deadline = time.monotonic() + timeout
    while True:
        items = await _deliveries(stack, hook_id)
        tried = [d for d in items if d["attempts"] >= 1]
        if tried:
            return tried[-1]
        assert time.monotonic() < deadline, f"no delivery attempt for {hook_id}: {items}"
        await asyncio.sleep(0.05)


@pytest.mark.parametrize(("url", "kind"), REVIEW_FORMS)
async def test_the_reviews_addresses_are_refused_without_dns(
    database_url: str, sandbox: SandboxServer, url: str, kind: str
) -> None:
    """Each form is a 422 problem naming `url` and the range, decided without any DNS question."""
    resolver = StubResolver()
    async with running_stack(database_url, sandbox, worker=False, resolver=resolver) as stack:
        body = _assert_refused(await _subscribe(stack, url), f"a {kind} address (")
        assert body["type"] == "/problems/refused_destination"
        assert body["range"] == kind
        assert (await stack.client.get("/v1/webhooks")).json()["items"] == []
    assert resolver.asked == []


async def test_a_name_resolving_to_a_private_address_is_refused(database_url: str, sandbox: SandboxServer) -> None:
    """The check follows DNS: a plain name for an internal address is refused until its network is allowed."""
    resolver = StubResolver({"tickets.corp.example": [PUBLIC, "10.20.1.2"]})
    url = "https://tickets.corp.example/api/events"
    async with running_stack(database_url, sandbox, worker=False, resolver=resolver) as stack:
        _assert_refused(await _subscribe(stack, url), "resolves to 10.20.1.2, a private address (RFC 1918")
    async with running_stack(
        database_url, sandbox, worker=False, resolver=resolver, webhook_allow_networks="10.20.0.0/16"
    ) as stack:
        assert (await _subscribe(stack, url)).status_code == 201


async def test_a_name_that_does_not_resolve_is_refused(database_url: str, sandbox: SandboxServer) -> None:
    """A receiver whose name has no address now is a 422 that says so, not a subscription that only dead-letters."""
    async with running_stack(database_url, sandbox, worker=False) as stack:
        body = _assert_refused(await _subscribe(stack, "https://nowhere.example.test/hook"), "does not resolve")
        assert body["type"] == "/problems/unresolvable_host"


async def test_plain_http_needs_an_allowed_network_or_the_setting(database_url: str, sandbox: SandboxServer) -> None:
    """http:// only inside UNBLOCK_WEBHOOK_ALLOW_NETWORKS, or anywhere with UNBLOCK_WEBHOOK_ALLOW_HTTP; ranges apply."""
    resolver = StubResolver({"hooks.example.test": [PUBLIC]})
    async with running_stack(database_url, sandbox, worker=False, resolver=resolver) as stack:
        _assert_refused(await _subscribe(stack, "http://hooks.example.test/hook"), "url must use https")
        _assert_refused(await _subscribe(stack, "http://127.0.0.1:9000/hook"), "a loopback address")
        assert (await _subscribe(stack, "https://hooks.example.test/hook")).status_code == 201
    async with running_stack(
        database_url, sandbox, worker=False, resolver=resolver, webhook_allow_networks=LOOPBACK
    ) as s:
        assert (await _subscribe(s, "http://127.0.0.1:9000/hook")).status_code == 201
        _assert_refused(await _subscribe(s, "http://hooks.example.test/hook"), "url must use https")
    async with running_stack(database_url, sandbox, worker=False, resolver=resolver, webhook_allow_http=True) as s:
        assert (await _subscribe(s, "http://hooks.example.test/hook")).status_code == 201
        _assert_refused(await _subscribe(s, "http://10.0.0.1/hook"), "a private address")


async def test_the_sandbox_control_api_cannot_be_subscribed(database_url: str, sandbox: SandboxServer) -> None:
    """/_sandbox/reset is refused as loopback, and as the PowerShell endpoint even where loopback is allowed."""
    url = f"{sandbox.base_url}/_sandbox/reset"
    async with running_stack(database_url, sandbox, worker=False) as stack:
        _assert_refused(await _subscribe(stack, url), "a loopback address")
    async with running_stack(database_url, sandbox, worker=False, webhook_allow_networks=LOOPBACK) as stack:
        _assert_refused(await _subscribe(stack, url), "PowerShell endpoint")


async def test_a_name_that_rebinds_to_loopback_is_not_contacted(
    database_url: str, sandbox: SandboxServer, receiver: Receiver
) -> None:
    """Public at subscription, 127.0.0.1 at delivery: the dispatcher checks again and stores refused_address."""
    resolver = StubResolver({"hooks.example.test": [PUBLIC]})
    async with running_stack(database_url, sandbox, resolver=resolver, webhook_allow_http=True, **FAST) as stack:
        created = await _subscribe(stack, f"http://hooks.example.test:{receiver.port}/hook", ["case.created"])
        assert created.status_code == 201, created.text
        resolver.answers["hooks.example.test"] = ["127.0.0.1"]
        await stack.open("ann@contoso.com")
        delivery = await _first_attempt(stack, created.json()["id"])
        assert delivery["last_error"] == "refused_address"
        assert delivery["last_status_code"] is None
        await asyncio.sleep(0.5)  # retries come and go; none of them may reach the receiver
    assert receiver.attempts == 0


async def test_a_name_is_delivered_to_its_checked_address_under_its_own_name(
    database_url: str, sandbox: SandboxServer, receiver: Receiver
) -> None:
    """The connection goes to the address the check allowed, and the request still says Host: the name."""
    resolver = StubResolver({"hooks.example.test": ["127.0.0.1"]})
    async with running_stack(
        database_url, sandbox, resolver=resolver, webhook_allow_networks=LOOPBACK, **FAST
    ) as stack:
        created = await _subscribe(stack, f"http://hooks.example.test:{receiver.port}/hook", ["case.created"])
        assert created.status_code == 201, created.text
        await stack.open("ann@contoso.com")
        deadline = time.monotonic() + 20
        while not receiver.received:
            assert time.monotonic() < deadline, "the delivery did not arrive"
            await asyncio.sleep(0.05)
    assert receiver.received[0].headers["host"] == f"hooks.example.test:{receiver.port}"


async def test_failures_are_stored_as_categories(database_url: str, sandbox: SandboxServer, tmp_path: Path) -> None:
    """timeout, connect_failed, tls and http_<status>: the API shows the category, never the exception's text."""
    slow = Receiver(delay=1.5).start()
    failing = Receiver(status=503).start()
    untrusted = Receiver(tls=make_tls(tmp_path, "hooks.example.test").server).start()
    nobody = f"http://127.0.0.1:{free_port()}/hook"
    try:
        async with running_stack(
            database_url, sandbox, webhook_allow_networks=LOOPBACK, webhook_timeout=0.5, **FAST
        ) as stack:
            expected = {}
            for url, category in (
                (slow.url, "timeout"),
                (nobody, "connect_failed"),
                (untrusted.url, "tls"),
                (failing.url, "http_503"),
            ):
                created = await _subscribe(stack, url, ["case.created"])
                assert created.status_code == 201, created.text
                expected[created.json()["id"]] = category
            await stack.open("ann@contoso.com")
            for hook_id, category in expected.items():
                delivery = await _first_attempt(stack, hook_id)
                assert delivery["last_error"] == category, (category, delivery)
                assert delivery["last_status_code"] == (503 if category == "http_503" else None)
    finally:
        for r in (slow, failing, untrusted):
            r.stop()


async def test_a_stored_subscription_to_the_sandbox_is_refused_at_delivery(
    database_url: str, sandbox: SandboxServer
) -> None:
    """A subscription stored before this check (to /_sandbox/reset) is refused when sent; the tenant is untouched."""
    async with running_stack(database_url, sandbox, webhook_allow_networks=LOOPBACK, **FAST) as stack:
        runtime = stack.runtime
        hook_id = new_id()
        sealed = Sealer(runtime.settings.secret_keys).seal("whsec_" + "A" * 43, context=hook_id)
        await webhooks.create_subscription(
            runtime.db,
            subscription_id=hook_id,
            url=f"{sandbox.base_url}/_sandbox/reset",
            events=["case.created"],
            description="written by an older version",
            secret_key_id=sealed.key_id,
            secret_sealed=sealed.blob,
            actor=Actor.service("test"),
            signer=runtime.audit_signer,
            now=runtime.clock(),
        )
        sandbox.tenant.add_user("canary@contoso.com")
        await stack.open("ann@contoso.com")
        delivery = await _first_attempt(stack, hook_id)
        assert delivery["last_error"] == "refused_address"
    assert sandbox.tenant.find_user("canary@contoso.com") is not None, "the sandbox was reset by a webhook"


async def test_the_transport_verifies_tls_against_the_name_it_was_given(tmp_path: Path) -> None:
    """Connected to 127.0.0.1, TLS still sends the name as SNI and checks the certificate for that name."""
    tls = make_tls(tmp_path, "hooks.example.test")
    receiver = Receiver(tls=tls.server).start()
    resolver = StubResolver({"hooks.example.test": ["127.0.0.1"], "other.example.test": ["127.0.0.1"]})
    policy = DestinationPolicy(allow_networks=(ipaddress.ip_network(LOOPBACK),))
    transport = CheckedDestinationTransport(policy=lambda: policy, resolver=lambda: resolver, verify=tls.client)
    try:
        async with httpx.AsyncClient(transport=transport) as client:
            response = await client.post(f"https://hooks.example.test:{receiver.port}/hook", content=b"{}")
            assert response.status_code == 200
            assert receiver.received[0].headers["host"] == f"hooks.example.test:{receiver.port}"
            assert receiver.server_names == ["hooks.example.test"]
            with pytest.raises(httpx.ConnectError) as caught:
                await client.post(f"https://other.example.test:{receiver.port}/hook", content=b"{}")
            assert failure_category(caught.value) == "tls"
    finally:
        receiver.stop()
    assert len(receiver.received) == 1


async def test_the_transport_tries_the_next_checked_address_when_one_refuses(receiver: Receiver) -> None:
    """A name with two allowed addresses: nothing listens on the first, the second answers."""
    resolver = StubResolver({"hooks.example.test": ["127.0.0.2", "127.0.0.1"]})
    policy = DestinationPolicy(allow_networks=(ipaddress.ip_network(LOOPBACK),))
    transport = CheckedDestinationTransport(policy=lambda: policy, resolver=lambda: resolver)
    async with httpx.AsyncClient(transport=transport) as client:
        response = await client.post(f"http://hooks.example.test:{receiver.port}/hook", content=b"{}")
    assert response.status_code == 200
    assert receiver.attempts == 1


@pytest.mark.parametrize(
    ("stored", "shown"),
    [
        (None, None),
        ("timeout", "timeout"),
        ("http_429", "http_429"),
        ("HTTP 503", "http_503"),
        ("ReadTimeout: timed out", "timeout"),
        ("ConnectError: [SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed", "tls"),
        ("ConnectError: [Errno 111] Connection refused", "connect_failed"),
        ("ConnectError: [Errno -2] Name or service not known", "connect_failed"),
    ],
)
def test_errors_stored_before_categories_are_shown_as_one(stored: str | None, shown: str | None) -> None:
    """Rows written by an older version (exception text) reach the API as the nearest category."""
    assert delivery_error(stored) == shown
    if shown is not None:
        assert re.match(CATEGORY_PATTERN, shown)
