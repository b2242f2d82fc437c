"""Discovery of newly restricted senders, the live restricted list, and /metrics."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from service.discovery.poller import Discovery
from service.persistence import snapshots
from service.sandbox.server import SandboxServer
from service.sandbox.tenant import DEMO_RESTRICTED
from tests.receiver import Receiver
from tests.stack import Stack, running_stack


@pytest.fixture
async def stack(database_url: str, sandbox: SandboxServer) -> AsyncIterator[Stack]:
    async with running_stack(database_url, sandbox, discovery_interval=0) as s:
        yield s


async def test_discovery_reports_each_new_sender_once(stack: Stack) -> None:
    """The first poll reports the listed senders; a new restriction is reported on the next; nothing twice."""
    poller = Discovery(stack.runtime, worker_id="w1")
    first = await poller.run_once(report=True)
    assert {s.address for s in first} == set(DEMO_RESTRICTED)
    assert all(s.reported and s.case_id is None for s in first)
    assert await poller.run_once(report=True) == []
    stack.sandbox.tenant.restrict("ben@contoso.com")
    second = await poller.run_once(report=True)
    assert [(s.address, s.reported) for s in second] == [("ben@contoso.com", True)]


async def test_a_sender_with_an_open_case_is_not_reported(stack: Stack) -> None:
    """A sender already being handled by a case is not reported again."""
    async with running_stack(
        stack.runtime.settings.database_url, stack.sandbox, worker=False, tenant=True, discovery_interval=0
    ) as s:
        await s.open("rob@contoso.com")
        sightings = await Discovery(s.runtime, worker_id="w1").run_once(report=True)
        rob = next(x for x in sightings if x.address == "rob@contoso.com")
        assert rob.reported is False
        assert rob.case_id is not None


async def test_a_cleared_sender_restricted_again_is_reported_again(stack: Stack) -> None:
    """Off the list, then back on: a new restriction, reported anew."""
    poller = Discovery(stack.runtime, worker_id="w1")
    await poller.run_once(report=True)
    stack.sandbox.tenant.unblock("laura@contoso.com", stack.runtime.clock())
    assert await poller.run_once(report=True) == []
    stack.sandbox.tenant.restrict("laura@contoso.com")
    assert [s.address for s in await poller.run_once(report=True)] == ["laura@contoso.com"]


async def test_sender_restricted_webhook(database_url: str, sandbox: SandboxServer) -> None:
    """sender.restricted reaches subscribers with the sender's details."""
    from standardwebhooks.webhooks import Webhook

    receiver = Receiver().start()
    try:
        async with running_stack(
            database_url,
            sandbox,
            discovery_interval=0,
            webhook_retry_initial=0.2,
            webhook_allow_networks="127.0.0.0/8",  # the receiver is on loopback
        ) as stack:
            created = (
                await stack.client.post("/v1/webhooks", json={"url": receiver.url, "events": ["sender.restricted"]})
            ).json()
            await Discovery(stack.runtime, worker_id="w1").run_once(report=True)
            for _ in range(100):
                if len(receiver.received) >= len(DEMO_RESTRICTED):
                    break
                await asyncio.sleep(0.05)
        hook = Webhook(created["secret"])
        senders = sorted(hook.verify(r.body, r.headers)["data"]["sender"]["sender_address"] for r in receiver.received)
        assert senders == sorted(DEMO_RESTRICTED)
    finally:
        receiver.stop()


async def test_auto_remediation_opens_exactly_one_case_under_two_workers(
    database_url: str, sandbox: SandboxServer
) -> None:
    """Two workers polling at once with UNBLOCK_AUTO_REMEDIATE: one case per newly restricted sender."""
    options: dict[str, Any] = {"discovery_interval": 0.2, "auto_remediate": True}
    async with (
        running_stack(database_url, sandbox, **options) as one,
        running_stack(database_url, sandbox, **options) as two,
    ):
        pollers = [Discovery(one.runtime, worker_id="w-one"), Discovery(two.runtime, worker_id="w-two")]
        for poller in pollers:
            await poller.start()
        try:
            sandbox.tenant.restrict("ben@contoso.com")
            for _ in range(200):
                items = (await one.client.get("/v1/cases", params={"mailbox": "ben@contoso.com"})).json()["items"]
                if items:
                    break
                await asyncio.sleep(0.05)
            await asyncio.sleep(1.0)  # several more rounds by both
            for mailbox in (*DEMO_RESTRICTED, "ben@contoso.com"):
                listed, _ = await snapshots.list_cases(one.runtime.db, mailbox=mailbox)
                assert len(listed) == 1, mailbox
                assert listed[0].created_by == "discovery"
            reported = [r for r in await _outbox(one) if r == "sender.restricted"]
            assert len(reported) == len(DEMO_RESTRICTED) + 1
        finally:
            for poller in pollers:
                await poller.stop()


async def _outbox(stack: Stack) -> list[str]:
    from sqlmodel import select

    from service.persistence.models import OutboxEvent

    async with stack.runtime.db.read() as session:
        return [str(t) for t in (await session.exec(select(OutboxEvent.type))).all()]


async def test_restricted_senders_are_served_from_the_database(stack: Stack) -> None:
    """The list as a worker last read it, with when: the request itself never asks the tenant; the
    steps of a case keep the address they touched current; ?refresh=true asks a worker for a fresh read."""
    first = await stack.client.get("/v1/restricted-senders")
    assert first.status_code == 200
    body = first.json()
    assert {i["sender_address"] for i in body["items"]} == set(DEMO_RESTRICTED)
    assert body["items"][0]["blocked_at"].endswith("Z")
    assert body["fetched_at"] is not None
    calls = len(stack.calls("Get-BlockedSenderAddress"))
    again = await stack.client.get("/v1/restricted-senders")
    assert again.json() == body
    assert len(stack.calls("Get-BlockedSenderAddress")) == calls  # served from the database
    # a case's unblock takes its address off the stored list at once
    await stack.wait_for((await stack.open("laura@contoso.com"))["id"])
    listed = {i["sender_address"] for i in (await stack.client.get("/v1/restricted-senders")).json()["items"]}
    assert "laura@contoso.com" not in listed
    # a restriction the tenant has but no worker read yet shows after a refresh
    stack.sandbox.tenant.restrict("ben@contoso.com")
    stale = (await stack.client.get("/v1/restricted-senders")).json()
    assert "ben@contoso.com" not in {i["sender_address"] for i in stale["items"]}
    fresh = (await stack.client.get("/v1/restricted-senders", params={"refresh": "true"})).json()
    assert "ben@contoso.com" in {i["sender_address"] for i in fresh["items"]}
    assert fresh["fetched_at"] > stale["fetched_at"]


async def test_metrics(stack: Stack) -> None:
    """Prometheus text with cases by state, transitions, steps, remote calls, pool and HTTP figures."""
    await stack.wait_for((await stack.open("rob@contoso.com"))["id"])
    response = await stack.client.get("/metrics", headers={"Authorization": ""})
    assert response.status_code == 200
    text = response.text
    for needle in (
        'unblock_cases{state="resolved",tenant="default"} 1.0',
        'unblock_case_transitions_total{from_state="verifying",tenant="default",to_state="awaiting_propagation"}',
        'unblock_step_duration_seconds_count{step="unblock"}',
        'unblock_remote_call_duration_seconds_count{cmdlet="Remove-BlockedSenderAddress"}',
        "unblock_pool_size 2.0",
        'unblock_pool_runspaces{state="idle",tenant="default"}',
        'unblock_circuit_open{tenant="default"} 0.0',
        'unblock_http_requests_total{method="POST",route="/v1/cases",status="201"}',
        "unblock_webhook_deliveries_total",
        "unblock_discovery_runs_total",
    ):
        assert needle in text, needle
